"""`make bench`: build synthetic directories with the import path, serve each with gunicorn on
loopback, drive it with wrk, and print one table of figures with PASS/MISS per target.

Per size (100, 10,000 and 100,000 clinics by default), all in one run:

1. ``bench.data`` makes the clinics (deterministic seed); a fresh database is migrated and
   seeded (``referral seed``'s steps), then the CSV goes through ``referral.admin.imports``
   (read, plan, apply, commit: what ``referral import FILE`` runs), timed. The rows the
   import wrote (clinics, specialties, locations, change log) are then copied into a second
   fresh database with one DBAPI ``executemany`` per table, timed: the raw-insert baseline.
2. Some facts (new patients, telehealth, languages, opening hours) are set on the imported
   locations; an API key is made with ``referral keys create``.
3. ``referral serve`` (gunicorn) serves the database on 127.0.0.1, rate limits on Redis with
   limits so high that they are paid for on every request but never trip.
4. After a warm-up, rounds of wrk runs back to back: ``GET /healthz``, ``GET
   /v1/locations/nearest`` (limit 10, one specialty, thousands of origins) and ``POST
   /v1/referrals``; each endpoint's throughput is divided by that round's /healthz throughput
   (so the ratio compares one server under one load, minutes apart at most), and the median
   over rounds is reported. Latency percentiles come from wrk. Then each worker's RSS is read
   from /proc.

Run ``python -m bench.run --help`` for options (sizes, quick mode, PostgreSQL).
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
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(REPO))

from bench import data  # noqa: E402
from bench.cpu import HIGH_LIMIT  # noqa: E402
from referral import create_app  # noqa: E402
from referral.admin.imports import Actor, apply_import, plan_import, read_import  # noqa: E402
from referral.db import get_database, session_scope  # noqa: E402
from referral.geo.chain import get_geocoder  # noqa: E402
from referral.migrations import runner as migrations  # noqa: E402
from referral.seed import seed_all  # noqa: E402
from tests.live import OPENER, serve  # noqa: E402

FULL_SIZES = (100, 10_000, 100_000)
QUICK_SIZES = (100, 10_000)
TARGET_SIZE = 100_000
DATABASE_ENV = "REFERRAL_BENCH_DATABASE_URL"
REDIS_URL = "redis://127.0.0.1:6379/0"
HEALTHZ = "/healthz"
FALLBACK_HEALTH = "/v1/specialties"  # used only while /healthz does not exist yet
ORIGINS = 2000
REFERRAL_BODIES = 2000
SYNTHETIC_SOURCE = "bench.csv"
# What the import writes, in write order (a table's rows after the rows they refer to).
IMPORT_TABLES = ("clinic", "clinic_specialty", "location", "admin_change")

# Targets, checked at the largest size run (defined at 100,000 clinics).
NEAREST_RATIO_MIN = 0.8
P50_GROWTH_MAX = 1.2
REFERRAL_RATIO_MIN = 0.3
IMPORT_RATIO_MIN = 0.5
RSS_MAX_MB = 150.0


@dataclass
class Options:
    sizes: tuple[int, ...]
    database_url: str | None
    rounds: int
    duration: float
    warmup: float
    workers: int
    threads: int
    connections: int
    wrk_threads: int
    ratelimit_storage: str
    keep: bool
    json_path: Path | None
    quick: bool


@dataclass
class Load:
    """One wrk run, from the Lua ``done`` hook."""

    requests: int
    seconds: float
    errors: int  # non-2xx/3xx answers, plus connect/read/write errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class SizeResult:
    size: int
    rows: int
    import_seconds: float
    raw_seconds: float
    written: dict[str, int]
    healthz_rps: float = 0.0
    nearest_rps: float = 0.0
    nearest_ratio: float = 0.0
    nearest_p50_ms: float = 0.0
    nearest_p99_ms: float = 0.0
    nearest_errors: int = 0
    healthz_errors: int = 0
    referral_rps: float = 0.0
    referral_ratio: float = 0.0
    referral_errors: int = 0
    referral_p50_ms: float = 0.0
    baseline: str = HEALTHZ  # the path ratios are taken against
    rss_start_mb: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    # Requests each worker answered over the whole size's run (the access log), busiest first.
    requests_per_worker: list[int] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    # CPU ms per request inside one process (app_cpu), per endpoint.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def import_rps(self) -> float:
        return self.rows / self.import_seconds

    @property
    def raw_rps(self) -> float:
        return self.rows / self.raw_seconds

    @property
    def import_ratio(self) -> float:
        return self.raw_seconds / self.import_seconds


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
    """Throwaway databases: SQLite files in the work folder, or databases made on the
    PostgreSQL server that ``url`` names (dropped at the end unless kept)."""

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

    @property
    def backend(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

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
        if not self.keep:
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


def migrated_and_seeded(url: str) -> None:
    """What ``referral seed`` does: migrations, then seed_data/ (the 36 real clinics, the
    specialty and concern vocabularies)."""
    app = create_app({"DATABASE_URL": url})
    migrations.upgrade(app)
    with app.app_context(), session_scope(app) as session:
        seed_all(session, app)
    get_database(app).dispose()


def timed_import(url: str, csv_bytes: bytes) -> float:
    """Seconds for the import path from the file's bytes to the commit."""
    app = create_app({"DATABASE_URL": url})
    try:
        with app.app_context():
            geocoder = get_geocoder(app)
            geocoder.gazetteer  # noqa: B018  # loaded before timing, as in a running worker
            started = time.perf_counter()
            parsed = read_import(csv_bytes, "csv")
            with session_scope(app) as session:
                plan = plan_import(session, parsed, geocoder)
                if plan.errors:
                    raise SystemExit(f"the synthetic file has row errors: {plan.errors[:3]}")
                apply_import(session, plan, Actor("bench"), source=SYNTHETIC_SOURCE)
            return time.perf_counter() - started
    finally:
        get_database(app).dispose()


def _max_ids(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: int(
                conn.execute(sa.text(f"SELECT COALESCE(MAX(id), 0) FROM {name}")).scalar() or 0
            )
            for name in ("clinic", "location", "admin_change")
        }


def _driver_value(column: sa.Column[Any], dialect: sa.Dialect) -> Any:
    """A function from a column's Python value to what the DBAPI driver is given."""
    if isinstance(column.type, sa.JSON):
        # JSON as text (psycopg sends a str untyped, so PostgreSQL casts it to json).
        return lambda value: None if value is None else json.dumps(value)
    return column.type.bind_processor(dialect)


def timed_raw_insert(imported_url: str, fresh_url: str) -> tuple[float, dict[str, int]]:
    """Seconds to insert, with the driver's ``executemany`` and one commit, the rows the import
    wrote (read back from ``imported_url``) into ``fresh_url`` (migrated and seeded the same
    way, so the same rows fit)."""
    from sqlmodel import SQLModel

    import referral.admin.models  # noqa: F401  # the change log's table in the metadata

    source = sa.create_engine(imported_url, poolclass=sa.NullPool)
    # The app's own engine: the same connection settings as the import had (on SQLite WAL
    # and foreign keys on), so the two differ only in what is done per row.
    target_app = create_app({"DATABASE_URL": fresh_url})
    target = get_database(target_app).engine
    before = _max_ids(target)  # the seeded rows, the same in both databases
    dialect = target.dialect
    placeholder = "?" if dialect.name == "sqlite" else "%s"
    statements: list[tuple[str, list[tuple[Any, ...]]]] = []
    with source.connect() as conn:
        for name in IMPORT_TABLES:
            table = SQLModel.metadata.tables[name]
            if name == "clinic_specialty":
                where = table.c.clinic_id > before["clinic"]
            else:
                where = table.c.id > before[name]
            columns = list(table.columns)
            # Values as the driver takes them (JSON as text, SQLite's datetimes as text).
            processors = [_driver_value(column, dialect) for column in columns]
            rows = [
                tuple(
                    process(value) if process else value
                    for process, value in zip(processors, row, strict=True)
                )
                for row in conn.execute(sa.select(*columns).where(where))
            ]
            sql = (
                f"INSERT INTO {name} ({', '.join(column.name for column in columns)}) "
                f"VALUES ({', '.join([placeholder] * len(columns))})"
            )
            statements.append((sql, rows))
    source.dispose()
    raw = target.raw_connection()
    try:
        cursor = raw.cursor()
        started = time.perf_counter()
        for sql, rows in statements:
            cursor.executemany(sql, rows)
        raw.commit()
        elapsed = time.perf_counter() - started
    finally:
        raw.close()
        target.dispose()
    counts = [len(rows) for _, rows in statements]
    return elapsed, dict(zip(IMPORT_TABLES, counts, strict=True))


def set_facts(url: str) -> None:
    """Facts for some imported locations (the import file has no columns for them)."""
    from referral.directory.models import Location

    table = Location.__table__  # type: ignore[attr-defined]
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    weekdays = {day: [["08:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
    mine = table.c.seed_key.is_(None)  # seeded locations keep their own facts
    with engine.begin() as conn:
        conn.execute(
            sa.update(table)
            .where(mine, table.c.id % 2 == 0)
            .values(accepting_new_patients=True, languages=["en", "es"])
        )
        conn.execute(
            sa.update(table).where(mine, table.c.id % 2 == 1).values(accepting_new_patients=False)
        )
        conn.execute(sa.update(table).where(mine, table.c.id % 4 == 0).values(telehealth=True))
        conn.execute(
            sa.update(table).where(mine, table.c.id % 3 == 0).values(opening_hours=weekdays)
        )
    engine.dispose()


def create_key(url: str) -> str:
    """``referral keys create``: the key is the last line of its output."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "referral"), "keys", "create", "--name",
         "bench-app", "--scopes", "referrals:write"],
        env={**os.environ, "REFERRAL_DATABASE_URL": url},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1].strip()


# ---- load ---------------------------------------------------------------------------------

LUA = """
local requests = {}
local count = 0
local n = 0

init = function(args)
  local method, headers = %(method)s, %(headers)s
  for i, item in ipairs(%(items)s) do
    if method == "GET" then
      requests[i] = wrk.format("GET", item, headers)
    else
      requests[i] = wrk.format(method, %(path)s, headers, item)
    end
  end
  count = #requests
  n = math.random(count)
end

request = function()
  n = n %% count + 1
  return requests[n]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"connect\\": %%d, " ..
    "\\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    if "]==]" in text or not text.isascii():
        raise ValueError(f"cannot quote {text!r} for Lua")
    return f"[==[{text}]==]"


def lua_script(
    path: Path,
    items: Sequence[str],
    *,
    method: str = "GET",
    target: str = "",
    headers: dict[str, str] | None = None,
) -> Path:
    """A wrk script sending ``items`` (GET paths, or bodies to ``target``) round-robin."""
    header_table = ", ".join(
        f"[ {_lua_string(name)} ] = {_lua_string(value)}" for name, value in (headers or {}).items()
    )
    path.write_text(
        LUA
        % {
            "method": _lua_string(method),
            "headers": "{" + header_table + "}",
            "items": "{\n" + ",\n".join(_lua_string(item) for item in items) + "\n}",
            "path": _lua_string(target),
        },
        encoding="ascii",
    )
    return path


def run_wrk(base: str, script: Path, seconds: float, options: Options) -> Load:
    argv = ["wrk", f"-t{options.wrk_threads}", f"-c{options.connections}",
            f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "60s", "-s", str(script),
            base]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("BENCH-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    figures = json.loads(line.removeprefix("BENCH-JSON "))
    errors = sum(figures[name] for name in ("connect", "read", "write", "status", "timeout"))
    return Load(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        errors=errors,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
    )


def drain(base: str, path: str) -> None:
    """Wait until the server has finished what the last wrk run left queued (wrk stops
    sending, but requests already accepted still run) so it does not slow the next run."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            with OPENER.open(f"{base}{path}", timeout=60) as response:
                response.read()
        except OSError:
            time.sleep(0.5)
            continue
        if time.perf_counter() - started < 0.05:
            return
    raise RuntimeError("the server did not drain its queue in 5 minutes")


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == master:
                pids.append(int(entry.name))
    return sorted(pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def health_path(base: str) -> str:
    try:
        with OPENER.open(f"{base}{HEALTHZ}", timeout=5) as response:
            if response.status == 200:
                return HEALTHZ
    except OSError:
        pass
    say(
        f"NOTE: {HEALTHZ} does not answer 200 on this server (not built yet?): the baseline "
        f"is {FALLBACK_HEALTH} instead, which is NOT what the targets are defined against"
    )
    return FALLBACK_HEALTH


def server_env(options: Options) -> dict[str, str]:
    return {
        # One listening socket per worker, as REUSE_PORT=auto gives where the kernel has
        # net.ipv4.tcp_migrate_req=1 (docs/operations.md). With one shared socket, wrk's 16
        # connections all landed on one worker in about half the runs, at half the throughput:
        # that, not the code, decided the ratios. The bench restarts no worker, so nothing
        # queued is ever reset.
        "REFERRAL_REUSE_PORT": "true",
        "REFERRAL_RATELIMIT_STORAGE_URI": options.ratelimit_storage,
        "REFERRAL_RATELIMIT_PUBLIC": HIGH_LIMIT,
        "REFERRAL_RATELIMIT_REFERRALS": HIGH_LIMIT,
        "REFERRAL_RATELIMIT_GEOCODE": HIGH_LIMIT,
    }


def measure(url: str, key: str, result: SizeResult, workdir: Path, options: Options) -> None:
    from referral.geo.gazetteer import get_gazetteer

    gazetteer = get_gazetteer(str(REPO / "instance"))
    scripts = workdir / f"lua-{result.size}"
    scripts.mkdir(exist_ok=True)
    nearest = lua_script(scripts / "nearest.lua", data.nearest_paths(ORIGINS, gazetteer))
    referrals = lua_script(
        scripts / "referrals.lua",
        data.referral_bodies(REFERRAL_BODIES, gazetteer),
        method="POST",
        target="/v1/referrals",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    serverdir = workdir / f"server-{result.size}"
    serverdir.mkdir(exist_ok=True)
    with serve(
        url,
        serverdir,
        workers=options.workers,
        threads=options.threads,
        env=server_env(options),
        timeout=120,
    ) as served:
        result.baseline = health_path(served.base)
        healthz = lua_script(scripts / "healthz.lua", [result.baseline])
        result.rss_start_mb = [rss_mb(pid) for pid in worker_pids(served.process.pid)]
        say(f"  warm-up ({options.warmup:.0f} s per endpoint)")
        for script in (healthz, nearest, referrals):
            run_wrk(served.base, script, options.warmup, options)
            drain(served.base, result.baseline)
        for number in range(1, options.rounds + 1):
            loads = {}
            for name, script in (("healthz", healthz), ("nearest", nearest),
                                 ("referral", referrals)):  # fmt: skip
                loads[name] = run_wrk(served.base, script, options.duration, options)
                drain(served.base, result.baseline)
            result.rounds.append({name: asdict(load) for name, load in loads.items()})
            say(
                f"  round {number}: healthz {loads['healthz'].rps:.0f}/s, nearest "
                f"{loads['nearest'].rps:.0f}/s (p50 {loads['nearest'].p50_ms:.1f} ms), "
                f"referral POST {loads['referral'].rps:.0f}/s, errors "
                f"{loads['healthz'].errors}/{loads['nearest'].errors}/{loads['referral'].errors}"
            )
            if served.process.poll() is not None:
                raise RuntimeError(served.explain("the server stopped"))
        result.rss_mb = [rss_mb(pid) for pid in worker_pids(served.process.pid)]
    result.requests_per_worker = requests_per_worker(served.output())
    say(f"  requests per worker: {' / '.join(f'{n:,}' for n in result.requests_per_worker)}")
    summarize(result)


def requests_per_worker(server_output: str) -> list[int]:
    counts: Counter[int] = Counter()
    for line in server_output.splitlines():
        if '"gunicorn.access"' in line:
            counts[int(json.loads(line)["pid"])] += 1
    return sorted(counts.values(), reverse=True)


def summarize(result: SizeResult) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    def of(name: str, figure: str) -> list[float]:
        return [float(round_[name][figure]) for round_ in result.rounds]

    def rps(name: str) -> list[float]:
        return [r[name]["requests"] / r[name]["seconds"] for r in result.rounds]

    result.healthz_rps = median(rps("healthz"))
    result.nearest_rps = median(rps("nearest"))
    result.referral_rps = median(rps("referral"))
    # Each round's ratio compares runs seconds apart: the median of those, not a ratio of
    # medians, so a burst of other work on the machine skews one round at most.
    healthz = rps("healthz")

    def ratio(name: str) -> float:
        return median([n / h if h else 0.0 for n, h in zip(rps(name), healthz, strict=True)])

    result.nearest_ratio = ratio("nearest")
    result.referral_ratio = ratio("referral")
    result.nearest_p50_ms = median(of("nearest", "p50_ms"))
    result.nearest_p99_ms = median(of("nearest", "p99_ms"))
    result.referral_p50_ms = median(of("referral", "p50_ms"))
    result.healthz_errors = int(sum(of("healthz", "errors")))
    result.nearest_errors = int(sum(of("nearest", "errors")))
    result.referral_errors = int(sum(of("referral", "errors")))


# ---- one size -----------------------------------------------------------------------------


def run_size(size: int, databases: Databases, workdir: Path, options: Options) -> SizeResult:
    from referral.geo.gazetteer import get_gazetteer

    say(f"size {size:,}: making the directory")
    directory = data.directory(size, get_gazetteer(str(REPO / "instance")))
    csv_bytes = directory.csv_bytes()
    (workdir / f"clinics-{size}.csv").write_bytes(csv_bytes)
    url = databases.create(f"s{size}")
    raw_url = databases.create(f"s{size}_raw")
    migrated_and_seeded(url)
    migrated_and_seeded(raw_url)
    say(f"  importing {len(directory.rows):,} rows")
    import_seconds = timed_import(url, csv_bytes)
    say(f"  import: {import_seconds:.2f} s; raw insert of the same rows")
    raw_seconds, written = timed_raw_insert(url, raw_url)
    say(f"  raw insert: {raw_seconds:.2f} s ({written})")
    set_facts(url)
    key = create_key(url)
    result = SizeResult(size, len(directory.rows), import_seconds, raw_seconds, written)
    measure(url, key, result, workdir, options)
    say("  app CPU per request, in-process")
    result.cpu_ms = app_cpu(url, key, options, result.baseline)
    return result


def app_cpu(url: str, key: str, options: Options, baseline: str) -> dict[str, float]:
    """CPU milliseconds per request of each endpoint inside one process (bench/cpu.py), run
    in a fresh interpreter: this one holds the whole synthetic directory, whose garbage
    collections would be charged to the requests."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cpu", url, baseline, options.ratelimit_storage],
        input=key, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bench.cpu failed: {done.stderr[-2000:]}")
    costs: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return costs


# ---- the table ----------------------------------------------------------------------------


def verdicts(results: list[SizeResult]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) at the largest size run."""
    top = max(results, key=lambda result: result.size)
    low = min(results, key=lambda result: result.size)
    rss = max(top.rss_mb, default=0.0)
    checks = [
        (f"nearest >= {NEAREST_RATIO_MIN}x healthz", f"{top.nearest_ratio:.2f}x",
         top.nearest_ratio >= NEAREST_RATIO_MIN and top.nearest_errors == 0),
        (f"referral POST >= {REFERRAL_RATIO_MIN}x healthz, 0 errors",
         f"{top.referral_ratio:.2f}x, {top.referral_errors} errors",
         top.referral_ratio >= REFERRAL_RATIO_MIN and top.referral_errors == 0),
        (f"import >= {IMPORT_RATIO_MIN}x raw insert", f"{top.import_ratio:.2f}x",
         top.import_ratio >= IMPORT_RATIO_MIN),
        (f"worker RSS <= {RSS_MAX_MB:.0f} MB", f"{rss:.0f} MB", 0 < rss <= RSS_MAX_MB),
    ]  # fmt: skip
    if low.size < top.size:
        growth = top.nearest_p50_ms / low.nearest_p50_ms if low.nearest_p50_ms else float("inf")
        checks.insert(
            1,
            (f"nearest p50 at {top.size:,} <= {P50_GROWTH_MAX}x p50 at {low.size:,}",
             f"{growth:.2f}x ({top.nearest_p50_ms:.1f} vs {low.nearest_p50_ms:.1f} ms)",
             growth <= P50_GROWTH_MAX),
        )  # fmt: skip
    return checks


def table(results: list[SizeResult], context: dict[str, str]) -> str:
    lines = [f"referral bench, {context['when']}"]
    lines += [f"  {name}: {value}" for name, value in context.items() if name != "when"]
    lines.append("")
    header = ("clinics", "rows", "healthz/s", "nearest/s", "nearest ratio", "p50 ms", "p99 ms",
              "POST/s", "POST ratio", "POST errors", "worker RSS MB", "import rows/s",
              "raw rows/s", "import ratio")  # fmt: skip
    body = [
        (f"{r.size:,}", f"{r.rows:,}", f"{r.healthz_rps:,.0f}", f"{r.nearest_rps:,.0f}",
         f"{r.nearest_ratio:.2f}x", f"{r.nearest_p50_ms:.1f}", f"{r.nearest_p99_ms:.1f}",
         f"{r.referral_rps:,.0f}", f"{r.referral_ratio:.2f}x", f"{r.referral_errors}",
         " / ".join(f"{mb:.0f}" for mb in r.rss_mb), f"{r.import_rps:,.0f}",
         f"{r.raw_rps:,.0f}", f"{r.import_ratio:.2f}x")
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines.append("| " + " | ".join(map(str.ljust, header, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(map(str.rjust, row, widths)) + " |" for row in body]
    other_errors = [
        f"{r.size:,}: healthz {r.healthz_errors}, nearest {r.nearest_errors}"
        for r in results
        if r.healthz_errors or r.nearest_errors
    ]
    if other_errors:
        lines.append(f"errors on GET (non-2xx/3xx or socket): {'; '.join(other_errors)}")
    fallbacks = sorted({r.baseline for r in results if r.baseline != HEALTHZ})
    if fallbacks:
        lines.append(
            f"NOTE: {HEALTHZ} was missing; ratios are against {', '.join(fallbacks)} instead"
        )
    cpu = [r for r in results if r.cpu_ms]
    if cpu:
        lines.append("")
        lines.append("app CPU per request, in-process (ms; test client, no server, no load):")
        for r in cpu:
            healthz = r.cpu_ms.get("healthz") or 0.0
            lines.append(
                f"  {r.size:,}: "
                + ", ".join(
                    f"{name} {ms:.2f}"
                    + (f" ({healthz / ms:.2f}x healthz)" if name != "healthz" and ms else "")
                    for name, ms in r.cpu_ms.items()
                )
            )
    top = max(results, key=lambda result: result.size)
    lines.append("")
    where = "" if top.size == TARGET_SIZE else f" (targets are set at {TARGET_SIZE:,})"
    lines.append(f"targets at {top.size:,} clinics{where}:")
    for target, measured, met in verdicts(results):
        lines.append(f"  {'PASS' if met else 'MISS'}  {target}: {measured}")
    return "\n".join(lines)


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
    return {
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{cpu}, {os.cpu_count()} CPUs{memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        "database": databases.version(),
        "server": f"referral serve: {options.workers} gunicorn workers x {options.threads} "
        f"threads, a listening socket each; rate limits on {options.ratelimit_storage} at "
        f"{HIGH_LIMIT}",
        "load": f"{wrk_version()}, {options.wrk_threads} thread(s), {options.connections} "
        f"connections; {options.rounds} round(s) of {options.duration:.0f} s per endpoint "
        f"after {options.warmup:.0f} s warm-up; ratios: median over rounds",
        "code": f"commit {commit or '?'}",
    }


# ---- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark nearest search, referral intake, import and worker memory.",
    )
    parser.add_argument("--sizes", help="comma-separated clinic counts (default 100,10000,"
                        "100000; quick: 100,10000)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 3 s per endpoint, 2 s warm-up: a smoke run")  # fmt: skip
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_ENV),
        help=f"a PostgreSQL server to make throwaway databases on (default: ${DATABASE_ENV}, "
        "else SQLite files), e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument("--rounds", type=int, help="rounds per size (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per endpoint and round (5)")
    parser.add_argument("--warmup", type=float, help="seconds per endpoint before (3)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (4)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--ratelimit-storage", default=REDIS_URL,
                        help=f"rate-limit storage URI ({REDIS_URL})")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder and databases (paths are printed)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    sizes = (
        tuple(int(part.replace("_", "")) for part in args.sizes.split(",") if part.strip())
        if args.sizes
        else (QUICK_SIZES if args.quick else FULL_SIZES)
    )
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: positive clinic counts")
    return Options(
        sizes=tuple(sorted(set(sizes))),
        database_url=args.database_url,
        rounds=args.rounds or (1 if args.quick else 3),
        duration=args.duration or (3.0 if args.quick else 5.0),
        warmup=args.warmup or (2.0 if args.quick else 3.0),
        workers=args.workers,
        threads=args.threads,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        ratelimit_storage=args.ratelimit_storage,
        keep=args.keep,
        json_path=args.json,
        quick=args.quick,
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
            results = [run_size(size, databases, workdir, options) for size in options.sizes]
        finally:
            databases.drop()
    context["took"] = f"{(time.monotonic() - started) / 60:.1f} min"
    output = table(results, context)
    print(output, flush=True)
    if options.json_path is not None:
        options.json_path.write_text(
            json.dumps(
                {"context": context, "results": [asdict(result) for result in results],
                 "table": output},
                indent=2,
            )
            + "\n"
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
