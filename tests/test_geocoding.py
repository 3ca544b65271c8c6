"""The network-geocoder path of the geocoder chain, through the real geopy Nominatim client
talking to a stub HTTP server on 127.0.0.1 that answers like Nominatim.

Nominatim is held to one request a second, so each test makes only a few network calls.
No test reaches anything but 127.0.0.1: an autouse fixture refuses other connections.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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
from referral.geo.shared import SECRET_FILE, GeocoderBusy
from referral.timeutil import utcnow
from tests.conftest import REPO_ROOT, build_app, skip_or_fail
from tests.helpers import assert_problem, auth, stored_locations

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


# The gazetteer's built tables, shared by every test (building them takes seconds).
GAZETTEER_DIR = os.environ.get("REFERRAL_INSTANCE_PATH") or str(REPO_ROOT / "instance")


@pytest.fixture
def make_app(
    database_url: str,
    nominatim: StubNominatim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Flask]]:
    """Apps using the stub as their Nominatim; ``extra`` settings override the defaults.

    Each test has an instance folder of its own (the request budget's file and the cache
    secret live there), ``tmp_path / "instance"`` unless ``instance`` names another."""
    apps: list[Flask] = []

    def make(instance: Path | None = None, **extra: Any) -> Flask:
        settings: dict[str, Any] = {
            "GEOCODER": "nominatim",
            "GEOCODER_OPTIONS": nominatim.options,
            "GEOCODER_TIMEOUT_SECONDS": 2.0,
            "GAZETTEER_CACHE_DIR": GAZETTEER_DIR,
            **extra,
        }
        monkeypatch.setenv("REFERRAL_INSTANCE_PATH", str(instance or tmp_path / "instance"))
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
        chain = get_geocoder(app)
        chain.text("1 First Street, Minneapolis, MN 55413")
        with pytest.raises(GeocoderBusy) as busy:
            chain.text("2 Second Street, Minneapolis, MN 55413")
        assert 0 < busy.value.retry_after <= 1.0
        time.sleep(busy.value.retry_after)
        chain.text("2 Second Street, Minneapolis, MN 55413")

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
        time.sleep(1.0)  # Nominatim's budget: one request a second
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


# ---- one request budget for every worker and host -----------------------------------------

OTHER_Q = "1 First Street, Minneapolis, MN 55413"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """REFERRAL_TEST_REDIS_URL, with this test's keys removed afterwards."""
    import redis

    url = os.environ.get("REFERRAL_TEST_REDIS_URL")
    if not url:
        skip_or_fail("Redis tests skipped: set REFERRAL_TEST_REDIS_URL")
    assert url is not None
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        skip_or_fail(f"Redis tests skipped: cannot reach REFERRAL_TEST_REDIS_URL: {exc}")
    yield url
    client.close()


def assert_busy_at_once(app: Flask, address: str) -> None:
    """The address search is refused at once: 503 naming ``address``, with Retry-After."""
    started = time.monotonic()
    response = nearest(app, address)
    took = time.monotonic() - started

    body = assert_problem(response, 503, "address")
    [param] = body["invalid_params"]
    assert param["location"] == "query"
    assert response.headers["Retry-After"] == "1"
    assert took < 0.5, took  # not queued behind the budget
    # A search that needs no network is not held up meanwhile.
    assert app.test_client().get("/v1/locations/nearest?zip=55413").status_code == 200


def test_two_apps_on_one_host_share_one_budget(
    make_app: Callable[..., Flask], nominatim: StubNominatim, tmp_path: Path
) -> None:
    # Two apps as two workers are: nothing shared but the instance folder.
    first, second = make_app(), make_app(tmp_path / "instance")

    assert nearest(first, BUILDING_Q).status_code == 200
    assert_busy_at_once(second, ROAD_Q)
    assert_busy_at_once(first, OTHER_Q)
    assert nominatim.queries() == [BUILDING_Q]
    assert cache_rows(second) and len(cache_rows(second)) == 1  # a refusal is not cached
    time.sleep(1.0)
    assert nearest(second, ROAD_Q).get_json()["origin"]["precision"] == "street"
    first_at, second_at = (seen.at for seen in nominatim.requests)
    assert second_at - first_at >= 0.9


def test_hosts_sharing_redis_share_one_budget(
    make_app: Callable[..., Flask], nominatim: StubNominatim, tmp_path: Path, redis_url: str
) -> None:
    import redis

    prefix = f"test-{uuid.uuid4().hex[:12]}"
    shared = {"RATELIMIT_STORAGE_URI": redis_url, "RATELIMIT_KEY_PREFIX": prefix}
    # Two hosts: instance folders of their own, one Redis.
    first = make_app(tmp_path / "host-a", **shared)
    second = make_app(tmp_path / "host-b", **shared)

    assert nearest(first, BUILDING_Q).status_code == 200
    assert_busy_at_once(second, ROAD_Q)
    assert nominatim.queries() == [BUILDING_Q]
    client = redis.Redis.from_url(redis_url)
    try:
        left = client.pttl(f"{prefix}:geocoder-budget:nominatim")
        assert 0 < left <= 1000  # type: ignore[operator]
    finally:
        client.delete(f"{prefix}:geocoder-budget:nominatim")
        client.close()
    assert nearest(second, ROAD_Q).status_code == 200  # the key is gone: the budget is open
    assert nominatim.queries() == [BUILDING_Q, ROAD_Q]


def test_a_location_written_while_the_budget_is_spent_is_refused_naming_its_address(
    geo_app: Flask, nominatim: StubNominatim
) -> None:
    from referral.auth.keys import create_key

    with Session(get_database(geo_app).engine) as session:
        _, admin = create_key(session, name="geo-admin", scopes=["admin"])
        session.commit()
    client = geo_app.test_client()
    clinic = client.get("/v1/clinics").get_json()[0]
    before = len(client.get(f"/v1/clinics/{clinic['id']}").get_json()["locations"])
    assert nearest(geo_app, BUILDING_Q).status_code == 200

    response = client.post(
        f"/v1/clinics/{clinic['id']}/locations",
        json={"address_line1": "2 Second Street", "city": "Minneapolis", "state": "MN"},
        headers=auth(admin),
    )

    body = assert_problem(response, 503, "address_line1")
    assert body["invalid_params"][0]["location"] == "json"
    assert response.headers["Retry-After"] == "1"
    assert len(client.get(f"/v1/clinics/{clinic['id']}").get_json()["locations"]) == before
    assert nominatim.queries() == [BUILDING_Q]


# ---- the cache secret ---------------------------------------------------------------------


def test_without_a_configured_secret_one_is_made_once_in_the_instance_folder(
    make_app: Callable[..., Flask], nominatim: StubNominatim, tmp_path: Path
) -> None:
    first = make_app()
    second = make_app(tmp_path / "instance")  # another worker: the same secret, not a new one
    path = tmp_path / "instance" / SECRET_FILE
    secret = path.read_text().strip()

    assert len(secret) >= 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with first.app_context():
        get_geocoder(first).text(BUILDING_Q)
    [row] = cache_rows(first)
    message = f"nominatim\n{' '.join(BUILDING_Q.casefold().split())}".encode()
    assert row["key"] == hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    assert row["key"] != hashlib.sha256(message).hexdigest()  # not confirmable by guessing
    assert nearest(second, BUILDING_Q).status_code == 200  # found in the first's cache
    assert nominatim.queries() == [BUILDING_Q]


def test_a_configured_secret_is_used_and_no_file_is_made(
    make_app: Callable[..., Flask], nominatim: StubNominatim, tmp_path: Path
) -> None:
    app = make_app(GEOCODE_CACHE_SECRET="configured-secret")
    with app.app_context():
        get_geocoder(app).text(BUILDING_Q)

    [row] = cache_rows(app)
    message = f"nominatim\n{' '.join(BUILDING_Q.casefold().split())}".encode()
    assert row["key"] == hmac.new(b"configured-secret", message, hashlib.sha256).hexdigest()
    assert not (tmp_path / "instance" / SECRET_FILE).exists()


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
