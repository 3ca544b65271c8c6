"""Import runs: one import at a time, each recorded with how it went and what it planned.

One at a time, across workers and hosts sharing the database: an import first takes the one
row of ``import_lease`` (a conditional UPDATE: free, or expired), renews it while it works
(every quarter of ``IMPORT_LEASE_SECONDS``, in its own short transaction) and gives it up in
its last transaction. Another import meanwhile gets ImportBusyError (HTTP 409 with
Retry-After). An import whose process died holds the lease until it expires; the next one then
takes it over and marks the dead one's run ``abandoned``. On SQLite, where a writing import
holds the database's write lock, renewing stops once it writes (nobody else can take the
lease then: their UPDATE waits for the lock, and is refused as busy).

Each import is an ``import_run`` row: started as ``running``, ended as ``planned`` (a dry
run), ``applied``, ``refused`` (row errors: nothing written), ``conflict`` (a record changed
meanwhile), ``failed`` or ``abandoned`` (a request refused while its body was read, as too
large say, leaves no run). Its summary (counts, the first errors) is on the row;
its plan (one entry per planned row) and all its errors are ``import_run_part`` rows of
gzip-compressed JSON lines, a thousand entries each, written in the run's last transaction
(with the import itself, for a real run): a page reads a part or two, a download streams them.
Runs older than ``IMPORT_RUN_RETENTION_DAYS`` are deleted when an import starts.
"""

from __future__ import annotations

import gzip
import json
import math
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, cast

from sqlalchemy import CursorResult, delete, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col
from werkzeug.exceptions import HTTPException

from referral.admin.imports.apply import apply_import
from referral.admin.imports.base import (
    DEFAULT_MAX_ERRORS,
    Actor,
    ImportConflictError,
    Progress,
)
from referral.admin.imports.plan import ImportPlan, plan_stream
from referral.admin.models import ImportLease, ImportRun, ImportRunPart
from referral.geo.chain import GeocoderChain
from referral.timeutil import as_utc, to_utc, utcnow
from referral.web.text import safe_file_name

RUNNING, PLANNED, APPLIED, REFUSED, CONFLICT, FAILED, ABANDONED = (
    "running", "planned", "applied", "refused", "conflict", "failed", "abandoned",
)  # fmt: skip
STATES = (RUNNING, PLANNED, APPLIED, REFUSED, CONFLICT, FAILED, ABANDONED)
PLAN, ERRORS = "plan", "errors"
KINDS = (PLAN, ERRORS)
PART_ENTRIES = 1000  # entries per stored part
LEASE_ROW = 1
# What a refused import is told to wait, at most (the lease's expiry, if sooner).
RETRY_AFTER_SECONDS = 10

_lease = ImportLease.__table__  # type: ignore[attr-defined]
_run = ImportRun.__table__  # type: ignore[attr-defined]
_part = ImportRunPart.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ImportSettings:
    """``IMPORT_MAX_ERRORS``, ``IMPORT_LEASE_SECONDS``, ``IMPORT_RUN_RETENTION_DAYS``."""

    max_errors: int = DEFAULT_MAX_ERRORS
    lease_seconds: float = 60.0
    retention_days: float = 30.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImportSettings:
        """From the app's settings; ValueError naming the variable for a wrong one."""
        values: dict[str, Any] = {}
        for attribute, name in _SETTINGS.items():
            value = config.get(name, getattr(cls, attribute))
            whole = attribute == "max_errors"
            if (
                isinstance(value, bool)
                or not isinstance(value, int if whole else int | float)
                or not value > 0
            ):
                kind = "a whole number" if whole else "a number"
                raise ValueError(f"REFERRAL_{name} must be {kind} above 0: {value!r}")
            values[attribute] = value
        return cls(**values)


_SETTINGS = {
    "max_errors": "IMPORT_MAX_ERRORS",
    "lease_seconds": "IMPORT_LEASE_SECONDS",
    "retention_days": "IMPORT_RUN_RETENTION_DAYS",
}


class ImportBusyError(RuntimeError):
    """Another import holds the lease."""

    def __init__(self, run_id: int | None, retry_after: int) -> None:
        running = f" (import {run_id})" if run_id is not None else ""
        super().__init__(
            f"another import is running{running}: one import at a time; try again later"
        )
        self.run_id = run_id
        self.retry_after = retry_after


class LeaseLostError(RuntimeError):
    """The lease expired while the import worked and another import took it over."""

    def __init__(self) -> None:
        super().__init__(
            "the import stalled past its lease and another import took over; nothing was "
            "imported: try again"
        )


class Lease:
    """The lease one import holds, and its run."""

    def __init__(self, engine: Engine, token: str, run_id: int, seconds: float) -> None:
        self.engine = engine
        self.token = token
        self.run_id = run_id
        self.seconds = seconds
        self._renewed = utcnow()
        self._writing = False

    def keep(self, rows_read: int | None = None, *, force: bool = False) -> None:
        """Renew the lease when a quarter of it has passed (and note the rows read so far);
        LeaseLostError when another import has it."""
        now = utcnow()
        if self._writing or (
            not force and now - self._renewed < timedelta(seconds=self.seconds / 4)
        ):
            return
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(_lease)
                .where(_lease.c.id == LEASE_ROW, _lease.c.holder == self.token)
                .values(expires_at=now + timedelta(seconds=self.seconds))
            )
            if renewed.rowcount != 1:
                raise LeaseLostError()
            if rows_read is not None:
                connection.execute(
                    update(_run).where(_run.c.id == self.run_id).values(rows_read=rows_read)
                )
        self._renewed = now

    def writing(self, session: Session, rows_read: int) -> None:
        """The import's own transaction writes from now on (the lease renewed first). On
        SQLite it holds the write lock then, so a renewal (another connection) would wait for
        it: renewals stop, and nobody can take the lease until the import commits or rolls
        back."""
        self.keep(rows_read, force=True)
        self._writing = session.get_bind().dialect.name == "sqlite"

    def release_in(self, session: Session) -> None:
        """Give the lease up in the session's transaction (its last); LeaseLostError when it
        is no longer this import's (then roll back: another import may be running)."""
        released = cast(CursorResult[Any], session.execute(_release(self.token)))
        if released.rowcount != 1:
            raise LeaseLostError()

    def drop(self) -> None:
        """The request was refused (its body too large, say): no run is left of it."""
        with self.engine.begin() as connection:
            connection.execute(delete(_part).where(_part.c.run_id == self.run_id))
            connection.execute(
                delete(_run).where(_run.c.id == self.run_id, _run.c.state == RUNNING)
            )
            connection.execute(_release(self.token))

    def end(self, state: str, detail: str) -> None:
        """The run ended otherwise (its transaction rolled back): record why, free the lease."""
        with self.engine.begin() as connection:
            connection.execute(
                update(_run)
                .where(_run.c.id == self.run_id, _run.c.state == RUNNING)
                .values(state=state, finished_at=utcnow(), detail=detail[:500])
            )
            connection.execute(_release(self.token))


def _release(token: str) -> Any:
    return (
        update(_lease)
        .where(_lease.c.id == LEASE_ROW, _lease.c.holder == token)
        .values(holder=None, run_id=None, expires_at=None)
    )


def begin_run(
    engine: Engine,
    actor: Actor,
    *,
    dry_run: bool,
    fmt: str | None,
    source: str | None,
    settings: ImportSettings,
) -> Lease:
    """Take the lease and record the run (``running``), in one transaction; ImportBusyError
    when another import holds the lease. Runs left ``running`` by an import that died are
    marked ``abandoned``, runs past retention deleted."""
    now = utcnow()
    token = secrets.token_hex(16)
    try:
        with engine.begin() as connection:
            taken = connection.execute(
                update(_lease)
                .where(
                    _lease.c.id == LEASE_ROW,
                    or_(_lease.c.holder.is_(None), _lease.c.expires_at < to_utc(now)),
                )
                .values(holder=token, expires_at=now + timedelta(seconds=settings.lease_seconds))
            )
            if taken.rowcount != 1:
                held = connection.execute(
                    select(_lease.c.run_id, _lease.c.expires_at).where(_lease.c.id == LEASE_ROW)
                ).one_or_none()
                raise _busy(held, now)
            # Only the lease's holder runs: any other run still "running" died.
            connection.execute(
                update(_run)
                .where(_run.c.state == RUNNING)
                .values(state=ABANDONED, finished_at=now, detail="its import stopped")
            )
            _purge(connection, now - timedelta(days=settings.retention_days))
            run_id = connection.execute(
                insert(_run)
                .values(
                    started_at=now, actor=actor.name[:120], actor_key_id=actor.key_id,
                    dry_run=dry_run, state=RUNNING, format=fmt,
                    source=source[:200] if source else None, rows_read=0, error_count=0,
                    summary={},
                )
                .returning(_run.c.id)
            ).scalar_one()  # fmt: skip
            connection.execute(update(_lease).where(_lease.c.holder == token).values(run_id=run_id))
    except OperationalError as exc:
        # SQLite: a writing import holds the write lock past the busy timeout.
        if engine.dialect.name != "sqlite":
            raise
        raise ImportBusyError(None, RETRY_AFTER_SECONDS) from exc
    return Lease(engine, token, run_id, settings.lease_seconds)


def lease_holder(engine: Engine) -> ImportBusyError | None:
    """What an import would be refused with now, if another holds the lease (a check only:
    begin_run decides)."""
    now = utcnow()
    with engine.connect() as connection:
        held = connection.execute(
            select(_lease.c.holder, _lease.c.run_id, _lease.c.expires_at).where(
                _lease.c.id == LEASE_ROW
            )
        ).one_or_none()
    if held is None or held.holder is None or held.expires_at is None:
        return None
    if as_utc(held.expires_at) <= now:
        return None
    return _busy(held, now)


def _busy(held: Any, now: Any) -> ImportBusyError:
    retry_after = RETRY_AFTER_SECONDS
    if held is not None and held.expires_at is not None:
        left = (as_utc(held.expires_at) - now).total_seconds()
        retry_after = max(1, min(retry_after, math.ceil(left)))
    return ImportBusyError(held.run_id if held is not None else None, retry_after)


def _purge(connection: Any, before: Any) -> None:
    old = select(_run.c.id).where(_run.c.started_at < to_utc(before), _run.c.state != RUNNING)
    connection.execute(delete(_part).where(_part.c.run_id.in_(old)))
    connection.execute(
        delete(_run).where(_run.c.started_at < to_utc(before), _run.c.state != RUNNING)
    )


# ---- one import, from start to end ----------------------------------------------------------


def run_import(
    session: Session,
    stream: IO[bytes],
    fmt: str,
    geocoder: GeocoderChain,
    actor: Actor,
    *,
    dry_run: bool,
    source: str | None = None,
    settings: ImportSettings | None = None,
    progress: Progress | None = None,
    writing: Callable[[int], Progress | None] | None = None,
) -> ImportRun:
    """Take the lease, plan the file as it is read from ``stream``, apply it unless
    ``dry_run`` or a row is wrong, and record the run; the run as recorded.

    A real run's writes, its record and the lease's release are one transaction: all rows
    and their change log, or nothing. ``progress``: rows checked per chunk; ``writing``: called
    with the number of rows to write, gives a progress callback for them. Raises
    ImportBusyError (another import runs), ImportConflictError (a record changed meanwhile:
    nothing written), LeaseLostError, or whatever stopped reading the file."""
    settings = settings or ImportSettings()
    # The name is shown publicly (a clinic's source.file): a safe basename, or none.
    source = safe_file_name(source)
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    lease = begin_run(engine, actor, dry_run=dry_run, fmt=fmt, source=source, settings=settings)
    plan: ImportPlan | None = None
    try:
        plan = plan_stream(
            session,
            stream,
            fmt,
            geocoder,
            progress=_kept(lease, progress, counting=True),
            max_errors=settings.max_errors,
        )
        changes = 0
        if dry_run or not plan.valid:
            session.rollback()  # nothing was written; reads end here
            lease.writing(session, plan.rows_read)
            state = PLANNED if dry_run else REFUSED
        else:
            lease.writing(session, plan.rows_read)
            progress_of_writes = writing(plan.write_count) if writing is not None else None
            changes = apply_import(
                session,
                plan,
                actor,
                source=source,
                progress=_kept(lease, progress_of_writes, counting=False),
            )
            state = APPLIED
        _record(session, lease, plan, state=state, changes=changes)
        session.commit()
    except ImportConflictError as exc:
        session.rollback()
        lease.end(CONFLICT, str(exc))
        raise
    except LeaseLostError:
        session.rollback()
        raise
    except BaseException as exc:
        session.rollback()
        if isinstance(exc, HTTPException) and (exc.code or 500) < 500:
            lease.drop()  # the request was refused for its body: as if it never came
        else:
            lease.end(FAILED, _why(exc))
        raise
    finally:
        if plan is not None:
            plan.close()
    run = session.get(ImportRun, lease.run_id)
    assert run is not None
    return run


def _kept(lease: Lease, progress: Progress | None, *, counting: bool) -> Progress:
    """A progress callback that also keeps the lease (noting the rows read, when counting)."""
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(count)
        lease.keep(done if counting else None)

    return step


def _why(exc: BaseException) -> str:
    if isinstance(exc, HTTPException):
        return f"stopped: {exc.code} {exc.name}"
    return f"stopped by an error ({type(exc).__name__})"  # never its message: it may quote data


def _record(session: Session, lease: Lease, plan: ImportPlan, *, state: str, changes: int) -> None:
    """The run's end: its parts, its summary, the lease given up (the caller commits)."""
    planned = _write_parts(session, lease.run_id, PLAN, plan.row_plans())
    _write_parts(session, lease.run_id, ERRORS, (error.as_dict() for error in plan.row_errors()))
    summary = {
        "valid": plan.valid,
        "counts": plan.counts(),
        "error_rows": plan.error_rows,
        "errors": [error.as_dict() for error in plan.errors],
        "plan_entries": planned,
        "changes_recorded": changes,
    }
    session.execute(
        update(_run)
        .where(_run.c.id == lease.run_id)
        .values(
            state=state,
            finished_at=utcnow(),
            format=plan.format,
            rows_read=plan.rows_read,
            error_count=plan.error_count,
            summary=summary,
        )
    )
    lease.release_in(session)


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def _write_parts(session: Session, run_id: int, kind: str, entries: Iterable[Any]) -> int:
    """Store ``entries`` as parts of PART_ENTRIES JSON lines, gzip-compressed; how many."""
    count = 0
    seq = 0
    lines: list[str] = []

    def flush() -> None:
        nonlocal seq, lines
        data = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=3, mtime=0)
        session.execute(
            insert(_part).values(run_id=run_id, kind=kind, seq=seq, entries=len(lines), data=data)
        )
        seq += 1
        lines = []

    for entry in entries:
        lines.append(_ENCODE(entry))
        count += 1
        if len(lines) == PART_ENTRIES:
            flush()
    if lines:
        flush()
    return count


# ---- reading runs back ----------------------------------------------------------------------


def get_run(session: Session, run_id: int) -> ImportRun | None:
    return session.get(ImportRun, run_id)


def list_runs(session: Session, *, offset: int, limit: int) -> tuple[list[ImportRun], int]:
    """Runs, newest first, and how many there are."""
    total = session.execute(select(func.count()).select_from(_run)).scalar_one()
    runs = session.execute(
        select(ImportRun).order_by(col(ImportRun.id).desc()).offset(offset).limit(limit)
    ).scalars()
    return list(runs), total


def current_state(session: Session, run: ImportRun) -> str:
    """The run's state; a ``running`` one whose lease is gone (expired or taken) is
    ``abandoned``, though nobody has marked it so yet."""
    if run.state != RUNNING:
        return run.state
    held = session.execute(
        select(_lease.c.run_id, _lease.c.expires_at).where(_lease.c.id == LEASE_ROW)
    ).one_or_none()
    if (
        held is not None
        and held.run_id == run.id
        and held.expires_at is not None
        and as_utc(held.expires_at) > utcnow()
    ):
        return RUNNING
    return ABANDONED


def entry_count(session: Session, run_id: int, kind: str) -> int:
    found = session.execute(
        select(func.coalesce(func.sum(_part.c.entries), 0)).where(
            _part.c.run_id == run_id, _part.c.kind == kind
        )
    ).scalar_one()
    return int(found)


def read_entries(
    session: Session, run_id: int, kind: str, *, first: int, count: int
) -> list[dict[str, Any]]:
    """Entries ``first`` to ``first + count`` (0-based) of a run's plan or errors: only the
    parts holding them are read."""
    sizes = session.execute(
        select(_part.c.seq, _part.c.entries)
        .where(_part.c.run_id == run_id, _part.c.kind == kind)
        .order_by(_part.c.seq)
    ).all()
    wanted: list[tuple[int, int]] = []  # (seq, offset of its first entry)
    start = 0
    for seq, entries in sizes:
        if start + entries > first and start < first + count:
            wanted.append((seq, start))
        start += entries
    found: list[dict[str, Any]] = []
    for seq, offset in wanted:
        data = session.execute(
            select(_part.c.data).where(
                _part.c.run_id == run_id, _part.c.kind == kind, _part.c.seq == seq
            )
        ).scalar_one()
        lines = gzip.decompress(data).splitlines()
        low = max(first - offset, 0)
        high = min(first + count - offset, len(lines))
        found.extend(json.loads(line) for line in lines[low:high])
    return found


def stream_entries(session: Session, run_id: int, kind: str) -> Iterator[bytes]:
    """A run's plan or errors as JSON lines, a part at a time."""
    seqs = (
        session.execute(
            select(_part.c.seq)
            .where(_part.c.run_id == run_id, _part.c.kind == kind)
            .order_by(_part.c.seq)
        )
        .scalars()
        .all()
    )
    for seq in seqs:
        data = session.execute(
            select(_part.c.data).where(
                _part.c.run_id == run_id, _part.c.kind == kind, _part.c.seq == seq
            )
        ).scalar_one()
        yield gzip.decompress(data)


__all__ = [
    "ABANDONED",
    "APPLIED",
    "CONFLICT",
    "ERRORS",
    "FAILED",
    "KINDS",
    "PLAN",
    "PLANNED",
    "REFUSED",
    "RUNNING",
    "STATES",
    "ImportBusyError",
    "ImportSettings",
    "Lease",
    "LeaseLostError",
    "begin_run",
    "current_state",
    "entry_count",
    "get_run",
    "lease_holder",
    "list_runs",
    "read_entries",
    "run_import",
    "stream_entries",
]
