"""Referral POSTs under fire: concurrent clients with idempotency keys and retries, while
gunicorn workers are killed with SIGKILL and, once, the whole server is killed and restarted.

Used by tests/test_faults.py (short form, in CI) and bench/faults.py (long form). Afterwards
``verify`` checks what a client was promised: every referral acknowledged with 201 is stored,
with the id it was given; no idempotency key produced two referrals; no referral exists
without the key that made it; and the database passes its own integrity checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.live import OPENER, free_port, wait_for

BODY: dict[str, Any] = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}
# Short enough that a claim left by a killed worker is taken over within the run.
STALE_SECONDS = 2
REQUEST_TIMEOUT = 15


@dataclass
class Server:
    """`referral serve` in its own process group, so a restart can kill all of it at once."""

    database_url: str
    workdir: Path
    workers: int
    threads: int
    process: subprocess.Popen | None = None
    base: str = ""
    starts: int = 0

    def start(self) -> None:
        port = free_port()
        script = Path(sys.executable).parent / "referral"
        env = {
            **os.environ,
            "REFERRAL_DATABASE_URL": self.database_url,
            "REFERRAL_IDEMPOTENCY_STALE_SECONDS": str(STALE_SECONDS),
            # Limits are not what is under test here; keep them out of the way.
            "REFERRAL_RATELIMIT_REFERRALS": "1000000 per minute",
        }
        self.starts += 1
        log = (self.workdir / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [str(script), "serve", "--bind", f"127.0.0.1:{port}", "--workers",
             str(self.workers), "--threads", str(self.threads), "--timeout", "30"],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_for(f"http://127.0.0.1:{port}/v1/specialties", self.process, 60)
        self.base = f"http://127.0.0.1:{port}"

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def kill_everything(self) -> None:
        """SIGKILL the master and every worker: no graceful anything."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_everything()

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.workdir.glob("server-*.log"))
        )


@dataclass
class Tally:
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> referral id
    attempts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    worker_kills: int = 0
    restarts: int = 0
    unfinished: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.attempts += 1
            self.statuses[what] += 1


def post(base: str, token: str, key: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}/v1/referrals",
        data=json.dumps(BODY).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Idempotency-Key": key},
        method="POST",
    )  # fmt: skip
    try:
        with OPENER.open(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def client(server: Server, token: str, tally: Tally, stop: threading.Event,
           give_up_after: float) -> None:  # fmt: skip
    """Send referrals one after another; retry each with its key until it is acknowledged."""
    rng = random.Random()
    while not stop.is_set():
        key = f"fault-{uuid.uuid4().hex}"
        deadline = time.monotonic() + give_up_after
        delay = 0.05
        while True:
            try:
                status, body = post(server.base, token, key)
            except Exception as exc:  # reset, refused, timed out: the server may be gone
                tally.count(type(exc).__name__)
                status, body = 0, None
            else:
                tally.count(str(status))
            if status == 201:
                with tally.lock:
                    tally.acknowledged[key] = body["id"]
                break
            if status not in (0, 409, 500, 502, 503, 504):
                raise AssertionError(f"unexpected answer {status}: {body}")
            if time.monotonic() > deadline:
                with tally.lock:
                    tally.unfinished.append(key)
                break
            time.sleep(delay + rng.random() * delay)
            delay = min(delay * 2, 1.0)


def run(
    server: Server,
    token: str,
    *,
    seconds: float,
    clients: int,
    kill_every: float,
    restart_at: float | None,
    min_acknowledged: int = 0,
    min_kills: int = 0,
    max_seconds: float | None = None,
) -> Tally:
    """Load for ``seconds`` while killing a random worker every ``kill_every`` seconds and,
    at ``restart_at`` seconds, the whole server (then starting it again on a new port).

    On a busy machine workers boot slowly: the load goes on past ``seconds`` until
    ``min_acknowledged`` referrals were acknowledged and ``min_kills`` workers killed, but
    never past ``max_seconds``."""
    limit = max(seconds, max_seconds or seconds)
    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(server, token, tally, stop, 60.0), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    started = time.monotonic()
    restarted = restart_at is None
    next_kill = started + kill_every
    acks_at_kill = 0
    while True:
        now = time.monotonic()
        elapsed = now - started
        enough = len(tally.acknowledged) >= min_acknowledged and tally.worker_kills >= min_kills
        if elapsed >= limit or (elapsed >= seconds and enough):
            break
        if not restarted and restart_at is not None and now - started >= restart_at:
            server.kill_everything()
            tally.restarts += 1
            time.sleep(0.5)  # clients meet a closed port for a moment
            server.start()
            restarted = True
        elif now >= next_kill and len(tally.acknowledged) >= acks_at_kill + 2:
            # Kills wait for some progress since the last one: on a slow machine workers
            # boot slowly, and killing each newborn would only measure starvation.
            pids = server.worker_pids()
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    tally.worker_kills += 1
                    acks_at_kill = len(tally.acknowledged)
            next_kill = now + kill_every
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    return tally


@dataclass
class Verdict:
    stored: int
    acknowledged: int
    missing: list[str]
    duplicated_keys: list[str]
    referrals_without_key: list[str]
    wrong_ids: list[str]
    integrity: list[str]
    integrity_checks: int  # how many ran: a check of nothing proves nothing

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.duplicated_keys or self.referrals_without_key
            or self.wrong_ids or self.integrity
        )  # fmt: skip


def verify(database_url: str, tally: Tally) -> Verdict:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            referral_ids = {row[0] for row in conn.execute(sa.text("SELECT id FROM referral"))}
            records = conn.execute(
                sa.text("SELECT key, referral_id, state FROM idempotency_record")
            ).all()
            integrity, checks = integrity_problems(conn)
    finally:
        engine.dispose()
    by_key = {key: referral_id for key, referral_id, _state in records}
    referred = Counter(referral_id for _key, referral_id, _state in records if referral_id)
    return Verdict(
        stored=len(referral_ids),
        acknowledged=len(tally.acknowledged),
        missing=sorted(rid for rid in tally.acknowledged.values() if rid not in referral_ids),
        duplicated_keys=sorted(rid for rid, n in referred.items() if n > 1),
        referrals_without_key=sorted(referral_ids - set(referred)),
        wrong_ids=sorted(key for key, rid in tally.acknowledged.items() if by_key.get(key) != rid),
        integrity=integrity,
        integrity_checks=checks,
    )


def integrity_problems(conn: sa.Connection) -> tuple[list[str], int]:
    problems: list[str] = []
    checks = 0
    if conn.dialect.name == "sqlite":
        result = [row[0] for row in conn.execute(sa.text("PRAGMA integrity_check"))]
        checks += 2
        if result != ["ok"]:
            problems.extend(f"integrity_check: {line}" for line in result)
        problems.extend(
            f"foreign_key_check: {tuple(row)}"
            for row in conn.execute(sa.text("PRAGMA foreign_key_check"))
        )
    else:
        # PostgreSQL enforces its constraints; check that its indexes agree with the tables.
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS amcheck"))
        indexes = conn.execute(
            sa.text(
                "SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam "
                "WHERE n.nspname = 'public' AND a.amname = 'btree'"
            )
        ).all()
        for oid, name in indexes:
            checks += 1
            try:
                with conn.begin_nested():
                    conn.execute(sa.text("SELECT bt_index_check(:oid, true)"), {"oid": oid})
            except sa.exc.DBAPIError as exc:
                problems.append(f"bt_index_check {name}: {exc.orig}")
    # Both: every referral has its creation event, every event its referral.
    orphans = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM referral r WHERE NOT EXISTS "
            "(SELECT 1 FROM referral_event e WHERE e.referral_id = r.id)"
        )
    ).scalar_one()
    if orphans:
        problems.append(f"{orphans} referrals without a creation event")
    half_done = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM idempotency_record WHERE state = 'done' AND "
            "(referral_id IS NULL OR referral_id NOT IN (SELECT id FROM referral))"
        )
    ).scalar_one()
    if half_done:
        problems.append(f"{half_done} completed idempotency records without their referral")
    return problems, checks + 2
