"""The flask-smorest Api, with problem+json errors in both the responses and the spec."""

from __future__ import annotations

import http
import json
from typing import Any

import flask_smorest
from flask import Request, request
from flask_smorest import Api, abort
from flask_smorest.exceptions import NotModified
from flask_smorest.utils import prepare_response
from webargs.core import missing, parse_json
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import HTTPException
from werkzeug.http import quote_etag

from referral.web.problems import PROBLEM_JSON, ProblemSchema, problem_response


class ReferralApi(Api):
    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        return problem_response(error)

    def _register_responses(self) -> None:
        # As flask-smorest's own, but errors are documented as application/problem+json.
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_JSON)
            self.spec.components.response(status.name, response, lazy=True)
        default: dict[str, Any] = {
            "description": "Default error response",
            "schema": self.ERROR_SCHEMA,
        }
        prepare_response(default, self.spec, PROBLEM_JSON)
        self.spec.components.response("DEFAULT_ERROR", default, lazy=True)


class HardenedParser(FlaskParser):
    """webargs' parser, but hostile JSON is a 400, never a 500: nesting that exhausts the
    recursion limit, numbers too long to convert, and NUL characters (PostgreSQL refuses
    them in text)."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return missing
        data = req.get_data(cache=True)
        if b"\\u0000" in data or b"\x00" in data:
            abort(400, messages={"json": ["NUL characters are not accepted"]})
        try:
            return parse_json(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise
        except (RecursionError, ValueError):
            abort(400, messages={"json": ["JSON nested too deeply, or a number too long"]})


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with the hardened argument parser: use this one."""

    ARGUMENTS_PARSER = HardenedParser()

    def _check_not_modified(self, etag: str) -> None:
        # As flask-smorest's, but the 304 names the ETag it confirms (RFC 9110 15.4.5), so
        # caches can keep using the copy they hold.
        if request.method in self.METHODS_CHECKING_NOT_MODIFIED and etag in request.if_none_match:
            not_modified = NotModified()
            not_modified.data = {"headers": {"ETag": quote_etag(etag)}}
            raise not_modified


def problems(blp: flask_smorest.Blueprint, *codes: int) -> Any:
    """Document these error statuses (problem+json) on an operation."""

    def decorate(view: Any) -> Any:
        for code in codes:
            view = blp.alt_response(code, response=http.HTTPStatus(code).name)(view)
        return view

    return decorate


LOCATION_HEADER = {
    "Location": {"description": "URL of what was created", "schema": {"type": "string"}}
}
