"""Run alembic from code: the schema is only ever made by migrations."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import make_url

from referral.db import get_database, without_statement_timeout

MIGRATIONS_DIR = Path(__file__).resolve().parent

# What `exclusive` serialises; see docs/operations.md (Containers) for why.
MIGRATION_LOCK = "migrate"
SEED_LOCK = "seed"
# Fixed PostgreSQL advisory lock keys: "REFERRL" in ASCII, then one byte per lock.
_ADVISORY_KEYS = {MIGRATION_LOCK: 0x5245464552524C01, SEED_LOCK: 0x5245464552524C02}


@contextmanager
def exclusive(app: Flask, name: str) -> Iterator[None]:
    """Hold lock ``name`` against every process using this database while inside, so
    replicas starting together migrate (or seed) one at a time and the later ones find
    the work done. Not re-entrant: never take the same lock twice in one process."""
    database = get_database(app)
    if database.is_sqlite:
        lock_file = _sqlite_lock_file(database.url, name)
        if lock_file is None:  # in memory: no other process can see it
            yield
            return
        with _file_lock(lock_file):
            yield
        return
    # A session-level lock on a connection of its own, outside any transaction: the work
    # keeps its own connections and transactions; a crashed holder's lock ends with it.
    with database.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with without_statement_timeout(connection):
            key = {"key": _ADVISORY_KEYS[name]}
            connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)


def _sqlite_lock_file(url: str, name: str) -> Path | None:
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    # Beside the database file, not in the instance folder: every process that opens
    # this file sees the same lock, whatever its own instance folder.
    database_file = Path(path).resolve()
    return database_file.with_name(f"{database_file.name}.{name}.lock")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # SQLite alone does not serialise this: each process reads "not done yet" before its
    # first write, so all go on to create the same tables ("already exists") or rows.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alembic_config(app: Flask) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", app.config["DATABASE_URL"].replace("%", "%%"))
    return config


def upgrade(app: Flask, revision: str = "head") -> None:
    config = alembic_config(app)
    with exclusive(app, MIGRATION_LOCK), get_database(app).engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(app: Flask, revision: str) -> None:
    config = alembic_config(app)
    with exclusive(app, MIGRATION_LOCK), get_database(app).engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def make_revision(app: Flask, message: str) -> None:
    config = alembic_config(app)
    with get_database(app).engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)


def current_revision(app: Flask) -> str | None:
    with get_database(app).engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(app: Flask) -> str | None:
    return ScriptDirectory.from_config(alembic_config(app)).get_current_head()
