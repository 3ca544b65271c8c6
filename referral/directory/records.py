"""Locations as read for an answer: plain, immutable records, two Core queries, no ORM.

Nearest search reads the rows of its best candidates in every request (so what it shows is
never older than the database). Loading them as ORM objects (identity map, relationship
loaders, change tracking) cost more than the search itself; these records carry exactly the
columns an answer shows or a filter checks, and nothing can write them back.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select

from referral.directory.models import Clinic, ClinicSpecialty, Location


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


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


_LOCATION = _table(Location)
_CLINIC = _table(Clinic)
_CLINIC_SPECIALTY = _table(ClinicSpecialty)
# LocationRecord's fields but the last (the clinic), each a location column of that name.
_LOCATION_COLUMNS = [_LOCATION.c[name] for name in LocationRecord.__slots__[:-1]]
_CLINIC_COLUMNS = [
    _CLINIC.c.id,
    _CLINIC.c.active,
    _CLINIC.c.name,
    _CLINIC.c.phone,
    _CLINIC.c.website,
    _CLINIC.c.needs_review,
]
# Built once, with the ids as an expanding parameter: the statement's cache key is then
# computed once, not per request.
_ROWS = (
    select(*_LOCATION_COLUMNS, *_CLINIC_COLUMNS)
    .join_from(_LOCATION, _CLINIC, _CLINIC.c.id == _LOCATION.c.clinic_id)
    .where(_LOCATION.c.id.in_(bindparam("ids", expanding=True)))
)
# Ordered by the database, as the ORM's Clinic.specialty_links are (collations differ).
_SPECIALTIES = (
    select(
        _CLINIC_SPECIALTY.c.clinic_id,
        _CLINIC_SPECIALTY.c.specialty_code,
        _CLINIC_SPECIALTY.c.offered,
    )
    .where(_CLINIC_SPECIALTY.c.clinic_id.in_(bindparam("ids", expanding=True)))
    .order_by(_CLINIC_SPECIALTY.c.clinic_id, _CLINIC_SPECIALTY.c.specialty_code)
)


# The rows' columns are in the records' field order (mypy cannot count a row's length).
_new_clinic: Any = ClinicRecord
_new_location: Any = LocationRecord


def read_locations(connection: Connection, ids: Collection[int]) -> dict[int, LocationRecord]:
    """The locations with these ids that exist, with their clinics: two queries in all."""
    if not ids:
        return {}
    rows = connection.execute(_ROWS, {"ids": list(ids)}).all()
    clinic_ids = {row[len(_LOCATION_COLUMNS)] for row in rows}
    codes: dict[int, list[str]] = {clinic_id: [] for clinic_id in clinic_ids}
    lacking: dict[int, list[str]] = {clinic_id: [] for clinic_id in clinic_ids}
    for clinic_id, code, offered in connection.execute(_SPECIALTIES, {"ids": list(clinic_ids)}):
        (codes if offered else lacking)[clinic_id].append(code)
    split = len(_LOCATION_COLUMNS)
    clinics: dict[int, ClinicRecord] = {}
    found: dict[int, LocationRecord] = {}
    for row in rows:
        clinic_id = row[split]
        clinic = clinics.get(clinic_id)
        if clinic is None:
            clinic = clinics[clinic_id] = _new_clinic(
                *row[split:], tuple(codes[clinic_id]), tuple(lacking[clinic_id])
            )
        found[row[0]] = _new_location(*row[:split], clinic)
    return found


__all__ = ["ClinicRecord", "LocationRecord", "read_locations"]
