"""Errors as RFC 9457 problem details (``application/problem+json``), naming the fields."""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import marshmallow as ma
from flask import Response, current_app, request
from flask_smorest import abort
from werkzeug.exceptions import HTTPException

PROBLEM_JSON = "application/problem+json"

log = logging.getLogger(__name__)


class InvalidParamSchema(ma.Schema):
    name = ma.fields.String(metadata={"description": "The field, dotted for nested fields"})
    location = ma.fields.String(metadata={"description": "query, json, headers or path"})
    reason = ma.fields.String()


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details; ``invalid_params`` lists field errors."""

    type = ma.fields.String(metadata={"example": "about:blank"})
    title = ma.fields.String()
    status = ma.fields.Integer()
    detail = ma.fields.String()
    instance = ma.fields.String()
    invalid_params = ma.fields.List(ma.fields.Nested(InvalidParamSchema))


def flatten_errors(
    messages: Any, location: str | None = None, prefix: str = ""
) -> list[dict[str, str]]:
    """webargs/marshmallow nest messages as {location: {field: [msg]}}; flatten to a list."""
    found: list[dict[str, str]] = []
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            key = str(key)
            if location is None and key in {"query", "json", "headers", "path", "form", "cookies"}:
                found.extend(flatten_errors(value, key, prefix))
                continue
            name = key if key != "_schema" else ""
            dotted = f"{prefix}.{name}" if prefix and name else (name or prefix)
            found.extend(flatten_errors(value, location, dotted))
    elif isinstance(messages, list | tuple):
        for item in messages:
            if isinstance(item, Mapping | list | tuple):
                found.extend(flatten_errors(item, location, prefix))
            else:
                found.append(
                    {
                        "name": prefix or "(body)",
                        "location": location or "body",
                        "reason": str(item),
                    }
                )
    else:
        found.append(
            {"name": prefix or "(body)", "location": location or "body", "reason": str(messages)}
        )
    return found


# What a 412 says: the ETag sent is not the record's any more.
STALE_ETAG = (
    "the record changed since this ETag was read; fetch it again (GET) for its current "
    "values and ETag, then retry"
)


def field_error(status: int, location: str, field: str, reason: str) -> NoReturn:
    """Abort with a problem naming one field, e.g. field_error(422, "query", "zip", "...")."""
    abort(status, message=f"{field}: {reason}", errors={location: {field: [reason]}})
    raise AssertionError("unreachable")


def problem_response(error: HTTPException, headers: dict[str, str] | None = None) -> Response:
    status = error.code or 500
    if status == 304:  # not a problem: an empty answer that keeps its validators
        not_modified = current_app.response_class(status=304)
        for name, value in ((getattr(error, "data", None) or {}).get("headers") or {}).items():
            not_modified.headers[name] = value
        return not_modified
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = error.name
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    headers = dict(headers or {})
    data = getattr(error, "data", None) or {}
    if status == 412 and not (data.get("errors") or data.get("messages")):
        # flask-smorest's own ETag check: say which header, and how to recover.
        data = {**data, "errors": {"headers": {"If-Match": [STALE_ETAG]}}}
    messages = data.get("errors") or data.get("messages")
    if messages:
        body["invalid_params"] = flatten_errors(messages)
    if data.get("message"):
        body["detail"] = str(data["message"])
    elif body.get("invalid_params"):
        body["detail"] = "; ".join(f"{p['name']}: {p['reason']}" for p in body["invalid_params"])
    elif status >= 500:
        body["detail"] = "The server could not complete the request."
    elif error.description:
        body["detail"] = error.description
    body["instance"] = request.path
    headers.update(data.get("headers") or {})
    if status >= 500:
        log.error("internal error on %s %s", request.method, request.url_rule or "(no route)")
    response = current_app.response_class(
        current_app.json.dumps(body), status=status, mimetype=PROBLEM_JSON
    )
    for name, value in headers.items():
        response.headers[name] = value
    if status == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response
