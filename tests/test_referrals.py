"""Referral intake, idempotency, lifecycle, the log, stats, export, audit and purge."""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from referral.auth.keys import create_key, revoke_key
from referral.db import get_database
from referral.directory.models import Clinic
from referral.referrals import idempotency
from referral.referrals.models import AuditEvent, IdempotencyRecord, Referral, ReferralEvent
from referral.timeutil import utcnow
from tests.helpers import assert_problem

RUNNING_BACK = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}


@dataclass(frozen=True)
class Keys:
    app: str
    other_app: str
    admin: str
    dashboard: str
    pro_therapy: str
    other_clinic: str
    app_key_id: int


def bearer(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def clinic_id(app, seed_key: str) -> int:
    with Session(get_database(app).engine) as session:
        clinic = session.exec(select(Clinic).where(Clinic.seed_key == seed_key)).one()
        assert clinic.id is not None
        return clinic.id


@pytest.fixture
def keys(app) -> Keys:
    with Session(get_database(app).engine) as session:
        made = {
            "app": create_key(session, name="runcheck", scopes=["referrals:write"]),
            "other_app": create_key(session, name="backapp", scopes=["referrals:write"]),
            "admin": create_key(session, name="ops", scopes=["admin"]),
            "dashboard": create_key(session, name="partner", scopes=["referrals:read"]),
            "pro_therapy": create_key(
                session,
                name="pro-therapy-front-desk",
                scopes=["referrals:status", "referrals:read"],
                clinic_id=clinic_id(app, "pro-therapy"),
            ),
            "other_clinic": create_key(
                session,
                name="shea-front-desk",
                scopes=["referrals:status"],
                clinic_id=clinic_id(app, "shea-pt"),
            ),
        }
        session.commit()
        app_key_id = made["app"][0].id
        assert app_key_id is not None
        return Keys(**{name: pair[1] for name, pair in made.items()}, app_key_id=app_key_id)


def post(client, key: str, body: dict, **headers: str):
    return client.post("/v1/referrals", json=body, headers=bearer(key, **headers))


def stored_referrals(app) -> list[Referral]:
    with Session(get_database(app).engine) as session:
        return list(session.exec(select(Referral)).all())


# ---- the story ---------------------------------------------------------------------


def test_cli_key_referral_for_running_back_pain_reaches_pro_therapy(app, client, runner, keys):
    made = runner.invoke(
        args=["keys", "create", "--name", "stridecheck", "--scopes", "referrals:write"]
    )
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    first = post(client, key, RUNNING_BACK, **{"Idempotency-Key": "visit-1"})
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert first.headers["Location"] == f"/v1/referrals/{body['id']}"
    assert body["match"]["clinic"]["name"] == "PRO Therapy"
    assert body["match"]["location"]["city"] == "Minneapolis"
    assert body["match"]["location"]["address_line1"] == "2112 Broadway Street NE"
    assert {s["code"] for s in body["specialties_needed"]} == {"spine", "running"}
    assert all(s["reason"] for s in body["specialties_needed"])
    assert body["status"] == "created" and body["replayed"] is False
    assert body["source"] == "stridecheck"

    again = post(client, key, RUNNING_BACK, **{"Idempotency-Key": "visit-1"})
    assert again.status_code == 201
    assert again.get_json()["id"] == body["id"]
    assert again.get_json()["replayed"] is True
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(stored_referrals(app)) == 1

    listed = client.get("/v1/referrals", headers=bearer(key)).get_json()
    assert [r["id"] for r in listed] == [body["id"]]
    stats = client.get("/v1/referrals/stats", headers=bearer(keys.admin)).get_json()
    assert stats["total"] == 1
    assert stats["by_source"] == {"stridecheck": 1}
    assert stats["by_clinic"][0]["name"] == "PRO Therapy"
    exported = client.get("/v1/referrals/export.csv", headers=bearer(keys.admin))
    assert exported.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [row["id"] for row in rows] == [body["id"]]
    assert rows[0]["clinic_name"] == "PRO Therapy"

    assert_problem(client.get(f"/v1/referrals/{body['id']}", headers=bearer(keys.other_app)), 404)
    assert client.get("/v1/referrals", headers=bearer(keys.other_app)).get_json() == []


def test_granular_concerns_match_the_same_clinic(client, keys):
    body = {"origin": {"zip": "55413"}, "concerns": ["low_back_pain", "running_injury"]}
    response = post(client, keys.app, body)
    assert response.status_code == 201
    assert response.get_json()["match"]["clinic"]["name"] == "PRO Therapy"


@pytest.mark.parametrize(
    "origin",
    [
        {"lat": 45.0, "lon": -93.26},
        {"city": "Minneapolis", "state": "MN"},
        {"address": "2112 Broadway Street NE, Minneapolis, MN 55413"},
    ],
)
def test_every_origin_form_works(client, keys, origin):
    response = post(client, keys.app, {"origin": origin, "concerns": ["running_low_back_pain"]})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["match"]["location"]["city"] == "Minneapolis"


def test_origin_is_stored_coarsely(app, client, keys):
    post(
        client,
        keys.app,
        {"origin": {"lat": 44.987654, "lon": -93.212345}, "concerns": ["knee_pain"]},
    )
    (referral,) = stored_referrals(app)
    assert (referral.origin_lat, referral.origin_lon) == (44.99, -93.21)


def test_a_specialty_nobody_lists_matches_possible_clinics_in_reach(client, keys):
    # Matching's rule in full is tests/test_matching.py; this is the shape of the answer.
    body = post(
        client, keys.app, {"origin": {"zip": "78201"}, "concerns": ["after_surgery"]}
    ).get_json()
    assert body["match"]["location"]["city"] == "San Antonio"
    assert body["match"]["fit"] == "possible"
    distances = [body["match"]["distance_km"]] + [a["distance_km"] for a in body["alternatives"]]
    assert distances == sorted(distances)


def test_nothing_within_max_distance_is_stored_for_routing_not_refused(app, client, keys):
    body = {"origin": {"zip": "99501"}, "concerns": ["knee_pain"], "max_distance": 50}
    response = post(client, keys.app, body)
    assert response.status_code == 201
    assert response.get_json()["status"] == "needs_routing"
    assert [r.status for r in stored_referrals(app)] == ["needs_routing"]


def test_red_flags_escalate_urgency_with_advice(client, keys):
    body = {**RUNNING_BACK, "urgency": "routine", "red_flags": ["bladder_bowel_change"]}
    referral = post(client, keys.app, body).get_json()
    assert referral["urgency"] == "urgent"
    assert referral["urgency_requested"] == "routine"
    assert referral["escalations"][0]["red_flag"] == "bladder_bowel_change"
    assert "emergency" in referral["escalations"][0]["advice"]
    soon = post(
        client, keys.app, {**RUNNING_BACK, "urgency": "urgent", "red_flags": ["history_of_cancer"]}
    )
    assert soon.get_json()["urgency"] == "urgent"  # never lowered


def test_concern_vocabulary_is_public(client):
    vocabulary = client.get("/v1/concerns", headers={"Origin": "https://app.example"})
    assert vocabulary.status_code == 200
    assert vocabulary.headers["Access-Control-Allow-Origin"] == "*"
    body = vocabulary.get_json()
    concerns = {c["code"]: c for c in body["concerns"]}
    assert {s["code"] for s in concerns["running_low_back_pain"]["specialties"]} == {
        "spine",
        "running",
    }
    assert all(s["reason"] for c in body["concerns"] for s in c["specialties"])
    flags = {f["code"]: f for f in body["red_flags"]}
    assert flags["saddle_numbness"]["escalate_to"] == "urgent"
    assert body["urgencies"] == ["routine", "soon", "urgent"]


# ---- bad input and auth ------------------------------------------------------------------------

BAD_BODIES = [
    ({"concerns": ["low_back_pain"]}, "origin"),
    ({"origin": {}, "concerns": ["low_back_pain"]}, "origin.origin"),
    ({"origin": {"zip": "55413", "lat": 1, "lon": 2}, "concerns": ["low_back_pain"]}, "origin.zip"),
    ({"origin": {"zip": "00000"}, "concerns": ["low_back_pain"]}, "origin.zip"),
    ({"origin": {"lat": 95, "lon": 0}, "concerns": ["low_back_pain"]}, "origin.lat"),
    ({"origin": {"zip": "55413"}}, "concerns"),
    ({"origin": {"zip": "55413"}, "concerns": []}, "concerns"),
    ({"origin": {"zip": "55413"}, "concerns": ["toothache"]}, "concerns"),
    ({**RUNNING_BACK, "specialties": ["astrology"]}, "specialties"),
    ({**RUNNING_BACK, "red_flags": ["mild_boredom"]}, "red_flags"),
    ({**RUNNING_BACK, "urgency": "yesterday"}, "urgency"),
    ({**RUNNING_BACK, "max_distance": 0}, "max_distance"),
    ({**RUNNING_BACK, "max_distance": 99999}, "max_distance"),
    ({**RUNNING_BACK, "preferred_clinic_id": "3"}, "preferred_clinic_id"),
    ({**RUNNING_BACK, "patient_ref": "jane.doe@example.com"}, "patient_ref"),
    ({**RUNNING_BACK, "patient_ref": "Jane Doe"}, "patient_ref"),
    ({**RUNNING_BACK, "name": "Jane Doe"}, "name"),
    ({**RUNNING_BACK, "email": "jane@example.com"}, "email"),
    ({**RUNNING_BACK, "date_of_birth": "1980-01-01"}, "date_of_birth"),
    ({**RUNNING_BACK, "origin": {"zip": "55413", "street": "x"}}, "origin.street"),
    ({**RUNNING_BACK, "assessment": {"patient_name": "Jane"}}, "assessment"),
    ({**RUNNING_BACK, "assessment": {"answers": {"phone": "555"}}}, "assessment"),
    ({**RUNNING_BACK, "assessment": {"notes": "x" * 5000}}, "assessment"),
    ({**RUNNING_BACK, "assessment": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "assessment"),
    ({**RUNNING_BACK, "assessment": "a string"}, "assessment"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_bodies_are_named_and_nothing_is_stored(app, client, keys, body, field):
    assert_problem(post(client, keys.app, body), 422, field)
    assert stored_referrals(app) == []


def test_malformed_json_and_oversized_bodies(app, client, keys):
    garbled = client.post(
        "/v1/referrals", data="{not json", content_type="application/json", headers=bearer(keys.app)
    )
    assert garbled.status_code in (400, 422)
    assert garbled.mimetype == "application/problem+json"
    huge = client.post(
        "/v1/referrals",
        data=json.dumps({**RUNNING_BACK, "assessment": {"x": "y" * 100_000}}),
        content_type="application/json",
        headers=bearer(keys.app),
    )
    assert_problem(huge, 413)
    assert stored_referrals(app) == []


def test_missing_bad_revoked_and_wrong_scope_keys(app, client, keys):
    no_key = client.post("/v1/referrals", json=RUNNING_BACK)
    assert_problem(no_key, 401)
    assert no_key.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(post(client, "rk_000000000000_wrong", RUNNING_BACK), 401)
    assert_problem(post(client, keys.dashboard, RUNNING_BACK), 403)
    assert_problem(post(client, keys.pro_therapy, RUNNING_BACK), 403)
    with Session(get_database(app).engine) as session:
        key_id = keys.app.split("_")[1]
        revoke_key(session, key_id)
        session.commit()
    assert_problem(post(client, keys.app, RUNNING_BACK), 401)
    assert stored_referrals(app) == []


def test_authentication_comes_before_validation(client):
    assert_problem(client.post("/v1/referrals", json={"name": "x"}), 401)


# ---- idempotency -------------------------------------------------------------------------------


def test_same_idempotency_key_different_body_is_422(app, client, keys):
    assert post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "k1"}).status_code == 201
    changed = {**RUNNING_BACK, "urgency": "soon"}
    assert_problem(
        post(client, keys.app, changed, **{"Idempotency-Key": "k1"}), 422, "Idempotency-Key"
    )
    assert len(stored_referrals(app)) == 1


def test_key_order_and_spacing_do_not_change_the_body(client, keys):
    first = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "k2"}).get_json()
    reordered = client.post(
        "/v1/referrals",
        data=json.dumps(
            {"concerns": ["running_low_back_pain"], "origin": {"zip": "55413"}}, indent=3
        ),
        content_type="application/json",
        headers=bearer(keys.app, **{"Idempotency-Key": "k2"}),
    )
    assert reordered.get_json()["id"] == first["id"]


def test_idempotency_keys_are_per_api_key(app, client, keys):
    mine = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "shared"}).get_json()
    theirs = post(client, keys.other_app, RUNNING_BACK, **{"Idempotency-Key": "shared"}).get_json()
    assert mine["id"] != theirs["id"]
    assert theirs["replayed"] is False
    assert len(stored_referrals(app)) == 2


# The body as the service fingerprints it: the schema's defaults filled in.
RUNNING_BACK_PARSED = {
    **RUNNING_BACK, "specialties": [], "urgency": "routine", "red_flags": [], "unit": "mi"
}  # fmt: skip


@contextmanager
def uncommitted_record(app, key_id: int, key: str, request_hash: str) -> Iterator[Session]:
    """A finished idempotency record in a transaction still open: what a request with this
    key still at work (between its first write and its commit) holds."""
    with Session(get_database(app).engine) as session:
        idempotency.insert(
            session,
            api_key_id=key_id,
            key=key,
            request_hash=request_hash,
            status=201,
            body={"id": "f" * 32, "status": "created"},
            referral_id="f" * 32,
            now=utcnow(),
            retention=timedelta(hours=48),
        )
        yield session


@pytest.mark.parametrize("first", ["commits", "rolls back", "had another body"])
def test_a_concurrent_request_with_the_key_waits_for_the_first(app, client, keys, first):
    """The second request finds no record (the first has not committed), does its work, and
    waits at its own insert (on the unique index, or for SQLite's write lock) until the first
    request's transaction ends; then it answers the first one's record, or goes ahead."""
    engine = get_database(app).engine
    request_hash = idempotency.fingerprint(
        {**RUNNING_BACK_PARSED, "urgency": "soon"} if first == "had another body"
        else RUNNING_BACK_PARSED
    )  # fmt: skip
    reached_insert = threading.Event()

    def note(_conn, _cursor, statement, *_args) -> None:
        if statement.startswith("INSERT INTO idempotency_record"):
            reached_insert.set()

    answers: list = []
    headers = {"Idempotency-Key": "racing"}
    with uncommitted_record(app, keys.app_key_id, "racing", request_hash) as holder:
        sa.event.listen(engine, "before_cursor_execute", note)
        try:
            second = threading.Thread(
                target=lambda: answers.append(post(client, keys.app, RUNNING_BACK, **headers))
            )
            started = time.monotonic()
            second.start()
            assert reached_insert.wait(30)
            time.sleep(0.5)  # it waits there...
            assert second.is_alive() and not answers
            if first == "rolls back":  # ...until this
                holder.rollback()
            else:
                holder.commit()
            second.join(30)
        finally:
            sa.event.remove(engine, "before_cursor_execute", note)
    (answer,) = answers
    assert time.monotonic() - started >= 0.5
    outcomes = [(row.action, row.outcome) for row in audit_rows(app)]
    if first == "commits":
        assert answer.status_code == 201
        assert answer.get_json() == {"id": "f" * 32, "status": "created", "replayed": True}
        assert answer.headers["Idempotent-Replayed"] == "true"
        assert answer.headers["Location"] == f"/v1/referrals/{'f' * 32}"
        assert stored_referrals(app) == []
        assert outcomes == [("referral.create", "replayed")]
    elif first == "had another body":
        assert_problem(answer, 422, "Idempotency-Key")
        assert stored_referrals(app) == []
        assert outcomes == [("referral.create", "mismatch")]
    else:
        assert answer.status_code == 201 and answer.get_json()["replayed"] is False
        (referral,) = stored_referrals(app)
        assert referral.id == answer.get_json()["id"]
        assert [(r.key, r.referral_id) for r in stored_records(app)] == [("racing", referral.id)]
        assert outcomes == [("referral.create", "ok")]


def stored_records(app) -> list[IdempotencyRecord]:
    with Session(get_database(app).engine) as session:
        return list(session.exec(select(IdempotencyRecord)).all())


def test_a_record_left_in_flight_by_an_older_release_is_replaced_at_once(app, client, keys):
    """Releases before this one claimed a key first ("in_flight") and completed it later; a
    claim its worker never completed is no answer: the next request with the key replaces it."""
    with Session(get_database(app).engine) as session:
        session.add(
            IdempotencyRecord(
                api_key_id=keys.app_key_id,
                key="left-behind",
                request_hash=idempotency.fingerprint(RUNNING_BACK_PARSED),
                state="in_flight",
                expires_at=utcnow() + timedelta(hours=48),
            )
        )
        session.commit()
    made = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "left-behind"})
    assert made.status_code == 201 and made.get_json()["replayed"] is False
    assert [(r.state, r.referral_id) for r in stored_records(app)] == [
        (idempotency.DONE, made.get_json()["id"])
    ]


def test_a_rejected_request_frees_its_key_for_the_corrected_retry(app, client, keys):
    wrong = {"origin": {"zip": "00000"}, "concerns": ["running_low_back_pain"]}
    assert_problem(post(client, keys.app, wrong, **{"Idempotency-Key": "fix-me"}), 422)
    fixed = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "fix-me"})
    assert fixed.status_code == 201


def test_expired_idempotency_records_are_not_replayed(app, client, keys):
    first = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "old"}).get_json()
    with Session(get_database(app).engine) as session:
        record = session.exec(select(IdempotencyRecord)).one()
        assert (
            record.expires_at.replace(tzinfo=None) - record.created_at.replace(tzinfo=None)
        ) >= timedelta(hours=24)
        record.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    again = post(client, keys.app, RUNNING_BACK, **{"Idempotency-Key": "old"}).get_json()
    assert again["id"] != first["id"] and again["replayed"] is False
    # The expired record was deleted in the transaction that stored its replacement.
    assert [(r.key, r.referral_id) for r in stored_records(app)] == [("old", again["id"])]


# ---- lifecycle --------------------------------------------------------------------------------


def patch(client, key: str, referral_id: str, body: dict):
    return client.patch(f"/v1/referrals/{referral_id}", json=body, headers=bearer(key))


def test_clinic_closes_the_loop_and_the_app_sees_it(client, keys):
    referral_id = post(client, keys.app, RUNNING_BACK).get_json()["id"]
    for status in ("accepted", "scheduled", "completed"):
        response = patch(
            client, keys.pro_therapy, referral_id, {"status": status, "note": f"{status}!"}
        )
        assert response.status_code == 200, response.get_json()
    seen = client.get(f"/v1/referrals/{referral_id}", headers=bearer(keys.app)).get_json()
    assert seen["status"] == "completed"
    assert [(h["from_status"], h["to_status"]) for h in seen["history"]] == [
        (None, "created"),
        ("created", "accepted"),
        ("accepted", "scheduled"),
        ("scheduled", "completed"),
    ]
    assert seen["history"][1]["actor"] == "pro-therapy-front-desk"
    assert seen["history"][1]["note"] == "accepted!"
    assert_problem(
        patch(client, keys.pro_therapy, referral_id, {"status": "cancelled"}), 409, "status"
    )


def test_invalid_transitions_and_decline_reasons(client, keys):
    referral_id = post(client, keys.app, RUNNING_BACK).get_json()["id"]
    assert_problem(patch(client, keys.admin, referral_id, {"status": "completed"}), 409, "status")
    assert_problem(patch(client, keys.admin, referral_id, {"status": "declined"}), 422, "note")
    assert_problem(patch(client, keys.admin, referral_id, {"status": "lost"}), 422, "status")
    assert_problem(patch(client, keys.admin, referral_id, {"status": "accepted", "x": 1}), 422, "x")
    declined = patch(client, keys.admin, referral_id, {"status": "declined", "note": "no capacity"})
    assert declined.get_json()["status"] == "declined"
    assert_problem(patch(client, keys.admin, referral_id, {"status": "accepted"}), 409, "status")


def test_who_may_change_a_referral(client, keys):
    referral_id = post(client, keys.app, RUNNING_BACK).get_json()["id"]
    # Another clinic cannot even see it; the app may cancel, not accept; a dashboard may not.
    assert_problem(patch(client, keys.other_clinic, referral_id, {"status": "accepted"}), 404)
    assert_problem(patch(client, keys.app, referral_id, {"status": "accepted"}), 403, "status")
    assert_problem(patch(client, keys.other_app, referral_id, {"status": "cancelled"}), 404)
    assert patch(client, keys.app, referral_id, {"status": "cancelled"}).status_code == 200


# ---- reading the log --------------------------------------------------------------------------


def test_who_sees_what(client, keys):
    mine = post(client, keys.app, RUNNING_BACK).get_json()["id"]
    theirs = post(
        client, keys.other_app, {"origin": {"zip": "78201"}, "concerns": ["work_injury"]}
    ).get_json()["id"]

    def ids(key: str) -> set[str]:
        return {r["id"] for r in client.get("/v1/referrals", headers=bearer(key)).get_json()}

    assert ids(keys.app) == {mine}
    assert ids(keys.other_app) == {theirs}
    assert ids(keys.admin) == {mine, theirs}
    assert ids(keys.pro_therapy) == {mine}  # sent to PRO Therapy
    assert ids(keys.other_clinic) == set()
    assert ids(keys.dashboard) == set()
    assert_problem(client.get(f"/v1/referrals/{theirs}", headers=bearer(keys.app)), 404)
    assert_problem(client.get("/v1/referrals/not-an-id", headers=bearer(keys.app)), 404)
    assert client.get(f"/v1/referrals/{theirs}", headers=bearer(keys.admin)).status_code == 200


def test_list_filters_and_pagination(app, client, keys):
    made = [post(client, keys.app, RUNNING_BACK).get_json()["id"] for _ in range(3)]
    other = post(
        client, keys.other_app, {"origin": {"zip": "78201"}, "concerns": ["work_injury"]}
    ).get_json()
    patch(client, keys.admin, made[0], {"status": "accepted"})
    admin = bearer(keys.admin)
    page = client.get("/v1/referrals?page_size=2", headers=admin)
    assert json.loads(page.headers["X-Pagination"])["total"] == 4
    assert len(page.get_json()) == 2
    accepted = client.get("/v1/referrals?status=accepted", headers=admin).get_json()
    assert [r["id"] for r in accepted] == [made[0]]
    by_source = client.get("/v1/referrals?source=backapp", headers=admin).get_json()
    assert [r["id"] for r in by_source] == [other["id"]]
    fit = other["match"]["clinic"]["id"]
    assert [
        r["id"] for r in client.get(f"/v1/referrals?clinic_id={fit}", headers=admin).get_json()
    ] == [other["id"]]
    future = (utcnow() + timedelta(days=1)).isoformat()
    assert (
        client.get(
            "/v1/referrals", query_string={"created_after": future}, headers=admin
        ).get_json()
        == []
    )
    assert (
        len(
            client.get(
                "/v1/referrals", query_string={"created_before": future}, headers=admin
            ).get_json()
        )
        == 4
    )
    assert_problem(
        client.get("/v1/referrals?created_after=yesterday", headers=admin), 422, "created_after"
    )
    assert_problem(client.get("/v1/referrals?status=lost", headers=admin), 422, "status")


def test_stats_and_export_are_admin_only_and_de_identified(client, keys):
    post(
        client,
        keys.app,
        {**RUNNING_BACK, "patient_ref": "pt-canary-42", "assessment": {"score": 9}},
    )
    post(client, keys.other_app, {"origin": {"zip": "78201"}, "concerns": ["work_injury"]})
    assert_problem(client.get("/v1/referrals/stats", headers=bearer(keys.app)), 403)
    assert_problem(client.get("/v1/referrals/export.csv", headers=bearer(keys.dashboard)), 403)
    stats = client.get("/v1/referrals/stats", headers=bearer(keys.admin)).get_json()
    assert stats["total"] == 2
    assert stats["by_status"] == {"created": 2}
    assert stats["by_source"] == {"backapp": 1, "runcheck": 1}
    assert sum(day["count"] for day in stats["by_day"]) == 2
    assert stats["by_day"][0]["day"] == utcnow().date().isoformat()
    text = client.get("/v1/referrals/export.csv", headers=bearer(keys.admin)).get_data(as_text=True)
    assert "pt-canary-42" not in text and "score" not in text
    assert len(list(csv.DictReader(io.StringIO(text)))) == 2


def test_csv_export_defuses_formulas(app, client, keys):
    with Session(get_database(app).engine) as session:
        _, evil = create_key(session, name="=HYPERLINK(1)", scopes=["referrals:write"])
        session.commit()
    post(client, evil, RUNNING_BACK)
    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get("/v1/referrals/export.csv", headers=bearer(keys.admin)).get_data(
                    as_text=True
                )
            )
        )
    )
    assert rows[0]["source"] == "'=HYPERLINK(1)"


# ---- audit, privacy, purge ---------------------------------------------------------------------


def audit_rows(app) -> list[AuditEvent]:
    with Session(get_database(app).engine) as session:
        return list(session.exec(select(AuditEvent).order_by(AuditEvent.id)).all())


def test_every_read_and_write_is_audited(app, client, keys):
    referral_id = post(client, keys.app, RUNNING_BACK).get_json()["id"]
    client.get(f"/v1/referrals/{referral_id}", headers=bearer(keys.app))
    client.get("/v1/referrals", headers=bearer(keys.admin))
    patch(client, keys.pro_therapy, referral_id, {"status": "accepted"})
    client.get(f"/v1/referrals/{referral_id}", headers=bearer(keys.other_app))
    client.get("/v1/referrals/export.csv", headers=bearer(keys.admin))
    seen = [(row.action, row.referral_id, row.outcome) for row in audit_rows(app)]
    assert seen == [
        ("referral.create", referral_id, "ok"),
        ("referral.read", referral_id, "ok"),
        ("referral.read", referral_id, "ok"),
        ("referral.update", referral_id, "ok"),
        ("referral.read", referral_id, "not_found"),
        ("referral.export", referral_id, "ok"),
    ]
    assert audit_rows(app)[0].actor_key_id == keys.app_key_id
    assert all(row.at is not None for row in audit_rows(app))


def test_logs_never_hold_payloads_patient_refs_or_keys(app, client, keys, caplog):
    caplog.set_level(logging.DEBUG)
    canary_ref = "canary-ref-7f3a"
    canary_text = "canary-assessment-91be"
    body = {**RUNNING_BACK, "patient_ref": canary_ref, "assessment": {"summary": canary_text}}
    post(client, keys.app, body, **{"Idempotency-Key": "log-check"})
    post(client, keys.app, body, **{"Idempotency-Key": "log-check"})
    post(client, keys.app, {**body, "urgency": "soon"}, **{"Idempotency-Key": "log-check"})
    post(client, keys.app, {**body, "origin": {"zip": "00000"}})
    client.post("/v1/referrals", json=body, headers=bearer(keys.app + "x"))
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    for secret in (canary_ref, canary_text, keys.app, keys.app.split("_", 2)[-1]):
        assert secret not in logged


def test_purge_removes_payloads_but_keeps_counts(app, client, runner, keys):
    with_ref = {**RUNNING_BACK, "patient_ref": "pt-1", "assessment": {"score": 3}}
    referral_id = post(client, keys.app, with_ref, **{"Idempotency-Key": "p1"}).get_json()["id"]
    before = client.get("/v1/referrals/stats", headers=bearer(keys.admin)).get_json()
    kept = runner.invoke(args=["referrals", "purge", "--older-than", "1"])
    assert "purged 0 referrals" in kept.output
    result = runner.invoke(args=["referrals", "purge", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert "purged 1 referrals" in result.output
    seen = client.get(f"/v1/referrals/{referral_id}", headers=bearer(keys.admin)).get_json()
    assert seen["patient_ref"] is None and seen["assessment"] is None and seen["purged"] is True
    assert seen["match"]["clinic"]["name"] == "PRO Therapy"
    after = client.get("/v1/referrals/stats", headers=bearer(keys.admin)).get_json()
    assert after["total"] == before["total"] and after["by_clinic"] == before["by_clinic"]
    with Session(get_database(app).engine) as session:
        for record in session.exec(select(IdempotencyRecord)).all():
            assert "pt-1" not in json.dumps(record.response_body)
        assert session.exec(select(ReferralEvent)).first() is not None
    assert any(row.action == "referral.purge" for row in audit_rows(app))
