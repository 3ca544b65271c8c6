"""The review queue: directory records a person should look at, each with why.

Active records only (an inactive one is out of every public answer already):

- a clinic with an unknown name or phone;
- a location geocoded only to its city's centre, or with no coordinates at all;
- several active clinics with one phone number (likely one organization): one item for them;
- a clinic or location flagged ``needs_review`` (its ``review_reasons`` say why);
- a clinic or location not updated for ``stale_days``;
- a clinic with no specialty on record, offered or not (matching treats each as possible);
- items the caller adds (the edge adds referrals waiting for a person to route them).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import marshmallow as ma
from marshmallow import validate
from sqlalchemy import func, or_, select
from sqlmodel import Session, col

from referral.directory.models import Clinic, ClinicSpecialty, GeocodePrecision, Location
from referral.timeutil import as_utc, utcnow
from referral.web.fields import UtcDateTime

DEFAULT_STALE_DAYS = 365

# Why an item is listed, as codes (``codes``) beside the words (``reasons``).
UNKNOWN_NAME = "unknown_name"
UNKNOWN_PHONE = "unknown_phone"
COARSE_GEOCODE = "coarse_geocode"
NO_COORDINATES = "no_coordinates"
SHARED_PHONE = "shared_phone"
FLAGGED = "flagged"
STALE = "stale"
SPECIALTIES_UNKNOWN = "specialties_unknown"
NEEDS_ROUTING = "needs_routing"
CODES = (
    UNKNOWN_NAME, UNKNOWN_PHONE, COARSE_GEOCODE, NO_COORDINATES, SHARED_PHONE, FLAGGED, STALE,
    SPECIALTIES_UNKNOWN, NEEDS_ROUTING,
)  # fmt: skip

KINDS = ("referral", "clinic", "location", "shared_phone")
# Referrals waiting for a person come first, the most urgent first.
URGENCY_RANK = {"urgent": 0, "soon": 1, "routine": 2}


@dataclass
class ReviewItem:
    kind: str  # one of KINDS
    clinic_id: int | None  # None for a referral
    name: str | None
    location_id: int | None = None
    reasons: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    phone: str | None = None
    city: str | None = None
    state: str | None = None
    updated_at: datetime | None = None
    clinics: list[dict[str, Any]] = field(default_factory=list)  # shared_phone: who shares
    referral_id: str | None = None
    urgency: str | None = None

    def add(self, code: str, reason: str) -> None:
        if code not in self.codes:
            self.codes.append(code)
        self.reasons.append(reason)


class WaitingReferral(Protocol):
    """A referral no clinic was matched to (the referrals domain's row; read, not imported)."""

    id: str
    urgency: str
    created_at: datetime
    reach_km: float | None
    specialties_needed: list[dict[str, Any]]
    alternatives: list[dict[str, Any]]


def routing_items(referrals: Iterable[WaitingReferral]) -> list[ReviewItem]:
    """One item per referral waiting for a person: what it needs and the nearest options."""
    items = []
    for referral in referrals:
        needed = ", ".join(item["code"] for item in referral.specialties_needed) or "any"
        reach = f"{referral.reach_km:.0f} km" if referral.reach_km is not None else "reach"
        options = "; ".join(
            f"{option.get('clinic_name') or 'unnamed clinic'} "
            f"({option.get('city')}, {option.get('state')}) {option.get('distance_km')} km"
            for option in referral.alternatives
        )
        item = ReviewItem(
            "referral", None, None, referral_id=referral.id, urgency=referral.urgency,
            updated_at=as_utc(referral.created_at),
        )  # fmt: skip
        item.add(
            NEEDS_ROUTING,
            f"{referral.urgency} referral needing {needed}: no clinic within {reach}; "
            f"assign a location (POST /v1/referrals/{referral.id}/assignment); nearest "
            f"options: {options or 'none'}",
        )
        items.append(item)
    return items


def _stale_reason(updated_at: datetime, stale_days: float) -> str:
    return f"not updated since {as_utc(updated_at).date().isoformat()} (over {stale_days:g} days)"


def review_queue(
    session: Session,
    *,
    stale_days: float = DEFAULT_STALE_DAYS,
    codes: Collection[str] = (),
    now: datetime | None = None,
    extra: Collection[ReviewItem] = (),
) -> list[ReviewItem]:
    """Every item (``extra`` included), referrals first (most urgent, then oldest), then by
    clinic (the clinic, its locations, a shared phone); ``codes`` keeps the items listed for
    any of them."""
    cutoff = (now or utcnow()) - timedelta(days=stale_days)
    items: list[ReviewItem] = list(extra)
    no_evidence = col(Clinic.id).not_in(select(col(ClinicSpecialty.clinic_id)))

    clinic_rows = session.execute(
        select(
            col(Clinic.id), col(Clinic.name), col(Clinic.phone), col(Clinic.needs_review),
            col(Clinic.review_reasons), col(Clinic.updated_at),
            no_evidence.label("no_evidence"),
        )
        .where(col(Clinic.active).is_(True))
        .where(
            or_(
                col(Clinic.name).is_(None),
                col(Clinic.phone).is_(None),
                col(Clinic.needs_review).is_(True),
                col(Clinic.updated_at) < cutoff,
                no_evidence,
            )
        )
    ).all()  # fmt: skip
    for row in clinic_rows:
        item = ReviewItem(
            "clinic", row.id, row.name, phone=row.phone, updated_at=as_utc(row.updated_at)
        )
        if row.name is None:
            item.add(UNKNOWN_NAME, "name unknown")
        if row.phone is None:
            item.add(UNKNOWN_PHONE, "phone unknown")
        if row.needs_review:
            for reason in row.review_reasons or ["flagged for review"]:
                item.add(FLAGGED, reason)
        if as_utc(row.updated_at) < cutoff:
            item.add(STALE, _stale_reason(row.updated_at, stale_days))
        if row.no_evidence:
            item.add(
                SPECIALTIES_UNKNOWN,
                "no specialty on record, offered or not: referrals treat each as possible",
            )
        items.append(item)

    location_rows = session.execute(
        select(
            col(Location.id), col(Location.clinic_id), col(Clinic.name), col(Location.city),
            col(Location.state), col(Location.lat), col(Location.lon),
            col(Location.geocode_precision), col(Location.needs_review),
            col(Location.review_reasons), col(Location.updated_at),
        )
        .join(Clinic, col(Clinic.id) == col(Location.clinic_id))
        .where(col(Clinic.active).is_(True), col(Location.active).is_(True))
        .where(
            or_(
                col(Location.geocode_precision) == GeocodePrecision.CITY.value,
                col(Location.lat).is_(None),
                col(Location.lon).is_(None),
                col(Location.needs_review).is_(True),
                col(Location.updated_at) < cutoff,
            )
        )
    ).all()  # fmt: skip
    for row in location_rows:
        item = ReviewItem(
            "location", row.clinic_id, row.name, location_id=row.id, city=row.city,
            state=row.state, updated_at=as_utc(row.updated_at),
        )  # fmt: skip
        if row.lat is None or row.lon is None:
            item.add(NO_COORDINATES, "no coordinates: nearest search cannot find it")
        elif row.geocode_precision == GeocodePrecision.CITY.value:
            item.add(COARSE_GEOCODE, "geocoded only to the city centre (precision city)")
        if row.needs_review:
            for reason in row.review_reasons or ["flagged for review"]:
                item.add(FLAGGED, reason)
        if as_utc(row.updated_at) < cutoff:
            item.add(STALE, _stale_reason(row.updated_at, stale_days))
        items.append(item)

    shared = (
        select(col(Clinic.phone))
        .where(col(Clinic.active).is_(True), col(Clinic.phone).is_not(None))
        .group_by(col(Clinic.phone))
        .having(func.count() > 1)
    )
    sharing: dict[str, list[Any]] = {}
    for row in session.execute(
        select(col(Clinic.id), col(Clinic.name), col(Clinic.phone))
        .where(col(Clinic.active).is_(True), col(Clinic.phone).in_(shared))
        .order_by(col(Clinic.id))
    ):
        sharing.setdefault(row.phone, []).append(row)
    for phone, clinics in sharing.items():
        names = ", ".join(clinic.name or f"unnamed clinic {clinic.id}" for clinic in clinics)
        item = ReviewItem(
            "shared_phone", clinics[0].id, clinics[0].name, phone=phone,
            clinics=[{"id": clinic.id, "name": clinic.name} for clinic in clinics],
        )  # fmt: skip
        item.add(
            SHARED_PHONE,
            f"{len(clinics)} active clinics share the phone {phone} (likely one organization): "
            f"{names}",
        )
        items.append(item)

    if codes:
        wanted = set(codes)
        items = [item for item in items if wanted.intersection(item.codes)]
    order = {kind: position for position, kind in enumerate(KINDS)}
    items.sort(key=lambda item: _order(item, order))
    return items


def _order(item: ReviewItem, kinds: dict[str, int]) -> tuple[Any, ...]:
    if item.kind == "referral":
        created = item.updated_at.isoformat() if item.updated_at else ""
        return (0, URGENCY_RANK.get(item.urgency or "", 3), created, item.referral_id or "")
    return (1, item.clinic_id or 0, kinds[item.kind], item.location_id or 0, "")


# ---- HTTP schemas -------------------------------------------------------------------------


class ReviewQueryArgsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    reason = ma.fields.List(
        ma.fields.String(validate=validate.OneOf(CODES)),
        validate=validate.Length(max=len(CODES)),
        metadata={"description": "only items listed for this reason code; repeatable (any)"},
    )


class SharingClinicSchema(ma.Schema):
    id = ma.fields.Integer()
    name = ma.fields.String(allow_none=True)


class ReviewItemSchema(ma.Schema):
    kind = ma.fields.String(metadata={"description": "referral, clinic, location or shared_phone"})
    clinic_id = ma.fields.Integer(
        allow_none=True,
        metadata={"description": "for shared_phone, the first of the clinics; null: a referral"},
    )
    referral_id = ma.fields.String(
        allow_none=True, metadata={"description": "a referral that needs routing"}
    )
    urgency = ma.fields.String(allow_none=True, metadata={"description": "the referral's"})
    location_id = ma.fields.Integer(allow_none=True)
    name = ma.fields.String(allow_none=True, metadata={"description": "the clinic's name"})
    reasons = ma.fields.List(ma.fields.String(), metadata={"description": "why it is listed"})
    codes = ma.fields.List(
        ma.fields.String(), metadata={"description": f"the reasons as codes: {', '.join(CODES)}"}
    )
    phone = ma.fields.String(allow_none=True)
    city = ma.fields.String(allow_none=True)
    state = ma.fields.String(allow_none=True)
    updated_at = UtcDateTime(
        allow_none=True, metadata={"description": "a referral: when it was made"}
    )
    clinics = ma.fields.List(
        ma.fields.Nested(SharingClinicSchema),
        metadata={"description": "shared_phone: the clinics sharing the number"},
    )


__all__ = [
    "CODES",
    "ReviewItem",
    "ReviewItemSchema",
    "ReviewQueryArgsSchema",
    "WaitingReferral",
    "review_queue",
    "routing_items",
]
