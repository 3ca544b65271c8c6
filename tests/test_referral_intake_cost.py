"""What keeps POST /v1/referrals cheap, held to the same answers and stored rows: the answer
dumped by hand equals the schema's dump (and a later GET), one transaction and one commit,
no reads of the key, the vocabulary or the new rows back."""

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
from referral.referrals.models import AuditEvent, Referral, ReferralEvent
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
    seen: list[str] = []
    engine = get_database(app).engine

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    def commit(_conn: Any) -> None:
        seen.append("COMMIT")

    sa.event.listen(engine, "before_cursor_execute", note)
    sa.event.listen(engine, "commit", commit)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
        sa.event.remove(engine, "commit", commit)


def test_a_post_is_one_transaction_with_one_commit_and_reads_nothing_back(app, client, keys):
    assert post(client, keys.app, RUNNING_BACK).status_code == 201  # the key and vocabulary read
    with statements(app) as seen:
        response = post(client, keys.app, RUNNING_BACK)
    assert response.status_code == 201
    writes = [s.split(" (")[0] for s in seen if s.startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == [
        "INSERT INTO referral",
        "INSERT INTO referral_event",
        "INSERT INTO audit_event",
    ]
    assert seen.count("COMMIT") == 1 and seen[-1] == "COMMIT"
    for table in ("api_key", "concern", "red_flag", "referral", "referral_event", "audit_event"):
        assert not [s for s in seen if s.startswith("SELECT") and f" FROM {table} " in f"{s} "]


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


def test_a_failed_commit_leaves_no_ok_line(app, client, keys, monkeypatch):
    from sqlalchemy.orm import Session as OrmSession

    real = OrmSession.commit

    def failing(self: OrmSession) -> None:
        if any(True for _ in self.identity_map.values() if isinstance(_, Referral)):
            raise sa.exc.OperationalError("COMMIT", {}, RuntimeError("disk full"))
        real(self)

    monkeypatch.setattr(OrmSession, "commit", failing)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert post(client, keys.app, RUNNING_BACK).status_code == 500
    monkeypatch.setattr(OrmSession, "commit", real)
    with Session(get_database(app).engine) as session:
        assert session.exec(select(Referral)).first() is None
        audit = session.exec(select(AuditEvent)).all()
        assert [(a.action, a.outcome) for a in audit] == [("referral.create", "rejected")]


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
