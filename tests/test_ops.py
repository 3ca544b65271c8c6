"""Operations: /healthz, /readyz, /metrics (summed over gunicorn workers), X-Request-ID, and
JSON logs that never carry query strings, bodies or keys. Live tests run a real gunicorn."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from alembic.script import ScriptDirectory
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database
from referral.migrations import runner as migrations
from tests.conftest import REPO_ROOT, build_app
from tests.helpers import assert_problem, auth
from tests.live import OPENER, free_port, serve, wait_for

# A request id the service makes: 32 lowercase hex digits (128 random bits).
MADE_ID_RE = re.compile(r"[0-9a-f]{32}")


METRICS_TOKEN = "test-metrics-token-4b1d2c"


def scrape(client: Any) -> str:
    """The metrics page, as a scraper holding the token sees it."""
    client.application.config["METRICS_TOKEN"] = METRICS_TOKEN
    response = client.get("/metrics", headers=auth(METRICS_TOKEN))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain")
    return str(response.get_data(as_text=True))


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` in a Prometheus text page, by their sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_counted(text: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples(text, "referral_http_requests_total").items():
        if all(dict(key).get(name) == wanted for name, wanted in labels.items()):
            total += value
    return total


# --- health and readiness --------------------------------------------------------------------


def test_healthz_answers_without_a_database(tmp_path):
    # Nothing listens on port 1: the database is unreachable, the process is alive.
    app = create_unreachable_app()
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
    not_ready = client.get("/readyz")
    body = assert_problem(not_ready, 503)
    assert body["detail"] == "the database is unreachable"
    assert not_ready.headers["Retry-After"] == "5"
    get_database(app).dispose()


def create_unreachable_app() -> Any:
    return build_app("postgresql+psycopg://nobody@127.0.0.1:1/nothing")


def test_readyz_is_ready_at_head(app, client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"status": "ready", "migration": migrations.head_revision(app)}


def test_readyz_refuses_a_database_at_an_older_migration(empty_database_url):
    app = build_app(empty_database_url)
    head = migrations.head_revision(app)
    assert head is not None
    previous = ScriptDirectory.from_config(migrations.alembic_config(app)).get_revision(head)
    assert previous is not None and isinstance(previous.down_revision, str)
    migrations.upgrade(app, previous.down_revision)
    client = app.test_client()
    body = assert_problem(client.get("/readyz"), 503)
    assert previous.down_revision in body["detail"] and head in body["detail"]
    assert "referral db upgrade" in body["detail"]
    migrations.upgrade(app)
    assert client.get("/readyz").status_code == 200
    get_database(app).dispose()


def test_readyz_refuses_an_empty_database(empty_database_url):
    app = build_app(empty_database_url)
    body = assert_problem(app.test_client().get("/readyz"), 503)
    assert "(none)" in body["detail"]
    get_database(app).dispose()


def test_probes_are_not_public_api(app, client):
    spec = app.extensions["referral_api"].spec.to_dict()
    assert not {"/healthz", "/readyz", "/metrics"} & set(spec["paths"])
    for path in ("/healthz", "/readyz", "/metrics"):
        response = client.get(path, headers={"Origin": "https://clinic.example"})
        assert "Access-Control-Allow-Origin" not in response.headers, path


# --- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "presented",
    ["abc", "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9", "trace:span.1_2-3", "x" * 128],
)
def test_a_sane_request_id_is_echoed(client, presented):
    response = client.get("/v1/specialties", headers={"X-Request-ID": presented})
    assert response.headers["X-Request-ID"] == presented


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "x" * 129,
        "two words",
        'quote"d',
        "semi;colon",
        "<script>",
        "123 Main St, Springfield",
        "caf\u00e9",
        "new\\nline",
    ],
)
def test_a_hostile_request_id_is_replaced(client, presented):
    response = client.get("/v1/specialties", headers={"X-Request-ID": presented})
    echoed = response.headers["X-Request-ID"]
    assert echoed != presented
    assert MADE_ID_RE.fullmatch(echoed), echoed


def test_a_request_id_is_made_for_every_answer(client):
    seen = set()
    for path in ("/v1/specialties", "/healthz", "/no/such/page", "/v1/clinics?page=1%00"):
        response = client.get(path)
        assert MADE_ID_RE.fullmatch(response.headers["X-Request-ID"]), path
        seen.add(response.headers["X-Request-ID"])
    assert len(seen) == 4
    refused = client.get("/v1/clinics", query_string={"city": "a\x00b"})
    assert refused.status_code == 422
    assert MADE_ID_RE.fullmatch(refused.headers["X-Request-ID"])


# --- metrics in one process ------------------------------------------------------------------


def test_metrics_count_by_endpoint_never_by_path_or_query(client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/v1/locations/nearest?zip=78201&limit=2").status_code == 200
    assert client.get("/v1/locations/nearest?zip=00000").status_code == 422
    assert client.get("/v1/clinics/99999").status_code == 404
    assert client.get("/nowhere-55413").status_code == 404
    assert client.open("/v1/specialties", method="BREW").status_code == 405
    after = scrape(client)

    def delta(**labels: str) -> float:
        return requests_counted(after, **labels) - requests_counted(before, **labels)

    nearest = "locations.NearestLocations"
    assert delta(endpoint=nearest, method="GET", status="200") == 3
    assert delta(endpoint=nearest, method="GET", status="422") == 1
    assert delta(endpoint="clinics.ClinicById", status="404") == 1
    assert delta(endpoint="unmatched", status="404") == 1
    assert delta(endpoint="unmatched", method="OTHER", status="405") == 1
    latency = samples(after, "referral_http_request_duration_seconds_count")
    assert latency[(("endpoint", nearest), ("method", "GET"))] >= 4
    label_values = {
        value
        for family in text_string_to_metric_families(after)
        for sample in family.samples
        for value in sample.labels.values()
    }
    for leaked in ("78201", "00000", "99999", "55413", "nowhere", "BREW", "?"):
        assert not any(leaked in value for value in label_values), leaked


def test_metrics_count_referrals_created(app, client):
    with Session(get_database(app).engine) as session:
        _, key = create_key(session, name="metrics-app", scopes=["referrals:write"])
        session.commit()
    body = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}

    def created() -> float:
        text = scrape(client)
        return samples(text, "referral_referrals_created_total")[()]

    before = created()
    first = client.post("/v1/referrals", json=body, headers=auth(key, **{"Idempotency-Key": "a"}))
    assert first.status_code == 201
    replay = client.post("/v1/referrals", json=body, headers=auth(key, **{"Idempotency-Key": "a"}))
    assert replay.status_code == 201 and replay.get_json()["replayed"] is True
    assert client.post("/v1/referrals", json={}, headers=auth(key)).status_code == 422
    assert created() - before == 1  # the replay and the refusal created nothing


def test_metrics_answer_nobody_without_a_token(app, client):
    assert app.config["METRICS_TOKEN"] is None  # the default
    for headers in ({}, auth("anything"), auth("")):
        response = client.get("/metrics", headers=headers)
        assert_problem(response, 404)
        assert "referral_" not in response.get_data(as_text=True)


def test_metrics_token_is_required_when_set(app, client):
    app.config["METRICS_TOKEN"] = "s3cret-metrics-token"
    body = assert_problem(client.get("/metrics"), 401)
    assert "METRICS_TOKEN" in body["detail"]
    assert client.get("/metrics").headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers=auth("wrong")).status_code == 401
    ok = client.get("/metrics", headers=auth("s3cret-metrics-token"))
    assert ok.status_code == 200
    assert "referral_http_requests_total" in ok.get_data(as_text=True)


# --- live: gunicorn workers, metrics across them, JSON logs ----------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, *, data: Any = None, headers: dict[str, str] | None = None) -> Reply:
    payload = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=payload, headers=headers or {})
    if payload is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(request, timeout=30) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, dict(exc.headers), exc.read())


def raw_request(base: str, request_line: str) -> bytes:
    """What the server answers to ``request_line`` sent as is (spaces and all)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"{request_line} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def log_lines(output: str) -> list[dict[str, Any]]:
    """Every line of the server's output, parsed: each must be one JSON object."""
    parsed = []
    for line in output.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "msg", "pid"} <= set(entry), line
        parsed.append(entry)
    return parsed


def test_metrics_add_up_every_worker_process(database_url, tmp_path):
    # Each worker is replaced after 5 requests, so 20 requests are answered by at least 4
    # processes: only counts summed over every process (dead ones too) can say 20.
    recycle = ["--max-requests", "5", "--max-requests-jitter", "0"]
    env = {"REFERRAL_METRICS_TOKEN": METRICS_TOKEN}
    with serve(
        database_url, tmp_path, workers=2, env=env, extra_args=recycle, ready_path="/healthz"
    ) as served:
        for _ in range(20):
            assert fetch(f"{served.base}/v1/specialties").status == 200
        assert fetch(f"{served.base}/metrics").status == 401
        text = fetch(f"{served.base}/metrics", headers=auth(METRICS_TOKEN)).body.decode()
        pids = {
            entry["pid"]
            for entry in log_lines(served.output())
            if entry["logger"] == "gunicorn.access" and entry["route"] == "/v1/specialties"
        }
    why = served.explain(text)
    assert len(pids) >= 4, why
    assert requests_counted(text, endpoint="specialties.Specialties", status="200") == 20, why
    output = served.output()
    assert "Traceback" not in output and '"level": "ERROR"' not in output, output
    # The server's own metrics directory is gone with it.
    made = re.search(r'"msg": "metrics directory ([^"]+)"', output)
    assert made is not None, output
    assert not Path(made.group(1)).exists()


def test_json_logs_carry_request_ids_but_no_query_body_or_key(database_url, tmp_path):
    app = build_app(database_url)
    with Session(get_database(app).engine) as session:
        _, key = create_key(session, name="log-check", scopes=["referrals:write"])
        session.commit()
    get_database(app).dispose()
    secret_address = "742 Evergreen Terrace, Springfield"
    patient_ref = "patient-ref-4f1c9a"
    env = {"REFERRAL_RATELIMIT_GEOCODE": "1 per hour"}
    # One worker: with memory:// limits the second search must meet the first one's count.
    with serve(database_url, tmp_path, workers=1, env=env, ready_path="/healthz") as served:
        nearest = f"{served.base}/v1/locations/nearest?address={quote(secret_address)}&limit=1"
        first = fetch(nearest, headers={"X-Request-ID": "trace-nearest-1"})
        limited = fetch(nearest, headers={"X-Request-ID": "trace-nearest-2"})
        referral = fetch(
            f"{served.base}/v1/referrals",
            data={
                "origin": {"zip": "55413"},
                "concerns": ["running_low_back_pain"],
                "patient_ref": patient_ref,
            },
            headers={**auth(key), "X-Request-ID": "trace-referral-1"},
        )
        hostile = fetch(f"{served.base}/v1/specialties", headers={"X-Request-ID": "a b"})
        unparsable = raw_request(served.base, f"GET /v1/locations/nearest?address={secret_address}")
    output = served.output()
    why = served.explain("")
    assert first.headers["X-Request-ID"] == "trace-nearest-1"
    assert limited.status == 429 and limited.headers["X-Request-ID"] == "trace-nearest-2"
    assert referral.status == 201, referral.body
    entries = log_lines(output)
    access = {e["request_id"]: e for e in entries if e["logger"] == "gunicorn.access"}
    line = access["trace-nearest-1"]
    assert line["method"] == "GET" and line["route"] == "/v1/locations/nearest", line
    assert line["path"] == "/v1/locations/nearest", line
    assert line["status"] == first.status and isinstance(line["duration_ms"], float), line
    assert access["trace-nearest-2"]["status"] == 429
    assert access["trace-referral-1"]["status"] == 201
    assert access["trace-referral-1"]["route"] == "/v1/referrals"
    hostile_id = hostile.headers["X-Request-ID"]
    assert MADE_ID_RE.fullmatch(hostile_id) and access[hostile_id]["status"] == 200
    # App lines logged during a request carry its id (here: Flask-Limiter's refusal).
    refusal = [e for e in entries if e["logger"] == "flask-limiter"]
    assert refusal and all(e.get("request_id") == "trace-nearest-2" for e in refusal), why
    for leaked in (
        "Evergreen",
        quote(secret_address),
        "address=",
        patient_ref,
        key,
        key.split("_", 2)[2],
        "running_low_back_pain",
    ):
        assert leaked not in output, (leaked, why)
    assert not any("?" in str(e.get("path")) for e in access.values()), why
    # An unencoded address in the request line: gunicorn's 400, logged as the error's kind.
    assert unparsable.startswith(b"HTTP/1.1 400"), unparsable
    assert any(
        e["logger"] == "gunicorn.error"
        and e["msg"] == "Invalid request from ip=127.0.0.1: InvalidHTTPVersion"
        for e in entries
    ), why


def test_serve_takes_workers_and_bind_from_settings(database_url, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "REFERRAL_DATABASE_URL": database_url,
        "REFERRAL_WORKERS": "3",
        "REFERRAL_THREADS": "2",
        "REFERRAL_BIND": f"127.0.0.1:{port}",
    }
    script = Path(sys.executable).parent / "referral"
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(script), "serve"], cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process)
    finally:
        process.terminate()
        process.wait(timeout=30)
    entries = log_lines(log.read_text())
    booted = [e for e in entries if e["msg"].startswith("Booting worker")]
    assert len(booted) == 3, entries
    assert any(e["msg"] == "Using worker: gthread" for e in entries), entries
    # Each worker built its nearest index before taking requests (post_worker_init).
    assert not any("not built at start" in e["msg"] for e in entries), entries
    assert process.returncode == 0


def test_container_entrypoint_migrates_seeds_and_serves(empty_database_url, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "REFERRAL_DATABASE_URL": empty_database_url,
        "REFERRAL_SEED_ON_START": "true",
        "REFERRAL_BIND": f"127.0.0.1:{port}",
        "REFERRAL_WORKERS": "1",
    }
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["sh", str(REPO_ROOT / "docker" / "entrypoint.sh")],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        # /readyz answers 200 only once the schema is at head.
        wait_for(f"http://127.0.0.1:{port}/readyz", process, seconds=60)
        specialties = fetch(f"http://127.0.0.1:{port}/v1/specialties")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert specialties.status == 200 and json.loads(specialties.body), log.read_text()
    assert process.returncode == 0, log.read_text()


def test_a_new_request_id_is_unique():
    from referral.ops.requestid import accept_or_make

    made = {accept_or_make(None) for _ in range(100)}
    assert len(made) == 100
    assert accept_or_make(str(uuid.UUID(int=7))) == str(uuid.UUID(int=7))


def test_made_request_ids_are_random_hex_not_a_count():
    from referral.ops.requestid import make

    made = [make() for _ in range(10_000)]
    assert all(MADE_ID_RE.fullmatch(value) for value in made), made[:3]
    assert len(set(made)) == len(made)
    # Random throughout: no per-process prefix or counter that would tell a client how busy
    # a worker is (two ids sharing their first 8 digits: odds of 1 in 4 billion).
    first, second = made[:2]
    assert first[:8] != second[:8] and first[-8:] != second[-8:], made[:2]
    # Another process (a forked worker) makes its own.
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, make().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    assert MADE_ID_RE.fullmatch(theirs) and theirs not in made


def test_log_lines_drop_query_strings_and_exception_messages(app):
    import logging

    from referral.ops.logs import JsonFormatter

    formatter = JsonFormatter()
    uri = "/v1/locations/nearest?address=742+Evergreen+Terrace"
    record = logging.LogRecord(
        "gunicorn.error", logging.ERROR, __file__, 1, "Error handling request %s", (uri,), None
    )
    line = json.loads(formatter.format(record))
    assert line["msg"] == "Error handling request /v1/locations/nearest?..."
    # The stack shows source lines: the data must come from a variable, as it would.
    detail = "patient pt-991 at " + uri.split("=")[1].replace("+", " ")
    try:
        raise ValueError(detail)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("referral", logging.ERROR, __file__, 1, "failed", None, exc_info)
    with app.test_request_context(headers={"X-Request-ID": "trace-7"}):
        line = json.loads(formatter.format(record))
    assert line["request_id"] == "trace-7"
    assert line["exc_type"] == "ValueError"
    assert line["traceback"].startswith("Traceback (most recent call last):")
    assert "Evergreen" not in json.dumps(line) and "pt-991" not in json.dumps(line)


# --- the per-request work, done cheaply: same lines, same counts -----------------------------


def test_timestamps_are_utc_milliseconds_exactly_as_isoformat_writes_them():
    from datetime import UTC, datetime

    from referral.ops.logs import _timestamp

    moments = [0.0, 0.0005, 0.9999996, 1767621791.2071, 1767621791.9999, 1767621792.0]
    moments += [4102444799.999, 1767621791.0005, 1767621791.9995]
    moments += [1767621791 + n / 997 for n in range(2000)]  # many within one second, in order
    for created in moments:
        stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert _timestamp(created) == stamp.replace("+00:00", "Z"), created


ACCESS_CASES: list[dict[str, Any]] = [
    {
        "request_id": "trace-1",
        "method": "GET",
        "route": "/v1/clinics/<int(max=2147483647):clinic_id>",
        "path": "/v1/clinics/7",
        "status": 200,
        "duration_ms": 4.213,
        "sent": 2291,
        "remote_addr": "203.0.113.9",
    },
    {  # what a hostile client controls: the method and the path
        "request_id": None,
        "method": "BR\nEW",
        "route": None,
        "path": '/a"b\\c\u00e9\n\u2028' + "x" * 300 + "?address=742+Evergreen",
        "status": 404,
        "duration_ms": 0.0,
        "sent": None,
        "remote_addr": None,
    },
    {
        "request_id": "x",
        "method": None,
        "route": None,
        "path": None,
        "status": 431,
        "duration_ms": 12345.5,
        "sent": 0,
        "remote_addr": "",
    },
]


@pytest.mark.parametrize("case", ACCESS_CASES)
def test_an_access_line_is_what_the_json_formatter_writes(case):
    import logging

    from referral.ops import logs

    created = 1767621791.2071
    line = logs.access_line(created, **case)
    # The same fields through the logging machinery, as every other line is written.
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "request", None, None)
    record.created = created
    record.fields = {  # type: ignore[attr-defined]
        "request_id": case["request_id"],
        "method": logs.safe_method(case["method"]),
        "route": case["route"],
        "path": logs.safe_path(case["path"]),
        "status": case["status"],
        "duration_ms": case["duration_ms"],
        "bytes": case["sent"],
        "remote_addr": case["remote_addr"],
    }
    assert line == logs.JsonFormatter().format(record)
    parsed = json.loads(line)
    assert "\n" not in line and "Evergreen" not in line and "?" not in str(parsed["path"])
    assert parsed["method"] in ("GET", "OTHER")


@pytest.fixture
def restored_logging():
    """GunicornJsonLogger configures the root and gunicorn loggers: put them back after."""
    import logging

    saved = {}
    for name in (None, "gunicorn.error", "gunicorn.access", "alembic"):
        log = logging.getLogger(name)
        saved[name] = (list(log.handlers), log.level, log.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if handler not in handlers:
                log.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in log.handlers:
                log.addHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def test_the_access_log_writes_the_same_line_directly_or_through_logging(
    tmp_path, restored_logging
):
    from datetime import timedelta

    from gunicorn.config import Config

    from referral.ops.logs import GunicornJsonLogger
    from referral.ops.requestid import ENVIRON_ID, ENVIRON_ROUTE

    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    config.set("errorlog", str(tmp_path / "error.log"))
    logger = GunicornJsonLogger(config)
    assert logger._access_streams, "gunicorn's access file should be written directly"

    class Req:
        method = "GET"
        path = "/v1/locations/nearest?address=742+Evergreen+Terrace"

    class Resp:
        status = "200 OK"
        status_code = 200
        sent = 2291

    environ = {
        ENVIRON_ID: "trace-9",
        ENVIRON_ROUTE: "/v1/locations/nearest",
        "REMOTE_ADDR": "203.0.113.9",
    }
    logger.access(Resp, Req, environ, timedelta(microseconds=4213))
    # A handler with a filter (or syslog, or a logconfig): the logging path instead.
    logger.access_log.handlers[0].addFilter(lambda record: True)
    logger.access(Resp, Req, environ, timedelta(microseconds=4213))
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert len(lines) == 2, lines
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("ts"))
    assert (
        lines[0]
        == lines[1]
        == {
            "level": "INFO",
            "logger": "gunicorn.access",
            "msg": "request",
            "pid": os.getpid(),
            "request_id": "trace-9",
            "method": "GET",
            "route": "/v1/locations/nearest",
            "path": "/v1/locations/nearest",
            "status": 200,
            "duration_ms": 4.213,
            "bytes": 2291,
            "remote_addr": "203.0.113.9",
        }
    )
    assert (tmp_path / "error.log").read_text() == ""


def test_healthz_is_the_floor_and_still_counted(client):
    from referral.ops import metrics

    before = scrape(client)
    for _ in range(3):
        response = client.get("/healthz")
        assert response.status_code == 200 and response.get_json() == {"status": "ok"}
        assert response.headers["Content-Type"] == "application/json"
        assert MADE_ID_RE.fullmatch(response.headers["X-Request-ID"])
    label_sets = len(metrics._children)
    # Unknown methods are one label set (OTHER), however many a client invents.
    for number in range(30):
        assert client.open("/healthz", method=f"BREW{number}").status_code == 405
    assert len(metrics._children) <= label_sets + 1
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        def total(text: str) -> float:
            return sum(
                value
                for key, value in samples(text, name).items()
                if all(dict(key).get(k) == v for k, v in labels.items())
            )

        return total(after) - total(before)

    healthz = {"endpoint": "ops.healthz", "method": "GET"}
    assert delta("referral_http_requests_total", status="200", **healthz) == 3
    assert delta("referral_http_request_duration_seconds_count", **healthz) == 3
    assert 0 < delta("referral_http_request_duration_seconds_sum", **healthz) < 3
    assert delta("referral_http_request_duration_seconds_bucket", le="+Inf", **healthz) == 3
    assert (
        delta("referral_http_requests_total", endpoint="unmatched", method="OTHER", status="405")
        == 30
    )


def test_probes_pass_no_rate_limit_hook(app):
    from referral.ops.limits import _limiter_hook, get_limiter

    limiter = get_limiter(app)
    assert app.extensions["referral_limiter_hooks"] == "blueprints"

    def limiter_hooks(blueprint: str | None) -> int:
        hooks = [
            *app.before_request_funcs.get(blueprint, []),
            *app.after_request_funcs.get(blueprint, []),
            *app.teardown_request_funcs.get(blueprint, []),
        ]
        return sum(1 for hook in hooks if _limiter_hook(hook, limiter))

    # Every request passes the app's own hooks, /healthz the ops blueprint's too: none of
    # them is the limiter's. Each limited blueprint has all three.
    assert limiter_hooks(None) == 0 and limiter_hooks("ops") == 0
    for blueprint in ("clinics", "locations", "specialties", "concerns", "exports", "referrals"):
        assert limiter_hooks(blueprint) == 3, blueprint
