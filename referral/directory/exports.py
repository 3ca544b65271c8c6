"""The active directory as files (public): ``GET /v1/clinics.csv`` and
``GET /v1/locations.geojson``, streamed row by row from the read model (readmodel.py).

The CSV has the import's columns, so an export imported again changes nothing: a clinic's
specialties are split as on record, offered (``specialties``) and known not offered
(``specialties_not_offered``); a code in neither is unknown. Clinics whose
name is unknown are left out of it (an import cannot name them; the review queue lists them);
the GeoJSON has every active located location, named or not.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context
from flask.views import MethodView

from referral.admin.imports import COLUMNS, SPECIALTY_SEPARATOR
from referral.directory.listing import export_rows
from referral.directory.readmodel import current_snapshot
from referral.directory.records import location_record
from referral.directory.snapshot import Snapshot
from referral.web.api import Blueprint
from referral.web.text import defuse

exports_blp = Blueprint(
    "exports",
    __name__,
    url_prefix="/v1",
    description="The active directory as files: CSV (the import's columns) and GeoJSON (public).",
)

_STREAM_ROWS = 1000


def _streamed(chunks: Iterator[str], kind: str, revision: int, **options: Any) -> Response:
    """A streamed answer with a weak ETag (the snapshot's directory revision: every change
    bumps it); 304 when If-None-Match has it. (werkzeug's make_conditional would read the
    whole stream to set Content-Length.)"""
    etag = f"{kind}-r{revision}"
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


def csv_lines(snapshot: Snapshot) -> Iterator[str]:
    """The export CSV, a few rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for count, (clinic, row) in enumerate(export_rows(snapshot, named_only=True), start=1):
        location = location_record(snapshot, row)
        writer.writerow(
            _cell(value)
            for value in (
                clinic.name, clinic.phone, clinic.website, location.address_line1,
                location.city, location.state, location.zip, location.lat, location.lon,
                SPECIALTY_SEPARATOR.join(clinic.specialty_codes),
                SPECIALTY_SEPARATOR.join(clinic.not_offered_codes),
            )
        )  # fmt: skip
        if count % _STREAM_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def geojson_chunks(snapshot: Snapshot) -> Iterator[str]:
    """The export GeoJSON FeatureCollection, a feature at a time."""
    yield '{"type": "FeatureCollection", "features": ['
    separator = ""
    for clinic, row in export_rows(snapshot, named_only=False):
        location = location_record(snapshot, row)
        if location.lat is None or location.lon is None:
            continue
        feature = {
            "type": "Feature",
            "id": location.id,
            "geometry": {"type": "Point", "coordinates": [location.lon, location.lat]},
            "properties": {
                "location_id": location.id,
                "clinic_id": clinic.id,
                "clinic_name": clinic.name,
                "phone": clinic.phone,
                "website": clinic.website,
                "address": location.address_line1,
                "city": location.city,
                "state": location.state,
                "zip": location.zip,
                "specialties": clinic.specialty_codes,
                "specialties_not_offered": clinic.not_offered_codes,
                "precision": location.geocode_precision,
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
        snapshot = current_snapshot()
        return _streamed(
            csv_lines(snapshot),
            "csv",
            snapshot.revision,
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
        snapshot = current_snapshot()
        return _streamed(
            geojson_chunks(snapshot), "geojson", snapshot.revision, mimetype="application/geo+json"
        )


__all__ = ["csv_lines", "defuse", "exports_blp", "geojson_chunks"]
