"""Keys and rate limits (issue #15, items 1, 8, 12, 13): requests without a usable key cannot
grow the audit trail and meet 429 per client IP (RATELIMIT_KEY_REFUSALS); scopes are checked
before queries and bodies; Retry-After appears only where it means something; requests with
a usable key are limited per key (RATELIMIT_KEYED), not by the anonymous per-IP budget.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from referral.auth.keys import create_key, revoke_key
from referral.db import get_database, get_session
from referral.referrals.models import AuditEvent
from referral.referrals.views import SCOPES_NEEDED
from tests.conftest import build_app
from tests.helpers import assert_problem, auth
from tests.test_limits import BODY, assert_rate_limited

FLOOD = 200
UNKNOWN = "rk_0123456789ab_" + "A" * 43  # well formed, no such key


def audit_rows(app: Any) -> list[AuditEvent]:
    with Session(get_database(app).engine) as session:
        return list(session.exec(select(AuditEvent).order_by(sa.asc(AuditEvent.id))))


def make_key(app: Any, name: str, *scopes: str) -> tuple[int, str]:
    with Session(get_database(app).engine) as session:
        row, key = create_key(session, name=name, scopes=list(scopes))
        session.commit()
        assert row.id is not None
        return row.id, key


# --- item 1: unknown keys neither grow the audit table nor go unlimited ----------------------


@pytest.mark.parametrize("presented", ["nope", UNKNOWN])
def test_a_flood_of_unknown_keys_writes_no_audit_row_and_meets_429(app, client, presented):
    limit = 60
    assert app.config["RATELIMIT_KEY_REFUSALS"] == f"{limit} per minute"  # the default
    paths = ["/v1/referrals", "/v1/referrals/stats", "/v1/referrals/export.csv"]
    statuses = []
    for n in range(FLOOD):
        path = paths[n % len(paths)]
        if n % 2:
            response = client.post("/v1/referrals", json=BODY, headers=auth(presented))
        else:
            response = client.get(path, headers=auth(presented))
        statuses.append(response.status_code)
        if response.status_code == 429:
            body = assert_rate_limited(response)
            assert "without a usable API key" in body["detail"]
    assert statuses == [401] * limit + [429] * (FLOOD - limit)
    assert audit_rows(app) == []
    # A usable key from the same address is not held by the refusals of others.
    _, admin = make_key(app, "admin", "admin")
    assert client.get("/v1/referrals/stats", headers=auth(admin)).status_code == 200
    # Another address has its own allowance.
    other = client.get("/v1/referrals", environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert_problem(other, 401)


def test_requests_without_any_key_are_limited_too(app, client):
    app.config["RATELIMIT_KEY_REFUSALS"] = "3 per hour"
    # After intake has entered its own limit (which once hid blueprint limits from the route).
    _, app_key = make_key(app, "runapp", "referrals:write")
    assert client.post("/v1/referrals", json=BODY, headers=auth(app_key)).status_code == 201
    statuses = [client.post("/v1/referrals", json=BODY).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    # The admin routes and clinic edits count against the same allowance.
    assert_rate_limited(client.get("/v1/admin/audit"))
    assert_rate_limited(client.post("/v1/clinics", json={"name": "X"}))
    assert client.get("/v1/clinics").status_code == 200  # public reads are not held
    assert [r.outcome for r in audit_rows(app)] == ["ok"]  # the referral, nothing else


def test_refusals_of_real_keys_are_audited_against_the_key(app, client):
    app.config["RATELIMIT_KEY_REFUSALS"] = "4 per hour"
    revoked_id, revoked = make_key(app, "old-app", "referrals:write")
    reader_id, reader = make_key(app, "dashboard", "referrals:read")
    with Session(get_database(app).engine) as session:
        revoke_key(session, revoked.split("_")[1])
        session.commit()
    prefix, key_id, secret = reader.split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * len(secret)}"  # a real key id, a wrong secret
    assert_problem(client.post("/v1/referrals", json=BODY, headers=auth(revoked)), 401)
    assert_problem(client.post("/v1/referrals", json=BODY, headers=auth(forged)), 401)
    assert_problem(client.get("/v1/referrals/stats", headers=auth(reader)), 403)
    rows = [(r.actor_key_id, r.action, r.outcome) for r in audit_rows(app)]
    assert rows == [
        (revoked_id, "referral.create", "refused_401"),
        (reader_id, "referral.stats", "refused_403"),
    ]
    # A 403 of a usable key is not a key refusal: two 401s spent, two left.
    assert [client.get("/v1/referrals").status_code for _ in range(3)] == [401, 401, 429]


def test_the_refusal_limit_is_in_the_spec(app):
    spec = app.extensions["referral_api"].spec.to_dict()
    ref = {"$ref": "#/components/responses/RATE_LIMITED"}
    for path, method in [
        ("/v1/referrals", "get"),
        ("/v1/referrals/stats", "get"),
        ("/v1/admin/audit", "get"),
        ("/v1/clinics", "post"),
    ]:
        assert spec["paths"][path][method]["responses"]["429"] == ref, (path, method)


def test_bad_rate_limit_settings_are_refused_at_start(database_url):
    with pytest.raises(ValueError, match="REFERRAL_RATELIMIT_KEY_REFUSALS"):
        build_app(database_url, RATELIMIT_KEY_REFUSALS="lots")


# --- item 8: 401, then 403, then 422 -----------------------------------------------------------


BAD_QUERY = "?created_after=yesterday"


def test_scope_is_checked_before_the_query_or_body(app, client):
    _, app_key = make_key(app, "runapp", "referrals:write")
    _, reader = make_key(app, "dashboard", "referrals:read")
    _, admin = make_key(app, "admin", "admin")
    for path in ("/v1/referrals/stats", "/v1/referrals/export.csv"):
        assert_problem(client.get(path + BAD_QUERY), 401)
        assert_problem(client.get(path + BAD_QUERY, headers=auth(app_key)), 403)
        assert_problem(client.get(path + BAD_QUERY, headers=auth(admin)), 422, "created_after")
    assert_problem(client.post("/v1/referrals", json={}), 401)
    assert_problem(client.post("/v1/referrals", json={}, headers=auth(reader)), 403)
    assert_problem(client.post("/v1/referrals", json={}, headers=auth(app_key)), 422)
    assignment = "/v1/referrals/" + "0" * 32 + "/assignment"
    assert_problem(client.post(assignment, json={}, headers=auth(app_key)), 403)
    assert_problem(client.post(assignment, json={}, headers=auth(admin)), 422)


def test_every_referral_operation_names_its_scopes(app):
    operations = {
        (rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("referrals.")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert operations == set(SCOPES_NEEDED)


# --- item 12: Retry-After only where it means something ---------------------------------------


def test_retry_after_only_on_answers_that_ask_to_wait(app, client):
    app.config["RATELIMIT_PUBLIC"] = "2 per hour"
    _, app_key = make_key(app, "runapp", "referrals:write")
    fine = client.get("/v1/specialties")
    assert fine.status_code == 200
    assert "Retry-After" not in fine.headers
    assert fine.headers["X-RateLimit-Limit"] == "2"
    assert fine.headers["X-RateLimit-Remaining"] == "1"
    assert int(fine.headers["X-RateLimit-Reset"]) > 0  # the window's end, as a Unix time
    made = client.post("/v1/referrals", json=BODY, headers=auth(app_key))
    assert made.status_code == 201 and "X-RateLimit-Limit" in made.headers
    assert "Retry-After" not in made.headers
    refused = client.get("/v1/referrals", headers=auth("nope"))
    assert_problem(refused, 401)
    assert "X-RateLimit-Remaining" in refused.headers and "Retry-After" not in refused.headers
    client.get("/v1/concerns")
    assert_rate_limited(client.get("/v1/concerns"))


def test_an_answers_own_retry_after_is_kept(app, client):
    # A limited route answering 503 with its own Retry-After keeps that value, not the
    # limiter's window.
    app.config["RATELIMIT_PUBLIC"] = "5 per hour"

    def busy() -> Any:
        get_session()  # a view like any other
        return {"detail": "busy"}, 503, {"Retry-After": "7"}

    app.view_functions["specialties.Specialties"] = busy
    response = client.get("/v1/specialties")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-RateLimit-Limit"] == "5"


def test_no_retry_after_on_200_when_a_limit_applies_everywhere(database_url):
    app = build_app(database_url, RATELIMIT_DEFAULT="3 per hour")
    client = app.test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["X-RateLimit-Limit"] == "3"
    assert "Retry-After" not in response.headers
    get_database(app).dispose()


# --- item 13: keyed requests are limited per key ------------------------------------------------


def test_keyed_reads_are_limited_per_key_not_by_the_anonymous_budget(app, client):
    app.config["RATELIMIT_PUBLIC"] = "1 per hour"
    app.config["RATELIMIT_KEYED"] = "3 per hour"
    _, admin = make_key(app, "admin", "admin")
    _, writer = make_key(app, "data-team", "clinics:write")
    clinic = client.get("/v1/clinics").get_json()[0]["id"]
    assert_rate_limited(client.get("/v1/clinics"))  # the address's public budget is spent
    # A garbage or unknown key does not escape it.
    assert_rate_limited(client.get("/v1/clinics", headers=auth("nope")))
    assert_rate_limited(client.get("/v1/clinics", headers=auth(UNKNOWN)))
    for n in range(3):
        read = client.get(f"/v1/clinics/{clinic}", headers=auth(admin))
        assert read.status_code == 200, read.get_data(as_text=True)
        assert read.headers["ETag"]
        assert read.headers["X-RateLimit-Limit"] == "3"
        assert read.headers["X-RateLimit-Remaining"] == str(2 - n)
    body = assert_rate_limited(client.get(f"/v1/clinics/{clinic}", headers=auth(admin)))
    assert "API key" in body["detail"]
    # Each key has its own allowance, and the anonymous one is still spent.
    assert client.get(f"/v1/clinics/{clinic}", headers=auth(writer)).status_code == 200
    assert_rate_limited(client.get(f"/v1/clinics/{clinic}"))
