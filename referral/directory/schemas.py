"""marshmallow schemas for the directory's HTTP edge."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from marshmallow import validate

from referral.directory.models import Clinic, GeocodePrecision, Location
from referral.directory.records import ClinicRecord, LocationRecord
from referral.geo.distance import miles_to_km
from referral.geo.origin import Origin
from referral.geo.usps import STATE_CODES
from referral.timeutil import as_utc
from referral.web.fields import Pattern, UtcDateTime, VocabularyCode

ZIP_PATTERN = r"^[0-9]{5}(-[0-9]{4})?$"
# Every code, each letter in either case: "tx", "Tx" and "TX" are all Texas.
STATE_PATTERN = (
    "^(?:"
    + "|".join("".join(f"[{c}{c.lower()}]" for c in code) for code in sorted(STATE_CODES))
    + ")$"
)


class StateCode(ma.fields.String):
    """A USPS state or territory code, any case in, upper case out."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {
            "description": "USPS state or territory code, any case",
            "pattern": STATE_PATTERN,
            **kwargs.pop("metadata", {}),
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = str(super()._deserialize(value, attr, data, **kwargs))
        # ASCII only: the dotless i upper-cases to "I", and a code is two plain letters.
        code = text.upper()
        if not text.isascii() or code not in STATE_CODES:
            raise ma.ValidationError("not a USPS state code (e.g. TX, MN)")
        return code


# ---- responses ----------------------------------------------------------------------------


class SpecialtySchema(ma.Schema):
    code = ma.fields.String(required=True)
    label = ma.fields.String(required=True)
    nucc_taxonomy = ma.fields.String(
        allow_none=True, metadata={"description": "NUCC provider taxonomy code, where one exists"}
    )
    description = ma.fields.String(allow_none=True)


class LocationSchema(ma.Schema):
    id = ma.fields.Integer()
    active = ma.fields.Boolean()
    clinic_id = ma.fields.Integer()
    address_line1 = ma.fields.String(allow_none=True)
    address_line2 = ma.fields.String(allow_none=True)
    city = ma.fields.String(allow_none=True)
    state = ma.fields.String(allow_none=True)
    zip = ma.fields.String(allow_none=True)
    lat = ma.fields.Float(allow_none=True)
    lon = ma.fields.Float(allow_none=True)
    geocode_precision = ma.fields.String(
        allow_none=True,
        validate=validate.OneOf([p.value for p in GeocodePrecision]),
        metadata={"description": "rooftop, street, postal_code, city or manual"},
    )
    geocode_source = ma.fields.String(allow_none=True)
    time_zone = ma.fields.String(allow_none=True, metadata={"description": "IANA time zone"})
    needs_review = ma.fields.Boolean()
    review_reasons = ma.fields.List(ma.fields.String())
    opening_hours = ma.fields.Dict(
        allow_none=True,
        metadata={"description": 'mon..sun: [["08:00", "17:00"], ...]; null when unknown'},
    )
    hours_exceptions = ma.fields.List(
        ma.fields.Dict(),
        allow_none=True,
        metadata={"description": '[{"date": "2026-12-25", "closed": true, "note": "..."}]'},
    )
    accepting_new_patients = ma.fields.Boolean(
        allow_none=True, metadata={"description": "null: unknown"}
    )
    telehealth = ma.fields.Boolean(allow_none=True, metadata={"description": "null: unknown"})
    languages = ma.fields.List(
        ma.fields.String(), allow_none=True, metadata={"description": "ISO 639-1; null: unknown"}
    )
    updated_at = UtcDateTime()


class ClinicSummarySchema(ma.Schema):
    id = ma.fields.Integer()
    active = ma.fields.Boolean()
    name = ma.fields.String(allow_none=True, metadata={"description": "null when unknown"})
    phone = ma.fields.String(allow_none=True, metadata={"description": "E.164; null when unknown"})
    website = ma.fields.String(allow_none=True)
    specialties = ma.fields.List(
        ma.fields.String(),
        attribute="specialty_codes",
        metadata={"description": "on record as offered"},
    )
    specialties_not_offered = ma.fields.List(
        ma.fields.String(),
        attribute="not_offered_codes",
        metadata={
            "description": "on record as not offered; a code in neither list is unknown "
            '(not on record either way), which is not "no"'
        },
    )
    needs_review = ma.fields.Boolean()


class SpecialtyReasonSchema(ma.Schema):
    code = ma.fields.String(attribute="specialty_code")
    offered = ma.fields.Boolean(metadata={"description": "false: on record as not offered"})
    reason = ma.fields.String()
    source = ma.fields.String(
        allow_none=True, metadata={"description": "who said so: a source document, a key"}
    )


class SourceSchema(ma.Schema):
    file = ma.fields.String(attribute="source_file", allow_none=True)
    text = ma.fields.String(attribute="source_text", allow_none=True)


# Made once: a schema made per dump deep-copies every field (most of a list's cost).
_SOURCE = SourceSchema()
_LOCATIONS = LocationSchema(many=True)


class ClinicSchema(ClinicSummarySchema):
    phone_original = ma.fields.String(allow_none=True)
    specialty_reasons = ma.fields.List(
        ma.fields.Nested(SpecialtyReasonSchema), attribute="specialty_links"
    )
    review_reasons = ma.fields.List(ma.fields.String())
    source = ma.fields.Function(lambda clinic: _SOURCE.dump(clinic))
    updated_at = UtcDateTime()
    locations = ma.fields.Function(
        lambda clinic: _LOCATIONS.dump(
            [location for location in clinic.locations if location.active]
        ),
        metadata={"type": "array", "items": {"$ref": "#/components/schemas/Location"}},
    )


class OriginSchema(ma.Schema):
    lat = ma.fields.Float()
    lon = ma.fields.Float()
    resolved_from = ma.fields.String(metadata={"description": "coordinates, zip, city or address"})
    precision = ma.fields.String(
        metadata={"description": "exact for given coordinates, else the geocode precision"}
    )
    source = ma.fields.String()
    label = ma.fields.String(allow_none=True)


class NearestHitSchema(ma.Schema):
    distance_km = ma.fields.Float()
    distance_mi = ma.fields.Float()
    open_now = ma.fields.Boolean(
        allow_none=True, metadata={"description": "in the location's own time zone; null: unknown"}
    )
    specialty_match = ma.fields.String(
        allow_none=True,
        metadata={
            "enum": ["confirmed", "possible", None],
            "description": "with `specialty`: confirmed (on record as offering them all) or "
            "possible (some not on record; only with include_possible=true); null without",
        },
    )
    specialties_unknown = ma.fields.List(
        ma.fields.String(),
        metadata={"description": "the asked-for specialties not on record for this clinic"},
    )
    location = ma.fields.Nested(LocationSchema)
    clinic = ma.fields.Nested(ClinicSummarySchema)


class RadiusSchema(ma.Schema):
    value = ma.fields.Float()
    unit = ma.fields.String()
    km = ma.fields.Float()


class NearestResponseSchema(ma.Schema):
    origin = ma.fields.Nested(OriginSchema)
    radius = ma.fields.Nested(RadiusSchema, allow_none=True)
    unit = ma.fields.String(metadata={"description": "unit of radius: mi or km"})
    specialties = ma.fields.List(ma.fields.String())
    count = ma.fields.Integer()
    results = ma.fields.List(ma.fields.Nested(NearestHitSchema))
    nearest_outside_radius = ma.fields.Nested(
        NearestHitSchema,
        allow_none=True,
        metadata={"description": "the closest match anyway, when nothing is inside the radius"},
    )
    excluded_unknown = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Integer(),
        metadata={
            "description": "per filter (specialty, open_now, accepting_new_patients, "
            "telehealth, language), how many locations were left out because that is "
            "unknown (specialty: not on record either way; see include_possible)"
        },
    )


# ---- the nearest answer, dumped by hand --------------------------------------------------
# The nearest answer is the hottest path in the service; marshmallow's generic dump of ten
# nested hits cost several times the search. These build the same dicts the schemas above
# dump (tests/test_nearest_json.py compares them on every kind of row), so the schemas stay
# the documented contract.


def location_json(location: LocationRecord | Location) -> dict[str, Any]:
    """What ``LocationSchema().dump(location)`` gives."""
    updated_at = location.updated_at
    lat, lon = location.lat, location.lon
    hours = location.opening_hours
    exceptions = location.hours_exceptions
    languages = location.languages
    return {
        "id": location.id,
        "active": location.active,
        "clinic_id": location.clinic_id,
        "address_line1": location.address_line1,
        "address_line2": location.address_line2,
        "city": location.city,
        "state": location.state,
        "zip": location.zip,
        "lat": None if lat is None else float(lat),
        "lon": None if lon is None else float(lon),
        "geocode_precision": location.geocode_precision,
        "geocode_source": location.geocode_source,
        "time_zone": location.time_zone,
        "needs_review": location.needs_review,
        "review_reasons": [str(reason) for reason in location.review_reasons],
        "opening_hours": None if hours is None else dict(hours),
        "hours_exceptions": None if exceptions is None else [dict(day) for day in exceptions],
        "accepting_new_patients": location.accepting_new_patients,
        "telehealth": location.telehealth,
        "languages": None if languages is None else [str(code) for code in languages],
        "updated_at": None if updated_at is None else as_utc(updated_at).isoformat(),
    }


def clinic_summary_json(clinic: ClinicRecord | Clinic) -> dict[str, Any]:
    """What ``ClinicSummarySchema().dump(clinic)`` gives."""
    return {
        "id": clinic.id,
        "active": clinic.active,
        "name": clinic.name,
        "phone": clinic.phone,
        "website": clinic.website,
        "specialties": list(clinic.specialty_codes),
        "specialties_not_offered": list(clinic.not_offered_codes),
        "needs_review": clinic.needs_review,
    }


def origin_json(origin: Origin) -> dict[str, Any]:
    """What ``OriginSchema().dump(origin)`` gives."""
    return {
        "lat": float(origin.lat),
        "lon": float(origin.lon),
        "resolved_from": str(origin.resolved_from),
        "precision": origin.precision,
        "source": origin.source,
        "label": origin.label,
    }


# ---- query arguments ----------------------------------------------------------------------


class _QueryArgs(ma.Schema):
    class Meta:
        # Browsers and caches add their own parameters (cache busters): ignore, don't fail.
        unknown = ma.EXCLUDE


LANGUAGE = Pattern(r"^[a-z]{2}$", error="an ISO 639-1 code such as en or es")


INCLUDE_POSSIBLE = ma.fields.Boolean(
    load_default=False,
    metadata={
        "description": "with `specialty`: also clinics whose record does not say whether "
        "they offer it (never those on record as not offering it); they are marked possible"
    },
)


class FactArgs(ma.Schema):
    """Filters on facts that may be unknown; unknowns are left out and counted."""

    open_now = ma.fields.Boolean(
        metadata={"description": "true: open now, in each location's own time zone"}
    )
    accepting_new_patients = ma.fields.Boolean()
    telehealth = ma.fields.Boolean()
    language = ma.fields.String(validate=LANGUAGE, metadata={"description": "ISO 639-1"})


class ClinicQueryArgsSchema(_QueryArgs, FactArgs):
    q = ma.fields.String(
        validate=validate.Length(min=1, max=100), metadata={"description": "part of the name"}
    )
    specialty = ma.fields.List(
        VocabularyCode("specialties"),
        validate=validate.Length(max=10),
        metadata={"description": "specialty code; repeat for several (all must match)"},
    )
    include_possible = INCLUDE_POSSIBLE
    city = ma.fields.String(validate=validate.Length(min=1, max=100))
    state = StateCode()
    zip = ma.fields.String(
        validate=Pattern(r"^[0-9]{1,5}$", error="must be 1 to 5 digits (a ZIP prefix)"),
        metadata={"description": "ZIP code or its prefix"},
    )
    updated_since = ma.fields.AwareDateTime(
        default_timezone=None,
        metadata={
            "description": "only clinics changed since then, deactivated ones included "
            "(for incremental sync)"
        },
    )


class OriginFields(ma.Schema):
    """The ways to give a place: lat+lon, zip, city+state, or address (checked by
    ``origin_errors``)."""

    lat = ma.fields.Float(allow_nan=False, validate=validate.Range(min=-90, max=90))
    lon = ma.fields.Float(allow_nan=False, validate=validate.Range(min=-180, max=180))
    zip = ma.fields.String(
        validate=Pattern(ZIP_PATTERN, error="must be a 5-digit ZIP code (or ZIP+4)")
    )
    city = ma.fields.String(validate=validate.Length(min=1, max=100))
    state = StateCode()
    address = ma.fields.String(validate=validate.Length(min=3, max=300))


class NearestQueryArgsSchema(_QueryArgs, OriginFields, FactArgs):
    specialty = ma.fields.List(
        VocabularyCode("specialties"),
        validate=validate.Length(max=10),
        metadata={"description": "specialty code; repeat for several (all must match)"},
    )
    include_possible = INCLUDE_POSSIBLE
    radius = ma.fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "search radius in `unit`; none means anywhere"},
    )
    unit = ma.fields.String(load_default="mi", validate=validate.OneOf(["mi", "km"]))
    limit = ma.fields.Integer(load_default=5, validate=validate.Range(min=1, max=50))

    @ma.validates_schema
    def check_origin_and_radius(self, data: dict[str, Any], **_kwargs: Any) -> None:
        errors = origin_errors(data)
        if "radius" in data:
            errors.update(distance_errors("radius", data["radius"], data["unit"]))
        if errors:
            raise ma.ValidationError(errors)


ORIGIN_FIELDS = ("lat", "lon", "zip", "city", "state", "address")


def origin_errors(data: dict[str, Any]) -> dict[str, list[str]]:
    """Exactly one origin: lat+lon, zip, city+state, or address. Errors name the fields."""
    errors: dict[str, list[str]] = {}
    forms: list[str] = []
    if "lat" in data or "lon" in data:
        for name, other in (("lat", "lon"), ("lon", "lat")):
            if name not in data:
                errors[name] = [f"required together with {other}"]
        forms.append("lat/lon")
    if "zip" in data:
        forms.append("zip")
    if "city" in data or "state" in data:
        for name, other in (("city", "state"), ("state", "city")):
            if name not in data:
                errors[name] = [f"required together with {other}"]
        forms.append("city/state")
    if "address" in data:
        forms.append("address")
    if not forms:
        errors["origin"] = ["give one origin: lat and lon, zip, city and state, or address"]
    elif len(forms) > 1:
        message = f"give only one origin, not {' and '.join(forms)}"
        for name in ORIGIN_FIELDS:
            if name in data:
                errors.setdefault(name, []).append(message)
    return errors


def distance_errors(field: str, value: float, unit: str) -> dict[str, list[str]]:
    """A distance in ``unit`` must not exceed the configured maximum radius."""
    km = value if unit == "km" else miles_to_km(value)
    max_km = float(current_app.config["NEAREST_MAX_RADIUS_KM"])
    if km > max_km:
        return {field: [f"at most {max_km:g} km ({max_km / 1.609344:.0f} mi)"]}
    return {}
