"""marshmallow schemas for the referral API's edge."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral.directory.evidence import Fit
from referral.directory.schemas import (
    ClinicSummarySchema,
    LocationSchema,
    OriginFields,
    clinic_summary_json,
    distance_errors,
    location_json,
    origin_errors,
)
from referral.referrals.assessment import ASSESSMENT_MAX_BYTES, check_assessment
from referral.referrals.models import Status, Urgency
from referral.timeutil import as_utc
from referral.web.fields import Pattern, StrictFloat, UtcDateTime, VocabularyCode
from referral.web.limits import MAX_ID
from referral.web.text import PlainText

# An opaque id from the app: letters, digits and . _ : - only, so no names with spaces, no
# e-mail addresses.
PATIENT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class _Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE  # a field we do not know may be data we must not take


class OriginInputSchema(_Strict, OriginFields):
    # JSON numbers only (OriginFields also reads query strings).
    lat = StrictFloat(allow_nan=False, validate=validate.Range(min=-90, max=90))
    lon = StrictFloat(allow_nan=False, validate=validate.Range(min=-180, max=180))

    @ma.validates_schema
    def check_one_origin(self, data: dict[str, Any], **_kwargs: Any) -> None:
        errors = origin_errors(data)
        if errors:
            raise ma.ValidationError(errors)


def _origin_forms() -> list[dict[str, Any]]:
    """The spec's `oneOf` for an origin: exactly one of the forms ``origin_errors`` accepts."""
    forms = (("lat", "lon"), ("zip",), ("city", "state"), ("address",))
    return [
        {
            "type": "object",
            "properties": {name: {} for name in form},
            "required": list(form),
            "additionalProperties": False,
        }
        for form in forms
    ]


class ReferralCreateSchema(_Strict):
    origin = ma.fields.Nested(
        OriginInputSchema,
        required=True,
        metadata={
            "description": "one of: lat and lon, zip, city and state, or address",
            "oneOf": _origin_forms(),
        },
    )
    concerns = ma.fields.List(
        VocabularyCode("concerns"), required=True, validate=validate.Length(min=1, max=10),
        metadata={"description": "concern codes from GET /v1/concerns"},
    )  # fmt: skip
    specialties = ma.fields.List(
        VocabularyCode("specialties"), load_default=list, validate=validate.Length(max=10)
    )
    urgency = ma.fields.String(
        load_default=Urgency.ROUTINE.value, validate=validate.OneOf([u.value for u in Urgency])
    )
    red_flags = ma.fields.List(
        VocabularyCode("red_flags"), load_default=list, validate=validate.Length(max=20)
    )
    preferred_clinic_id = ma.fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ID))
    max_distance = StrictFloat(allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))
    unit = ma.fields.String(load_default="mi", validate=validate.OneOf(["mi", "km"]))
    patient_ref = ma.fields.String(
        validate=Pattern(
            PATIENT_REF_PATTERN,
            error="must be an opaque id (letters, digits, . _ : -; at most 64), not a name or "
            "contact detail",
        ),
    )
    assessment = ma.fields.Dict(
        keys=ma.fields.String(validate=validate.Length(min=1, max=64)),
        validate=check_assessment,
        metadata={"description": f"a small JSON summary (at most {ASSESSMENT_MAX_BYTES} bytes)"},
    )

    @ma.validates_schema
    def check_distance(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "max_distance" in data:
            errors = distance_errors("max_distance", data["max_distance"], data["unit"])
            if errors:
                raise ma.ValidationError(errors)


NOTE = ma.fields.String(validate=[validate.Length(min=1, max=1000), PlainText(multiline=True)])


class AssignmentSchema(_Strict):
    location_id = ma.fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_ID),
        metadata={"description": "the active location to send the referral to"},
    )
    note = NOTE


class StatusChangeSchema(_Strict):
    status = ma.fields.String(required=True, validate=validate.OneOf([s.value for s in Status]))
    note = NOTE

    @ma.validates_schema
    def declined_needs_reason(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("status") == Status.DECLINED.value and not data.get("note"):
            raise ma.ValidationError({"note": ["a reason is required when declining"]})


# StatusChangeSchema's rules as the spec states them: a note is required when declining.
class StatusMoveSchema(_Strict):
    status = ma.fields.String(
        required=True,
        validate=validate.OneOf([s.value for s in Status if s != Status.DECLINED]),
    )
    note = NOTE


class DeclineSchema(_Strict):
    status = ma.fields.String(required=True, validate=validate.OneOf([Status.DECLINED.value]))
    note = ma.fields.String(
        required=True,
        validate=[validate.Length(min=1, max=1000), PlainText(multiline=True)],
        metadata={"description": "why the referral is declined"},
    )


STATUS_CHANGE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"oneOf": [StatusMoveSchema, DeclineSchema]}}},
}


class ReferralQueryArgsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    status = ma.fields.String(validate=validate.OneOf([s.value for s in Status]))
    clinic_id = ma.fields.Integer(validate=validate.Range(min=1, max=MAX_ID))
    source = ma.fields.String(validate=validate.Length(min=1, max=100))
    created_after = ma.fields.AwareDateTime(default_timezone=None)
    created_before = ma.fields.AwareDateTime(default_timezone=None)


class EscalationSchema(ma.Schema):
    red_flag = ma.fields.String()
    escalate_to = ma.fields.String()
    advice = ma.fields.String()


class NeededSpecialtySchema(ma.Schema):
    code = ma.fields.String()
    reason = ma.fields.String()


class CandidateWhySchema(ma.Schema):
    """Why a candidate is listed where it is (docs/matching.md)."""

    fit = ma.fields.String(
        metadata={
            "enum": [fit.value for fit in Fit],
            "description": "confirmed: on record as offering every needed specialty; "
            "possible: none on record as lacking, some not on record; lacking: on record as "
            "not offering one (only a preferred or assigned clinic)",
        }
    )
    preferred = ma.fields.Boolean(metadata={"description": "the patient's preferred clinic"})
    assigned_by = ma.fields.String(
        allow_none=True, metadata={"description": "the admin key that assigned it, if a person did"}
    )
    specialties_unknown = ma.fields.List(
        ma.fields.String(), metadata={"description": "needed specialties not on record either way"}
    )
    specialties_not_offered = ma.fields.List(
        ma.fields.String(), metadata={"description": "needed specialties on record as not offered"}
    )
    contactable = ma.fields.Boolean(metadata={"description": "a phone is on record"})
    accepting_new_patients = ma.fields.Boolean(
        allow_none=True, metadata={"description": "null: not on record"}
    )
    within_reach = ma.fields.Boolean()
    reason = ma.fields.String(metadata={"description": "all of the above in words"})


DISTANCE_NOTE = "from the stored (coarsened) origin, to 0.1 km"


class MatchSchema(CandidateWhySchema):
    clinic = ma.fields.Nested(ClinicSummarySchema)
    location = ma.fields.Nested(LocationSchema)
    distance_km = ma.fields.Float(metadata={"description": DISTANCE_NOTE})
    distance_mi = ma.fields.Float()
    notes = ma.fields.List(ma.fields.String())


class AlternativeSchema(CandidateWhySchema):
    clinic_id = ma.fields.Integer()
    clinic_name = ma.fields.String(allow_none=True)
    phone = ma.fields.String(allow_none=True, metadata={"description": "E.164; null: unknown"})
    location_id = ma.fields.Integer()
    city = ma.fields.String(allow_none=True)
    state = ma.fields.String(allow_none=True)
    distance_km = ma.fields.Float(metadata={"description": DISTANCE_NOTE})
    distance_mi = ma.fields.Float()


class ReachSchema(ma.Schema):
    km = ma.fields.Float()
    mi = ma.fields.Float()
    basis = ma.fields.String(
        metadata={
            "enum": ["max_distance", "urgency"],
            "description": "max_distance as asked, or the default for the referral's urgency",
        }
    )


class HistoryEntrySchema(ma.Schema):
    at = UtcDateTime()
    from_status = ma.fields.String(allow_none=True)
    to_status = ma.fields.String()
    actor = ma.fields.String()
    note = ma.fields.String(allow_none=True)


class ReferralOriginSchema(ma.Schema):
    kind = ma.fields.String(attribute="origin_kind")
    lat = ma.fields.Float(attribute="origin_lat", metadata={"description": "rounded to ~1 km"})
    lon = ma.fields.Float(attribute="origin_lon")


class ReferralSchema(ma.Schema):
    """A referral as its readers see it (``detail()`` output)."""

    id = ma.fields.String(attribute="referral.id")
    status = ma.fields.String(attribute="referral.status")
    urgency = ma.fields.String(attribute="referral.urgency")
    urgency_requested = ma.fields.String(attribute="referral.urgency_requested")
    escalations = ma.fields.List(
        ma.fields.Nested(EscalationSchema), attribute="referral.escalations"
    )
    concerns = ma.fields.List(ma.fields.String(), attribute="referral.concerns")
    red_flags = ma.fields.List(ma.fields.String(), attribute="referral.red_flags")
    specialties_requested = ma.fields.List(
        ma.fields.String(), attribute="referral.specialties_requested"
    )
    specialties_needed = ma.fields.List(
        ma.fields.Nested(NeededSpecialtySchema), attribute="referral.specialties_needed"
    )
    origin = ma.fields.Nested(ReferralOriginSchema, attribute="referral")
    max_distance_km = ma.fields.Float(attribute="referral.max_distance_km", allow_none=True)
    reach = ma.fields.Nested(
        ReachSchema,
        allow_none=True,
        metadata={"description": "how far the match looked (null for referrals made before it)"},
    )
    notes = ma.fields.List(
        ma.fields.String(),
        attribute="referral.match_notes",
        metadata={"description": "how the match was made, in words (also when nothing matched)"},
    )
    preferred_clinic_id = ma.fields.Integer(
        attribute="referral.preferred_clinic_id", allow_none=True
    )
    match = ma.fields.Nested(
        MatchSchema,
        allow_none=True,
        metadata={"description": "null while the referral needs routing (status needs_routing)"},
    )
    alternatives = ma.fields.List(
        ma.fields.Nested(AlternativeSchema),
        attribute="referral.alternatives",
        metadata={
            "description": "the next best candidates; with no match, the nearest beyond reach"
        },
    )
    source = ma.fields.String(attribute="referral.source")
    patient_ref = ma.fields.String(attribute="referral.patient_ref", allow_none=True)
    assessment = ma.fields.Dict(attribute="referral.assessment", allow_none=True)
    history = ma.fields.List(ma.fields.Nested(HistoryEntrySchema))
    created_at = UtcDateTime(attribute="referral.created_at")
    updated_at = UtcDateTime(attribute="referral.updated_at")
    purged = ma.fields.Function(
        lambda d: d["referral"].purged_at is not None,
        metadata={"type": "boolean", "description": "patient ref and assessment were purged"},
    )
    replayed = ma.fields.Boolean(
        dump_default=False,
        metadata={"description": "true when this is the stored answer to an earlier request"},
    )


class ClinicCountSchema(ma.Schema):
    clinic_id = ma.fields.Integer(allow_none=True)
    name = ma.fields.String(allow_none=True)
    count = ma.fields.Integer()


class DayCountSchema(ma.Schema):
    day = ma.fields.String()
    count = ma.fields.Integer()


class ReferralStatsSchema(ma.Schema):
    total = ma.fields.Integer()
    by_status = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    by_source = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    by_clinic = ma.fields.List(ma.fields.Nested(ClinicCountSchema))
    by_day = ma.fields.List(ma.fields.Nested(DayCountSchema))


class ConcernSpecialtySchema(ma.Schema):
    code = ma.fields.String()
    reason = ma.fields.String()


class ConcernSchema(ma.Schema):
    code = ma.fields.String()
    label = ma.fields.String()
    specialties = ma.fields.List(ma.fields.Nested(ConcernSpecialtySchema))


class RedFlagSchema(ma.Schema):
    code = ma.fields.String()
    label = ma.fields.String()
    escalate_to = ma.fields.String()
    advice = ma.fields.String()


class VocabularySchema(ma.Schema):
    concerns = ma.fields.List(ma.fields.Nested(ConcernSchema))
    red_flags = ma.fields.List(ma.fields.Nested(RedFlagSchema))
    urgencies = ma.fields.List(ma.fields.String())


# ---- a new referral's answer, dumped by hand ---------------------------------------------
# Every POST answers with its referral; marshmallow's generic dump of the nested schema cost
# more than storing it. ``referral_json`` builds the same dict ``ReferralSchema().dump``
# gives (tests/test_referral_json.py compares them on every kind of referral), so the schema
# stays the documented contract.


def _history_json(event: Any) -> dict[str, Any]:
    return {
        "at": as_utc(event.at).isoformat(),
        "from_status": event.from_status,
        "to_status": event.to_status,
        "actor": event.actor,
        "note": event.note,
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _items(items: list[dict[str, Any]], fields: tuple[tuple[str, Any], ...]) -> list[Any]:
    # A nested schema dumps the keys an item has, in the schema's order.
    return [
        {name: convert(item[name]) for name, convert in fields if name in item} for item in items
    ]


_ESCALATION = (("red_flag", _text), ("escalate_to", _text), ("advice", _text))
_NEEDED = (("code", _text), ("reason", _text))


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _texts(values: Any) -> list[str]:
    return [str(value) for value in values]


# CandidateWhySchema's fields, in its order.
_WHY = (
    ("fit", _text),
    ("preferred", _bool),
    ("assigned_by", _text),
    ("specialties_unknown", _texts),
    ("specialties_not_offered", _texts),
    ("contactable", _bool),
    ("accepting_new_patients", _bool),
    ("within_reach", _bool),
    ("reason", _text),
)
_ALTERNATIVE = (
    *_WHY,
    ("clinic_id", _int),
    ("clinic_name", _text),
    ("phone", _text),
    ("location_id", _int),
    ("city", _text),
    ("state", _text),
    ("distance_km", _float),
    ("distance_mi", _float),
)
_REACH = (("km", _float), ("mi", _float), ("basis", _text))


def referral_json(detail: dict[str, Any]) -> dict[str, Any]:
    """What ``ReferralSchema().dump(detail)`` gives for ``referral_log.detail`` output."""
    referral = detail["referral"]
    match = detail["match"]
    assessment = referral.assessment
    return {
        "id": _text(referral.id),
        "status": _text(referral.status),
        "urgency": _text(referral.urgency),
        "urgency_requested": _text(referral.urgency_requested),
        "escalations": _items(referral.escalations, _ESCALATION),
        "concerns": [str(code) for code in referral.concerns],
        "red_flags": [str(code) for code in referral.red_flags],
        "specialties_requested": [str(code) for code in referral.specialties_requested],
        "specialties_needed": _items(referral.specialties_needed, _NEEDED),
        "origin": {
            "kind": _text(referral.origin_kind),
            "lat": _float(referral.origin_lat),
            "lon": _float(referral.origin_lon),
        },
        "max_distance_km": _float(referral.max_distance_km),
        "reach": None if detail["reach"] is None else _items([detail["reach"]], _REACH)[0],
        "notes": _texts(referral.match_notes),
        "preferred_clinic_id": _int(referral.preferred_clinic_id),
        "match": None
        if match is None
        else {
            **_items([match], _WHY)[0],
            "clinic": clinic_summary_json(match["clinic"]),
            "location": location_json(match["location"]),
            "distance_km": _float(match["distance_km"]),
            "distance_mi": _float(match["distance_mi"]),
            "notes": [str(note) for note in match["notes"]],
        },
        "alternatives": _items(referral.alternatives, _ALTERNATIVE),
        "source": _text(referral.source),
        "patient_ref": _text(referral.patient_ref),
        "assessment": None if assessment is None else dict(assessment),
        "history": [_history_json(event) for event in detail["history"]],
        "created_at": as_utc(referral.created_at).isoformat(),
        "updated_at": as_utc(referral.updated_at).isoformat(),
        "purged": referral.purged_at is not None,
        "replayed": False,
    }
