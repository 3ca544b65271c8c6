"""Opening hours: a weekly schedule plus dated exceptions, judged in the location's time zone.

``opening_hours`` maps mon..sun to lists of ["HH:MM", "HH:MM"] intervals (a day absent or
empty is closed); None means the hours are unknown. ``hours_exceptions`` lists
{"date": "YYYY-MM-DD", "closed": true} or {"date": ..., "hours": [[open, close], ...]},
each with an optional "note" (e.g. a holiday).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from referral.web.text import PlainText, text_problem

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TIME_PATTERN = r"^(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
# YYYY-MM-DD; the calendar decides the rest (2026-02-30 matches, and is refused).
DATE_PATTERN = r"^(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])$"
NOTE_MAX_CHARS = 200
_TIME_RE = re.compile(TIME_PATTERN)
_DATE_RE = re.compile(DATE_PATTERN)


# The same rules for the OpenAPI spec, but those it cannot state: an interval closes after it
# opens, intervals do not overlap, a date is a real one and listed once.
def _intervals_schema() -> dict[str, Any]:
    return {
        "type": "array",
        "items": {
            "type": "array",
            "minItems": 2,
            "maxItems": 2,
            "items": {"type": "string", "pattern": TIME_PATTERN},
            "description": "[open, close], 24-hour HH:MM (24:00 for midnight)",
        },
    }


def _exception_schema(*, closed: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "date": {"type": "string", "pattern": DATE_PATTERN, "description": "YYYY-MM-DD"},
        "closed": {"type": "boolean", "enum": [closed]},
        "note": {
            "type": "string",
            "maxLength": NOTE_MAX_CHARS,
            "pattern": PlainText().regex.pattern,
            "nullable": True,
        },
    }
    if not closed:
        properties["hours"] = _intervals_schema()
    return {
        "type": "object",
        "properties": properties,
        "required": ["date", "closed" if closed else "hours"],
        "additionalProperties": False,
    }


SCHEDULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {day: _intervals_schema() for day in DAYS},
    "additionalProperties": False,
}
EXCEPTION_SCHEMA: dict[str, Any] = {
    "oneOf": [_exception_schema(closed=True), _exception_schema(closed=False)]
}


class HoursError(ValueError):
    pass


def _note_problem(note: str) -> str | None:
    """The plain-text rules of every other field (referral/web/text.py)."""
    problem = text_problem(note)
    if problem is None and not note.strip():
        problem = "must not be blank"
    return problem


def _minutes(text: str) -> int:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise HoursError(f"{text!r} is not a time like 08:30 (24-hour, 24:00 for midnight)")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def check_intervals(intervals: Any, where: str) -> list[list[str]]:
    if not isinstance(intervals, list):
        raise HoursError(f"{where}: a list of [open, close] pairs")
    spans = []
    for interval in intervals:
        if not isinstance(interval, list | tuple) or len(interval) != 2:
            raise HoursError(f"{where}: each interval is [open, close]")
        start, end = _minutes(interval[0]), _minutes(interval[1])
        if start >= end:
            raise HoursError(f"{where}: {interval[0]}-{interval[1]} closes before it opens")
        spans.append((start, end))
    spans.sort()
    for (_, first_end), (second_start, _) in pairwise(spans):
        if second_start < first_end:
            raise HoursError(f"{where}: intervals overlap")
    return [list(interval) for interval in intervals]


def check_schedule(schedule: Any) -> dict[str, list[list[str]]]:
    if not isinstance(schedule, dict):
        raise HoursError("an object with days mon..sun")
    unknown = set(schedule) - set(DAYS)
    if unknown:
        raise HoursError(f"unknown day(s) {', '.join(sorted(unknown))}; use {', '.join(DAYS)}")
    return {day: check_intervals(schedule[day], day) for day in DAYS if day in schedule}


def check_exceptions(exceptions: Any) -> list[dict[str, Any]]:
    if not isinstance(exceptions, list):
        raise HoursError("a list of {date, closed | hours, note}")
    seen = set()
    checked = []
    for item in exceptions:
        if not isinstance(item, dict) or "date" not in item:
            raise HoursError("each exception needs a date")
        unknown = set(item) - {"date", "closed", "hours", "note"}
        if unknown:
            raise HoursError(f"unknown field(s) {', '.join(sorted(unknown))}")
        try:
            if not isinstance(item["date"], str) or not _DATE_RE.fullmatch(item["date"]):
                raise ValueError("not YYYY-MM-DD")
            day = date.fromisoformat(item["date"])
        except ValueError as exc:
            raise HoursError(f"{item['date']!r} is not a date like 2026-12-25") from exc
        if day in seen:
            raise HoursError(f"{day} is listed twice")
        seen.add(day)
        if not isinstance(item.get("closed", False), bool):
            raise HoursError(f"{day}: closed is true or false")
        note = item.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX_CHARS):
            raise HoursError(f"{day}: the note is text of at most {NOTE_MAX_CHARS} characters")
        if note is not None and (problem := _note_problem(note)):
            raise HoursError(f"{day}: the note {problem}")
        closed = item.get("closed") is True
        if closed == ("hours" in item):
            raise HoursError(f"{day}: give either closed: true or hours")
        entry: dict[str, Any] = {"date": day.isoformat()}
        if closed:
            entry["closed"] = True
        else:
            entry["hours"] = check_intervals(item["hours"], str(day))
        if note is not None:
            entry["note"] = note
        checked.append(entry)
    return checked


def is_open(
    schedule: dict[str, Any] | None,
    exceptions: list[dict[str, Any]] | None,
    time_zone: str | None,
    now: datetime,
) -> bool | None:
    """True or False when known; None when the hours or the time zone are unknown."""
    if schedule is None or not time_zone:
        return None
    try:
        local = now.astimezone(ZoneInfo(time_zone))
    except ZoneInfoNotFoundError:
        return None
    today = local.date().isoformat()
    intervals = schedule.get(DAYS[local.weekday()], [])
    for exception in exceptions or []:
        if exception.get("date") == today:
            intervals = [] if exception.get("closed") else exception.get("hours", [])
            break
    minute = local.hour * 60 + local.minute
    return any(_minutes(start) <= minute < _minutes(end) for start, end in intervals)
