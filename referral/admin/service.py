"""Directory edits as plain functions over a session; each records its diff in the change log."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import phonenumbers
from sqlmodel import Session, col, select

from referral.admin.models import AdminChange
from referral.auth.models import ApiKey
from referral.directory.models import Clinic, ClinicSpecialty, GeocodePrecision, Location
from referral.directory.service import UnknownSpecialtyError, check_specialties
from referral.geo.chain import GeocoderChain
from referral.timeutil import to_utc, utcnow


class EditError(ValueError):
    """The edit cannot be applied; ``field`` names the body field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def normalize_phone(raw: str) -> str:
    """E.164 for a valid (US by default) number; vanity letters are read as keypad digits."""
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException as exc:
        raise EditError("phone", f"not a phone number ({exc.args[0]})") from exc
    if not phonenumbers.is_valid_number(number):
        raise EditError("phone", "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


CLINIC_FIELDS = (
    "name", "phone", "phone_original", "website", "active", "specialties",
    "specialties_not_offered",
)  # fmt: skip
FACT_FIELDS = (
    "opening_hours", "hours_exceptions", "accepting_new_patients", "telehealth", "languages",
)  # fmt: skip
LOCATION_FIELDS = (
    "address_line1", "address_line2", "city", "state", "zip", "lat", "lon",
    "geocode_precision", "geocode_source", "time_zone", "active", *FACT_FIELDS,
)  # fmt: skip


def _clinic_state(clinic: Clinic) -> dict[str, Any]:
    return {
        "name": clinic.name,
        "phone": clinic.phone,
        "phone_original": clinic.phone_original,
        "website": clinic.website,
        "active": clinic.active,
        "specialties": sorted(clinic.specialty_codes),
        "specialties_not_offered": sorted(clinic.not_offered_codes),
    }


def _location_state(location: Location) -> dict[str, Any]:
    return {name: getattr(location, name) for name in LOCATION_FIELDS}


def change_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{field: [before, after]} for the fields that differ: the change log's form."""
    return {
        key: [before.get(key), value] for key, value in after.items() if before.get(key) != value
    }


def _action_for(diff: dict[str, Any]) -> str:
    return {(True, False): "deactivate", (False, True): "reactivate"}.get(
        tuple(diff.get("active", ())), "update"
    )


def _log(
    session: Session,
    actor: ApiKey,
    *,
    entity: str,
    entity_id: int,
    clinic_id: int,
    action: str,
    diff: dict[str, Any],
) -> None:
    session.add(
        AdminChange(
            actor_key_id=actor.id,
            actor=actor.name,
            entity=entity,
            entity_id=entity_id,
            clinic_id=clinic_id,
            action=action,
            diff=diff,
        )
    )


def _resolve_review(reasons: Iterable[str], fixed: Iterable[str]) -> list[str]:
    """Drop the "... missing in source" reasons an admin has now answered."""
    answered = tuple(f"{name} missing in source" for name in fixed)
    return [reason for reason in reasons if not reason.startswith(answered)]


def _known(session: Session, field: str, codes: list[str]) -> list[str]:
    try:
        return check_specialties(session, codes)
    except UnknownSpecialtyError as exc:
        raise EditError(field, f"unknown code(s): {', '.join(exc.codes)}") from exc


def _set_specialties(session: Session, clinic: Clinic, data: dict[str, Any], actor: ApiKey) -> None:
    """``specialties`` replaces what the clinic is on record as offering, and
    ``specialties_not_offered`` what it is on record as not offering; a code moved from one
    to the other by the newer statement leaves the first, a code in neither is unknown."""
    current = set(clinic.specialty_codes)
    offered = set(current)
    lacking = set(clinic.not_offered_codes)
    if "specialties" in data:
        offered = set(_known(session, "specialties", data["specialties"]))
        lacking -= offered
    if "specialties_not_offered" in data:
        said = set(_known(session, "specialties_not_offered", data["specialties_not_offered"]))
        both = sorted(said & offered) if "specialties" in data else []
        if both:
            raise EditError("specialties_not_offered", f"also listed as offered: {', '.join(both)}")
        lacking, offered = said, offered - said
    if offered == current and lacking == set(clinic.not_offered_codes):
        return
    links = {link.specialty_code: link for link in clinic.specialty_links}
    for code, link in links.items():
        if code not in offered and code not in lacking:
            clinic.specialty_links.remove(link)
        elif link.offered != (code in offered):
            link.offered = code in offered
            link.reason, link.source = _said_by(actor, link.offered)
    assert clinic.id is not None
    for code in sorted((offered | lacking) - links.keys()):
        reason, source = _said_by(actor, code in offered)
        clinic.specialty_links.append(
            ClinicSpecialty(
                clinic_id=clinic.id,
                specialty_code=code,
                offered=code in offered,
                reason=reason,
                source=source,
            )
        )


def _said_by(actor: ApiKey, offered: bool) -> tuple[str, str]:
    """(reason, source) of a statement an admin made through the API."""
    what = "offered" if offered else "not offered"
    return f"set by {actor.name}: {what}", f"api key {actor.name}"


def _apply_clinic(session: Session, clinic: Clinic, data: dict[str, Any], actor: ApiKey) -> None:
    fixed = []
    if "name" in data:
        clinic.name = data["name"]
        fixed.append("name")
    if "phone" in data:
        raw = data["phone"]
        clinic.phone = normalize_phone(raw) if raw is not None else None
        clinic.phone_original = raw
        if raw is not None:
            fixed.append("phone")
    if "website" in data:
        clinic.website = data["website"]
    if "active" in data:
        clinic.active = data["active"]
    if "specialties" in data or "specialties_not_offered" in data:
        _set_specialties(session, clinic, data, actor)
    clinic.review_reasons = _resolve_review(clinic.review_reasons, fixed)
    clinic.needs_review = bool(clinic.review_reasons)


def create_clinic(session: Session, data: dict[str, Any], actor: ApiKey) -> Clinic:
    clinic = Clinic(source_text=f"created by {actor.name}")
    session.add(clinic)
    session.flush()
    _apply_clinic(session, clinic, data, actor)
    session.flush()
    assert clinic.id is not None
    _log(session, actor, entity="clinic", entity_id=clinic.id, clinic_id=clinic.id,
         action="create", diff=change_diff({}, _clinic_state(clinic)))  # fmt: skip
    return clinic


def update_clinic(session: Session, clinic: Clinic, data: dict[str, Any], actor: ApiKey) -> Clinic:
    before = _clinic_state(clinic)
    _apply_clinic(session, clinic, data, actor)
    diff = change_diff(before, _clinic_state(clinic))
    if diff:
        clinic.updated_at = utcnow()
        session.flush()
        assert clinic.id is not None
        action = _action_for(diff)
        _log(session, actor, entity="clinic", entity_id=clinic.id, clinic_id=clinic.id,
             action=action, diff=diff)  # fmt: skip
    return clinic


def _place(geocoder: GeocoderChain, location: Location, data: dict[str, Any]) -> None:
    """Coordinates given by hand are 'manual'; otherwise the address goes through the chain."""
    if data.get("lat") is not None and data.get("lon") is not None:
        location.lat, location.lon = data["lat"], data["lon"]
        location.geocode_precision = GeocodePrecision.MANUAL.value
        location.geocode_source = "admin"
        zone = geocoder.location(
            address_line1=None, city=location.city, state=location.state,
            zip_code=location.zip, use_network=False,
        )  # fmt: skip
        location.time_zone = zone.time_zone if zone else None
        return
    found = geocoder.location(
        address_line1=location.address_line1,
        city=location.city,
        state=location.state,
        zip_code=location.zip,
    )
    if found is None:
        raise EditError(
            "address", "could not be geocoded; check city, state and ZIP, or give lat and lon"
        )
    location.lat, location.lon = found.lat, found.lon
    location.geocode_precision = found.precision.value
    location.geocode_source = found.source
    location.time_zone = found.time_zone


ADDRESS_FIELDS = ("address_line1", "address_line2", "city", "state", "zip")


def create_location(
    session: Session, clinic: Clinic, data: dict[str, Any], actor: ApiKey, geocoder: GeocoderChain
) -> Location:
    assert clinic.id is not None
    given: dict[str, Any] = {name: data.get(name) for name in (*ADDRESS_FIELDS, *FACT_FIELDS)}
    location = Location(clinic_id=clinic.id, **given)
    _place(geocoder, location, data)
    session.add(location)
    session.flush()
    assert location.id is not None
    _log(session, actor, entity="location", entity_id=location.id, clinic_id=clinic.id,
         action="create", diff=change_diff({}, _location_state(location)))  # fmt: skip
    return location


def update_location(
    session: Session,
    location: Location,
    data: dict[str, Any],
    actor: ApiKey,
    geocoder: GeocoderChain,
) -> Location:
    before = _location_state(location)
    for name in (*ADDRESS_FIELDS, *FACT_FIELDS):
        if name in data:
            setattr(location, name, data[name])
    if "active" in data:
        location.active = data["active"]
    moved = any(name in data for name in (*ADDRESS_FIELDS, "lat", "lon"))
    if moved:
        _place(geocoder, location, data)
    diff = change_diff(before, _location_state(location))
    if diff:
        location.updated_at = utcnow()
        session.flush()
        assert location.id is not None
        action = _action_for(diff)
        _log(session, actor, entity="location", entity_id=location.id,
             clinic_id=location.clinic_id, action=action, diff=diff)  # fmt: skip
    return location


@dataclass(frozen=True)
class ChangeFilters:
    clinic_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_changes(
    session: Session, filters: ChangeFilters, *, offset: int, limit: int
) -> tuple[list[AdminChange], int]:
    from sqlalchemy import func

    query = select(AdminChange)
    if filters.clinic_id is not None:
        query = query.where(col(AdminChange.clinic_id) == filters.clinic_id)
    if filters.since is not None:
        query = query.where(col(AdminChange.at) >= to_utc(filters.since))
    if filters.until is not None:
        query = query.where(col(AdminChange.at) < to_utc(filters.until))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(AdminChange.at).desc(), col(AdminChange.id).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return list(rows), int(total)
