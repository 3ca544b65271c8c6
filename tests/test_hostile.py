"""Hostile input found in review: each must be a clear 4xx, never a 500, and leave no trace
of patient data in logs."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from referral.auth.keys import create_key
from referral.db import get_database
from referral.referrals.models import AuditEvent, Referral
from referral.timeutil import utcnow
from tests.helpers import assert_problem

BODY = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}


@pytest.fixture
def keys(app) -> dict[str, str]:
    with Session(get_database(app).engine) as session:
        made = {
            "app": create_key(session, name="app1", scopes=["referrals:write"])[1],
            "twin": create_key(session, name="app1", scopes=["referrals:read", "referrals:write"])[
                1
            ],
            "admin": create_key(session, name="ops", scopes=["admin"])[1],
        }
        session.commit()
    return made


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# Malformed JSON, deep nesting, overlong numbers and NUL in bodies and queries are rows of the
# catalog in tests/test_hostile_catalog.py.


def test_nul_in_a_referral_filter_is_refused(client, keys):
    assert_problem(
        client.get("/v1/referrals?source=x%00", headers=bearer(keys["admin"])), 422, "source"
    )


@pytest.mark.parametrize(
    "url",
    ["/v1/clinics/9223372036854775808", "/v1/clinics/2147483648",
     "/v1/clinics/1/locations/2147483648"],
)  # fmt: skip
def test_ids_beyond_the_column_range_are_404(client, url):
    assert_problem(client.get(url), 404)


def test_pages_and_ids_beyond_range_are_422(client, keys):
    assert_problem(client.get("/v1/clinics?page=9223372036854775807"), 422, "page")
    admin = bearer(keys["admin"])
    assert_problem(
        client.get("/v1/referrals?page=99999999999999999999", headers=admin), 422, "page"
    )
    assert_problem(
        client.get("/v1/referrals?clinic_id=99999999999999999999", headers=admin), 422, "clinic_id"
    )
    body = {**BODY, "preferred_clinic_id": 2**31}
    assert_problem(
        client.post("/v1/referrals", json=body, headers=bearer(keys["app"])),
        422,
        "preferred_clinic_id",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("patient_ref", "P" * 64 + "\n"), ("patient_ref", "abc\n"),
     ("assessment", {"patientName": "x"}), ("assessment", {"homeAddress": "x"})],
)  # fmt: skip
def test_identity_cannot_slip_in(app, client, keys, field, value):
    response = client.post(
        "/v1/referrals", json={**BODY, field: value}, headers=bearer(keys["app"])
    )
    assert_problem(response, 422, field)
    with Session(get_database(app).engine) as session:
        assert session.exec(select(Referral)).first() is None


def test_zip_with_trailing_newline_is_refused(client):
    assert_problem(client.get("/v1/locations/nearest", query_string={"zip": "78201\n"}), 422, "zip")


def test_unexpected_errors_log_no_request_data(app, client, keys, monkeypatch, caplog):
    from referral.referrals import service

    def broken(*_args, **_kwargs):
        raise RuntimeError("canary-patient-data-3141")

    monkeypatch.setattr(service, "create_referral", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    caplog.set_level(logging.DEBUG)
    response = client.post(
        "/v1/referrals",
        json={**BODY, "patient_ref": "canary-ref-2718"},
        headers=bearer(keys["app"]),
    )
    assert_problem(response, 500)
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.exc_info!r}" for r in caplog.records
    )
    assert "RuntimeError" in logged  # the failure is logged...
    assert "canary-patient-data-3141" not in logged  # ...but not what it carried
    assert "canary-ref-2718" not in logged


def test_sql_errors_hide_their_parameters(app):
    import sqlalchemy as sa

    with get_database(app).engine.connect() as connection, pytest.raises(sa.exc.DBAPIError) as info:
        connection.execute(
            sa.text("SELECT * FROM no_such_table WHERE x = :secret"), {"secret": "canary-9"}
        )
    assert "canary-9" not in str(info.value)


def test_time_filters_honour_offsets(client, keys):
    client.post("/v1/referrals", json=BODY, headers=bearer(keys["app"]))
    admin = bearer(keys["admin"])
    later = (utcnow() + timedelta(hours=2)).astimezone().replace(microsecond=0)
    in_new_york = later.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert (
        client.get(
            "/v1/referrals", query_string={"created_after": in_new_york.isoformat()}, headers=admin
        ).get_json()
        == []
    )
    earlier = (utcnow() - timedelta(hours=2)).astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Kolkata")
    )
    assert (
        client.get(
            "/v1/referrals", query_string={"created_before": earlier.isoformat()}, headers=admin
        ).get_json()
        == []
    )
    assert (
        len(
            client.get(
                "/v1/referrals", query_string={"created_after": earlier.isoformat()}, headers=admin
            ).get_json()
        )
        == 1
    )


def test_a_same_named_key_does_not_see_another_keys_referrals(client, keys):
    made = client.post("/v1/referrals", json=BODY, headers=bearer(keys["app"])).get_json()
    assert_problem(client.get(f"/v1/referrals/{made['id']}", headers=bearer(keys["twin"])), 404)
    assert client.get("/v1/referrals", headers=bearer(keys["twin"])).get_json() == []
    cancel = client.patch(
        f"/v1/referrals/{made['id']}", json={"status": "cancelled"}, headers=bearer(keys["twin"])
    )
    assert_problem(cancel, 404)


def test_replay_after_purge_answers_from_the_log(client, runner, keys):
    headers = {**bearer(keys["app"]), "Idempotency-Key": "purge-then-retry"}
    first = client.post(
        "/v1/referrals", json={**BODY, "patient_ref": "pt-9"}, headers=headers
    ).get_json()
    assert runner.invoke(args=["referrals", "purge", "--older-than", "0"]).exit_code == 0
    again = client.post("/v1/referrals", json={**BODY, "patient_ref": "pt-9"}, headers=headers)
    assert again.status_code == 201
    body = again.get_json()
    assert body["id"] == first["id"] and body["replayed"] is True
    assert body["patient_ref"] is None and body["match"]["clinic"]["name"] == "PRO Therapy"
    assert again.headers["Location"] == f"/v1/referrals/{first['id']}"


def test_concurrent_status_changes_cannot_both_win(app, client, keys):
    """Two admins read 'created'; the first to write wins, the second gets 409."""
    from referral.auth.models import ApiKey
    from referral.referrals.log import change_status
    from referral.referrals.models import Status

    made = client.post("/v1/referrals", json=BODY, headers=bearer(keys["app"])).get_json()
    engine = get_database(app).engine
    with Session(engine) as first, Session(engine) as second:
        admin = first.exec(select(ApiKey).where(ApiKey.name == "ops")).one()
        admin_again = second.exec(select(ApiKey).where(ApiKey.name == "ops")).one()
        one = first.get(Referral, made["id"])
        two = second.get(Referral, made["id"])
        assert one is not None and two is not None
        change_status(first, one, admin, Status.CANCELLED, None)
        first.commit()
        from sqlalchemy.orm.exc import StaleDataError

        with pytest.raises(StaleDataError):
            change_status(second, two, admin_again, Status.ACCEPTED, None)
            second.commit()
    final = client.get(f"/v1/referrals/{made['id']}", headers=bearer(keys["admin"])).get_json()
    assert final["status"] == "cancelled"
    assert [h["to_status"] for h in final["history"]] == ["created", "cancelled"]


def test_refused_attempts_are_audited(app, client, keys):
    client.post("/v1/referrals", json=BODY)  # no key
    client.get("/v1/referrals/stats", headers=bearer(keys["app"]))  # wrong scope
    client.post(
        "/v1/referrals", json={**BODY, "name": "x"}, headers=bearer(keys["app"])
    )  # bad body
    with Session(get_database(app).engine) as session:
        rows = [
            (r.action, r.outcome) for r in session.exec(select(AuditEvent).order_by(AuditEvent.id))
        ]
    # No key: no row (limited per IP instead); a real key's refusals are recorded.
    assert rows == [
        ("referral.stats", "refused_403"),
        ("referral.create", "refused_422"),
    ]


def test_geocode_cache_keys_are_keyed_with_the_secret():
    from referral.geo.network import NetworkGeocoder

    def make(secret: str | None) -> NetworkGeocoder:
        return NetworkGeocoder(
            "nominatim",
            {"user_agent": "referral-tests/1.0 (tests@example.org)"},
            engine_factory=lambda: None,  # type: ignore[arg-type,return-value]
            cache_secret=secret,
        )

    from referral.geo.network import GeocoderConfigError

    address = "2112 Broadway Street NE, Minneapolis, MN 55413"
    with pytest.raises(GeocoderConfigError, match="GEOCODE_CACHE_SECRET"):
        make(None)  # plain hashes can be confirmed by guessing: never without a secret
    keyed, other = make("s3cret"), make("another")
    plain = hashlib.sha256(f"nominatim\n{address.casefold()}".encode()).hexdigest()
    assert keyed.cache_key(address) != plain
    assert keyed.cache_key(address) != other.cache_key(address)
    assert keyed.cache_key(address.upper()) == keyed.cache_key(address)


def test_purge_drops_old_geocode_cache_rows(app, runner):
    from referral.geo.models import GeocodeCacheEntry

    with Session(get_database(app).engine) as session:
        session.add(GeocodeCacheEntry(key="a" * 64, provider="nominatim", found=True, lat=1, lon=2,
                                      created_at=utcnow() - timedelta(days=10)))  # fmt: skip
        session.add(GeocodeCacheEntry(key="b" * 64, provider="nominatim", found=False))
        session.commit()
    assert runner.invoke(args=["referrals", "purge", "--older-than", "5"]).exit_code == 0
    with Session(get_database(app).engine) as session:
        assert [row.key[0] for row in session.exec(select(GeocodeCacheEntry))] == ["b"]


@pytest.mark.parametrize("query", [{"page": "100001"}, {"status": "created\x00"}])
def test_referral_queries_are_checked_after_the_key(client, keys, query):
    # 401 without a key, 403 with a key lacking the scope, and only then 422 for the query.
    assert_problem(client.get("/v1/referrals", query_string=query), 401)
    stats = client.get("/v1/referrals/stats", query_string=query, headers=bearer(keys["app"]))
    assert_problem(stats, 403)
    admin = client.get("/v1/referrals", query_string=query, headers=bearer(keys["admin"]))
    assert_problem(admin, 422, next(iter(query)))
