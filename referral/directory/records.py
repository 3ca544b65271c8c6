"""Locations and clinics as answers show them: plain, immutable records, made from a
snapshot's columns (snapshot.py) for the few rows an answer holds, never from the ORM."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from referral.directory.hours import is_open
from referral.directory.snapshot import Snapshot, from_micros


@dataclass(frozen=True, slots=True)
class ClinicRecord:
    id: int
    active: bool
    name: str | None
    phone: str | None
    website: str | None
    needs_review: bool
    specialty_codes: tuple[str, ...]  # offered, in code order, as Clinic.specialty_codes
    not_offered_codes: tuple[str, ...]  # known not offered, as Clinic.not_offered_codes


@dataclass(frozen=True, slots=True)
class LocationRecord:
    id: int
    active: bool
    clinic_id: int
    address_line1: str | None
    address_line2: str | None
    city: str | None
    state: str | None
    zip: str | None
    lat: float | None
    lon: float | None
    geocode_precision: str | None
    geocode_source: str | None
    time_zone: str | None
    needs_review: bool
    review_reasons: list[str]
    opening_hours: dict[str, Any] | None
    hours_exceptions: list[dict[str, Any]] | None
    accepting_new_patients: bool | None
    telehealth: bool | None
    languages: list[str] | None
    updated_at: datetime
    clinic: ClinicRecord


def _fact(code: int) -> bool | None:
    return None if code < 0 else bool(code)


def _coordinate(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def clinic_record(snapshot: Snapshot, row: int) -> ClinicRecord:
    clinics = snapshot.clinics
    evidence = clinics.evidence
    return ClinicRecord(
        id=int(clinics.id[row]),
        active=bool(clinics.alive[row]),
        name=clinics.name[row],
        phone=clinics.phone[row],
        website=clinics.website[row],
        needs_review=bool(clinics.needs_review[row]),
        specialty_codes=evidence.codes_of(int(evidence.offered[row])),
        not_offered_codes=evidence.codes_of(int(evidence.lacking[row])),
    )


def location_record(snapshot: Snapshot, row: int) -> LocationRecord:
    locations = snapshot.locations
    clinic_row = int(locations.clinic[row])
    schedule, exceptions = locations.hours[row]
    languages = locations.languages[row]
    return LocationRecord(
        id=int(locations.id[row]),
        active=bool(locations.alive[row]),
        clinic_id=int(snapshot.clinics.id[clinic_row]),
        address_line1=locations.address_line1[row],
        address_line2=locations.address_line2[row],
        city=locations.city[row],
        state=locations.state[row],
        zip=locations.zip[row],
        lat=_coordinate(locations.lat[row]),
        lon=_coordinate(locations.lon[row]),
        geocode_precision=locations.geocode_precision[row],
        geocode_source=locations.geocode_source[row],
        time_zone=locations.time_zone[row],
        needs_review=bool(locations.needs_review[row]),
        review_reasons=list(locations.review_reasons[row]),
        opening_hours=schedule,
        hours_exceptions=exceptions,
        accepting_new_patients=_fact(int(locations.accepting_new_patients[row])),
        telehealth=_fact(int(locations.telehealth[row])),
        languages=None if languages is None else list(languages),
        updated_at=from_micros(int(locations.updated[row])),
        clinic=clinic_record(snapshot, clinic_row),
    )


# ---- serialized, for answers --------------------------------------------------------------

# Locations (and clinics) whose JSON a worker keeps per snapshot: the most recently shown.
_FRAGMENTS_KEPT = 16384


class Fragments:
    """The JSON of the locations and clinics of one snapshot as answers show them, kept for
    the most recently shown (a location shown again costs a lookup); equal to what the
    documented schemas dump (tests/test_nearest_json.py)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, row: int, make: Callable[[], Any]) -> bytes:
        key = (kind, row)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
        # A copy of exactly its size: orjson's own bytes keep a buffer of 4 KB or more.
        made = memoryview(orjson.dumps(make())).tobytes()
        with self._lock:
            self._kept[key] = made
            while len(self._kept) > _FRAGMENTS_KEPT:
                self._kept.popitem(last=False)
        return made


def fragments(snapshot: Snapshot) -> Fragments:
    found = snapshot.derived.get("fragments")
    if found is None:
        found = snapshot.derived.setdefault("fragments", Fragments())
    assert isinstance(found, Fragments)
    return found


def hit_parts(
    snapshot: Snapshot,
    row: int,
    now: datetime,
    specialties: Sequence[str],
    location_json: Callable[[LocationRecord], Any],
    clinic_json: Callable[[ClinicRecord], Any],
) -> dict[str, Any]:
    """A nearest hit's own parts (open now, the specialties' fit) and its location and
    clinic as serialized fragments, without making a record unless they are not kept."""
    locations, clinics = snapshot.locations, snapshot.clinics
    clinic_row = int(locations.clinic[row])
    schedule, exceptions = locations.hours[row]
    match, unknown = None, []
    if specialties:
        evidence = clinics.evidence
        bits = {code: 1 << bit for bit, code in enumerate(evidence.codes)}
        offered, lacking = int(evidence.offered[clinic_row]), int(evidence.lacking[clinic_row])
        unknown = [c for c in specialties if not (bits.get(c, 0) & (offered | lacking))]
        lacks = any(bits.get(c, 0) & lacking for c in specialties)
        match = "lacking" if lacks else "possible" if unknown else "confirmed"
    kept = fragments(snapshot)
    return {
        "open_now": is_open(schedule, exceptions, locations.time_zone[row], now),
        "specialty_match": match,
        "specialties_unknown": unknown,
        "location": orjson.Fragment(
            kept.get("location", row, lambda: location_json(location_record(snapshot, row)))
        ),
        "clinic": orjson.Fragment(
            kept.get("clinic", clinic_row, lambda: clinic_json(clinic_record(snapshot, clinic_row)))
        ),
    }


__all__ = [
    "ClinicRecord",
    "Fragments",
    "LocationRecord",
    "clinic_record",
    "fragments",
    "hit_parts",
    "location_record",
]
