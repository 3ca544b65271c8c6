"""Referral API: intake (POST), the log (GET), lifecycle (PATCH), stats, export; the public
concern vocabulary."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Response, current_app, g, request, stream_with_context, url_for
from flask.views import MethodView
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session
from werkzeug.routing import BaseConverter

from referral.auth.keys import (
    BEARER_SECURITY,
    authenticate,
    refused_key,
    request_key,
    require_scope,
)
from referral.auth.models import (
    SCOPE_ADMIN,
    SCOPE_REFERRALS_READ,
    SCOPE_REFERRALS_STATUS,
    SCOPE_REFERRALS_WRITE,
    ApiKey,
)
from referral.db import get_database, get_session
from referral.geo.chain import get_geocoder
from referral.ops import metrics
from referral.ops.limits import limit_referral_intake
from referral.referrals import audit
from referral.referrals import log as referral_log
from referral.referrals.matching import MatchRules
from referral.referrals.models import Status, Urgency
from referral.referrals.schemas import (
    STATUS_CHANGE_BODY,
    AssignmentSchema,
    ReferralCreateSchema,
    ReferralQueryArgsSchema,
    ReferralSchema,
    ReferralStatsSchema,
    StatusChangeSchema,
    VocabularySchema,
)
from referral.referrals.service import (
    IdempotencyKeyReusedError,
    ReferralInputError,
    Submitted,
    submit_referral,
)
from referral.referrals.vocabulary import load_vocabulary
from referral.web import AUTHENTICATED_FIRST, refuse_hostile_query
from referral.web.api import LOCATION_HEADER, Blueprint, problems
from referral.web.problems import field_error

referrals_blp = Blueprint(
    "referrals",
    __name__,
    url_prefix="/v1/referrals",
    description="Referrals from assessment apps, and their lifecycle (API key required).",
)
AUTHENTICATED_FIRST.add(referrals_blp.name)  # its hook checks the query after the key
concerns_blp = Blueprint(
    "concerns",
    __name__,
    url_prefix="/v1/concerns",
    description="The concern and red-flag codes apps may send (public).",
)

ANY_READER = (SCOPE_REFERRALS_READ, SCOPE_REFERRALS_WRITE, SCOPE_REFERRALS_STATUS, SCOPE_ADMIN)
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
REFERRAL_ID_RE = re.compile(r"[0-9a-f]{32}")


class ReferralIdConverter(BaseConverter):
    """A referral id in a path: any segment but the names of its siblings (stats, export.csv),
    so that `OPTIONS /v1/referrals/stats` lists only what /stats answers. A malformed id still
    reaches the view: a 404 naming ``referral_id``, audited."""

    regex = r"(?!(?:stats|export\.csv)\Z)[^/]+"


def referral_id_schema(_converter: BaseConverter) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^{REFERRAL_ID_RE.pattern}$"}


# The scopes each operation needs (any one of them), checked before its query or body is
# read. An operation missing here needs admin.
SCOPES_NEEDED: dict[tuple[str, str], tuple[str, ...]] = {
    ("referrals.Referrals", "POST"): (SCOPE_REFERRALS_WRITE,),
    ("referrals.Referrals", "GET"): ANY_READER,
    ("referrals.ReferralById", "GET"): ANY_READER,
    ("referrals.ReferralById", "PATCH"): ANY_READER,
    ("referrals.ReferralAssignment", "POST"): (SCOPE_ADMIN,),
    ("referrals.ReferralStats", "GET"): (SCOPE_ADMIN,),
    ("referrals.ReferralExport", "GET"): (SCOPE_ADMIN,),
}


@referrals_blp.before_request
def authenticate_first() -> None:
    # Before the query or body is parsed: a caller without the key or the scope learns
    # nothing from validation errors (401, then 403, then 422).
    if request.method == "OPTIONS":
        return
    key = authenticate()
    method = "GET" if request.method == "HEAD" else request.method
    require_scope(key, *SCOPES_NEEDED.get((str(request.endpoint), method), (SCOPE_ADMIN,)))
    if method == "POST" and request.endpoint == "referrals.Referrals":
        limit_referral_intake()  # per key, before the body is read; 429 past the limit
    refuse_hostile_query()


@referrals_blp.after_request
def audit_refusals(response: Response) -> Response:
    """Refusals (403, 422, 500...) of a real key are attempts too: record those no view
    recorded, in a short transaction of their own (whatever the request's did), as
    ``refused_<status>`` or the outcome the view named (``g.audit_outcome``).

    A request without a real key (none, malformed, unknown, wrong secret) leaves no row: it
    is counted (``referral_http_requests`` by status) and limited per client IP
    (RATELIMIT_KEY_REFUSALS), so no one without a key can grow the audit table. A revoked or
    expired key is a real key: its refusals are recorded against it."""
    # request_key(): a usable key refused by an app-wide check before authenticate_first ran.
    actor = g.get("api_key") or refused_key() or request_key()
    if response.status_code >= 400 and not g.get("audited") and actor is not None:
        paths = {
            "stats": "referral.stats",
            "export.csv": "referral.export",
            "assignment": "referral.assign",
        }
        action = paths.get(request.path.rsplit("/", 1)[-1]) or {
            "POST": "referral.create",
            "PATCH": "referral.update",
        }.get(request.method, "referral.read")
        referral_id = (request.view_args or {}).get("referral_id")
        valid = isinstance(referral_id, str) and REFERRAL_ID_RE.fullmatch(referral_id)
        outcome = g.get("audit_outcome") or f"refused_{response.status_code}"
        _audit(action, outcome, [referral_id if valid else None], actor)
    return response


def current_key() -> ApiKey:
    key: ApiKey = g.api_key
    return key


def _audit(
    action: str, outcome: str, referral_ids: Any = (None,), actor: ApiKey | None = None
) -> None:
    g.audited = True
    key = actor or g.get("api_key") or refused_key()
    audit.record(
        get_database().engine,
        actor_key_id=key.id if key is not None else None,
        action=action,
        outcome=outcome,
        referral_ids=referral_ids,
    )


def _filters(args: dict[str, Any]) -> referral_log.ReferralFilters:
    return referral_log.ReferralFilters(
        status=args.get("status"),
        clinic_id=args.get("clinic_id"),
        source=args.get("source"),
        created_after=args.get("created_after"),
        created_before=args.get("created_before"),
    )


def _idempotency_key() -> str | None:
    presented = request.headers.get("Idempotency-Key")
    if presented is not None and not IDEMPOTENCY_KEY_RE.fullmatch(presented):
        field_error(422, "headers", "Idempotency-Key", "1 to 255 visible ASCII characters")
    return presented


def _submitted_response(submitted: Submitted) -> Response:
    response = current_app.response_class(
        current_app.json.dumps(submitted.body),
        status=submitted.status,
        mimetype="application/json",
    )
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if submitted.referral_id:
        response.headers["Location"] = url_for(
            "referrals.ReferralById", referral_id=submitted.referral_id
        )
    return response


# What a client can do next with the referral it just sent (OpenAPI links).
REFERRAL_LINKS = {
    name: {
        # A URI reference: the path's braces percent-encoded (RFC 3986).
        "operationRef": f"#/paths/~1v1~1referrals~1%7Breferral_id%7D/{method}",
        "parameters": {"referral_id": "$response.body#/id"},
        "description": description,
    }
    for name, method, description in (
        ("GetReferral", "get", "The referral, with its match and history"),
        ("ChangeReferralStatus", "patch", "Move the referral along its lifecycle"),
    )
}


@referrals_blp.route("")
class Referrals(MethodView):
    @referrals_blp.doc(
        security=BEARER_SECURITY,
        parameters=[
            {
                "in": "header",
                "name": "Idempotency-Key",
                "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_RE.pattern}$"},
                "description": "Retry safely: the same key and body answer the stored referral "
                "(a retry sent while the first request is still at work waits for its answer).",
            }
        ],
        responses={201: {"links": REFERRAL_LINKS}},
    )
    @referrals_blp.arguments(ReferralCreateSchema)
    @referrals_blp.response(
        201,
        ReferralSchema,
        headers={
            **LOCATION_HEADER,
            "Idempotent-Replayed": {
                "description": "true when this is the stored answer to an earlier request",
                "schema": {"type": "string"},
            },
        },
    )
    @problems(referrals_blp, 400, 401, 403, 413)
    def post(self, body: dict[str, Any]) -> Any:
        """Send a referral (scope referrals:write): it is matched to a clinic and logged.

        Unknown fields are rejected: send no names, e-mails, phone numbers or birth dates."""
        key = current_key()
        config = current_app.config
        idempotency_key = _idempotency_key()
        try:
            submitted = submit_referral(
                get_session(),
                key=key,
                body=body,
                idempotency_key=idempotency_key,
                rules=MatchRules.from_config(config),
                geocoder=get_geocoder(),
                retention=timedelta(hours=float(config["IDEMPOTENCY_RETENTION_HOURS"])),
            )
        except ReferralInputError as exc:
            g.audit_outcome = "rejected"
            field_error(422, "json", exc.field, exc.reason)
        except IdempotencyKeyReusedError:
            g.audit_outcome = "mismatch"
            field_error(422, "headers", "Idempotency-Key", "already used with a different body")
        except Exception:
            g.audit_outcome = "rejected"  # audited as the 500 it becomes
            raise
        g.audited = True  # by the service, with the referral or the replay
        if not submitted.replayed:
            metrics.referral_created()
        return _submitted_response(submitted)

    @referrals_blp.doc(security=BEARER_SECURITY)
    @referrals_blp.arguments(ReferralQueryArgsSchema, location="query")
    @referrals_blp.response(200, ReferralSchema(many=True))
    @problems(referrals_blp, 401, 403)
    @referrals_blp.paginate(page_size=20, max_page_size=100)
    def get(self, args: dict[str, Any], pagination_parameters: Any) -> Any:
        """The referrals this key may see, newest first: an app its own, a clinic's key those
        sent to it, admin all."""
        key = current_key()
        session = get_session()
        referrals, total = referral_log.list_visible(
            session,
            key,
            _filters(args),
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        _audit("referral.read", "ok", [r.id for r in referrals] or [None])
        return [referral_log.detail(session, referral) for referral in referrals]


def _visible_or_404(referral_id: str, action: str) -> Any:
    key = current_key()
    referral = None
    if REFERRAL_ID_RE.fullmatch(referral_id):
        referral = referral_log.get_visible(get_session(), key, referral_id)
    if referral is None:
        # The same answer whether it does not exist or belongs to someone else.
        _audit(
            action, "not_found", [referral_id if REFERRAL_ID_RE.fullmatch(referral_id) else None]
        )
        field_error(404, "path", "referral_id", "no such referral")
    return referral


def _commit_step(action: str, referral: Any, field: str, step: Callable[[Session], object]) -> None:
    """Run one lifecycle step and commit it, or answer the problem it raised (audited)."""
    session = get_session()
    try:
        step(session)
        session.commit()
    except referral_log.AssignmentError as exc:
        session.rollback()
        _audit(action, "rejected", [referral.id])
        field_error(422, "json", exc.field, exc.reason)
    except referral_log.ChangeNotAllowedError as exc:
        session.rollback()
        _audit(action, "forbidden", [referral.id])
        field_error(403, "json", field, str(exc))
    except referral_log.TransitionError as exc:
        session.rollback()
        _audit(action, "conflict", [referral.id])
        field_error(409, "json", field, str(exc))
    except StaleDataError:
        session.rollback()
        _audit(action, "conflict", [referral.id])
        field_error(409, "json", field, "the referral changed meanwhile; fetch it again")
    _audit(action, "ok", [referral.id])


@referrals_blp.route("/<referral_id:referral_id>")
class ReferralById(MethodView):
    @referrals_blp.doc(security=BEARER_SECURITY)
    @referrals_blp.response(200, ReferralSchema)
    @problems(referrals_blp, 401, 403, 404)
    def get(self, referral_id: str) -> Any:
        """One referral with its match and history."""
        referral = _visible_or_404(referral_id, "referral.read")
        _audit("referral.read", "ok", [referral.id])
        return referral_log.detail(get_session(), referral)

    @referrals_blp.doc(security=BEARER_SECURITY, requestBody=STATUS_CHANGE_BODY)
    @referrals_blp.arguments(StatusChangeSchema)
    @referrals_blp.response(200, ReferralSchema)
    @problems(referrals_blp, 400, 401, 403, 404, 409)
    def patch(self, change: dict[str, Any], referral_id: str) -> Any:
        """Move a referral along its lifecycle (admin, or the referred clinic's key with
        referrals:status; the sending app may only cancel)."""
        key = current_key()
        referral = _visible_or_404(referral_id, "referral.update")
        _commit_step(
            "referral.update",
            referral,
            "status",
            lambda session: referral_log.change_status(
                session, referral, key, Status(change["status"]), change.get("note")
            ),
        )
        return referral_log.detail(get_session(), referral)


@referrals_blp.route("/<referral_id:referral_id>/assignment")
class ReferralAssignment(MethodView):
    @referrals_blp.doc(security=BEARER_SECURITY)
    @referrals_blp.arguments(AssignmentSchema)
    @referrals_blp.response(200, ReferralSchema)
    @problems(referrals_blp, 400, 401, 403, 404, 409)
    def post(self, body: dict[str, Any], referral_id: str) -> Any:
        """Route a referral to a location by hand (admin): one that needs routing (nothing
        was within reach) or one its clinic has not answered yet. It becomes `created` for
        that clinic, with the distance and why, and a history line."""
        key = current_key()
        referral = _visible_or_404(referral_id, "referral.assign")
        _commit_step(
            "referral.assign",
            referral,
            "location_id",
            lambda session: referral_log.assign_location(
                session, referral, key, body["location_id"], body.get("note")
            ),
        )
        return referral_log.detail(get_session(), referral)


@referrals_blp.route("/stats")
class ReferralStats(MethodView):
    @referrals_blp.doc(security=BEARER_SECURITY)
    @referrals_blp.arguments(ReferralQueryArgsSchema, location="query")
    @referrals_blp.response(200, ReferralStatsSchema)
    @problems(referrals_blp, 401, 403)
    def get(self, args: dict[str, Any]) -> Any:
        """Counts by status, source, clinic and day (admin)."""
        key = current_key()
        _audit("referral.stats", "ok")
        return referral_log.stats(get_session(), key, _filters(args))


@referrals_blp.route("/export.csv")
class ReferralExport(MethodView):
    @referrals_blp.doc(security=BEARER_SECURITY)
    @referrals_blp.arguments(ReferralQueryArgsSchema, location="query")
    @referrals_blp.response(
        200, content_type="text/csv", description="De-identified referrals as CSV"
    )
    @problems(referrals_blp, 401, 403)
    def get(self, args: dict[str, Any]) -> Response:
        """Every referral as CSV, without patient references or assessments (admin)."""
        key = current_key()
        session = get_session()
        filters = _filters(args)
        rows = list(referral_log.export_rows(session, key, filters))
        _audit("referral.export", "ok", [row[0] for row in rows] or [None])
        return Response(
            stream_with_context(referral_log.to_csv(iter(rows))),
            mimetype="text/csv",
            headers={"Content-Disposition": 'attachment; filename="referrals.csv"'},
        )


@concerns_blp.route("")
class Concerns(MethodView):
    @concerns_blp.etag
    @concerns_blp.response(200, VocabularySchema)
    def get(self) -> Any:
        """The concern codes with the specialties each maps to (and why), and the red flags
        with the urgency each raises a referral to."""
        vocabulary = load_vocabulary(get_session())
        return {
            "concerns": [
                {
                    "code": code,
                    "label": vocabulary.concern_labels.get(code, code),
                    "specialties": [
                        {"code": specialty, "reason": reason} for specialty, reason in links
                    ],
                }
                for code, links in vocabulary.concerns.items()
            ],
            "red_flags": list(vocabulary.red_flags.values()),
            "urgencies": [u.value for u in Urgency],
        }
