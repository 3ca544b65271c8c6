"""Settings layer as promised: defaults, then REFERRAL_* environment, then the test dict."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from referral import create_app
from referral.db import get_database


def test_default_database_is_a_sqlite_file_in_the_instance_folder(monkeypatch):
    monkeypatch.delenv("REFERRAL_DATABASE_URL", raising=False)
    app = create_app()
    url = app.config["DATABASE_URL"]
    assert url == f"sqlite:///{Path(app.instance_path) / 'referral.db'}"


def test_environment_overrides_defaults_and_test_dict_overrides_environment(monkeypatch, tmp_path):
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("REFERRAL_DATABASE_URL", env_url)
    monkeypatch.setenv("REFERRAL_NEAREST_MAX_RADIUS_KM", "1234.5")
    monkeypatch.setenv("REFERRAL_GEOCODER_OPTIONS", '{"user_agent": "x/1"}')
    app = create_app()
    assert app.config["DATABASE_URL"] == env_url
    assert app.config["NEAREST_MAX_RADIUS_KM"] == 1234.5  # parsed as JSON
    assert app.config["GEOCODER_OPTIONS"] == {"user_agent": "x/1"}
    test_url = f"sqlite:///{tmp_path / 'test.db'}"
    assert create_app({"DATABASE_URL": test_url}).config["DATABASE_URL"] == test_url


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    app = create_app(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'wal.db'}", "SQLITE_BUSY_TIMEOUT_MS": 4321}
    )
    with get_database(app).engine.connect() as connection:
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(sa.text("PRAGMA busy_timeout")).scalar() == 4321
        assert connection.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
    get_database(app).dispose()


def test_max_radius_setting_is_enforced(app, client):
    app.config["NEAREST_MAX_RADIUS_KM"] = 100
    assert client.get("/v1/locations/nearest?zip=78201&radius=99&unit=km").status_code == 200
    assert client.get("/v1/locations/nearest?zip=78201&radius=101&unit=km").status_code == 422


def test_postgres_url_works_the_same(app, backend):
    # The same app code runs on either database; here we just check which one this run uses.
    dialect = get_database(app).engine.dialect.name
    assert dialect == ("sqlite" if backend == "sqlite" else "postgresql")
