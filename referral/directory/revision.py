"""The directory's revision: one counter row, bumped in the same transaction as any change to
clinics, locations or clinic specialties, so a worker can tell with one primary-key read
whether its in-memory nearest index (referral/directory/spatial_index.py) is current.

ORM writes bump it by themselves (a ``before_flush`` listener on every Session), and stamp
each clinic and location they write (a clinic also when its specialties change) with the new
revision, so a read model can fetch only what changed since the revision it holds; bulk Core
writes (the importer) call ``bump_revision`` and stamp their rows with what it returns. The
bump takes the row's lock before the transaction's first directory write, so concurrent
editors are serialized on it in one order (no deadlock between them) and revisions become
visible in commit order.

No ``from __future__ import annotations`` here: SQLModel reads the annotations at runtime.
"""

import itertools
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, event, select, update
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import UOWTransaction
from sqlmodel import Field, SQLModel

from referral.directory.models import Clinic, ClinicSpecialty, Location

REVISION_ROW = 1
_DIRECTORY_MODELS = (Clinic, ClinicSpecialty, Location)
_BUMPED_KEY = "directory_revision_bumped"


class DirectoryRevision(SQLModel, table=True):
    __tablename__ = "directory_revision"

    id: int = Field(primary_key=True)
    revision: int = Field(default=1)


_table = DirectoryRevision.__table__  # type: ignore[attr-defined]
_BUMP = (
    update(_table)
    .where(_table.c.id == REVISION_ROW)
    .values(revision=_table.c.revision + 1)
    .returning(_table.c.revision)
)
_READ = select(_table.c.revision).where(_table.c.id == REVISION_ROW)

# Counts directory commits made by this process: a worker's own edits make its next nearest
# query check the revision at once instead of waiting for the check interval.
_local_commits = itertools.count(1)
_local_lock = threading.Lock()
_local_generation = 0


def local_generation() -> int:
    return _local_generation


def _note_local_commit() -> None:
    global _local_generation
    with _local_lock:
        _local_generation = next(_local_commits)


def read_revision(connection: Connection | OrmSession) -> int:
    value = connection.execute(_READ).scalar_one_or_none()
    # A missing row (a database restored without it) reads as 0: every index is then stale
    # once, and bump_revision puts the row back.
    return int(value or 0)


def bump_revision(session: OrmSession) -> int:
    """Mark the directory changed in ``session``'s transaction; the new revision, which the
    rows written now carry. Called on every directory flush, not once per transaction: a
    bump rolled back with a savepoint is then redone by the next flush, and the row's lock is
    held from the first one anyway."""
    connection = session.connection()
    bumped = connection.execute(_BUMP).scalar_one_or_none()
    if bumped is None:
        connection.execute(_table.insert().values(id=REVISION_ROW, revision=1))
        bumped = 1
    session.info[_BUMPED_KEY] = True
    return int(bumped)


def _touches_directory(session: OrmSession) -> bool:
    return any(
        isinstance(instance, _DIRECTORY_MODELS)
        for instance in itertools.chain(session.new, session.dirty, session.deleted)
    )


@event.listens_for(OrmSession, "before_flush")
def _bump_on_directory_flush(
    session: OrmSession, _context: UOWTransaction, _instances: Any
) -> None:
    if _touches_directory(session):
        _stamp(session, bump_revision(session))


def _stamp(session: OrmSession, revision: int) -> None:
    """Every clinic and location being written carries ``revision``; so does the clinic of
    every specialty link being written (its evidence is part of the clinic)."""
    with session.no_autoflush:
        for instance in itertools.chain(session.new, session.dirty, session.deleted):
            if isinstance(instance, Clinic | Location):
                instance.revision = revision
            elif isinstance(instance, ClinicSpecialty):
                clinic = session.get(Clinic, instance.clinic_id)
                if clinic is not None:
                    clinic.revision = revision


# Called with the session after each commit that changed the directory (the read model
# refreshes itself there, so the committing process sees its own change at once).
_commit_hooks: list[Callable[[OrmSession], None]] = []


def on_directory_commit(hook: Callable[[OrmSession], None]) -> None:
    _commit_hooks.append(hook)


@event.listens_for(OrmSession, "after_commit")
def _after_commit(session: OrmSession) -> None:
    if session.info.pop(_BUMPED_KEY, None) is not None:
        _note_local_commit()
        for hook in _commit_hooks:
            hook(session)


@event.listens_for(OrmSession, "after_rollback")
def _after_rollback(session: OrmSession) -> None:
    session.info.pop(_BUMPED_KEY, None)


__all__ = [
    "DirectoryRevision",
    "bump_revision",
    "local_generation",
    "on_directory_commit",
    "read_revision",
]
