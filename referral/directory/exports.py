"""The active directory as files (public): ``GET /v1/clinics.csv`` and
``GET /v1/locations.geojson``, streamed row by row.

The CSV has the import's columns, so an export imported again changes nothing: a clinic's
specialties are split as on record, offered (``specialties``) and known not offered
(``specialties_not_offered``); a code in neither is unknown. Clinics whose
name is unknown are left out of it (an import cannot name them; the review queue lists them);
the GeoJSON has every active located location, named or not.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context
from flask.views import MethodView
from sqlalchemy import Select, func, select
from sqlmodel import Session, col

from referral.admin.imports import COLUMNS, FORMULA_PREFIXES, SPECIALTY_SEPARATOR
from referral.db import get_session
from referral.directory.evidence import evidence_by_clinic
from referral.directory.models import Clinic, ClinicSpecialty, Location
from referral.web.api import Blueprint

exports_blp = Blueprint(
    "exports",
    __name__,
    url_prefix="/v1",
    description="The active directory as files: CSV (the import's columns) and GeoJSON (public).",
)

_STREAM_ROWS = 1000
# A plain number is not a formula to a spreadsheet, even with a sign (-97.5, +18005550100).
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def defuse(text: str) -> str:
    """A cell a spreadsheet would run as a formula (=, +, -, @ ...) gets a leading "'"."""
    if text.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _active_locations(*, named_only: bool, located_only: bool) -> Select[*tuple[Any, ...]]:
    conditions = [col(Clinic.active).is_(True), col(Location.active).is_(True)]
    if named_only:
        conditions.append(col(Clinic.name).is_not(None))
    if located_only:
        conditions += [col(Location.lat).is_not(None), col(Location.lon).is_not(None)]
    return (
        select(
            col(Clinic.id).label("clinic_id"), col(Clinic.name), col(Clinic.phone),
            col(Clinic.website), col(Location.id).label("location_id"),
            col(Location.address_line1), col(Location.city), col(Location.state),
            col(Location.zip), col(Location.lat), col(Location.lon),
            col(Location.geocode_precision),
        )
        .join(Location, col(Location.clinic_id) == col(Clinic.id))
        .where(*conditions)
        .order_by(col(Clinic.name), col(Clinic.id), col(Location.id))
        .execution_options(yield_per=_STREAM_ROWS)
    )  # fmt: skip


def directory_fingerprint(session: Session) -> str:
    """Changes whenever a clinic, location or specialty link is added or changed (every
    write bumps a clinic's or location's version; links have none, so they count by kind,
    and a link moving between offered and not offered moves the counts): a cheap ETag for the
    exports."""
    parts: list[Any] = []
    for model in (Clinic, Location):
        parts.extend(
            session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(col(model.version)), 0),
                    func.max(col(model.updated_at)),
                    func.max(col(model.id)),
                ).select_from(model)
            ).one()
        )
    parts.extend(
        session.execute(
            select(col(ClinicSpecialty.offered), func.count())
            .group_by(col(ClinicSpecialty.offered))
            .order_by(col(ClinicSpecialty.offered))
        ).all()
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _streamed(chunks: Iterator[str], kind: str, **options: Any) -> Response:
    """A streamed answer with a weak ETag; 304 when If-None-Match has it. (werkzeug's
    make_conditional would read the whole stream to set Content-Length.)"""
    etag = f"{kind}-{directory_fingerprint(get_session())}"
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
    else:
        response = Response(stream_with_context(chunks), **options)
    response.set_etag(etag, weak=True)
    return response


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return defuse(str(value))


def csv_lines(session: Session) -> Iterator[str]:
    """The export CSV, a few rows at a time."""
    offered, lacking = evidence_by_clinic(session)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for count, row in enumerate(
        session.execute(_active_locations(named_only=True, located_only=False)), start=1
    ):
        writer.writerow(
            _cell(value)
            for value in (
                row.name, row.phone, row.website, row.address_line1, row.city, row.state,
                row.zip, row.lat, row.lon,
                SPECIALTY_SEPARATOR.join(offered.get(row.clinic_id, [])),
                SPECIALTY_SEPARATOR.join(lacking.get(row.clinic_id, [])),
            )
        )  # fmt: skip
        if count % _STREAM_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def geojson_chunks(session: Session) -> Iterator[str]:
    """The export GeoJSON FeatureCollection, a feature at a time."""
    offered, lacking = evidence_by_clinic(session)
    yield '{"type": "FeatureCollection", "features": ['
    separator = ""
    for row in session.execute(_active_locations(named_only=False, located_only=True)):
        feature = {
            "type": "Feature",
            "id": row.location_id,
            "geometry": {"type": "Point", "coordinates": [row.lon, row.lat]},
            "properties": {
                "location_id": row.location_id,
                "clinic_id": row.clinic_id,
                "clinic_name": row.name,
                "phone": row.phone,
                "website": row.website,
                "address": row.address_line1,
                "city": row.city,
                "state": row.state,
                "zip": row.zip,
                "specialties": offered.get(row.clinic_id, []),
                "specialties_not_offered": lacking.get(row.clinic_id, []),
                "precision": row.geocode_precision,
            },
        }
        yield separator + json.dumps(feature, ensure_ascii=False)
        separator = ",\n"
    yield "]}\n"


CSV_DOC = {"type": "string", "description": ", ".join(COLUMNS)}
GEOJSON_DOC = {
    "type": "object",
    "description": "A GeoJSON FeatureCollection of Points; each feature's properties: "
    "location_id, clinic_id, clinic_name, phone, website, address, city, state, zip, "
    "specialties (on record as offered), specialties_not_offered (on record as not offered; "
    "a code in neither list is unknown), precision",
}


@exports_blp.route("/clinics.csv")
class ClinicsCsv(MethodView):
    @exports_blp.response(200, CSV_DOC, content_type="text/csv")
    def get(self) -> Response:
        """The active directory as CSV, one row per active location, with the import's
        columns (an export imported again changes nothing). Clinics whose name is unknown
        are left out. Cells a spreadsheet would run as formulas start with `'`."""
        return _streamed(
            csv_lines(get_session()),
            "csv",
            mimetype="text/csv",  # werkzeug adds charset=utf-8
            headers={"Content-Disposition": 'attachment; filename="clinics.csv"'},
        )


@exports_blp.route("/locations.geojson")
class LocationsGeoJson(MethodView):
    @exports_blp.response(200, GEOJSON_DOC, content_type="application/geo+json")
    def get(self) -> Response:
        """Every active location with coordinates as a GeoJSON FeatureCollection (RFC 7946),
        with its clinic's name, phone and specialties (offered, and known not offered) and the
        geocode precision."""
        return _streamed(geojson_chunks(get_session()), "geojson", mimetype="application/geo+json")


__all__ = ["csv_lines", "defuse", "exports_blp", "geojson_chunks"]
