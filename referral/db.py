"""Database engine and sessions: one engine per app per process, one session per request."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine


class Database:
    """Creates its engine lazily and again after a fork, so gunicorn workers never share one."""

    def __init__(self, url: str, *, echo: bool = False, sqlite_busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.echo = echo
        self.sqlite_busy_timeout_ms = sqlite_busy_timeout_ms
        self._engine: Engine | None = None
        self._pid: int | None = None
        # A worker's threads race to the first request: one engine (one pool, one nearest
        # index built for it) per process, not one per thread that got there first.
        self._lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        engine = self._engine
        if engine is not None and self._pid == os.getpid():
            return engine
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                self._engine = self._create_engine()
                self._pid = os.getpid()
            return self._engine

    def _create_engine(self) -> Engine:
        if self.is_sqlite:
            timeout_s = self.sqlite_busy_timeout_ms / 1000
            engine = create_engine(
                self.url,
                echo=self.echo,
                connect_args={"timeout": timeout_s},
                hide_parameters=True,
            )
            event.listen(engine, "connect", self._configure_sqlite)
            return engine
        # hide_parameters: error messages must not quote values (patient data) into logs.
        return create_engine(self.url, echo=self.echo, pool_pre_ping=True, hide_parameters=True)

    def _configure_sqlite(self, dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers proceed during a write; the busy timeout makes writers wait, not fail.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(self.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def init_app(app: Flask) -> None:
    app.extensions["referral_db"] = Database(
        app.config["DATABASE_URL"],
        echo=bool(app.config["DATABASE_ECHO"]),
        sqlite_busy_timeout_ms=int(app.config["SQLITE_BUSY_TIMEOUT_MS"]),
    )
    app.teardown_appcontext(_close_request_session)


def get_database(app: Flask | None = None) -> Database:
    database: Database = (app or current_app).extensions["referral_db"]
    return database


def get_session() -> Session:
    """The session of the current request (or app context), opened on first use."""
    if "db_session" not in g:
        g.db_session = Session(get_database().engine)
    session: Session = g.db_session
    return session


def _close_request_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


@contextmanager
def session_scope(app: Flask | None = None) -> Iterator[Session]:
    """A session for CLI work: commits on success, rolls back on error."""
    with Session(get_database(app).engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
