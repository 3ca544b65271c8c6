"""Database engine and sessions: one engine per app per process, one session per request."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlmodel import Session, create_engine


class Database:
    """Creates its engine lazily and again after a fork, so gunicorn workers never share one."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        sqlite_busy_timeout_ms: int = 5000,
        statement_timeout_ms: int = 0,
    ) -> None:
        self.url = url
        self.echo = echo
        self.sqlite_busy_timeout_ms = sqlite_busy_timeout_ms
        # No statement runs longer than this (0: no limit): PostgreSQL's statement_timeout,
        # SQLite's progress handler interrupting it.
        self.statement_timeout_ms = statement_timeout_ms
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
            if self.statement_timeout_ms > 0:
                event.listen(engine, "before_cursor_execute", _note_statement_start)
            return engine
        options = {}
        if self.statement_timeout_ms > 0:
            options["options"] = f"-c statement_timeout={int(self.statement_timeout_ms)}"
        # hide_parameters: error messages must not quote values (patient data) into logs.
        return create_engine(
            self.url,
            echo=self.echo,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args=options,
        )

    def _configure_sqlite(self, dbapi_connection: Any, record: Any) -> None:
        # WAL lets readers proceed during a write; the busy timeout makes writers wait, not fail.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(self.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        if self.statement_timeout_ms > 0:
            limit = self.statement_timeout_ms / 1000
            started = record.info.setdefault(_STARTED, [time.monotonic()])

            def interrupt_when_late() -> int:
                # Called every few thousand SQLite instructions: non-zero aborts the statement.
                return int(time.monotonic() - started[0] > limit)

            dbapi_connection.set_progress_handler(interrupt_when_late, 10_000)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


# Where a SQLite connection keeps when its current statement started (in the pool's info
# for that connection): the progress handler measures from there.
_STARTED = "referral_statement_started"


def _note_statement_start(
    connection: Any, _cursor: Any, _statement: Any, _parameters: Any, _context: Any, _many: Any
) -> None:
    started = connection.info.get(_STARTED)
    if started is not None and started[0] != math.inf:
        started[0] = time.monotonic()


@contextmanager
def without_statement_timeout(connection: Connection) -> Iterator[Connection]:
    """``connection`` with no statement time limit while inside (for work off the request
    path that is long by nature: a whole read of the directory for the read model)."""
    started = connection.info.get(_STARTED)
    if started is not None:  # SQLite: the handler never finds it late
        before = started[0]
        started[0] = math.inf
        try:
            yield connection
        finally:
            started[0] = before
        return
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET statement_timeout = 0")
        try:
            yield connection
        finally:
            connection.exec_driver_sql("RESET statement_timeout")
        return
    yield connection


def is_statement_timeout(error: BaseException) -> bool:
    """Whether a database error is a statement that ran out of time (see Database)."""
    original = getattr(error, "orig", None)
    name = type(original).__name__
    return name == "QueryCanceled" or (
        name == "OperationalError" and "interrupted" in str(original)
    )


def init_app(app: Flask) -> None:
    app.extensions["referral_db"] = Database(
        app.config["DATABASE_URL"],
        echo=bool(app.config["DATABASE_ECHO"]),
        sqlite_busy_timeout_ms=int(app.config["SQLITE_BUSY_TIMEOUT_MS"]),
        statement_timeout_ms=int(app.config["DATABASE_STATEMENT_TIMEOUT_MS"]),
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
