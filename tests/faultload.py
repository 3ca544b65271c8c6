"""Referral POSTs under fire: concurrent clients with idempotency keys and retries, while
gunicorn workers are killed with SIGKILL and, once, the whole server is killed and restarted.

Used by tests/test_faults.py (short form, in CI) and bench/faults.py (long form). Afterwards
``verify`` checks what a client was promised: every referral acknowledged with 201 is stored,
with the id it was given; no idempotency key produced two referrals; no referral exists
without the key that made it; no key is stuck (every record is a finished answer); and the
database passes its own integrity checks.

``holding_app`` is the service with one test hook, for servers that must hold a request in the
middle of its transaction (``Holds``): tests/test_faults.py kills a worker there,
tests/test_referrals_concurrency.py sends the same key again meanwhile.
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
REQUEST_TIMEOUT = 15
DEFAULT_APP = "referral:create_app()"


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
    # What gunicorn serves: the service, or e.g. "tests.faultload:holding_app()" (then
    # gunicorn is started as `referral serve` starts it, with the service's own config).
    app: str = DEFAULT_APP
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "REFERRAL_DATABASE_URL": self.database_url,
            # Limits are not what is under test here; keep them out of the way.
            "REFERRAL_RATELIMIT_REFERRALS": "1000000 per minute",
            **self.env,
        }
        options = ["--bind", f"127.0.0.1:{port}", "--workers", str(self.workers),
                   "--threads", str(self.threads), "--timeout", "30"]  # fmt: skip
        if self.app == DEFAULT_APP:
            argv = [str(Path(sys.executable).parent / "referral"), "serve", *options]
        else:
            argv = [sys.executable, "-m", "gunicorn", "--config",
                    "python:referral.ops.gunicorn_config", *options, self.app]  # fmt: skip
        self.starts += 1
        log = (self.workdir / f"server-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            argv, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
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
            # No 409: a retry that meets its first attempt still at work waits for it, and
            # one whose first attempt died finds nothing of it.
            if status not in (0, 500, 502, 503, 504):
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
    # Keys whose record is not a finished answer (what a killed worker's claim used to be).
    stuck_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.duplicated_keys or self.referrals_without_key
            or self.wrong_ids or self.integrity or self.stuck_keys
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
        stuck_keys=sorted(key for key, rid, state in records if state != "done" or not rid),
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


# --- a request held in the middle of its transaction ----------------------------------------

HOLDING_APP = "tests.faultload:holding_app()"
HOLD_PREFIX = "hold-"
HOLD_DIR_ENV = "REFERRAL_TEST_HOLD_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent


def holding_app() -> Any:
    """The service (``create_app()``) with one test hook: the first POST whose
    Idempotency-Key starts with HOLD_PREFIX stops right after its first write, the insert of
    its idempotency record, until the test releases it. It is then in the middle of its
    transaction: the record written, nothing committed (on SQLite the write lock held).

    Files in $REFERRAL_TEST_HOLD_DIR (``Holds`` reads and writes them): ``insert-<n>-<key>``
    for each request with such a key reaching its insert, ``held-<key>`` (the holding worker's
    pid) once one is held; the test writes ``release-<key>``."""
    from sqlalchemy.engine import Engine

    from referral import create_app

    folder = Path(os.environ[HOLD_DIR_ENV])

    def held_key(statement: str, parameters: Any) -> str | None:
        if not statement.startswith("INSERT INTO idempotency_record"):
            return None
        values = parameters.values() if isinstance(parameters, dict) else parameters
        return next((v for v in values if isinstance(v, str) and v.startswith(HOLD_PREFIX)), None)

    def arriving(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        key = held_key(statement, parameters)
        if key is not None:
            (folder / f"insert-{uuid.uuid4().hex}-{key}").write_text(str(os.getpid()))

    def hold(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        key = held_key(statement, parameters)
        if key is None:
            return
        try:
            with (folder / f"held-{key}").open("x") as marker:  # the first request only
                marker.write(str(os.getpid()))
        except FileExistsError:
            return
        release = folder / f"release-{key}"
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    sa.event.listen(Engine, "before_cursor_execute", arriving)
    sa.event.listen(Engine, "after_cursor_execute", hold)
    return create_app()


def holding_server(database_url: str, workdir: Path, *, workers: int, threads: int) -> Server:
    """A Server of ``holding_app``, its hold files in ``workdir/holds``."""
    folder = workdir / "holds"
    folder.mkdir(exist_ok=True)
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        HOLD_DIR_ENV: str(folder),
        "PYTHONPATH": path,  # gunicorn runs in workdir: the tests package is found here
        # A request waiting for a held one's write lock (SQLite) must outwait the test.
        "REFERRAL_SQLITE_BUSY_TIMEOUT_MS": "60000",
    }
    return Server(database_url, workdir, workers, threads, app=HOLDING_APP, env=env)


@dataclass(frozen=True)
class Holds:
    """The test's side of ``holding_app``'s files."""

    folder: Path

    @classmethod
    def of(cls, server: Server) -> Holds:
        return cls(Path(server.env[HOLD_DIR_ENV]))

    def arrivals(self, key: str) -> int:
        """How many requests with ``key`` reached the insert of its record."""
        return len(list(self.folder.glob(f"insert-*-{key}")))

    def wait(self, what: str, done: Any, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {seconds} s for {what}")
            time.sleep(0.02)

    def held_pid(self, key: str) -> int:
        """Wait until a request with ``key`` is held; the pid of its worker."""
        marker = self.folder / f"held-{key}"
        self.wait(f"a request with {key} to be held", marker.exists)
        self.wait("the marker's pid", lambda: marker.read_text().strip() != "")
        return int(marker.read_text())

    def release(self, key: str) -> None:
        (self.folder / f"release-{key}").touch()
