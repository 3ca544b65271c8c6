"""Public read API for the directory: clinics, specialties, nearest locations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from flask import Response, current_app, request, url_for
from flask.views import MethodView
from sqlalchemy.orm.exc import StaleDataError

from referral.admin import service as admin
from referral.admin.schemas import (
    ClinicCreateSchema,
    ClinicPatchSchema,
    LocationCreateSchema,
    LocationPatchSchema,
)
from referral.auth.keys import BEARER_SECURITY, authenticate, require_scope
from referral.auth.models import SCOPE_ADMIN, SCOPE_CLINICS_WRITE, ApiKey
from referral.db import get_session
from referral.directory import service
from referral.directory.evidence import specialty_fit
from referral.directory.facts import SPECIALTY, FactFilter
from referral.directory.hours import is_open
from referral.directory.listing import ClinicView, find_clinic, find_location
from referral.directory.models import Clinic, Location
from referral.directory.nearest import NearestHit, find_nearest
from referral.directory.readmodel import current_snapshot
from referral.directory.records import LocationRecord, hit_parts
from referral.directory.schemas import (
    ClinicQueryArgsSchema,
    ClinicSchema,
    LocationSchema,
    NearestQueryArgsSchema,
    NearestResponseSchema,
    SpecialtySchema,
    clinic_summary_json,
    location_json,
    origin_json,
)
from referral.geo.chain import get_geocoder
from referral.geo.distance import miles_to_km
from referral.geo.origin import OriginError, resolve_origin_args
from referral.timeutil import utcnow
from referral.web.api import LOCATION_HEADER, Blueprint, problems
from referral.web.problems import field_error

T = TypeVar("T")

clinics_blp = Blueprint(
    "clinics", __name__, url_prefix="/v1/clinics", description="The clinic directory (public)."
)
locations_blp = Blueprint(
    "locations", __name__, url_prefix="/v1/locations", description="Clinic locations (public)."
)
specialties_blp = Blueprint(
    "specialties",
    __name__,
    url_prefix="/v1/specialties",
    description="The controlled vocabulary of specialties (public).",
)


WRITES = ("POST", "PUT", "PATCH", "DELETE")


@clinics_blp.before_request
def editors_only() -> None:
    # Reading is public; writing needs an admin or clinics:write key, checked before the
    # body is parsed or any precondition is judged.
    if request.method in WRITES:
        require_scope(authenticate(), SCOPE_ADMIN, SCOPE_CLINICS_WRITE)


def _editor() -> ApiKey | None:
    """The caller's key when it may edit the directory (and so see inactive records)."""
    if request.method in WRITES:
        key: ApiKey = authenticate()
        return key
    if "Authorization" not in request.headers:
        return None
    key = authenticate()
    return key if key.has_scope(SCOPE_CLINICS_WRITE) else None


def _edit(what: str, action: Callable[[], T]) -> T:
    """Apply one edit and commit it: 422 naming the field an edit refuses; 412 when another
    edit of the record won meanwhile, whether the version check fails at the edit's flush or
    at the commit (a race between two editors)."""
    session = get_session()
    try:
        done = action()
        session.commit()
    except admin.EditError as exc:
        session.rollback()
        field_error(422, "json", exc.field, exc.reason)
    except StaleDataError:
        session.rollback()
        field_error(
            412, "headers", "If-Match", f"the {what} changed meanwhile; fetch it again (GET)"
        )
    return done


def _facts(args: dict[str, Any]) -> FactFilter:
    return FactFilter(
        open_at=utcnow() if args.get("open_now") else None,
        accepting_new_patients=args.get("accepting_new_patients"),
        telehealth=args.get("telehealth"),
        language=args.get("language"),
        allow_unknown=frozenset({SPECIALTY}) if args.get("include_possible") else frozenset(),
    )


def _checked_specialties(codes: list[str]) -> list[str]:
    try:
        return service.check_specialties(get_session(), codes)
    except service.UnknownSpecialtyError as exc:
        field_error(422, "query", "specialty", f"unknown code(s): {', '.join(exc.codes)}")


@clinics_blp.route("")
class Clinics(MethodView):
    @clinics_blp.etag
    @clinics_blp.arguments(ClinicQueryArgsSchema, location="query")
    @clinics_blp.response(200, ClinicSchema(many=True))
    @clinics_blp.paginate(page_size=20, max_page_size=100)
    def get(self, args: dict[str, Any], pagination_parameters: Any) -> Any:
        """List active clinics, filtered by name, specialty, city, state or ZIP prefix.

        The total count is in the `X-Pagination` header."""
        filters = service.ClinicFilters(
            q=args.get("q"),
            specialties=_checked_specialties(args.get("specialty", [])),
            include_possible=args["include_possible"],
            city=args.get("city"),
            state=args.get("state"),
            zip_prefix=args.get("zip"),
            facts=_facts(args),
            updated_since=args.get("updated_since"),
        )
        page = service.search_clinics(
            get_session(),
            filters,
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )  # from the read model; with updated_since from the database (inactive too)
        pagination_parameters.item_count = page.total
        headers = {}
        if filters.facts.active or (filters.specialties and not filters.include_possible):
            headers["X-Excluded-Unknown"] = json.dumps(page.excluded_unknown, sort_keys=True)
        return page.clinics, 200, headers

    @clinics_blp.etag  # the ETag a GET would give: the first PATCH needs no GET before it
    @clinics_blp.doc(security=BEARER_SECURITY)
    @clinics_blp.arguments(ClinicCreateSchema)
    @clinics_blp.response(201, ClinicSchema, headers=LOCATION_HEADER)
    @problems(clinics_blp, 400, 401, 403)
    def post(self, data: dict[str, Any]) -> Any:
        """Add a clinic (admin or clinics:write); its locations are added separately.

        The `ETag` is the one `PATCH` and `DELETE` need in `If-Match`."""
        key = _editor()
        assert key is not None
        clinic = _edit("clinic", lambda: admin.create_clinic(get_session(), data, key))
        return clinic, 201, {"Location": url_for("clinics.ClinicById", clinic_id=clinic.id)}


def _clinic_or_404(clinic_id: int) -> Clinic:
    """The clinic as an editor may change it (inactive ones too): the database's row."""
    clinic = service.get_clinic(get_session(), clinic_id, include_inactive=True)
    if clinic is None:
        field_error(404, "path", "clinic_id", f"no active clinic with id {clinic_id}")
    return clinic


def _shown_clinic_or_404(clinic_id: int) -> Clinic | ClinicView:
    """The clinic as the caller may see it: the read model's for the public, the database's
    row (inactive ones too) for an editor."""
    if _editor() is not None:
        return _clinic_or_404(clinic_id)
    clinic = find_clinic(current_snapshot(), clinic_id)
    if clinic is None:
        field_error(404, "path", "clinic_id", f"no active clinic with id {clinic_id}")
    return clinic


@clinics_blp.route("/<int(max=2147483647):clinic_id>")
class ClinicById(MethodView):
    @clinics_blp.etag
    @clinics_blp.response(200, ClinicSchema)
    @problems(clinics_blp, 404)
    def get(self, clinic_id: int) -> Any:
        """One active clinic with its active locations (editors also see inactive ones).

        The ETag is what `PATCH` and `DELETE` need in `If-Match`."""
        return _shown_clinic_or_404(clinic_id)

    @clinics_blp.etag
    @clinics_blp.doc(security=BEARER_SECURITY)
    @clinics_blp.arguments(ClinicPatchSchema)
    @clinics_blp.response(200, ClinicSchema)
    @problems(clinics_blp, 400, 401, 403, 404)
    def patch(self, data: dict[str, Any], clinic_id: int) -> Any:
        """Change a clinic (If-Match required: 428 without, 412 when stale)."""
        key = _editor()
        assert key is not None
        clinic = _clinic_or_404(clinic_id)
        clinics_blp.check_etag(clinic, ClinicSchema)
        _edit("clinic", lambda: admin.update_clinic(get_session(), clinic, data, key))
        return clinic

    @clinics_blp.etag
    @clinics_blp.doc(security=BEARER_SECURITY)
    @clinics_blp.response(204)
    @problems(clinics_blp, 401, 403, 404)
    def delete(self, clinic_id: int) -> None:
        """Deactivate a clinic: it leaves public answers and matching until reactivated
        (PATCH active=true). If-Match required."""
        key = _editor()
        assert key is not None
        clinic = _clinic_or_404(clinic_id)
        clinics_blp.check_etag(clinic, ClinicSchema)
        _edit("clinic", lambda: admin.update_clinic(get_session(), clinic, {"active": False}, key))


@clinics_blp.route("/<int(max=2147483647):clinic_id>/locations")
class ClinicLocations(MethodView):
    @clinics_blp.etag  # as for a clinic: what the location's PATCH and DELETE need
    @clinics_blp.doc(security=BEARER_SECURITY)
    @clinics_blp.arguments(LocationCreateSchema)
    @clinics_blp.response(201, LocationSchema, headers=LOCATION_HEADER)
    @problems(clinics_blp, 400, 401, 403, 404)
    def post(self, data: dict[str, Any], clinic_id: int) -> Any:
        """Add a location: geocoded through the chain, or placed by hand with lat and lon
        (precision manual; `city` and `state` are still required).

        The `ETag` is the one `PATCH` and `DELETE` need in `If-Match`."""
        key = _editor()
        assert key is not None
        clinic = _clinic_or_404(clinic_id)
        location = _edit(
            "location",
            lambda: admin.create_location(get_session(), clinic, data, key, get_geocoder()),
        )
        where = url_for("clinics.ClinicLocationById", clinic_id=clinic_id, location_id=location.id)
        return location, 201, {"Location": where}


def _location_or_404(clinic_id: int, location_id: int) -> Location:
    """The location as an editor may change it (inactive ones too): the database's row."""
    clinic = _clinic_or_404(clinic_id)
    for location in clinic.locations:
        if location.id == location_id:
            return location
    field_error(404, "path", "location_id", f"clinic {clinic_id} has no location {location_id}")


def _shown_location_or_404(clinic_id: int, location_id: int) -> Location | LocationRecord:
    if _editor() is not None:
        return _location_or_404(clinic_id, location_id)
    snapshot = current_snapshot()
    if find_clinic(snapshot, clinic_id) is None:
        field_error(404, "path", "clinic_id", f"no active clinic with id {clinic_id}")
    location = find_location(snapshot, clinic_id, location_id)
    if location is None:
        field_error(404, "path", "location_id", f"clinic {clinic_id} has no location {location_id}")
    return location


@clinics_blp.route("/<int(max=2147483647):clinic_id>/locations/<int(max=2147483647):location_id>")
class ClinicLocationById(MethodView):
    @clinics_blp.etag
    @clinics_blp.response(200, LocationSchema)
    @problems(clinics_blp, 404)
    def get(self, clinic_id: int, location_id: int) -> Any:
        """One location of a clinic."""
        return _shown_location_or_404(clinic_id, location_id)

    @clinics_blp.etag
    @clinics_blp.doc(security=BEARER_SECURITY)
    @clinics_blp.arguments(LocationPatchSchema)
    @clinics_blp.response(200, LocationSchema)
    @problems(clinics_blp, 400, 401, 403, 404)
    def patch(self, data: dict[str, Any], clinic_id: int, location_id: int) -> Any:
        """Change a location; a changed address is geocoded again (If-Match required)."""
        key = _editor()
        assert key is not None
        location = _location_or_404(clinic_id, location_id)
        clinics_blp.check_etag(location, LocationSchema)
        _edit(
            "location",
            lambda: admin.update_location(get_session(), location, data, key, get_geocoder()),
        )
        return location

    @clinics_blp.etag
    @clinics_blp.doc(security=BEARER_SECURITY)
    @clinics_blp.response(204)
    @problems(clinics_blp, 401, 403, 404)
    def delete(self, clinic_id: int, location_id: int) -> None:
        """Deactivate a location (If-Match required); PATCH active=true brings it back."""
        key = _editor()
        assert key is not None
        location = _location_or_404(clinic_id, location_id)
        clinics_blp.check_etag(location, LocationSchema)
        _edit(
            "location",
            lambda: admin.update_location(
                get_session(), location, {"active": False}, key, get_geocoder()
            ),
        )


@specialties_blp.route("")
class Specialties(MethodView):
    @specialties_blp.etag
    @specialties_blp.response(200, SpecialtySchema(many=True))
    def get(self) -> Any:
        """Every specialty code, with its label and NUCC taxonomy code where one exists."""
        return service.list_specialties(get_session())


def _hit(hit: NearestHit, now: datetime, specialties: list[str]) -> dict[str, Any]:
    distances = {
        "distance_km": round(hit.distance_km, 3),
        "distance_mi": round(hit.distance_mi, 3),
    }
    if hit.snapshot is not None:  # the read model's: its parts kept serialized
        return distances | hit_parts(
            hit.snapshot, hit.row, now, specialties, location_json, clinic_summary_json
        )
    location = hit.location
    fit = specialty_fit(location.clinic, specialties) if specialties else None
    return distances | {
        "open_now": is_open(
            location.opening_hours, location.hours_exceptions, location.time_zone, now
        ),
        "specialty_match": None if fit is None else fit.kind.value,
        "specialties_unknown": [] if fit is None else list(fit.unknown),
        "location": location_json(location),
        "clinic": clinic_summary_json(location.clinic),
    }


def _radius_json(radius: float | None, unit: str, km: float | None) -> dict[str, Any] | None:
    """What RadiusSchema dumps."""
    if radius is None or km is None:
        return None
    return {"value": float(radius), "unit": unit, "km": float(km)}


def _json_response(data: dict[str, Any]) -> Response:
    """``data`` as JSON, as flask-smorest's @response would send it (the app's JSON provider),
    with an ETag from the bytes sent (no second serialization to compute it; 304 when the
    client has them)."""
    # The provider builds app.response_class, a flask Response (typed as werkzeug's base).
    response = cast(Response, current_app.json.response(data))
    locations_blp.set_etag(hashlib.sha1(response.get_data(), usedforsecurity=False).hexdigest())
    return response


@locations_blp.route("/nearest")
class NearestLocations(MethodView):
    @locations_blp.etag
    @locations_blp.arguments(NearestQueryArgsSchema, location="query")
    @locations_blp.response(200, NearestResponseSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Nearest active locations to an origin, by geodesic distance.

        Give one origin: `lat`+`lon`, `zip`, `city`+`state`, or `address`. With a `radius`
        and nothing inside it, `results` is empty and `nearest_outside_radius` holds the
        closest match anyway. A `specialty` matches clinics on record as offering it; with
        `include_possible=true` also those whose record does not say (marked `possible`);
        `excluded_unknown.specialty` counts those left out otherwise. A `radius` may be at
        most 5,000 km (3,106.9 mi; the server's `REFERRAL_NEAREST_MAX_RADIUS_KM`): 422 beyond."""
        specialties = _checked_specialties(args.get("specialty", []))
        try:
            origin = resolve_origin_args(get_geocoder(), args)
        except OriginError as exc:
            field_error(422, "query", exc.field, exc.reason)
        unit = args["unit"]
        radius = args.get("radius")
        radius_km = None if radius is None else (radius if unit == "km" else miles_to_km(radius))
        facts = _facts(args)
        now = facts.open_at or utcnow()
        found = find_nearest(
            get_session(),
            origin.lat,
            origin.lon,
            specialties=specialties,
            radius_km=radius_km,
            limit=args["limit"],
            facts=facts,
        )
        outside = found.nearest_outside_radius
        # Dumped here rather than by NearestResponseSchema (which documents it): see
        # location_json in referral/directory/schemas.py.
        return _json_response(
            {
                "origin": origin_json(origin),
                "radius": _radius_json(radius, unit, radius_km),
                "unit": unit,
                "specialties": [str(code) for code in specialties],
                "count": len(found.hits),
                "results": [_hit(hit, now, specialties) for hit in found.hits],
                "nearest_outside_radius": _hit(outside, now, specialties) if outside else None,
                "excluded_unknown": dict(found.excluded_unknown),
            }
        )


__all__ = ["clinics_blp", "locations_blp", "specialties_blp"]
