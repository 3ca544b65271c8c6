"""X-Request-ID: taken from the caller when it is a sane token, else made; always echoed.

The id lives in the WSGI environ (``ENVIRON_ID``), where the app's log lines and gunicorn's
access log (same dict) both find it. It is decided once per request, as the request reaches
the app (``referral.ops.EveryRequest``), or by whatever asks for it first outside that path
(a log line in a test request context, say).

A made id is 32 hex digits from ``os.urandom`` (128 random bits, as many as a UUID4 has and
more than enough never to repeat): a fraction of uuid4's cost (no UUID object to build and
format), no state to reset after a fork, and nothing in it says how busy a worker is (a
counter would).
"""

from __future__ import annotations

import os
import re
from typing import Any

from flask import has_request_context, request

HEADER = "X-Request-ID"
# The same header as the WSGI environ names it (what request.headers.get(HEADER) reads).
ENVIRON_HEADER = "HTTP_X_REQUEST_ID"
# Only characters that are harmless in logs, headers and shell pipelines, and not too long:
# anything else (spaces, quotes, newlines, a pasted address) is replaced, not trusted.
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Where the id and the matched route are left for gunicorn's access log (same environ dict).
ENVIRON_ID = "referral.request_id"
ENVIRON_ROUTE = "referral.route"

_sane = SANE_ID.fullmatch
_urandom = os.urandom


def make() -> str:
    """A new id: 32 lowercase hex digits, 128 random bits."""
    return _urandom(16).hex()


def accept_or_make(presented: str | None) -> str:
    if presented is not None and _sane(presented):
        return presented
    return make()


def assign(environ: dict[str, Any]) -> str:
    """Decide this request's id (once) and leave it in ``environ``."""
    found: str | None = environ.get(ENVIRON_ID)
    if found is None:
        found = accept_or_make(environ.get(ENVIRON_HEADER))
        environ[ENVIRON_ID] = found
    return found


def request_id() -> str | None:
    """This request's id (decided on first use), or None outside a request."""
    if not has_request_context():
        return None
    return assign(request.environ)
