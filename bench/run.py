"""`make bench`: the service against what a user would pick instead, in one run.

For each size (100,000 clinics by default; targets are judged at the largest size run):

1. **Directories.** ``bench.data`` makes N clinics (deterministic). A fresh database (SQLite,
   or PostgreSQL with ``--database-url``) is made by ``referral seed``, the CSV goes through
   ``referral import FILE`` (timed), facts (hours, new patients, ...) are set in the
   ``location`` table, and ``referral keys create`` makes an app key and an admin key. A second
   directory of N clinics with ~56% of them (~67,000 locations at 100,000) packed into a
   1-degree box is imported the same way.
2. **The PostGIS peer** (bench/peer.py): the service's rows (active located locations, their
   clinic's offered specialty codes) copied from its tables into a throwaway PostgreSQL
   database with PostGIS (bench/peerdb.py; the extension is installed with apt-get when it is
   missing). **The bare Flask ping** (bench/ping.py). Both are served by gunicorn with the
   service's workers, threads, keep-alive and one listening socket per worker.
3. **Interleaved rounds** on the first directory: ping, ``/healthz``, nearest, peer nearest,
   referral POST, the plain clinic list, the ``open_now`` list and nearest again while an admin
   edits a clinic every second (PATCH with If-Match), back to back, wrk with 16 keep-alive
   connections; each pair swaps its order every other round. Nearest origins come from a
   shuffled file of distinct coordinates, each run taking the next stretch (the peer gets the
   same stretch as the service in its round): no origin is asked twice. Ratios are taken
   within a round and the median over rounds is reported; p50/p99 are wrk's (``--latency``).
4. **Scenarios**: worker RSS after the load; a ~25 MB dry-run import POSTed to the running
   service (the serving worker's peak RSS from /proc, its VmHWM reset just before); then
   rounds on the clustered directory, nearest with origins inside the box against spread
   origins.
5. **One table** of targets, figures and PASS/MISS. ``--json FILE`` writes every figure.

The service is used only through its command line, its HTTP API, its tables and its JSON
logs, never its Python modules, so the bench keeps working while its internals change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(REPO))

from bench import data, peerdb, servers  # noqa: E402
from bench.load import Cursor, Load, lua_script, run_wrk, write_lines  # noqa: E402

FULL_SIZES = (100_000,)
QUICK_SIZES = (2_000,)
TARGET_SIZE = 100_000
DATABASE_ENV = "REFERRAL_BENCH_DATABASE_URL"
PEER_DATABASE_ENV = "REFERRAL_BENCH_PEER_DATABASE_URL"
LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Limits no load here can reach: each request pays for the limiter's bookkeeping (a Redis
# round trip), none is ever refused.
HIGH_LIMIT = "1000000000 per minute"
# ~67,000 of the 120,000 locations of 100,000 clinics in one 1-degree box.
CLUSTER_SHARE = 67_000 / 120_000
NEAREST_QUERY = f"&specialty={data.NEAREST_SPECIALTY}&limit=10"
LIST_PAGES = 50  # the list runs page through the first pages (page_size 20, the default)
EDITED_CLINICS = 20
# A peer's k-th distance shorter than the service's by more than this: the service missed a
# location (both distances are rounded to metres).
AGREEMENT_KM = 0.002

# Targets, at 100,000 clinics.
NEAREST_PEER_MIN = 1.5
NEAREST_HEALTHZ_MIN = 0.6
HEALTHZ_PING_MIN = 0.8
OPEN_NOW_P50_MAX = 3.0
CLUSTER_P50_MAX = 3.0
EDITS_P99_MAX = 2.0
DRY_RUN_ADDED_MB_MAX = 200.0
DRY_RUN_ANSWER_MB_MAX = 1.0
REFERRAL_HEALTHZ_MIN = 0.3
RSS_MAX_MB = 150.0

# The runs of a round: pairs compared with each other, in this order (swapped every other
# round); "nearest_edits" comes last, followed by a pause (the edits' index updates).
MAIN_PAIRS = (("ping", "healthz"), ("nearest", "peer"), ("referral",), ("list", "open_now"))
CLUSTER_PAIRS = (("cluster_inside", "cluster_spread"),)
LABELS = {
    "ping": "bare Flask ping GET /ping",
    "healthz": "GET /healthz",
    "nearest": "GET /v1/locations/nearest",
    "peer": "PostGIS peer GET /nearest",
    "referral": "POST /v1/referrals",
    "list": "GET /v1/clinics",
    "open_now": "GET /v1/clinics?open_now=true",
    "nearest_edits": "nearest, a clinic edited every second",
    "cluster_inside": "nearest, clustered directory, origins in the box",
    "cluster_spread": "nearest, clustered directory, spread origins",
}


@dataclass
class Options:
    sizes: tuple[int, ...]
    database_url: str | None
    peer_database_url: str
    rounds: int
    duration: float
    warmup: float
    settle: float
    workers: int
    threads: int
    connections: int
    wrk_threads: int
    ratelimit_storage: str
    import_bytes: int
    origins: int
    keep: bool
    json_path: Path | None
    quick: bool


@dataclass
class SizeResult:
    size: int
    rows: int = 0
    import_seconds: float = 0.0
    cluster_rows: int = 0
    cluster_in_box: int = 0
    cluster_import_seconds: float = 0.0
    peer_rows: int = 0
    peer_load_seconds: float = 0.0
    postgis: str = ""
    # Round by round: {run name: Load as a dict}; edits: the editor's tally per round.
    rounds: list[dict[str, Any]] = field(default_factory=list)
    cluster_rounds: list[dict[str, Any]] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    rss_start_mb: list[float] = field(default_factory=list)  # workers ready, before the load
    rss_mb: list[float] = field(default_factory=list)  # after the load
    requests_per_worker: list[int] = field(default_factory=list)
    dry_run: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    origins_repeated: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- prerequisites ------------------------------------------------------------------------


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit(
            "wrk (the load generator) is not installed. On Debian/Ubuntu: sudo apt-get install wrk"
        )
    return path


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis(url: str) -> None:
    """The rate limits' storage: start the local Redis (as CI does) when it is down."""
    parsed = urlsplit(url)
    if parsed.scheme != "redis":
        return  # memory:// or another storage: nothing to start
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if _redis_answers(host, port):
        return
    if host not in ("127.0.0.1", "localhost") or shutil.which("redis-server") is None:
        sys.exit(f"Redis at {host}:{port} does not answer (apt-get install redis-server)")
    say(f"starting Redis on {host}:{port}")
    for folder in ("/var/lib/redis", "/var/log/redis"):
        os.makedirs(folder, exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port",
         str(port), "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
         "--logfile", "/var/log/redis/ci.log"],
        check=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not _redis_answers(host, port):
        if time.monotonic() > deadline:
            sys.exit("Redis did not start")
        time.sleep(0.2)


# ---- databases ----------------------------------------------------------------------------


class Databases:
    """The service's throwaway databases: SQLite files in the work folder, or databases made
    on the PostgreSQL server that ``url`` names (dropped at the end unless kept)."""

    def __init__(self, url: str | None, workdir: Path, keep: bool) -> None:
        self.workdir = workdir
        self.keep = keep
        self.url = make_url(url) if url else None
        self.made: list[str] = []
        self.admin: sa.Engine | None = None
        if self.url is not None:
            if not self.url.get_backend_name().startswith("postgresql"):
                sys.exit(f"--database-url: PostgreSQL or nothing (SQLite), not {self.url}")
            self.admin = sa.create_engine(
                self.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
            )

    def create(self, label: str) -> str:
        if self.url is None or self.admin is None:
            return f"sqlite:///{self.workdir / f'{label}.db'}"
        name = f"referral_bench_{label}_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.made.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self) -> None:
        if self.admin is None:
            return
        if self.keep:
            say(f"kept databases: {', '.join(self.made)}")
        else:
            with self.admin.connect() as conn:
                for name in self.made:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()

    def version(self) -> str:
        if self.admin is None:
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        with self.admin.connect() as conn:
            return f"PostgreSQL {conn.execute(sa.text('SHOW server_version')).scalar()}"


# ---- the service, through its command line and tables -------------------------------------


def referral(url: str, *args: str) -> str:
    """``referral ARGS`` on the database ``url``; its standard output."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "referral"), *args],
        env={**os.environ, "REFERRAL_DATABASE_URL": url},
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"referral {' '.join(args)} exited with {done.returncode}: "
            f"{(done.stderr or done.stdout)[-2000:]}"
        )
    return done.stdout


def timed_import(url: str, path: Path) -> float:
    """``referral seed`` (migrations, the vocabularies, the 36 real clinics), then seconds of
    ``referral import FILE`` (process start included, as an operator runs it)."""
    referral(url, "seed")
    started = time.perf_counter()
    referral(url, "import", str(path))
    return time.perf_counter() - started


def set_facts(url: str) -> None:
    """Facts for the imported locations (the import file has no columns for them), written
    to the ``location`` table as an edit would be: a new directory revision, the rows stamped
    with it and their version bumped. Half accept new patients (the others known not to), a
    quarter offer telehealth, a third have weekday hours, half speak en and es."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    weekdays = {day: [["08:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
    json_param = "CAST(:value AS json)" if engine.dialect.name == "postgresql" else ":value"
    mine = "seed_key IS NULL"  # the seeded locations keep their own facts
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE directory_revision SET revision = revision + 1"))
        revision = conn.execute(sa.text("SELECT MAX(revision) FROM directory_revision")).scalar()
        stamp = "revision = :revision, version = version + 1"
        steps: list[tuple[str, dict[str, Any]]] = [
            (f"accepting_new_patients = :yes, languages = {json_param} WHERE {mine} AND id % 2 = 0",
             {"yes": True, "value": json.dumps(["en", "es"])}),
            (f"accepting_new_patients = :no WHERE {mine} AND id % 2 = 1", {"no": False}),
            (f"telehealth = :yes WHERE {mine} AND id % 4 = 0", {"yes": True}),
            (f"opening_hours = {json_param} WHERE {mine} AND id % 3 = 0",
             {"value": json.dumps(weekdays)}),
        ]  # fmt: skip
        for assignment, params in steps:
            conn.execute(
                sa.text(f"UPDATE location SET {stamp}, {assignment}"),
                {**params, "revision": revision},
            )
    engine.dispose()


def create_key(url: str, name: str, scopes: str) -> str:
    """``referral keys create``: the key is the last line of its output."""
    output = referral(url, "keys", "create", "--name", name, "--scopes", scopes)
    return output.strip().splitlines()[-1].strip()


def build_directory(
    label: str, directory: data.Directory, databases: Databases, workdir: Path
) -> tuple[str, float]:
    path = workdir / f"{label}.csv"
    path.write_bytes(directory.csv_bytes())
    url = databases.create(label)
    say(f"  {label}: importing {len(directory.rows):,} rows with `referral import`")
    seconds = timed_import(url, path)
    say(f"  {label}: imported in {seconds:.1f} s")
    return url, seconds


# ---- HTTP ---------------------------------------------------------------------------------


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with servers.OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Editor(threading.Thread):
    """An admin editing a clinic every ``interval`` seconds through the API: GET it for its
    ETag, then PATCH its offered specialties with If-Match, adding or removing the one every
    nearest query asks for (so the nearest answers change), cycling over ``clinic_ids``."""

    def __init__(self, base: str, key: str, clinic_ids: Sequence[int], interval: float) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.key = key
        self.clinic_ids = list(clinic_ids)
        self.interval = interval
        self.stopping = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.seconds: list[float] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        # An edit a second whatever the server's latency: each in a thread of its own (on
        # different clinics, so they never race each other for one ETag).
        due = time.monotonic()
        number = 0
        while not self.stopping.wait(max(0.0, due - time.monotonic())):
            due += self.interval
            clinic = self.clinic_ids[number % len(self.clinic_ids)]
            number += 1
            edit = threading.Thread(target=self.timed, args=(clinic,), daemon=True)
            edit.start()
            self.threads.append(edit)

    def timed(self, clinic_id: int) -> None:
        started = time.perf_counter()
        try:
            status = self.edit(clinic_id)
        except OSError:
            status = 0
        with self.lock:
            self.statuses[status] += 1
            self.seconds.append(time.perf_counter() - started)

    def edit(self, clinic_id: int) -> int:
        url = f"{self.base}/v1/clinics/{clinic_id}"
        status, headers, body = http("GET", url)
        if status != 200:
            return status
        offered = set(json.loads(body)["specialties"])
        offered ^= {data.NEAREST_SPECIALTY}
        status, _, _ = http(
            "PATCH",
            url,
            body=json.dumps({"specialties": sorted(offered)}).encode(),
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/json",
                "If-Match": headers.get("ETag", ""),
            },
        )
        return status

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(timeout=60)
        for edit in self.threads:
            edit.join(timeout=120)
        return {
            "edits": sum(self.statuses.values()),
            "ok": self.statuses.get(200, 0),
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "mean_ms": statistics.fmean(self.seconds) * 1000 if self.seconds else 0.0,
        }


# ---- runs ---------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    server: servers.Server
    script: Path
    cursor: Cursor | None = None  # a file of origins or bodies: each run its own stretch
    headers: dict[str, str] = field(default_factory=dict)
    # Measured one request at a time instead of with wrk (an endpoint too slow for a run of
    # a few seconds at 16 connections: its queue would take minutes to drain).
    paths: list[str] = field(default_factory=list)
    one_at_a_time: bool = False


def execute(run: Run, seconds: float, options: Options, start: int | None = None) -> Load:
    if start is None and run.cursor is not None:
        start = run.cursor.position
    run.server.check()
    if run.one_at_a_time:
        return one_at_a_time(run, seconds)
    load = run_wrk(run.server.base, run.script, seconds, connections=options.connections,
                   threads=options.wrk_threads, start=start)  # fmt: skip
    load.drain_seconds = run.server.drain()
    if load.drain_seconds > 10:
        say(f"  ({run.name}: the server needed {load.drain_seconds:.0f} s to finish the "
            "requests queued when wrk stopped)")  # fmt: skip
    return load


def one_at_a_time(run: Run, seconds: float, minimum: int = 3) -> Load:
    """GET ``run.paths`` in turn on one connection for ``seconds`` (at least ``minimum``
    requests): latencies without queueing."""
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    while len(latencies) < minimum or time.perf_counter() - started < seconds:
        path = run.paths[len(latencies) % len(run.paths)]
        begun = time.perf_counter()
        try:
            status, _, _ = http("GET", f"{run.server.base}{path}", timeout=600)
        except OSError:
            status = 0
        latencies.append(time.perf_counter() - begun)
        errors += not 200 <= status < 400
    elapsed = time.perf_counter() - started
    ms = sorted(latency * 1000 for latency in latencies)

    def percentile(share: float) -> float:
        return ms[min(len(ms) - 1, round(share * (len(ms) - 1)))]

    return Load(len(ms), elapsed, errors, statistics.median(ms), percentile(0.9),
                percentile(0.99), ms[-1], connections=1)  # fmt: skip


def execute_pair(runs: Sequence[Run], seconds: float, options: Options) -> dict[str, Load]:
    """Runs one after the other. Runs sharing a cursor (the service's and the peer's nearest)
    send the same stretch of it; the cursor then moves past the longer one."""
    loads: dict[str, Load] = {}
    starts = {id(run.cursor): run.cursor.position for run in runs if run.cursor is not None}
    for run in runs:
        start = starts[id(run.cursor)] if run.cursor is not None else None
        loads[run.name] = execute(run, seconds, options, start)
    for cursor in {id(run.cursor): run.cursor for run in runs if run.cursor}.values():
        longest = max(
            (loads[run.name] for run in runs if run.cursor is cursor), key=lambda x: x.requests
        )
        cursor.take(longest, options.connections)
    return loads


def rounds_of(
    pairs: Sequence[tuple[str, ...]],
    runs: dict[str, Run],
    options: Options,
    *,
    after: Callable[[int], dict[str, Load]] | None = None,
) -> list[dict[str, Any]]:
    """Warm-up (each run once, ``options.warmup`` s), then ``options.rounds`` rounds."""
    present = [tuple(name for name in pair if name in runs) for pair in pairs]
    present = [pair for pair in present if pair]
    say(f"  warm-up: {options.warmup:.0f} s per endpoint")
    for pair in present:
        execute_pair([runs[name] for name in pair], options.warmup, options)
    results = []
    for number in range(1, options.rounds + 1):
        loads: dict[str, Load] = {}
        for pair in present:
            ordered = pair if number % 2 else tuple(reversed(pair))
            loads.update(execute_pair([runs[name] for name in ordered], options.duration, options))
        if after is not None:
            loads.update(after(number))
        say(f"  round {number}: " + ", ".join(
            f"{name} {load.rps:,.0f}/s p50 {load.p50_ms:.1f} p99 {load.p99_ms:.1f}"
            + (f" ({load.errors} errors)" if load.errors else "")
            for name, load in loads.items()
        ))  # fmt: skip
        results.append({name: asdict(load) for name, load in loads.items()})
    return results


# ---- one size -----------------------------------------------------------------------------


@dataclass
class Files:
    """The load's inputs, shared by every size (each size its own cursors)."""

    spread: Path
    spread_count: int
    inside: Path
    inside_count: int
    bodies: Path
    bodies_count: int
    agreement: list[tuple[float, float]]


def make_files(workdir: Path, options: Options) -> Files:
    say(f"origins: {options.origins:,} spread, {options.origins // 2:,} in the cluster box")
    spread = data.spread_origins(options.origins)
    inside = data.box_origins(options.origins // 2, data.CLUSTER_BOX)
    bodies = data.referral_bodies(max(2_000, options.origins // 10))
    return Files(
        spread=write_lines(workdir / "origins-spread.txt", (f"lat={a}&lon={o}" for a, o in spread)),
        spread_count=len(spread),
        inside=write_lines(workdir / "origins-box.txt", (f"lat={a}&lon={o}" for a, o in inside)),
        inside_count=len(inside),
        bodies=write_lines(workdir / "referral-bodies.txt", bodies),
        bodies_count=len(bodies),
        # Not in the load's file (another seed): compared between the service and the peer.
        agreement=data.spread_origins(50, seed=1234),
    )


def server_env(options: Options, url: str) -> dict[str, str]:
    return {
        "REFERRAL_DATABASE_URL": url,
        # One listening socket per worker (what REUSE_PORT=auto gives where the kernel has
        # net.ipv4.tcp_migrate_req=1): the kernel spreads wrk's connections over the workers.
        "REFERRAL_REUSE_PORT": "true",
        "REFERRAL_RATELIMIT_STORAGE_URI": options.ratelimit_storage,
        "REFERRAL_RATELIMIT_PUBLIC": HIGH_LIMIT,
        "REFERRAL_RATELIMIT_REFERRALS": HIGH_LIMIT,
        "REFERRAL_RATELIMIT_GEOCODE": HIGH_LIMIT,
        # The dry run of a 25 MB file may take longer than gunicorn's default 30 s.
        "REFERRAL_TIMEOUT": "600",
    }


def run_size(
    size: int, databases: Databases, workdir: Path, files: Files, options: Options
) -> SizeResult:
    result = SizeResult(size)
    folder = workdir / f"size-{size}"
    folder.mkdir()
    say(f"size {size:,}: making the directories")
    directory = data.directory(size)
    clustered = data.directory(size, cluster=data.CLUSTER_BOX, cluster_share=CLUSTER_SHARE)
    result.rows, result.cluster_rows = len(directory.rows), len(clustered.rows)
    result.cluster_in_box = clustered.located_in(data.CLUSTER_BOX)
    url, result.import_seconds = build_directory(f"directory-{size}", directory, databases, folder)
    set_facts(url)
    app_key = create_key(url, "bench-app", "referrals:write")
    admin_key = create_key(url, "bench-admin", "admin")
    big = folder / "dry-run.csv"
    big.write_bytes(data.import_file(directory.rows, options.import_bytes))
    cluster_url = ""
    try:
        cluster_url, result.cluster_import_seconds = build_directory(
            f"clustered-{size}", clustered, databases, folder
        )
    except Exception as exc:  # measure the rest all the same
        failed(result, "clustered directory", exc)
    peer = peerdb.PeerDatabase(options.peer_database_url)
    try:
        peer_url = load_peer(peer, url, result)
        spread = Cursor(files.spread_count)
        try:
            main_phase(result, url, app_key, admin_key, peer_url, big, spread, folder, files,
                       options)  # fmt: skip
        except Exception as exc:
            failed(result, "main rounds", exc)
        if cluster_url:
            try:
                cluster_phase(result, cluster_url, spread, folder, files, options)
            except Exception as exc:
                failed(result, "clustered rounds", exc)
        result.origins_repeated = spread.repeated
    finally:
        if options.keep:
            say(f"kept the peer database {peer.name}")
        else:
            peer.drop()
    return result


def failed(result: SizeResult, what: str, exc: BaseException) -> None:
    message = f"{what}: {type(exc).__name__}: {exc}"
    result.failures.append(message)
    say(f"  FAILED {message[:3000]}")


def load_peer(peer: peerdb.PeerDatabase, url: str, result: SizeResult) -> str | None:
    """The peer's database, loaded from the service's; None (and a note) without PostGIS."""
    say("  the PostGIS peer: copying the service's rows")
    try:
        peer.create()
        loaded = peer.load(peerdb.service_rows(url))
    except (peerdb.PostgisMissing, psycopg.OperationalError) as exc:
        result.notes.append(f"no PostGIS peer: {exc}")
        say(f"  NOTE: no PostGIS peer: {exc}")
        return None
    result.peer_rows, result.peer_load_seconds = loaded.rows, loaded.seconds
    installed = "" if loaded.postgis == "available" else f" ({loaded.postgis})"
    result.postgis = loaded.version + installed
    say(f"  peer: {loaded.rows:,} rows loaded and indexed in {loaded.seconds:.1f} s "
        f"({result.postgis})")  # fmt: skip
    return peerdb.libpq_url(peer.url)


def main_phase(
    result: SizeResult,
    url: str,
    app_key: str,
    admin_key: str,
    peer_url: str | None,
    big: Path,
    spread: Cursor,
    folder: Path,
    files: Files,
    options: Options,
) -> None:
    workers, threads = options.workers, options.threads
    with ExitStack() as stack:
        say("  starting the service, the bare Flask ping and the peer")
        service = stack.enter_context(servers.running(
            "service", servers.service_argv("{bind}", workers, threads), folder,
            env=server_env(options, url), health="/healthz", workers=workers,
        ))  # fmt: skip
        ping = stack.enter_context(servers.running(
            "ping", servers.wsgi_argv("bench.ping:app", "{bind}", workers, threads), folder,
            env={}, health="/ping", workers=workers,
        ))  # fmt: skip
        peer = None
        if peer_url is not None:
            peer = stack.enter_context(servers.running(
                "peer", servers.wsgi_argv("bench.peer:create_app()", "{bind}", workers, threads),
                folder, env={"BENCH_PEER_DATABASE_URL": peer_url}, health="/healthz",
                workers=workers,
            ))  # fmt: skip
        scripts = folder / "lua"
        scripts.mkdir()
        bodies = Cursor(files.bodies_count)
        runs = {
            "ping": Run("ping", ping, lua_script(scripts / "ping.lua", single(scripts),
                                                 prefix="/ping")),
            "healthz": Run("healthz", service, lua_script(scripts / "healthz.lua",
                                                          single(scripts), prefix="/healthz")),
            "nearest": Run("nearest", service, lua_script(
                scripts / "nearest.lua", files.spread, prefix="/v1/locations/nearest?",
                suffix=NEAREST_QUERY), spread),
        }  # fmt: skip
        post = {"Content-Type": "application/json", "Authorization": f"Bearer {app_key}"}
        runs["referral"] = Run("referral", service, lua_script(
            scripts / "referral.lua", files.bodies, method="POST", prefix="/v1/referrals",
            headers=post), bodies, headers=post)  # fmt: skip
        if peer is not None:
            runs["peer"] = Run("peer", peer, lua_script(
                scripts / "peer.lua", files.spread, prefix="/nearest?", suffix=NEAREST_QUERY),
                spread)  # fmt: skip
        for name, query in (("list", ""), ("open_now", "open_now=true&")):
            numbers = [f"page={n}" for n in range(1, list_pages(service, query) + 1)]
            pages = write_lines(scripts / f"{name}-pages.txt", numbers)
            runs[name] = Run(name, service, lua_script(
                scripts / f"{name}.lua", pages, prefix=f"/v1/clinics?{query}"),
                paths=[f"/v1/clinics?{query}{page}" for page in numbers])  # fmt: skip
        result.rss_start_mb = [servers.memory_mb(pid)["VmRSS"] for pid in service.workers()]
        seconds = smoke(result, runs, files)
        slowest = max(seconds.get("list", 0.0), seconds.get("open_now", 0.0))
        # What a request would wait at 16 connections on this many CPUs: past half a run, too
        # few requests would finish in a run (and the queue would take minutes to drain).
        if slowest * options.connections / (os.cpu_count() or 1) > options.duration / 2:
            note = (f"a clinic list took {slowest:.2f} s to answer alone: both lists are "
                    "measured one request at a time (no queueing), not with wrk")  # fmt: skip
            result.notes.append(note)
            say(f"  NOTE: {note}")
            runs["list"].one_at_a_time = runs["open_now"].one_at_a_time = True
        agreement(result, service, peer, files.agreement)
        clinic_ids = bench_clinics(service)

        def edited(number: int) -> dict[str, Load]:
            editor = Editor(service.base, admin_key, clinic_ids, 1.0)
            editor.start()
            try:
                loads = execute_pair([runs["nearest"]], options.duration, options)
            finally:
                tally = editor.stop()
            result.edits.append(tally)
            time.sleep(options.settle)  # the edits' index updates, before the next round
            service.drain()
            say(f"  round {number}: {tally['ok']} of {tally['edits']} edits went through "
                f"({tally['statuses']}), {tally['mean_ms']:.0f} ms each")  # fmt: skip
            return {"nearest_edits": loads["nearest"]}

        result.rounds = rounds_of(MAIN_PAIRS, runs, options, after=edited)
        result.rss_mb = [servers.memory_mb(pid)["VmRSS"] for pid in service.workers()]
        say(f"  worker RSS after the load: {' / '.join(f'{mb:.0f}' for mb in result.rss_mb)} MB")
        try:
            result.dry_run = dry_run(service, url, admin_key, big)
        except Exception as exc:
            failed(result, "dry run", exc)
    result.requests_per_worker = requests_per_worker(service.output())
    say(f"  requests per worker: {' / '.join(f'{n:,}' for n in result.requests_per_worker)}")


def single(folder: Path) -> Path:
    """A lines file of one empty line: the same path every time."""
    path = folder / "single.txt"
    return path if path.exists() else write_lines(path, [""])


def list_pages(service: servers.Server, query: str) -> int:
    """Pages of the clinic list to walk (at least one, at most LIST_PAGES)."""
    status, headers, _ = http("GET", f"{service.base}/v1/clinics?{query}page=1")
    try:
        total_pages = int(json.loads(headers.get("X-Pagination", "{}")).get("total_pages", 1))
    except ValueError:
        total_pages = 1
    return max(1, min(LIST_PAGES, total_pages)) if status == 200 else 1


def bench_clinics(service: servers.Server) -> list[int]:
    """Ids of synthetic clinics for the editor, from the public list."""
    name = quote(data.CLINIC_PREFIX)
    status, _, body = http("GET", f"{service.base}/v1/clinics?q={name}&page_size={EDITED_CLINICS}")
    if status != 200:
        raise RuntimeError(f"GET /v1/clinics?q=... answered {status}: {body[:300]!r}")
    return [int(clinic["id"]) for clinic in json.loads(body)]


def smoke(result: SizeResult, runs: dict[str, Run], files: Files) -> dict[str, float]:
    """One request of each kind before the load, timed: an endpoint that misbehaves is noted
    (its wrk runs count errors) and the bench carries on."""
    lat, lon = files.agreement[0]
    nearest = f"?lat={lat}&lon={lon}{NEAREST_QUERY}"
    checks = {
        "ping": ("GET", "/ping", None),
        "healthz": ("GET", "/healthz", None),
        "nearest": ("GET", f"/v1/locations/nearest{nearest}", None),
        "peer": ("GET", f"/nearest{nearest}", None),
        "referral": ("POST", "/v1/referrals", data.referral_bodies(1, seed=5)[0].encode()),
        "list": ("GET", "/v1/clinics", None),
        "open_now": ("GET", "/v1/clinics?open_now=true", None),
    }
    seconds = {}
    for name, (method, path, body) in checks.items():
        if name not in runs:
            continue
        run = runs[name]
        started = time.perf_counter()
        try:
            status, _, answer = http(method, f"{run.server.base}{path}", body=body,
                                     headers=run.headers, timeout=600)  # fmt: skip
        except OSError as exc:
            status, answer = 0, str(exc).encode()
        seconds[name] = time.perf_counter() - started
        result.smoke[name] = f"{status} in {seconds[name] * 1000:.0f} ms"
        if not 200 <= status < 300:
            note = f"{LABELS[name]} answered {status} before the load: {answer[:300]!r}"
            result.notes.append(note)
            say(f"  NOTE: {note}")
    return seconds


def agreement(
    result: SizeResult,
    service: servers.Server,
    peer: servers.Server | None,
    origins: Sequence[tuple[float, float]],
) -> None:
    """Whether the service and the peer name the same 10 locations for the same origins
    (not a target: a check that the two answer the same question)."""
    if peer is None:
        return
    same = reordered = compared = 0
    worst_km = 0.0  # the largest gap between the k-th distances of the two answers
    differences: list[str] = []
    closer: list[str] = []  # origins where the peer found a location the service missed
    for lat, lon in origins:
        query = f"?lat={lat}&lon={lon}{NEAREST_QUERY}"
        try:
            status, _, body = http("GET", f"{service.base}/v1/locations/nearest{query}")
            peer_status, _, peer_body = http("GET", f"{peer.base}/nearest{query}")
            if status != 200 or peer_status != 200:
                differences.append(f"({lat}, {lon}): HTTP {status} / peer {peer_status}")
                continue
            mine = [(h["location"]["id"], h["distance_km"]) for h in json.loads(body)["results"]]
            hits = json.loads(peer_body)["results"]
            theirs = [(h["location_id"], h["distance_km"]) for h in hits]
        except (OSError, KeyError, TypeError, ValueError) as exc:
            differences.append(f"({lat}, {lon}): {type(exc).__name__}: {exc}")
            continue
        compared += 1
        ids, peer_ids = [i for i, _ in mine], [i for i, _ in theirs]
        # Both report the geodesic on the WGS84 spheroid; the peer orders by `<->`, the
        # distance on a sphere, so near-ties may come in another order or swap the 10th.
        distances = sorted(d for _, d in mine)
        peer_distances = sorted(d for _, d in theirs)
        gaps = [p - m for m, p in zip(distances, peer_distances, strict=False)]
        worst_km = max([worst_km, *(abs(gap) for gap in gaps)])
        same += ids == peer_ids
        reordered += ids != peer_ids and set(ids) == set(peer_ids)
        if len(theirs) > len(mine) or any(gap < -AGREEMENT_KM for gap in gaps):
            closer.append(f"({lat}, {lon}): {ids} vs {peer_ids}")
        elif ids != peer_ids and len(differences) < 5:
            differences.append(f"({lat}, {lon}): {ids} vs {peer_ids}")
    result.agreement = {"origins": len(origins), "compared": compared, "same": same,
                        "reordered": reordered, "peer_closer": len(closer),
                        "max_kth_distance_gap_km": round(worst_km, 4),
                        "differences": differences, "closer": closer[:5]}  # fmt: skip
    line = agreement_line(result.agreement)
    say(f"  {line}")
    if closer or compared < len(origins):
        result.notes.append(
            f"nearest disagrees with the peer: {len(closer)} of {len(origins)} origins got a "
            f"closer location from the peer, {len(origins) - compared} could not be compared: "
            + "; ".join([*closer, *differences][:3])
        )


def agreement_line(a: dict[str, Any]) -> str:
    other = a["compared"] - a["same"] - a["reordered"] - a["peer_closer"]
    return (
        f"service and peer on {a['origins']} origins: the same 10 locations in the same order "
        f"for {a['same']}, in another order for {a['reordered']}, another farther location "
        f"from the peer for {other}, a closer one from the peer for {a['peer_closer']}; "
        f"k-th distances within {a['max_kth_distance_gap_km'] * 1000:,.0f} m"
    )


def dry_run(service: servers.Server, url: str, admin_key: str, big: Path) -> dict[str, Any]:
    """POST the big file to ``/v1/admin/imports?dry_run=true`` on the running service; the
    worker that served it is found in the access log (else: the one whose peak grew most).
    Each worker's VmHWM is reset just before, so its peak is this request's."""
    workers = service.workers()
    before = {pid: servers.memory_mb(pid) for pid in workers}
    reset = all(servers.reset_peak(pid) for pid in workers)
    payload = big.read_bytes()
    rows = payload.count(b"\n") - 1
    say(f"  dry run: POSTing {len(payload) / 1e6:.1f} MB ({rows:,} rows)")
    started = time.perf_counter()
    status, _, answer = http(
        "POST", f"{service.base}/v1/admin/imports?dry_run=true", body=payload, timeout=900,
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "text/csv"},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if status in (404, 405, 501):
        say(f"  the HTTP dry run answered {status}: `referral import --dry-run` instead")
        return cli_dry_run(url, big, status)
    after = {pid: servers.memory_mb(pid) for pid in workers if Path(f"/proc/{pid}").exists()}
    deadline = time.monotonic() + 5  # the access log line is written after the answer
    while (pid := served_by(service.output(), "/v1/admin/imports")) is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    how = "the access log"
    if pid not in after:
        pid = max(after, key=lambda p: after[p]["VmHWM"] - before[p]["VmRSS"])
        how = "the largest peak"
    figures: dict[str, Any] = {
        "how": "HTTP POST /v1/admin/imports?dry_run=true (text/csv)",
        "status": status,
        "ok": status == 200,
        "seconds": seconds,
        "file_mb": len(payload) / 1e6,
        "rows": rows,
        "answer_mb": len(answer) / 1e6,
        "worker": pid,
        "worker_found_by": how,
        "peak_reset": reset,
        "rss_before_mb": before[pid]["VmRSS"],
        "peak_mb": after[pid]["VmHWM"] if reset else max(after[pid]["VmHWM"], 0.0),
        "rss_after_mb": after[pid]["VmRSS"],
    }
    figures["added_mb"] = figures["peak_mb"] - figures["rss_before_mb"]
    if not reset:
        figures["note"] = "VmHWM could not be reset: the peak may be the worker's earlier one"
    if status != 200:
        figures["error"] = answer[:500].decode(errors="replace")
    say(f"  dry run: HTTP {status} in {seconds:.1f} s, answer {len(answer) / 1e6:.2f} MB; worker "
        f"{pid}: {figures['rss_before_mb']:.0f} MB before, peak {figures['peak_mb']:.0f} MB "
        f"(+{figures['added_mb']:.0f} MB)")  # fmt: skip
    return figures


def cli_dry_run(url: str, big: Path, http_status: int) -> dict[str, Any]:
    """``referral import --dry-run FILE`` instead, when the HTTP path is not there: its peak
    RSS polled from /proc while it runs, less the peak of the same command on a one-row file
    (the process's own start)."""
    tiny = big.with_name("dry-run-one-row.csv")
    tiny.write_bytes(b"".join(big.read_bytes().splitlines(keepends=True)[:2]))
    baseline, _, _, _ = _polled(url, tiny)
    peak, seconds, code, output = _polled(url, big)
    payload = big.stat().st_size
    return {
        "how": f"referral import --dry-run FILE (POST /v1/admin/imports answered {http_status})",
        "status": f"exit {code}",
        "ok": code == 0,
        "seconds": seconds,
        "file_mb": payload / 1e6,
        "rows": big.read_bytes().count(b"\n") - 1,
        "answer_mb": output / 1e6,
        "worker": None,
        "worker_found_by": "a process of its own; before = its peak on a one-row file",
        "peak_reset": True,
        "rss_before_mb": baseline,
        "peak_mb": peak,
        "rss_after_mb": peak,
        "added_mb": peak - baseline,
    }


def _polled(url: str, path: Path) -> tuple[float, float, int, int]:
    """Peak RSS (MB), seconds, exit status and output bytes of ``referral import --dry-run``."""
    out = path.with_suffix(".out")
    started = time.perf_counter()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "referral"), "import", "--dry-run", str(path)],
            env={**os.environ, "REFERRAL_DATABASE_URL": url}, cwd=REPO, stdout=sink,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        peak = 0.0
        while process.poll() is None:
            with suppress(OSError, KeyError):
                peak = max(peak, servers.memory_mb(process.pid)["VmHWM"])
            time.sleep(0.02)
    return peak, time.perf_counter() - started, process.returncode, out.stat().st_size


def served_by(server_output: str, path: str) -> int | None:
    pid = None
    for line in server_output.splitlines():
        if '"gunicorn.access"' in line and path in line:
            try:
                pid = int(json.loads(line)["pid"])
            except (ValueError, KeyError):
                continue
    return pid


def requests_per_worker(server_output: str) -> list[int]:
    counts: Counter[int] = Counter()
    for line in server_output.splitlines():
        if '"gunicorn.access"' in line:
            try:
                counts[int(json.loads(line)["pid"])] += 1
            except (ValueError, KeyError):
                continue
    return sorted(counts.values(), reverse=True)


def cluster_phase(
    result: SizeResult, url: str, spread: Cursor, folder: Path, files: Files, options: Options
) -> None:
    say(f"  clustered directory: {result.cluster_in_box:,} of {result.cluster_rows:,} "
        f"locations in {data.CLUSTER_BOX}")  # fmt: skip
    workers, threads = options.workers, options.threads
    with servers.running(
        "clustered", servers.service_argv("{bind}", workers, threads), folder,
        env=server_env(options, url), health="/healthz", workers=workers,
    ) as service:  # fmt: skip
        scripts = folder / "lua"
        scripts.mkdir(exist_ok=True)
        inside = Cursor(files.inside_count)
        runs = {
            "cluster_inside": Run("cluster_inside", service, lua_script(
                scripts / "cluster-inside.lua", files.inside, prefix="/v1/locations/nearest?",
                suffix=NEAREST_QUERY), inside),
            "cluster_spread": Run("cluster_spread", service, lua_script(
                scripts / "cluster-spread.lua", files.spread, prefix="/v1/locations/nearest?",
                suffix=NEAREST_QUERY), spread),
        }  # fmt: skip
        result.cluster_rounds = rounds_of(CLUSTER_PAIRS, runs, options)
        result.origins_repeated += inside.repeated


# ---- figures and targets ------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _rps(load: dict[str, Any]) -> float:
    return float(load["requests"]) / float(load["seconds"]) if load["seconds"] else 0.0


def _value(load: dict[str, Any], what: str) -> float | None:
    """``rps`` or a latency of one run; a latency of a run that finished no request (every
    request outlasted the run) is unknown, not 0."""
    if what == "rps":
        return _rps(load)
    return float(load[what]) if load["requests"] else None


def figure(rounds: Sequence[dict[str, Any]], name: str, what: str) -> float | None:
    """The median over rounds of one run's ``rps``, ``p50_ms`` or ``p99_ms``."""
    values = [_value(r[name], what) for r in rounds if name in r]
    return _median([value for value in values if value is not None])


def ratio(
    rounds: Sequence[dict[str, Any]], top: str, bottom: str, what: str = "rps"
) -> float | None:
    """The median over rounds of ``top``'s figure over ``bottom``'s in the same round."""
    values = []
    for r in rounds:
        if top in r and bottom in r:
            a, b = _value(r[top], what), _value(r[bottom], what)
            if a is not None and b:
                values.append(a / b)
    return _median(values)


def errors_in(rounds: Sequence[dict[str, Any]], *names: str) -> int:
    return int(sum(float(r[name]["errors"]) for r in rounds for name in names if name in r))


@dataclass
class Verdict:
    target: str
    figure: str
    met: bool


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _x(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}x"


def verdicts(result: SizeResult) -> list[Verdict]:
    """Each target with its figure, at ``result``'s size."""
    main, cluster = result.rounds, result.cluster_rounds
    checks: list[Verdict] = []

    def throughput(target: str, top: str, bottom: str, minimum: float) -> None:
        value = ratio(main, top, bottom)
        errors = errors_in(main, top, bottom)
        text = _x(value)
        if value is not None:
            text += (f" ({_rate(figure(main, top, 'rps'))} vs "
                     f"{_rate(figure(main, bottom, 'rps'))} req/s)")  # fmt: skip
        if errors:
            text += f", {errors} errors"
        checks.append(Verdict(target, text, value is not None and value >= minimum and not errors))

    def latency(
        target: str, rounds: Sequence[dict[str, Any]], top: str, bottom: str, what: str,
        maximum: float,
    ) -> None:  # fmt: skip
        value = ratio(rounds, top, bottom, what)
        errors = errors_in(rounds, top, bottom)
        text = _x(value)
        if value is not None:
            text += f" ({_ms(figure(rounds, top, what))} vs {_ms(figure(rounds, bottom, what))} ms)"
        if errors:
            text += f", {errors} errors"
        checks.append(Verdict(target, text, value is not None and value <= maximum and not errors))

    throughput(f"nearest >= {NEAREST_PEER_MIN}x the PostGIS peer", "nearest", "peer",
               NEAREST_PEER_MIN)  # fmt: skip
    throughput(f"nearest >= {NEAREST_HEALTHZ_MIN}x /healthz", "nearest", "healthz",
               NEAREST_HEALTHZ_MIN)  # fmt: skip
    throughput(f"/healthz >= {HEALTHZ_PING_MIN}x a bare Flask ping", "healthz", "ping",
               HEALTHZ_PING_MIN)  # fmt: skip
    latency(f"open_now list p50 <= {OPEN_NOW_P50_MAX:g}x the plain list", main, "open_now",
            "list", "p50_ms", OPEN_NOW_P50_MAX)  # fmt: skip
    latency(f"nearest p50 inside a cluster <= {CLUSTER_P50_MAX:g}x spread origins", cluster,
            "cluster_inside", "cluster_spread", "p50_ms", CLUSTER_P50_MAX)  # fmt: skip
    latency(f"nearest p99 with an edit a second <= {EDITS_P99_MAX:g}x quiet p99", main,
            "nearest_edits", "nearest", "p99_ms", EDITS_P99_MAX)  # fmt: skip
    if result.edits and not any(tally["ok"] for tally in result.edits):
        last = checks[-1]
        checks[-1] = Verdict(last.target, last.figure + ", but no edit went through", False)
    dry = result.dry_run
    if dry.get("ok"):
        checks.append(Verdict(
            f"a {dry['file_mb']:.0f} MB dry run adds <= {DRY_RUN_ADDED_MB_MAX:.0f} MB to a worker",
            f"+{dry['added_mb']:,.0f} MB ({dry['rss_before_mb']:.0f} -> {dry['peak_mb']:,.0f} MB, "
            f"{dry['seconds']:.1f} s)", dry["added_mb"] <= DRY_RUN_ADDED_MB_MAX,
        ))  # fmt: skip
        checks.append(Verdict(
            f"... and answers <= {DRY_RUN_ANSWER_MB_MAX:g} MB",
            f"{dry['answer_mb']:,.2f} MB", dry["answer_mb"] <= DRY_RUN_ANSWER_MB_MAX,
        ))  # fmt: skip
    else:
        what = f"failed: {dry['status']}" if dry else "not measured"
        checks.append(Verdict(f"a dry run adds <= {DRY_RUN_ADDED_MB_MAX:.0f} MB to the worker",
                              what, False))  # fmt: skip
        checks.append(Verdict(f"... and answers <= {DRY_RUN_ANSWER_MB_MAX:g} MB", what, False))
    throughput(f"referral POST >= {REFERRAL_HEALTHZ_MIN}x /healthz", "referral", "healthz",
               REFERRAL_HEALTHZ_MIN)  # fmt: skip
    rss = max(result.rss_mb, default=0.0)
    checks.append(Verdict(
        f"worker RSS <= {RSS_MAX_MB:.0f} MB after the load",
        " / ".join(f"{mb:.0f}" for mb in result.rss_mb) + " MB" if rss else "not measured",
        0 < rss <= RSS_MAX_MB,
    ))  # fmt: skip
    return checks


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: bool = True) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    align = str.rjust if right else str.ljust
    lines = ["| " + " | ".join(map(str.ljust, header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [row[0].ljust(widths[0]), *map(align, row[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table(results: list[SizeResult], context: dict[str, str]) -> str:
    lines = [f"referral bench, {context['when']}"]
    lines += [f"  {name}: {value}" for name, value in context.items() if name != "when"]
    for result in results:
        lines += ["", f"{result.size:,} clinics ({result.rows:,} locations; import "
                  f"{result.import_seconds:.1f} s; peer {result.peer_rows:,} rows, loaded in "
                  f"{result.peer_load_seconds:.1f} s): medians over rounds"]  # fmt: skip
        rows = []
        for name, label in LABELS.items():
            rounds = result.cluster_rounds if name.startswith("cluster") else result.rounds
            rps = figure(rounds, name, "rps")
            if rps is None:
                continue
            loads = [r[name] for r in rounds if name in r]
            alone = any(load["connections"] == 1 for load in loads)
            rows.append((label + (" (one at a time)" if alone else ""),
                         _rate(rps),
                         _ms(figure(rounds, name, "p50_ms")), _ms(figure(rounds, name, "p99_ms")),
                         f"{sum(load['requests'] for load in loads):,}",
                         f"{errors_in(rounds, name)}"))  # fmt: skip
        header = ("endpoint", "req/s", "p50 ms", "p99 ms", "requests", "errors")
        lines += markdown(header, rows)
        lines += scenario_lines(result)
    top = max(results, key=lambda result: result.size)
    where = "" if top.size == TARGET_SIZE else f" (the targets are set at {TARGET_SIZE:,})"
    lines += ["", f"targets at {top.size:,} clinics{where}:"]
    lines += markdown(
        ("target", "figure", "verdict"),
        [(v.target, v.figure, "PASS" if v.met else "MISS") for v in verdicts(top)],
        right=False,
    )
    return "\n".join(lines)


def scenario_lines(result: SizeResult) -> list[str]:
    lines = []
    if result.rss_start_mb:
        lines.append(
            "  service worker RSS: "
            + " / ".join(f"{mb:.0f}" for mb in result.rss_start_mb)
            + " MB ready, "
            + " / ".join(f"{mb:.0f}" for mb in result.rss_mb)
            + " MB after the load"
        )
    if result.requests_per_worker:
        lines.append("  requests per service worker: "
                     + " / ".join(f"{n:,}" for n in result.requests_per_worker))  # fmt: skip
    if result.agreement:
        lines.append(f"  {agreement_line(result.agreement)}")
    if result.edits:
        ok = sum(tally["ok"] for tally in result.edits)
        total = sum(tally["edits"] for tally in result.edits)
        lines.append(f"  edits under load: {ok} of {total} PATCHes went through")
    lines.append(f"  clustered directory: {result.cluster_in_box:,} of {result.cluster_rows:,} "
                 f"locations in a 1-degree box; import "
                 f"{result.cluster_import_seconds:.1f} s")  # fmt: skip
    dry = result.dry_run
    if dry:
        lines.append(
            f"  dry run: {dry['how']}, {dry['file_mb']:.1f} MB, {dry['rows']:,} rows: HTTP "
            f"{dry['status']} in {dry['seconds']:.1f} s, answer {dry['answer_mb']:.2f} MB; "
            f"worker {dry['rss_before_mb']:.0f} MB before, peak {dry['peak_mb']:,.0f} MB, "
            f"{dry['rss_after_mb']:,.0f} MB after (found by {dry['worker_found_by']})"
        )
    if result.origins_repeated:
        lines.append(f"  NOTE: {result.origins_repeated:,} nearest origins were sent twice "
                     "(the origins file ran out: raise --origins)")  # fmt: skip
    lines += [f"  NOTE: {note}" for note in result.notes]
    lines += [f"  FAILED: {failure[:500]}" for failure in result.failures]
    return lines


def machine(options: Options, databases: Databases) -> dict[str, str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{cpu}, {os.cpu_count()} CPUs{memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average "
        f"{os.getloadavg()[0]:.2f} at the start",
        "database": databases.version(),
        "servers": f"{options.workers} gunicorn workers x {options.threads} threads each, a "
        f"listening socket per worker, keep-alive {servers.KEEPALIVE} s: the service "
        f"(`referral serve`, JSON access log, rate limits on {options.ratelimit_storage} at "
        f"{HIGH_LIMIT}), the bare Flask ping and the PostGIS peer (no access log)",
        "load": f"{wrk_version()}, {options.wrk_threads} thread(s), {options.connections} "
        f"connections; {options.rounds} round(s) of {options.duration:.0f} s per run after "
        f"{options.warmup:.0f} s warm-up; ratios within a round, median over rounds",
        "code": f"commit {commit or '?'}" + (" with uncommitted changes" if dirty else ""),
    }


# ---- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="The service against a PostGIS peer and a bare Flask ping, in one run.",
    )
    parser.add_argument("--sizes", help="comma-separated clinic counts (default 100000; "
                        "quick: 2000); targets are judged at the largest")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one "
                        "round of 2 s per run, a 2 MB dry run")  # fmt: skip
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_ENV),
        help=f"the service on PostgreSQL: a server to make throwaway databases on (default: "
        f"${DATABASE_ENV}, else SQLite files), e.g. {LOCAL_POSTGRES}",
    )
    parser.add_argument(
        "--peer-database-url",
        default=os.environ.get(PEER_DATABASE_ENV),
        help=f"the PostgreSQL server for the PostGIS peer's throwaway database (default: "
        f"${PEER_DATABASE_ENV}, else --database-url, else {LOCAL_POSTGRES})",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per run and round (5; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds per run before (3; quick 1)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (4)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--ratelimit-storage", default=REDIS_URL,
                        help=f"rate-limit storage URI ({REDIS_URL})")  # fmt: skip
    parser.add_argument("--import-mb", type=float,
                        help="size of the dry-run import file in MB (25; quick 2)")  # fmt: skip
    parser.add_argument("--origins", type=int,
                        help="distinct spread nearest origins (200000; quick 20000)")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder and databases (paths are printed)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    sizes = (
        tuple(int(part.replace("_", "")) for part in args.sizes.split(",") if part.strip())
        if args.sizes
        else (QUICK_SIZES if args.quick else FULL_SIZES)
    )
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: positive clinic counts")
    quick = args.quick
    return Options(
        sizes=tuple(sorted(set(sizes))),
        database_url=args.database_url,
        peer_database_url=args.peer_database_url or args.database_url or LOCAL_POSTGRES,
        rounds=args.rounds or (1 if quick else 3),
        duration=args.duration or (2.0 if quick else 5.0),
        warmup=args.warmup or (1.0 if quick else 3.0),
        settle=1.0 if quick else 3.0,
        workers=args.workers,
        threads=args.threads,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        ratelimit_storage=args.ratelimit_storage,
        import_bytes=int((args.import_mb or (2.0 if quick else 25.0)) * 1e6),
        origins=args.origins or (20_000 if quick else 200_000),
        keep=args.keep,
        json_path=args.json,
        quick=quick,
    )


@contextmanager
def work_folder(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="referral-bench-"))
    try:
        yield path
    finally:
        if keep:
            say(f"kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    require_wrk()
    ensure_redis(options.ratelimit_storage)
    started = time.monotonic()
    with work_folder(options.keep) as workdir:
        databases = Databases(options.database_url, workdir, options.keep)
        try:
            context = machine(options, databases)
            files = make_files(workdir, options)
            results = [run_size(size, databases, workdir, files, options) for size in options.sizes]
        finally:
            databases.drop()
    context["peer"] = next((r.postgis for r in results if r.postgis), "no PostGIS peer")
    context["took"] = f"{(time.monotonic() - started) / 60:.1f} min; load average " + (
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    output = table(results, context)
    print(output, flush=True)
    if options.json_path is not None:
        top = max(results, key=lambda result: result.size)
        options.json_path.write_text(
            json.dumps(
                {"context": context, "results": [asdict(result) for result in results],
                 "targets": [asdict(v) for v in verdicts(top)], "table": output},
                indent=2,
            )
            + "\n"
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
