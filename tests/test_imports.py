"""Bulk import (HTTP and CLI) and the directory exports (CSV, GeoJSON)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlmodel import Session

from referral.admin.imports import (
    COLUMNS,
    Actor,
    ImportConflictError,
    apply_import,
    plan_import,
    read_import,
)
from referral.admin.models import AdminChange
from referral.db import get_database
from referral.directory.models import Clinic, Location
from referral.geo.chain import get_geocoder
from tests.helpers import assert_problem, auth, stored_locations

IMPORTS = "/v1/admin/imports"


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: row.get(name, "") for name in columns})
    return buffer.getvalue().encode()


def post_csv(client, data: bytes, key: str, *, dry_run: bool = False) -> Any:
    return client.post(
        IMPORTS,
        query_string={"dry_run": "true"} if dry_run else {},
        data=data,
        headers=auth(key, **{"Content-Type": "text/csv"}),
    )


def plan_of(client, report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Every entry of an import run's plan, page by page (the answer itself has none)."""
    return pages(client, report["links"]["plan"], key)


def pages(client, url: str, key: str, page_size: int = 1000) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    page = 1
    while True:
        response = client.get(
            url, query_string={"page": page, "page_size": page_size}, headers=auth(key)
        )
        assert response.status_code == 200, response.get_json()
        found += response.get_json()
        if page >= json.loads(response.headers["X-Pagination"])["total_pages"]:
            return found
        page += 1


def counts(app) -> dict[str, int]:
    with Session(get_database(app).engine) as session:
        return {
            "clinics": session.execute(select(func.count()).select_from(Clinic)).scalar_one(),
            "locations": session.execute(select(func.count()).select_from(Location)).scalar_one(),
            "changes": session.execute(select(func.count()).select_from(AdminChange)).scalar_one(),
        }


LAKESIDE = {
    "clinic_name": "Lakeside Running Clinic",
    "phone": "(612) 555-0147",
    "website": "https://lakeside.example",
    "address": "100 Lake St",
    "city": "Minneapolis",
    "state": "MN",
    "zip": "55408",
    "specialties": "running;spine",
}
LAKESIDE_NORTH = {
    **LAKESIDE,
    "phone": "612.555.0147",  # the same number, written differently: the same clinic
    "address": "200 Lake St",
    "zip": "55409",
    "lat": "44.9",
    "lon": "-93.28",
}
ALAMO = {
    "clinic_name": "Alamo Spine & Sport",
    "phone": "+1 210 555 0188",
    "address": "1 Alamo Plaza",
    "city": "San Antonio",
    "state": "tx",
    "zip": "78205",
    "specialties": "spine",
}


def test_dry_run_then_fix_then_import_then_reimport(app, client, editor):
    before = counts(app)
    bad = {**ALAMO, "phone": "555-0100", "state": "Texas", "specialties": "spine;astrology"}
    data = to_csv([LAKESIDE, LAKESIDE_NORTH, bad])

    dry = post_csv(client, data, editor["writer"], dry_run=True)
    assert dry.status_code == 200, dry.get_json()
    report = dry.get_json()
    assert report["dry_run"] is True and report["valid"] is False
    assert {(e["row"], e["field"]) for e in report["errors"]} == {
        (4, "phone"),
        (4, "state"),
        (4, "specialties"),
    }
    assert "astrology" in next(e["reason"] for e in report["errors"] if e["field"] == "specialties")
    # The good rows are planned all the same: one new clinic with two new locations.
    # (The answer is the run's summary; its plan is paged at links.plan.)
    planned = plan_of(client, report, editor["writer"])
    assert [(p["row"], p["action"]) for p in planned] == [(2, "created"), (3, "created")]
    assert report["plan_entries"] == 2 and report["error_count"] == 3
    assert report["counts"]["clinics"]["created"] == 1
    assert counts(app) == before

    fixed = to_csv([LAKESIDE, LAKESIDE_NORTH, ALAMO])
    dry = post_csv(client, fixed, editor["writer"], dry_run=True).get_json()
    assert dry["valid"] is True and dry["errors"] == []
    assert dry["counts"]["rows"] == {"created": 3, "updated": 0, "unchanged": 0}
    assert counts(app) == before

    done = post_csv(client, fixed, editor["writer"])
    assert done.status_code == 200, done.get_json()
    result = done.get_json()
    assert result["dry_run"] is False and result["valid"] is True
    assert result["counts"]["clinics"]["created"] == 2
    assert result["counts"]["locations"]["created"] == 3
    assert result["changes_recorded"] == 5
    applied = plan_of(client, result, editor["writer"])
    assert len(applied) == 3
    assert all(entry["clinic"]["id"] and entry["location"]["id"] for entry in applied)
    after = counts(app)
    assert after["clinics"] == before["clinics"] + 2
    assert after["locations"] == before["locations"] + 3
    assert after["changes"] == before["changes"] + 5

    listed = client.get("/v1/clinics", query_string={"q": "Lakeside"}).get_json()
    assert len(listed) == 1
    lakeside = listed[0]
    assert lakeside["phone"] == "+16125550147"
    assert lakeside["specialties"] == ["running", "spine"]
    by_zip = {loc["zip"]: loc for loc in lakeside["locations"]}
    assert by_zip["55408"]["geocode_precision"] == "postal_code"
    assert by_zip["55408"]["time_zone"] == "America/Chicago"
    assert by_zip["55409"]["geocode_precision"] == "manual"
    assert (by_zip["55409"]["lat"], by_zip["55409"]["lon"]) == (44.9, -93.28)
    alamo = client.get("/v1/clinics", query_string={"q": "Alamo"}).get_json()[0]
    assert alamo["locations"][0]["state"] == "TX"

    again = post_csv(client, fixed, editor["admin"]).get_json()
    assert again["counts"]["rows"] == {"created": 0, "updated": 0, "unchanged": 3}
    assert again["changes_recorded"] == 0
    assert counts(app) == after


def test_one_bad_row_among_good_ones_writes_nothing(app, client, editor):
    before = counts(app)
    rows = [LAKESIDE, {**ALAMO, "zip": "7820"}, LAKESIDE_NORTH]
    response = post_csv(client, to_csv(rows), editor["admin"])
    body = assert_problem(response, 422, "rows[3].zip")
    assert [p["name"] for p in body["invalid_params"]] == ["rows[3].zip"]
    assert "nothing was imported" in body["detail"]
    assert counts(app) == before


def test_every_rule_of_the_edit_api_applies_per_row(app, client, editor):
    rows = [
        LAKESIDE,
        {**LAKESIDE, "address": "1 Lake St", "clinic_name": ""},
        {**LAKESIDE, "address": "2 Lake St", "website": "javascript:alert(1)"},
        {**LAKESIDE, "address": "3 Lake St", "lat": "91", "lon": "0"},
        {**LAKESIDE, "address": "4 Lake St", "lat": "45"},
        {**LAKESIDE, "address": "5 Lake St", "city": ""},
        {**ALAMO, "city": "Nowhereville", "zip": ""},
        {**LAKESIDE, "address": "100 LAKE  st"},  # the same location as row 2
        {**LAKESIDE, "address": "6 Lake St", "website": "https://other.example"},
        {**LAKESIDE, "address": "7 Lake St", "phone": "12"},
    ]
    before = counts(app)
    report = post_csv(client, to_csv(rows), editor["admin"], dry_run=True).get_json()
    found = {(e["row"], e["field"]) for e in report["errors"]}
    assert found == {
        (3, "clinic_name"),
        (4, "website"),
        (5, "lat"),
        (6, "lon"),
        (7, "city"),
        (8, "address"),
        (9, "address"),
        (10, "website"),
        (11, "phone"),
    }
    reasons = {(e["row"], e["field"]): e["reason"] for e in report["errors"]}
    assert "lat and lon go together" in reasons[(6, "lon")]
    assert "give lat and lon" in reasons[(8, "address")]
    assert "row 2" in reasons[(9, "address")]
    assert "differs from row 2" in reasons[(10, "website")]
    assert [entry["row"] for entry in plan_of(client, report, editor["admin"])] == [2]
    assert counts(app) == before


def test_unknown_and_missing_columns_are_rejected(client, editor):
    data = b"clinic_name,phone,fax,city\nX,,,Austin\n"
    report = post_csv(client, data, editor["admin"], dry_run=True).get_json()
    found = {(e["row"], e["field"]): e["reason"] for e in report["errors"]}
    assert "unknown column" in found[(1, "fax")]
    assert found[(1, "state")] == "required column missing"
    bad_json = client.post(
        IMPORTS,
        query_string={"dry_run": "true"},
        json=[{**ALAMO, "owner": "me"}],
        headers=auth(editor["admin"]),
    ).get_json()
    assert [(e["row"], e["field"]) for e in bad_json["errors"]] == [(1, "owner")]


def test_json_input(app, client, editor):
    body = [
        {
            "clinic_name": "Hill Country Hand Therapy",
            "phone": "512-555-0123",
            "address": "500 Congress Ave",
            "city": "Austin",
            "state": "TX",
            "zip": "78701",
            "lat": 30.2682,
            "lon": -97.7429,
            "specialties": ["hand", "orthopedic"],
        },
        {
            "clinic_name": "Hill Country Hand Therapy",
            "phone": "(512) 555-0123",
            "address": None,
            "city": "Round Rock",
            "state": "TX",
            "zip": None,
        },
    ]
    response = client.post(IMPORTS, json=body, headers=auth(editor["writer"]))
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert result["format"] == "json"
    assert result["counts"]["clinics"]["created"] == 1
    assert result["counts"]["locations"]["created"] == 2
    clinic = client.get("/v1/clinics", query_string={"q": "Hill Country"}).get_json()[0]
    assert clinic["specialties"] == ["hand", "orthopedic"]
    precision = {loc["city"]: loc["geocode_precision"] for loc in clinic["locations"]}
    assert precision == {"Austin": "manual", "Round Rock": "city"}
    # JSON rows are numbered by position.
    errors = client.post(
        IMPORTS,
        query_string={"dry_run": "true"},
        json=[body[0], {**body[1], "lat": "north", "lon": -97.6}],
        headers=auth(editor["writer"]),
    ).get_json()["errors"]
    assert [(e["row"], e["field"]) for e in errors] == [(2, "lat")]
    not_a_list = client.post(IMPORTS, json={"clinic_name": "X"}, headers=auth(editor["writer"]))
    assert_problem(not_a_list, 422, "file")


def test_matching_ignores_case_and_spacing_and_updates_what_changed(app, client, editor):
    post_csv(client, to_csv([LAKESIDE, LAKESIDE_NORTH]), editor["admin"])
    clinic = client.get("/v1/clinics", query_string={"q": "Lakeside"}).get_json()[0]
    renamed = {"clinic_name": "  lakeside   RUNNING clinic ", "website": "https://new.example"}
    changed = [
        {**LAKESIDE, **renamed},
        {**LAKESIDE_NORTH, **renamed, "address": "200 LAKE ST", "lat": "44.91", "lon": "-93.28"},
    ]
    result = post_csv(client, to_csv(changed), editor["admin"]).get_json()
    assert result["counts"]["clinics"] == {"created": 0, "updated": 1, "unchanged": 0}
    assert result["counts"]["locations"] == {"created": 0, "updated": 1, "unchanged": 1}
    assert result["counts"]["rows"] == {"created": 0, "updated": 2, "unchanged": 0}
    again = client.get(f"/v1/clinics/{clinic['id']}").get_json()
    assert again["name"] == "lakeside RUNNING clinic"
    assert again["website"] == "https://new.example"
    assert len(again["locations"]) == 2
    north = next(loc for loc in again["locations"] if loc["zip"] == "55409")
    assert (north["address_line1"], north["lat"]) == ("200 LAKE ST", 44.91)
    # Empty cells never erase: the website and specialties stay.
    blank = [{**LAKESIDE, "website": "", "specialties": ""}]
    quiet = post_csv(client, to_csv(blank), editor["admin"]).get_json()
    assert quiet["counts"]["clinics"]["updated"] == 1  # the name's spelling only
    kept = client.get(f"/v1/clinics/{clinic['id']}").get_json()
    assert kept["website"] == "https://new.example"
    assert kept["specialties"] == ["running", "spine"]


def test_changes_are_in_the_audit_log(app, client, editor):
    post_csv(client, to_csv([LAKESIDE, LAKESIDE_NORTH]), editor["writer"])
    clinic_id = client.get("/v1/clinics", query_string={"q": "Lakeside"}).get_json()[0]["id"]
    post_csv(client, to_csv([{**LAKESIDE, "specialties": "running"}]), editor["writer"])
    log = client.get(
        "/v1/admin/audit", query_string={"clinic_id": clinic_id}, headers=auth(editor["admin"])
    ).get_json()
    assert sorted((c["entity"], c["action"]) for c in log) == [
        ("clinic", "create"),
        ("clinic", "update"),
        ("location", "create"),
        ("location", "create"),
    ]
    assert {c["actor"] for c in log} == {"data-team"}
    update_entry = next(c for c in log if c["action"] == "update")
    assert update_entry["diff"] == {"specialties": [["running", "spine"], ["running"]]}
    create = next(c for c in log if c["entity"] == "clinic" and c["action"] == "create")
    assert create["diff"]["phone"] == [None, "+16125550147"]
    manual = next(c for c in log if c["entity"] == "location" and "55409" in str(c["diff"]))
    assert manual["diff"]["geocode_precision"] == [None, "manual"]


def test_editors_only_and_the_upload_limit(app, client, editor):
    data = to_csv([LAKESIDE])
    assert_problem(client.post(IMPORTS, data=data, content_type="text/csv"), 401)
    assert_problem(post_csv(client, data, editor["app"]), 403)
    assert_problem(
        client.post(
            IMPORTS,
            data=b"<x/>",
            headers=auth(editor["admin"], **{"Content-Type": "application/xml"}),
        ),
        415,
    )
    # Beyond the app's 64 KB body limit: this endpoint takes more.
    many = to_csv([{**LAKESIDE, "address": f"{n} Lake St"} for n in range(1500)])
    assert len(many) > app.config["MAX_CONTENT_LENGTH"]
    big = post_csv(client, many, editor["admin"], dry_run=True)
    assert big.status_code == 200, big.get_data(as_text=True)[:300]
    assert big.get_json()["counts"]["locations"]["created"] == 1500
    app.config["IMPORT_MAX_BYTES"] = 1000
    assert_problem(post_csv(client, many, editor["admin"], dry_run=True), 413)
    assert post_csv(client, data, editor["admin"], dry_run=True).status_code == 200


def test_multipart_upload(app, client, editor):
    before = counts(app)
    response = client.post(
        IMPORTS,
        data={"file": (io.BytesIO(to_csv([LAKESIDE, ALAMO])), "clinics.csv")},
        headers=auth(editor["admin"]),
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["counts"]["rows"]["created"] == 2
    assert counts(app)["locations"] == before["locations"] + 2
    with Session(get_database(app).engine) as session:
        source = session.execute(
            select(Clinic.source_file).where(Clinic.name == "Alamo Spine & Sport")
        ).scalar_one()
    assert source == "import: clinics.csv"
    missing = client.post(
        IMPORTS,
        data={"other": (io.BytesIO(b"x"), "x.csv")},
        headers=auth(editor["admin"]),
        content_type="multipart/form-data",
    )
    assert_problem(missing, 422, "file")


def test_cli_dry_run_then_real(app, runner, tmp_path):
    path = tmp_path / "clinics.csv"
    path.write_bytes(to_csv([LAKESIDE, {**ALAMO, "state": "Texas"}]))
    before = counts(app)
    failed = runner.invoke(args=["import", str(path), "--dry-run"])
    assert failed.exit_code == 1
    assert "row 3, state: not a USPS state code" in failed.output
    assert "nothing was imported" in failed.output
    assert counts(app) == before

    path.write_bytes(to_csv([LAKESIDE, LAKESIDE_NORTH, ALAMO]))
    dry = runner.invoke(args=["import", str(path), "--dry-run", "--show-plan"])
    assert dry.exit_code == 0, dry.output
    assert "checking rows" in dry.output  # the progress bar's label
    assert "rows planned: 3 created, 0 updated, 0 unchanged" in dry.output
    assert "row 4: created (clinic created: Alamo Spine & Sport" in dry.output
    assert counts(app) == before

    real = runner.invoke(args=["import", str(path), "--actor", "ops-team"])
    assert real.exit_code == 0, real.output
    assert "clinics imported: 2 created" in real.output
    assert "5 change(s) recorded" in real.output
    assert counts(app)["clinics"] == before["clinics"] + 2
    with Session(get_database(app).engine) as session:
        actors = set(
            session.execute(select(AdminChange.actor).where(AdminChange.action == "create"))
            .scalars()
            .all()
        )
    assert actors == {"ops-team"}

    again = runner.invoke(args=["import", str(path)])
    assert again.exit_code == 0
    assert "rows imported: 0 created, 0 updated, 3 unchanged" in again.output


def test_csv_export_reimports_as_all_unchanged(app, client, editor):
    # Cells a spreadsheet would run are defused on the way out and restored on the way in.
    tricky = {**LAKESIDE, "clinic_name": "=HYPERLINK(\"http://evil.example\")", "lat": "44.95",
              "lon": "-93.29"}  # fmt: skip
    # Specialties on record as not offered too, with offered ones and without.
    alamo = {**ALAMO, "specialties_not_offered": "pediatrics;hand"}
    lacking = {**ALAMO, "clinic_name": "Alamo Walk-In", "phone": "+1 210 555 0189",
               "specialties": "", "specialties_not_offered": "running"}  # fmt: skip
    post_csv(client, to_csv([tricky, alamo, lacking]), editor["admin"])
    response = client.get("/v1/clinics.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.is_streamed
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Cache-Control"].startswith("public")
    text = response.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS
    evil = next(row for row in rows if "HYPERLINK" in row["clinic_name"])
    assert evil["clinic_name"].startswith("'=")
    assert evil["lon"] == "-93.29"  # a plain number is not a formula
    assert evil["phone"] == "+16125550147"
    assert (evil["specialties"], evil["specialties_not_offered"]) == ("running;spine", "")
    said = {
        row["clinic_name"]: (row["specialties"], row["specialties_not_offered"]) for row in rows
    }
    assert said["Alamo Spine & Sport"] == ("spine", "hand;pediatrics")
    assert said["Alamo Walk-In"] == ("", "running")
    # One row per active location of a named, active clinic.
    with Session(get_database(app).engine) as session:
        expected = session.execute(
            select(func.count())
            .select_from(Location)
            .join(Clinic, Clinic.id == Location.clinic_id)
            .where(Clinic.active, Location.active, Clinic.name.is_not(None))
        ).scalar_one()
    assert len(rows) == expected

    report = post_csv(client, text.encode(), editor["admin"], dry_run=True).get_json()
    assert report["errors"] == []
    assert report["counts"]["rows"] == {"created": 0, "updated": 0, "unchanged": len(rows)}

    etag = response.headers["ETag"]
    assert client.get("/v1/clinics.csv", headers={"If-None-Match": etag}).status_code == 304
    post_csv(client, to_csv([{**ALAMO, "website": "https://alamo.example"}]), editor["admin"])
    assert client.get("/v1/clinics.csv", headers={"If-None-Match": etag}).status_code == 200


def test_geojson_export(app, client, editor):
    post_csv(client, to_csv([LAKESIDE, ALAMO]), editor["admin"])
    response = client.get("/v1/locations.geojson")
    assert response.status_code == 200
    assert response.mimetype == "application/geo+json"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    collection = json.loads(response.get_data(as_text=True))
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    located = stored_locations(app)
    assert len(features) == len(located) > 30
    assert {f["properties"]["location_id"] for f in features} == {loc.id for loc in located}
    for feature in features:
        assert feature["type"] == "Feature"
        lon, lat = feature["geometry"]["coordinates"]
        assert feature["geometry"]["type"] == "Point"
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        assert feature["properties"]["precision"] in {"rooftop", "street", "postal_code", "city",
                                                     "manual"}  # fmt: skip
    alamo = next(f for f in features if f["properties"]["clinic_name"] == "Alamo Spine & Sport")
    assert alamo["properties"]["phone"] == "+12105550188"
    assert alamo["properties"]["specialties"] == ["spine"]
    assert alamo["properties"]["precision"] == "postal_code"
    nameless = [f for f in features if f["properties"]["clinic_name"] is None]
    assert len(nameless) == 5  # the three unnamed clinics' locations are on the map


def test_deactivated_clinics_leave_the_exports(app, client, editor):
    clinic = client.get("/v1/clinics", query_string={"q": "Shea"}).get_json()[0]
    url = f"/v1/clinics/{clinic['id']}"
    etag = client.get(url).headers["ETag"]
    gone = client.delete(url, headers=auth(editor["admin"], **{"If-Match": etag}))
    assert gone.status_code == 204
    assert "Shea PT" not in client.get("/v1/clinics.csv").get_data(as_text=True)
    names = {
        f["properties"]["clinic_name"]
        for f in client.get("/v1/locations.geojson").get_json()["features"]
    }
    assert "Shea PT" not in names and "Strive PTSR" in names


def test_a_record_changed_meanwhile_aborts_the_import(app):
    pro = {"clinic_name": "PRO Therapy", "phone": "", "address": "2112 Broadway Street NE"}
    data = to_csv([{**LAKESIDE, **pro, "zip": "55413", "website": "https://pro.example"}])
    with app.app_context(), Session(get_database(app).engine) as session:
        plan = plan_import(session, read_import(data, "csv"), get_geocoder(app))
        assert plan.counts()["clinics"]["updated"] == 1
        # Someone else's edit bumps the row's version between planning and writing.
        session.execute(text("UPDATE clinic SET version = version + 1 WHERE name = 'PRO Therapy'"))
        with pytest.raises(ImportConflictError):
            apply_import(session, plan, Actor("tester"))
        session.rollback()
    with Session(get_database(app).engine) as session:
        website = session.execute(
            select(Clinic.website).where(Clinic.name == "PRO Therapy")
        ).scalar_one()
    assert website is None


def test_five_thousand_rows_in_one_go(app):
    zips = ["55408", "55409", "78201", "78205", "78701", "10001", "60601", "94110", "98101"]
    rows = []
    for n in range(5000):
        clinic = n // 5
        rows.append(
            {
                "clinic_name": f"Generated Clinic {clinic}",
                "phone": f"(612) 555-{clinic:04d}",
                "address": f"{n} Main St",
                "city": "Somewhere",
                "state": "MN",
                "zip": zips[n % len(zips)],
                "lat": "" if n % 2 else f"{40 + n / 10000:.4f}",
                "lon": "" if n % 2 else "-93.5",
                "specialties": "sports;spine" if clinic % 3 == 0 else "",
            }
        )
    data = to_csv(rows)
    before = counts(app)
    with app.app_context(), Session(get_database(app).engine) as session:
        plan = plan_import(session, read_import(data, "csv"), get_geocoder(app))
        assert plan.errors == []
        assert plan.counts()["rows"] == {"created": 5000, "updated": 0, "unchanged": 0}
        recorded = apply_import(session, plan, Actor("bulk"))
        session.commit()
    assert recorded == 6000
    after = counts(app)
    assert after["clinics"] - before["clinics"] == 1000
    assert after["locations"] - before["locations"] == 5000
    assert after["changes"] - before["changes"] == 6000
    with Session(get_database(app).engine) as session:
        versions = set(
            session.execute(select(Location.version).where(Location.address_line1 == "7 Main St"))
            .scalars()
            .all()
        )
        assert versions == {1}
        again = plan_import(session, read_import(data, "csv"), get_geocoder(app))
    assert again.counts()["rows"] == {"created": 0, "updated": 0, "unchanged": 5000}
