"""The network-geocoder path of the geocoder chain, through the real geopy Nominatim client
talking to a stub HTTP server on 127.0.0.1 that answers like Nominatim.

Nominatim is held to one request a second, so each test makes only a few network calls.
No test reaches anything but 127.0.0.1: an autouse fixture refuses other connections.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from geopy.geocoders import options as geopy_options
from sqlmodel import Session, select

from referral.db import get_database
from referral.directory.models import GeocodePrecision
from referral.geo.chain import get_geocoder
from referral.geo.distance import geodesic_km
from referral.geo.models import GeocodeCacheEntry
from referral.geo.network import GeocoderConfigError, nominatim_precision
from referral.timeutil import utcnow
from tests.conftest import build_app
from tests.helpers import assert_problem, stored_locations

USER_AGENT = "referral-tests/1.0 (tests@example.org)"
SOURCE = "geopy nominatim"

# Canned answers that are not JSON lists: the stub misbehaves on purpose.
SERVER_ERROR = object()
TOO_SLOW = object()
NOT_JSON = object()
SLOW_SECONDS = 5.0


def nominatim_place(
    lat: str, lon: str, category: str, kind: str, addresstype: str, name: str, rank: int
) -> dict[str, Any]:
    """One result as Nominatim's /search?format=json gives it (coordinates are strings)."""
    south, north = f"{float(lat) - 0.0001:.7f}", f"{float(lat) + 0.0001:.7f}"
    west, east = f"{float(lon) - 0.0001:.7f}", f"{float(lon) + 0.0001:.7f}"
    return {
        "place_id": 123456,
        "licence": "Data © OpenStreetMap contributors, ODbL 1.0. http://osm.org/copyright",
        "osm_type": "node",
        "osm_id": 987654,
        "lat": lat,
        "lon": lon,
        "class": category,
        "type": kind,
        "place_rank": rank,
        "importance": 0.00001,
        "addresstype": addresstype,
        "name": "",
        "display_name": name,
        "boundingbox": [south, north, west, east],
    }


BUILDING_Q = "2112 Broadway Street NE, Minneapolis, MN 55413"
# An address point, as Nominatim reports one: class place, type house, addresstype place.
BUILDING = nominatim_place(
    "45.0127361",
    "-93.2471842",
    "place",
    "house",
    "place",
    "2112, Broadway Street Northeast, Minneapolis, Hennepin County, Minnesota, 55413, "
    "United States",
    30,
)
ROAD_Q = "Springbrook Drive NW, Coon Rapids, MN 55433"
ROAD = nominatim_place(
    "45.1353",
    "-93.2790",
    "highway",
    "residential",
    "road",
    "Springbrook Drive Northwest, Coon Rapids, Anoka County, Minnesota, 55433, United States",
    26,
)


@dataclass(frozen=True)
class Seen:
    path: str
    params: dict[str, str]
    user_agent: str | None
    at: float


@dataclass
class StubNominatim:
    """What the stub answers (by the ``q`` parameter) and every request it received."""

    port: int = 0
    answers: dict[str, Any] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def options(self) -> dict[str, str]:
        return {"domain": f"127.0.0.1:{self.port}", "scheme": "http", "user_agent": USER_AGENT}

    def queries(self) -> list[str]:
        with self.lock:
            return [seen.params.get("q", "") for seen in self.requests]


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True
    stub: StubNominatim


class _StubHandler(BaseHTTPRequestHandler):
    server: _StubServer

    def do_GET(self) -> None:
        stub = self.server.stub
        url = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(url.query).items()}
        with stub.lock:
            stub.requests.append(
                Seen(url.path, params, self.headers.get("User-Agent"), time.monotonic())
            )
        if url.path != "/search":
            self._send(404, b'{"error": "not found"}')
            return
        answer = stub.answers.get(params.get("q", ""), [])
        if answer is SERVER_ERROR:
            self._send(500, b"Internal Server Error", "text/plain")
        elif answer is TOO_SLOW:
            stub.release.wait(SLOW_SECONDS)
            self._send(200, b"[]")
        elif answer is NOT_JSON:
            self._send(200, b"<html><body>Bad Gateway</body></html>", "text/html")
        else:
            self._send(200, json.dumps(answer).encode())

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up waiting (the timeout test)
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse (and report) any connection that is not to this machine."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    refused: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            refused.append(address)
            raise ConnectionRefusedError(f"tests may only connect to 127.0.0.1, not {address}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield
    assert refused == [], f"a test tried to leave 127.0.0.1: {refused}"


@pytest.fixture
def nominatim() -> Iterator[StubNominatim]:
    stub = StubNominatim(answers={BUILDING_Q: [BUILDING], ROAD_Q: [ROAD]})
    server = _StubServer(("127.0.0.1", 0), _StubHandler)
    server.stub = stub
    stub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    stub.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def make_app(database_url: str, nominatim: StubNominatim) -> Iterator[Callable[..., Flask]]:
    """Apps using the stub as their Nominatim; ``extra`` settings override the defaults."""
    apps: list[Flask] = []

    def make(**extra: Any) -> Flask:
        settings: dict[str, Any] = {
            "GEOCODER": "nominatim",
            "GEOCODER_OPTIONS": nominatim.options,
            "GEOCODER_TIMEOUT_SECONDS": 2.0,
            **extra,
        }
        app = build_app(database_url, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_database(app).dispose()


@pytest.fixture
def geo_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def nearest(app: Flask, address: str, **params: Any) -> Any:
    return app.test_client().get(
        "/v1/locations/nearest", query_string={"address": address, **params}
    )


def cache_rows(app: Flask) -> list[dict[str, Any]]:
    with get_database(app).engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text("SELECT * FROM geocode_cache"))]


# ---- a place the network knows ------------------------------------------------------------


def test_building_is_a_rooftop_origin_and_results_are_ordered_from_it(
    geo_app: Flask, nominatim: StubNominatim
) -> None:
    response = nearest(geo_app, BUILDING_Q, limit=5)

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    origin = body["origin"]
    assert origin["resolved_from"] == "address"
    assert origin["precision"] == "rooftop"
    assert origin["source"] == SOURCE
    assert (origin["lat"], origin["lon"]) == (float(BUILDING["lat"]), float(BUILDING["lon"]))
    assert nominatim.queries() == [BUILDING_Q]
    # Ranked by distance from the stub's coordinates: the same order as ranking every stored
    # location ourselves.
    lat, lon = origin["lat"], origin["lon"]
    expected = sorted(
        stored_locations(geo_app), key=lambda loc: (geodesic_km(lat, lon, loc.lat, loc.lon), loc.id)
    )[:5]
    assert [hit["location"]["id"] for hit in body["results"]] == [loc.id for loc in expected]
    for hit, loc in zip(body["results"], expected, strict=True):
        assert hit["distance_km"] == pytest.approx(
            geodesic_km(lat, lon, loc.lat, loc.lon), abs=1e-3
        )
    assert body["results"][0]["location"]["city"] == "Minneapolis"


def test_stub_sees_our_user_agent_and_a_us_only_search(
    geo_app: Flask, nominatim: StubNominatim
) -> None:
    with geo_app.app_context():
        found = get_geocoder(geo_app).text(ROAD_Q)

    assert found is not None and found.precision is GeocodePrecision.STREET
    [seen] = nominatim.requests
    assert seen.path == "/search"
    assert seen.user_agent == USER_AGENT
    assert seen.user_agent != geopy_options.default_user_agent
    # geopy sends our country_codes option as Nominatim's ``countrycodes`` parameter.
    assert seen.params["countrycodes"] == "us"
    assert seen.params["q"] == ROAD_Q
    assert seen.params["format"] == "json"
    assert seen.params["limit"] == "1"


def test_nominatim_is_held_to_one_request_a_second_even_if_configured_faster(
    make_app: Callable[..., Flask], nominatim: StubNominatim
) -> None:
    app = make_app(GEOCODER_MIN_DELAY_SECONDS=0)
    with app.app_context():
        get_geocoder(app).text("1 First Street, Minneapolis, MN 55413")
        get_geocoder(app).text("2 Second Street, Minneapolis, MN 55413")

    first, second = nominatim.requests
    assert second.at - first.at >= 0.9


# ---- the cache ----------------------------------------------------------------------------


def test_the_same_query_is_asked_once_and_the_cache_holds_no_address(
    geo_app: Flask, nominatim: StubNominatim
) -> None:
    with geo_app.app_context():
        chain = get_geocoder(geo_app)
        first = chain.text(BUILDING_Q)
        again = chain.text("  2112 broadway STREET ne,   Minneapolis, mn 55413 ")
    response = nearest(geo_app, "2112 BROADWAY Street NE, minneapolis,  MN 55413")

    assert nominatim.queries() == [BUILDING_Q]
    assert first is not None and first.precision is GeocodePrecision.ROOFTOP
    assert again == first
    assert response.status_code == 200
    assert response.get_json()["origin"]["precision"] == "rooftop"
    assert response.get_json()["origin"]["lat"] == first.lat
    rows = cache_rows(geo_app)
    assert len(rows) == 1
    assert rows[0]["found"] in (True, 1)
    assert rows[0]["precision"] == "rooftop"
    words = ["broadway", "street", "minneapolis", "2112 b", "55413", "northeast"]
    for row in rows:
        for column, value in row.items():
            text = str(value).casefold()
            assert not [word for word in words if word in text], (column, value)


def test_an_expired_cache_entry_is_asked_again(
    make_app: Callable[..., Flask], nominatim: StubNominatim
) -> None:
    app = make_app(GEOCODE_CACHE_TTL_DAYS=30)
    moved = nominatim_place("45.1360", "-93.2801", "building", "yes", "building", "moved", 30)
    with app.app_context():
        chain = get_geocoder(app)
        before = chain.text(ROAD_Q)
        nominatim.answers[ROAD_Q] = [moved]
        still_cached = chain.text(ROAD_Q)
        assert nominatim.queries() == [ROAD_Q]
        with Session(get_database(app).engine) as session:
            [entry] = session.exec(select(GeocodeCacheEntry)).all()
            entry.created_at = utcnow() - timedelta(days=31)
            session.commit()
        refreshed = chain.text(ROAD_Q)

    assert before is not None and still_cached == before
    assert before.precision is GeocodePrecision.STREET
    assert nominatim.queries() == [ROAD_Q, ROAD_Q]
    assert refreshed is not None
    assert (refreshed.lat, refreshed.lon) == (45.1360, -93.2801)
    assert refreshed.precision is GeocodePrecision.ROOFTOP
    with Session(get_database(app).engine) as session:
        [entry] = session.exec(select(GeocodeCacheEntry)).all()
    assert entry.precision == "rooftop"
    created = entry.created_at
    if created.tzinfo is None:  # SQLite hands back naive UTC
        created = created.replace(tzinfo=UTC)
    assert utcnow() - created < timedelta(hours=1)


# ---- falling back to the gazetteer --------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "precision", "expected"),
    [
        ("1 Nowhere Rd, Minneapolis, MN 55413", "postal_code", lambda g: g.zip_place("55413")),
        ("1 Nowhere Rd, Minneapolis, MN", "city", lambda g: g.city_place("Minneapolis", "MN")),
    ],
)
def test_an_address_the_network_does_not_know_falls_back_to_the_gazetteer(
    geo_app: Flask,
    nominatim: StubNominatim,
    address: str,
    precision: str,
    expected: Callable[[Any], Any],
) -> None:
    response = nearest(geo_app, address)

    assert response.status_code == 200, response.get_data(as_text=True)
    origin = response.get_json()["origin"]
    place = expected(get_geocoder(geo_app).gazetteer)
    assert origin["precision"] == precision
    assert origin["source"] == place.source
    assert (origin["lat"], origin["lon"]) == (place.lat, place.lon)
    assert nominatim.queries() == [address]  # the network was asked first
    [row] = cache_rows(geo_app)  # "not found" is remembered too
    assert row["found"] in (False, 0)
    assert row["lat"] is None


def test_a_server_error_falls_back_without_logging_the_address(
    geo_app: Flask, nominatim: StubNominatim, caplog: pytest.LogCaptureFixture
) -> None:
    address = "13 Quiet Lane, Minneapolis, MN 55413"
    nominatim.answers[address] = SERVER_ERROR
    caplog.set_level(logging.INFO)

    response = nearest(geo_app, address)

    assert response.status_code == 200, response.get_data(as_text=True)
    origin = response.get_json()["origin"]
    assert origin["precision"] == "postal_code"
    assert origin["source"] != SOURCE
    assert nominatim.queries() == [address, address]  # one retry, then give up
    assert cache_rows(geo_app) == []  # a failure is not remembered
    assert any("GeocoderServiceError" in record.getMessage() for record in caplog.records)
    # The address may be a patient's: it must not reach the logs (tracebacks included).
    assert "quiet lane" not in caplog.text.casefold()


def test_a_timeout_falls_back_to_the_gazetteer(
    make_app: Callable[..., Flask], nominatim: StubNominatim
) -> None:
    app = make_app(GEOCODER_TIMEOUT_SECONDS=0.3)
    address = "99 Slow Road, Minneapolis, MN"
    nominatim.answers[address] = TOO_SLOW

    response = nearest(app, address)
    finished = time.monotonic()

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["origin"]["precision"] == "city"
    first, retry = nominatim.requests
    assert first.params["q"] == retry.params["q"] == address
    # Two tries of 0.3 s a second apart: neither waited for the stub's answer nor for
    # geopy's default timeout of 1 s.
    assert finished - first.at < 1.8


def test_an_answer_that_is_not_json_falls_back_to_the_gazetteer(
    geo_app: Flask, nominatim: StubNominatim
) -> None:
    address = "7 Garbled Court, Minneapolis, MN 55413"
    nominatim.answers[address] = NOT_JSON
    with geo_app.app_context():
        found = get_geocoder(geo_app).text(address)

    assert found is not None
    assert found.precision is GeocodePrecision.POSTAL_CODE
    assert nominatim.queries()[0] == address


def test_with_nothing_to_fall_back_on_the_api_names_the_address(
    geo_app: Flask, nominatim: StubNominatim
) -> None:
    address = "1 Nowhere Road"
    nominatim.answers[address] = SERVER_ERROR

    response = nearest(geo_app, address)

    assert_problem(response, 422, "address")
    [param] = response.get_json()["invalid_params"]
    assert param["location"] == "query"
    assert nominatim.queries()[0] == address


# ---- what never calls the network ---------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "precision"),
    [
        ("55413", "postal_code"),
        ("55413-1234", "postal_code"),
        ("Minneapolis, MN", "city"),
        ("  coon rapids ,  mn ", "city"),
    ],
)
def test_a_bare_zip_or_city_never_calls_the_network(
    geo_app: Flask, nominatim: StubNominatim, address: str, precision: str
) -> None:
    # Were the network asked, it would answer with a rooftop.
    nominatim.answers[address] = [BUILDING]
    nominatim.answers[address.strip()] = [BUILDING]

    response = nearest(geo_app, address)

    assert response.status_code == 200, response.get_data(as_text=True)
    origin = response.get_json()["origin"]
    assert origin["precision"] == precision
    assert origin["source"].startswith("zipcodes")
    assert nominatim.requests == []


def test_location_without_network_never_calls_it(geo_app: Flask, nominatim: StubNominatim) -> None:
    fields = {
        "address_line1": "2112 Broadway Street NE",
        "city": "Minneapolis",
        "state": "MN",
        "zip_code": "55413",
    }
    with geo_app.app_context():
        chain = get_geocoder(geo_app)
        offline = chain.location(**fields, use_network=False)
        assert nominatim.requests == []
        online = chain.location(**fields)

    assert offline is not None
    assert offline.precision is GeocodePrecision.POSTAL_CODE
    assert offline.source.startswith("zipcodes")
    # With the network allowed, the same fields make the query the stub knows.
    assert nominatim.queries() == [BUILDING_Q]
    assert online is not None
    assert online.precision is GeocodePrecision.ROOFTOP
    assert online.source == SOURCE
    assert online.label == offline.label  # the label still comes from the gazetteer


# ---- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geocoder", "options"),
    [
        ("nominatim", {}),
        ("nominatim", {"user_agent": ""}),
        ("nominatim", {"user_agent": geopy_options.default_user_agent}),
        ("Nominatim", {"user_agent": geopy_options.default_user_agent}),
        # geopy's own sample agents, refused by the real Nominatim.
        ("nominatim", {"user_agent": "my-application"}),
        ("nominatim", {"user_agent": USER_AGENT, "no_such_option": 1}),
        ("no-such-geocoder", {"user_agent": USER_AGENT}),
    ],
)
def test_a_misconfigured_geocoder_stops_the_app_at_start(
    database_url: str, geocoder: str, options: dict[str, Any]
) -> None:
    with pytest.raises(GeocoderConfigError):
        build_app(database_url, GEOCODER=geocoder, GEOCODER_OPTIONS=options)


def test_a_missing_user_agent_says_how_to_set_one(database_url: str) -> None:
    with pytest.raises(GeocoderConfigError, match="User-Agent"):
        build_app(database_url, GEOCODER="nominatim", GEOCODER_OPTIONS={})


# ---- precision from Nominatim's class and type --------------------------------------------


@pytest.mark.parametrize(
    ("raw", "precision"),
    [
        ({"class": "place", "type": "house", "addresstype": "place"}, "rooftop"),
        ({"class": "place", "type": "house"}, "rooftop"),
        ({"class": "building", "type": "yes", "addresstype": "building"}, "rooftop"),
        ({"class": "amenity", "type": "clinic", "addresstype": "amenity"}, "rooftop"),
        ({"class": "highway", "type": "residential", "addresstype": "road"}, "street"),
        ({"class": "highway", "type": "primary"}, "street"),
        ({"category": "highway", "type": "tertiary"}, "street"),  # format=jsonv2 says category
        ({"class": "place", "type": "postcode", "addresstype": "postcode"}, "postal_code"),
        ({"class": "boundary", "type": "postal_code", "addresstype": "postcode"}, "postal_code"),
        ({"class": "boundary", "type": "administrative", "addresstype": "city"}, "city"),
        ({"class": "place", "type": "city", "addresstype": "city"}, "city"),
        # A residential area is not a street.
        ({"class": "landuse", "type": "residential", "addresstype": "residential"}, "city"),
        ({}, "city"),
    ],
)
def test_nominatim_precision(raw: dict[str, Any], precision: str) -> None:
    assert nominatim_precision(raw) == GeocodePrecision(precision)
