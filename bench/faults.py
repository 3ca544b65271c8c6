"""Faults under load, long form: `python -m bench.faults [--seconds 120] [--database-url URL]`.

The same driver as tests/test_faults.py (tests/faultload.py), run for longer, with more
clients and workers: referral POSTs with idempotency keys and retries while gunicorn
workers are killed with SIGKILL and the whole server is killed and restarted (once per
``--restart-every`` seconds). Prints what was sent, acknowledged and stored, and exits 1 when
anything acknowledged is missing, stored twice, or the database fails its integrity checks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlmodel import Session

from referral import create_app
from referral.auth.keys import create_key
from referral.db import get_database
from tests.conftest import migrate_and_seed
from tests.faultload import Server, Tally, run, verify


def prepare(database_url: str) -> str:
    migrate_and_seed(database_url)
    app = create_app({"DATABASE_URL": database_url})
    with Session(get_database(app).engine) as session:
        _, token = create_key(session, name="fault-bench", scopes=["referrals:write"])
        session.commit()
    get_database(app).dispose()
    return token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=0.5)
    parser.add_argument("--restart-every", type=float, default=40)
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server URL: a throwaway database is made there (default: SQLite)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="referral-faults-") as work:
        workdir = Path(work)
        admin = None
        if args.database_url:
            name = f"referral_faults_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(args.database_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            database_url = make_url(args.database_url).set(database=name).render_as_string(False)
        else:
            name = ""
            database_url = f"sqlite:///{workdir / 'faults.db'}"
        try:
            token = prepare(database_url)
            server = Server(database_url, workdir, workers=args.workers, threads=args.threads)
            server.start()
            total = Tally()
            started = time.monotonic()
            try:
                remaining = args.seconds
                while remaining > 0:
                    span = min(args.restart_every, remaining)
                    tally = run(server, token, seconds=span, clients=args.clients,
                                kill_every=args.kill_every, restart_at=span / 2)  # fmt: skip
                    total.acknowledged.update(tally.acknowledged)
                    total.attempts += tally.attempts
                    total.statuses.update(tally.statuses)
                    total.worker_kills += tally.worker_kills
                    total.restarts += tally.restarts
                    total.unfinished += tally.unfinished
                    remaining -= span
            finally:
                server.stop()
            elapsed = time.monotonic() - started
            verdict = verify(database_url, total)
        finally:
            if admin is not None:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()

    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"faults under load on {backend}: {elapsed:.0f} s, {args.clients} clients, "
          f"{args.workers} workers x {args.threads} threads")  # fmt: skip
    print(f"  requests sent        {total.attempts}")
    print(f"  answers              {dict(sorted(total.statuses.items()))}")
    print(f"  workers SIGKILLed    {total.worker_kills}")
    print(f"  server restarts      {total.restarts}")
    print(f"  acknowledged (201)   {verdict.acknowledged}")
    print(f"  stored               {verdict.stored}")
    print(f"  missing              {len(verdict.missing)}")
    print(f"  keys stored twice    {len(verdict.duplicated_keys)}")
    print(f"  referrals w/o key    {len(verdict.referrals_without_key)}")
    print(f"  unfinished clients   {len(total.unfinished)}")
    print(f"  integrity checks     {verdict.integrity_checks} run, problems: {verdict.integrity}")
    ok = verdict.ok and not total.unfinished and verdict.stored == verdict.acknowledged
    print("  verdict              " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
