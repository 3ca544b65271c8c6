"""The embeddable clinic finder, in a real browser (Debian's Chromium driven by Playwright).

The API runs on one loopback port and a plain host page with only the snippet on another, so
every search crosses origins exactly as on a customer's site. The browser is launched
headless, without background networking, and every request it makes is recorded: the widget
may talk to the API's origin and nothing else.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from geographiclib.geodesic import Geodesic
from werkzeug.serving import make_server

from referral.geo.chain import get_geocoder
from tests.conftest import REPO_ROOT
from tests.helpers import assert_problem, stored_locations
from tests.live import free_port

ARTIFACTS = Path(os.environ.get("REFERRAL_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
TIMEOUT_MS = 15_000
MILES_PER_KM = 1 / 1.609344
SAN_ANTONIO = "78201"
MINNEAPOLIS = {"latitude": 44.9778, "longitude": -93.2650}


@pytest.fixture
def backend() -> str:
    # The browser tests are about the widget; the API they call is tested on both backends.
    return "sqlite"


class _ServerThread:
    def __init__(self, wsgi_app: Any) -> None:
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, wsgi_app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def api_base(app: Flask) -> Iterator[str]:
    served = _ServerThread(app)
    yield f"http://127.0.0.1:{served.port}"
    served.close()


@dataclass
class HostSite:
    """Another origin serving plain HTML pages that embed the finder."""

    directory: Path
    base: str
    pages: dict[str, str] = field(default_factory=dict)

    def page(self, name: str, api_base: str, div: str = "<div data-clinic-finder></div>",
             script_attrs: str = "", head: str = "") -> str:  # fmt: skip
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>Host page</title>{head}</head>
<body><a href="#top">A host page link</a>
<h1>Our clinics</h1>
{div}
<script src="{api_base}/widget.js" {script_attrs} async></script>
</body></html>"""
        (self.directory / name).write_text(html)
        return f"{self.base}/{name}"


@pytest.fixture
def host_site(tmp_path: Path) -> Iterator[HostSite]:
    directory = tmp_path / "host-site"
    directory.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HostSite(directory, f"http://127.0.0.1:{port}")
    server.shutdown()
    thread.join(timeout=10)


@dataclass
class Visit:
    page: Any
    requests: list[str]
    errors: list[str]
    finder: Any

    def status(self) -> str:
        return str(self.finder.locator(".cf-status").inner_text())

    def names(self, within: str = "ol.cf-results:not(.cf-results-outside)") -> list[str]:
        return list(self.finder.locator(f"{within} .cf-name").all_inner_texts())


@pytest.fixture
def visit(browser: Any, api_base: str, host_site: HostSite) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_page(url: str, **context_options: Any) -> Visit:
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
        page.goto(url)
        finder = page.locator("[data-clinic-finder]").first
        finder.get_by_label("ZIP code, city or address").wait_for()
        return Visit(page, requests, errors, finder)

    yield open_page
    for context in contexts:
        context.close()


def assert_only_these_origins(visit: Visit, *origins: str) -> None:
    strangers = [url for url in visit.requests if not url.startswith(origins)]
    assert not strangers, f"requests outside {origins}: {strangers}"
    assert not visit.errors, visit.errors


def wait_for_results(visit: Visit) -> None:
    visit.finder.locator(".cf-status").filter(has_text=re.compile(r"nearest|within")).wait_for()


def number(text: str) -> float:
    found = re.search(r"[0-9]+(?:\.[0-9]+)?", text)
    assert found, text
    return float(found.group())


def expected_order(app: Flask, lat: float, lon: float, radius_mi: float, limit: int) -> list[int]:
    """Location ids by geodesic distance, brute force, straight from the tables."""
    by_distance = []
    for location in stored_locations(app):
        metres = Geodesic.WGS84.Inverse(lat, lon, location.lat, location.lon)["s12"]
        if metres / 1000 * MILES_PER_KM <= radius_mi:
            by_distance.append((metres, location.id))
    return [location_id for _, location_id in sorted(by_distance)[:limit]]


def clinic_names_by_location(app: Flask, ids: list[int]) -> list[str]:
    with app.test_client() as client:
        names = []
        for location_id in ids:
            location = next(found for found in stored_locations(app) if found.id == location_id)
            clinic = client.get(f"/v1/clinics/{location.clinic_id}").get_json()
            names.append(clinic["name"] or "Clinic name not on record")
        return names


# ---- in the browser ------------------------------------------------------------------------


def test_zip_search_on_another_origin_lists_the_nearest_clinics_in_order(
    app, api_base, host_site, visit
):
    url = host_site.page("index.html", api_base)
    seen = visit(url, viewport={"width": 1024, "height": 900})
    seen.finder.get_by_label("ZIP code, city or address").fill(SAN_ANTONIO)
    seen.finder.get_by_role("button", name="Search").click()
    wait_for_results(seen)

    with app.app_context():
        centroid = get_geocoder().zip(SAN_ANTONIO)
    assert centroid is not None
    expected = expected_order(app, centroid.lat, centroid.lon, radius_mi=25, limit=10)
    assert expected, "the seed has clinics near San Antonio"
    assert seen.names() == clinic_names_by_location(app, expected)
    assert seen.status().startswith(f"{len(expected)} clinic")
    assert "within 25 miles of San Antonio, TX 78201" in seen.status()

    distances = [
        number(text) for text in seen.finder.locator(".cf-results .cf-distance").all_inner_texts()
    ]
    assert distances == sorted(distances)
    first = seen.finder.locator(".cf-result").first
    # The seed places these clinics by city only, and the finder says so.
    assert first.locator(".cf-address").inner_text() == (
        "San Antonio, TX · street address not on record"
    )
    assert first.locator(".cf-distance").inner_text().startswith("about ")
    phone = first.locator("a.cf-phone")
    assert re.fullmatch(r"tel:\+1\d{10}", phone.get_attribute("href") or "")
    directions = first.locator("a.cf-directions")
    assert (directions.get_attribute("href") or "").startswith(
        "https://www.google.com/maps/dir/?api=1&destination="
    )
    assert directions.get_attribute("rel") == "noopener noreferrer"

    # Crossing origins worked because the API said so, and nothing else was contacted.
    assert_only_these_origins(seen, api_base, host_site.base)
    assert any(request.startswith(f"{api_base}/v1/locations/nearest?") for request in seen.requests)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen.page.screenshot(path=str(ARTIFACTS / "widget-embedded-finder.png"), full_page=True)


def test_embed_page_starts_at_once_with_san_antonio_first(app, api_base, visit):
    seen = visit(f"{api_base}/embed?zip={SAN_ANTONIO}", viewport={"width": 800, "height": 900})
    wait_for_results(seen)
    cities = [
        text.split(", ")[-2] if text.count(",") >= 2 else text
        for text in seen.finder.locator(".cf-results .cf-address").all_inner_texts()
    ]
    assert cities, seen.status()
    assert all("San Antonio" in city for city in cities[:3]), cities
    assert seen.finder.get_by_label("ZIP code, city or address").input_value() == SAN_ANTONIO
    # The page's own CSP (script/style/connect 'self') let everything the finder needs run.
    assert_only_these_origins(seen, api_base)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen.page.screenshot(path=str(ARTIFACTS / "widget-embed-page.png"), full_page=True)


def test_embed_works_framed_by_another_site(api_base, host_site, browser):
    frame_tag = f'<iframe src="{api_base}/embed?zip={SAN_ANTONIO}" title="Find a clinic"></iframe>'
    (host_site.directory / "framed.html").write_text(
        f'<!doctype html><html lang="en"><head><link rel="icon" href="data:,"></head>'
        f"<body>{frame_tag}</body></html>"
    )
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{host_site.base}/framed.html")
        finder = page.frame_locator("iframe").locator("[data-clinic-finder]")
        finder.locator(".cf-status").filter(has_text="within").wait_for()
        assert "San Antonio" in finder.locator(".cf-address").first.inner_text()
    finally:
        context.close()


def test_embed_takes_a_query_and_a_specialty(api_base, visit):
    seen = visit(f"{api_base}/embed?q=Minneapolis,+MN&specialty=running")
    wait_for_results(seen)
    assert seen.finder.get_by_label("Specialty").input_value() == "running"
    assert "for Running" in seen.status()
    assert "Minneapolis, MN" in seen.status()
    for specialties in seen.finder.locator(".cf-results .cf-specialties").all_inner_texts():
        assert "Running" in specialties
    assert seen.finder.locator(".cf-possible").count() == 0


def test_use_my_location_with_a_granted_position(app, api_base, host_site, visit):
    url = host_site.page("here.html", api_base)
    seen = visit(url, geolocation=MINNEAPOLIS, permissions=["geolocation"])
    seen.finder.get_by_role("button", name="Use my location").click()
    wait_for_results(seen)
    assert "of your location" in seen.status()
    expected = expected_order(
        app, MINNEAPOLIS["latitude"], MINNEAPOLIS["longitude"], radius_mi=25, limit=10
    )
    assert expected, "the seed has clinics near Minneapolis"
    assert seen.names() == clinic_names_by_location(app, expected)
    nearest = [request for request in seen.requests if "/v1/locations/nearest?" in request]
    assert "lat=44.97780" in nearest[-1] and "lon=-93.26500" in nearest[-1]


def test_a_refused_location_is_explained(api_base, host_site, visit):
    url = host_site.page("refused.html", api_base)
    seen = visit(url)  # no permission granted: headless Chromium refuses
    seen.finder.get_by_role("button", name="Use my location").click()
    alert = seen.finder.get_by_role("alert")
    alert.wait_for()
    assert "Location access was refused" in alert.inner_text()
    assert seen.names() == []


def test_specialty_not_on_record_is_marked_or_left_out_as_the_host_chooses(
    app, api_base, host_site, visit
):
    # Two finders on one page: the default one, and one with data-include-possible="false".
    # The seed knows only names, places and phones of the San Antonio clinics, so whether they
    # offer sports is not on record: the default finder lists them as possible matches, the
    # other leaves them out and falls back to the nearest clinic on record as offering it.
    div = (
        "<div data-clinic-finder></div>\n"
        '<div data-clinic-finder data-include-possible="false"></div>'
    )
    url = host_site.page(
        "sports.html", api_base, div=div, script_attrs='data-specialty="sports" data-radius="10"'
    )
    seen = visit(url, viewport={"width": 1024, "height": 1400})
    strict = replace(seen, finder=seen.page.locator("[data-clinic-finder]").nth(1))
    for finder in (seen, strict):
        finder.finder.get_by_label("ZIP code, city or address").fill(SAN_ANTONIO)
        finder.finder.get_by_label("ZIP code, city or address").press("Enter")

    # By default: the San Antonio clinics, each saying in words that sports is not on record.
    seen.finder.locator(".cf-status").filter(has_text="may offer").wait_for()
    assert seen.status() == (
        "No clinic within 10 miles of San Antonio, TX 78201 is on record as offering Sports;"
        " 3 there may offer it (not on record), nearest first."
    )
    with app.app_context():
        centroid = get_geocoder().zip(SAN_ANTONIO)
    assert centroid is not None
    nearby = expected_order(app, centroid.lat, centroid.lon, radius_mi=10, limit=10)
    assert len(nearby) == 3, "the seed has three clinics in San Antonio"
    assert seen.names() == clinic_names_by_location(app, nearby)
    marks = seen.finder.locator(".cf-results .cf-result .cf-possible")
    assert marks.all_inner_texts() == ["Sports: specialty not on record"] * 3
    # Set apart by more than colour: an outline around the words.
    assert marks.first.evaluate("el => getComputedStyle(el).borderTopStyle") == "dashed"
    asked = [request for request in seen.requests if "/v1/locations/nearest?" in request]
    assert sum("include_possible=true" in request for request in asked) == 1

    # data-include-possible="false": none of them; only the nearest clinic on record, far away.
    status = strict.finder.locator(".cf-status").filter(has_text="The nearest is")
    status.wait_for()
    text = status.inner_text()
    assert text.startswith("No clinics for Sports within 10 miles of San Antonio, TX 78201.")
    assert text.endswith(
        "3 clinic locations within 10 miles not on record for Sports are not shown."
    )
    assert strict.names() == []
    outside = strict.names("ol.cf-results-outside")
    assert len(outside) == 1 and outside[0] not in seen.names()
    distance = strict.finder.locator(".cf-results-outside .cf-distance").inner_text()
    assert distance.endswith(" mi") and number(distance) > 10
    assert distance in text
    assert strict.finder.locator(".cf-possible").count() == 0
    assert "Sports" in strict.finder.locator(".cf-results-outside .cf-specialties").inner_text()
    assert sum("include_possible" in request for request in asked) == 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen.page.screenshot(path=str(ARTIFACTS / "widget-specialty-not-on-record.png"), full_page=True)

    # A clinic on record as offering the specialty shows it, with no such mark.
    where = seen.finder.get_by_label("ZIP code, city or address")
    where.fill("55413")
    seen.finder.get_by_label("Specialty").select_option("running")
    where.press("Enter")
    seen.finder.locator(".cf-status").filter(has_text="Minneapolis").wait_for()
    assert seen.status().startswith("1 clinic for Running")
    assert seen.status().endswith(" within 10 miles of Minneapolis, MN 55413, nearest first.")
    assert seen.names() == ["PRO Therapy"]
    assert "Running" in seen.finder.locator(".cf-results .cf-specialties").inner_text()
    assert seen.finder.locator(".cf-possible").count() == 0
    assert_only_these_origins(seen, api_base, host_site.base)


def test_api_errors_read_in_plain_words(api_base, host_site, visit):
    seen = visit(host_site.page("errors.html", api_base))
    where = seen.finder.get_by_label("ZIP code, city or address")
    alert = seen.finder.get_by_role("alert")

    where.fill("00000")
    where.press("Enter")
    alert.filter(has_text="ZIP code").wait_for()
    assert "We could not find that ZIP code" in alert.inner_text()
    assert where.get_attribute("aria-invalid") == "true"

    where.fill("Atlantis under the sea")
    where.press("Enter")
    alert.filter(has_text="that place").wait_for()
    assert "San Antonio, TX" in alert.inner_text()  # says how to fix it

    where.fill("")
    where.press("Enter")
    alert.filter(has_text="Type a ZIP code").wait_for()
    assert (
        seen.page.evaluate(
            "document.querySelector('[data-clinic-finder]').shadowRoot.activeElement.id"
        )
        == "cf-q"
    )


def test_keyboard_only(api_base, host_site, visit):
    seen = visit(host_site.page("keys.html", api_base))
    keyboard = seen.page.keyboard

    def focused() -> dict[str, str]:
        return dict(
            seen.page.evaluate(
                """() => {
                  let el = document.activeElement;
                  while (el && el.shadowRoot && el.shadowRoot.activeElement) {
                    el = el.shadowRoot.activeElement;
                  }
                  const style = getComputedStyle(el);
                  return {tag: el.tagName, id: el.id || '', cls: el.className || '',
                          label: el.getAttribute('aria-label') || el.textContent.trim(),
                          outline: style.outlineStyle};
                }"""
            )
        )

    keyboard.press("Tab")  # the host page's own link
    keyboard.press("Tab")
    assert focused()["id"] == "cf-q"
    keyboard.type(SAN_ANTONIO)
    keyboard.press("Enter")
    wait_for_results(seen)
    assert seen.finder.locator(".cf-distance").first.inner_text().endswith(" mi")

    # Search, Within, Unit: switch to kilometres with the arrow keys; the search reruns.
    order = []
    for _ in range(3):
        keyboard.press("Tab")
        order.append(focused())
    assert [item["id"] or item["cls"] for item in order] == ["cf-search", "cf-radius", "cf-unit"]
    assert order[-1]["outline"] != "none"  # the focus is visible
    keyboard.press("ArrowDown")
    seen.finder.locator(".cf-status").filter(has_text="kilometres").wait_for()
    assert seen.finder.locator(".cf-distance").first.inner_text().endswith(" km")

    # On through Specialty and "Use my location" to the first clinic's phone link.
    for _ in range(20):
        keyboard.press("Tab")
        now = focused()
        if now["tag"] == "A":
            break
    assert now["cls"] == "cf-phone" and now["label"].startswith("Call ")
    assert now["outline"] != "none"


def test_fits_a_phone_and_takes_the_host_theme(api_base, host_site, visit):
    div = '<div data-clinic-finder style="--cf-accent: rgb(200, 0, 0); --cf-font: serif"></div>'
    url = host_site.page("phone.html", api_base, div=div)
    seen = visit(url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    seen.finder.get_by_label("ZIP code, city or address").fill(SAN_ANTONIO)
    seen.finder.get_by_role("button", name="Search").click()
    wait_for_results(seen)
    assert seen.page.evaluate("document.documentElement.scrollWidth") <= 360
    box = seen.finder.locator(".cf").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    button = seen.finder.get_by_role("button", name="Search")
    assert button.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(200, 0, 0)"
    assert "serif" in button.evaluate("el => getComputedStyle(el).fontFamily")
    touch = seen.finder.locator("a.cf-phone").first.bounding_box()
    assert touch is not None and touch["height"] >= 24
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen.page.screenshot(path=str(ARTIFACTS / "widget-phone.png"), full_page=True)


def test_a_host_page_cannot_break_into_the_finder(api_base, host_site, visit):
    # Host CSS aimed at generic elements must not reach into the shadow root.
    head = "<style>button, input, li { display: none !important; }</style>"
    seen = visit(host_site.page("hostile.html", api_base, head=head))
    seen.finder.get_by_label("ZIP code, city or address").fill(SAN_ANTONIO)
    seen.finder.get_by_role("button", name="Search").click()
    wait_for_results(seen)
    assert seen.finder.locator(".cf-result").first.is_visible()


# ---- over HTTP -----------------------------------------------------------------------------


def test_widget_assets_are_cacheable_from_any_site(client):
    for path, kind in (("/widget.js", "text/javascript"), ("/widget.css", "text/css")):
        response = client.get(path, headers={"Origin": "https://clinic-site.example"})
        assert response.status_code == 200
        assert response.mimetype == kind
        assert response.headers["Cache-Control"].startswith("public, max-age=")
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        again = client.get(path, headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304


def test_embed_page_is_frameable_and_escapes_what_it_echoes(client):
    hostile = '"><script>alert(1)</script>'
    response = client.get("/embed", query_string={"q": hostile, "specialty": "sports"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert 'data-query="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors *" in csp and "script-src 'self'" in csp
    assert "X-Frame-Options" not in response.headers
    etag = response.headers["ETag"]
    query = {"q": hostile, "specialty": "sports"}
    again = client.get("/embed", query_string=query, headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_embed_passes_include_possible_on(client):
    query = {"zip": SAN_ANTONIO, "specialty": "sports", "include_possible": "false"}
    html = client.get("/embed", query_string=query).get_data(as_text=True)
    assert 'data-specialty="sports" data-include-possible="false"' in html
    html = client.get("/embed", query_string={"zip": SAN_ANTONIO}).get_data(as_text=True)
    assert "data-include-possible" not in html


def test_embed_refuses_overlong_parameters(client):
    assert_problem(client.get("/embed", query_string={"q": "x" * 301}), 422, "q")


def test_cors_stays_closed_for_referrals_and_admin(client):
    origin = {"Origin": "https://clinic-site.example"}
    for path in ("/v1/referrals", "/v1/admin/audit", "/v1/admin/review", "/metrics"):
        response = client.get(path, headers=origin)
        assert "Access-Control-Allow-Origin" not in response.headers, path
    preflight = client.options(
        "/v1/referrals",
        headers={**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )  # fmt: skip
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_not_modified_answers_keep_their_caching_rules(client):
    for url in ("/v1/locations/nearest?zip=78201&specialty=sports", "/v1/clinics?state=TX"):
        first = client.get(url, headers={"Origin": "https://clinic-site.example"})
        again = client.get(
            url,
            headers={"If-None-Match": first.headers["ETag"], "Origin": "https://a.example"},
        )
        assert again.status_code == 304
        assert again.headers["ETag"] == first.headers["ETag"]
        assert again.headers["Cache-Control"] == first.headers["Cache-Control"]
        assert again.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    ("typed", "label"),
    [("San Antonio, TX", "San Antonio, TX"), ("San Antonio TX", "San Antonio, TX"),
     ("saint paul mn", "Saint Paul, MN")],
)  # fmt: skip
def test_places_typed_as_people_type_them(client, typed, label):
    body = client.get("/v1/locations/nearest", query_string={"address": typed}).get_json()
    assert body["origin"]["label"] == label
    assert body["origin"]["precision"] == "city"


def test_a_street_ending_like_a_state_is_not_taken_for_a_city(client):
    # "Ct" is Connecticut too; with no network geocoder this cannot be placed, and says so.
    response = client.get("/v1/locations/nearest", query_string={"address": "12 Main Ct"})
    assert_problem(response, 422, "address")
