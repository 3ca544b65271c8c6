"""Probes and metrics for operators: /healthz, /readyz, /metrics.

A plain Flask blueprint, not part of the public API: these are not in openapi.yaml, not
offered to browsers (no CORS), and never rate limited (a probe must not be refused).

- /healthz: the process answers. No database: a database outage must not make an
  orchestrator restart every healthy worker. It is the floor of what a request costs
  (docs/operations.md, "What a request costs"): it passes the hooks every request passes
  (request id, metrics, access log) and nothing more.
- /readyz: the database answers and its schema is at the migrations' head; 503 otherwise, so
  a load balancer sends no traffic to a server that cannot serve it.
- /metrics: Prometheus text format, only for ``Authorization: Bearer <METRICS_TOKEN>``; with
  no token configured it answers 404 to everyone, so a public listener never shows it.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask_smorest import abort
from sqlalchemy.exc import SQLAlchemyError

from referral.migrations import runner
from referral.ops import metrics
from referral.web.problems import PROBLEM_JSON

log = logging.getLogger(__name__)

ops_blp = Blueprint("ops", __name__)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


# The answer never changes: its bytes are made once (as jsonify would make them).
HEALTHY = b'{"status":"ok"}\n'
_HEALTHY_HEADERS = (("Cache-Control", "no-store"),)


@ops_blp.get("/healthz")
def healthz() -> Response:
    # Nothing else: no database, no rate limit, no hook of its own (liveness, not readiness).
    return current_app.response_class(
        HEALTHY, mimetype="application/json", headers=_HEALTHY_HEADERS
    )


def _head_revision(app: Flask) -> str | None:
    # The code's head cannot change while the process runs: read the scripts once.
    if "referral_ops_head" not in app.extensions:
        app.extensions["referral_ops_head"] = runner.head_revision(app)
    head: str | None = app.extensions["referral_ops_head"]
    return head


def _not_ready(detail: str) -> Response:
    # Built here rather than raised: the app's error handler logs every 5xx as an internal
    # error, and "not ready yet" is an answer, not a fault.
    body = {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
        "instance": request.path,
    }
    response = current_app.response_class(
        current_app.json.dumps(body), status=503, mimetype=PROBLEM_JSON
    )
    response.headers["Retry-After"] = "5"
    return _no_store(response)


@ops_blp.get("/readyz")
def readyz() -> Response:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    head = _head_revision(app)
    try:
        current = runner.current_revision(app)
    except SQLAlchemyError as exc:
        # The type only: driver messages name hosts and users.
        log.warning("not ready: database unreachable (%s)", type(exc).__name__)
        return _not_ready("the database is unreachable")
    if current != head:
        log.warning("not ready: database at migration %s, code at %s", current, head)
        return _not_ready(
            f"the database is at migration {current or '(none)'}, this code needs {head}: "
            "run `referral db upgrade`"
        )
    return _no_store(jsonify(status="ready", migration=head))


def _authorized(token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


@ops_blp.get("/metrics")
def prometheus_metrics() -> Any:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        # Traffic volumes and refusal counts are nobody else's business: off until a token is
        # set (docs/operations.md, "Metrics").
        abort(404)
    if not _authorized(str(token)):
        abort(
            401,
            message="metrics need Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return metrics.exposition()
