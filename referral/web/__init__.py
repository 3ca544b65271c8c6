"""The HTTP edge: the Api, errors, CORS for the public directory, the offline docs UI."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, request
from flask_cors import CORS
from sqlalchemy.exc import DBAPIError
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import ServiceUnavailable

from referral.db import get_session, is_statement_timeout
from referral.web.api import (
    NUL_REFUSED,
    PUBLIC_METHODS,
    PUBLIC_PATH_RE,
    PUBLIC_PATHS,
    ReferralApi,
)
from referral.web.fields import enum_from_vocabularies, load_vocabularies
from referral.web.limits import MAX_PAGE
from referral.web.problems import field_error, problem_response

CORS_PREFIX = "access-control-"


def is_public_read() -> bool:
    """Whether this request is a public read, or a browser's preflight for one: the only
    requests answered with CORS headers (README, "Caching and CORS")."""
    if not PUBLIC_PATH_RE.fullmatch(request.path):
        return False
    if request.method == "OPTIONS":
        asked = request.headers.get("Access-Control-Request-Method", "").strip().upper()
        return asked in PUBLIC_METHODS
    return request.method in PUBLIC_METHODS


# Blueprints whose before-request hook authenticates, then calls refuse_hostile_query().
AUTHENTICATED_FIRST: set[str] = set()


def refuse_hostile_query() -> None:
    """Before any view: PostgreSQL refuses NUL in text, and huge pages overflow offsets."""
    for name, value in request.args.items(multi=True):
        if "\x00" in value:
            field_error(422, "query", name, NUL_REFUSED)
    try:
        page = int(request.args.get("page", ""))  # as marshmallow reads it: "+7", " 7"
    except ValueError:
        return
    if page > MAX_PAGE:
        field_error(422, "query", "page", f"at most {MAX_PAGE}")


def init_web(app: Flask) -> None:
    from referral.admin.import_views import imports_blp
    from referral.admin.views import admin_blp
    from referral.auth.keys import register_security_scheme
    from referral.directory.exports import exports_blp
    from referral.directory.views import clinics_blp, locations_blp, specialties_blp
    from referral.geo.chain import init_app as init_geocoder
    from referral.referrals.views import (
        ReferralIdConverter,
        concerns_blp,
        referral_id_schema,
        referrals_blp,
    )
    from referral.web.widget import widget_blp

    init_geocoder(app)
    api = ReferralApi(app)
    register_security_scheme(api)
    # The spec lists the seeded specialty, concern and red-flag codes (see web/fields.py).
    vocabularies = load_vocabularies(Path(app.config["SEED_DATA_DIR"]))
    api.ma_plugin.converter.add_attribute_function(enum_from_vocabularies(vocabularies))
    app.url_map.converters["referral_id"] = ReferralIdConverter
    api.register_converter(ReferralIdConverter, referral_id_schema)
    for blp in (
        clinics_blp,
        locations_blp,
        specialties_blp,
        concerns_blp,
        referrals_blp,
        admin_blp,
        imports_blp,
        exports_blp,
    ):
        api.register_blueprint(blp)
    app.extensions["referral_api"] = api
    app.register_blueprint(widget_blp)

    @app.after_request
    def cors_for_public_reads_only(response: Response) -> Response:
        # flask-cors matches paths, not methods: a write to a public path (POST /v1/clinics)
        # and its preflight would be answered too. Registered before CORS() so that it runs
        # after it (Flask runs after_request functions last registered first). Other paths
        # are left alone: the widget's assets carry their own header for any site.
        if PUBLIC_PATH_RE.fullmatch(request.path) and not is_public_read():
            cors = {name for name, _ in response.headers if name.lower().startswith(CORS_PREFIX)}
            for name in cors:
                del response.headers[name]
        return response

    CORS(
        app,
        resources={PUBLIC_PATHS: {"origins": "*"}},
        # Every answer goes through after_request (cors_for_public_reads_only sees them all).
        intercept_exceptions=False,
        # "*" rather than the echoed Origin: one cached answer serves every embedding site.
        send_wildcard=True,
        methods=["GET", "HEAD", "OPTIONS"],
        expose_headers=[
            "ETag",
            "X-Pagination",
            "X-Excluded-Unknown",
            "X-Request-ID",
            "Retry-After",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ],
        max_age=3600,
    )
    app.register_blueprint(
        Blueprint(
            "docs_assets",
            __name__,
            static_folder=str(swagger_ui_path),
            static_url_path="/docs/assets",
        )
    )

    @app.errorhandler(DBAPIError)
    def statement_timeouts_are_503(error: DBAPIError) -> Response:
        # A statement past DATABASE_STATEMENT_TIMEOUT_MS: the database is slow or busy,
        # not the request wrong; anything else stays an unhandled 500.
        if not is_statement_timeout(error):
            raise error
        get_session().rollback()
        unavailable = ServiceUnavailable()
        message = "The database did not answer in time; try again shortly."
        unavailable.data = {"message": message}  # type: ignore[attr-defined]
        return problem_response(unavailable, headers={"Retry-After": "1"})

    @app.before_request
    def refuse_hostile_query_strings() -> None:
        # A blueprint that authenticates first checks the query after its key (401/403, then
        # 422): it calls refuse_hostile_query() itself.
        if request.blueprint not in AUTHENTICATED_FIRST:
            refuse_hostile_query()

    @app.after_request
    def cache_public_reads(response: Response) -> Response:
        if (
            request.method in ("GET", "HEAD")
            and PUBLIC_PATH_RE.fullmatch(request.path)
            and "Authorization" not in request.headers  # an editor's view is not public
            # A 304 repeats the caching rules of the 200 it stands for (RFC 9111 4.3.4).
            and response.status_code in (200, 304)
            and "Cache-Control" not in response.headers
        ):
            max_age = int(app.config["PUBLIC_CACHE_MAX_AGE"])
            response.headers["Cache-Control"] = f"public, max-age={max_age}"
        return response
