"""Import runs: a dry run answers a bounded summary (the first errors and their total), the
whole plan and every error are paged and downloaded from the run, one import runs at a time
(a lease in the database; an expired one is taken over), and the CLI takes the same path."""

from __future__ import annotations

import http.client
import io
import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select, text
from sqlmodel import Session

from referral.admin import commands
from referral.admin.imports import Actor, ImportConflictError, ImportSettings, LeaseLostError, runs
from referral.admin.imports import read as reading
from referral.admin.models import ImportLease, ImportRun, ImportRunPart
from referral.auth.keys import create_key
from referral.db import get_database
from referral.directory.models import Clinic, Location
from referral.directory.revision import DirectoryRevision
from referral.timeutil import utcnow
from tests.conftest import build_app
from tests.helpers import assert_problem, auth
from tests.live import serve
from tests.test_imports import (
    ALAMO,
    IMPORTS,
    LAKESIDE,
    LAKESIDE_NORTH,
    counts,
    pages,
    plan_of,
    post_csv,
    to_csv,
)


def bad_rows(count: int) -> list[dict[str, Any]]:
    """Rows with two errors each (a phone and a state), one clinic each."""
    return [
        {**LAKESIDE, "clinic_name": f"Bad Clinic {n}", "phone": "12", "state": "Texas"}
        for n in range(count)
    ]


def run_of(app, run_id: int) -> ImportRun:
    with Session(get_database(app).engine) as session:
        run = session.get(ImportRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def download(client, url: str, key: str) -> list[dict[str, Any]]:
    response = client.get(url, headers=auth(key))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


# ---- a dry run's answer ---------------------------------------------------------------------


def test_a_dry_run_of_many_bad_rows_answers_a_small_summary(app, client, editor):
    rows = [LAKESIDE, *bad_rows(3000), ALAMO]
    before = counts(app)
    response = post_csv(client, to_csv(rows), editor["writer"], dry_run=True)
    assert response.status_code == 200
    assert len(response.get_data()) < 30_000  # 100 errors, not 6,000
    report = response.get_json()
    assert report["state"] == "planned" and report["valid"] is False
    assert report["rows_read"] == 3002
    assert report["error_count"] == 6000 and report["error_rows"] == 3000
    assert len(report["errors"]) == 100
    # The first ones, in row order (a row's in column order).
    assert [(e["row"], e["field"]) for e in report["errors"][:4]] == [
        (3, "phone"), (3, "state"), (4, "phone"), (4, "state"),
    ]  # fmt: skip
    assert f"/v1/admin/imports/{report['id']}/errors" in report["errors_note"]
    assert "100 of 6000" in report["errors_note"]
    assert report["counts"]["rows"] == {"created": 2, "updated": 0, "unchanged": 0}
    assert report["plan_entries"] == 2
    assert counts(app) == before

    # Every error, paged and downloaded alike.
    every = pages(client, report["links"]["errors"], editor["writer"], page_size=700)
    assert len(every) == 6000
    assert every[:100] == report["errors"]
    assert [e["row"] for e in every] == sorted(e["row"] for e in every)
    assert download(client, report["links"]["errors_download"], editor["writer"]) == every
    listed = client.get(report["links"]["errors"], headers=auth(editor["writer"]))
    assert json.loads(listed.headers["X-Pagination"])["total"] == 6000

    # The cap is a setting.
    app.config["IMPORT_MAX_ERRORS"] = 7
    fewer = post_csv(client, to_csv(rows), editor["writer"], dry_run=True).get_json()
    assert len(fewer["errors"]) == 7 and fewer["error_count"] == 6000


def test_a_real_run_with_bad_rows_names_the_first_ones_and_writes_nothing(app, client, editor):
    before = counts(app)
    response = post_csv(client, to_csv([LAKESIDE, *bad_rows(400)]), editor["admin"])
    body = assert_problem(response, 422, "rows[3].phone")
    assert len(body["invalid_params"]) == 100  # the first 100 errors, in 50 rows
    assert body["detail"].startswith("800 error(s) in 400 row(s), nothing was imported")
    link = response.headers["Link"]
    errors_url = re.fullmatch(r'<([^>]+)>; rel="related"', link)
    assert errors_url is not None and errors_url[1] in body["detail"]
    assert len(pages(client, errors_url[1], editor["admin"])) == 800
    run_id = int(errors_url[1].split("/")[-2])
    run = client.get(f"{IMPORTS}/{run_id}", headers=auth(editor["admin"])).get_json()
    assert (run["state"], run["dry_run"], run["changes_recorded"]) == ("refused", False, 0)
    assert counts(app) == before


def test_an_answer_stays_small_whatever_the_file_quotes(app, client, editor):
    """An error quoting the file (an unknown column's name) is clipped."""
    header = ",".join(["clinic_name", "city", "state", *(f"{'x' * 5000}{n}" for n in range(200))])
    data = (header + "\n" + "A,Austin,TX" + "," * 200 + "\n").encode()
    response = post_csv(client, data, editor["admin"], dry_run=True)
    assert response.status_code == 200
    assert len(response.get_data()) < 120_000
    assert response.get_json()["error_count"] == 200


# ---- the stored plan ------------------------------------------------------------------------

PRO = {"clinic_name": "PRO Therapy", "phone": "", "address": "2112 Broadway Street NE",
       "city": "Minneapolis", "state": "MN", "zip": "55413"}  # fmt: skip
HILL = {"clinic_name": "Hill Country PT", "phone": "512-555-0123", "city": "Austin",
        "state": "TX", "zip": "78701", "specialties": "sports"}  # fmt: skip
# After LAKESIDE, LAKESIDE_NORTH and ALAMO were imported: every outcome, a note, and errors
# of a row, of a duplicate location and of rows disagreeing about their clinic.
MIXED = [
    {**LAKESIDE, "website": "https://new.example"},
    {**LAKESIDE_NORTH, "website": "", "specialties": ""},
    {**ALAMO, "lat": "29.4260", "lon": "-98.4861"},
    {**LAKESIDE, "phone": "(612) 555-0199", "address": "9 Other St"},
    PRO,
    {**LAKESIDE, "website": "", "address": "100 lake st "},
    {**ALAMO, "clinic_name": "Zip Clinic", "phone": "", "zip": "7820"},
    HILL,
    {**HILL, "clinic_name": "hill  country pt", "phone": "(512) 555-0123", "address": "2 Oak",
     "city": "Round Rock", "zip": "", "specialties": ""},
    {**HILL, "address": "3 Elm", "specialties": "hand"},
]  # fmt: skip
# What the importer answered for MIXED before it streamed (its full "plan" and "errors"),
# ids aside: (row, action, clinic action, name, phone, location action, address, city,
# state, zip, notes).
MIXED_PLAN = [
    (2, "updated", "updated", "Lakeside Running Clinic", "+16125550147", "unchanged",
     "100 Lake St", "Minneapolis", "MN", "55408", []),
    (3, "updated", "updated", "Lakeside Running Clinic", "+16125550147", "unchanged",
     "200 Lake St", "Minneapolis", "MN", "55409", []),
    (4, "updated", "unchanged", "Alamo Spine & Sport", "+12105550188", "updated",
     "1 Alamo Plaza", "San Antonio", "TX", "78205", []),
    (5, "created", "created", "Lakeside Running Clinic", "+16125550199", "created",
     "9 Other St", "Minneapolis", "MN", "55408",
     ["a separate clinic is made: the directory has this name with another phone "
      "(clinic {lakeside})"]),
    (6, "unchanged", "unchanged", "PRO Therapy", None, "unchanged",
     "2112 Broadway Street NE", "Minneapolis", "MN", "55413", []),
    (9, "created", "created", "Hill Country PT", "+15125550123", "created",
     None, "Austin", "TX", "78701", []),
]  # fmt: skip
MIXED_ERRORS = [
    {"row": 7, "field": "address", "reason": "the same location as row 2"},
    {"row": 8, "field": "zip", "reason": "must be a 5-digit ZIP code (or ZIP+4)"},
    {"row": 10, "field": "clinic_name",
     "reason": "differs from row 9 for the same clinic (Hill Country PT)"},
    {"row": 11, "field": "specialties",
     "reason": "differs from row 9 for the same clinic (Hill Country PT)"},
]  # fmt: skip
MIXED_COUNTS = {
    "rows": {"created": 2, "updated": 3, "unchanged": 1},
    "clinics": {"created": 2, "updated": 1, "unchanged": 2},
    "locations": {"created": 2, "updated": 1, "unchanged": 3},
}


def clinic_ids(app) -> dict[tuple[str, str | None], int]:
    with Session(get_database(app).engine) as session:
        return {
            (name, phone): clinic_id
            for clinic_id, name, phone in session.execute(
                select(Clinic.id, Clinic.name, Clinic.phone)
            )
        }


def location_ids(app) -> dict[tuple[int, str | None], int]:
    with Session(get_database(app).engine) as session:
        return {
            (clinic_id, address): location_id
            for location_id, clinic_id, address in session.execute(
                select(Location.id, Location.clinic_id, Location.address_line1)
            )
        }


@pytest.mark.parametrize("chunk", [5000, 2])
def test_the_stored_plan_is_the_whole_plan_as_it_was_answered(app, client, editor, chunk):
    """Paged, downloaded, whatever the chunks the file is read in: the plan the importer
    answered whole before (MIXED_PLAN), with the ids of the records it matched."""
    key = editor["admin"]
    assert post_csv(client, to_csv([LAKESIDE, LAKESIDE_NORTH, ALAMO]), key).status_code == 200
    ids, places = clinic_ids(app), location_ids(app)
    with mock.patch.object(reading, "CHUNK_ROWS", chunk):
        report = post_csv(client, to_csv(MIXED), key, dry_run=True).get_json()
    assert report["counts"] == MIXED_COUNTS
    assert report["errors"] == MIXED_ERRORS and report["errors_note"] is None
    plan = plan_of(client, report, key)
    lakeside = ids[("Lakeside Running Clinic", "+16125550147")]
    assert [
        (e["row"], e["action"], e["clinic"]["action"], e["clinic"]["name"], e["clinic"]["phone"],
         e["location"]["action"], e["location"]["address"], e["location"]["city"],
         e["location"]["state"], e["location"]["zip"], e["notes"])
        for e in plan
    ] == [
        (*entry[:10], [note.format(lakeside=lakeside) for note in entry[10]])
        for entry in MIXED_PLAN
    ]  # fmt: skip
    for entry in plan:
        clinic, location = entry["clinic"], entry["location"]
        created = clinic["action"] == "created"
        assert clinic["id"] == (None if created else ids[(clinic["name"], clinic["phone"])])
        if location["action"] == "created":
            assert location["id"] is None
        else:
            assert location["id"] == places[(clinic["id"], location["address"])]
    assert download(client, report["links"]["plan_download"], key) == plan
    # A page across the stored parts' bounds reads what the whole says.
    with mock.patch.object(runs, "PART_ENTRIES", 4):
        small = post_csv(client, to_csv(MIXED), key, dry_run=True).get_json()
    for size in (1, 3, 5, 100):
        assert pages(client, small["links"]["plan"], key, page_size=size) == plan


def test_a_file_read_in_chunks_plans_as_one_read_whole(app, client, editor):
    """Rows of one clinic, and repeated locations, far apart in the file: the same plan, the
    same errors, chunk by chunk or all at once."""
    rows = []
    for n in range(60):  # five clinics; from row 32 on, each location repeats one 30 rows up
        clinic = {**LAKESIDE, "clinic_name": f"Chunky Clinic {n % 5}", "phone": ""}
        rows.append({**clinic, "address": f"{n % 6} Lake St", "website": "", "specialties": ""})
    rows[12]["website"] = "https://chunky.example"  # fills in what the clinic's rows left out
    rows[27]["website"] = "https://other.example"  # differs from it (the same clinic)
    rows[20]["specialties"] = "spine;nope"  # an unknown code
    key = editor["admin"]
    answers = []
    for chunk in (5000, 1, 3, 8):
        with mock.patch.object(reading, "CHUNK_ROWS", chunk):
            report = post_csv(client, to_csv(rows), key, dry_run=True).get_json()
        answers.append(
            (
                report["counts"],
                pages(client, report["links"]["errors"], key),
                plan_of(client, report, key),
            )
        )
    assert all(answer == answers[0] for answer in answers[1:])
    counted, errors, plan = answers[0]
    assert counted["clinics"]["created"] == 5
    assert {e["reason"].split(" row")[0] for e in errors} == {
        "the same location as", "differs from", "unknown code(s): nope",
    }  # fmt: skip
    assert len(plan) == 60 - len({e["row"] for e in errors})


def test_a_real_run_in_chunks_applies_everything_in_one_transaction(app, client, editor):
    rows = [
        {**LAKESIDE, "clinic_name": f"Batch Clinic {n // 3}", "phone": "",
         "address": f"{n} Main St"}
        for n in range(30)
    ]  # fmt: skip
    before = counts(app)
    with mock.patch.object(reading, "CHUNK_ROWS", 4):
        response = post_csv(client, to_csv(rows), editor["admin"])
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert (result["state"], result["changes_recorded"]) == ("applied", 40)
    after = counts(app)
    assert after["clinics"] - before["clinics"] == 10
    assert after["locations"] - before["locations"] == 30
    assert after["changes"] - before["changes"] == 40
    # Every row written carries the revision of the import's transaction.
    with Session(get_database(app).engine) as session:
        revision = session.get(DirectoryRevision, 1)
        assert revision is not None
        stamped = (
            session.execute(
                select(Clinic.revision).where(Clinic.name.like("Batch Clinic %")).distinct()
            )
            .scalars()
            .all()
        )
        located = (
            session.execute(
                select(Location.revision)
                .join(Clinic, Clinic.id == Location.clinic_id)
                .where(Clinic.name.like("Batch Clinic %"))
                .distinct()
            )
            .scalars()
            .all()
        )
    assert stamped == located == [revision.revision]
    applied = plan_of(client, result, editor["admin"])
    assert len(applied) == 30 and all(entry["location"]["id"] for entry in applied)


def test_a_record_changed_meanwhile_ends_the_run_as_a_conflict(app, client, editor):
    def conflicting(*_args: Any, **_kwargs: Any) -> int:
        raise ImportConflictError("1 clinic record(s) changed during the import; try again")

    before = counts(app)
    with mock.patch.object(runs, "apply_import", conflicting):
        response = post_csv(client, to_csv([LAKESIDE]), editor["admin"])
    assert_problem(response, 409)
    assert counts(app) == before
    listed = client.get(IMPORTS, headers=auth(editor["admin"])).get_json()
    assert listed[0]["state"] == "conflict" and "changed" in listed[0]["detail"]
    assert "errors" not in listed[0]
    # The lease is free again.
    assert post_csv(client, to_csv([LAKESIDE]), editor["admin"]).status_code == 200


def test_runs_are_read_by_editors_only_and_missing_ones_are_404(app, client, editor):
    report = post_csv(client, to_csv([LAKESIDE]), editor["writer"], dry_run=True).get_json()
    assert_problem(client.get(report["links"]["self"], headers=auth(editor["app"])), 403)
    assert_problem(client.get(report["links"]["plan"]), 401)
    again = client.get(report["links"]["self"], headers=auth(editor["admin"])).get_json()
    assert {k: v for k, v in again.items() if k != "state"} == {
        k: v for k, v in report.items() if k != "state"
    }
    for suffix in ("", "/plan", "/errors", "/plan.ndjson", "/errors.ndjson"):
        missing = client.get(f"{IMPORTS}/999999{suffix}", headers=auth(editor["admin"]))
        assert_problem(missing, 404, "import_id")


def test_old_runs_are_deleted_when_an_import_starts(app, client, editor):
    old = post_csv(client, to_csv([LAKESIDE]), editor["admin"], dry_run=True).get_json()
    with Session(get_database(app).engine) as session:
        session.execute(
            sa.update(ImportRun)
            .where(ImportRun.id == old["id"])
            .values(started_at=utcnow() - timedelta(days=31))
        )
        session.commit()
    post_csv(client, to_csv([LAKESIDE]), editor["admin"], dry_run=True)
    assert_problem(client.get(old["links"]["self"], headers=auth(editor["admin"])), 404)
    with Session(get_database(app).engine) as session:
        parts = session.execute(
            select(func.count()).select_from(ImportRunPart).where(ImportRunPart.run_id == old["id"])
        ).scalar_one()
    assert parts == 0


# ---- one import at a time -------------------------------------------------------------------


def lease_row(app) -> ImportLease:
    with Session(get_database(app).engine) as session:
        lease = session.get(ImportLease, 1)
        assert lease is not None
        session.expunge(lease)
        return lease


def test_one_import_at_a_time_and_an_expired_lease_is_taken_over(app, client, editor, runner,
                                                                  tmp_path):  # fmt: skip
    engine = get_database(app).engine
    # Another worker or host holds the lease (a run of its own).
    other = runs.begin_run(
        engine, Actor("other host"), dry_run=True, fmt="csv", source=None,
        settings=ImportSettings(),
    )  # fmt: skip
    busy = post_csv(client, to_csv([LAKESIDE]), editor["admin"], dry_run=True)
    body = assert_problem(busy, 409)
    assert f"another import is running (import {other.run_id})" in body["detail"]
    assert 1 <= int(busy.headers["Retry-After"]) <= 10
    upload = client.post(
        IMPORTS,
        data={"file": (io.BytesIO(to_csv([LAKESIDE])), "clinics.csv")},
        headers=auth(editor["admin"]),
        content_type="multipart/form-data",
    )
    assert_problem(upload, 409)
    running = client.get(f"{IMPORTS}/{other.run_id}", headers=auth(editor["admin"])).get_json()
    assert running["state"] == "running"
    assert_problem(client.get(running["links"]["plan"], headers=auth(editor["admin"])), 409)
    path = tmp_path / "clinics.csv"
    path.write_bytes(to_csv([LAKESIDE]))
    refused = runner.invoke(args=["import", str(path)])
    assert refused.exit_code == 1 and "another import is running" in refused.output

    # Its process dies: once the lease expires, the next import takes it over.
    with Session(engine) as session:
        session.execute(sa.update(ImportLease).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert (
        client.get(f"{IMPORTS}/{other.run_id}", headers=auth(editor["admin"])).get_json()["state"]
        == "abandoned"
    )
    taken = post_csv(client, to_csv([LAKESIDE]), editor["admin"], dry_run=True)
    assert taken.status_code == 200, taken.get_json()
    assert run_of(app, other.run_id).state == "abandoned"
    with pytest.raises(LeaseLostError):
        other.keep(force=True)
    lease = lease_row(app)
    assert lease.holder is None and lease.run_id is None  # given up at the end


def test_the_lease_is_kept_while_an_import_works(app):
    settings = ImportSettings(lease_seconds=0.001)
    lease = runs.begin_run(
        get_database(app).engine, Actor("t"), dry_run=True, fmt="csv", source=None,
        settings=settings,
    )  # fmt: skip
    first = lease_row(app).expires_at
    time.sleep(0.01)
    lease.keep(123)
    assert lease_row(app).expires_at != first
    assert run_of(app, lease.run_id).rows_read == 123


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Any:
    app = build_app(database_url)
    with Session(get_database(app).engine) as session:
        _, key = create_key(session, name="live-importer", scopes=["admin"])
        session.commit()
    get_database(app).dispose()
    with serve(database_url, tmp_path, workers=2, threads=2) as server:
        yield server, key


def _held(database_url: str) -> int | None:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT run_id FROM import_lease")).scalar()
    finally:
        engine.dispose()


def test_two_imports_at_once_through_a_real_server(served, database_url):
    """One import's body still arriving (the import runs, holding the lease): another, on
    either worker, is refused with 409 and Retry-After; the first then completes."""
    server, key = served
    port = int(server.base.rsplit(":", 1)[1])
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    first.putrequest("POST", f"{IMPORTS}?dry_run=true")
    first.putheader("Authorization", f"Bearer {key}")
    first.putheader("Content-Type", "text/csv")
    first.putheader("Transfer-Encoding", "chunked")
    first.endheaders()
    lines = to_csv([{**LAKESIDE, "address": f"{n} Lake St"} for n in range(50)]).splitlines(True)

    def send(data: bytes) -> None:
        first.send(b"%x\r\n%s\r\n" % (len(data), data))

    send(b"".join(lines[:20]))
    deadline = time.monotonic() + 30
    while _held(database_url) is None:
        assert time.monotonic() < deadline, server.explain("the first import never started")
        time.sleep(0.05)
    for _ in range(4):  # whichever worker takes it
        second = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        second.request(
            "POST", f"{IMPORTS}?dry_run=true", body=to_csv([ALAMO]),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "text/csv"},
        )  # fmt: skip
        refused = second.getresponse()
        problem = json.loads(refused.read())
        assert refused.status == 409, server.explain(problem)
        assert refused.getheader("Content-Type") == "application/problem+json"
        assert 1 <= int(refused.getheader("Retry-After") or 0) <= 10
        assert "another import is running" in problem["detail"]
        second.close()
    send(b"".join(lines[20:]))
    first.send(b"0\r\n\r\n")
    done = first.getresponse()
    report = json.loads(done.read())
    first.close()
    assert done.status == 200, server.explain(report)
    assert report["rows_read"] == 50 and report["counts"]["rows"]["created"] == 50
    assert _held(database_url) is None


# ---- the command line -----------------------------------------------------------------------


def test_the_cli_streams_the_file_and_prints_the_summary_and_first_errors(app, runner, tmp_path):
    path = tmp_path / "clinics.csv"
    path.write_bytes(to_csv([LAKESIDE, *bad_rows(1500)]))
    assert path.stat().st_size > 2 * 65536
    reads: list[int] = []
    original = commands._Counted.read

    def counted(self: Any, size: int = -1) -> bytes:
        data = original(self, size)
        reads.append(len(data))
        return data

    before = counts(app)
    with mock.patch.object(commands._Counted, "read", counted):
        result = runner.invoke(args=["import", str(path), "--dry-run"])
    assert result.exit_code == 1
    # Read a block at a time, never whole.
    assert len(reads) >= 3 and max(reads) <= 65536 and sum(reads) == path.stat().st_size
    found = re.search(r"import run (\d+): planned", result.output)
    assert found is not None
    run_id = int(found[1])
    assert "rows planned: 1 created, 0 updated, 0 unchanged" in result.output
    assert "row 3, phone: " in result.output
    assert "... and 2900 more error(s) (--all-errors lists them)" in result.output
    assert "3000 error(s): nothing was imported" in result.output
    assert run_of(app, run_id).error_count == 3000
    every = runner.invoke(args=["import", str(path), "--dry-run", "--all-errors"])
    assert every.output.count(", state: not a USPS state code") == 1500
    assert counts(app) == before

    path.write_bytes(to_csv([LAKESIDE, LAKESIDE_NORTH]))
    real = runner.invoke(args=["import", str(path), "--show-plan"])
    assert real.exit_code == 0, real.output
    assert re.search(r"import run \d+: applied", real.output)
    assert "row 3: created (clinic created: Lakeside Running Clinic" in real.output
    assert "3 change(s) recorded in the audit log" in real.output
    assert counts(app)["locations"] == before["locations"] + 2
