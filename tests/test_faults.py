"""Faults under load (short form; `python bench/faults.py` runs the long one).

Concurrent referral POSTs with idempotency keys and retries against gunicorn (3 workers),
while a worker is killed with SIGKILL every 0.7 s (once the load has made progress) and,
halfway, the whole server is killed and started again. Afterwards every 201 is stored under
the id it promised, no key made two referrals, no referral lacks its key, no key is stuck,
and the database passes its integrity checks.

And one crash placed exactly: a worker killed in the middle of a request's transaction (its
idempotency record written, nothing committed) leaves nothing behind, so the retry with the
same key proceeds at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database
from tests.conftest import build_app
from tests.faultload import Holds, Server, holding_server, post, run, verify

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
    # Killed workers drop connections; the service itself never answers 5xx, and no retry
    # meets a key held by a request that is gone (there is no in-flight state to get stuck).
    assert not [status for status in tally.statuses if status.startswith("5")], report
    assert "409" not in tally.statuses and not verdict.stuck_keys, report


def test_a_worker_killed_in_the_middle_of_a_transaction_leaves_the_key_free(
    database_url: str, token: str, tmp_path: Path
) -> None:
    server = holding_server(database_url, tmp_path, workers=2, threads=2)
    server.start()
    try:
        holds = Holds.of(server)
        key = "hold-then-kill"
        answers: list[Any] = []

        def first() -> None:
            try:
                answers.append(post(server.base, token, key))
            except Exception as exc:  # the worker dies under it: no HTTP answer
                answers.append(exc)

        sender = threading.Thread(target=first)
        sender.start()
        os.kill(holds.held_pid(key), signal.SIGKILL)  # record written, nothing committed
        sender.join(30)
        assert answers and isinstance(answers[0], Exception), answers
        started = time.monotonic()
        for _attempt in range(20):  # the listening socket may meet the dead worker's backlog
            try:
                status, body = post(server.base, token, key)
                break
            except OSError:
                time.sleep(0.1)
        elapsed = time.monotonic() - started
        logs = server.logs()
    finally:
        server.stop()
    assert status == 201 and body["replayed"] is False, (status, body, logs)
    assert elapsed < 5, (elapsed, logs)  # no claim to wait out
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            records = conn.execute(
                sa.text("SELECT key, state, referral_id FROM idempotency_record")
            ).all()
            referrals = conn.execute(sa.text("SELECT id FROM referral")).scalars().all()
    finally:
        engine.dispose()
    assert [tuple(record) for record in records] == [(key, "done", body["id"])]
    assert referrals == [body["id"]]
