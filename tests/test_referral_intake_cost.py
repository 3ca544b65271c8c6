"""What keeps POST /v1/referrals cheap and whole, held to the same answers and stored rows: the
answer dumped by hand equals the schema's dump (and a later GET); one session, one connection,
one transaction and one commit, all inside the service function (the view only parses, calls it
once and answers); the idempotency record first among the writes; no reads of the key, the
vocabulary or the new rows back; a replay is one read and its audit line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlmodel import Session, select

from referral.db import get_database, get_session
from referral.referrals import log as referral_log
from referral.referrals import vocabulary as vocabulary_module
from referral.referrals.models import AuditEvent, IdempotencyRecord, Referral, ReferralEvent
from referral.referrals.schemas import ReferralSchema, referral_json
from tests.test_referrals import RUNNING_BACK, Keys, bearer, clinic_id, post
from tests.test_referrals import keys as make_keys

BODIES: list[dict[str, Any]] = [
    RUNNING_BACK,
    {"origin": {"lat": 44.99, "lon": -93.25}, "concerns": ["knee_pain"], "patient_ref": "pt:7"},
    {
        **RUNNING_BACK,
        "urgency": "soon",
        "red_flags": ["bladder_bowel_change", "history_of_cancer"],
        "specialties": ["orthopedic"],
        "assessment": {"score": 3, "notes": ["worse at night"], "nested": {"pain": 7.5}},
        "max_distance": 40,
        "unit": "km",
    },
    {
        "origin": {"city": "Minneapolis", "state": "MN"},
        "concerns": ["neck_pain"],
        "max_distance": 30,
    },
    {"origin": {"zip": "55413"}, "concerns": ["low_back_pain", "running_injury", "low_back_pain"]},
    # Nothing within reach: no match, the options beyond reach, waiting for routing.
    {"origin": {"zip": "99501"}, "concerns": ["knee_pain"], "urgency": "soon"},
]


@pytest.fixture
def keys(app: Flask) -> Keys:
    return make_keys.__wrapped__(app)  # type: ignore[attr-defined]


def as_json(value: Any) -> str:
    # Order matters too: the answer is sent with its keys in the schema's order.
    return json.dumps(value, sort_keys=False)


@pytest.mark.parametrize("number", range(len(BODIES)))
def test_the_answer_is_the_schemas_dump_and_what_a_get_shows(app, client, keys, number):
    response = post(client, keys.app, BODIES[number])
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    fetched = client.get(response.headers["Location"], headers=bearer(keys.app))
    assert fetched.status_code == 200
    assert as_json(answer) == as_json(fetched.get_json())
    with app.test_request_context():
        session = get_session()
        referral = referral_log.get_by_id(session, answer["id"])
        assert referral is not None
        detail = referral_log.detail(session, referral)
        assert as_json(referral_json(detail)) == as_json(ReferralSchema().dump(detail))


def test_the_hand_dump_equals_the_schema_after_changes_and_purge(app, client, keys, runner):
    first = post(client, keys.app, {**RUNNING_BACK, "patient_ref": "pt-1", "assessment": {"a": 1}})
    referral_id = first.get_json()["id"]
    pro = bearer(keys.pro_therapy)
    for change in ({"status": "accepted", "note": "seen the notes"}, {"status": "scheduled"}):
        assert (
            client.patch(f"/v1/referrals/{referral_id}", json=change, headers=pro).status_code
            == 200
        )
    preferred = {**RUNNING_BACK, "preferred_clinic_id": clinic_id(app, "shea-pt")}
    assert post(client, keys.app, preferred).status_code == 201
    assert runner.invoke(args=["referrals", "purge", "--older-than", "0"]).exit_code == 0
    with app.test_request_context():
        session = get_session()
        referrals = session.exec(select(Referral)).all()
        assert len(referrals) == 2
        for referral in referrals:
            detail = referral_log.detail(session, referral)
            assert as_json(referral_json(detail)) == as_json(ReferralSchema().dump(detail))
        unmatched = {**referral_log.detail(session, referrals[0]), "match": None}
        assert as_json(referral_json(unmatched)) == as_json(ReferralSchema().dump(unmatched))


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """Every statement the app's engine runs, and BEGIN, COMMIT, ROLLBACK (SQLAlchemy's
    transaction events: on SQLite the driver's own BEGIN is implicit) and CHECKOUT (a
    connection taken from the pool)."""
    seen: list[str] = []
    engine = get_database(app).engine

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    listeners: list[tuple[Any, str, Any]] = [(engine, "before_cursor_execute", note)]
    for name in ("begin", "commit", "rollback"):
        listeners.append((engine, name, lambda _conn, name=name: seen.append(name.upper())))
    listeners.append((engine.pool, "checkout", lambda *_args: seen.append("CHECKOUT")))
    for target, name, fn in listeners:
        sa.event.listen(target, name, fn)
    try:
        yield seen
    finally:
        for target, name, fn in listeners:
            sa.event.remove(target, name, fn)


def writes(seen: list[str]) -> list[str]:
    return [s.split(" (")[0] for s in seen if s.startswith(("INSERT", "UPDATE", "DELETE"))]


def reads_of(seen: list[str], *tables: str) -> list[str]:
    return [s for s in seen for t in tables if s.startswith("SELECT") and f" FROM {t} " in f"{s} "]


NOT_READ = ("api_key", "concern", "concern_specialty", "red_flag", "referral", "referral_event",
            "audit_event")  # fmt: skip


def test_a_post_is_one_transaction_with_one_commit_and_reads_nothing_back(app, client, keys):
    assert post(client, keys.app, RUNNING_BACK).status_code == 201  # the key and vocabulary read
    with statements(app) as seen:
        response = post(client, keys.app, RUNNING_BACK)
    assert response.status_code == 201
    assert writes(seen) == [
        "INSERT INTO referral",
        "INSERT INTO referral_event",
        "INSERT INTO audit_event",
    ]
    assert [s for s in seen if s.isupper()] == ["CHECKOUT", "BEGIN", "COMMIT"]
    assert seen[-1] == "COMMIT"
    assert not reads_of(seen, *NOT_READ)


def test_with_a_key_its_record_is_read_first_and_written_first(app, client, keys):
    assert post(client, keys.app, RUNNING_BACK).status_code == 201  # the key and vocabulary read
    with statements(app) as seen:
        response = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "first-write"})
    assert response.status_code == 201
    queries = [s for s in seen if not s.isupper()]
    assert queries[0].startswith("SELECT") and " FROM idempotency_record " in queries[0] + " "
    assert writes(seen) == [
        "INSERT INTO idempotency_record",
        "INSERT INTO referral",
        "INSERT INTO referral_event",
        "INSERT INTO audit_event",
    ]
    assert [s for s in seen if s.isupper()] == ["CHECKOUT", "BEGIN", "COMMIT"]
    assert not reads_of(seen, *NOT_READ)
    assert len(reads_of(seen, "idempotency_record")) == 1


def test_a_replay_is_one_read_and_its_audit_line(app, client, keys, monkeypatch):
    headers = {"Idempotency-Key": "replay-cost"}
    first = post(client, keys.app, RUNNING_BACK, **headers).get_json()

    def no_geocoding(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a replay places no origin")

    monkeypatch.setattr("referral.referrals.service.referral_request", no_geocoding)
    monkeypatch.setattr("referral.referrals.service.create_referral", no_geocoding)
    with statements(app) as seen:
        again = post(client, keys.app, RUNNING_BACK, **headers)
    assert again.status_code == 201 and again.get_json() == {**first, "replayed": True}
    assert len(seen) == 5, seen
    checkout, begin, read, write, commit = seen
    assert (checkout, begin, commit) == ("CHECKOUT", "BEGIN", "COMMIT")
    assert read.startswith("SELECT") and " FROM idempotency_record " in read
    assert write.startswith("INSERT INTO audit_event")


@pytest.mark.parametrize("case", ["new", "replayed", "other body", "unplaceable origin"])
def test_the_view_leaves_every_transaction_to_the_service(app, client, keys, monkeypatch, case):
    """The service function is called once and every transaction of the POST begins and
    ends inside it; outside it only a refusal's own audit line is written (after_request)."""
    from referral.referrals import service, views

    calls: list[str] = []
    inside: list[bool] = []
    real = service.submit_referral

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append("submit_referral")
        inside.append(True)
        try:
            return real(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(views, "submit_referral", counted)
    headers = {"Idempotency-Key": "view-check"}
    assert post(client, keys.app, RUNNING_BACK, **headers).status_code == 201
    calls.clear()
    body = {
        "new": RUNNING_BACK,
        "replayed": RUNNING_BACK,
        "other body": {**RUNNING_BACK, "urgency": "soon"},
        "unplaceable origin": {**RUNNING_BACK, "origin": {"zip": "00000"}},
    }[case]
    engine = get_database(app).engine
    events: list[tuple[str, bool]] = []
    names = ("begin", "commit", "rollback")
    hooks = [(n, lambda _c, n=n: events.append((n, bool(inside)))) for n in names]
    for name, hook in hooks:
        sa.event.listen(engine, name, hook)
    try:
        with statements(app) as seen:
            if case == "new":
                response = post(client, keys.app, body)
            else:
                response = post(client, keys.app, body, **headers)
    finally:
        for name, hook in hooks:
            sa.event.remove(engine, name, hook)
    assert calls == ["submit_referral"]
    if case in ("new", "replayed"):
        assert response.status_code == 201
        assert events == [("begin", True), ("commit", True)]
    else:
        assert response.status_code == 422
        # The service's transaction ends in it (rolled back: nothing written); the refusal's
        # audit line is a short transaction of its own, after the view.
        assert events == [("begin", True), ("rollback", True), ("begin", False), ("commit", False)]
        assert writes(seen) == ["INSERT INTO audit_event"]


def test_stored_rows_are_as_before(app, client, keys):
    body = {**RUNNING_BACK, "red_flags": ["history_of_cancer"], "patient_ref": "pt-9"}
    answer = post(client, keys.app, body).get_json()
    with Session(get_database(app).engine) as session:
        referral = session.get(Referral, answer["id"])
        assert referral is not None
        assert referral.version == 1 and referral.status == "created"
        assert referral.source_key_id == keys.app_key_id and referral.source == "runcheck"
        assert referral.patient_ref == "pt-9" and referral.purged_at is None
        events = session.exec(select(ReferralEvent)).all()
        assert [
            (e.referral_id, e.from_status, e.to_status, e.actor, e.actor_key_id) for e in events
        ] == [(answer["id"], None, "created", "runcheck", keys.app_key_id)]
        audit = session.exec(select(AuditEvent)).all()
        assert [(a.action, a.outcome, a.referral_id, a.actor_key_id) for a in audit] == [
            ("referral.create", "ok", answer["id"], keys.app_key_id)
        ]


def test_a_failed_commit_leaves_nothing_and_the_key_free(app, client, keys, monkeypatch):
    """The commit fails (a crash at the last moment): neither the referral, its history, its
    "ok" line nor its idempotency record stays, and the retry with the key proceeds at once."""
    from sqlalchemy.orm import Session as OrmSession

    real = OrmSession.commit

    def failing(self: OrmSession) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, RuntimeError("disk full"))

    headers = {"Idempotency-Key": "crashed"}
    monkeypatch.setattr(OrmSession, "commit", failing)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert post(client, keys.app, RUNNING_BACK, **headers).status_code == 500
    monkeypatch.setattr(OrmSession, "commit", real)
    with Session(get_database(app).engine) as session:
        assert session.exec(select(Referral)).first() is None
        assert session.exec(select(ReferralEvent)).first() is None
        assert session.exec(select(IdempotencyRecord)).first() is None
        audit = session.exec(select(AuditEvent)).all()
        assert [(a.action, a.outcome) for a in audit] == [("referral.create", "rejected")]
    retry = post(client, keys.app, RUNNING_BACK, **headers)
    assert retry.status_code == 201 and retry.get_json()["replayed"] is False


def test_a_new_concern_code_is_known_at_its_first_use(app, client, keys, monkeypatch):
    assert post(client, keys.app, RUNNING_BACK).status_code == 201  # vocabulary cached
    with Session(get_database(app).engine) as session:
        session.execute(sa.text("INSERT INTO concern (code, label) VALUES ('new_pain', 'New')"))
        session.execute(
            sa.text(
                "INSERT INTO concern_specialty (concern_code, specialty_code, reason) "
                "VALUES ('new_pain', 'spine', 'because')"
            )
        )
        session.commit()
    body = {"origin": {"zip": "55413"}, "concerns": ["new_pain"]}
    answer = post(client, keys.app, body).get_json()
    assert answer["specialties_needed"] == [{"code": "spine", "reason": "concern 'New': because"}]


def test_other_vocabulary_changes_are_seen_within_the_cache_period(app, client, keys, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(vocabulary_module, "_monotonic", lambda: now[0])
    vocabulary_module.forget_vocabulary()
    assert post(client, keys.app, RUNNING_BACK).status_code == 201
    with Session(get_database(app).engine) as session:
        session.execute(
            sa.text("UPDATE concern SET label = 'Runner back' WHERE code = 'running_low_back_pain'")
        )
        session.commit()
    now[0] += vocabulary_module.VOCABULARY_SECONDS
    reasons = [
        s["reason"] for s in post(client, keys.app, RUNNING_BACK).get_json()["specialties_needed"]
    ]
    assert all(reason.startswith("concern 'Runner back'") for reason in reasons)
