"""Faults under load (short form; `python bench/faults.py` runs the long one).

Concurrent referral POSTs with idempotency keys and retries against gunicorn (3 workers),
while a worker is killed with SIGKILL every 0.7 s (once the load has made progress) and,
halfway, the whole server is killed and started again. Afterwards every 201 is stored under
the id it promised, no key made two referrals, no referral lacks its key, and the database
passes its integrity checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database
from tests.conftest import build_app
from tests.faultload import Server, run, verify

SECONDS = 10
CLIENTS = 6
MIN_ACKNOWLEDGED = 40
MIN_KILLS = 8


@pytest.fixture
def token(database_url: str) -> str:
    app = build_app(database_url)
    try:
        with Session(get_database(app).engine) as session:
            _, secret = create_key(session, name="fault-app", scopes=["referrals:write"])
            session.commit()
    finally:
        get_database(app).dispose()
    return secret


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    served = Server(database_url, tmp_path, workers=3, threads=2)
    served.start()
    yield served
    served.stop()


def test_nothing_acknowledged_is_lost_while_workers_and_the_server_die(
    server: Server, token: str, database_url: str
) -> None:
    tally = run(
        server, token, seconds=SECONDS, clients=CLIENTS, kill_every=0.7, restart_at=SECONDS / 2,
        min_acknowledged=MIN_ACKNOWLEDGED, min_kills=MIN_KILLS, max_seconds=120,
    )  # fmt: skip
    verdict = verify(database_url, tally)
    report = (
        f"{verdict}\nattempts={tally.attempts} statuses={dict(tally.statuses)} "
        f"kills={tally.worker_kills} restarts={tally.restarts} unfinished={tally.unfinished}"
    )
    print(report)
    # The faults really happened, and the load really went through them.
    assert tally.worker_kills >= MIN_KILLS, report
    assert tally.restarts == 1, report
    assert verdict.acknowledged >= MIN_ACKNOWLEDGED, report
    assert not tally.unfinished, report
    assert verdict.ok, report
    assert verdict.integrity_checks >= 4, report
    # Every referral stored was acknowledged to a client (retries got it back).
    assert verdict.stored == verdict.acknowledged, report
    # Killed workers drop connections; the service itself never answers 5xx.
    assert not [status for status in tally.statuses if status.startswith("5")], report
