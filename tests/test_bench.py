"""The benchmark's pieces that need no load generator: its synthetic directory imports cleanly
through the real import path, is the same on every run, and its wrk scripts quote safely.
(The benchmark itself is `make bench`, never part of the suite: see docs/performance.md.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask

from bench import data, run
from referral.admin.imports import read_import
from referral.geo.chain import get_geocoder
from referral.geo.gazetteer import Gazetteer


@pytest.fixture
def gazetteer(app: Flask) -> Gazetteer:
    return get_geocoder(app).gazetteer


def test_the_synthetic_directory_imports_without_row_errors(
    app: Flask, gazetteer: Gazetteer
) -> None:
    directory = data.directory(40, gazetteer)
    assert len(directory.rows) == 48  # every fifth clinic has a second location
    seconds = run.timed_import(app.config["DATABASE_URL"], directory.csv_bytes())
    assert seconds > 0
    client = app.test_client()
    listed = client.get("/v1/clinics?q=Bench Physical Therapy&page_size=100")
    assert listed.status_code == 200
    assert len(listed.get_json()) == 40


def test_the_synthetic_data_is_the_same_every_time(gazetteer: Gazetteer) -> None:
    assert data.directory(30, gazetteer) == data.directory(30, gazetteer)
    assert data.nearest_paths(5, gazetteer) == data.nearest_paths(5, gazetteer)
    rows = read_import(data.directory(30, gazetteer).csv_bytes(), "csv")
    assert not rows.errors and len(rows.rows) == 36
    for body in data.referral_bodies(20, gazetteer):
        assert set(json.loads(body)) == {"origin", "concerns", "patient_ref"}


def test_wrk_scripts_quote_only_what_lua_reads_back(tmp_path: Path) -> None:
    script = run.lua_script(
        tmp_path / "s.lua", ['{"a": "b"}'], method="POST", target="/v1/referrals",
        headers={"Authorization": "Bearer k"},
    )  # fmt: skip
    assert "[ [==[Authorization]==] ] = [==[Bearer k]==]" in script.read_text()
    with pytest.raises(ValueError, match="cannot quote"):
        run.lua_script(tmp_path / "t.lua", ["]==]"])
