"""Settings layer as promised: defaults, then REFERRAL_* environment, then the test dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from referral import create_app
from referral.db import get_database
from tests.conftest import REPO_ROOT


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


# --- server settings, the container files --------------------------------------------------


def test_server_settings_come_from_the_environment():
    from referral.config import SERVER_DEFAULTS, server_settings

    assert server_settings({}) == SERVER_DEFAULTS
    settings = server_settings(
        {"REFERRAL_WORKERS": "5", "REFERRAL_THREADS": "1", "REFERRAL_BIND": "0.0.0.0:9000"}
    )
    assert (settings["WORKERS"], settings["THREADS"], settings["BIND"]) == (5, 1, "0.0.0.0:9000")
    assert server_settings({"REFERRAL_REUSE_PORT": "false"})["REUSE_PORT"] is False
    bad_values = {
        "REFERRAL_WORKERS": "0",
        "REFERRAL_THREADS": "many",
        "REFERRAL_TIMEOUT": "-1",
        "REFERRAL_REUSE_PORT": "1",
    }
    for bad in ({name: value} for name, value in bad_values.items()):
        with pytest.raises(ValueError, match="REFERRAL_"):
            server_settings(bad)


def test_gunicorn_config_reads_the_settings(monkeypatch):
    import importlib

    import referral.ops.gunicorn_config as gunicorn_config

    monkeypatch.setenv("REFERRAL_WORKERS", "7")
    monkeypatch.setenv("REFERRAL_GRACEFUL_TIMEOUT", "12")
    try:
        loaded = importlib.reload(gunicorn_config)
        assert (loaded.workers, loaded.graceful_timeout) == (7, 12)
        assert loaded.logger_class == "referral.ops.logs.GunicornJsonLogger"
        assert loaded.accesslog == "-"
    finally:
        monkeypatch.undo()
        importlib.reload(gunicorn_config)


def test_every_setting_is_listed_with_its_default(monkeypatch):
    for name in ("RATELIMIT_STORAGE_URI", "RATELIMIT_PUBLIC", "RATELIMIT_REFERRALS"):
        monkeypatch.delenv(f"REFERRAL_{name}", raising=False)
    config = create_app().config
    assert config["RATELIMIT_STORAGE_URI"] == "memory://"
    assert config["RATELIMIT_ENABLED"] is True
    assert config["TRUSTED_PROXIES"] == 0
    monkeypatch.setenv("REFERRAL_RATELIMIT_PUBLIC", "5 per second")
    monkeypatch.setenv("REFERRAL_RATELIMIT_ENABLED", "false")
    config = create_app().config
    assert config["RATELIMIT_PUBLIC"] == "5 per second"
    assert config["RATELIMIT_ENABLED"] is False


def test_docker_compose_sets_only_known_settings():
    import yaml

    from referral.config import default_settings

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"app", "postgres", "redis"} <= set(services)
    known = set(default_settings("/instance"))
    environment = services["app"]["environment"]
    names = [name for name in environment if name.startswith("REFERRAL_")]
    assert names and set(environment) == set(names)
    unknown = {name for name in names if name.removeprefix("REFERRAL_") not in known}
    assert not unknown, f"docker-compose.yml sets settings config.py does not have: {unknown}"
    assert environment["REFERRAL_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert environment["REFERRAL_RATELIMIT_STORAGE_URI"].startswith("redis://redis:")
    for dependency in ("postgres", "redis"):
        assert services["app"]["depends_on"][dependency] == {"condition": "service_healthy"}
        assert services[dependency]["healthcheck"]["test"]
    # `--scale app=3` needs a host port per replica: a range, not one fixed port.
    host_ports = [str(port).rsplit(":", 1)[0] for port in services["app"]["ports"]]
    assert all("-" in ports for ports in host_ports), host_ports
    # The PostgreSQL the tests and CI run against (15), not another major version.
    assert services["postgres"]["image"] == "postgres:15"


def test_dockerfile_is_multi_stage_non_root_with_a_health_check():
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2
    # The base image is a build argument: a mirror or a local stand-in can replace it.
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in froms), froms
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"**/__pycache__", "*.egg-info", "build", ".schemathesis"} <= set(ignored)
    assert any(line.startswith("COPY --from=build") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # The slim image has no curl: Python asks /healthz.
    health_check = " ".join(text[text.index("\nHEALTHCHECK ") :].splitlines()[1:3])
    assert '"python"' in health_check and "/healthz" in health_check, health_check
    entrypoint = (REPO_ROOT / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    assert entrypoint.index("referral db upgrade") < entrypoint.index("exec referral serve")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMPORT_MAX_ERRORS", 0),
        ("IMPORT_LEASE_SECONDS", -5),
        ("IMPORT_RUN_RETENTION_DAYS", "forever"),
        ("DATABASE_STATEMENT_TIMEOUT_MS", -1),
    ],
)
def test_bad_import_and_timeout_settings_are_refused_at_start(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"REFERRAL_{name}"):
        create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", name: value})
