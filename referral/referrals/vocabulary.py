"""The concern and red-flag vocabulary: loaded from seed_data/concerns.json, read from tables."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from referral.directory.seed import SeedReport, apply_changes, read_seed_file
from referral.referrals.models import Concern, ConcernSpecialty, RedFlag


@dataclass(frozen=True)
class RedFlagInfo:
    code: str
    label: str
    escalate_to: str  # an Urgency
    advice: str


@dataclass(frozen=True)
class Vocabulary:
    """Plain data (no ORM rows): cached and shared by every request of a process."""

    # concern code -> [(specialty code, reason)]
    concerns: dict[str, list[tuple[str, str]]]
    concern_labels: dict[str, str]
    red_flags: dict[str, RedFlagInfo]


_CONCERN: Table = Concern.__table__  # type: ignore[attr-defined]
_LINK: Table = ConcernSpecialty.__table__  # type: ignore[attr-defined]
_FLAG: Table = RedFlag.__table__  # type: ignore[attr-defined]
_CONCERNS = select(_CONCERN.c.code, _CONCERN.c.label).order_by(_CONCERN.c.code)
_LINKS = select(_LINK.c.concern_code, _LINK.c.specialty_code, _LINK.c.reason).order_by(
    _LINK.c.concern_code, _LINK.c.specialty_code
)
_FLAGS = select(_FLAG.c.code, _FLAG.c.label, _FLAG.c.escalate_to, _FLAG.c.advice).order_by(
    _FLAG.c.code
)


def load_vocabulary(session: Session) -> Vocabulary:
    """Read in ``session``'s transaction (three Core selects: no ORM objects)."""
    connection = session.connection()
    concerns: dict[str, list[tuple[str, str]]] = {}
    labels: dict[str, str] = {}
    for code, label in connection.execute(_CONCERNS):
        concerns[code] = []
        labels[code] = label
    for concern_code, specialty_code, reason in connection.execute(_LINKS):
        concerns.setdefault(concern_code, []).append((specialty_code, reason))
    flags = {row.code: RedFlagInfo(*row) for row in connection.execute(_FLAGS)}
    return Vocabulary(concerns=concerns, concern_labels=labels, red_flags=flags)


# The vocabulary as referral intake last read it, per database: it changes only when
# seed_data/ is loaded again, yet every referral needs it. A code not in it is looked up again
# at once (a new code is known at its first use); any other change (a label, a mapping, a
# flag's advice) is seen within VOCABULARY_SECONDS, or at once in the process that seeded.
# It is read through the request's session (no connection of its own) and kept as plain
# data, so sharing it between requests and threads is safe.
VOCABULARY_SECONDS = 10.0
_monotonic = time.monotonic  # tests move this clock
_cache_lock = threading.Lock()
_cached: weakref.WeakKeyDictionary[Engine, tuple[float, Vocabulary]] = weakref.WeakKeyDictionary()


def intake_vocabulary(
    session: Session, concerns: Iterable[str], red_flags: Iterable[str]
) -> Vocabulary:
    """The vocabulary for a referral naming these codes: the cached one, unless it is older
    than VOCABULARY_SECONDS or lacks one of the codes."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    now = _monotonic()
    cached = _cached.get(engine)
    if cached is not None and now - cached[0] < VOCABULARY_SECONDS:
        vocabulary = cached[1]
        if all(code in vocabulary.concerns for code in concerns) and all(
            code in vocabulary.red_flags for code in red_flags
        ):
            return vocabulary
    vocabulary = load_vocabulary(session)
    with _cache_lock:
        _cached[engine] = (now, vocabulary)
    return vocabulary


def forget_vocabulary() -> None:
    with _cache_lock:
        _cached.clear()


def seed_vocabulary(session: Session, seed_dir: Path, report: SeedReport) -> None:
    """Upsert concerns, their specialty mappings and red flags; drop mappings no longer listed."""
    data: dict[str, Any] = read_seed_file(seed_dir, "concerns.json")
    for item in data["concerns"]:
        concern = session.get(Concern, item["code"])
        if concern is None:
            session.add(Concern(code=item["code"], label=item["label"]))
            report.count("concern", "created")
        elif apply_changes(concern, {"label": item["label"]}):
            report.count("concern", "updated")
        else:
            report.count("concern", "unchanged")
        session.flush()
        wanted = {s["code"]: s["reason"] for s in item["specialties"]}
        current = {
            link.specialty_code: link
            for link in session.exec(
                select(ConcernSpecialty).where(ConcernSpecialty.concern_code == item["code"])
            ).all()
        }
        for code, link in current.items():
            if code not in wanted:
                session.delete(link)
        for code, reason in wanted.items():
            if code in current:
                apply_changes(current[code], {"reason": reason})
            else:
                session.add(
                    ConcernSpecialty(concern_code=item["code"], specialty_code=code, reason=reason)
                )
    for item in data["red_flags"]:
        values = {
            "label": item["label"],
            "escalate_to": item["escalate_to"],
            "advice": item["advice"],
        }
        flag = session.get(RedFlag, item["code"])
        if flag is None:
            session.add(RedFlag(code=item["code"], **values))
            report.count("red_flag", "created")
        elif apply_changes(flag, values):
            report.count("red_flag", "updated")
        else:
            report.count("red_flag", "unchanged")
    session.flush()
    # Intake sees the change at once in this process (and again once it is committed).
    forget_vocabulary()
    event.listen(session, "after_commit", lambda _session: forget_vocabulary(), once=True)
