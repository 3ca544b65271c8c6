"""marshmallow schemas for directory edits and the change log."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral.directory.hours import HoursError, check_exceptions, check_schedule
from referral.directory.schemas import LANGUAGE, ZIP_PATTERN, StateCode
from referral.web.limits import MAX_ID
from referral.web.text import PlainText


class _Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE


class ClinicCreateSchema(_Strict):
    name = ma.fields.String(required=True, validate=[validate.Length(min=1, max=200), PlainText()])
    phone = ma.fields.String(allow_none=True, validate=validate.Length(min=3, max=40))
    website = ma.fields.Url(
        allow_none=True, schemes={"http", "https"}, validate=validate.Length(max=300)
    )
    specialties = ma.fields.List(
        ma.fields.String(validate=validate.Length(min=1, max=40)), validate=validate.Length(max=20)
    )


class ClinicPatchSchema(ClinicCreateSchema):
    name = ma.fields.String(validate=[validate.Length(min=1, max=200), PlainText()])
    active = ma.fields.Boolean(metadata={"description": "false deactivates, true reactivates"})


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
        validate=validate.Regexp(ZIP_PATTERN, error="must be a 5-digit ZIP code (or ZIP+4)"),
    )
    lat = ma.fields.Float(allow_nan=False, validate=validate.Range(min=-90, max=90))
    lon = ma.fields.Float(allow_nan=False, validate=validate.Range(min=-180, max=180))
    opening_hours = ma.fields.Dict(
        allow_none=True,
        validate=lambda value: _hours(check_schedule, value),
        metadata={
            "description": 'mon..sun: [["08:00", "12:00"], ["13:00", "17:00"]]; null: unknown'
        },
    )
    hours_exceptions = ma.fields.List(
        ma.fields.Dict(),
        allow_none=True,
        validate=lambda value: _hours(check_exceptions, value),
        metadata={"description": '[{"date": "2026-12-25", "closed": true, "note": "Christmas"}]'},
    )
    accepting_new_patients = ma.fields.Boolean(allow_none=True)
    telehealth = ma.fields.Boolean(allow_none=True)
    languages = ma.fields.List(
        ma.fields.String(validate=LANGUAGE), allow_none=True, validate=validate.Length(max=20)
    )

    @ma.validates_schema
    def coordinates_together(self, data: dict[str, Any], **_kwargs: Any) -> None:
        _both_or_neither(data)


class LocationPatchSchema(LocationCreateSchema):
    city = ma.fields.String(validate=[validate.Length(min=1, max=100), PlainText()])
    state = StateCode()
    active = ma.fields.Boolean()


class AdminChangeSchema(ma.Schema):
    id = ma.fields.Integer()
    at = ma.fields.AwareDateTime(default_timezone=None)
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
