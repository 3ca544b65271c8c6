"""Bulk import over HTTP: ``POST /v1/admin/imports`` (admin or clinics:write).

The app refuses bodies over MAX_CONTENT_LENGTH (64 KB); this endpoint alone takes files up to
the ``IMPORT_MAX_BYTES`` setting (environment ``REFERRAL_IMPORT_MAX_BYTES``; 50 MB when unset,
a 100,000-row CSV being about 10 MB).
"""

from __future__ import annotations

import copy
from typing import Any

import marshmallow as ma
from flask import current_app, g, request
from flask.views import MethodView
from flask_smorest import abort

from referral.admin.imports import (
    _SCHEMA_FIELDS,
    COLUMNS,
    REQUIRED_COLUMNS,
    Actor,
    ImportConflictError,
    apply_import,
    detect_format,
    plan_import,
    read_import,
)
from referral.auth.keys import BEARER_SECURITY, authenticate, require_scope
from referral.auth.models import SCOPE_ADMIN, SCOPE_CLINICS_WRITE, ApiKey
from referral.db import get_session
from referral.geo.chain import get_geocoder
from referral.web.api import Blueprint, read_limited_body
from referral.web.problems import field_error

DEFAULT_IMPORT_MAX_BYTES = 50 * 1024 * 1024
CSV_MEDIA_TYPES = ("text/csv", "application/csv", "text/plain")

imports_blp = Blueprint(
    "imports",
    __name__,
    url_prefix="/v1/admin/imports",
    description="Bulk import of clinics and their locations (admin or clinics:write).",
)


def import_max_bytes() -> int:
    return int(current_app.config.get("IMPORT_MAX_BYTES", DEFAULT_IMPORT_MAX_BYTES))


@imports_blp.before_request
def editors_only() -> None:
    # The key is checked before a byte of the body is read.
    require_scope(authenticate(), SCOPE_ADMIN, SCOPE_CLINICS_WRITE)
    limit = import_max_bytes()
    if request.content_length is not None and request.content_length > limit:
        abort(413, message=f"an import may be at most {limit} bytes")
    # Raised for this endpoint only; a streamed body past it is a 413 (read_limited_body).
    request.max_content_length = limit


# ---- schemas ------------------------------------------------------------------------------


class ImportArgsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    dry_run = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "check every row and return the plan; write nothing"},
    )


class RowErrorSchema(ma.Schema):
    row = ma.fields.Integer(
        metadata={"description": "as in the file: CSV header = 1; JSON: n-th object; 0: the file"}
    )
    field = ma.fields.String(allow_none=True, metadata={"description": "the column; null: row"})
    reason = ma.fields.String()


class OutcomeCountsSchema(ma.Schema):
    created = ma.fields.Integer()
    updated = ma.fields.Integer()
    unchanged = ma.fields.Integer()


class ImportCountsSchema(ma.Schema):
    rows = ma.fields.Nested(OutcomeCountsSchema)
    clinics = ma.fields.Nested(OutcomeCountsSchema)
    locations = ma.fields.Nested(OutcomeCountsSchema)


class PlannedClinicSchema(ma.Schema):
    action = ma.fields.String(metadata={"description": "created, updated or unchanged"})
    id = ma.fields.Integer(allow_none=True, metadata={"description": "null until created"})
    name = ma.fields.String()
    phone = ma.fields.String(allow_none=True, metadata={"description": "E.164"})


class PlannedLocationSchema(ma.Schema):
    action = ma.fields.String(metadata={"description": "created, updated or unchanged"})
    id = ma.fields.Integer(allow_none=True, metadata={"description": "null until created"})
    address = ma.fields.String(allow_none=True)
    city = ma.fields.String()
    state = ma.fields.String()
    zip = ma.fields.String(allow_none=True)


class RowPlanSchema(ma.Schema):
    row = ma.fields.Integer()
    action = ma.fields.String(metadata={"description": "created, updated or unchanged"})
    clinic = ma.fields.Nested(PlannedClinicSchema)
    location = ma.fields.Nested(PlannedLocationSchema)
    notes = ma.fields.List(ma.fields.String())


class ImportResultSchema(ma.Schema):
    dry_run = ma.fields.Boolean()
    valid = ma.fields.Boolean(metadata={"description": "no row errors"})
    format = ma.fields.String(metadata={"description": "csv or json"})
    rows_read = ma.fields.Integer()
    counts = ma.fields.Nested(ImportCountsSchema)
    errors = ma.fields.List(ma.fields.Nested(RowErrorSchema))
    plan = ma.fields.List(
        ma.fields.Nested(RowPlanSchema), metadata={"description": "one entry per valid row"}
    )
    changes_recorded = ma.fields.Integer(
        metadata={"description": "entries written to the change log (0 on a dry run)"}
    )


# What a column means in an import, where it differs from the edit endpoints' field (an empty
# cell keeps what is on record there, where an empty list replaces it).
COLUMN_DESCRIPTIONS = {
    "specialties": (
        "every specialty the clinic offers: replaces what it is on record as offering; its "
        "codes leave the not-offered list unless `specialties_not_offered` is given too. "
        "Empty or null keeps the list on record"
    ),
    "specialties_not_offered": (
        "every specialty the clinic is known not to offer: replaces that list; its codes "
        "leave the offered list unless `specialties` is given too (a code in both is an "
        "error). Empty or null keeps the list on record; a code in neither list is unknown, "
        'which matching treats as possible, not as "no"'
    ),
}


def _documented_column(column: str, field: ma.fields.Field[Any]) -> ma.fields.Field[Any]:
    """A row's column as the spec shows it: the field the importer checks it with, required
    or else nullable (null, like a blank cell, leaves the value unset)."""
    documented = copy.copy(field)
    documented.required = column in REQUIRED_COLUMNS
    documented.allow_none = column not in REQUIRED_COLUMNS
    if column in COLUMN_DESCRIPTIONS:  # a new dict: the copy shares the field's own
        documented.metadata = {**field.metadata, "description": COLUMN_DESCRIPTIONS[column]}
    return documented


# One JSON row, with the rules of the edit endpoints (as in a CSV, blank text also reads as
# null, and either specialties column as one ';'-separated string).
ImportRowSchema = ma.Schema.from_dict(
    {column: _documented_column(column, _SCHEMA_FIELDS[column]) for column in COLUMNS},
    name="ImportRow",
)
REQUEST_BODY = {
    "required": True,
    "description": (
        "One row per location of a clinic, with the columns "
        f"`{', '.join(COLUMNS)}` (the specialty codes `;`-separated, or a JSON list): a CSV "
        "file or a JSON array of objects, uploaded as the form field `file` or sent as the "
        "body. `specialties` lists what a clinic offers and `specialties_not_offered` what it "
        "is known not to offer; a code in neither is unknown. A code given in one of them "
        "leaves the other's list on record unless the file gives that one too; a code in both "
        "is an error. An empty cell or null never erases: it keeps what is on record."
    ),
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "text/csv": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "array", "items": ImportRowSchema}},
    },
}


# ---- the endpoint -------------------------------------------------------------------------


def _read_body() -> tuple[bytes, str | None, str]:
    """The file's bytes, its name (if uploaded) and format."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            field_error(422, "form", "file", "upload the CSV or JSON file as the field 'file'")
        data = upload.read()
        return data, upload.filename, detect_format(upload.filename, upload.mimetype, data)
    if mimetype in CSV_MEDIA_TYPES:
        return read_limited_body(request), None, "csv"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return read_limited_body(request), None, "json"
    abort(
        415,
        message="send multipart/form-data with a field 'file', text/csv, or application/json",
    )
    raise AssertionError("unreachable")


@imports_blp.route("")
class Imports(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY, requestBody=REQUEST_BODY)
    @imports_blp.arguments(ImportArgsSchema, location="query")
    @imports_blp.response(200, ImportResultSchema)
    def post(self, args: dict[str, Any]) -> Any:
        """Import clinics and locations from CSV or JSON: all rows in one transaction, or none.

        A clinic is matched by name (case and spacing aside) and phone, a location within its
        clinic by address, city, state and ZIP; otherwise they are created. Every row is
        checked with the rules of the edit endpoints. With `dry_run=true` the answer lists
        every row error and the plan (created, updated or unchanged per row) and nothing is
        written; without it, any row error is a 422 naming `rows[N].field` and nothing is
        written. Rows without lat and lon are placed offline (ZIP, else city centroid);
        given coordinates are precision `manual`. Specialties are offered
        (`specialties`), known not offered (`specialties_not_offered`) or, in neither,
        unknown, as in the edit endpoints; an empty cell keeps what is on record. Every
        change goes into the audit log."""
        key: ApiKey = g.api_key
        data, filename, fmt = _read_body()
        session = get_session()
        plan = plan_import(session, read_import(data, fmt), get_geocoder())
        if args["dry_run"]:
            session.rollback()
            return {**plan.report(dry_run=True), "changes_recorded": 0}
        if plan.errors:
            session.rollback()
            problems: dict[str, list[str]] = {}
            for error in plan.errors:
                problems.setdefault(error.name, []).append(error.reason)
            rows = len({error.row for error in plan.errors})
            first = "; ".join(f"{error.name}: {error.reason}" for error in plan.errors[:5])
            more = ", ..." if len(plan.errors) > 5 else ""
            abort(
                422,
                message=f"{len(plan.errors)} error(s) in {rows} row(s), nothing was imported "
                f"({first}{more})",
                errors=problems,
            )
        try:
            recorded = apply_import(session, plan, Actor.from_key(key), source=filename)
            session.commit()
        except ImportConflictError as exc:
            session.rollback()
            abort(409, message=str(exc))
        except Exception:
            session.rollback()
            raise
        return {**plan.report(dry_run=False), "changes_recorded": recorded}


__all__ = ["DEFAULT_IMPORT_MAX_BYTES", "imports_blp"]
