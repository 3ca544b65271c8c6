"""Concurrent referral POSTs against a real gunicorn (3 workers x 4 threads), on both backends.

What the service guarantees under races (service.py: the idempotency record is the first
write of the referral's transaction, and the unique (api_key_id, key) constraint decides; a
request that meets another's uncommitted record waits for that transaction to end):

- the same key and body: exactly one request creates the referral (201, replayed false); every
  other one answers 201 with the same id and replayed true, whether it came after the creator
  committed (it reads the record) or while the creator was at work (it waits at its insert,
  then reads the record). Never 409, never 5xx, never a second referral.
- the same key with two bodies: the body whose request commits first wins as above; every
  request with the other body gets 422 (never 201).
- no key: every request creates its own referral.

And, placed exactly (``holding_app``, tests/faultload.py): a retry sent while the first
request is held in the middle of its transaction waits for it, then answers its referral.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from referral.auth.keys import create_key
from referral.db import get_database
from referral.referrals.idempotency import DONE
from referral.referrals.models import AuditEvent, IdempotencyRecord, Referral
from tests.conftest import build_app
from tests.faultload import Holds, holding_server
from tests.live import OPENER, serve

THREADS = 16
ROUNDS = 5
TIMEOUT = 30
BODY: dict[str, Any] = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}


@dataclass(frozen=True)
class Reply:
    status: int  # 0: no HTTP answer at all (see error)
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    error: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.error or json.dumps(self.body)[:300]}"


@dataclass(frozen=True)
class LiveServer:
    base: str
    database_url: str
    token: str
    key_id: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self, what: Any) -> str:
        return f"{what}\n--- server output ---\n{self.output()}"

    def post(self, body: dict[str, Any], idempotency_key: str | None = None) -> Reply:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(
            f"{self.base}/v1/referrals",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        try:
            try:
                with OPENER.open(request, timeout=TIMEOUT) as response:
                    return _reply(response.status, response.headers, response.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return _reply(exc.code, exc.headers, exc.read())
        except Exception as exc:  # no HTTP answer: reported with the server's output
            return Reply(0, error=repr(exc))

    def query(self, fn: Callable[[Session], Any]) -> Any:
        engine = sa.create_engine(self.database_url, poolclass=sa.NullPool)
        try:
            with Session(engine) as session:
                return fn(session)
        finally:
            engine.dispose()


def _reply(status: int, headers: Any, raw: bytes) -> Reply:
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return Reply(status, {name.lower(): value for name, value in headers.items()}, body)


def burst(calls: list[Callable[[], Reply]]) -> list[Reply]:
    """Run every call at once: threads wait at a barrier, then all send together."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Reply]) -> Reply:
        barrier.wait(timeout=TIMEOUT)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=2 * TIMEOUT) for future in futures]


def make_key(database_url: str) -> tuple[str, int]:
    app = build_app(database_url)
    try:
        with Session(get_database(app).engine) as session:
            row, token = create_key(session, name="concurrent-app", scopes=["referrals:write"])
            session.commit()
            assert row.id is not None
            return token, row.id
    finally:
        get_database(app).dispose()


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """An API key made in the test's database, then `referral serve` on that database."""
    token, key_id = make_key(database_url)
    with serve(database_url, tmp_path, workers=3, threads=4, timeout=TIMEOUT) as served:
        yield LiveServer(served.base, database_url, token, key_id, served.log)


def assert_no_server_errors(server: LiveServer) -> None:
    output = server.output()
    errors = "Traceback" in output or '"level": "ERROR"' in output  # JSON log lines
    assert not errors, server.explain("server errors")


def assert_one_creation(server: LiveServer, replies: list[Reply], allowed: set[int]) -> str:
    """Exactly one fresh 201, every other 201 a replay of it, nothing outside ``allowed``;
    returns the referral id."""
    why = server.explain("\n".join(map(str, replies)))
    assert {reply.status for reply in replies} <= allowed, why
    created = [reply for reply in replies if reply.status == 201]
    assert created, why
    ids = {reply.body["id"] for reply in created}
    assert len(ids) == 1, why
    (referral_id,) = ids
    fresh = [reply for reply in created if reply.body["replayed"] is False]
    assert len(fresh) == 1, why
    assert "idempotent-replayed" not in fresh[0].headers, why
    for reply in created:
        assert reply.headers["location"] == f"/v1/referrals/{referral_id}", why
        if reply is not fresh[0]:
            assert reply.body["replayed"] is True, why
            assert reply.headers["idempotent-replayed"] == "true", why
    return str(referral_id)


def assert_problem(server: LiveServer, reply: Reply, status: int, field_name: str) -> None:
    why = server.explain(reply)
    assert reply.status == status, why
    assert reply.headers["content-type"].startswith("application/problem+json"), why
    assert reply.body["status"] == status, why
    assert field_name in [param["name"] for param in reply.body["invalid_params"]], why


def create_audits(session: Session, key_id: int) -> Counter[str]:
    events = session.exec(
        select(AuditEvent).where(
            AuditEvent.actor_key_id == key_id, AuditEvent.action == "referral.create"
        )
    ).all()
    return Counter(event.outcome for event in events)


def test_concurrent_identical_retries_create_exactly_one_referral(live: LiveServer) -> None:
    outcomes: Counter[int] = Counter()
    created: dict[str, str] = {}  # Idempotency-Key -> referral id
    for round_no in range(ROUNDS):
        key = f"retry-{round_no}"
        body = {**BODY, "patient_ref": f"pt-{round_no}"}
        replies = burst([partial(live.post, body, key)] * THREADS)
        created[key] = assert_one_creation(live, replies, allowed={201})
        for reply in replies:
            outcomes[reply.status] += 1
        again = live.post(body, key)
        assert again.status == 201, live.explain(again)
        assert again.body["id"] == created[key] and again.body["replayed"] is True, again

    def stored(session: Session) -> Any:
        referrals = session.exec(
            select(Referral).where(Referral.source_key_id == live.key_id)
        ).all()
        records = session.exec(
            select(IdempotencyRecord).where(IdempotencyRecord.api_key_id == live.key_id)
        ).all()
        return referrals, records, create_audits(session, live.key_id)

    referrals, records, audits = live.query(stored)
    why = live.explain(created)
    assert sorted((r.patient_ref, r.id) for r in referrals) == sorted(
        (f"pt-{key.split('-')[1]}", referral_id) for key, referral_id in created.items()
    ), why
    assert {r.key: (r.state, r.response_status, r.referral_id) for r in records} == {
        key: (DONE, 201, referral_id) for key, referral_id in created.items()
    }, why
    # Every answer was audited: one creation per round; replays are the burst's other 201s plus
    # the follow-up retry of each round (so as many as the burst's 201s).
    assert audits == Counter(ok=ROUNDS, replayed=outcomes[201]), (audits, outcomes, why)
    assert_no_server_errors(live)


def test_concurrent_retries_with_two_bodies_store_one(live: LiveServer) -> None:
    """Half the threads send body A, half body B, all with one Idempotency-Key."""
    for round_no in range(3):
        key = f"mixed-{round_no}"
        bodies = {
            "a": {**BODY, "patient_ref": f"mixed-{round_no}-a"},
            "b": {**BODY, "patient_ref": f"mixed-{round_no}-b", "urgency": "soon"},
        }
        labels = ["a", "b"] * (THREADS // 2)
        replies = burst([partial(live.post, bodies[label], key) for label in labels])
        why = live.explain(
            "\n".join(f"{label}: {reply}" for label, reply in zip(labels, replies, strict=True))
        )
        winners = {
            label for label, reply in zip(labels, replies, strict=True) if reply.status == 201
        }
        assert len(winners) == 1, why
        (winner,) = winners
        loser = "b" if winner == "a" else "a"
        won = [reply for label, reply in zip(labels, replies, strict=True) if label == winner]
        lost = [reply for label, reply in zip(labels, replies, strict=True) if label == loser]
        referral_id = assert_one_creation(live, won, allowed={201})
        for reply in lost:
            assert_problem(live, reply, 422, "Idempotency-Key")
        winning = next(reply for reply in won if reply.status == 201)
        assert winning.body["patient_ref"] == bodies[winner]["patient_ref"], why

        # Afterwards, sequentially: the winner's body replays, the loser's is still refused.
        again = live.post(bodies[winner], key)
        assert again.status == 201 and again.body["id"] == referral_id, live.explain(again)
        assert again.body["replayed"] is True, again
        assert_problem(live, live.post(bodies[loser], key), 422, "Idempotency-Key")

        refs = [body["patient_ref"] for body in bodies.values()]

        def stored(session: Session, key: str = key, refs: list[str] = refs) -> Any:
            referrals = session.exec(
                select(Referral).where(
                    Referral.source_key_id == live.key_id, col(Referral.patient_ref).in_(refs)
                )
            ).all()
            records = session.exec(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.api_key_id == live.key_id, IdempotencyRecord.key == key
                )
            ).all()
            return referrals, records

        referrals, records = live.query(stored)
        assert [(r.id, r.patient_ref) for r in referrals] == [
            (referral_id, bodies[winner]["patient_ref"])
        ], why
        assert [(r.state, r.referral_id) for r in records] == [(DONE, referral_id)], why
    assert_no_server_errors(live)


def test_concurrent_posts_without_a_key_each_create_a_referral(live: LiveServer) -> None:
    ids: list[str] = []
    for round_no in range(2):
        body = {**BODY, "patient_ref": f"nokey-{round_no}"}
        replies = burst([partial(live.post, body)] * THREADS)
        why = live.explain("\n".join(map(str, replies)))
        assert [reply.status for reply in replies] == [201] * THREADS, why
        assert all(reply.body["replayed"] is False for reply in replies), why
        ids.extend(reply.body["id"] for reply in replies)
    assert len(set(ids)) == len(ids) == 2 * THREADS

    def stored(session: Session) -> Any:
        referrals = session.exec(
            select(Referral.id).where(Referral.source_key_id == live.key_id)
        ).all()
        records = session.exec(
            select(IdempotencyRecord).where(IdempotencyRecord.api_key_id == live.key_id)
        ).all()
        return sorted(referrals), records, create_audits(session, live.key_id)

    referrals, records, audits = live.query(stored)
    assert referrals == sorted(ids), live.explain("stored referrals differ from the 201s")
    assert records == []
    assert audits == Counter({"ok": 2 * THREADS})
    assert_no_server_errors(live)


@pytest.mark.parametrize("second_body", ["the same body", "another body"])
def test_a_retry_sent_while_the_first_is_in_its_transaction_waits_for_it(
    database_url: str, tmp_path: Path, second_body: str
) -> None:
    """The first request is held right after the insert of its idempotency record (nothing
    committed). The second, with the same key, finds no record, does its own work and waits
    at its insert; once the first commits it answers the first one's referral (or 422 for
    another body): no 409, no second referral."""
    token, key_id = make_key(database_url)
    server = holding_server(database_url, tmp_path, workers=2, threads=4)
    server.start()
    try:
        live = LiveServer(server.base, database_url, token, key_id, tmp_path / "server-1.log")
        holds = Holds.of(server)
        key = "hold-duplicate"
        body = {**BODY, "patient_ref": "held-1"}
        other = body if second_body == "the same body" else {**body, "urgency": "soon"}
        replies: dict[str, Reply] = {}
        waited: list[float] = []

        def send(name: str, payload: dict[str, Any]) -> None:
            started = time.monotonic()
            replies[name] = live.post(payload, key)
            waited.append(time.monotonic() - started)

        first = threading.Thread(target=send, args=("first", body))
        first.start()
        holds.held_pid(key)  # the first is in its transaction, its record written
        second = threading.Thread(target=send, args=("second", other))
        second.start()
        holds.wait("the second request's insert", lambda: holds.arrivals(key) >= 2)
        time.sleep(1.0)
        assert second.is_alive() and "second" not in replies, live.explain(replies)
        holds.release(key)
        first.join(TIMEOUT)
        second.join(TIMEOUT)
        why = live.explain(replies)
        assert replies["first"].status == 201, why
        referral_id = replies["first"].body["id"]
        assert replies["first"].body["replayed"] is False, why
        if second_body == "the same body":
            assert replies["second"].status == 201, why
            assert replies["second"].body == {**replies["first"].body, "replayed": True}, why
            assert replies["second"].headers["idempotent-replayed"] == "true", why
        else:
            assert_problem(live, replies["second"], 422, "Idempotency-Key")
        assert min(waited) >= 1.0, (waited, why)  # the second waited for the first

        def stored(session: Session) -> Any:
            referrals = session.exec(
                select(Referral.id).where(Referral.source_key_id == key_id)
            ).all()
            records = session.exec(
                select(IdempotencyRecord).where(IdempotencyRecord.api_key_id == key_id)
            ).all()
            return referrals, records, create_audits(session, key_id)

        referrals, records, audits = live.query(stored)
        assert referrals == [referral_id], why
        assert [(r.key, r.state, r.referral_id) for r in records] == [(key, DONE, referral_id)], why
        second_outcome = "replayed" if second_body == "the same body" else "mismatch"
        assert audits == Counter({"ok": 1, second_outcome: 1}), why
        assert_no_server_errors(live)
    finally:
        server.stop()
