"""One read model per database per worker: the snapshot public reads answer from, kept fresh
off the request thread.

A request asks ``current_snapshot``. At most every ``NEAREST_INDEX_CHECK_SECONDS`` (and at
once after this process committed a directory change) it reads the directory's revision, one
primary-key row; when that moved on, a background thread reads what changed since the
snapshot's revision and swaps in a new snapshot, one reference assignment, while requests go on
answering from the previous one. A process that commits a directory change brings its own
read model up to date before the commit returns (the writer pays, never a reader), so a
client sees its own edit at once. Only the first request of a worker, which has nothing to
answer from yet, waits for a build (warm_read_model at worker start does it instead).
docs/nearest.md has the bound and the costs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref

from flask import Flask, current_app, has_app_context
from sqlalchemy import Connection, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from referral.db import get_session, without_statement_timeout
from referral.directory import revision as revisions
from referral.directory.listing import listing
from referral.directory.models import Location
from referral.directory.readbuild import read_in_child
from referral.directory.search import facets, spatial
from referral.directory.snapshot import Snapshot, count_changes, read_all, read_changes

log = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 1.0
# A delta larger than this share of the directory (or of at least this many rows) is read
# whole instead; so is a snapshot whose dead rows reach this share.
_DELTA_SHARE = 0.1
_DELTA_FLOOR = 2000
_DEAD_SHARE = 0.25
# Locations from which a whole read happens in a child process (readbuild.py).
CHILD_THRESHOLD = 20_000
_LOCATION = Location.__table__  # type: ignore[attr-defined]


class ReadModel:
    """The current snapshot of one database in this process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self.snapshot: Snapshot | None = None
        self._checked_at = -math.inf
        self._generation = -1
        self._refreshing = threading.Lock()
        self._pending = threading.Event()

    def current(self, session: Session, check_seconds: float) -> Snapshot:
        snapshot = self.snapshot
        if snapshot is None:
            first = self.refresh()
            assert first is not None
            return first
        now = time.monotonic()
        generation = revisions.local_generation()
        if generation != self._generation or now - self._checked_at >= check_seconds:
            # Noted before reading: a commit after this point changes the generation again.
            self._checked_at, self._generation = now, generation
            if revisions.read_revision(session) != snapshot.revision:
                self._refresh_in_background()
        return snapshot

    def refresh(self, *, whole_here: bool = True) -> Snapshot | None:
        """Bring the snapshot up to the database's revision, on this thread; a refresh
        running on another thread is waited for, then this one reads what is left. Without
        ``whole_here`` a change that needs a whole read is left to a background refresh
        (and None returned): a writer pays for its own edit, not for a rebuild."""
        with self._refreshing:
            self._pending.clear()
            engine = self._engine()
            if engine is None:  # the app and its engine are gone
                raise RuntimeError("the database engine of this read model was disposed")
            refreshed = _refreshed(engine, self.snapshot, whole_here=whole_here)
            if refreshed is None:
                return None
            self.snapshot = refreshed
            return refreshed

    def _refresh_in_background(self) -> None:
        if self._pending.is_set() or self._refreshing.locked():
            return
        self._pending.set()
        threading.Thread(target=self._refresh_quietly, name="read-model", daemon=True).start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:  # logged; requests keep the previous snapshot and try again
            self._pending.clear()
            log.exception("read model: refresh failed")


def _refreshed(engine: Engine, old: Snapshot | None, *, whole_here: bool) -> Snapshot | None:
    started = time.perf_counter()
    with engine.connect() as connection, without_statement_timeout(connection):
        current = revisions.read_revision(connection)
        if old is not None and current == old.revision:
            return old
        delta = (
            old is not None
            and current > old.revision
            and old.dead_rows < _DEAD_SHARE * old.size
            and count_changes(connection, old.revision)
            <= max(_DELTA_FLOOR, _DELTA_SHARE * old.size)
        )
        if delta and old is not None:
            changes = read_changes(connection, old.revision)
            new, how = old.with_changes(changes), f"{changes.size} changed rows"
        elif not whole_here:
            return None
        elif _large(connection):
            new, how = read_in_child(engine.url.render_as_string(hide_password=False)), "child"
        else:
            new, how = read_all(connection), "whole"
    prepare(new)
    log.info(
        "read model: revision %d (%s), %d clinics, %d locations, %.1f MB, in %.2f s",
        new.revision,
        how,
        len(new.clinics.id),
        len(new.locations.id),
        new.nbytes() / 1e6,
        time.perf_counter() - started,
    )
    return new


def _delta_limit(old: Snapshot) -> float:
    return max(_DELTA_FLOOR, _DELTA_SHARE * old.size)


def _large(connection: Connection) -> bool:
    """Whether a whole read is worth a process of its own (readbuild.py); a small directory
    (and a database only this process can see) is read here."""
    url = connection.engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return False
    count = connection.execute(select(func.count()).select_from(_LOCATION)).scalar_one()
    return int(count) >= CHILD_THRESHOLD


def prepare(snapshot: Snapshot) -> None:
    """Build what requests would otherwise build on first use (groups, the tree, the list's
    indexes) before the snapshot is handed to them."""
    facets(snapshot)
    spatial(snapshot)
    listing(snapshot)


_models: weakref.WeakKeyDictionary[Engine, ReadModel] = weakref.WeakKeyDictionary()
_models_lock = threading.Lock()


def _model(engine: Engine) -> ReadModel:
    with _models_lock:
        model = _models.get(engine)
        if model is None:
            model = _models[engine] = ReadModel(engine)
        return model


def _check_seconds() -> float:
    if has_app_context():
        return float(current_app.config.get("NEAREST_INDEX_CHECK_SECONDS", DEFAULT_CHECK_SECONDS))
    return DEFAULT_CHECK_SECONDS


def current_snapshot(session: Session | None = None) -> Snapshot:
    """This worker's snapshot of the database of ``session`` (the request's by default)."""
    session = session or get_session()
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    return _model(engine).current(session, _check_seconds())


def _after_directory_commit(session: Session) -> None:
    engine = session.get_bind()
    model = _models.get(engine) if isinstance(engine, Engine) else None
    if model is None or model.snapshot is None:
        return  # nothing here reads the directory (a CLI command): nothing to keep fresh
    try:
        if model.refresh(whole_here=False) is None:
            model._refresh_in_background()
    except Exception:  # the commit stands; readers pick the change up at the next check
        log.exception("read model: refresh after a commit failed")


revisions.on_directory_commit(_after_directory_commit)


def warm_read_model(app: Flask) -> None:
    """Build this process's snapshot now, e.g. from gunicorn's post_worker_init, so that no
    request waits for the first build."""
    with app.app_context():
        current_snapshot(get_session())


__all__ = ["ReadModel", "current_snapshot", "prepare", "warm_read_model"]
