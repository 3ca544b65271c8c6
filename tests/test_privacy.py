"""Secrets and privacy: no API key is stored in plain text anywhere in the database, and a canary
patient_ref, assessment text and status note never reach a log, on the normal path, on error
paths (4xx answers that echo the input back), and on crash paths (an exception inside intake
that carries the payload, the database refusing the insert, a gunicorn worker killed with
SIGKILL mid-request, a worker timed out by gunicorn mid-request).

In-process logs are read through caplog (every logger, DEBUG, SQL echo on) and the process's
stdout/stderr (capfd, for handlers that write there directly); gunicorn's logs (its error and
access logs and the app's, at debug level) through the server's captured output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from referral.auth.keys import create_key
from referral.db import get_database
from referral.directory.models import Clinic
from tests.conftest import build_app, skip_or_fail
from tests.dbscan import text_cells
from tests.helpers import auth
from tests.live import OPENER, Served, serve

BODY = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}
CANARY_REF = "canary-ref-5e1f0a"
CANARY_TEXT = "canary-assessment-77c2d9"
CANARY_NOTE = "canary-note-3b8e41"
CANARIES = (CANARY_REF, CANARY_TEXT, CANARY_NOTE)


def canary_body(**extra: Any) -> dict[str, Any]:
    return {
        **BODY,
        "patient_ref": CANARY_REF,
        "assessment": {"summary": f"{CANARY_TEXT} after a 10k", "pain": 6},
        **extra,
    }


def secret_parts(key: str) -> list[str]:
    """The key, its secret, and every 8-character piece of the secret.

    The hint keeps the secret's last 4 characters, by design; 8 contiguous characters of it
    anywhere would be a leak.
    """
    secret = key.split("_", 2)[2]
    return [key, secret, *(secret[i : i + 8] for i in range(len(secret) - 7))]


def clinic_id(app: Flask, seed_key: str) -> int:
    with Session(get_database(app).engine) as session:
        found = session.exec(select(Clinic.id).where(Clinic.seed_key == seed_key)).one()
    assert found is not None
    return found


# --- no API key stored in plain text ----------------------------------------------------------


def _pg_dump_text(database_url: str) -> str:
    """The whole database as SQL text (schema and data), by pg_dump."""
    if not _which("pg_dump"):
        skip_or_fail("pg_dump is not on PATH: the PostgreSQL dump scan needs it")
    url = make_url(database_url).set(drivername="postgresql")
    result = subprocess.run(
        ["pg_dump", "--no-owner", "--dbname", url.render_as_string(hide_password=False)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout


def _which(program: str) -> bool:
    from shutil import which

    return which(program) is not None


def test_no_api_key_is_stored_in_plain_text(app, client, runner, backend, database_url):
    made = runner.invoke(
        args=["keys", "create", "--name", "scan-app", "--scopes", "referrals:write",
              "--expires-in-days", "30"]
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    app_key = made.stdout.strip().splitlines()[-1]
    with Session(get_database(app).engine) as session:
        _, admin = create_key(session, name="scan-ops", scopes=["admin"])
        _, desk = create_key(
            session,
            name="scan-desk",
            scopes=["referrals:status", "referrals:read"],
            clinic_id=clinic_id(app, "pro-therapy"),
        )
        session.commit()
    keys = [app_key, admin, desk]

    # Use every key, the ways that store things: an idempotent create and its replay (the
    # stored response), a status change (history), reads (audit rows, last_used_at)...
    sent = client.post(
        "/v1/referrals", json=BODY, headers=auth(app_key, **{"Idempotency-Key": "scan-1"})
    )
    assert sent.status_code == 201, sent.get_json()
    referral_id = sent.get_json()["id"]
    assert (
        client.post(
            "/v1/referrals", json=BODY, headers=auth(app_key, **{"Idempotency-Key": "scan-1"})
        ).status_code
        == 201
    )
    assert (
        client.patch(
            f"/v1/referrals/{referral_id}", json={"status": "accepted"}, headers=auth(desk)
        ).status_code
        == 200
    )
    for path in (
        "/v1/referrals",
        "/v1/referrals/stats",
        "/v1/referrals/export.csv",
        "/v1/admin/audit",
    ):
        assert client.get(path, headers=auth(admin)).status_code == 200
    # ...and the ways that fail: a wrong secret, junk after the key, the key in a query string.
    assert client.get("/v1/referrals", headers=auth(app_key[:-4] + "AAAA")).status_code == 401
    assert client.get("/v1/referrals", headers=auth(admin + "x")).status_code == 401
    assert client.get(f"/v1/referrals?api_key={admin}").status_code == 401
    revoked = runner.invoke(args=["keys", "revoke", app_key.split("_")[1]])
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/v1/referrals", headers=auth(app_key)).status_code == 401  # fmt: skip

    cells = list(text_cells(get_database(app).engine))
    assert {table for table, _, _ in cells} >= {
        "api_key",
        "referral",
        "idempotency_record",
        "audit_event",
    }
    for key in keys:
        for part in secret_parts(key):
            leaks = [(table, column) for table, column, text in cells if part in text]
            assert leaks == [], f"a piece of an API key is stored in {leaks}"

    # Below the rows: the files themselves (free pages, the WAL), or the whole dump.
    if backend == "sqlite":
        path = Path(make_url(database_url).database or "")
        raw = b"".join(
            candidate.read_bytes()
            for candidate in (path, path.with_name(path.name + "-wal"))
            if candidate.exists()
        )
        assert raw, "the SQLite file was read"
        for key in keys:
            assert all(part.encode() not in raw for part in secret_parts(key))
    else:
        dump = _pg_dump_text(database_url)
        assert "COPY public.api_key" in dump
        for key in keys:
            assert all(part not in dump for part in secret_parts(key))


# --- canaries never logged: in-process -----------------------------------------------------


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything a handler could write: messages, arguments, extras, tracebacks."""
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        parts.append(repr({k: v for k, v in record.__dict__.items() if k != "exc_info"}))
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
    return "\n".join(parts)


def assert_no_canary(text: str, *secrets: str) -> None:
    for canary in (*CANARIES, *secrets):
        assert canary not in text, f"{canary} reached the logs"


@pytest.fixture
def loud_app(database_url: str) -> Iterator[Flask]:
    """The app with SQL echo on and errors handled as in production (a 500, not a raise)."""
    app = build_app(database_url, DATABASE_ECHO=True, PROPAGATE_EXCEPTIONS=False)
    yield app
    get_database(app).dispose()


@pytest.fixture
def keys(loud_app: Flask) -> dict[str, str]:
    with Session(get_database(loud_app).engine) as session:
        made = {
            "app": create_key(session, name="canary-app", scopes=["referrals:write"])[1],
            "admin": create_key(session, name="canary-ops", scopes=["admin"])[1],
            "desk": create_key(
                session,
                name="canary-desk",
                scopes=["referrals:status", "referrals:read"],
                clinic_id=clinic_id(loud_app, "pro-therapy"),
            )[1],
        }
        session.commit()
    return made


def test_canaries_never_logged_on_normal_and_error_paths(loud_app, keys, caplog, capfd):
    client = loud_app.test_client()
    caplog.set_level(logging.DEBUG)
    app_key, admin, desk = keys["app"], keys["admin"], keys["desk"]

    def post(body: Any, key: str = app_key, idem: str | None = None) -> Any:
        headers = auth(key, **({"Idempotency-Key": idem} if idem else {}))
        return client.post("/v1/referrals", json=body, headers=headers)

    def post_raw(text: str, content_type: str = "application/json") -> Any:
        return client.post(
            "/v1/referrals", data=text, content_type=content_type, headers=auth(app_key)
        )

    def change(referral: str, body: dict[str, Any]) -> Any:
        return client.patch(f"/v1/referrals/{referral}", json=body, headers=auth(desk))

    # Normal: create, replay, read, list, accept with a note, stats, export.
    made = post(canary_body(), idem="canary-1")
    assert made.status_code == 201, made.get_json()
    referral = made.get_json()["id"]
    assert post(canary_body(), idem="canary-1").headers["Idempotent-Replayed"] == "true"
    read = client.get(f"/v1/referrals/{referral}", headers=auth(app_key)).get_json()
    assert read["patient_ref"] == CANARY_REF
    assert client.get("/v1/referrals", headers=auth(admin)).status_code == 200
    accepted = change(referral, {"status": "accepted", "note": CANARY_NOTE})
    assert accepted.status_code == 200, accepted.get_json()
    assert client.get("/v1/referrals/stats", headers=auth(admin)).status_code == 200
    assert client.get("/v1/referrals/export.csv", headers=auth(admin)).status_code == 200

    # Errors whose answers echo the input back: the answer may, the logs may not.
    echoed = [
        post(canary_body(patient_ref=f"{CANARY_REF} with spaces")),
        post(canary_body(assessment={f"{CANARY_TEXT}_name": "x"})),
        post(canary_body(assessment={"n": f"{CANARY_TEXT}@example.com"})),
        post(canary_body(**{CANARY_TEXT: 1})),
        post(canary_body(), idem=f"{CANARY_REF} x"),
    ]
    assert [response.status_code for response in echoed] == [422] * len(echoed)
    echoing = [
        response
        for response in echoed
        if any(canary in response.get_data(as_text=True) for canary in CANARIES)
    ]
    assert len(echoing) >= 2  # e.g. an identifying key name and an unknown field come back
    text = json.dumps(canary_body())
    others = [
        post(canary_body(urgency="soon"), idem="canary-1"),  # the key again, another body
        post_raw(text.replace(CANARY_TEXT, CANARY_TEXT + "\\ud800")),  # a lone surrogate
        post_raw(text, content_type="text/plain"),
        post_raw(json.dumps(canary_body(assessment={"x": CANARY_TEXT * 3000}))),  # too large
        post(canary_body(), key=app_key + "x"),
        post(canary_body(), key=desk),
        change(referral, {"status": "completed", "note": CANARY_NOTE}),  # not allowed yet
        change(referral, {"status": "accepted", "note": f"{CANARY_NOTE}\u202e"}),
    ]
    assert [r.status_code for r in others] == [422, 400, 415, 413, 401, 403, 409, 422]

    out, err = capfd.readouterr()
    logged = logged_text(caplog) + out + err
    assert "INSERT INTO referral" in logged  # SQL echo was on: statements logged, values not
    assert_no_canary(logged, *[part for key in keys.values() for part in secret_parts(key)])


def test_canaries_never_logged_when_intake_crashes(loud_app, keys, caplog, capfd, monkeypatch):
    """A bug whose exception message carries the whole payload: logged as its type only."""
    from referral.referrals import service

    def broken(_session: Any, new: Any) -> Any:
        raise RuntimeError(f"cannot store a referral from {new.row!r}")

    monkeypatch.setattr(service, "store_referral", broken)
    caplog.set_level(logging.DEBUG)
    response = loud_app.test_client().post(
        "/v1/referrals", json=canary_body(), headers=auth(keys["app"])
    )
    assert response.status_code == 500
    assert not any(canary in response.get_data(as_text=True) for canary in CANARIES)
    out, err = capfd.readouterr()
    text = logged_text(caplog) + out + err
    assert "RuntimeError" in text  # the crash is logged...
    assert_no_canary(text)  # ...without what it carried


@contextmanager
def refusing_inserts(app: Flask) -> Iterator[None]:
    """A trigger that makes the database itself refuse every new referral row."""
    engine = get_database(app).engine
    if engine.dialect.name == "sqlite":
        create = [
            "CREATE TRIGGER refuse_referrals BEFORE INSERT ON referral "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"
        ]
        drop = ["DROP TRIGGER refuse_referrals"]
    else:
        create = [
            "CREATE FUNCTION refuse_referrals() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$",
            "CREATE TRIGGER refuse_referrals BEFORE INSERT ON referral "
            "FOR EACH ROW EXECUTE FUNCTION refuse_referrals()",
        ]
        drop = ["DROP TRIGGER refuse_referrals ON referral", "DROP FUNCTION refuse_referrals()"]
    with engine.begin() as connection:
        for statement in create:
            connection.execute(sa.text(statement))
    try:
        yield
    finally:
        with engine.begin() as connection:
            for statement in drop:
                connection.execute(sa.text(statement))


def test_canaries_never_logged_when_the_database_refuses(loud_app, keys, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    with refusing_inserts(loud_app):
        response = loud_app.test_client().post(
            "/v1/referrals", json=canary_body(), headers=auth(keys["app"])
        )
    assert response.status_code == 500
    out, err = capfd.readouterr()
    text = logged_text(caplog) + out + err
    assert "unhandled" in text and "INSERT INTO referral" in text
    assert_no_canary(text)


# --- canaries never logged: gunicorn, including killed and timed-out workers ----------------

TIMEOUT_SECONDS = 4


def _current_worker(served: Served, not_pid: int | None = None, seconds: float = 90) -> int:
    """The pid of the worker gunicorn booted last (not ``not_pid``), once it answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        booted = re.findall(r"Booting worker with pid: (\d+)", served.output())
        if booted and int(booted[-1]) != not_pid:
            try:
                with OPENER.open(f"{served.base}/v1/specialties", timeout=10):
                    return int(booted[-1])
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(served.explain("no new worker answered"))


def _post(served: Served, key: str, body: dict[str, Any], **headers: str) -> int | str:
    """The status code, or the name of the connection error (a killed worker answers nothing)."""
    request = urllib.request.Request(
        f"{served.base}/v1/referrals",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **auth(key, **headers)},
    )
    try:
        with OPENER.open(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__


@contextmanager
def writes_blocked(database_url: str) -> Iterator[None]:
    """Hold the write lock on referrals, so an insert waits inside the request."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database or "", isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.rollback()
            connection.close()
        return
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text("LOCK TABLE referral IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            connection.rollback()
    engine.dispose()


def _wait_until_blocked(database_url: str) -> None:
    """Until the request waits on the lock inside its insert (PostgreSQL shows it; SQLite's
    busy wait is invisible from outside, so a pause stands in for it there)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        time.sleep(1.5)
        return
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    deadline = time.monotonic() + 30
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO referral%'"
    )
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                if connection.execute(query).scalar_one():
                    return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError("the request never reached its insert")


def _in_flight(served: Served, key: str) -> tuple[threading.Thread, list[int | str]]:
    answers: list[int | str] = []
    thread = threading.Thread(target=lambda: answers.append(_post(served, key, canary_body())))
    thread.start()
    return thread, answers


def test_canaries_never_reach_gunicorn_logs(database_url, tmp_path):
    app = build_app(database_url)
    with Session(get_database(app).engine) as session:
        _, app_key = create_key(session, name="canary-app", scopes=["referrals:write"])
        session.commit()

    extra = ["--log-level", "debug", "--access-logfile", "-", "--timeout", str(TIMEOUT_SECONDS),
             "--graceful-timeout", "2"]  # fmt: skip
    env = {"REFERRAL_SQLITE_BUSY_TIMEOUT_MS": "60000"}
    with serve(database_url, tmp_path, workers=1, env=env, extra_args=extra) as served:
        # Normal, then error paths (their answers echo the canaries back).
        assert _post(served, app_key, canary_body()) == 201
        assert _post(served, app_key, canary_body(patient_ref=f"{CANARY_REF} x")) == 422
        assert _post(served, app_key, canary_body(**{CANARY_TEXT: 1})) == 422
        assert (
            _post(served, app_key, canary_body(), **{"Idempotency-Key": CANARY_REF + " x"}) == 422
        )
        assert _post(served, app_key + "x", canary_body()) == 401  # fmt: skip

        # Crash: the database refuses the insert (a 500 from inside intake).
        with refusing_inserts(app):
            assert _post(served, app_key, canary_body()) == 500

        # A worker killed with SIGKILL while it waits inside the insert.
        worker = _current_worker(served)
        with writes_blocked(database_url):
            thread, answers = _in_flight(served, app_key)
            _wait_until_blocked(database_url)
            os.kill(worker, signal.SIGKILL)
            thread.join(timeout=60)
        assert answers and answers[0] != 201, answers

        # A worker gunicorn times out (and aborts, then kills) while it waits inside the insert.
        worker = _current_worker(served, not_pid=worker)
        with writes_blocked(database_url):
            thread, answers = _in_flight(served, app_key)
            thread.join(timeout=TIMEOUT_SECONDS * 10)
        assert answers and answers[0] != 201, answers
        _current_worker(served, not_pid=worker)
        output = served.output()

    # Every path ran and left its trace in the log...
    assert "POST /v1/referrals" in output  # the access log
    assert "unhandled" in output  # the 500
    assert "SIGKILL" in output  # gunicorn saw its worker killed
    assert "WORKER TIMEOUT" in output
    # ...and no canary, and no key.
    assert_no_canary(output, *secret_parts(app_key))
    get_database(app).dispose()
