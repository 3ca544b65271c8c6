"""Referral intake: concerns to specialties, red-flag escalation, matching, creation."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session

from referral.directory.models import Clinic, Location
from referral.directory.nearest import NearestHit, find_nearest
from referral.directory.records import LocationRecord
from referral.directory.service import UnknownSpecialtyError, check_specialties
from referral.geo.distance import geodesic_km
from referral.geo.origin import Origin
from referral.referrals.models import (
    URGENCY_ORDER,
    Referral,
    ReferralEvent,
    Status,
    Urgency,
)
from referral.referrals.vocabulary import Vocabulary, intake_vocabulary

ALTERNATIVES = 3


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


@dataclass(frozen=True)
class Match:
    hit: NearestHit | None
    notes: list[str]
    alternatives: list[NearestHit]


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


def _preferred_hit(
    session: Session, clinic_id: int, origin: Origin, max_distance_km: float | None
) -> tuple[NearestHit | None, str]:
    clinic = session.get(Clinic, clinic_id)
    if clinic is None or not clinic.active:
        raise ReferralInputError("preferred_clinic_id", f"no active clinic with id {clinic_id}")
    hits = sorted(
        (
            NearestHit(location, geodesic_km(origin.lat, origin.lon, location.lat, location.lon))
            for location in clinic.locations
            if location.active and location.lat is not None and location.lon is not None
        ),
        key=lambda hit: (hit.distance_km, hit.location.id or 0),
    )
    if not hits:
        return None, "the preferred clinic has no located, active location; matched by distance"
    if max_distance_km is not None and hits[0].distance_km > max_distance_km:
        return None, (
            f"the preferred clinic is {hits[0].distance_km:.1f} km away, beyond max_distance; "
            "matched by distance instead"
        )
    return hits[0], "the patient's preferred clinic"


def match_location(
    session: Session,
    origin: Origin,
    needed: list[str],
    *,
    max_distance_km: float | None,
    preferred_clinic_id: int | None,
) -> Match:
    """Nearest location offering every needed specialty; failing that, the nearest of all
    (with a note); the preferred clinic first when it is within reach."""
    notes: list[str] = []
    preferred = None
    if preferred_clinic_id is not None:
        preferred, note = _preferred_hit(session, preferred_clinic_id, origin, max_distance_km)
        notes.append(note)
    ranked = find_nearest(
        session,
        origin.lat,
        origin.lon,
        specialties=needed,
        radius_km=max_distance_km,
        limit=ALTERNATIVES + 1,
    ).hits
    if ranked:
        if needed:
            notes.append(f"nearest clinic offering all of: {', '.join(needed)}")
    else:
        ranked = find_nearest(
            session, origin.lat, origin.lon, radius_km=max_distance_km, limit=ALTERNATIVES + 1
        ).hits
        if ranked and needed:
            notes.append(
                f"no clinic within reach offers all of: {', '.join(needed)}; "
                "matched the nearest clinic instead"
            )
    if preferred is not None:
        if needed and not set(needed) <= set(preferred.location.clinic.specialty_codes):
            notes.append(f"the preferred clinic does not list all of: {', '.join(needed)}")
        others = [hit for hit in ranked if hit.location.id != preferred.location.id]
        return Match(preferred, notes, others[:ALTERNATIVES])
    if not ranked:
        anywhere = find_nearest(session, origin.lat, origin.lon, limit=1).hits
        nearest = f"; the nearest is {anywhere[0].distance_km:.1f} km away" if anywhere else ""
        raise ReferralInputError("max_distance", f"no active clinic within reach{nearest}")
    return Match(ranked[0], notes, ranked[1 : ALTERNATIVES + 1])


def _summary(hit: NearestHit) -> dict[str, Any]:
    location = hit.location
    return {
        "clinic_id": location.clinic_id,
        "clinic_name": location.clinic.name,
        "location_id": location.id,
        "city": location.city,
        "state": location.state,
        "distance_km": round(hit.distance_km, 3),
    }


@dataclass(frozen=True)
class NewReferral:
    referral: Referral
    # Its history so far (the one "created" line) and the matched location: what the answer
    # shows, so that it needs no reading back.
    history: list[ReferralEvent]
    location: LocationRecord | Location


def create_referral(
    session: Session, request: ReferralRequest, *, source: str, source_key_id: int | None
) -> NewReferral:
    """Match and make a referral with its first history line. Nothing is written yet:
    ``store_referral`` does, as late as it can (on SQLite the first write takes the database's
    one write lock, held until the commit)."""
    vocabulary = intake_vocabulary(session, request.concerns, request.red_flags)
    needed = specialties_needed(session, vocabulary, request.concerns, request.specialties)
    urgency, escalations = escalate(vocabulary, request.urgency, request.red_flags)
    match = match_location(
        session,
        request.origin,
        [item["code"] for item in needed],
        max_distance_km=request.max_distance_km,
        preferred_clinic_id=request.preferred_clinic_id,
    )
    assert match.hit is not None
    referral = Referral(
        id=secrets.token_hex(16),
        source=source,
        source_key_id=source_key_id,
        status=Status.CREATED.value,
        urgency=urgency.value,
        urgency_requested=request.urgency.value,
        concerns=list(dict.fromkeys(request.concerns)),
        red_flags=list(dict.fromkeys(request.red_flags)),
        specialties_requested=list(dict.fromkeys(request.specialties)),
        specialties_needed=needed,
        escalations=escalations,
        origin_kind=request.origin.resolved_from.value,
        origin_lat=round(request.origin.lat, 2),
        origin_lon=round(request.origin.lon, 2),
        max_distance_km=request.max_distance_km,
        preferred_clinic_id=request.preferred_clinic_id,
        matched_location_id=match.hit.location.id,
        matched_clinic_id=match.hit.location.clinic_id,
        match_distance_km=round(match.hit.distance_km, 3),
        match_notes=match.notes,
        alternatives=[_summary(hit) for hit in match.alternatives],
        patient_ref=request.patient_ref,
        assessment=request.assessment,
    )
    event = ReferralEvent(
        referral_id=referral.id,
        actor_key_id=source_key_id,
        actor=source,
        from_status=None,
        to_status=Status.CREATED.value,
        note=None,
    )
    return NewReferral(referral, [event], match.hit.location)


def store_referral(session: Session, new: NewReferral) -> None:
    """Write what ``create_referral`` made in ``session``'s transaction; don't commit."""
    # Core inserts, the referral first (the event refers to it): the unit of work would cost
    # more than the rest of storing. The event's id is never shown, so it is not read back.
    connection = session.connection()
    connection.execute(_INSERT_REFERRAL, _values(_REFERRAL, new.referral))
    for event in new.history:
        connection.execute(_INSERT_EVENT, _values(_EVENT, event, skip=("id",)))
    # The stored referral joins the session as if loaded, so later changes to it are flushed.
    make_transient_to_detached(new.referral)
    session.add(new.referral)


_REFERRAL: Table = Referral.__table__  # type: ignore[attr-defined]
_EVENT: Table = ReferralEvent.__table__  # type: ignore[attr-defined]
_INSERT_REFERRAL = _REFERRAL.insert()
_INSERT_EVENT = _EVENT.insert()


def _values(table: Table, row: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        column.key: getattr(row, column.key) for column in table.columns if column.key not in skip
    }
