"""The benchmark's pieces that need no load generator: its synthetic data is the same on every
run and imports cleanly, its wrk scripts quote safely, the PostGIS peer answers the nearest
question right on a tiny directory, and the table judges targets as documented. (The benchmark
itself is `make bench`, never part of the suite: see docs/performance.md.)"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from geographiclib.geodesic import Geodesic

from bench import data, peer, peerdb, run
from bench.load import Cursor, Load, lua_script, write_lines
from tests.conftest import PostgresServer, skip_or_fail


def test_the_synthetic_data_is_the_same_every_time() -> None:
    assert data.directory(30) == data.directory(30)
    assert len(data.directory(40).rows) == 48  # every fifth clinic has a second location
    assert data.spread_origins(50) == data.spread_origins(50)
    assert data.referral_bodies(5) == data.referral_bodies(5)
    for body in data.referral_bodies(20):
        assert set(json.loads(body)) == {"origin", "concerns", "patient_ref"}
    box = data.CLUSTER_BOX
    clustered = data.directory(1000, cluster=box, cluster_share=run.CLUSTER_SHARE)
    assert clustered == data.directory(1000, cluster=box, cluster_share=run.CLUSTER_SHARE)
    # ~67,000 of 120,000 locations at 100,000 clinics: the same share at any size.
    assert 0.5 < clustered.located_in(box) / len(clustered.rows) < 0.62
    assert data.directory(1000).located_in(box) < 50


def test_origins_never_repeat_and_runs_take_disjoint_stretches() -> None:
    spread = data.spread_origins(5000)
    inside = data.box_origins(2000, data.CLUSTER_BOX)
    assert len(set(spread)) == 5000 and len(set(inside)) == 2000
    assert all(data.CLUSTER_BOX.contains(lat, lon) for lat, lon in inside)
    cursor = Cursor(1000)
    load = Load(requests=300, seconds=1, errors=0, p50_ms=1, p90_ms=1, p99_ms=1, max_ms=1)
    cursor.take(load, connections=16)  # the 16 in flight when wrk stopped were sent too
    assert (cursor.position, cursor.repeated) == (316, 0)
    load.start, load.requests = 316, 900
    cursor.take(load, connections=16)
    assert (cursor.position, cursor.repeated) == (232, 232)


def test_the_big_import_file_keeps_the_directory_and_adds_clinics() -> None:
    directory = data.directory(100)
    base = directory.csv_bytes()
    big = data.import_file(directory.rows, 200_000)
    assert big.startswith(base) and 199_000 < len(big) < 201_000
    assert big == data.import_file(directory.rows, 200_000)


def test_the_synthetic_directory_imports_without_row_errors(
    app: Flask, editor: dict[str, str]
) -> None:
    directory = data.directory(40)
    report = _import(app, editor, directory.csv_bytes())
    assert report["counts"]["rows"]["created"] == 48
    assert report["counts"]["clinics"]["created"] == 40
    listed = app.test_client().get(f"/v1/clinics?q={data.CLINIC_PREFIX}&page_size=100")
    assert listed.status_code == 200 and len(listed.get_json()) == 40


def _import(app: Flask, editor: dict[str, str], csv: bytes) -> dict[str, Any]:
    answer = app.test_client().post(
        "/v1/admin/imports",
        data=csv,
        content_type="text/csv",
        headers={"Authorization": f"Bearer {editor['admin']}"},
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)[:2000]
    report: dict[str, Any] = answer.get_json()
    assert report["errors"] == []
    return report


def test_wrk_scripts_quote_only_what_lua_reads_back(tmp_path: Path) -> None:
    lines = write_lines(tmp_path / "bodies.txt", ['{"a": "b"}', "lat=1.5&lon=2"])
    script = lua_script(
        tmp_path / "s.lua", lines, method="POST", prefix="/v1/referrals",
        headers={"Authorization": "Bearer k"},
    )  # fmt: skip
    text = script.read_text()
    assert "[ [==[Authorization]==] ] = [==[Bearer k]==]" in text
    assert f"io.lines([==[{lines.resolve()}]==])" in text
    assert lines.read_text() == '{"a": "b"}\nlat=1.5&lon=2\n'
    with pytest.raises(ValueError, match="cannot quote"):
        lua_script(tmp_path / "t.lua", lines, prefix="]==]")
    with pytest.raises(ValueError, match="cannot quote"):
        lua_script(tmp_path / "u.lua", lines, headers={"X": "two\nlines"})
    with pytest.raises(ValueError, match="one line"):
        write_lines(tmp_path / "v.txt", ["a\nb"])


def test_targets_are_judged_on_ratios_within_rounds() -> None:
    def load(rps: float, p50: float = 10.0, p99: float = 20.0, errors: int = 0) -> dict[str, Any]:
        return {"requests": int(rps * 5), "seconds": 5.0, "errors": errors, "p50_ms": p50,
                "p90_ms": p99, "p99_ms": p99, "max_ms": p99, "connections": 16}  # fmt: skip

    def main_round(scale: float) -> dict[str, Any]:
        return {"ping": load(3000 * scale), "healthz": load(2500 * scale),
                "nearest": load(1600 * scale), "peer": load(1000 * scale),
                "referral": load(800 * scale), "list": load(100, p50=20),
                "open_now": load(50, p50=50), "nearest_edits": load(1500, p99=30)}  # fmt: skip

    result = run.SizeResult(100_000, rss_mb=[140.0, 145.0])
    # A slow round scales every run alike: the ratios stay.
    result.rounds = [main_round(1.0), main_round(0.5), main_round(1.1)]
    result.cluster_rounds = [{"cluster_inside": load(500, p50=25), "cluster_spread": load(900)}]
    result.edits = [{"ok": 5, "edits": 5}]
    result.dry_run = {"how": "HTTP POST", "status": 200, "ok": True, "file_mb": 25.0,
                      "rows": 150_000, "added_mb": 150.0, "rss_before_mb": 140.0,
                      "peak_mb": 290.0, "rss_after_mb": 200.0, "seconds": 3.0, "answer_mb": 0.2,
                      "worker_found_by": "the access log"}  # fmt: skip
    verdicts = {v.target: v for v in run.verdicts(result)}
    assert all(v.met for v in verdicts.values()), verdicts
    assert verdicts["nearest >= 1.5x the PostGIS peer"].figure.startswith("1.60x")
    assert verdicts["open_now list p50 <= 3x the plain list"].figure.startswith("2.50x")

    result.rounds[1]["open_now"]["requests"] = 0  # nothing finished: unknown, not fast
    result.rounds[0]["nearest"]["errors"] = 3
    result.edits = [{"ok": 0, "edits": 5}]
    result.rss_mb = [151.0, 120.0]
    verdicts = {v.target: v for v in run.verdicts(result)}
    assert not verdicts["nearest >= 1.5x the PostGIS peer"].met
    assert "3 errors" in verdicts["nearest >= 1.5x the PostGIS peer"].figure
    assert not verdicts["nearest p99 with an edit a second <= 2x quiet p99"].met
    assert not verdicts["worker RSS <= 150 MB after the load"].met
    assert verdicts["open_now list p50 <= 3x the plain list"].met  # the other rounds' median
    table = run.table([result], {"when": "now"})
    assert "| MISS" in table and "| PASS" in table


# ---- the PostGIS peer ---------------------------------------------------------------------


@pytest.fixture
def peer_database(postgres: PostgresServer) -> Iterator[peerdb.PeerDatabase]:
    """A throwaway database with PostGIS on the test server (skipped, or failed when strict,
    if PostGIS is not installed there)."""
    database = peerdb.PeerDatabase(postgres.url.render_as_string(hide_password=False), "test")
    database.create()
    try:
        with psycopg.connect(database.url, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except psycopg.Error as exc:
                skip_or_fail(
                    "the PostGIS peer needs PostGIS on the test PostgreSQL server "
                    f"(apt-get install postgresql-15-postgis-3): {str(exc).splitlines()[0]}"
                )
        yield database
    finally:
        database.drop()


def test_the_peer_answers_nearest_like_a_brute_force(
    app: Flask, editor: dict[str, str], peer_database: peerdb.PeerDatabase
) -> None:
    directory = data.directory(60, seed=5)
    _import(app, editor, directory.csv_bytes())
    url = app.config["DATABASE_URL"]
    # A clinic on record as not offering a code, located: the peer must not list it for it.
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        clinic_id, code, lat, lon = conn.execute(
            sa.text(
                "SELECT cs.clinic_id, cs.specialty_code, l.lat, l.lon FROM clinic_specialty cs "
                "JOIN location l ON l.clinic_id = cs.clinic_id "
                "WHERE cs.offered = :no AND l.lat IS NOT NULL ORDER BY cs.clinic_id LIMIT 1"
            ),
            {"no": False},
        ).one()
        located = conn.execute(
            sa.text("SELECT COUNT(*) FROM location WHERE lat IS NOT NULL AND active = :yes"),
            {"yes": True},
        ).scalar()
    engine.dispose()

    rows = peerdb.service_rows(url)
    assert len(rows) == located  # every location is active and located here
    loaded = peer_database.load(rows)
    assert loaded.rows == len(rows) and loaded.version.startswith("PostGIS")
    client = peer.create_app(peerdb.libpq_url(peer_database.url)).test_client()

    def nearest(lat: float, lon: float, *codes: str, limit: int = 10) -> list[dict[str, Any]]:
        query = "".join(f"&specialty={c}" for c in codes)
        answer = client.get(f"/nearest?lat={lat}&lon={lon}&limit={limit}{query}")
        assert answer.status_code == 200
        results: list[dict[str, Any]] = answer.get_json()["results"]
        return results

    for origin_lat, origin_lon in data.spread_origins(5, seed=3):
        for codes in ((), ("spine",), ("orthopedic", "sports")):
            expected = sorted(
                (_geodesic_km(origin_lat, origin_lon, row[7], row[8]), row[0])
                for row in rows
                if set(codes) <= set(row[9])
            )[:10]
            got = nearest(origin_lat, origin_lon, *codes)
            assert len(got) == len(expected)
            for hit, (km, _) in zip(got, expected, strict=True):
                assert set(codes) <= set(hit["specialties"])
                # The distance is the spheroid's; the order is the sphere's (`<->`): a
                # near-tie may come in another order, never a farther location by much.
                assert hit["distance_km"] == pytest.approx(
                    _geodesic_km(origin_lat, origin_lon, hit["lat"], hit["lon"]), abs=0.002
                )
                assert math.isclose(hit["distance_km"], km, rel_tol=0.01, abs_tol=0.01)

    at_the_door = nearest(lat, lon, code, limit=50)
    assert clinic_id not in {hit["clinic_id"] for hit in at_the_door}
    assert nearest(lat, lon, limit=1)[0]["distance_km"] == pytest.approx(0, abs=0.001)
    assert client.get("/nearest?lat=91&lon=0").status_code == 400
    assert client.get("/nearest?lon=0").status_code == 400


def _geodesic_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    return float(Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"]) / 1000
