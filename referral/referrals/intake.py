"""Referral intake: the body as a request, concerns to specialties, red-flag escalation,
matching (matching.py), the new rows and their inserts. The use case around them (idempotency,
audit, one transaction) is service.py."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from referral.directory.models import Location
from referral.directory.records import LocationRecord
from referral.directory.service import UnknownSpecialtyError, check_specialties
from referral.geo.chain import GeocoderChain
from referral.geo.distance import km_to_miles, miles_to_km
from referral.geo.origin import Origin, OriginError, resolve_origin_args
from referral.referrals.matching import (
    DEFAULT_RULES,
    Candidate,
    MatchInputError,
    MatchRules,
    match_referral,
)
from referral.referrals.models import (
    URGENCY_ORDER,
    Referral,
    ReferralEvent,
    Status,
    Urgency,
)
from referral.referrals.vocabulary import Vocabulary, intake_vocabulary
from referral.timeutil import utcnow


class ReferralInputError(ValueError):
    """The referral cannot be made as asked; ``field`` names the body field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ReferralRequest:
    origin: Origin
    concerns: list[str]
    specialties: list[str] = field(default_factory=list)
    urgency: Urgency = Urgency.ROUTINE
    red_flags: list[str] = field(default_factory=list)
    preferred_clinic_id: int | None = None
    max_distance_km: float | None = None
    patient_ref: str | None = None
    assessment: dict[str, Any] | None = None


def specialties_needed(
    session: Session, vocabulary: Vocabulary, concerns: list[str], explicit: list[str]
) -> list[dict[str, str]]:
    """The specialties to look for, each with why: from the concerns, plus any asked for."""
    unknown = [code for code in concerns if code not in vocabulary.concerns]
    if unknown:
        raise ReferralInputError("concerns", f"unknown concern code(s): {', '.join(unknown)}")
    try:
        explicit = check_specialties(session, explicit)
    except UnknownSpecialtyError as exc:
        raise ReferralInputError(
            "specialties", f"unknown specialty code(s): {', '.join(exc.codes)}"
        ) from exc
    needed: dict[str, str] = {}
    for concern in concerns:
        for code, reason in vocabulary.concerns[concern]:
            label = vocabulary.concern_labels.get(concern, concern)
            needed.setdefault(code, f"concern '{label}': {reason}")
    for code in explicit:
        needed.setdefault(code, "asked for by the assessment app")
    return [{"code": code, "reason": reason} for code, reason in needed.items()]


def escalate(
    vocabulary: Vocabulary, requested: Urgency, red_flags: list[str]
) -> tuple[Urgency, list[dict[str, str]]]:
    """Raise urgency to what the red flags call for; say which flag did and what to do."""
    unknown = [code for code in red_flags if code not in vocabulary.red_flags]
    if unknown:
        raise ReferralInputError("red_flags", f"unknown red flag code(s): {', '.join(unknown)}")
    urgency = requested
    escalations = []
    for code in red_flags:
        flag = vocabulary.red_flags[code]
        level = Urgency(flag.escalate_to)
        escalations.append({"red_flag": code, "escalate_to": level.value, "advice": flag.advice})
        if URGENCY_ORDER.index(level) > URGENCY_ORDER.index(urgency):
            urgency = level
    return urgency, escalations


# The origin is kept to two decimals of a degree (about 1 km); everything after intake, the
# match included, sees only that (docs/matching.md).
ORIGIN_DECIMALS = 2
# Distances are given to 100 m: finer would be false precision from a ~1 km origin.
DISTANCE_DECIMALS = 1


def coarsen(value: float) -> float:
    return round(value, ORIGIN_DECIMALS)


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    """A candidate as stored in ``alternatives``: where, how far, and why it is listed."""
    location = candidate.hit.location
    clinic = location.clinic
    km = round(candidate.distance_km, DISTANCE_DECIMALS)
    return {
        "clinic_id": location.clinic_id,
        "clinic_name": clinic.name,
        "phone": clinic.phone,
        "location_id": location.id,
        "city": location.city,
        "state": location.state,
        "distance_km": km,
        "distance_mi": round(km_to_miles(km), DISTANCE_DECIMALS),
        **candidate.why(),
    }


NEEDS_ROUTING_NOTE = "nothing within reach: waits for a person to route it"


@dataclass(frozen=True)
class NewReferral:
    """A matched referral not yet stored: its row, its history so far (the one "created"
    line) and the matched location, if any. Plain dicts, no ORM objects: they are written
    with Core inserts and shown in the answer, and never read back."""

    row: dict[str, Any]
    history: list[dict[str, Any]]
    location: LocationRecord | Location | None

    @property
    def id(self) -> str:
        referral_id: str = self.row["id"]
        return referral_id


def referral_request(body: Mapping[str, Any], geocoder: GeocoderChain) -> ReferralRequest:
    """The parsed body (``ReferralCreateSchema``) as a request to match: the origin placed
    through the geocoder chain (a network geocoder only when configured)."""
    try:
        origin = resolve_origin_args(
            geocoder, body["origin"], location="json", field_prefix="origin."
        )
    except OriginError as exc:
        raise ReferralInputError(f"origin.{exc.field}", exc.reason) from exc
    max_distance = body.get("max_distance")
    if max_distance is not None and body.get("unit", "mi") != "km":
        max_distance = miles_to_km(max_distance)
    return ReferralRequest(
        origin=origin,
        concerns=body["concerns"],
        specialties=body.get("specialties", []),
        urgency=Urgency(body.get("urgency", Urgency.ROUTINE.value)),
        red_flags=body.get("red_flags", []),
        preferred_clinic_id=body.get("preferred_clinic_id"),
        max_distance_km=max_distance,
        patient_ref=body.get("patient_ref"),
        assessment=body.get("assessment"),
    )


def create_referral(
    session: Session,
    request: ReferralRequest,
    *,
    source: str,
    source_key_id: int | None,
    rules: MatchRules = DEFAULT_RULES,
) -> NewReferral:
    """Match and make a referral with its first history line. Nothing is written:
    ``store_referral`` does. With nothing within reach the referral is made all the same,
    waiting for a person to route it (never refused for distance)."""
    vocabulary = intake_vocabulary(session, request.concerns, request.red_flags)
    needed = specialties_needed(session, vocabulary, request.concerns, request.specialties)
    urgency, escalations = escalate(vocabulary, request.urgency, request.red_flags)
    lat, lon = coarsen(request.origin.lat), coarsen(request.origin.lon)
    try:
        match = match_referral(
            session,
            lat,
            lon,
            [item["code"] for item in needed],
            urgency=urgency,
            max_distance_km=request.max_distance_km,
            preferred_clinic_id=request.preferred_clinic_id,
            rules=rules,
        )
    except MatchInputError as exc:
        raise ReferralInputError("preferred_clinic_id", str(exc)) from exc
    chosen = match.chosen
    status = Status.CREATED if chosen is not None else Status.NEEDS_ROUTING
    location = None if chosen is None else chosen.hit.location
    now = utcnow()
    referral_id = secrets.token_hex(16)
    # Every column of the referral table (tests/test_referral_intake_cost.py holds the
    # stored rows to what the ORM model would have stored).
    row: dict[str, Any] = {
        "id": referral_id,
        "source": source,
        "source_key_id": source_key_id,
        "created_at": now,
        "updated_at": now,
        "purged_at": None,
        "version": 1,
        "status": status.value,
        "urgency": urgency.value,
        "urgency_requested": request.urgency.value,
        "concerns": list(dict.fromkeys(request.concerns)),
        "red_flags": list(dict.fromkeys(request.red_flags)),
        "specialties_requested": list(dict.fromkeys(request.specialties)),
        "specialties_needed": needed,
        "escalations": escalations,
        "origin_kind": request.origin.resolved_from.value,
        "origin_lat": lat,
        "origin_lon": lon,
        "max_distance_km": request.max_distance_km,
        "reach_km": match.reach.km,
        "reach_basis": match.reach.basis,
        "preferred_clinic_id": request.preferred_clinic_id,
        "matched_location_id": None if location is None else location.id,
        "matched_clinic_id": None if location is None else location.clinic_id,
        "match_distance_km": (
            None if chosen is None else round(chosen.distance_km, DISTANCE_DECIMALS)
        ),
        "match_notes": match.notes,
        "match_why": None if chosen is None else chosen.why(),
        "alternatives": [candidate_json(candidate) for candidate in match.alternatives],
        "patient_ref": request.patient_ref,
        "assessment": request.assessment,
    }
    event = {
        "referral_id": referral_id,
        "at": now,
        "actor_key_id": source_key_id,
        "actor": source,
        "from_status": None,
        "to_status": status.value,
        "note": None
        if chosen is not None
        else "nothing within reach: waits for a person to route it",
    }
    return NewReferral(row, [event], location)


_INSERT_REFERRAL = Referral.__table__.insert()  # type: ignore[attr-defined]
_INSERT_EVENT = ReferralEvent.__table__.insert()  # type: ignore[attr-defined]


def store_referral(session: Session, new: NewReferral) -> None:
    """Write what ``create_referral`` made in ``session``'s transaction; don't commit. Core
    inserts, the referral first (the event refers to it); the event's id is never shown, so
    nothing is read back."""
    connection = session.connection()
    connection.execute(_INSERT_REFERRAL, new.row)
    for event in new.history:
        connection.execute(_INSERT_EVENT, event)
