"""Directory reads as plain functions over a session: listing, filtering, one clinic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy.orm import selectinload
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from referral.directory.models import Clinic, ClinicSpecialty, Location, Specialty


class UnknownSpecialtyError(ValueError):
    def __init__(self, codes: Sequence[str]) -> None:
        super().__init__(f"unknown specialty code(s): {', '.join(codes)}")
        self.codes = list(codes)


def list_specialties(session: Session) -> list[Specialty]:
    return list(session.exec(select(Specialty).order_by(col(Specialty.code))).all())


def check_specialties(session: Session, codes: Sequence[str]) -> list[str]:
    """Return the codes, deduplicated in order, or raise naming the unknown ones."""
    wanted = list(dict.fromkeys(codes))
    if not wanted:
        return []
    known = set(session.exec(select(Specialty.code).where(col(Specialty.code).in_(wanted))).all())
    unknown = [code for code in wanted if code not in known]
    if unknown:
        raise UnknownSpecialtyError(unknown)
    return wanted


def clinics_with_all_specialties(codes: Sequence[str]) -> ColumnElement[bool]:
    """A condition on Clinic.id: the clinic has every one of ``codes``."""
    having_all = (
        select(ClinicSpecialty.clinic_id)
        .where(col(ClinicSpecialty.specialty_code).in_(codes))
        .group_by(col(ClinicSpecialty.clinic_id))
        .having(func.count(func.distinct(ClinicSpecialty.specialty_code)) == len(codes))
    )
    return col(Clinic.id).in_(having_all)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class ClinicFilters:
    q: str | None = None
    specialties: list[str] = field(default_factory=list)
    city: str | None = None
    state: str | None = None
    zip_prefix: str | None = None


def _clinic_query(filters: ClinicFilters) -> SelectOfScalar[Clinic]:
    query = select(Clinic).where(col(Clinic.active).is_(True))
    if filters.q:
        pattern = f"%{_escape_like(filters.q.strip().lower())}%"
        query = query.where(func.lower(col(Clinic.name)).like(pattern, escape="\\"))
    if filters.specialties:
        query = query.where(clinics_with_all_specialties(filters.specialties))
    location_conditions: list[ColumnElement[bool]] = []
    if filters.city:
        location_conditions.append(func.lower(col(Location.city)) == filters.city.strip().lower())
    if filters.state:
        location_conditions.append(col(Location.state) == filters.state.upper())
    if filters.zip_prefix:
        location_conditions.append(
            col(Location.zip).like(f"{_escape_like(filters.zip_prefix)}%", escape="\\")
        )
    if location_conditions:
        matching = select(Location.clinic_id).where(
            col(Location.active).is_(True), *location_conditions
        )
        query = query.where(col(Clinic.id).in_(matching))
    return query


def search_clinics(
    session: Session, filters: ClinicFilters, *, offset: int, limit: int
) -> tuple[list[Clinic], int]:
    """One page of active clinics matching ``filters`` (unnamed last), and the total count."""
    query = _clinic_query(filters)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    page = session.exec(
        query.options(
            selectinload(Clinic.locations),  # type: ignore[arg-type]
            selectinload(Clinic.specialty_links),  # type: ignore[arg-type]
        )
        .order_by(col(Clinic.name).is_(None), col(Clinic.name), col(Clinic.id))
        .offset(offset)
        .limit(limit)
    ).all()
    return list(page), int(total)


def get_clinic(
    session: Session, clinic_id: int, *, include_inactive: bool = False
) -> Clinic | None:
    clinic = session.get(Clinic, clinic_id)
    if clinic is None or not (clinic.active or include_inactive):
        return None
    return clinic


def active_locations(clinic: Clinic) -> list[Location]:
    return [location for location in clinic.locations if location.active]
