"""schemathesis hooks for the contract test (schemathesis.toml loads this file).

Every check stays on. This drops one kind of failure only: a schema-valid request refused with
a 422 problem whose every ``invalid_params`` entry is a rule listed in REFUSALS for that
operation, a rule OpenAPI 3.0 cannot state (a number that must be a real phone number, a place
the gazetteer must know, one of several query parameters...). A 422 naming any other field or
reason, or any other status, still fails the run. docs/reliability.md lists the same table.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.openapi.checks import RejectedPositiveData


def _rules(*pairs: tuple[str, str]) -> list[tuple[re.Pattern[str], re.Pattern[str]]]:
    return [(re.compile(name), re.compile(reason)) for name, reason in pairs]


# A phone number must be one the numbering plan has (libphonenumber decides).
PHONE = ("phone", r"not a (valid )?phone number.*")
# A place must be one the offline gazetteer knows.
PLACE = (
    r"(zip|city|address)",
    r"(unknown ZIP code|no city named|could not place this address|could not be geocoded).*",
)
# Exactly one origin among several query parameters (a body can say oneOf; a query cannot).
ONE_ORIGIN = (
    r"(origin|lat|lon|zip|city|state|address)",
    r"(give one origin|give only one origin|required together with).*",
)
# Opening hours: an interval closes after it opens, intervals do not overlap, an exception's
# date is a real day (the pattern admits 2026-02-30) and is listed once.
HOURS = (
    r"(opening_hours|hours_exceptions)",
    r".*(closes before it opens|intervals overlap|is not a date like 2026-12-25|is listed twice)",
)

# A time with an offset that no UTC time matches (year 1 at +14:00): the date-time format
# admits it, the service cannot compare it with stored UTC times.
BEYOND_UTC = (
    r"(updated_since|created_after|created_before|since|until)",
    r"out of range: no UTC time matches it",
)

# A specialty is on record as offered or as not offered, not both (the spec has no way to say
# two lists are disjoint).
BOTH_WAYS = ("specialties_not_offered", r"also listed as offered: .*")

# "METHOD /path" -> [(invalid_params name, reason)], regular expressions matched in full.
REFUSALS: dict[str, list[tuple[re.Pattern[str], re.Pattern[str]]]] = {
    "GET /v1/clinics": _rules(BEYOND_UTC),
    "GET /v1/referrals": _rules(BEYOND_UTC),
    "GET /v1/referrals/stats": _rules(BEYOND_UTC),
    "GET /v1/referrals/export.csv": _rules(BEYOND_UTC),
    "GET /v1/admin/audit": _rules(BEYOND_UTC),
    "POST /v1/clinics": _rules(PHONE, BOTH_WAYS),
    "PATCH /v1/clinics/{clinic_id}": _rules(PHONE, BOTH_WAYS),
    "POST /v1/clinics/{clinic_id}/locations": _rules(PLACE, HOURS),
    "PATCH /v1/clinics/{clinic_id}/locations/{location_id}": _rules(PLACE, HOURS),
    "GET /v1/locations/nearest": _rules(
        ONE_ORIGIN,
        PLACE,
        # The largest radius depends on `unit` (mi or km) and on NEAREST_MAX_RADIUS_KM.
        ("radius", r"at most .* km .*"),
    ),
    "POST /v1/referrals": _rules(
        (rf"origin\.{PLACE[0]}", PLACE[1]),
        ("max_distance", r"at most .* km .*"),
        ("preferred_clinic_id", r"no active clinic with id \d+"),
        # The assessment is a small free-form summary without identifying data: key names
        # and sizes OpenAPI 3.0 cannot constrain (no propertyNames), e-mail-like values.
        (
            r"assessment(\..*)?",
            r"Length must be between 1 and 64\.|at most \d+ bytes of JSON .*|nested deeper .*"
            r"|.*looks like identifying data.*|.*looks like an e-mail address|.*contains U\+.*"
            r"|.*not a finite number",
        ),
        # An Idempotency-Key names one request: the same key with another body is refused.
        ("Idempotency-Key", r"already used with a different body"),
    ),
    # A person routes a referral to a location that exists, is active and is placed.
    "POST /v1/referrals/{referral_id}/assignment": _rules(
        ("location_id", r"no active location with id \d+|location \d+ has no coordinates"),
    ),
    # A row obeys the edit endpoints' rules, and rows of one clinic must agree.
    "POST /v1/admin/imports": _rules(
        (rf"rows\[\d+\]\.{PHONE[0]}", PHONE[1]),
        (r"rows\[\d+\]\.address", r"could not be geocoded offline.*|the same location as row \d+"),
        (
            r"rows\[\d+\]\.(clinic_name|website|specialties|specialties_not_offered)",
            r"differs from row \d+ .*",
        ),
        (rf"rows\[\d+\]\.{BOTH_WAYS[0]}", BOTH_WAYS[1]),
        (r"rows\[\d+\]\.(lat|lon)", r"lat and lon go together"),
    ),
}


def _problem_params(content: bytes | None) -> list[dict[str, Any]] | None:
    try:
        body = json.loads(content or b"")
    except ValueError:
        return None
    params = body.get("invalid_params") if isinstance(body, dict) else None
    return params if isinstance(params, list) and params else None


def refusal_is_listed(operation: str, status: int, content: bytes | None) -> bool:
    """Whether a 422 refusal names only rules REFUSALS lists for this operation."""
    rules = REFUSALS.get(operation)
    params = _problem_params(content)
    if status != 422 or not rules or params is None:
        return False
    return all(
        any(
            name.fullmatch(str(param.get("name", "")))
            and reason.fullmatch(str(param.get("reason")))
            for name, reason in rules
        )
        for param in params
    )


IMPORTS = "POST /v1/admin/imports"
# A CSV file (or an upload) is any text to the spec: its columns and rows are the importer's.
FILE_PROBLEM = re.compile(r"file|rows\[\d+\](\..*)?")


def file_refusal(
    operation: str, media_type: str | None, status: int, content: bytes | None
) -> bool:
    """A CSV or uploaded file the importer refuses, naming only the file or its rows."""
    params = _problem_params(content)
    if operation != IMPORTS or media_type == "application/json" or status != 422 or not params:
        return False
    return all(FILE_PROBLEM.fullmatch(str(param.get("name", ""))) for param in params)


def dry_run_report(operation: str, status: int, content: bytes | None) -> bool:
    """A dry run answers 200 with the errors it found (``valid: false``): a report, by design."""
    try:
        body = json.loads(content or b"")
    except ValueError:
        return False
    return (
        operation == IMPORTS
        and status == 200
        and isinstance(body, dict)
        and body.get("dry_run") is True
        and body.get("valid") is False
    )


def _note_dropped(operation: str, kind: str, content: bytes | None) -> None:
    """One line per dropped failure in $REFERRAL_FUZZ_DROPPED, for the test's summary."""
    path = os.environ.get("REFERRAL_FUZZ_DROPPED")
    if not path:
        return
    names = sorted({str(param.get("name")) for param in _problem_params(content) or []})
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(json.dumps({"operation": operation, "kind": kind, "names": names}) + "\n")


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:  # type: ignore[no-untyped-def]
    """False drops the failure: only the refusals and reports this file lists."""
    operation, status, content = case.operation.label, response.status_code, response.content
    kind = None
    if isinstance(failure, RejectedPositiveData):
        if refusal_is_listed(operation, status, content):
            kind = "refusal"
        elif file_refusal(operation, case.media_type, status, content):
            kind = "file"
    elif isinstance(failure, AcceptedNegativeData) and dry_run_report(operation, status, content):
        kind = "dry-run report"
    if kind is None:
        return True
    _note_dropped(operation, kind, content)
    return False
