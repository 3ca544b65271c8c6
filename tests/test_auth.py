"""API keys: the CLI, what is stored, and the bearer check views use (401/403 problems)."""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, g, request
from sqlmodel import Session, func, select
from werkzeug.exceptions import HTTPException

from referral.auth import (
    BEARER_SECURITY,
    SCOPES,
    ApiKey,
    authenticate,
    create_key,
    find_key,
    list_keys,
    register_security_scheme,
    require_scope,
    revoke_key,
)
from referral.auth import keys as keys_module
from referral.auth.keys import ApiKeyError
from referral.db import get_database, get_session, session_scope
from referral.directory.models import Clinic
from tests.helpers import assert_problem

KEY_RE = re.compile(r"rk_(?P<key_id>[0-9a-f]{12})_[A-Za-z0-9_-]{43}")
GUARDED = "/test-only/guarded"
CHALLENGE = 'Bearer realm="referral"'


# --- helpers -------------------------------------------------------------------------------


def cli_create(runner: Any, *args: str) -> str:
    """Run `keys create`; the key, from the last line of stdout."""
    result = runner.invoke(args=["keys", "create", *args])
    assert result.exit_code == 0, result.output
    key = result.stdout.rstrip("\n").splitlines()[-1]
    assert KEY_RE.fullmatch(key), key
    return key


def make_key(app: Flask, scopes: list[str], **kwargs: Any) -> tuple[str, str]:
    """(key_id, key) made through the service."""
    with session_scope(app) as session:
        row, key = create_key(session, name=kwargs.pop("name", "Test app"), scopes=scopes, **kwargs)
        return row.key_id, key


def stored(app: Flask, key_id: str) -> ApiKey:
    with Session(get_database(app).engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).one()
        session.expunge(row)
        return row


def key_count(app: Flask) -> int:
    with Session(get_database(app).engine) as session:
        return session.exec(select(func.count()).select_from(ApiKey)).one()


def raw_rows(app: Flask) -> list[dict[str, Any]]:
    with get_database(app).engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(sa.text("SELECT * FROM api_key"))]


def a_clinic_id(app: Flask) -> int:
    with Session(get_database(app).engine) as session:
        clinic_id = session.exec(select(Clinic.id).order_by(Clinic.id)).first()
    assert clinic_id is not None, "the test database is seeded with clinics"
    return clinic_id


def set_times(app: Flask, key_id: str, **values: datetime | None) -> None:
    """Change a key's row behind the service's back; this process forgets its cached copy
    (how long other processes may keep theirs is tested with the cache below)."""
    with session_scope(app) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).one()
        for name, value in values.items():
            setattr(row, name, value)
        session.add(row)
    keys_module.forget_cached_keys()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def authenticate_with(app: Flask, headers: dict[str, str]) -> ApiKey:
    with app.test_request_context(headers=headers):
        key = authenticate()
        assert g.api_key is key
        assert key not in get_session()  # detached: a commit cannot expire (re-read) it
        return key


def rejection(app: Flask, headers: dict[str, str]) -> HTTPException:
    with app.test_request_context(headers=headers), pytest.raises(HTTPException) as caught:
        authenticate()
    return caught.value


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@pytest.fixture
def guarded(app: Flask) -> Any:
    """A throwaway route: authenticate, then require one of the ?scope= values."""

    def view() -> dict[str, Any]:
        key = authenticate()
        require_scope(key, *request.args.getlist("scope"))
        return {"key_id": key.key_id, "name": key.name}

    app.add_url_rule(GUARDED, "test_only_guarded", view)
    return app.test_client()


def assert_unauthorized(response: Any, *, not_in_body: str | None = None) -> dict[str, Any]:
    body = assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith(CHALLENGE)
    if not_in_body:
        assert not_in_body not in response.get_data(as_text=True)
        assert not_in_body not in response.headers["WWW-Authenticate"]
    return body


# --- creating keys -------------------------------------------------------------------------


def test_cli_create_prints_the_key_alone_on_the_last_line(app, runner, caplog):
    with caplog.at_level(logging.DEBUG):
        result = runner.invoke(
            args=["keys", "create", "--name", "Acme Assess", "--scopes", "referrals:write"]
        )
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip("\n").splitlines()
    key = lines[-1]
    match = KEY_RE.fullmatch(key)
    assert match, lines
    assert key.startswith("rk_")
    # Printed once: no other line holds the key or its secret.
    secret = key.split("_", 2)[2]
    assert all(secret not in line for line in lines[:-1])
    assert result.output.count(secret) == 1
    assert secret not in caplog.text
    assert match["key_id"] in "\n".join(lines[:-1])  # the summary names the key id
    row = stored(app, match["key_id"])
    assert row.name == "Acme Assess"
    assert row.scopes == ["referrals:write"]
    assert row.clinic_id is None and row.expires_at is None and row.revoked_at is None


def test_created_key_works_as_a_bearer_key(app, runner, caplog):
    key = cli_create(runner, "--name", "Acme Assess", "--scopes", "referrals:write")
    with caplog.at_level(logging.DEBUG):
        found = authenticate_with(app, bearer(key))
    assert found.key_id == KEY_RE.fullmatch(key)["key_id"]  # type: ignore[index]
    assert found.name == "Acme Assess"
    assert found.has_scope("referrals:write")
    assert not found.has_scope("referrals:read")
    assert key not in caplog.text


def test_only_a_hash_is_stored(app, runner):
    key = cli_create(runner, "--name", "Acme", "--scopes", "referrals:read")
    secret = key.split("_", 2)[2]
    rows = raw_rows(app)
    assert len(rows) == 1
    for column, value in rows[0].items():
        assert key not in str(value), column
        assert secret not in str(value), column
    assert rows[0]["secret_hash"] == hashlib.sha256(key.encode()).hexdigest()


def test_hint_shows_prefix_key_id_and_last_four(app, runner):
    key = cli_create(runner, "--name", "Acme", "--scopes", "referrals:read")
    key_id = KEY_RE.fullmatch(key)["key_id"]  # type: ignore[index]
    hint = stored(app, key_id).hint
    assert hint == f"rk_{key_id}…{key[-4:]}"
    prefix, last = hint.split("…")
    assert prefix == f"rk_{key_id}"
    assert last == key[-4:] and len(last) == 4


def test_expiry_option_sets_expires_at(app, runner):
    before = datetime.now(UTC)
    key = cli_create(runner, "--name", "A", "--scopes", "referrals:read", "--expires-in-days", "7")
    row = stored(app, KEY_RE.fullmatch(key)["key_id"])  # type: ignore[index]
    assert row.expires_at is not None
    expires = as_utc(row.expires_at)
    assert before + timedelta(days=7) <= expires <= datetime.now(UTC) + timedelta(days=7)


def test_status_key_bound_to_a_clinic(app, runner):
    clinic_id = a_clinic_id(app)
    key = cli_create(
        runner, "--name", "Clinic", "--scopes", "referrals:status", "--clinic", str(clinic_id)
    )
    row = stored(app, KEY_RE.fullmatch(key)["key_id"])  # type: ignore[index]
    assert row.clinic_id == clinic_id
    assert row.scopes == ["referrals:status"]


def test_scopes_are_normalized(app):
    key_id, _key = make_key(app, [" referrals:read", "referrals:write", "referrals:read", ""])
    assert stored(app, key_id).scopes == ["referrals:write", "referrals:read"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scopes", "referrals:status"], "must be bound to a clinic"),
        (["--scopes", "referrals:write,referrals:sing"], "unknown scope(s): referrals:sing"),
        (["--scopes", "Admin"], "unknown scope(s): Admin"),
        (["--scopes", ","], "at least one scope"),
        (["--scopes", "referrals:status", "--clinic", "CLINIC+100000"], "no clinic with id"),
        (["--scopes", "admin", "--clinic", "CLINIC"], "admin key cannot be bound"),
        (["--scopes", "referrals:read", "--expires-in-days", "0"], "--expires-in-days"),
        (["--scopes", "referrals:read", "--clinic", "abc"], "--clinic"),
    ],
)
def test_cli_create_rejects_bad_input(app, runner, args, expected):
    clinic_id = a_clinic_id(app)
    args = [
        str(clinic_id + 100000)
        if arg == "CLINIC+100000"
        else str(clinic_id)
        if arg == "CLINIC"
        else arg
        for arg in args
    ]
    result = runner.invoke(args=["keys", "create", "--name", "Acme", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not KEY_RE.search(result.output)
    assert key_count(app) == 0


def test_cli_create_rejects_a_blank_name(app, runner):
    result = runner.invoke(args=["keys", "create", "--name", "  ", "--scopes", "referrals:read"])
    assert result.exit_code == 2
    assert "--name" in result.output
    assert key_count(app) == 0


def test_service_rejects_past_expiry_and_unknown_clinic(app):
    with session_scope(app) as session:
        with pytest.raises(ApiKeyError, match="future"):
            create_key(
                session,
                name="A",
                scopes=["referrals:read"],
                expires_at=datetime.now(UTC) - timedelta(seconds=1),
            )
        with pytest.raises(ApiKeyError, match="no clinic"):
            create_key(session, name="A", scopes=["referrals:read"], clinic_id=-1)
    assert key_count(app) == 0


# --- authenticating requests ---------------------------------------------------------------


def test_authenticate_rejects_with_401_and_a_challenge(app):
    key_id, key = make_key(app, ["referrals:read"])
    wrong_secret = f"rk_{key_id}_{'A' * 43}"
    unknown = f"rk_{'0' * 12}_{key.split('_', 2)[2]}"
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {key}"},
        bearer("not-a-key"),
        bearer(key[:-1]),  # malformed: a character short
        bearer(key + "x"),
        bearer(wrong_secret),
        bearer(unknown),
    ):
        error = rejection(app, headers)
        assert error.code == 401, headers
        data = error.data  # type: ignore[attr-defined]
        assert data["headers"]["WWW-Authenticate"].startswith(CHALLENGE)
        assert key not in data["message"]
        assert key[-8:] not in data["message"]
    # The right key still works.
    assert authenticate_with(app, bearer(key)).key_id == key_id


@pytest.mark.parametrize("case", ["missing", "basic", "malformed", "unknown", "wrong_secret"])
def test_guarded_route_answers_401_problem(app, guarded, case):
    key_id, key = make_key(app, ["referrals:read"])
    presented = {
        "missing": None,
        "basic": "Basic dXNlcjpwYXNz",
        "malformed": "Bearer rk_short_secret",
        "unknown": f"Bearer rk_{'f' * 12}_{key.split('_', 2)[2]}",
        "wrong_secret": f"Bearer rk_{key_id}_{'B' * 43}",
    }[case]
    headers = {"Authorization": presented} if presented else {}
    response = guarded.get(GUARDED, query_string={"scope": "referrals:read"}, headers=headers)
    body = assert_unauthorized(
        response, not_in_body=presented.split(" ", 1)[1] if presented else None
    )
    assert body["detail"]
    assert key not in response.get_data(as_text=True)
    if case == "missing":
        assert response.headers["WWW-Authenticate"] == CHALLENGE
    else:
        assert "error=" in response.headers["WWW-Authenticate"]
    assert stored(app, key_id).last_used_at is None  # a failed attempt is not a use


def test_unknown_and_wrong_secret_look_the_same(app, guarded):
    key_id, key = make_key(app, ["referrals:read"])
    secret = key.split("_", 2)[2]
    unknown = guarded.get(GUARDED, headers=bearer(f"rk_{'e' * 12}_{secret}"))
    wrong = guarded.get(GUARDED, headers=bearer(f"rk_{key_id}_{'C' * 43}"))
    assert assert_unauthorized(unknown)["detail"] == assert_unauthorized(wrong)["detail"]


def test_expired_key_is_rejected(app, guarded):
    key_id, key = make_key(app, ["referrals:read"], expires_at=datetime.now(UTC) + timedelta(1))
    ok = guarded.get(GUARDED, query_string={"scope": "referrals:read"}, headers=bearer(key))
    assert ok.status_code == 200, ok.get_data(as_text=True)
    set_times(app, key_id, expires_at=datetime.now(UTC) - timedelta(seconds=5))
    response = guarded.get(GUARDED, query_string={"scope": "referrals:read"}, headers=bearer(key))
    body = assert_unauthorized(response, not_in_body=key)
    assert "expired" in body["detail"]
    with session_scope(app) as session:
        row = find_key(session, key)
        assert row is not None  # found, but not usable
        assert not row.is_usable(datetime.now(UTC))


def test_revoked_key_is_rejected(app, runner, guarded):
    key = cli_create(runner, "--name", "Acme", "--scopes", "referrals:write")
    key_id = KEY_RE.fullmatch(key)["key_id"]  # type: ignore[index]
    ok = guarded.get(GUARDED, query_string={"scope": "referrals:write"}, headers=bearer(key))
    assert ok.status_code == 200
    result = runner.invoke(args=["keys", "revoke", key_id])
    assert result.exit_code == 0, result.output
    assert "revoked" in result.output
    assert stored(app, key_id).revoked_at is not None
    response = guarded.get(GUARDED, query_string={"scope": "referrals:write"}, headers=bearer(key))
    body = assert_unauthorized(response, not_in_body=key)
    assert "revoked" in body["detail"]
    error = rejection(app, bearer(key))
    assert error.code == 401


def test_revoke_twice_keeps_the_first_time(app, runner):
    key_id, _key = make_key(app, ["referrals:read"])
    assert runner.invoke(args=["keys", "revoke", key_id]).exit_code == 0
    first = stored(app, key_id).revoked_at
    again = runner.invoke(args=["keys", "revoke", key_id])
    assert again.exit_code == 0
    assert "already revoked" in again.output
    assert stored(app, key_id).revoked_at == first


def test_revoke_unknown_or_malformed_id(app, runner):
    key_id, key = make_key(app, ["referrals:read"])
    unknown = runner.invoke(args=["keys", "revoke", "0123456789ab"])
    assert unknown.exit_code == 2
    assert "no API key with id 0123456789ab" in unknown.output
    pasted = runner.invoke(args=["keys", "revoke", key])  # the whole key, by mistake
    assert pasted.exit_code == 2
    assert key not in pasted.output and key[-8:] not in pasted.output
    assert stored(app, key_id).revoked_at is None


def test_wrong_scope_is_403(app, guarded):
    _key_id, key = make_key(app, ["referrals:read"])
    response = guarded.get(GUARDED, query_string={"scope": "referrals:write"}, headers=bearer(key))
    body = assert_problem(response, 403)
    assert "referrals:write" in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert key not in response.get_data(as_text=True)
    both = guarded.get(
        GUARDED,
        query_string=[("scope", "referrals:write"), ("scope", "referrals:read")],
        headers=bearer(key),
    )
    assert both.status_code == 200  # one of the scopes is enough
    assert both.get_json()["name"] == "Test app"


def test_wrong_scope_from_the_helper(app):
    _key_id, key = make_key(app, ["referrals:write"])
    with app.test_request_context(headers=bearer(key)):
        found = authenticate()
        require_scope(found, "referrals:write")  # passes
        with pytest.raises(HTTPException) as caught:
            require_scope(found, "referrals:status", "admin")
        assert caught.value.code == 403
        with pytest.raises(ValueError):
            require_scope(found, "referrals:typo")


def test_admin_passes_every_scope(app, guarded):
    _key_id, key = make_key(app, ["admin"])
    for scope in SCOPES:
        response = guarded.get(GUARDED, query_string={"scope": scope}, headers=bearer(key))
        assert response.status_code == 200, (scope, response.get_data(as_text=True))


def test_last_used_at_is_set_and_not_rewritten_within_a_minute(app):
    key_id, key = make_key(app, ["referrals:read"])
    assert stored(app, key_id).last_used_at is None
    before = datetime.now(UTC)
    used = authenticate_with(app, bearer(key))
    first = stored(app, key_id).last_used_at
    assert first is not None
    assert before - timedelta(seconds=1) <= as_utc(first) <= datetime.now(UTC)
    assert used.last_used_at is not None and as_utc(used.last_used_at) == as_utc(first)
    writes: list[str] = []

    def count_writes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            writes.append(statement)

    engine = get_database(app).engine
    sa.event.listen(engine, "before_cursor_execute", count_writes)
    try:
        authenticate_with(app, bearer(key))
        authenticate_with(app, bearer(key))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count_writes)
    assert writes == []  # within a minute: not even an attempt to write
    assert stored(app, key_id).last_used_at == first
    old = datetime.now(UTC) - timedelta(minutes=2)
    set_times(app, key_id, last_used_at=old)
    authenticate_with(app, bearer(key))
    later = stored(app, key_id).last_used_at
    assert later is not None and as_utc(later) > old + timedelta(minutes=1)


def test_last_used_at_write_is_conditional_in_the_database(app):
    """A worker holding a stale row (last_used_at None) does not overwrite a recent use."""
    key_id, key = make_key(app, ["referrals:read"])
    with Session(get_database(app).engine) as session:
        stale = find_key(session, key)
        assert stale is not None and stale.last_used_at is None
        session.expunge(stale)
    authenticate_with(app, bearer(key))  # another request (worker) records the use
    recorded = stored(app, key_id).last_used_at
    assert recorded is not None
    with app.app_context():
        keys_module._touch(stale, datetime.now(UTC) + timedelta(seconds=30))
    assert stored(app, key_id).last_used_at == recorded
    assert stale.last_used_at is None  # nothing written, so the object was not told otherwise


# --- listing, the model, the spec ----------------------------------------------------------


def test_keys_list_shows_hints_never_keys(app, runner):
    first = cli_create(runner, "--name", "Acme Assess", "--scopes", "referrals:write")
    clinic_id = a_clinic_id(app)
    second = cli_create(
        runner, "--name", "Clinic A", "--scopes", "referrals:status", "--clinic", str(clinic_id)
    )
    runner.invoke(args=["keys", "revoke", KEY_RE.fullmatch(first)["key_id"]])  # type: ignore[index]
    result = runner.invoke(args=["keys", "list"])
    assert result.exit_code == 0, result.output
    for key in (first, second):
        key_id = KEY_RE.fullmatch(key)["key_id"]  # type: ignore[index]
        assert key not in result.output
        assert key.split("_", 2)[2] not in result.output
        assert f"rk_{key_id}…{key[-4:]}" in result.output
    lines = result.output.splitlines()
    assert "HINT" in lines[0] and "LAST_USED" in lines[0]
    first_line = next(line for line in lines if "Acme Assess" in line)
    assert "revoked" in first_line and "referrals:write" in first_line
    second_line = next(line for line in lines if "Clinic A" in line)
    assert str(clinic_id) in second_line and "active" in second_line


def test_keys_list_when_empty(runner):
    result = runner.invoke(args=["keys", "list"])
    assert result.exit_code == 0
    assert result.output.strip() == "no API keys"


def test_service_list_and_revoke(app):
    first_id, _ = make_key(app, ["referrals:read"], name="One")
    second_id, _ = make_key(app, ["referrals:write"], name="Two")
    with session_scope(app) as session:
        assert [row.key_id for row in list_keys(session)] == [first_id, second_id]
        revoked = revoke_key(session, second_id)
        assert revoked.revoked_at is not None
        with pytest.raises(ApiKeyError):
            revoke_key(session, "ffffffffffff")
    assert stored(app, second_id).revoked_at is not None
    assert stored(app, first_id).revoked_at is None


def test_model_treats_naive_times_as_utc_and_admin_as_every_scope():
    now = datetime.now(UTC)
    naive_past = (now - timedelta(minutes=1)).replace(tzinfo=None)
    naive_future = (now + timedelta(minutes=1)).replace(tzinfo=None)
    assert not ApiKey(name="a", scopes=[], expires_at=naive_past).is_usable(now)
    assert ApiKey(name="a", scopes=[], expires_at=naive_future).is_usable(now)
    assert ApiKey(name="a", scopes=[]).is_usable(now)
    assert not ApiKey(name="a", scopes=[], revoked_at=now).is_usable(now)
    admin = ApiKey(name="a", scopes=["admin"])
    assert all(admin.has_scope(scope) for scope in SCOPES)
    reader = ApiKey(name="a", scopes=["referrals:read"])
    assert reader.has_scope("referrals:read") and not reader.has_scope("referrals:write")


def test_register_security_scheme(app):
    api = app.extensions["referral_api"]
    register_security_scheme(api)
    register_security_scheme(api)  # idempotent
    schemes = api.spec.to_dict()["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert BEARER_SECURITY == [{"bearerAuth": []}]


# --- the per-process key cache ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(keys_module, "_monotonic", fake)
    keys_module.forget_cached_keys()
    return fake


def key_reads() -> tuple[list[str], Any]:
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM api_key" in statement:
            reads.append(statement)

    return reads, count


def revoke_elsewhere(app: Flask, key_id: str) -> None:
    """What another worker (or the CLI against a running server) does: only the row changes."""
    with get_database(app).engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE api_key SET revoked_at = :at WHERE key_id = :key_id"),
            {"at": datetime.now(UTC), "key_id": key_id},
        )


def test_a_known_key_is_read_once_per_cache_period(app, guarded, clock):
    _key_id, key = make_key(app, ["referrals:read"])
    reads, count = key_reads()
    engine = get_database(app).engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            ok = guarded.get(GUARDED, query_string={"scope": "referrals:read"}, headers=bearer(key))
            assert ok.status_code == 200
        assert len(reads) == 1
        clock.now += keys_module.KEY_CACHE_SECONDS
        ok = guarded.get(GUARDED, query_string={"scope": "referrals:read"}, headers=bearer(key))
        assert ok.status_code == 200
        assert len(reads) == 2  # the period is over: read again
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def test_a_revocation_elsewhere_takes_effect_within_the_cache_period(app, guarded, clock):
    key_id, key = make_key(app, ["referrals:read"])
    args = {"query_string": {"scope": "referrals:read"}, "headers": bearer(key)}
    assert guarded.get(GUARDED, **args).status_code == 200
    revoke_elsewhere(app, key_id)
    clock.now += keys_module.KEY_CACHE_SECONDS - 0.5
    assert guarded.get(GUARDED, **args).status_code == 200  # the bound, not better
    clock.now += 0.5
    body = assert_unauthorized(guarded.get(GUARDED, **args), not_in_body=key)
    assert "revoked" in body["detail"]
    # And a process that read the revoked row keeps refusing it.
    assert guarded.get(GUARDED, **args).status_code == 401


def test_a_revocation_in_this_process_takes_effect_at_once(app, guarded, clock):
    key_id, key = make_key(app, ["referrals:read"])
    args = {"query_string": {"scope": "referrals:read"}, "headers": bearer(key)}
    assert guarded.get(GUARDED, **args).status_code == 200
    with session_scope(app) as session:
        revoke_key(session, key_id)
    assert guarded.get(GUARDED, **args).status_code == 401  # the clock did not move


def test_a_request_between_revoke_and_commit_does_not_outlive_the_commit(app, guarded, clock):
    key_id, key = make_key(app, ["referrals:read"])
    args = {"query_string": {"scope": "referrals:read"}, "headers": bearer(key)}
    # Used just now (so the request below does not wait on the revoking row's lock to write
    # last_used_at), and forgotten (so that it reads the row again).
    assert guarded.get(GUARDED, **args).status_code == 200
    keys_module.forget_cached_keys()
    with session_scope(app) as session:
        revoke_key(session, key_id)  # flushed, not committed
        # A request meanwhile still reads the row as it was, and caches it...
        assert guarded.get(GUARDED, **args).status_code == 200
    # ...until the commit.
    assert guarded.get(GUARDED, **args).status_code == 401


def test_the_cache_can_be_turned_off(app, guarded, clock):
    app.config["API_KEY_CACHE_SECONDS"] = 0
    key_id, key = make_key(app, ["referrals:read"])
    args = {"query_string": {"scope": "referrals:read"}, "headers": bearer(key)}
    assert guarded.get(GUARDED, **args).status_code == 200
    revoke_elsewhere(app, key_id)
    assert guarded.get(GUARDED, **args).status_code == 401


def test_expiry_is_checked_at_every_request_even_when_cached(app, guarded, clock, monkeypatch):
    expires = datetime.now(UTC) + timedelta(hours=1)
    _key_id, key = make_key(app, ["referrals:read"], expires_at=expires)
    args = {"query_string": {"scope": "referrals:read"}, "headers": bearer(key)}
    assert guarded.get(GUARDED, **args).status_code == 200
    monkeypatch.setattr(keys_module, "utcnow", lambda: expires + timedelta(seconds=1))
    body = assert_unauthorized(guarded.get(GUARDED, **args))
    assert "expired" in body["detail"]


def test_wrong_and_unknown_keys_are_never_served_from_the_cache(app, guarded, clock):
    key_id, key = make_key(app, ["referrals:read"])
    args = {"query_string": {"scope": "referrals:read"}}
    assert guarded.get(GUARDED, headers=bearer(key), **args).status_code == 200
    wrong = f"rk_{key_id}_{'C' * 43}"
    for _ in range(2):
        assert guarded.get(GUARDED, headers=bearer(wrong), **args).status_code == 401
    assert all(row.key_id == key_id for _, row in keys_module._key_cache.values())
    assert len(keys_module._key_cache) == 1


def test_a_cached_key_belongs_to_no_session(app, clock):
    _key_id, key = make_key(app, ["referrals:write"])
    first = authenticate_with(app, bearer(key))
    second = authenticate_with(app, bearer(key))
    assert second is first  # the same row, from the cache
    with app.test_request_context(headers=bearer(key)):
        session = get_session()
        found = authenticate()
        session.commit()  # would expire it, were it in the session
        assert "name" in found.__dict__ and found not in session


def test_revoke_help_states_the_cache_bound(runner):
    shown = runner.invoke(args=["keys", "revoke", "--help"]).output
    assert f"within {keys_module.KEY_CACHE_SECONDS:g} seconds" in " ".join(shown.split())
