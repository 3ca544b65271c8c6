"""marshmallow schemas for directory edits and the change log."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral.directory.hours import (
    EXCEPTION_SCHEMA,
    SCHEDULE_SCHEMA,
    HoursError,
    check_exceptions,
    check_schedule,
)
from referral.directory.schemas import LANGUAGE, ZIP_PATTERN, StateCode
from referral.web.fields import (
    Pattern,
    StrictBoolean,
    StrictFloat,
    UtcDateTime,
    VocabularyCode,
)
from referral.web.limits import MAX_ID
from referral.web.text import PlainText

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# http(s), a host name with a top-level domain, an optional port, then visible ASCII only (the
# spec states this same pattern).
WEBSITE_PATTERN = rf"^https?://(?:{_LABEL}\.)+[A-Za-z]{{2,63}}(?::[0-9]{{1,5}})?(?:[/?#][!-~]*)?$"


class _Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE


class ClinicCreateSchema(_Strict):
    name = ma.fields.String(required=True, validate=[validate.Length(min=1, max=200), PlainText()])
    phone = ma.fields.String(allow_none=True, validate=validate.Length(min=3, max=40))
    website = ma.fields.String(
        allow_none=True,
        validate=[
            validate.Length(max=300),
            Pattern(WEBSITE_PATTERN, error="not a website address (http:// or https://, a host)"),
        ],
    )
    specialties = ma.fields.List(
        VocabularyCode("specialties"),
        validate=validate.Length(max=20),
        metadata={"description": "every specialty it offers (replaces the list on record)"},
    )
    specialties_not_offered = ma.fields.List(
        VocabularyCode("specialties"),
        validate=validate.Length(max=20),
        metadata={
            "description": "every specialty it is known not to offer (replaces that list); a "
            "code in neither list is unknown, which matching treats as possible, not as no"
        },
    )


class ClinicPatchSchema(ClinicCreateSchema):
    name = ma.fields.String(validate=[validate.Length(min=1, max=200), PlainText()])
    active = StrictBoolean(metadata={"description": "false deactivates, true reactivates"})


def _hours(check: Any, value: Any) -> None:
    if value is None:
        return
    try:
        check(value)
    except HoursError as exc:
        raise ma.ValidationError(str(exc)) from exc


def _both_or_neither(data: dict[str, Any]) -> None:
    if ("lat" in data) != ("lon" in data):
        missing = "lon" if "lat" in data else "lat"
        raise ma.ValidationError({missing: ["lat and lon go together"]})


class LocationCreateSchema(_Strict):
    class Meta(_Strict.Meta):
        # Coordinates come in pairs: both, or neither (then the address is geocoded).
        openapi = {
            "oneOf": [
                {"required": ["lat", "lon"]},
                {"not": {"anyOf": [{"required": ["lat"]}, {"required": ["lon"]}]}},
            ]
        }

    address_line1 = ma.fields.String(
        allow_none=True, validate=[validate.Length(min=1, max=200), PlainText()]
    )
    address_line2 = ma.fields.String(
        allow_none=True, validate=[validate.Length(min=1, max=200), PlainText()]
    )
    city = ma.fields.String(required=True, validate=[validate.Length(min=1, max=100), PlainText()])
    state = StateCode(required=True)
    zip = ma.fields.String(
        allow_none=True,
        validate=Pattern(ZIP_PATTERN, error="must be a 5-digit ZIP code (or ZIP+4)"),
    )
    lat = StrictFloat(allow_nan=False, validate=validate.Range(min=-90, max=90))
    lon = StrictFloat(allow_nan=False, validate=validate.Range(min=-180, max=180))
    opening_hours = ma.fields.Dict(
        allow_none=True,
        validate=lambda value: _hours(check_schedule, value),
        metadata={
            "description": 'mon..sun: [["08:00", "12:00"], ["13:00", "17:00"]]; null: unknown',
            "openapi": SCHEDULE_SCHEMA,
        },
    )
    hours_exceptions = ma.fields.List(
        ma.fields.Dict(),
        allow_none=True,
        validate=lambda value: _hours(check_exceptions, value),
        metadata={
            "description": '[{"date": "2026-12-25", "closed": true, "note": "Christmas"}]',
            "openapi": {"items": EXCEPTION_SCHEMA},
        },
    )
    accepting_new_patients = StrictBoolean(allow_none=True)
    telehealth = StrictBoolean(allow_none=True)
    languages = ma.fields.List(
        ma.fields.String(validate=LANGUAGE), allow_none=True, validate=validate.Length(max=20)
    )

    @ma.validates_schema
    def coordinates_together(self, data: dict[str, Any], **_kwargs: Any) -> None:
        _both_or_neither(data)


class LocationPatchSchema(LocationCreateSchema):
    city = ma.fields.String(validate=[validate.Length(min=1, max=100), PlainText()])
    state = StateCode()
    active = StrictBoolean()


class AdminChangeSchema(ma.Schema):
    id = ma.fields.Integer()
    at = UtcDateTime()
    actor_key_id = ma.fields.Integer(allow_none=True)
    actor = ma.fields.String()
    entity = ma.fields.String()
    entity_id = ma.fields.Integer()
    clinic_id = ma.fields.Integer()
    action = ma.fields.String()
    diff = ma.fields.Dict(metadata={"description": "{field: [before, after]}"})


class AuditQueryArgsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    clinic_id = ma.fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    since = ma.fields.AwareDateTime(default_timezone=None)
    until = ma.fields.AwareDateTime(default_timezone=None)
