"""`referral db backup PATH`: a backup taken from a live server while referrals are being
written holds every referral acknowledged before it started, passes integrity checks, and
restores into a database the service runs on, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.backup import _libpq, pg_guidance
from referral.db import get_database
from tests.conftest import build_app, skip_or_fail
from tests.dbscan import rows
from tests.helpers import auth
from tests.live import OPENER, Served, serve

BODY = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}
REFERRAL_CLI = str(Path(sys.executable).parent / "referral")

# The writers measure backups, not limits: no acknowledged write may be lost to a 429.
NO_LIMITS = {"REFERRAL_RATELIMIT_REFERRALS": "1000000 per minute"}


def cli(database_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """The real command line, in its own process, as cron or an operator would run it."""
    return subprocess.run(
        [REFERRAL_CLI, *args],
        env={**os.environ, "REFERRAL_DATABASE_URL": database_url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def make_keys(database_url: str) -> dict[str, str]:
    app = build_app(database_url)
    with Session(get_database(app).engine) as session:
        keys = {
            "app": create_key(session, name="backup-app", scopes=["referrals:write"])[1],
            "admin": create_key(session, name="backup-ops", scopes=["admin"])[1],
        }
        session.commit()
    get_database(app).dispose()
    return keys


def post_referral(served: Served, key: str, idempotency_key: str) -> str | None:
    """The new referral's id when acknowledged with 201, else None."""
    request = urllib.request.Request(
        f"{served.base}/v1/referrals",
        data=json.dumps({**BODY, "patient_ref": idempotency_key}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            **auth(key, **{"Idempotency-Key": idempotency_key}),
        },
    )
    try:
        with OPENER.open(request, timeout=60) as response:
            if response.status == 201:
                return str(json.load(response)["id"])
    except (urllib.error.HTTPError, OSError):
        pass
    return None


@dataclass
class Writers:
    """Threads sending referrals until stopped; every acknowledged id with its time."""

    served: Served
    key: str
    acknowledged: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str) -> None:
        count = 0
        while not self.stop.is_set():
            count += 1
            referral_id = post_referral(self.served, self.key, f"w-{name}-{count}")
            if referral_id is not None:
                with self.lock:
                    self.acknowledged.append((time.monotonic(), referral_id))

    def ids_before(self, moment: float) -> set[str]:
        with self.lock:
            return {rid for at, rid in self.acknowledged if at < moment}

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


@contextmanager
def writing(served: Served, key: str, threads: int = 2) -> Iterator[Writers]:
    writers = Writers(served, key)
    started = [
        threading.Thread(target=writers.run, args=(str(n),), daemon=True) for n in range(threads)
    ]
    for thread in started:
        thread.start()
    try:
        yield writers
    finally:
        writers.stop.set()
        for thread in started:
            thread.join(timeout=120)


def wait_for_writes(writers: Writers, at_least: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while writers.count() < at_least:
        assert time.monotonic() < deadline, f"only {writers.count()} referrals acknowledged"
        time.sleep(0.05)


def referral_rows(database_url: str) -> dict[str, dict[str, Any]]:
    app = build_app(database_url)
    try:
        return {row["id"]: row for row in rows(get_database(app).engine, "referral")}
    finally:
        get_database(app).dispose()


def backup_under_load(
    database_url: str, served: Served, keys: dict[str, str], target: Path
) -> tuple[set[str], Any]:
    """Referrals acknowledged before the backup started, and the backup command's result."""
    for n in range(10):  # some history before any concurrent writing
        assert post_referral(served, keys["app"], f"seed-{n}") is not None
    with writing(served, keys["app"]) as writers:
        wait_for_writes(writers, 5)
        started = time.monotonic()
        result = cli(database_url, "db", "backup", str(target))
        # Keep writing a little after it, so the backup provably raced with writes.
        wait_for_writes(writers, writers.count() + 3)
    acknowledged_before = writers.ids_before(started)
    assert writers.count() > len(acknowledged_before), "writes continued during the backup"
    return acknowledged_before, result


def assert_restored(
    live_url: str, restored_url: str, acknowledged_before: set[str], admin_key: str
) -> None:
    """Every referral acknowledged before the backup is in the restored database, each exactly
    as in the live one, and the service answers for each of them from the restored copy."""
    live = referral_rows(live_url)
    restored = referral_rows(restored_url)
    assert acknowledged_before <= set(restored), acknowledged_before - set(restored)
    assert set(restored) <= set(live)  # nothing invented
    for referral_id, row in restored.items():
        assert row == live[referral_id], referral_id

    app = build_app(restored_url)
    client = app.test_client()
    try:
        events = list(rows(get_database(app).engine, "referral_event"))
        assert {event["referral_id"] for event in events} == set(restored)  # every history
        for referral_id in sorted(restored):
            answer = client.get(f"/v1/referrals/{referral_id}", headers=auth(admin_key))
            assert answer.status_code == 200, answer.get_json()
        made = client.post("/v1/referrals", json=BODY, headers=auth(admin_key))
        assert made.status_code == 201, made.get_json()  # the restored copy is writable
    finally:
        get_database(app).dispose()
    current = cli(restored_url, "db", "current")
    assert current.returncode == 0, current.stderr
    revisions = [line.split(":", 1)[1].strip() for line in current.stdout.splitlines()]
    assert len(revisions) == 2 and revisions[0] == revisions[1], current.stdout  # at head


# --- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "live" / "referral.db"
    target.parent.mkdir()
    shutil.copyfile(sqlite_template, target)
    return f"sqlite:///{target}"


def test_sqlite_backup_under_load_restores_every_acknowledged_referral(sqlite_url, tmp_path):
    keys = make_keys(sqlite_url)
    target = tmp_path / "backups" / "referral-backup.db"
    target.parent.mkdir()
    with serve(sqlite_url, tmp_path, workers=2, threads=2, env=NO_LIMITS) as served:
        acknowledged_before, result = backup_under_load(sqlite_url, served, keys, target)
    assert result.returncode == 0, result.stderr
    assert f"backed up to {target}" in result.stdout and "integrity ok" in result.stdout

    # The file alone is the backup: checked, self-contained, private, no temporary left.
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert target.stat().st_mode & 0o077 == 0
    with sqlite3.connect(target) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)

    # Restore as the docs say: the server stopped, the backup copied to where the database is.
    restored = tmp_path / "restored" / "referral.db"
    restored.parent.mkdir()
    shutil.copyfile(target, restored)
    assert_restored(sqlite_url, f"sqlite:///{restored}", acknowledged_before, keys["admin"])
    with serve(f"sqlite:///{restored}", restored.parent, workers=1) as served:
        referral_id = sorted(acknowledged_before)[0]
        request = urllib.request.Request(
            f"{served.base}/v1/referrals/{referral_id}", headers=auth(keys["admin"])
        )
        with OPENER.open(request, timeout=30) as response:
            assert json.load(response)["id"] == referral_id


def test_backup_never_overwrites_without_force(sqlite_url, tmp_path):
    target = tmp_path / "backup.db"
    target.write_bytes(b"an older backup")
    refused = cli(sqlite_url, "db", "backup", str(target))
    assert refused.returncode == 1
    assert "exists; pass --force" in refused.stderr
    assert target.read_bytes() == b"an older backup"
    forced = cli(sqlite_url, "db", "backup", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    with sqlite3.connect(target) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_backup_of_a_missing_database_creates_nothing(tmp_path):
    missing = tmp_path / "missing.db"
    result = cli(f"sqlite:///{missing}", "db", "backup", str(tmp_path / "backup.db"))
    assert result.returncode == 1
    assert f"no SQLite database at {missing}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_backup_into_a_missing_directory_is_refused(sqlite_url, tmp_path):
    result = cli(sqlite_url, "db", "backup", str(tmp_path / "nope" / "backup.db"))
    assert result.returncode == 1
    assert "is not a directory" in result.stderr


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_backup_under_load_restores_with_pg_restore(postgres, postgres_template, tmp_path):
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        skip_or_fail("pg_dump/pg_restore are not on PATH")
    live_name = f"referral_backup_{uuid.uuid4().hex[:12]}"
    restored_name = f"referral_restored_{uuid.uuid4().hex[:12]}"
    live_url = postgres.create(live_name, template=postgres_template)
    try:
        keys = make_keys(live_url)
        target = tmp_path / "referral.dump"
        with serve(live_url, tmp_path, workers=2, threads=2, env=NO_LIMITS) as served:
            acknowledged_before, result = backup_under_load(live_url, served, keys, target)
        assert result.returncode == 0, result.stderr
        assert "pg_dump --format=custom" in result.stdout

        # Restore as the docs say: into a new, empty database, with pg_restore.
        restored_url = postgres.create(restored_name)
        libpq_url = make_url(restored_url).set(drivername="postgresql")
        restore = subprocess.run(
            ["pg_restore", "--exit-on-error", "--no-owner", "--dbname",
             libpq_url.render_as_string(hide_password=False), str(target)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        assert_restored(live_url, restored_url, acknowledged_before, keys["admin"])
    finally:
        postgres.drop(live_name)
        postgres.drop(restored_name)


def test_postgres_without_pg_dump_prints_guidance_and_fails(tmp_path):
    url = "postgresql+psycopg://backup:s3cret-pw@127.0.0.1:5432/referral"
    target = tmp_path / "referral.dump"
    # No pg_dump on PATH (and no server needed: it stops before connecting).
    result = cli(url, "db", "backup", str(target), env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "pg_dump --format=custom" in result.stderr and "pg_restore" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_password_goes_to_pg_dump_through_the_environment_only():
    url = make_url("postgresql+psycopg://backup:s3cret-pw@db.internal:5432/referral")
    dsn, env = _libpq(url)
    assert "s3cret-pw" not in dsn and dsn.startswith("postgresql://backup@db.internal:5432/")
    assert env["PGPASSWORD"] == "s3cret-pw"
    assert "s3cret-pw" not in pg_guidance(url, Path("x.dump"))
