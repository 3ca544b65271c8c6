"""Directory reads as plain functions over a session: listing, filtering, one clinic."""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, func, or_
from sqlalchemy.orm import selectinload
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from referral.directory.facts import NO_FACTS, FactFilter
from referral.directory.models import Clinic, ClinicSpecialty, Location, Specialty
from referral.timeutil import to_utc


class UnknownSpecialtyError(ValueError):
    def __init__(self, codes: Sequence[str]) -> None:
        super().__init__(f"unknown specialty code(s): {', '.join(codes)}")
        self.codes = list(codes)


def list_specialties(session: Session) -> list[Specialty]:
    return list(session.exec(select(Specialty).order_by(col(Specialty.code))).all())


# The specialty vocabulary, per database, as last read: asked on every search with a
# specialty, it changes only when seed_data/ is loaded again. A code not in it is looked up
# again at once (a new code is known at its first use); a removed one is forgotten within
# VOCABULARY_SECONDS (until then a search for it finds nothing rather than a 422).
VOCABULARY_SECONDS = 60.0
_vocabularies: weakref.WeakKeyDictionary[Engine, tuple[float, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def _vocabulary(session: Session, *, fresh: bool) -> frozenset[str]:
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    cached = _vocabularies.get(engine)
    now = time.monotonic()
    if fresh or cached is None or now - cached[0] > VOCABULARY_SECONDS:
        cached = (now, frozenset(session.exec(select(Specialty.code)).all()))
        _vocabularies[engine] = cached
    return cached[1]


def check_specialties(session: Session, codes: Sequence[str]) -> list[str]:
    """Return the codes, deduplicated in order, or raise naming the unknown ones."""
    wanted = list(dict.fromkeys(codes))
    if not wanted:
        return []
    known = _vocabulary(session, fresh=False)
    if not known.issuperset(wanted):
        known = _vocabulary(session, fresh=True)
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
    facts: FactFilter = NO_FACTS
    # Incremental sync: what changed since then, deactivated records included.
    updated_since: datetime | None = None


def _clinic_query(filters: ClinicFilters) -> SelectOfScalar[Clinic]:
    query = select(Clinic)
    if filters.updated_since is None:
        query = query.where(col(Clinic.active).is_(True))
    else:
        changed_locations = select(Location.clinic_id).where(
            col(Location.updated_at) >= to_utc(filters.updated_since)
        )
        query = query.where(
            or_(
                col(Clinic.updated_at) >= to_utc(filters.updated_since),
                col(Clinic.id).in_(changed_locations),
            )
        )
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


@dataclass(frozen=True)
class ClinicPage:
    clinics: list[Clinic]
    total: int
    # Per fact filter, how many clinics were left out because the fact is unknown.
    excluded_unknown: dict[str, int] = field(default_factory=dict)


def _located_as_asked(location: Location, filters: ClinicFilters) -> bool:
    if not location.active:
        return False
    if filters.city and (location.city or "").lower() != filters.city.strip().lower():
        return False
    if filters.state and location.state != filters.state.upper():
        return False
    return not (filters.zip_prefix and not (location.zip or "").startswith(filters.zip_prefix))


def search_clinics(
    session: Session, filters: ClinicFilters, *, offset: int, limit: int
) -> ClinicPage:
    """One page of clinics matching ``filters`` (unnamed last), and the total count."""
    query = (
        _clinic_query(filters)
        .options(
            selectinload(Clinic.locations),  # type: ignore[arg-type]
            selectinload(Clinic.specialty_links),  # type: ignore[arg-type]
        )
        .order_by(col(Clinic.name).is_(None), col(Clinic.name), col(Clinic.id))
    )
    if not filters.facts.active:
        total = session.exec(select(func.count()).select_from(query.subquery())).one()
        page = session.exec(query.offset(offset).limit(limit)).all()
        return ClinicPage(list(page), int(total))
    # Facts such as "open now" are judged per location, in its own time zone.
    matching: list[Clinic] = []
    excluded: dict[str, int] = {}
    for clinic in session.exec(query).all():
        unknown_for: set[str] = set()
        for location in clinic.locations:
            if not _located_as_asked(location, filters):
                continue
            unknown = filters.facts.unknowns(location)
            if unknown == []:
                matching.append(clinic)
                break
            if unknown:
                unknown_for.update(unknown)
        else:
            for name in unknown_for:
                excluded[name] = excluded.get(name, 0) + 1
    return ClinicPage(matching[offset : offset + limit], len(matching), excluded)


def get_clinic(
    session: Session, clinic_id: int, *, include_inactive: bool = False
) -> Clinic | None:
    clinic = session.get(Clinic, clinic_id)
    if clinic is None or not (clinic.active or include_inactive):
        return None
    return clinic


def active_locations(clinic: Clinic) -> list[Location]:
    return [location for location in clinic.locations if location.active]
