"""Public read API for the directory: clinics, specialties, nearest locations."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from referral.db import get_session
from referral.directory import service
from referral.directory.nearest import NearestHit, find_nearest
from referral.directory.schemas import (
    ClinicQueryArgsSchema,
    ClinicSchema,
    NearestQueryArgsSchema,
    NearestResponseSchema,
    SpecialtySchema,
)
from referral.geo.chain import get_geocoder
from referral.geo.distance import miles_to_km
from referral.geo.origin import OriginError, resolve_origin_args
from referral.web.problems import field_error

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
    def get(self, args: dict[str, Any], pagination_parameters: Any) -> list[Any]:
        """List active clinics, filtered by name, specialty, city, state or ZIP prefix.

        The total count is in the `X-Pagination` header."""
        filters = service.ClinicFilters(
            q=args.get("q"),
            specialties=_checked_specialties(args.get("specialty", [])),
            city=args.get("city"),
            state=args.get("state"),
            zip_prefix=args.get("zip"),
        )
        clinics, total = service.search_clinics(
            get_session(),
            filters,
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return clinics


@clinics_blp.route("/<int:clinic_id>")
class ClinicById(MethodView):
    @clinics_blp.etag
    @clinics_blp.response(200, ClinicSchema)
    def get(self, clinic_id: int) -> Any:
        """One active clinic with its active locations."""
        clinic = service.get_clinic(get_session(), clinic_id)
        if clinic is None:
            field_error(404, "path", "clinic_id", f"no active clinic with id {clinic_id}")
        return clinic


@specialties_blp.route("")
class Specialties(MethodView):
    @specialties_blp.etag
    @specialties_blp.response(200, SpecialtySchema(many=True))
    def get(self) -> Any:
        """Every specialty code, with its label and NUCC taxonomy code where one exists."""
        return service.list_specialties(get_session())


def _hit(hit: NearestHit) -> dict[str, Any]:
    return {
        "distance_km": round(hit.distance_km, 3),
        "distance_mi": round(hit.distance_mi, 3),
        "location": hit.location,
        "clinic": hit.location.clinic,
    }


@locations_blp.route("/nearest")
class NearestLocations(MethodView):
    @locations_blp.etag
    @locations_blp.arguments(NearestQueryArgsSchema, location="query")
    @locations_blp.response(200, NearestResponseSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """Nearest active locations to an origin, by geodesic distance.

        Give one origin: `lat`+`lon`, `zip`, `city`+`state`, or `address`. With a `radius`
        and nothing inside it, `results` is empty and `nearest_outside_radius` holds the
        closest match anyway."""
        specialties = _checked_specialties(args.get("specialty", []))
        try:
            origin = resolve_origin_args(get_geocoder(), args)
        except OriginError as exc:
            field_error(422, "query", exc.field, exc.reason)
        unit = args["unit"]
        radius = args.get("radius")
        radius_km = None if radius is None else (radius if unit == "km" else miles_to_km(radius))
        found = find_nearest(
            get_session(),
            origin.lat,
            origin.lon,
            specialties=specialties,
            radius_km=radius_km,
            limit=args["limit"],
        )
        outside = found.nearest_outside_radius
        return {
            "origin": origin,
            "radius": None if radius is None else {"value": radius, "unit": unit, "km": radius_km},
            "unit": unit,
            "specialties": specialties,
            "count": len(found.hits),
            "results": [_hit(hit) for hit in found.hits],
            "nearest_outside_radius": _hit(outside) if outside else None,
        }


__all__ = ["clinics_blp", "locations_blp", "specialties_blp"]
