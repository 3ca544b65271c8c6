"""Rate limits: per client IP on the public directory (tighter for address searches), per API
key on referral intake, 429 problem+json with Retry-After, documented in the spec; shared
across gunicorn workers through Redis (REFERRAL_TEST_REDIS_URL), per process with memory://.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from limits.storage import RedisStorage
from sqlmodel import Session, select

from referral.auth.keys import create_key
from referral.db import get_database
from referral.ops.limits import RATE_LIMITED_RESPONSE, OneTripRedisStorage, limited_operations
from referral.referrals.models import AuditEvent
from tests.conftest import build_app, skip_or_fail
from tests.helpers import assert_problem, auth
from tests.live import serve
from tests.test_ops import fetch, log_lines

REDIS_ENV = "REFERRAL_TEST_REDIS_URL"
BODY: dict[str, Any] = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = os.environ.get(REDIS_ENV)
    if not url:
        skip_or_fail(f"Redis tests skipped: set {REDIS_ENV} (e.g. redis://127.0.0.1:6379/0)")
    assert url is not None
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        skip_or_fail(f"Redis tests skipped: cannot reach {REDIS_ENV}: {exc}")
    client.close()
    yield url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A prefix of our own in the shared Redis; its keys are removed afterwards."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for name in client.scan_iter(match=f"*{prefix}*"):
        client.delete(name)
    client.close()


def assert_rate_limited(response: Any) -> dict[str, Any]:
    body = assert_problem(response, 429)
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert response.headers["X-RateLimit-Remaining"] == "0"
    return body


def make_keys(app: Any, *names: str) -> dict[str, tuple[int, str]]:
    made = {}
    with Session(get_database(app).engine) as session:
        for name in names:
            row, key = create_key(session, name=name, scopes=["referrals:write"])
            session.flush()
            assert row.id is not None
            made[name] = (row.id, key)
        session.commit()
    return made


# --- in one process --------------------------------------------------------------------------


def test_public_reads_are_limited_per_client_ip(app, client):
    app.config["RATELIMIT_PUBLIC"] = "3 per hour"
    # One allowance over every public read, whichever endpoint.
    for path in ("/v1/specialties", "/v1/concerns", "/v1/locations/nearest?zip=78201"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["X-RateLimit-Limit"] == "3"
    body = assert_rate_limited(client.get("/v1/clinics"))
    assert "3 per hour" in body["detail"]
    assert_rate_limited(client.get("/v1/clinics.csv"))
    other = client.get("/v1/clinics", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 200
    # Probes and the docs are never limited (/metrics answers only its token).
    app.config["METRICS_TOKEN"] = "limits-metrics-token"
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path, headers=auth("limits-metrics-token")).status_code == 200, path


def test_address_searches_have_their_own_tighter_limit(app, client):
    app.config["RATELIMIT_GEOCODE"] = "2 per hour"
    search = "/v1/locations/nearest?address=100+Main+St,+San+Antonio,+TX+78201"
    for _ in range(2):
        assert client.get(search).status_code != 429
    body = assert_rate_limited(client.get(search))
    assert "address searches" in body["detail"]
    # Searches by zip still go through: the public allowance is not spent.
    assert client.get("/v1/locations/nearest?zip=78201").status_code == 200


def test_referral_intake_is_limited_per_api_key_not_per_ip(app, client):
    app.config["RATELIMIT_REFERRALS"] = "2 per hour"
    app.config["RATELIMIT_PUBLIC"] = "1 per hour"
    keys = make_keys(app, "app-a", "app-b")
    _, key_a = keys["app-a"]
    _, key_b = keys["app-b"]
    # The IP's public allowance runs out; intake is not affected by it, nor it by intake.
    assert client.get("/v1/specialties").status_code == 200
    assert_rate_limited(client.get("/v1/specialties"))
    for _ in range(2):
        assert client.post("/v1/referrals", json=BODY, headers=auth(key_a)).status_code == 201
    body = assert_rate_limited(client.post("/v1/referrals", json=BODY, headers=auth(key_a)))
    assert "API key" in body["detail"]
    # Another key from the same address has its own allowance.
    assert client.post("/v1/referrals", json=BODY, headers=auth(key_b)).status_code == 201
    # Reading with the limited key is not intake.
    assert client.get("/v1/referrals", headers=auth(key_a)).status_code == 200


def test_a_wrong_secret_cannot_spend_someone_elses_allowance(app, client):
    app.config["RATELIMIT_REFERRALS"] = "2 per hour"
    (_, key) = make_keys(app, "victim")["victim"]
    prefix, key_id, secret = key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * len(secret)}"
    for _ in range(5):
        assert client.post("/v1/referrals", json=BODY, headers=auth(forged)).status_code == 401
    for _ in range(2):
        assert client.post("/v1/referrals", json=BODY, headers=auth(key)).status_code == 201


def test_invalid_bodies_count_too(app, client):
    # Counted before the body is read: a key cannot flood with bad requests either.
    app.config["RATELIMIT_REFERRALS"] = "2 per hour"
    (_, key) = make_keys(app, "sloppy")["sloppy"]
    for _ in range(2):
        assert client.post("/v1/referrals", json={}, headers=auth(key)).status_code == 422
    assert_rate_limited(client.post("/v1/referrals", json=BODY, headers=auth(key)))


def test_an_unreachable_limit_store_falls_back_to_memory(database_url):
    # Nothing listens on loopback port 1: no request fails for it, and limits still hold
    # (per process) until the store answers again.
    app = build_app(
        database_url, RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0", RATELIMIT_PUBLIC="2 per hour"
    )
    client = app.test_client()
    statuses = [client.get("/v1/specialties").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    get_database(app).dispose()


def test_limits_can_be_switched_off(database_url):
    app = build_app(database_url, RATELIMIT_ENABLED=False, RATELIMIT_PUBLIC="1 per hour")
    assert app.extensions["referral_limiter_hooks"] == "none"
    client = app.test_client()
    for _ in range(3):
        response = client.get("/v1/specialties")
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers
    get_database(app).dispose()


def test_the_limiter_runs_only_where_limits_are_unless_one_applies_everywhere(database_url):
    # No app-wide limit (the settings here): the limiter's hooks run only for the limited
    # blueprints, and a request elsewhere (a probe, the docs) skips them.
    app = build_app(database_url, RATELIMIT_PUBLIC="1 per hour")
    assert app.extensions["referral_limiter_hooks"] == "blueprints"
    client = app.test_client()
    assert client.get("/v1/specialties").status_code == 200
    assert_rate_limited(client.get("/v1/concerns"))
    for _ in range(3):
        assert client.get("/openapi.json").status_code == 200
        assert "X-RateLimit-Limit" not in client.get("/healthz").headers
    get_database(app).dispose()
    # A Flask-Limiter default limit (RATELIMIT_DEFAULT) applies to every endpoint: its hooks
    # then stay on every request, and it holds (with Retry-After) on the docs too.
    app = build_app(database_url, RATELIMIT_DEFAULT="2 per hour")
    assert app.extensions["referral_limiter_hooks"] == "app"
    client = app.test_client()
    statuses = [client.get("/openapi.json").status_code for _ in range(2)]
    assert statuses == [200, 200]
    assert_rate_limited(client.get("/openapi.json"))
    get_database(app).dispose()


@pytest.mark.parametrize("trusted", [0, 1])
def test_client_ip_behind_trusted_proxies(database_url, trusted):
    app = build_app(database_url, TRUSTED_PROXIES=trusted, RATELIMIT_PUBLIC="1 per hour")
    client = app.test_client()

    def read(forwarded_for: str) -> int:
        headers = {"X-Forwarded-For": forwarded_for}
        return int(client.get("/v1/specialties", headers=headers).status_code)

    assert read("198.51.100.1") == 200
    # Trusting one proxy, another client has its own allowance; trusting none, the header is
    # the client's own word and changes nothing.
    assert read("198.51.100.2") == (200 if trusted else 429)
    assert read("198.51.100.1") == 429
    get_database(app).dispose()


def test_limited_operations_document_429(app):
    spec = app.extensions["referral_api"].spec.to_dict()
    operations = set(limited_operations(app))
    assert {
        ("/v1/locations/nearest", "get"),
        ("/v1/clinics", "get"),
        ("/v1/clinics/{clinic_id}", "get"),
        ("/v1/specialties", "get"),
        ("/v1/concerns", "get"),
        ("/v1/referrals", "post"),
    } <= operations
    # Routes needing a key answer 429 to too many refused keys (RATELIMIT_KEY_REFUSALS).
    assert {("/v1/clinics", "post"), ("/v1/referrals", "get"), ("/v1/admin/audit", "get")} <= (
        operations
    )
    assert not {method for _, method in operations} & {"head", "options"}
    for path, method in operations:
        responses = spec["paths"][path][method]["responses"]
        assert responses["429"] == {"$ref": f"#/components/responses/{RATE_LIMITED_RESPONSE}"}
    documented = spec["components"]["responses"][RATE_LIMITED_RESPONSE]
    assert list(documented["content"]) == ["application/problem+json"]
    assert "Retry-After" in documented["headers"]


def test_limit_keys_in_redis_name_no_key_or_token(database_url, redis_url, key_prefix):
    app = build_app(
        database_url,
        RATELIMIT_STORAGE_URI=redis_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        RATELIMIT_REFERRALS="5 per hour",
    )
    client = app.test_client()
    row_id, key = make_keys(app, "redis-app")["redis-app"]
    assert client.post("/v1/referrals", json=BODY, headers=auth(key)).status_code == 201
    assert client.get("/v1/specialties").status_code == 200
    import redis

    store = redis.Redis.from_url(redis_url)
    names = [name.decode() for name in store.scan_iter(match=f"*{key_prefix}*")]
    store.close()
    get_database(app).dispose()
    assert any(f"/key:{row_id}/" in name for name in names), names
    assert any("/127.0.0.1/" in name for name in names), names
    _, key_id, secret = key.split("_", 2)
    for name in names:
        assert key_id not in name and secret not in name and key not in name, name


def test_key_refusals_are_counted_across_hosts_sharing_redis(database_url, redis_url, key_prefix):
    # Two app hosts, one Redis: refusals of a key-less client add up; none is audited.
    settings = {
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": key_prefix,
        "RATELIMIT_KEY_REFUSALS": "4 per hour",
    }
    hosts = [build_app(database_url, **settings) for _ in range(2)]
    statuses = [
        hosts[n % 2].test_client().get("/v1/referrals", headers=auth("nope")).status_code
        for n in range(6)
    ]
    assert statuses == [401] * 4 + [429] * 2
    with Session(get_database(hosts[0]).engine) as session:
        assert session.exec(select(AuditEvent)).all() == []
    for host in hosts:
        get_database(host).dispose()


def _headers(response: Any) -> tuple[str | None, ...]:
    return tuple(
        response.headers.get(name)
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    )


def test_a_limited_request_costs_one_redis_round_trip(database_url, redis_url, key_prefix):
    """Counting a public request and reading its counter and reset time back for the
    headers is one round trip (OneTripRedisStorage), and the headers say what limits' own
    Redis storage says about the same counter."""
    app = build_app(
        database_url,
        RATELIMIT_STORAGE_URI=redis_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        RATELIMIT_PUBLIC="3 per hour",
    )
    limiter = app.extensions["referral_limiter"]
    storage = limiter.storage
    assert isinstance(storage, OneTripRedisStorage)
    assert app.config["RATELIMIT_STORAGE_URI"] == redis_url  # the setting as given
    connection = storage.get_connection()
    commands: list[str] = []
    send = connection.execute_command

    def counted(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]))
        return send(*args, **kwargs)

    connection.execute_command = counted  # a spy: every command still goes to Redis
    client = app.test_client()
    seen = []
    for _ in range(4):
        commands.clear()
        response = client.get("/v1/specialties")
        seen.append((response.status_code, _headers(response)))
        assert len(commands) == 1, commands
    assert [status for status, _ in seen] == [200, 200, 200, 429]
    assert [headers[1] for _, headers in seen] == ["2", "1", "0", "0"]
    assert {headers[0] for _, headers in seen} == {"3"}
    # limits' own storage reads the same counter and time to live from Redis.
    plain = RedisStorage(redis_url)
    (name,) = [n.decode() for n in plain.get_connection().scan_iter(match=f"*{key_prefix}*")]
    key = name.removeprefix(f"{plain.key_prefix}:")
    assert plain.get(key) == 4
    reset = int(seen[-1][1][2] or 0)
    assert abs(int(plain.get_expiry(key)) + 1 - reset) <= 2
    plain.get_connection().close()
    get_database(app).dispose()


def test_reads_not_following_a_hit_go_to_redis(redis_url, key_prefix):
    storage = OneTripRedisStorage(f"referral+{redis_url}", key_prefix=key_prefix)
    assert storage.incr("a", 60) == 1
    assert storage.get("a") == 1 and storage.get_expiry("a") > 0  # answered from the hit
    storage.get_connection().incrby(storage.prefixed_key("a"), 5)  # someone else counts
    assert storage.get("a") == 6  # a second read asks Redis
    assert storage.get("b") == 0
    storage.incr("a", 60)
    assert storage.get("other") == 0  # another key: asked, and the hit's answer kept
    assert storage.get("a") == 7


# --- live: two gunicorn workers ---------------------------------------------------------------

# Each worker is replaced after 5 requests, so 20 requests meet at least 4 processes: a limit
# of 8 holds only if every process counts in the same place (with memory:// each process
# would allow its 5, and all 20 would pass).
RECYCLE = ["--max-requests", "5", "--max-requests-jitter", "0"]
REQUESTS = 20


def statuses_from_many_processes(served: Any, count: int, path: str, **request: Any) -> list[int]:
    replies = [fetch(f"{served.base}{path}", **request) for _ in range(count)]
    for reply in replies:
        if reply.status == 429:
            assert reply.headers["Content-Type"].startswith("application/problem+json")
            assert int(reply.headers["Retry-After"]) >= 1
    return [reply.status for reply in replies]


def served_by(served: Any, route: str) -> set[int]:
    return {
        entry["pid"]
        for entry in log_lines(served.output())
        if entry["logger"] == "gunicorn.access" and entry["route"] == route
    }


def test_public_limit_holds_across_workers_with_redis(
    database_url, tmp_path, redis_url, key_prefix
):
    env = {
        "REFERRAL_RATELIMIT_STORAGE_URI": redis_url,
        "REFERRAL_RATELIMIT_KEY_PREFIX": key_prefix,
        "REFERRAL_RATELIMIT_PUBLIC": "8 per hour",
    }
    with serve(
        database_url, tmp_path, workers=2, env=env, extra_args=RECYCLE, ready_path="/healthz"
    ) as served:
        statuses = statuses_from_many_processes(served, REQUESTS, "/v1/specialties")
    why = served.explain(statuses)
    assert len(served_by(served, "/v1/specialties")) >= 4, why
    assert statuses == [200] * 8 + [429] * 12, why


def test_intake_limit_holds_across_workers_with_redis(
    database_url, tmp_path, redis_url, key_prefix
):
    app = build_app(database_url)
    (_, key) = make_keys(app, "busy-app")["busy-app"]
    get_database(app).dispose()
    env = {
        "REFERRAL_RATELIMIT_STORAGE_URI": redis_url,
        "REFERRAL_RATELIMIT_KEY_PREFIX": key_prefix,
        "REFERRAL_RATELIMIT_REFERRALS": "8 per hour",
    }
    with serve(
        database_url, tmp_path, workers=2, env=env, extra_args=RECYCLE, ready_path="/healthz"
    ) as served:
        statuses = statuses_from_many_processes(
            served, REQUESTS, "/v1/referrals", data=BODY, headers=auth(key)
        )
    why = served.explain(statuses)
    assert len(served_by(served, "/v1/referrals")) >= 4, why
    assert statuses == [201] * 8 + [429] * 12, why


def test_memory_storage_counts_per_process(database_url, tmp_path):
    """Why Redis is needed: with memory:// every process allows the whole limit."""
    env = {
        "REFERRAL_RATELIMIT_STORAGE_URI": "memory://",
        "REFERRAL_RATELIMIT_PUBLIC": "8 per hour",
    }
    with serve(
        database_url, tmp_path, workers=2, env=env, extra_args=RECYCLE, ready_path="/healthz"
    ) as served:
        statuses = statuses_from_many_processes(served, REQUESTS, "/v1/specialties")
    assert statuses.count(200) > 8, served.explain(statuses)
