"""``referral db backup PATH``: a consistent copy of the database, taken while the server runs.

SQLite: the online backup API (``sqlite3.Connection.backup``) in one step: it reads one
consistent snapshot while writers carry on (WAL mode), so the copy holds every transaction
committed before it started and none that was half done. The copy is checked
(``integrity_check``, ``foreign_key_check``), made self-contained (rollback journal, no ``-wal``
beside it), synced to disk, and only then moved to PATH: PATH is either absent, the previous
file, or a complete backup, never part of one.

PostgreSQL: ``pg_dump --format=custom`` when ``pg_dump`` is on PATH (its one transaction sees
one consistent snapshot, writers carry on), checked with ``pg_restore --list`` and moved into
place the same way; otherwise the command prints how to run pg_dump and exits 1, so a cron job
notices. Restoring is ``pg_restore`` into an empty database (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import URL, make_url

# pg_dump of a large directory is still minutes, not hours; a hung one must not hang cron.
PG_DUMP_TIMEOUT_SECONDS = 3600


class BackupError(click.ClickException):
    """A backup that was not made; the message says why and what to do."""


@dataclass(frozen=True)
class BackupReport:
    target: Path
    size_bytes: int
    detail: str  # what was copied, for the summary line


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _staged(target: Path, *, force: bool) -> Iterator[Path]:
    """A temporary file beside ``target``; on success it is synced and moved onto ``target``
    (atomically; without ``force``, only if ``target`` does not exist by then)."""
    if target.exists() and not force:
        raise BackupError(f"{target} exists; pass --force to replace it")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a directory")
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        _fsync(staged)
        if force:
            os.replace(staged, target)
        else:
            try:
                os.link(staged, target)  # fails if target appeared meanwhile: never clobber
            except FileExistsError:
                raise BackupError(f"{target} exists; pass --force to replace it") from None
        with contextlib.suppress(OSError):  # the rename itself durable, where supported
            _fsync(target.parent)
    finally:
        staged.unlink(missing_ok=True)


# --- SQLite ----------------------------------------------------------------------------------


def _sqlite_path(url: URL) -> Path:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(f"cannot back up SQLite database {database!r}: not a file")
    return Path(database).resolve()


def backup_sqlite(
    url: URL, target: Path, *, force: bool, busy_timeout_s: float = 30
) -> BackupReport:
    source = _sqlite_path(url)
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    if target.resolve() == source:
        raise BackupError("the backup cannot replace the database itself")
    with _staged(target, force=force) as staged:
        # mode=rw: never create an empty database where the real one was expected.
        src = sqlite3.connect(f"{source.as_uri()}?mode=rw", uri=True, timeout=busy_timeout_s)
        dst = sqlite3.connect(staged)
        try:
            src.backup(dst)  # pages=-1: one step, so one snapshot (a stepped copy restarts
            #                  whenever another process writes, and may never finish)
            problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"the copy failed its integrity check: {problems[:5]}")
            orphans = dst.execute("PRAGMA foreign_key_check").fetchall()
            if orphans:
                raise BackupError(f"the copy has {len(orphans)} rows with broken foreign keys")
            # The copy inherits WAL mode; a backup should be one self-contained file.
            dst.execute("PRAGMA journal_mode=DELETE")
            tables = [
                row[0]
                for row in dst.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            referrals = (
                dst.execute("SELECT count(*) FROM referral").fetchone()[0]
                if "referral" in tables
                else 0
            )
        finally:
            dst.close()
            src.close()
        size = staged.stat().st_size
    return BackupReport(
        target,
        size,
        f"SQLite online backup of {source}: {len(tables)} tables, {referrals} referrals, "
        "integrity ok",
    )


# --- PostgreSQL ------------------------------------------------------------------------------


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment carrying it (so it is
    never on a command line, where `ps` shows it)."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    # URL.set() ignores None, so the password is left out by building the URL anew.
    plain = URL.create(
        "postgresql",
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )
    return plain.render_as_string(hide_password=False), env


def pg_guidance(url: URL, target: Path) -> str:
    shown = url.set(drivername="postgresql").render_as_string(hide_password=True)
    return (
        "Back up PostgreSQL with pg_dump (a consistent snapshot; the server keeps running):\n"
        f"  pg_dump --format=custom --file {target} --dbname '{shown}'\n"
        "Restore into a new, empty database, then point the service at it:\n"
        "  createdb referral_restored\n"
        f"  pg_restore --exit-on-error --no-owner --dbname "
        f"'postgresql://USER@HOST/referral_restored' {target}\n"
        "  REFERRAL_DATABASE_URL=postgresql+psycopg://USER@HOST/referral_restored "
        "referral db current\n"
        "pg_dump must be as new as the server (e.g. the postgresql-client package)."
    )


def backup_postgres(url: URL, target: Path, *, force: bool) -> BackupReport:
    pg_dump = shutil.which("pg_dump")
    pg_restore = shutil.which("pg_restore")
    if pg_dump is None or pg_restore is None:
        raise BackupError("pg_dump and pg_restore are not on PATH.\n" + pg_guidance(url, target))
    dsn, env = _libpq(url)
    with _staged(target, force=force) as staged:
        dumped = subprocess.run(
            [pg_dump, "--format=custom", "--file", str(staged), "--dbname", dsn],
            env=env,
            capture_output=True,
            text=True,
            timeout=PG_DUMP_TIMEOUT_SECONDS,
            check=False,
        )
        if dumped.returncode != 0:
            raise BackupError(
                f"pg_dump failed ({dumped.returncode}): {dumped.stderr.strip()}\n"
                + pg_guidance(url, target)
            )
        listed = subprocess.run(
            [pg_restore, "--list", str(staged)],
            capture_output=True,
            text=True,
            timeout=PG_DUMP_TIMEOUT_SECONDS,
            check=False,
        )
        if listed.returncode != 0:
            raise BackupError(f"pg_restore cannot read the dump: {listed.stderr.strip()}")
        tables = sum(" TABLE DATA " in line for line in listed.stdout.splitlines())
        size = staged.stat().st_size
    return BackupReport(
        target,
        size,
        f"pg_dump --format=custom of {url.database}: {tables} tables with data "
        f"(restore with pg_restore; see docs/reliability.md)",
    )


# --- the command -----------------------------------------------------------------------------


def backup_database(database_url: str, target: Path, *, force: bool = False) -> BackupReport:
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return backup_sqlite(url, target, force=force)
    if backend == "postgresql":
        return backup_postgres(url, target, force=force)
    raise BackupError(f"no backup method for {backend} databases")


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@click.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@with_appcontext
def db_backup(path: Path, force: bool) -> None:
    """Copy the database to PATH while the service keeps running.

    SQLite: an online backup, checked and written atomically. PostgreSQL: pg_dump's custom
    format (needs pg_dump on PATH; without it, prints how to run it and exits 1).
    """
    report = backup_database(current_app.config["DATABASE_URL"], path, force=force)
    click.echo(f"backed up to {report.target} ({_size(report.size_bytes)})")
    click.echo(f"  {report.detail}")
