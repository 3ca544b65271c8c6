"""The referral command: db upgrade/current/downgrade, seed, and serve with a real gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import sqlalchemy as sa

from referral.db import get_database
from referral.migrations import runner as migrations
from tests.conftest import REPO_ROOT, build_app
from tests.live import free_port, wait_for


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_db_upgrade_makes_the_schema(empty_database_url):
    app = build_app(empty_database_url)
    runner = app.test_cli_runner()
    assert "clinic" not in table_names(empty_database_url)
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert {"clinic", "location", "specialty", "clinic_specialty", "geocode_cache"} <= table_names(
        empty_database_url
    )
    current = runner.invoke(args=["db", "current"])
    head = migrations.head_revision(app)
    assert f"current: {head}" in current.output and f"head: {head}" in current.output
    down = runner.invoke(args=["db", "downgrade", "base"])
    assert down.exit_code == 0, down.output
    assert "clinic" not in table_names(empty_database_url)
    again = runner.invoke(args=["db", "upgrade"])
    assert again.exit_code == 0
    get_database(app).dispose()


def test_migrations_match_the_models(database_url):
    """The migrations make exactly the schema the models describe (no autogenerate diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    import referral.models  # noqa: F401

    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    engine.dispose()


def test_seed_command_reports(runner):
    result = runner.invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "specialty: 0 created, 0 updated" in result.output


def test_console_script_help_lists_commands():
    script = Path(sys.executable).parent / "referral"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("db", "seed", "serve", "openapi"):
        assert command in result.stdout


def test_serve_runs_gunicorn_with_the_seeded_directory(database_url, tmp_path):
    port = free_port()
    env = {**os.environ, "REFERRAL_DATABASE_URL": database_url}
    script = Path(sys.executable).parent / "referral"
    process = subprocess.Popen(
        [str(script), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/v1/specialties", process)
        with urllib.request.urlopen(f"{base}/v1/locations/nearest?zip=78201&limit=3") as response:
            body = json.load(response)
        assert [hit["location"]["city"] for hit in body["results"]] == ["San Antonio"] * 3
        assert response.headers["Server"].startswith("gunicorn")
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert "Booting worker" in output
    assert process.returncode == 0, output


def test_repo_has_the_promised_layout():
    for name in ("pyproject.toml", "Dockerfile", "referral", "seed_data", "openapi.yaml", "tests",
                 "README.md", "Makefile", ".ci/run"):  # fmt: skip
        assert (REPO_ROOT / name).exists(), name
