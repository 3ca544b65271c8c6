"""Referral tables: the referral, its history, idempotency records, the audit trail, and the
concern / red-flag vocabulary.

No ``from __future__ import annotations`` here: SQLModel reads the annotations at runtime.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Index, UniqueConstraint
from sqlalchemy.orm import declared_attr
from sqlmodel import Field, SQLModel

from referral.timeutil import utcnow


class Urgency(StrEnum):
    ROUTINE = "routine"
    SOON = "soon"
    URGENT = "urgent"


URGENCY_ORDER = [Urgency.ROUTINE, Urgency.SOON, Urgency.URGENT]


class Status(StrEnum):
    # Nothing within reach: a person assigns a location (then it is "created").
    NEEDS_ROUTING = "needs_routing"
    CREATED = "created"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    SCHEDULED = "scheduled"
    NO_SHOW = "no_show"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


# Which status may follow which; anything else is a 409.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    # Assigning a location (POST .../assignment) is the way out, besides cancelling.
    Status.NEEDS_ROUTING: frozenset({Status.CANCELLED}),
    Status.CREATED: frozenset({Status.ACCEPTED, Status.DECLINED, Status.CANCELLED}),
    Status.ACCEPTED: frozenset({Status.SCHEDULED, Status.DECLINED, Status.CANCELLED}),
    Status.SCHEDULED: frozenset(
        {Status.SCHEDULED, Status.COMPLETED, Status.NO_SHOW, Status.CANCELLED}
    ),
    Status.NO_SHOW: frozenset({Status.SCHEDULED, Status.CANCELLED}),
    Status.DECLINED: frozenset(),
    Status.COMPLETED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class ConcernBase(SQLModel):
    code: str = Field(primary_key=True, max_length=40)
    label: str = Field(max_length=200)


class Concern(ConcernBase, table=True):
    __tablename__ = "concern"


class ConcernSpecialty(SQLModel, table=True):
    """Which specialty a concern calls for, and why (editable in seed_data/concerns.json)."""

    __tablename__ = "concern_specialty"

    concern_code: str = Field(
        foreign_key="concern.code", primary_key=True, max_length=40, ondelete="CASCADE"
    )
    specialty_code: str = Field(foreign_key="specialty.code", primary_key=True, max_length=40)
    reason: str = Field(max_length=500)


class RedFlagBase(SQLModel):
    code: str = Field(primary_key=True, max_length=40)
    label: str = Field(max_length=200)
    escalate_to: str = Field(max_length=10)  # an Urgency
    advice: str = Field(max_length=500)


class RedFlag(RedFlagBase, table=True):
    __tablename__ = "red_flag"


class ReferralBase(SQLModel):
    status: str = Field(default=Status.CREATED.value, max_length=20, index=True)
    urgency: str = Field(default=Urgency.ROUTINE.value, max_length=10)
    urgency_requested: str = Field(default=Urgency.ROUTINE.value, max_length=10)
    concerns: list[str] = Field(default_factory=list, sa_type=JSON)
    red_flags: list[str] = Field(default_factory=list, sa_type=JSON)
    specialties_requested: list[str] = Field(default_factory=list, sa_type=JSON)
    # What the matcher looked for, and why: [{"code", "reason"}].
    specialties_needed: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    escalations: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    # The origin is kept only to about 1 km (two decimals): enough to explain the match.
    origin_kind: str = Field(max_length=20)
    origin_lat: float
    origin_lon: float
    max_distance_km: float | None = None
    # The reach the match used, and whether it was max_distance or the urgency's default.
    reach_km: float | None = None
    reach_basis: str | None = Field(default=None, max_length=20)
    preferred_clinic_id: int | None = Field(default=None, foreign_key="clinic.id")
    matched_location_id: int | None = Field(default=None, foreign_key="location.id")
    matched_clinic_id: int | None = Field(default=None, foreign_key="clinic.id", index=True)
    match_distance_km: float | None = None
    match_notes: list[str] = Field(default_factory=list, sa_type=JSON)
    # Why the matched location was chosen (matching.Candidate.why); alternatives carry theirs.
    match_why: dict[str, Any] | None = Field(default=None, sa_type=JSON(none_as_null=True))
    alternatives: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    patient_ref: str | None = Field(default=None, max_length=64)
    assessment: dict[str, Any] | None = Field(default=None, sa_type=JSON)


class Referral(ReferralBase, table=True):
    __tablename__ = "referral"
    __table_args__ = (Index("ix_referral_source_created", "source", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)  # random hex: ids reveal no volume
    source: str = Field(max_length=100)  # the app's name (its API key's name)
    source_key_id: int | None = Field(default=None, foreign_key="api_key.id")
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=DateTime(timezone=True), index=True
    )
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    purged_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Optimistic locking: of two concurrent status changes, the second finds another version.
    version: int = Field(default=1)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]


class ReferralEvent(SQLModel, table=True):
    """One line of a referral's history: every status change, with who and when."""

    __tablename__ = "referral_event"

    id: int | None = Field(default=None, primary_key=True)
    referral_id: str = Field(foreign_key="referral.id", index=True, max_length=32)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    actor_key_id: int | None = Field(default=None, foreign_key="api_key.id")
    actor: str = Field(max_length=100)  # the key's name, for display
    from_status: str | None = Field(default=None, max_length=20)
    to_status: str = Field(max_length=20)
    note: str | None = Field(default=None, max_length=1000)


class IdempotencyRecord(SQLModel, table=True):
    """A POST's Idempotency-Key, per calling API key: its body hash and stored response,
    stored in the transaction that stores the referral (referral/referrals/service.py)."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("api_key_id", "key", name="uq_idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    api_key_id: int = Field(foreign_key="api_key.id")
    key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    # "done": written once, finished, with the referral it answers (releases before this one
    # also wrote "in_flight" claims first; the next request with such a key replaces it).
    state: str = Field(max_length=12)
    response_status: int | None = None
    response_body: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    referral_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)


class AuditEvent(SQLModel, table=True):
    """Every read and write of a referral: who, what, which, when, and how it ended."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    actor_key_id: int | None = Field(default=None, foreign_key="api_key.id")
    action: str = Field(max_length=40)
    referral_id: str | None = Field(default=None, max_length=32, index=True)
    outcome: str = Field(max_length=40)
