"""Fixtures as in Flask's tutorial: ``app``, ``client``, ``runner``; a fresh database per test.

Every test that takes ``app`` runs twice: on a SQLite file, and on PostgreSQL when
REFERRAL_TEST_POSTGRES_URL names a server (CI sets it); otherwise the PostgreSQL run skips.
Each test gets its own copy of a database migrated and seeded once per session.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy.engine import make_url

from referral import create_app
from referral.db import get_database, session_scope
from referral.migrations import runner as migrations
from referral.seed import seed_all

POSTGRES_ENV = "REFERRAL_TEST_POSTGRES_URL"
# CI sets this: what would be skipped on a developer's machine must fail there instead.
STRICT = os.environ.get("REFERRAL_TEST_STRICT") == "1"


def skip_or_fail(reason: str) -> None:
    if STRICT:
        pytest.fail(f"{reason} (REFERRAL_TEST_STRICT=1: nothing may be skipped)")
    pytest.skip(reason)


REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_SEEDS = REPO_ROOT.parent / "shared" / "seeds"


def build_app(database_url: str, **extra: Any) -> Flask:
    return create_app({"TESTING": True, "DATABASE_URL": database_url, **extra})


def migrate_and_seed(database_url: str) -> None:
    app = build_app(database_url)
    migrations.upgrade(app)
    with app.app_context(), session_scope(app) as session:
        seed_all(session, app)
    get_database(app).dispose()


class PostgresServer:
    """Creates and drops throwaway databases on the server named by REFERRAL_TEST_POSTGRES_URL."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def url_for(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def create(self, name: str, template: str | None = None) -> str:
        with self.admin.connect() as conn:
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))
        return self.url_for(name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL run skipped: set {POSTGRES_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    server = PostgresServer(url)
    try:
        with server.admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        skip_or_fail(f"PostgreSQL run skipped: cannot connect to {POSTGRES_ENV}: {exc.orig}")
    yield server
    server.admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "seeded.db"
    migrate_and_seed(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> Iterator[str]:
    name = f"referral_template_{uuid.uuid4().hex[:8]}"
    postgres.drop(name)
    migrate_and_seed(postgres.create(name))
    yield name
    postgres.drop(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, seeded database for this test."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "referral.db"
        shutil.copyfile(template, target)
        yield f"sqlite:///{target}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"referral_test_{uuid.uuid4().hex[:12]}"
    url = server.create(name, template=template_name)
    yield url
    server.drop(name)


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A fresh database with no schema at all."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"referral_empty_{uuid.uuid4().hex[:12]}"
    url = server.create(name)
    yield url
    server.drop(name)


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    app = build_app(database_url)
    yield app
    get_database(app).dispose()


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def editor(app: Flask) -> dict[str, str]:
    """Keys of a directory admin, a clinics:write maintainer, and an assessment app."""
    from sqlmodel import Session

    from referral.auth.keys import create_key

    with Session(get_database(app).engine) as session:
        _, admin = create_key(session, name="directory-admin", scopes=["admin"])
        _, writer = create_key(session, name="data-team", scopes=["clinics:write"])
        _, app_key = create_key(session, name="runapp", scopes=["referrals:write"])
        session.commit()
    return {"admin": admin, "writer": writer, "app": app_key}


# One Chromium for every browser test of the session: Playwright's sync API runs one
# instance per thread.
CHROMIUM = os.environ.get("REFERRAL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()
