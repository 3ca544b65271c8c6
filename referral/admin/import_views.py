"""Bulk import over HTTP (admin or clinics:write): ``POST /v1/admin/imports`` imports a file (or
only plans it, ``dry_run=true``) and answers the import run's summary; ``GET
/v1/admin/imports/{id}`` answers it again, ``.../plan`` and ``.../errors`` page through every
planned row and every error, ``.../plan.ndjson`` and ``.../errors.ndjson`` download them.

The app refuses bodies over MAX_CONTENT_LENGTH (64 KB); this endpoint alone takes files up to
the ``IMPORT_MAX_BYTES`` setting (environment ``REFERRAL_IMPORT_MAX_BYTES``; 50 MB when unset,
a 100,000-row CSV being about 15 MB). The body is read as it is planned, never whole (a
multipart upload is spooled to a temporary file by werkzeug first). One import runs at a time,
over every worker and host sharing the database: another gets 409 with Retry-After
(referral/admin/imports/runs.py). An answer lists at most ``IMPORT_MAX_ERRORS`` (100) row
errors, with their total; the rest are in ``.../errors``.
"""

from __future__ import annotations

import copy
from typing import IO, Any, NoReturn

import marshmallow as ma
from flask import Response, current_app, g, request, stream_with_context, url_for
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import validate
from werkzeug.exceptions import RequestEntityTooLarge

from referral.admin.imports import (
    COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMA_FIELDS,
    Actor,
    ImportBusyError,
    ImportConflictError,
    ImportSettings,
    LeaseLostError,
    detect_format,
    run_import,
)
from referral.admin.imports.runs import (
    ERRORS,
    PLAN,
    REFUSED,
    RUNNING,
    STATES,
    current_state,
    entry_count,
    get_run,
    lease_holder,
    list_runs,
    read_entries,
    stream_entries,
)
from referral.admin.models import ImportRun
from referral.auth.keys import BEARER_SECURITY, authenticate, require_scope
from referral.auth.models import SCOPE_ADMIN, SCOPE_CLINICS_WRITE, ApiKey
from referral.db import get_database, get_session
from referral.geo.chain import get_geocoder
from referral.web.api import Blueprint, problems
from referral.web.fields import UtcDateTime
from referral.web.problems import PROBLEM_JSON, ProblemSchema, field_error

DEFAULT_IMPORT_MAX_BYTES = 50 * 1024 * 1024
CSV_MEDIA_TYPES = ("text/csv", "application/csv", "text/plain")
NDJSON = "application/x-ndjson"

imports_blp = Blueprint(
    "imports",
    __name__,
    url_prefix="/v1/admin/imports",
    description="Bulk import of clinics and their locations (admin or clinics:write).",
)
IMPORT_ID = "<int(max=2147483647):import_id>"


def import_max_bytes() -> int:
    return int(current_app.config.get("IMPORT_MAX_BYTES", DEFAULT_IMPORT_MAX_BYTES))


def import_settings() -> ImportSettings:
    return ImportSettings.from_config(current_app.config)


@imports_blp.before_request
def editors_only() -> None:
    # The key is checked before a byte of the body is read.
    require_scope(authenticate(), SCOPE_ADMIN, SCOPE_CLINICS_WRITE)
    limit = import_max_bytes()
    if request.content_length is not None and request.content_length > limit:
        abort(413, message=f"an import may be at most {limit} bytes")
    # Raised for this endpoint only; a streamed body past it is a 413 as it is read.
    request.max_content_length = limit


# ---- schemas ------------------------------------------------------------------------------


class ImportArgsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    dry_run = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "check every row and store the plan; write nothing"},
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


class ImportLinksSchema(ma.Schema):
    self = ma.fields.String(metadata={"description": "this run"})
    plan = ma.fields.String(metadata={"description": "every planned row, paged"})
    errors = ma.fields.String(metadata={"description": "every error, paged"})
    plan_download = ma.fields.String(metadata={"description": "the plan as JSON lines"})
    errors_download = ma.fields.String(metadata={"description": "the errors as JSON lines"})


class ImportRunSchema(ma.Schema):
    id = ma.fields.Integer(metadata={"description": "the import run"})
    dry_run = ma.fields.Boolean()
    state = ma.fields.String(
        validate=validate.OneOf(STATES),
        metadata={
            "description": "running; planned (a dry run); applied; refused (row errors: "
            "nothing written); conflict (a record changed meanwhile: nothing written); failed; "
            "abandoned (its process stopped)"
        },
    )
    valid = ma.fields.Boolean(
        allow_none=True, metadata={"description": "no row errors (null until it has run)"}
    )
    format = ma.fields.String(allow_none=True, metadata={"description": "csv or json"})
    source = ma.fields.String(allow_none=True, metadata={"description": "the uploaded file"})
    actor = ma.fields.String(metadata={"description": "the API key's name (or the CLI user)"})
    started_at = UtcDateTime()
    finished_at = UtcDateTime(allow_none=True)
    rows_read = ma.fields.Integer(metadata={"description": "so far, while it runs"})
    counts = ma.fields.Nested(ImportCountsSchema, allow_none=True)
    error_count = ma.fields.Integer(metadata={"description": "every error"})
    error_rows = ma.fields.Integer(
        allow_none=True, metadata={"description": "rows with errors (row 0: the file)"}
    )
    errors = ma.fields.List(
        ma.fields.Nested(RowErrorSchema),
        metadata={"description": "the first errors, in row order (IMPORT_MAX_ERRORS at most)"},
    )
    errors_note = ma.fields.String(
        allow_none=True,
        metadata={"description": "when more errors exist than are listed: where they are"},
    )
    plan_entries = ma.fields.Integer(
        allow_none=True, metadata={"description": "planned rows: one plan entry each"}
    )
    changes_recorded = ma.fields.Integer(
        metadata={"description": "entries written to the change log (0 unless applied)"}
    )
    detail = ma.fields.String(allow_none=True, metadata={"description": "why it stopped"})
    links = ma.fields.Nested(ImportLinksSchema)


class ImportRunListItemSchema(ImportRunSchema):
    """A run in the list: without its errors (see the run)."""

    class Meta:
        exclude = ("errors",)


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
    {column: _documented_column(column, SCHEMA_FIELDS[column]) for column in COLUMNS},
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
BUSY_HEADERS = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}
NDJSON_PLAN_DOC = {
    "type": "string",
    "description": "One JSON object per line: each planned row, as in `.../plan`",
}
NDJSON_ERRORS_DOC = {
    "type": "string",
    "description": "One JSON object per line: each error, as in `.../errors`",
}


# ---- the answers ------------------------------------------------------------------------


def run_answer(run: ImportRun) -> dict[str, Any]:
    """A run as ImportRunSchema answers it."""
    summary = run.summary or {}
    errors = summary.get("errors", [])
    shown = len(errors)
    note = None
    if run.error_count > shown:
        note = (
            f"the first {shown} of {run.error_count} errors; all of them: "
            f"{url_for('imports.ImportErrors', import_id=run.id)}"
        )
    return {
        "id": run.id,
        "dry_run": run.dry_run,
        "state": current_state(get_session(), run),
        "valid": summary.get("valid"),
        "format": run.format,
        "source": run.source,
        "actor": run.actor,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "rows_read": run.rows_read,
        "counts": summary.get("counts"),
        "error_count": run.error_count,
        "error_rows": summary.get("error_rows"),
        "errors": errors,
        "errors_note": note,
        "plan_entries": summary.get("plan_entries"),
        "changes_recorded": summary.get("changes_recorded", 0),
        "detail": run.detail,
        "links": {
            "self": url_for("imports.ImportById", import_id=run.id),
            "plan": url_for("imports.ImportPlan", import_id=run.id),
            "errors": url_for("imports.ImportErrors", import_id=run.id),
            "plan_download": url_for("imports.ImportPlanDownload", import_id=run.id),
            "errors_download": url_for("imports.ImportErrorsDownload", import_id=run.id),
        },
    }


def _busy(exc: ImportBusyError) -> NoReturn:
    where = ""
    if exc.run_id is not None:
        where = f": {url_for('imports.ImportById', import_id=exc.run_id)}"
    abort(
        409,
        message=f"{exc}{where}",
        headers={"Retry-After": str(exc.retry_after)},
    )
    raise AssertionError("unreachable")


def _error_name(error: dict[str, Any]) -> str:
    """How problem details name an error: ``rows[N].field``, ``rows[N]``, or ``file``."""
    row, column = error["row"], error["field"]
    if row == 0:
        return "file"
    return f"rows[{row}].{column}" if column else f"rows[{row}]"


def _refused(run: ImportRun) -> NoReturn:
    """422: the row errors (the first IMPORT_MAX_ERRORS of them), nothing imported."""
    summary = run.summary or {}
    errors = summary.get("errors", [])
    named: dict[str, list[str]] = {}
    for error in errors:
        named.setdefault(_error_name(error), []).append(error["reason"])
    first = "; ".join(f"{_error_name(error)}: {error['reason']}" for error in errors[:5])
    more = ", ..." if run.error_count > 5 else ""
    errors_url = url_for("imports.ImportErrors", import_id=run.id)
    abort(
        422,
        message=f"{run.error_count} error(s) in {summary.get('error_rows', 0)} row(s), nothing "
        f"was imported ({first}{more}); every error: {errors_url}",
        errors=named,
        headers={"Link": f'<{errors_url}>; rel="related"'},
    )
    raise AssertionError("unreachable")


def _open_body() -> tuple[IO[bytes], str | None, str]:
    """The file as a stream, its name (if uploaded) and format."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            field_error(422, "form", "file", "upload the CSV or JSON file as the field 'file'")
        stream = upload.stream
        head = stream.read(64)
        stream.seek(0)
        return stream, upload.filename, detect_format(upload.filename, upload.mimetype, head)
    if mimetype in CSV_MEDIA_TYPES:
        return request.stream, None, "csv"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return request.stream, None, "json"
    abort(
        415,
        message="send multipart/form-data with a field 'file', text/csv, or application/json",
    )
    raise AssertionError("unreachable")


def _run_or_404(import_id: int) -> ImportRun:
    run = get_run(get_session(), import_id)
    if run is None:
        field_error(404, "path", "import_id", f"no import with id {import_id}")
    return run


def _finished_run(import_id: int) -> ImportRun:
    run = _run_or_404(import_id)
    if current_state(get_session(), run) == RUNNING:
        abort(
            409,
            message=f"import {import_id} is still running: its plan and errors are stored "
            "when it ends",
            headers={"Retry-After": "5"},
        )
    return run


# ---- the endpoints ------------------------------------------------------------------------


@imports_blp.route("")
class Imports(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY, requestBody=REQUEST_BODY)
    @imports_blp.arguments(ImportArgsSchema, location="query")
    @imports_blp.response(200, ImportRunSchema)
    @imports_blp.alt_response(
        409,
        schema=ProblemSchema,
        content_type=PROBLEM_JSON,
        description="Another import is running (one at a time), or a record changed meanwhile",
        headers=BUSY_HEADERS,
    )
    @problems(imports_blp, 401, 403, 413, 415)
    def post(self, args: dict[str, Any]) -> Any:
        """Import clinics and locations from CSV or JSON: all rows in one transaction, or none.

        A clinic is matched by name (case and spacing aside) and phone, a location within its
        clinic by address, city, state and ZIP; otherwise they are created. Every row is
        checked with the rules of the edit endpoints. With `dry_run=true` nothing is written:
        the answer is the run's summary (counts of created, updated and unchanged rows,
        clinics and locations; the first `IMPORT_MAX_ERRORS` row errors and how many there
        are) and the plan of every row is stored with the run (`links.plan`, or
        `links.plan_download`). Without it, any row error is a 422 naming `rows[N].field`
        (the first ones; every one at `links.errors`) and nothing is written. Rows without
        lat and lon are placed offline (ZIP, else city centroid); given coordinates are
        precision `manual`. Specialties are offered (`specialties`), known not offered
        (`specialties_not_offered`) or, in neither, unknown, as in the edit endpoints; an
        empty cell keeps what is on record. Every change goes into the audit log. One import
        runs at a time: another meanwhile is a 409 with Retry-After."""
        key: ApiKey = g.api_key
        session = get_session()
        holder = lease_holder(get_database().engine)
        if holder is not None:  # before a multipart upload is received whole
            _busy(holder)
        stream, filename, fmt = _open_body()
        try:
            run = run_import(
                session,
                stream,
                fmt,
                get_geocoder(),
                Actor.from_key(key),
                dry_run=args["dry_run"],
                source=filename,
                settings=import_settings(),
            )
        except ImportBusyError as exc:
            _busy(exc)
        except (ImportConflictError, LeaseLostError) as exc:
            abort(409, message=str(exc))
        except RequestEntityTooLarge:
            abort(413, message=f"an import may be at most {import_max_bytes()} bytes")
        if run.state == REFUSED:
            _refused(run)
        return run_answer(run)

    @imports_blp.doc(security=BEARER_SECURITY)
    @imports_blp.response(200, ImportRunListItemSchema(many=True))
    @problems(imports_blp, 401, 403)
    @imports_blp.paginate(page_size=20, max_page_size=100)
    def get(self, pagination_parameters: Any) -> Any:
        """Import runs, newest first (without their errors: see each run)."""
        runs, total = list_runs(
            get_session(),
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return [run_answer(run) for run in runs]


@imports_blp.route(f"/{IMPORT_ID}")
class ImportById(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY)
    @imports_blp.response(200, ImportRunSchema)
    @problems(imports_blp, 401, 403, 404)
    def get(self, import_id: int) -> Any:
        """An import run: its state (and rows read so far, while it runs), counts and first
        errors, as its POST answered."""
        return run_answer(_run_or_404(import_id))


def _page(import_id: int, kind: str, pagination_parameters: Any) -> list[dict[str, Any]]:
    run = _finished_run(import_id)
    session = get_session()
    assert run.id is not None
    pagination_parameters.item_count = entry_count(session, run.id, kind)
    return read_entries(
        session,
        run.id,
        kind,
        first=pagination_parameters.first_item,
        count=pagination_parameters.page_size,
    )


@imports_blp.route(f"/{IMPORT_ID}/plan")
class ImportPlan(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY)
    @imports_blp.response(200, RowPlanSchema(many=True))
    @problems(imports_blp, 401, 403, 404, 409)
    @imports_blp.paginate(page_size=100, max_page_size=1000)
    def get(self, import_id: int, pagination_parameters: Any) -> Any:
        """The run's plan, a page at a time: one entry per planned row, in file order (a dry
        run's: what would be created, updated or left unchanged; an applied run's: what was,
        with the ids of what it created). 409 while the run is running."""
        return _page(import_id, PLAN, pagination_parameters)


@imports_blp.route(f"/{IMPORT_ID}/errors")
class ImportErrors(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY)
    @imports_blp.response(200, RowErrorSchema(many=True))
    @problems(imports_blp, 401, 403, 404, 409)
    @imports_blp.paginate(page_size=100, max_page_size=1000)
    def get(self, import_id: int, pagination_parameters: Any) -> Any:
        """Every error of the run, a page at a time, in row order. 409 while it runs."""
        return _page(import_id, ERRORS, pagination_parameters)


def _download(import_id: int, kind: str) -> Response:
    run = _finished_run(import_id)
    assert run.id is not None
    run_id = run.id

    def chunks() -> Any:
        yield from stream_entries(get_session(), run_id, kind)

    return Response(
        stream_with_context(chunks()),
        mimetype=NDJSON,
        headers={"Content-Disposition": f'attachment; filename="import-{run_id}-{kind}.ndjson"'},
    )


@imports_blp.route(f"/{IMPORT_ID}/plan.ndjson")
class ImportPlanDownload(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY)
    @imports_blp.response(200, NDJSON_PLAN_DOC, content_type=NDJSON)
    @problems(imports_blp, 401, 403, 404, 409)
    def get(self, import_id: int) -> Response:
        """The run's whole plan as JSON lines (one planned row a line), streamed."""
        return _download(import_id, PLAN)


@imports_blp.route(f"/{IMPORT_ID}/errors.ndjson")
class ImportErrorsDownload(MethodView):
    @imports_blp.doc(security=BEARER_SECURITY)
    @imports_blp.response(200, NDJSON_ERRORS_DOC, content_type=NDJSON)
    @problems(imports_blp, 401, 403, 404, 409)
    def get(self, import_id: int) -> Response:
        """Every error of the run as JSON lines (one error a line), streamed."""
        return _download(import_id, ERRORS)


__all__ = ["DEFAULT_IMPORT_MAX_BYTES", "imports_blp", "run_answer"]
