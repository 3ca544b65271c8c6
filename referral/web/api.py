"""The flask-smorest Api, with problem+json errors in both the responses and the spec."""

from __future__ import annotations

import copy
import http
import json
import re
from datetime import UTC, datetime
from typing import Any

import flask_smorest
import marshmallow as ma
from apispec import APISpec, BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin, OpenAPIConverter
from flask import Request, request
from flask_smorest import Api, abort
from flask_smorest.etag import IF_MATCH_HEADER
from flask_smorest.exceptions import NotModified, PreconditionRequired
from flask_smorest.pagination import PaginationMetadataSchema
from flask_smorest.utils import prepare_response
from webargs.core import missing, parse_json
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import HTTPException
from werkzeug.http import quote_etag

from referral.web.fields import exclusive_bounds, fresh_copies, spec_overrides
from referral.web.limits import MAX_PAGE
from referral.web.problems import PROBLEM_JSON, ProblemSchema, field_error, problem_response

# RFC 9110 13.1.1: "*", or a comma-separated list of entity tags, weak or strong.
_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e]*"'
IF_MATCH_PATTERN = rf"^(?:\*|{_ENTITY_TAG}(?:[ \t]*,[ \t]*{_ENTITY_TAG})*)$"

# Public, read-only endpoints any site may call from a browser (CORS, caching, no key).
PUBLIC_PATHS = (
    r"/v1/((clinics|locations|specialties|concerns)(/.*)?|clinics\.csv|locations\.geojson)"
)
PUBLIC_PATH_RE = re.compile(PUBLIC_PATHS)
PUBLIC_METHODS = ("GET", "HEAD")

# What apispec writes as the null branch of a nullable nested schema in OpenAPI 3.0: any
# object, which client generators turn into an untyped class.
_ANY_OBJECT_OR_NULL = {"type": "object", "nullable": True}
# Only null (the OpenAPI 3.0.3 idiom): generators read it as None.
NULL_ONLY = {"type": "object", "nullable": True, "enum": [None]}

# Statuses any operation may answer before its view runs: an over-long request line
# (gunicorn, referral/ops/server_errors.py) and a refused query string (referral/web).
EVERY_OPERATION_PROBLEMS = (414, 422)


class SchemaRulesConverter(OpenAPIConverter):
    """apispec's converter; a schema's ``Meta.openapi`` adds rules across its fields (a
    ``oneOf``, say) to its JSON schema."""

    def schema2jsonschema(self, schema: Any) -> dict[str, Any]:
        jsonschema: dict[str, Any] = super().schema2jsonschema(schema)
        rules = getattr(getattr(schema, "Meta", None), "openapi", None)
        if rules:
            jsonschema.update(copy.deepcopy(rules))
        return jsonschema

    def field2nullable(self, field: ma.fields.Field, ret: Any) -> dict[str, Any]:
        # A nullable nested schema: the schema or null, typed (apispec's catch-all object
        # branch, sometimes listed first, gives generated clients an untyped wrapper).
        attributes: dict[str, Any] = super().field2nullable(field, ret)
        branches = attributes.get("anyOf")
        if branches and _ANY_OBJECT_OR_NULL in branches:
            typed = [branch for branch in branches if branch != _ANY_OBJECT_OR_NULL]
            attributes["anyOf"] = [*typed, copy.deepcopy(NULL_ONLY)]
        return attributes


class SchemaRulesPlugin(MarshmallowPlugin):
    Converter = SchemaRulesConverter


def operation_id(endpoint: str, method: str) -> str:
    """A name for an operation a generated client can use: the method and the view's class,
    ``clinics.ClinicById`` + PATCH -> ``patch_clinic_by_id``."""
    view = endpoint.rsplit(".", 1)[-1]
    return f"{method.lower()}_{re.sub(r'(?<!^)(?=[A-Z])', '_', view).lower()}"


class OperationRulesPlugin(BasePlugin):
    """Rules every operation follows, applied here rather than in each view:

    - an ``operationId`` from its endpoint (``operation_id``), unless the view sets one with
      ``@blp.doc(operationId=...)``; two alike are an error;
    - ``security: []`` on the public reads (PUBLIC_PATHS), which need no key; every other
      operation states its own (a linter flags one that does not);
    - the problems any request may meet before its view (EVERY_OPERATION_PROBLEMS).
    """

    def init_spec(self, spec: APISpec) -> None:
        super().init_spec(spec)
        self.operation_ids: dict[str, str] = {}

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        rule = kwargs.get("rule")
        if rule is None or operations is None:
            return
        for method, operation in operations.items():
            name = operation.setdefault("operationId", operation_id(rule.endpoint, method))
            where = f"{method.upper()} {path}"
            if self.operation_ids.setdefault(name, where) != where:
                raise ValueError(f"operationId {name} of {where} is {self.operation_ids[name]}'s")
            if method.upper() in PUBLIC_METHODS and PUBLIC_PATH_RE.fullmatch(path or ""):
                operation.setdefault("security", [])
            responses = operation.setdefault("responses", {})
            for code in EVERY_OPERATION_PROBLEMS:
                if code not in responses and str(code) not in responses:
                    responses[code] = http.HTTPStatus(code).name


class ReferralApi(Api):
    ERROR_SCHEMA = ProblemSchema

    def _init_spec(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("marshmallow_plugin", SchemaRulesPlugin())
        kwargs["extra_plugins"] = [*(kwargs.get("extra_plugins") or ()), OperationRulesPlugin()]
        # Relative: the API is where the spec is served from (a client names its own host).
        kwargs.setdefault("servers", [{"url": "/", "description": "This server"}])
        super()._init_spec(*args, **kwargs)
        self.ma_plugin.converter.add_attribute_function(exclusive_bounds)
        self.ma_plugin.converter.add_attribute_function(fresh_copies)
        self.ma_plugin.converter.add_attribute_function(spec_overrides)

    def _register_etag_headers(self) -> None:
        super()._register_etag_headers()
        # Replaces flask-smorest's: the spec states the syntax (a malformed one is a 400).
        if_match = {
            **IF_MATCH_HEADER,
            "description": "The ETag of the last GET (or *): 428 without, 412 when not current",
            "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
        }
        self.spec.components.parameter("IF_MATCH", "header", if_match, lazy=True)

    def _register_pagination_header(self) -> None:
        # The header's value is JSON: OpenAPI says so with `content` (a `schema` alone would
        # mean the "simple" style, `total,3,page,1`).
        header = {
            "description": "Pagination metadata, as JSON",
            "content": {"application/json": {"schema": PaginationMetadataSchema}},
        }
        self.spec.components.header("PAGINATION", header, lazy=True)

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
    """webargs' parser, but hostile bodies are 4xx, never a 500 or a silent truncation:

    - a body that is not JSON where JSON is expected: 415 naming Content-Type (not a 422 for
      "missing" fields, which would hide the real mistake);
    - a streamed (chunked) body longer than MAX_CONTENT_LENGTH: 413 (werkzeug would cut it
      at the limit and parse the first part);
    - nesting that exhausts the recursion limit, numbers too long to convert: 400;
    - lone surrogates (``"\\ud800"``: valid JSON, but no UTF-8 encoding exists, so storing it
      fails): 400 naming the field;
    - NUL characters (PostgreSQL refuses them in text): 422 naming the field, as in a query.
    """

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            if has_body(req):
                field_error(415, "headers", "Content-Type", "send the body as application/json")
            return missing
        data = read_limited_body(req)
        try:
            parsed = parse_json(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise
        except (RecursionError, ValueError):
            abort(400, messages={"json": ["JSON nested too deeply, or a number too long"]})
        bad = find_unstorable_text(parsed)
        if bad is not None:
            path, reason = bad
            status = 422 if reason.endswith(NUL_REFUSED) else 400  # well-formed, but refused
            field_error(status, "json", path, reason)
        return parsed

    def parse(self, argmap: Any, req: Request | None = None, **kwargs: Any) -> Any:
        # After the schema: an aware time with no UTC equivalent (year 1 at +14:00, year
        # 9999 at -14:00) would overflow where it is compared with stored UTC times.
        parsed = super().parse(argmap, req, **kwargs)
        name = find_time_beyond_utc(parsed)
        if name is not None:
            location = kwargs.get("location") or self.location
            field_error(422, location, name, "out of range: no UTC time matches it")
        return parsed


def find_time_beyond_utc(loaded: Any, path: str = "") -> str | None:
    """The dotted name of the first aware datetime that cannot be converted to UTC, or None."""
    if isinstance(loaded, datetime) and loaded.tzinfo is not None:
        try:
            loaded.astimezone(UTC)
        except OverflowError:
            return path or "(body)"
    elif isinstance(loaded, dict):
        for key, value in loaded.items():
            found = find_time_beyond_utc(value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(loaded, list):
        for index, value in enumerate(loaded):
            found = find_time_beyond_utc(value, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def has_body(req: Request) -> bool:
    """Whether the request carries a body (a length above zero, or a chunked stream)."""
    if req.content_length:
        return True
    return "chunked" in req.headers.get("Transfer-Encoding", "").lower()


def read_limited_body(req: Request) -> bytes:
    """The body, cached; 413 when a streamed body goes past MAX_CONTENT_LENGTH.

    werkzeug enforces the limit on a declared Content-Length, but a chunked body is only
    read up to the limit and the rest silently dropped; one more byte after it means the
    body was too long.
    """
    data = req.get_data(cache=True)
    limit = req.max_content_length
    streamed = req.content_length is None
    if limit is not None and streamed and len(data) >= limit and req.environ["wsgi.input"].read(1):
        abort(413, message=f"the body is larger than {limit} bytes")
    return data


# NUL is valid JSON and a valid query string, but no text field takes it: 422 wherever it is.
NUL_REFUSED = "NUL characters are not accepted"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_REFUSED
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode text (a lone surrogate such as \\ud800)"
    return None


def find_unstorable_text(document: Any) -> tuple[str, str] | None:
    """The dotted path of the first key or string no database can store, and why; or None.

    Iterative, so a document that was just deep enough to parse cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            reason = _text_problem(node)
            if reason is not None:
                return path or "(body)", reason
        elif isinstance(node, dict):
            for key, child in node.items():
                dotted = f"{path}.{key}" if path else str(key)
                reason = _text_problem(key)
                if reason is not None:
                    # The key itself cannot be echoed safely: name its parent.
                    return path or "(body)", f"a key: {reason}"
                stack.append((dotted, child))
        elif isinstance(node, list):
            stack.extend((f"{path}.{index}" if path else str(index), child)
                         for index, child in enumerate(node))  # fmt: skip
    return None


# What a JSON body can be refused with before its schema is even looked at.
BODY_PROBLEMS = (400, 413, 415)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with the hardened argument parser: use this one.

    Operations taking a JSON body document the parser's own refusals (400, 413, 415).
    """

    ARGUMENTS_PARSER = HardenedParser()

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Any:
        if isinstance(schema, type):
            # One instance per operation: given the class, webargs builds a new schema (a deep
            # copy of every field) for each request; a schema keeps no state between loads.
            schema = schema()
        decorator = super().arguments(schema, location=location, **kwargs)
        if location != "json":
            return decorator

        def decorate(view: Any) -> Any:
            wrapped = decorator(view)
            responses = wrapped._apidoc["arguments"].setdefault("responses", {})
            for code in BODY_PROBLEMS:
                responses.setdefault(code, http.HTTPStatus(code).name)
            return wrapped

        return decorate

    def _prepare_pagination_doc(self, doc: Any, doc_info: Any, **kwargs: Any) -> Any:
        # The spec states the deepest page (refused with 422 in referral.web, before any view).
        pagination = doc_info.get("pagination")
        if pagination:
            pagination["parameters"]["schema"] = _bounded_pages(pagination["parameters"]["schema"])
        return super()._prepare_pagination_doc(doc, doc_info, **kwargs)

    def _prepare_etag_doc(self, doc: Any, doc_info: Any, *, method: str, **kwargs: Any) -> Any:
        doc = super()._prepare_etag_doc(doc, doc_info, method=method, **kwargs)
        if doc_info.get("etag") and method.upper() in self.METHODS_NEEDING_CHECK_ETAG:
            doc["responses"].setdefault(400, http.HTTPStatus(400).name)  # a malformed If-Match
        return doc

    def _check_precondition(self) -> None:
        # As flask-smorest's (428 without If-Match), but a value that is no entity tag list
        # is a 400 naming the header, not a 428 as if it were missing.
        if request.method not in self.METHODS_NEEDING_CHECK_ETAG:
            return
        value = request.headers.get("If-Match")
        if value is None:
            raise PreconditionRequired
        if re.fullmatch(IF_MATCH_PATTERN, value.strip()) is None:
            field_error(400, "headers", "If-Match", 'an ETag ("...", W/"...") or *')

    def _check_not_modified(self, etag: str) -> None:
        # As flask-smorest's, but the 304 names the ETag it confirms (RFC 9110 15.4.5), so
        # caches can keep using the copy they hold.
        if request.method in self.METHODS_CHECKING_NOT_MODIFIED and etag in request.if_none_match:
            not_modified = NotModified()
            not_modified.data = {"headers": {"ETag": quote_etag(etag)}}
            raise not_modified


def _bounded_pages(schema: type[ma.Schema]) -> type[ma.Schema]:
    """flask-smorest's pagination arguments, with ``page`` at most MAX_PAGE."""
    if getattr(schema, "bounded_pages", False):
        return schema
    default = schema._declared_fields["page"].load_default

    class BoundedPages(schema):  # type: ignore[valid-type,misc]
        bounded_pages = True
        page = ma.fields.Integer(
            load_default=default, validate=ma.validate.Range(min=1, max=MAX_PAGE)
        )

    return BoundedPages


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
