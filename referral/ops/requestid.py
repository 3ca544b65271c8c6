"""X-Request-ID: taken from the caller when it is a sane token, else made; always echoed."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, has_request_context, request

HEADER = "X-Request-ID"
# Only characters that are harmless in logs, headers and shell pipelines, and not too long:
# anything else (spaces, quotes, newlines, a pasted address) is replaced, not trusted.
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Where the id and the matched route are left for gunicorn's access log (same environ dict).
ENVIRON_ID = "referral.request_id"
ENVIRON_ROUTE = "referral.route"


def accept_or_make(presented: str | None) -> str:
    if presented is not None and SANE_ID.fullmatch(presented):
        return presented
    return str(uuid.uuid4())


def request_id() -> str | None:
    """This request's id (decided on first use), or None outside a request."""
    if not has_request_context():
        return None
    found = g.get("request_id")
    if found is None:
        found = accept_or_make(request.headers.get(HEADER))
        g.request_id = found
        request.environ[ENVIRON_ID] = found
    return str(found)


def init_app(app: Flask) -> None:
    def assign() -> None:
        request_id()

    def echo(response: Response) -> Response:
        response.headers[HEADER] = request_id() or ""
        rule = request.url_rule
        request.environ[ENVIRON_ROUTE] = rule.rule if rule is not None else None
        return response

    # First of all before-request hooks: a request refused by an earlier hook still has an id.
    app.before_request_funcs.setdefault(None, []).insert(0, assign)
    app.after_request(echo)
