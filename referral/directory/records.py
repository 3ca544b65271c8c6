"""Locations and clinics as answers show them: plain, immutable records, made from a
snapshot's columns (snapshot.py) for the few rows an answer holds, never from the ORM."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

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
    links = clinics.evidence[row]
    return ClinicRecord(
        id=int(clinics.id[row]),
        active=bool(clinics.alive[row]),
        name=clinics.name[row],
        phone=clinics.phone[row],
        website=clinics.website[row],
        needs_review=bool(clinics.needs_review[row]),
        specialty_codes=tuple(code for code, offered, _, _ in links if offered),
        not_offered_codes=tuple(code for code, offered, _, _ in links if not offered),
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


__all__ = ["ClinicRecord", "LocationRecord", "clinic_record", "location_record"]
