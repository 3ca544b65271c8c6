"""Nearest search agrees with an independent brute-force geodesic computation."""

from __future__ import annotations

import math

import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import StoredLocation, auth, stored_locations

KM_PER_MILE = 1.609344


def brute_force(
    locations: list[StoredLocation],
    lat: float,
    lon: float,
    *,
    specialties: frozenset[str] = frozenset(),
    radius_km: float | None = None,
) -> list[tuple[float, int]]:
    """(distance_km, location id) of every matching location, nearest first, ties by id."""
    ranked = []
    for location in locations:
        if not specialties <= location.specialties:
            continue
        km = Geodesic.WGS84.Inverse(lat, lon, location.lat, location.lon)["s12"] / 1000
        if radius_km is None or km <= radius_km:
            ranked.append((km, location.id))
    return sorted(ranked)


def assert_matches(body: dict, expected: list[tuple[float, int]], limit: int) -> None:
    results = body["results"]
    assert [hit["location"]["id"] for hit in results] == [loc_id for _, loc_id in expected[:limit]]
    for hit, (km, _) in zip(results, expected, strict=False):
        assert hit["distance_km"] == pytest.approx(km, abs=0.001)
        assert hit["distance_mi"] == pytest.approx(km / KM_PER_MILE, abs=0.001)
    assert body["count"] == len(results)


def test_zip_78201_returns_san_antonio_first(client):
    body = client.get("/v1/locations/nearest?zip=78201&limit=3").get_json()
    assert body["origin"]["resolved_from"] == "zip"
    assert body["origin"]["precision"] == "postal_code"
    assert body["origin"]["label"] == "San Antonio, TX 78201"
    assert body["origin"]["lat"] == pytest.approx(29.47, abs=0.01)
    names = [hit["clinic"]["name"] for hit in body["results"]]
    assert sorted(names) == [
        "Evidence in Motion (EIM)",
        "Fit for Work",
        "Texas Physical Therapy Specialists",
    ]
    assert all(hit["location"]["city"] == "San Antonio" for hit in body["results"])
    assert all(hit["distance_mi"] < 5 for hit in body["results"])


ORIGIN_ZIPS = ["78201", "55413", "55433", "10001", "99501", "96813", "33101", "80521", "02903"]


@pytest.mark.parametrize("zip_code", ORIGIN_ZIPS)
def test_agrees_with_brute_force_from_zip(app, client, zip_code):
    body = client.get(f"/v1/locations/nearest?zip={zip_code}&limit=50").get_json()
    origin = body["origin"]
    expected = brute_force(stored_locations(app), origin["lat"], origin["lon"])
    assert len(body["results"]) == 36
    assert_matches(body, expected, 50)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lat=st.floats(min_value=-90, max_value=90, allow_nan=False),
    lon=st.floats(min_value=-180, max_value=180, allow_nan=False),
    limit=st.integers(min_value=1, max_value=50),
    radius_km=st.one_of(st.none(), st.floats(min_value=0.5, max_value=5000)),
    specialty=st.sampled_from([None, "sports", "orthopedic", "running"]),
)
def test_agrees_with_brute_force_anywhere(app, client, lat, lon, limit, radius_km, specialty):
    query = {"lat": lat, "lon": lon, "limit": limit, "unit": "km"}
    if radius_km is not None:
        query["radius"] = radius_km
    if specialty:
        query["specialty"] = specialty
    response = client.get("/v1/locations/nearest", query_string=query)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    wanted = frozenset([specialty]) if specialty else frozenset()
    expected = brute_force(stored_locations(app), lat, lon, specialties=wanted, radius_km=radius_km)
    assert_matches(body, expected, limit)
    if radius_km is not None and not expected:
        anywhere = brute_force(stored_locations(app), lat, lon, specialties=wanted)
        outside = body["nearest_outside_radius"]
        assert outside["location"]["id"] == anywhere[0][1]
        assert outside["distance_km"] > radius_km
    else:
        assert body["nearest_outside_radius"] is None


def test_results_are_in_nondecreasing_distance(client):
    body = client.get("/v1/locations/nearest?lat=39.5&lon=-98.35&limit=50").get_json()
    distances = [hit["distance_km"] for hit in body["results"]]
    assert distances == sorted(distances)
    assert len(distances) == 36


def test_radius_in_miles_and_km(app, client):
    # Louisville, KY: Confluent Health and ProRehab PT in town; Lexington about 110 km away.
    origin = client.get("/v1/locations/nearest?city=Louisville&state=KY").get_json()["origin"]
    for unit, radius in (("mi", 50), ("km", 80.4672)):
        body = client.get(
            f"/v1/locations/nearest?city=Louisville&state=KY&radius={radius}&unit={unit}&limit=50"
        ).get_json()
        assert body["radius"]["unit"] == unit
        assert body["radius"]["km"] == pytest.approx(80.4672, abs=1e-6)
        expected = brute_force(
            stored_locations(app), origin["lat"], origin["lon"], radius_km=80.4672
        )
        assert_matches(body, expected, 50)
        assert {hit["location"]["city"] for hit in body["results"]} == {"Louisville"}
    wider = client.get("/v1/locations/nearest?city=Louisville&state=KY&radius=150&unit=km")
    assert "Lexington" in {hit["location"]["city"] for hit in wider.get_json()["results"]}


def test_limit_defaults_to_5_and_is_respected(client):
    assert len(client.get("/v1/locations/nearest?zip=40202").get_json()["results"]) == 5
    assert len(client.get("/v1/locations/nearest?zip=40202&limit=2").get_json()["results"]) == 2
    assert len(client.get("/v1/locations/nearest?zip=40202&limit=50").get_json()["results"]) == 36


def test_specialty_filter_requires_all(client):
    both = client.get(
        "/v1/locations/nearest?zip=40502&specialty=orthopedic&specialty=sports&limit=50"
    ).get_json()
    assert {hit["clinic"]["name"] for hit in both["results"]} == {
        "Orthopedic & Sports Physical Therapy",
        "Tallahassee Orthopedic & Sports Physical Therapy",
    }
    assert both["specialties"] == ["orthopedic", "sports"]
    sports = client.get("/v1/locations/nearest?zip=40502&specialty=sports&limit=50").get_json()
    sports_names = {hit["clinic"]["name"] for hit in sports["results"]}
    assert {"Xcel Sports Medicine", "PRO Therapy"} <= sports_names
    for hit in sports["results"]:
        assert "sports" in hit["clinic"]["specialties"]


def test_running_low_back_from_minneapolis_finds_pro_therapy(client):
    body = client.get(
        "/v1/locations/nearest?zip=55413&specialty=running&specialty=spine&limit=1"
    ).get_json()
    hit = body["results"][0]
    assert hit["clinic"]["name"] == "PRO Therapy"
    assert hit["location"]["address_line1"] == "2112 Broadway Street NE"
    assert hit["distance_km"] == pytest.approx(0, abs=0.01)


def test_nothing_inside_radius_gives_nearest_outside(client):
    body = client.get("/v1/locations/nearest?zip=99501&radius=25").get_json()
    assert body["results"] == []
    assert body["count"] == 0
    outside = body["nearest_outside_radius"]
    assert outside["location"]["city"] == "Seattle"
    assert outside["distance_mi"] > 1000


def test_nearest_outside_radius_respects_specialty(client):
    body = client.get("/v1/locations/nearest?zip=99501&radius=25&specialty=running").get_json()
    assert body["nearest_outside_radius"]["clinic"]["name"] == "PRO Therapy"


def test_city_state_origin(client):
    body = client.get("/v1/locations/nearest?city=san antonio&state=tx&limit=1").get_json()
    assert body["origin"]["resolved_from"] == "city"
    assert body["origin"]["precision"] == "city"
    assert body["results"][0]["location"]["city"] == "San Antonio"
    assert body["results"][0]["distance_km"] == pytest.approx(0, abs=0.001)


def test_address_origin_offline_uses_zip_then_city(client):
    with_zip = client.get(
        "/v1/locations/nearest",
        query_string={"address": "2112 Broadway Street NE, Suite 195, Minneapolis, MN 55413"},
    ).get_json()
    assert with_zip["origin"]["resolved_from"] == "address"
    assert with_zip["origin"]["precision"] == "postal_code"
    assert with_zip["results"][0]["clinic"]["name"] == "PRO Therapy"
    city_only = client.get(
        "/v1/locations/nearest", query_string={"address": "100 Main St, Tulsa, OK"}
    ).get_json()
    assert city_only["origin"]["precision"] == "city"
    assert city_only["results"][0]["clinic"]["name"] == "Redbud Physical Therapy"


def test_distances_are_geodesic_not_spherical(client):
    # Seattle to Providence: a spherical formula is off by kilometres at this range.
    body = client.get("/v1/locations/nearest?city=Seattle&state=WA&limit=50").get_json()
    origin = body["origin"]
    providence = next(h for h in body["results"] if h["location"]["city"] == "Providence")
    loc = providence["location"]
    geodesic = Geodesic.WGS84.Inverse(origin["lat"], origin["lon"], loc["lat"], loc["lon"])
    assert providence["distance_km"] == pytest.approx(geodesic["s12"] / 1000, abs=0.001)
    phi1, phi2 = math.radians(origin["lat"]), math.radians(loc["lat"])
    dlon = math.radians(loc["lon"] - origin["lon"])
    spherical = 6371.0 * math.acos(
        math.sin(phi1) * math.sin(phi2) + math.cos(phi1) * math.cos(phi2) * math.cos(dlon)
    )
    assert abs(spherical - providence["distance_km"]) > 1.0


def test_inactive_clinics_and_locations_are_not_answered(app, client):
    from sqlmodel import Session, select

    from referral.db import get_database
    from referral.directory.models import Clinic, Location

    with Session(get_database(app).engine) as session:
        eim = session.exec(select(Clinic).where(Clinic.seed_key == "evidence-in-motion-eim")).one()
        eim.active = False
        texas = session.exec(
            select(Location).where(
                Location.seed_key == "texas-physical-therapy-specialists-san-antonio"
            )
        ).one()
        texas.active = False
        session.commit()
    body = client.get("/v1/locations/nearest?zip=78201&limit=3").get_json()
    names = [hit["clinic"]["name"] for hit in body["results"]]
    assert "Evidence in Motion (EIM)" not in names
    assert names[0] == "Fit for Work"
    assert all(hit["location"]["city"] != "San Antonio" for hit in body["results"][1:])


# ---- at scale: the spatial index behind find_nearest ----------------------------------------


def read_revision_of(app) -> int:
    from sqlmodel import Session

    from referral.db import get_database
    from referral.directory.revision import read_revision

    with Session(get_database(app).engine) as session:
        return read_revision(session)


def import_rows(app, rows: list[dict]) -> None:
    """Through the bulk import path, as `referral import` does."""
    import csv
    import io

    from sqlmodel import Session

    from referral.admin.imports import COLUMNS, Actor, apply_import, plan_import, read_import
    from referral.db import get_database
    from referral.geo.chain import get_geocoder

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({name: row.get(name, "") for name in COLUMNS} for row in rows)
    with app.app_context(), Session(get_database(app).engine) as session:
        plan = plan_import(
            session, read_import(buffer.getvalue().encode(), "csv"), get_geocoder(app)
        )
        assert plan.errors == []
        apply_import(session, plan, Actor("test"))
        session.commit()


def synthetic_rows(count: int, seed: int) -> list[dict]:
    """Clinics clustered around a few cities, some locations on the very same point, a rare
    specialty on three of them."""
    import random

    rng = random.Random(seed)
    cities = [(44.97, -93.26), (29.42, -98.49), (40.71, -74.0), (61.2, -149.9), (21.3, -157.86)]
    codes = ["orthopedic", "sports", "spine", "running"]
    rows: list[dict] = []
    for n in range(count):
        clinic = n // 2
        lat, lon = rng.choice(cities)
        if rows and rng.random() < 0.1:
            lat, lon = float(rows[-1]["lat"]), float(rows[-1]["lon"])
        else:
            lat, lon = lat + rng.gauss(0, 0.3), lon + rng.gauss(0, 0.3)
        wanted = [code for code in codes if rng.random() < 0.4] + (["vestibular"] if n < 3 else [])
        rows.append(
            {
                "clinic_name": f"Scale Clinic {clinic}",
                "phone": f"(612) 555-{clinic % 10000:04d}",
                "address": f"{n} Main St",
                "city": "Somewhere",
                "state": "MN",
                "zip": "55408",
                "lat": f"{lat:.6f}",
                "lon": f"{lon:.6f}",
                "specialties": ";".join(sorted(set(wanted))) if n % 2 == 0 else "",
            }
        )
    # A clinic's specialties come from its first row: keep the second row's the same.
    for n in range(1, count, 2):
        rows[n]["specialties"] = rows[n - 1]["specialties"]
    return rows


QUERIES = [
    {"limit": 50},
    {"limit": 10, "specialty": "sports"},
    {"limit": 5, "specialty": ["spine", "running"]},
    {"limit": 3, "specialty": "vestibular"},
    {"limit": 20, "radius": 40, "unit": "km"},
    {"limit": 5, "radius": 5, "unit": "km", "specialty": "running"},
]


def assert_agrees(app, client, lat: float, lon: float) -> None:
    stored = stored_locations(app)
    for extra in QUERIES:
        query = {"lat": lat, "lon": lon, "unit": "km", **extra}
        body = client.get("/v1/locations/nearest", query_string=query).get_json()
        codes = extra.get("specialty", [])
        wanted = frozenset([codes] if isinstance(codes, str) else codes)
        radius = extra.get("radius")
        expected = brute_force(stored, lat, lon, specialties=wanted, radius_km=radius)
        assert_matches(body, expected, extra["limit"])
        if radius is not None and not expected:
            anywhere = brute_force(stored, lat, lon, specialties=wanted)
            assert body["nearest_outside_radius"]["location"]["id"] == anywhere[0][1]


ORIGINS = [(44.97, -93.26), (29.5, -98.4), (61.2, -149.9), (21.3, -157.86), (39.0, -100.0)]


def test_imported_directory_agrees_with_brute_force_before_and_after_edits(app, client, editor):
    before = read_revision_of(app)
    import_rows(app, synthetic_rows(1200, seed=3))
    assert read_revision_of(app) > before
    for lat, lon in ORIGINS:
        assert_agrees(app, client, lat, lon)

    admin = auth(editor["admin"])
    stored = stored_locations(app)
    nearest = brute_force(stored, 44.97, -93.26)[0][1]
    moved = next(location for location in stored if location.id == nearest)
    url = f"/v1/clinics/{moved.clinic_id}/locations/{moved.id}"
    etag = client.get(url).headers["ETag"]
    patched = client.patch(
        url, json={"lat": 21.31, "lon": -157.85}, headers={**admin, "If-Match": etag}
    )
    assert patched.status_code == 200, patched.get_json()
    gone = brute_force(stored, 29.5, -98.4)[0][1]
    gone_clinic = next(location.clinic_id for location in stored if location.id == gone)
    url = f"/v1/clinics/{gone_clinic}/locations/{gone}"
    assert (
        client.delete(
            url, headers={**admin, "If-Match": client.get(url).headers["ETag"]}
        ).status_code
        == 204
    )
    added = client.post(
        f"/v1/clinics/{moved.clinic_id}/locations",
        json={"city": "Kansas City", "state": "MO", "lat": 39.0, "lon": -100.0},
        headers=admin,
    )
    assert added.status_code == 201, added.get_json()
    clinic_url = f"/v1/clinics/{moved.clinic_id}"
    etag = client.get(clinic_url).headers["ETag"]
    respecialized = client.patch(
        clinic_url,
        json={"specialties": ["vestibular", "running"]},
        headers={**admin, "If-Match": etag},
    )
    assert respecialized.status_code == 200, respecialized.get_json()
    for lat, lon in ORIGINS:
        assert_agrees(app, client, lat, lon)
    first = client.get("/v1/locations/nearest?lat=39&lon=-100&limit=1").get_json()["results"][0]
    assert first["location"]["id"] == added.get_json()["id"]


def test_edits_bump_the_directory_revision_and_reads_do_not(app, client, editor):
    start = read_revision_of(app)
    client.get("/v1/locations/nearest?zip=55413")
    client.get("/v1/clinics")
    assert read_revision_of(app) == start
    clinic_id = client.get("/v1/clinics", query_string={"q": "Shea"}).get_json()[0]["id"]
    url = f"/v1/clinics/{clinic_id}"
    etag = client.get(url).headers["ETag"]
    response = client.patch(
        url,
        json={"website": "https://shea.example"},
        headers={**auth(editor["admin"]), "If-Match": etag},
    )
    assert response.status_code == 200
    assert read_revision_of(app) > start


def _elsewhere(app, statement: str, **params) -> None:
    """A directory change committed by another process, as its ORM would: the revision
    bumped, the changed row stamped with it; this process is not told."""
    from sqlalchemy import text

    from referral.db import get_database

    with get_database(app).engine.begin() as connection:
        connection.execute(text("UPDATE directory_revision SET revision = revision + 1"))
        revision = connection.execute(text("SELECT revision FROM directory_revision")).scalar()
        connection.execute(text(statement), {**params, "revision": revision})


def _eventually(check, seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not seen within the bound"
        time.sleep(0.02)


def test_a_change_made_elsewhere_is_seen_within_the_check_interval(database_url):
    """Two apps on one database stand for two workers: a change made elsewhere is seen once
    the check interval allows (the read model refreshes off the request thread), not before."""
    from referral.db import get_database
    from tests.conftest import build_app

    patient = build_app(database_url, NEAREST_INDEX_CHECK_SECONDS=3600)
    eager = build_app(database_url, NEAREST_INDEX_CHECK_SECONDS=0)
    try:
        query = "/v1/locations/nearest?lat=47.0&lon=-120.0&limit=1"
        farthest = patient.test_client().get(f"{query[:-1]}50").get_json()["results"][-1]
        for worker in (patient, eager):
            first = worker.test_client().get(query).get_json()["results"][0]
            assert first["location"]["id"] != farthest["location"]["id"]
        _elsewhere(
            patient,
            "UPDATE location SET lat = 47.0, lon = -120.0, city = 'Nowhere', "
            "revision = :revision WHERE id = :id",
            id=farthest["location"]["id"],
        )

        def moved() -> bool:
            answer = eager.test_client().get(query).get_json()["results"][0]
            return bool(answer["location"]["city"] == "Nowhere")

        _eventually(moved)
        # What it shows is one snapshot's: the moved location at its new place and distance.
        hit = eager.test_client().get(query).get_json()["results"][0]
        assert hit["location"]["lat"] == 47.0 and hit["distance_km"] == 0.0
        # The patient worker still answers from its snapshot, whole: the old place.
        stale = patient.test_client().get(query).get_json()["results"][0]
        assert stale["location"]["city"] != "Nowhere"
    finally:
        for worker in (patient, eager):
            get_database(worker).dispose()


def test_no_request_waits_for_a_refresh(database_url, monkeypatch):
    """While a refresh is under way (held here), requests answer from the snapshot they
    have; the new one is swapped in when it is ready."""
    import threading

    from referral.db import get_database
    from referral.directory import readmodel
    from tests.conftest import build_app

    app = build_app(database_url, NEAREST_INDEX_CHECK_SECONDS=0)
    client = app.test_client()
    try:
        query = "/v1/locations/nearest?lat=-45.0&lon=170.0&limit=1"
        farthest = client.get(f"{query[:-1]}50").get_json()["results"][-1]["location"]["id"]
        release, started = threading.Event(), threading.Event()
        refreshed = readmodel._refreshed

        def held(engine, old, **options):
            started.set()
            assert release.wait(20)
            return refreshed(engine, old, **options)

        monkeypatch.setattr(readmodel, "_refreshed", held)
        _elsewhere(app, "UPDATE location SET lat = -45.0, lon = 170.0, revision = :revision "
                   "WHERE id = :id", id=farthest)  # fmt: skip
        first = client.get(query).get_json()["results"][0]["location"]["id"]
        assert started.wait(10)
        # The refresh is held: answers keep coming, from the previous snapshot.
        for _ in range(3):
            assert client.get(query).get_json()["results"][0]["location"]["id"] == first
        assert first != farthest
        release.set()
        _eventually(
            lambda: client.get(query).get_json()["results"][0]["location"]["id"] == farthest
        )
    finally:
        get_database(app).dispose()


def test_warm_read_model_builds_it_before_any_query(app):
    from referral.db import get_database
    from referral.directory.readmodel import _model, warm_read_model

    engine = get_database(app).engine
    assert _model(engine).snapshot is None
    warm_read_model(app)
    snapshot = _model(engine).snapshot
    assert snapshot is not None
    assert int(snapshot.locations.alive.sum()) == len(stored_locations(app))
    assert snapshot.revision == read_revision_of(app)


@pytest.fixture
def unlimited(database_url):
    """An app without rate limits (a hypothesis test asks more than a client may per minute),
    and an admin key."""
    from sqlmodel import Session

    from referral.auth.keys import create_key
    from referral.db import get_database
    from tests.conftest import build_app

    app = build_app(database_url, RATELIMIT_ENABLED=False)
    with Session(get_database(app).engine) as session:
        _, key = create_key(session, name="directory-admin", scopes=["admin"])
        session.commit()
    yield app, key
    get_database(app).dispose()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edit=st.sampled_from(["move", "deactivate", "reactivate", "add", "specialties"]),
    pick=st.integers(min_value=0, max_value=10**6),
    lat=st.floats(min_value=-89, max_value=89),
    lon=st.floats(min_value=-180, max_value=180),
    limit=st.integers(min_value=1, max_value=50),
    radius_km=st.one_of(st.none(), st.floats(min_value=1, max_value=5000)),
    specialty=st.sampled_from([None, "sports", "orthopedic", "running", "vestibular"]),
)
def test_agrees_with_brute_force_after_random_edits(
    unlimited, edit, pick, lat, lon, limit, radius_km, specialty
):
    app, key = unlimited
    client = app.test_client()
    admin = auth(key)
    clinics = client.get("/v1/clinics", query_string={"page_size": 100}).get_json()
    clinic = clinics[pick % len(clinics)]
    clinic_url = f"/v1/clinics/{clinic['id']}"
    locations = client.get(clinic_url, headers=admin).get_json()["locations"]
    if not locations:
        edit = "add"  # a clinic with no location (the seed has some)
    else:
        location = locations[pick % len(locations)]
        url = f"{clinic_url}/locations/{location['id']}"
    if edit == "add":
        body = {"city": "Somewhere", "state": "MN", "lat": lat, "lon": lon}
        response = client.post(f"{clinic_url}/locations", json=body, headers=admin)
    elif edit == "specialties":
        codes = [["sports", "running"], ["orthopedic"], ["vestibular", "sports"]][pick % 3]
        etag = client.get(clinic_url).headers["ETag"]
        response = client.patch(
            clinic_url, json={"specialties": codes}, headers={**admin, "If-Match": etag}
        )
    else:
        changes = {"move": {"lat": -lat, "lon": lon / 2}, "deactivate": {"active": False},
                   "reactivate": {"active": True}}[edit]  # fmt: skip
        etag = client.get(url, headers=admin).headers["ETag"]
        response = client.patch(url, json=changes, headers={**admin, "If-Match": etag})
    assert response.status_code in (200, 201), response.get_json()
    query = {"lat": lat, "lon": lon, "limit": limit, "unit": "km"}
    if radius_km is not None:
        query["radius"] = radius_km
    if specialty:
        query["specialty"] = specialty
    body = client.get("/v1/locations/nearest", query_string=query).get_json()
    wanted = frozenset([specialty]) if specialty else frozenset()
    expected = brute_force(stored_locations(app), lat, lon, specialties=wanted, radius_km=radius_km)
    assert_matches(body, expected, limit)


def test_a_revision_that_goes_back_still_rebuilds(database_url):
    """A database restored from a backup may count from a lower revision: still a change."""
    from sqlalchemy import text

    from referral.db import get_database
    from tests.conftest import build_app

    app = build_app(database_url, NEAREST_INDEX_CHECK_SECONDS=0)
    try:
        client = app.test_client()
        query = "/v1/locations/nearest?lat=-45.0&lon=170.0&limit=1"
        farthest = client.get(f"{query[:-1]}50").get_json()["results"][-1]["location"]["id"]
        with get_database(app).engine.begin() as connection:
            connection.execute(text("UPDATE directory_revision SET revision = revision - 3"))
            connection.execute(
                text("UPDATE location SET lat = -45.0, lon = 170.0 WHERE id = :id"),
                {"id": farthest},
            )
        _eventually(
            lambda: client.get(query).get_json()["results"][0]["location"]["id"] == farthest
        )
    finally:
        get_database(app).dispose()


def test_a_writer_pays_for_its_edit_not_for_a_whole_rebuild(app, client, editor, monkeypatch):
    """An edit the read model can patch in is seen by its writer at once; one too large to
    patch (an import) is read whole in the background, and seen within the bound."""
    from referral.directory import readmodel

    query = "/v1/locations/nearest?lat=-45.0&lon=170.0&limit=1"
    first = client.get(query).get_json()["results"][0]
    clinic_id = client.get("/v1/clinics", query_string={"q": "Shea"}).get_json()[0]["id"]
    calls = []
    refreshed = readmodel._refreshed

    def spy(engine, old, **options):
        found = refreshed(engine, old, **options)
        calls.append((options, found is None))
        return found

    monkeypatch.setattr(readmodel, "_refreshed", spy)
    monkeypatch.setattr(readmodel, "_DELTA_FLOOR", 0)
    monkeypatch.setattr(readmodel, "_DELTA_SHARE", 0.0)
    added = client.post(
        f"/v1/clinics/{clinic_id}/locations",
        json={"city": "Invercargill", "state": "MN", "lat": -45.0, "lon": 170.0},
        headers=auth(editor["admin"]),
    )
    assert added.status_code == 201
    # The writer's own refresh declined the whole read and left it to the background.
    assert calls[0] == ({"whole_here": False}, True)
    _eventually(
        lambda: (
            client.get(query).get_json()["results"][0]["location"]["id"] == added.get_json()["id"]
        )
    )
    assert first["location"]["id"] != added.get_json()["id"]
