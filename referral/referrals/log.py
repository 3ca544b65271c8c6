"""Reading and changing referrals: who may see which, the lifecycle, stats, export, purge."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session, col, delete, select, true
from sqlmodel.sql.expression import SelectOfScalar

from referral.auth.models import (
    SCOPE_ADMIN,
    SCOPE_REFERRALS_STATUS,
    SCOPE_REFERRALS_WRITE,
    ApiKey,
)
from referral.directory.evidence import specialty_fit
from referral.directory.models import Clinic, Location
from referral.directory.nearest import NearestHit
from referral.directory.records import LocationRecord
from referral.geo.distance import geodesic_km, km_to_miles
from referral.referrals.intake import DISTANCE_DECIMALS
from referral.referrals.matching import Candidate
from referral.referrals.models import (
    TRANSITIONS,
    IdempotencyRecord,
    Referral,
    ReferralEvent,
    Status,
)
from referral.timeutil import as_utc, to_utc, utcnow
from referral.web.text import defuse


class TransitionError(ValueError):
    def __init__(self, current: Status, wanted: Status, *, assigning: bool = False) -> None:
        if assigning:
            super().__init__(
                f"a referral that is {current} cannot be assigned; only one that is "
                f"{' or '.join(ASSIGNABLE)}"
            )
            return
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (final)"
        routing = (
            "; a person routes it with POST /v1/referrals/{id}/assignment"
            if current == Status.NEEDS_ROUTING
            else ""
        )
        super().__init__(f"cannot go from {current} to {wanted}; allowed: {allowed}{routing}")


class ChangeNotAllowedError(PermissionError):
    pass


def visible_to(key: ApiKey) -> ColumnElement[bool]:
    """Admin sees all; a clinic's key the referrals matched to it; an app's key those it
    sent (by key, not by name: names are labels, not identities)."""
    if key.has_scope(SCOPE_ADMIN):
        return true()
    if key.clinic_id is not None:
        return col(Referral.matched_clinic_id) == key.clinic_id
    return col(Referral.source_key_id) == key.id


def get_by_id(session: Session, referral_id: str) -> Referral | None:
    return session.get(Referral, referral_id)


def get_visible(session: Session, key: ApiKey, referral_id: str) -> Referral | None:
    return session.exec(
        select(Referral).where(col(Referral.id) == referral_id, visible_to(key))
    ).first()


@dataclass(frozen=True)
class ReferralFilters:
    status: str | None = None
    clinic_id: int | None = None
    source: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def _filtered(key: ApiKey, filters: ReferralFilters) -> SelectOfScalar[Referral]:
    query = select(Referral).where(visible_to(key))
    if filters.status:
        query = query.where(col(Referral.status) == filters.status)
    if filters.clinic_id is not None:
        query = query.where(col(Referral.matched_clinic_id) == filters.clinic_id)
    if filters.source:
        query = query.where(col(Referral.source) == filters.source)
    if filters.created_after:
        query = query.where(col(Referral.created_at) >= to_utc(filters.created_after))
    if filters.created_before:
        query = query.where(col(Referral.created_at) < to_utc(filters.created_before))
    return query


def list_visible(
    session: Session, key: ApiKey, filters: ReferralFilters, *, offset: int, limit: int
) -> tuple[list[Referral], int]:
    query = _filtered(key, filters)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    page = session.exec(
        query.order_by(col(Referral.created_at).desc(), col(Referral.id))
        .offset(offset)
        .limit(limit)
    ).all()
    return list(page), int(total)


def needing_routing(session: Session) -> list[Referral]:
    """Referrals no clinic was within reach of, waiting for a person (oldest first)."""
    return list(
        session.exec(
            select(Referral)
            .where(col(Referral.status) == Status.NEEDS_ROUTING.value)
            .order_by(col(Referral.created_at), col(Referral.id))
        ).all()
    )


def history(session: Session, referral_id: str) -> list[ReferralEvent]:
    return list(
        session.exec(
            select(ReferralEvent)
            .where(ReferralEvent.referral_id == referral_id)
            .order_by(col(ReferralEvent.at), col(ReferralEvent.id))
        ).all()
    )


def detail(
    session: Session,
    referral: Referral,
    *,
    location: LocationRecord | Location | None = None,
    events: list[ReferralEvent] | None = None,
) -> dict[str, Any]:
    """A referral with what the response shows beside it: match, history. A caller that
    holds the matched location or the whole history (intake, which just made them) passes
    them instead of having them read."""
    if location is None or location.id != referral.matched_location_id:
        location = (
            session.get(Location, referral.matched_location_id)
            if referral.matched_location_id is not None
            else None
        )
    match = None
    if location is not None and referral.match_distance_km is not None:
        km = referral.match_distance_km
        match = {
            "clinic": location.clinic,
            "location": location,
            "distance_km": km,
            "distance_mi": round(km_to_miles(km), DISTANCE_DECIMALS),
            "notes": referral.match_notes,
            **(referral.match_why or {}),
        }
    if events is None:
        events = history(session, referral.id)
    reach = None
    if referral.reach_km is not None:
        reach = {
            "km": referral.reach_km,
            "mi": round(km_to_miles(referral.reach_km), DISTANCE_DECIMALS),
            "basis": referral.reach_basis,
        }
    return {"referral": referral, "match": match, "history": events, "reach": reach}


def may_change(key: ApiKey, referral: Referral, wanted: Status) -> bool:
    if key.has_scope(SCOPE_ADMIN):
        return True
    if key.clinic_id is not None and key.clinic_id == referral.matched_clinic_id:
        return key.has_scope(SCOPE_REFERRALS_STATUS)
    # The app that sent it may withdraw it, nothing more.
    return (
        referral.source_key_id == key.id
        and key.has_scope(SCOPE_REFERRALS_WRITE)
        and wanted == Status.CANCELLED
    )


def change_status(
    session: Session, referral: Referral, key: ApiKey, wanted: Status, note: str | None
) -> Referral:
    """Apply one lifecycle step and append it to the history; flush, don't commit."""
    if not may_change(key, referral, wanted):
        raise ChangeNotAllowedError(f"this key may not set a referral to {wanted}")
    current = Status(referral.status)
    if wanted not in TRANSITIONS[current]:
        raise TransitionError(current, wanted)
    _step(session, referral, key, current, wanted, note)
    return referral


def _step(
    session: Session,
    referral: Referral,
    key: ApiKey,
    current: Status,
    wanted: Status,
    note: str | None,
) -> None:
    """Move the referral to ``wanted`` with a history line; flush."""
    referral.status = wanted.value
    referral.updated_at = utcnow()
    session.add(
        ReferralEvent(
            referral_id=referral.id,
            actor_key_id=key.id,
            actor=key.name,
            from_status=current.value,
            to_status=wanted.value,
            note=note,
        )
    )
    session.flush()


class AssignmentError(ValueError):
    """The location cannot take the referral; ``field`` names the body field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# A referral may be (re)assigned until its clinic has answered it.
ASSIGNABLE = (Status.NEEDS_ROUTING, Status.CREATED)


def assign_location(
    session: Session, referral: Referral, key: ApiKey, location_id: int, note: str | None
) -> Referral:
    """A person routes the referral to a location (admin): it becomes ``created`` for that
    clinic, with why, and a history line; flush, don't commit."""
    if not key.has_scope(SCOPE_ADMIN):
        raise ChangeNotAllowedError("only an admin key may assign a referral")
    current = Status(referral.status)
    if current not in ASSIGNABLE:
        raise TransitionError(current, Status.CREATED, assigning=True)
    location = session.get(Location, location_id)
    if location is None or not location.active or not location.clinic.active:
        raise AssignmentError("location_id", f"no active location with id {location_id}")
    if location.lat is None or location.lon is None:
        raise AssignmentError("location_id", f"location {location_id} has no coordinates")
    distance = geodesic_km(referral.origin_lat, referral.origin_lon, location.lat, location.lon)
    needed = [item["code"] for item in referral.specialties_needed]
    candidate = Candidate(
        NearestHit(location, distance),
        specialty_fit(location.clinic, needed),
        within_reach=referral.reach_km is None or distance <= referral.reach_km,
        assigned_by=key.name,
    )
    previous = referral.matched_clinic_id
    referral.matched_location_id = location.id
    referral.matched_clinic_id = location.clinic_id
    referral.match_distance_km = round(distance, DISTANCE_DECIMALS)
    referral.match_why = candidate.why()
    referral.match_notes = [*referral.match_notes, candidate.reason()]
    referral.alternatives = [
        item for item in referral.alternatives if item.get("location_id") != location.id
    ]
    where = ", ".join(part for part in (location.city, location.state) if part)
    line = f"assigned to {location.clinic.name or f'clinic {location.clinic_id}'} ({where})"
    if previous is not None and current == Status.CREATED:
        line = f"re{line} (was clinic {previous})"
    _step(session, referral, key, current, Status.CREATED, f"{line}: {note}" if note else line)
    return referral


def _day(session: Session) -> Any:
    created = col(Referral.created_at)
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", created), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", created)


def stats(session: Session, key: ApiKey, filters: ReferralFilters) -> dict[str, Any]:
    base = _filtered(key, filters).subquery()
    by_status = session.execute(
        select(base.c.status, func.count()).group_by(base.c.status).order_by(base.c.status)
    ).all()
    by_source = session.execute(
        select(base.c.source, func.count()).group_by(base.c.source).order_by(base.c.source)
    ).all()
    by_clinic = session.execute(
        select(base.c.matched_clinic_id, col(Clinic.name), func.count())
        .join(Clinic, col(Clinic.id) == base.c.matched_clinic_id, isouter=True)
        .group_by(base.c.matched_clinic_id, col(Clinic.name))
        .order_by(base.c.matched_clinic_id)
    ).all()
    day = _day(session)
    day_query = _filtered(key, filters).with_only_columns(day.label("day"), func.count())
    by_day = session.execute(day_query.group_by(day).order_by(day)).all()
    total = sum(count for _, count in by_status)
    return {
        "total": total,
        "by_status": {status: count for status, count in by_status},
        "by_source": {source: count for source, count in by_source},
        "by_clinic": [
            {"clinic_id": clinic_id, "name": name, "count": count}
            for clinic_id, name, count in by_clinic
        ],
        "by_day": [{"day": str(day_value), "count": count} for day_value, count in by_day],
    }


EXPORT_COLUMNS = [
    "id", "created_at", "updated_at", "source", "status", "urgency", "concerns",
    "specialties_needed", "clinic_id", "clinic_name", "location_id", "city", "state",
    "distance_km",
]  # fmt: skip


def _cell(value: Any) -> str:
    # Spreadsheets run cells that start like a formula: defuse them (CSV injection).
    return "" if value is None else defuse(str(value))


def export_rows(session: Session, key: ApiKey, filters: ReferralFilters) -> Iterator[list[str]]:
    """De-identified rows: no patient reference, no assessment."""
    query = (
        _filtered(key, filters)
        .add_columns(col(Clinic.name), col(Location.city), col(Location.state))
        .join(Clinic, col(Clinic.id) == col(Referral.matched_clinic_id), isouter=True)
        .join(Location, col(Location.id) == col(Referral.matched_location_id), isouter=True)
        .order_by(col(Referral.created_at), col(Referral.id))
    )
    for referral, clinic_name, city, state in session.execute(query):
        yield [
            _cell(v)
            for v in (
                referral.id,
                as_utc(referral.created_at).isoformat(),
                as_utc(referral.updated_at).isoformat(),
                referral.source,
                referral.status,
                referral.urgency,
                ";".join(referral.concerns),
                ";".join(item["code"] for item in referral.specialties_needed),
                referral.matched_clinic_id,
                clinic_name,
                referral.matched_location_id,
                city,
                state,
                referral.match_distance_km,
            )
        ]


def to_csv(rows: Iterator[list[str]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row)
        yield buffer.getvalue()


@dataclass(frozen=True)
class PurgeReport:
    referral_ids: list[str]
    idempotency_records: int


def purge(session: Session, older_than: timedelta) -> PurgeReport:
    """Drop assessment payloads and patient refs of old referrals (counts stay), and the
    stored responses that repeat them."""
    cutoff = utcnow() - older_than
    ids = list(
        session.exec(
            select(Referral.id).where(
                col(Referral.created_at) < cutoff,
                col(Referral.purged_at).is_(None),
            )
        ).all()
    )
    if ids:
        session.execute(
            update(Referral)
            .where(col(Referral.id).in_(ids))
            .values(patient_ref=None, assessment=None, purged_at=utcnow())
        )
    cleared = session.execute(
        update(IdempotencyRecord)
        .where(
            col(IdempotencyRecord.created_at) < cutoff,
            col(IdempotencyRecord.response_body).is_not(None),
        )
        .values(response_body=None)
    )
    from referral.geo.models import GeocodeCacheEntry
    from referral.referrals.idempotency import delete_expired

    expired = delete_expired(session)
    # Cached network geocodes may be of patients' addresses: they go with the rest.
    session.execute(delete(GeocodeCacheEntry).where(col(GeocodeCacheEntry.created_at) < cutoff))
    return PurgeReport(ids, int(cleared.rowcount) + expired)  # type: ignore[attr-defined]
