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

from referral.directory import listing
from referral.directory.evidence import specialty_fit
from referral.directory.facts import NO_FACTS, SPECIALTY, FactFilter
from referral.directory.listing import ClinicView
from referral.directory.models import Clinic, ClinicSpecialty, Location, Specialty
from referral.directory.readmodel import current_snapshot
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
    """A condition on Clinic.id: the clinic is on record as offering every one of ``codes``."""
    having_all = (
        select(ClinicSpecialty.clinic_id)
        .where(col(ClinicSpecialty.specialty_code).in_(codes), col(ClinicSpecialty.offered))
        .group_by(col(ClinicSpecialty.clinic_id))
        .having(func.count(func.distinct(ClinicSpecialty.specialty_code)) == len(codes))
    )
    return col(Clinic.id).in_(having_all)


def clinics_not_lacking(codes: Sequence[str]) -> ColumnElement[bool]:
    """A condition on Clinic.id: the clinic is on record as lacking none of ``codes``."""
    lacking = select(ClinicSpecialty.clinic_id).where(
        col(ClinicSpecialty.specialty_code).in_(codes), col(ClinicSpecialty.offered).is_(False)
    )
    return col(Clinic.id).not_in(lacking)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class ClinicFilters:
    q: str | None = None
    specialties: list[str] = field(default_factory=list)
    # Also clinics not on record either way for a specialty (never those lacking it).
    include_possible: bool = False
    city: str | None = None
    state: str | None = None
    zip_prefix: str | None = None
    facts: FactFilter = NO_FACTS
    # Incremental sync: what changed since then, deactivated records included.
    updated_since: datetime | None = None


def _clinic_query(filters: ClinicFilters, *, possible: bool) -> SelectOfScalar[Clinic]:
    """``possible``: the specialty condition lets clinics not on record either way through."""
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
        if possible:
            query = query.where(clinics_not_lacking(filters.specialties))
        else:
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
    clinics: Sequence[Clinic | ClinicView]
    total: int
    # Per fact filter (and SPECIALTY), how many clinics were left out for it being unknown.
    excluded_unknown: dict[str, int] = field(default_factory=dict)


def _located_as_asked(location: Location, filters: ClinicFilters) -> bool:
    if not location.active:
        return False
    if filters.city and (location.city or "").lower() != filters.city.strip().lower():
        return False
    if filters.state and location.state != filters.state.upper():
        return False
    return not (filters.zip_prefix and not (location.zip or "").startswith(filters.zip_prefix))


def _ordered(query: SelectOfScalar[Clinic]) -> SelectOfScalar[Clinic]:
    return query.options(
        selectinload(Clinic.locations),  # type: ignore[arg-type]
        selectinload(Clinic.specialty_links),  # type: ignore[arg-type]
    ).order_by(col(Clinic.name).is_(None), col(Clinic.name), col(Clinic.id))


def _count(session: Session, query: SelectOfScalar[Clinic]) -> int:
    return int(session.exec(select(func.count()).select_from(query.subquery())).one())


def search_clinics(
    session: Session, filters: ClinicFilters, *, offset: int, limit: int
) -> ClinicPage:
    """One page of clinics matching ``filters`` (unnamed last), and the total count: from
    the read model, but for incremental sync (``updated_since``), which lists deactivated
    clinics too and so reads the database."""
    if filters.updated_since is None:
        page = listing.search(
            current_snapshot(session),
            listing.ListQuery(
                q=filters.q,
                specialties=filters.specialties,
                include_possible=filters.include_possible,
                city=filters.city,
                state=filters.state,
                zip_prefix=filters.zip_prefix,
                facts=filters.facts,
            ),
            offset=offset,
            limit=limit,
        )
        return ClinicPage(page.clinics, page.total, page.excluded_unknown)
    return _changed_clinics(session, filters, offset=offset, limit=limit)


def _changed_clinics(
    session: Session, filters: ClinicFilters, *, offset: int, limit: int
) -> ClinicPage:
    # Specialties not on record are counted (or let through) unless none were asked for.
    counting = bool(filters.specialties) and not filters.include_possible
    if not filters.facts.active:
        query = _ordered(_clinic_query(filters, possible=filters.include_possible))
        total = _count(session, query)
        page = session.exec(query.offset(offset).limit(limit)).all()
        left_out = {}
        if counting:
            possible = _count(session, _clinic_query(filters, possible=True))
            left_out = {SPECIALTY: possible - total} if possible > total else {}
        return ClinicPage(list(page), total, left_out)
    # Facts such as "open now" are judged per location, in its own time zone.
    query = _ordered(_clinic_query(filters, possible=bool(filters.specialties)))
    matching: list[Clinic] = []
    excluded: dict[str, int] = {}
    for clinic in session.exec(query).all():
        unknown_specialty = counting and bool(specialty_fit(clinic, filters.specialties).unknown)
        unknown_for: set[str] = set()
        for location in clinic.locations:
            if not _located_as_asked(location, filters):
                continue
            unknown = filters.facts.unknowns(location)
            if unknown == [] and not unknown_specialty:
                matching.append(clinic)
                break
            if unknown is not None:
                unknown_for.update(unknown)
                if unknown_specialty:
                    unknown_for.add(SPECIALTY)
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
