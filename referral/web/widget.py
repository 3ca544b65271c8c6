"""The embeddable clinic finder: /widget.js and /widget.css for any site, /embed for iframes.

Plain files served as they are (no build step). They call only this service's public,
read-only endpoints, so they work on an intranet with no internet at all.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, request, send_from_directory

from referral.web.problems import field_error

STATIC = Path(__file__).parent / "static"
# Not fingerprinted, so keep browser copies short-lived; ETags make revalidation cheap.
ASSET_MAX_AGE_SECONDS = 300
# What /embed passes on to the finder, with the API's own length limits.
EMBED_PARAMS = {
    "q": 300,
    "zip": 10,
    "specialty": 40,
    "unit": 2,
    "radius": 10,
    "limit": 2,
    "include_possible": 5,  # "false" lists only clinics on record for the specialty
}
EMBED_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors *",  # made to be framed by any site
    )
)

widget_blp = Blueprint("widget", __name__, template_folder="templates")


def _asset(name: str, mimetype: str) -> Response:
    response = send_from_directory(
        STATIC, name, mimetype=mimetype, max_age=ASSET_MAX_AGE_SECONDS, conditional=True
    )
    response.headers["Cache-Control"] = f"public, max-age={ASSET_MAX_AGE_SECONDS}"
    # Any site may load these, also with crossorigin="anonymous" + integrity (SRI).
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@widget_blp.get("/widget.js")
def widget_js() -> Response:
    return _asset("widget.js", "text/javascript")


@widget_blp.get("/widget.css")
def widget_css() -> Response:
    return _asset("widget.css", "text/css")


@widget_blp.get("/embed")
def embed() -> Response:
    """The finder as a full page; ?q=, ?zip= start a search at once; ?include_possible=false
    lists only clinics on record as offering the specialty."""
    start: dict[str, str] = {}
    for name, limit in EMBED_PARAMS.items():
        value = request.args.get(name, "").strip()
        if len(value) > limit:
            field_error(422, "query", name, f"at most {limit} characters")
        if value:
            start[name] = value
    html = render_template("embed.html", start=start)
    response = current_app.response_class(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMBED_CSP
    response.headers["Cache-Control"] = f"public, max-age={ASSET_MAX_AGE_SECONDS}"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.add_etag()
    response.make_conditional(request)  # in place: 304 when If-None-Match matches
    return response
