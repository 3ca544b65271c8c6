"""The bulk import and the exports with specialty evidence: offered (``specialties``), on record
as not offered (``specialties_not_offered``), or unknown (neither), as the admin API has it."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from referral.admin.imports import COLUMNS
from referral.db import get_database
from referral.directory.revision import bump_revision
from tests.helpers import assert_problem, auth
from tests.test_imports import IMPORTS, counts, post_csv, to_csv

RIVER = {
    "clinic_name": "Riverside Balance PT",
    "phone": "(612) 555-0190",
    "website": "https://riverside.example",
    "address": "10 River Rd",
    "city": "Minneapolis",
    "state": "MN",
    "zip": "55408",
    "specialties": "vestibular;neurology",
    "specialties_not_offered": "pediatrics;pelvic_health",
}
# The same clinic's second location, saying nothing of its specialties.
RIVER_SOUTH = {
    **RIVER,
    "address": "20 River Rd",
    "zip": "55409",
    "specialties": "",
    "specialties_not_offered": "",
}
# Known not to offer two specialties, nothing on record as offered.
NORTHSIDE = {
    "clinic_name": "Northside Hand Clinic",
    "phone": "(612) 555-0191",
    "address": "5 North Ave",
    "city": "Minneapolis",
    "state": "MN",
    "zip": "55408",
    "specialties_not_offered": "running;sports",
}


def clinic_by_name(client, name: str) -> dict[str, Any]:
    found = client.get("/v1/clinics", query_string={"q": name}).get_json()
    assert len(found) == 1, found
    return client.get(f"/v1/clinics/{found[0]['id']}").get_json()


def evidence(clinic: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(clinic["specialties"]), sorted(clinic["specialties_not_offered"])


def links(clinic: dict[str, Any]) -> dict[str, tuple[bool, str, str | None]]:
    """code -> (offered, reason, source), as GET /v1/clinics/{id} shows them."""
    return {
        link["code"]: (link["offered"], link["reason"], link["source"])
        for link in clinic["specialty_reasons"]
    }


def dry_errors(client, key: str, rows: list[dict[str, Any]]) -> dict[tuple[int, str], str]:
    report = post_csv(client, to_csv(rows), key, dry_run=True).get_json()
    return {(error["row"], error["field"]): error["reason"] for error in report["errors"]}


def audit(client, key: str, clinic_id: int) -> list[dict[str, Any]]:
    """The clinic's own change-log entries, oldest first."""
    log = client.get("/v1/admin/audit", query_string={"clinic_id": clinic_id}, headers=auth(key))
    assert log.status_code == 200
    entries = [entry for entry in log.get_json() if entry["entity"] == "clinic"]
    return sorted(entries, key=lambda entry: entry["id"])


def test_csv_import_creates_clinics_with_not_offered_codes(app, client, editor):
    response = client.post(
        IMPORTS,
        data={"file": (io.BytesIO(to_csv([RIVER, RIVER_SOUTH, NORTHSIDE])), "evidence.csv")},
        headers=auth(editor["writer"]),
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["counts"]["clinics"]["created"] == 2

    river = clinic_by_name(client, "Riverside Balance")
    assert evidence(river) == (["neurology", "vestibular"], ["pediatrics", "pelvic_health"])
    source = "import by data-team: evidence.csv"
    assert links(river) == {
        "neurology": (True, "set by data-team: offered", source),
        "vestibular": (True, "set by data-team: offered", source),
        "pediatrics": (False, "set by data-team: not offered", source),
        "pelvic_health": (False, "set by data-team: not offered", source),
    }
    northside = clinic_by_name(client, "Northside Hand")
    assert evidence(northside) == ([], ["running", "sports"])
    # The public list says the same.
    listed = client.get("/v1/clinics", query_string={"q": "Northside Hand"}).get_json()[0]
    assert (listed["specialties"], sorted(listed["specialties_not_offered"])) == (
        [],
        ["running", "sports"],
    )


def test_a_links_source_names_the_file_at_most_200_characters(app, client, editor):
    name = "x" * 250 + ".csv"
    response = client.post(
        IMPORTS,
        data={"file": (io.BytesIO(to_csv([NORTHSIDE])), name)},
        headers=auth(editor["admin"]),
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    sources = {source for _, _, source in links(clinic_by_name(client, "Northside")).values()}
    assert sources == {f"import by directory-admin: {name}"[:200]}


def test_json_import_takes_a_list_or_a_string(app, client, editor):
    body = [
        {
            "clinic_name": "Hill Country Hand Therapy",
            "phone": "512-555-0123",
            "city": "Austin",
            "state": "TX",
            "zip": "78701",
            "specialties": ["hand"],
            "specialties_not_offered": ["pediatrics", "vestibular"],
        },
        {
            "clinic_name": "Lone Star Spine",
            "phone": "512-555-0124",
            "city": "Austin",
            "state": "TX",
            "zip": "78701",
            "specialties": None,
            "specialties_not_offered": "running; sports",
        },
    ]
    response = client.post(IMPORTS, json=body, headers=auth(editor["writer"]))
    assert response.status_code == 200, response.get_json()
    assert evidence(clinic_by_name(client, "Hill Country")) == (
        ["hand"],
        ["pediatrics", "vestibular"],
    )
    assert evidence(clinic_by_name(client, "Lone Star")) == ([], ["running", "sports"])
    # A list of anything but codes is refused as for specialties.
    bad = client.post(
        IMPORTS,
        query_string={"dry_run": "true"},
        json=[{**body[0], "specialties_not_offered": ["spine", 3]}],
        headers=auth(editor["writer"]),
    ).get_json()
    assert [(e["row"], e["field"], e["reason"]) for e in bad["errors"]] == [
        (1, "specialties_not_offered", "must be a list of specialty codes")
    ]


def test_a_later_import_moves_a_code_to_not_offered_and_back(app, client, editor):
    post_csv(client, to_csv([RIVER, RIVER_SOUTH]), editor["admin"])
    clinic_id = clinic_by_name(client, "Riverside")["id"]

    # Only the not-offered column: its codes leave the offered set, the rest of that set
    # stays; the old not-offered set is replaced (pelvic_health becomes unknown).
    moved = {**RIVER, "specialties": "", "specialties_not_offered": "vestibular;pediatrics"}
    result = post_csv(client, to_csv([moved]), editor["writer"]).get_json()
    assert result["counts"]["clinics"] == {"created": 0, "updated": 1, "unchanged": 0}
    river = client.get(f"/v1/clinics/{clinic_id}").get_json()
    assert evidence(river) == (["neurology"], ["pediatrics", "vestibular"])
    assert links(river)["vestibular"] == (
        False,
        "set by data-team: not offered",
        "import by data-team",
    )
    # The link that said nothing new keeps who said it first.
    assert links(river)["pediatrics"] == (
        False,
        "set by directory-admin: not offered",
        "import by directory-admin",
    )
    assert set(links(river)) == {"neurology", "vestibular", "pediatrics"}

    # Only the offered column: vestibular moves back, pediatrics stays not offered.
    back = {**RIVER, "specialties": "neurology;vestibular", "specialties_not_offered": ""}
    result = post_csv(client, to_csv([back]), editor["admin"]).get_json()
    assert result["counts"]["clinics"]["updated"] == 1
    river = client.get(f"/v1/clinics/{clinic_id}").get_json()
    assert evidence(river) == (["neurology", "vestibular"], ["pediatrics"])
    assert links(river)["vestibular"] == (
        True,
        "set by directory-admin: offered",
        "import by directory-admin",
    )
    with Session(get_database(app).engine) as session:
        stored = session.execute(
            text(
                "SELECT specialty_code, offered FROM clinic_specialty WHERE clinic_id = :id "
                "ORDER BY specialty_code"
            ),
            {"id": clinic_id},
        ).all()
    assert [(code, bool(offered)) for code, offered in stored] == [
        ("neurology", True),
        ("pediatrics", False),
        ("vestibular", True),
    ]
    # Both columns: each replaced as given.
    both = {**RIVER, "specialties": "sports", "specialties_not_offered": "neurology"}
    post_csv(client, to_csv([both]), editor["admin"])
    assert evidence(client.get(f"/v1/clinics/{clinic_id}").get_json()) == (
        ["sports"],
        ["neurology"],
    )


def test_a_code_both_offered_and_not_is_an_error(app, client, editor):
    before = counts(app)
    overlap = {**RIVER, "specialties": "vestibular;sports;hand",
               "specialties_not_offered": "sports;hand;pediatrics"}  # fmt: skip
    assert dry_errors(client, editor["admin"], [overlap]) == {
        (2, "specialties_not_offered"): "also listed as offered: hand, sports"
    }
    response = post_csv(client, to_csv([overlap]), editor["admin"])
    assert_problem(response, 422, "rows[2].specialties_not_offered")
    assert counts(app) == before

    # Across two rows of one clinic, either way round: the later row is refused.
    offered_first = [
        {**RIVER, "specialties_not_offered": ""},
        {**RIVER_SOUTH, "specialties_not_offered": "vestibular"},
    ]
    assert dry_errors(client, editor["admin"], offered_first) == {
        (3, "specialties_not_offered"): "also listed as offered in row 2: vestibular"
    }
    not_offered_first = [
        {**RIVER, "specialties": ""},
        {**RIVER_SOUTH, "specialties": "pediatrics;sports"},
    ]
    assert dry_errors(client, editor["admin"], not_offered_first) == {
        (3, "specialties"): "also listed as not offered in row 2: pediatrics"
    }


def test_unknown_not_offered_codes_are_named(app, client, editor):
    bad = {**RIVER, "specialties_not_offered": "astrology;pediatrics;reiki"}
    assert dry_errors(client, editor["admin"], [bad]) == {
        (2, "specialties_not_offered"): "unknown code(s): astrology, reiki"
    }
    # Worded as for the offered column.
    worse = {**RIVER, "specialties": "astrology", "specialties_not_offered": "reiki"}
    assert dry_errors(client, editor["admin"], [worse]) == {
        (2, "specialties"): "unknown code(s): astrology",
        (2, "specialties_not_offered"): "unknown code(s): reiki",
    }


def test_rows_of_one_clinic_must_agree_on_not_offered(app, client, editor):
    rows = [
        RIVER,
        {**RIVER_SOUTH, "specialties_not_offered": "hand"},
        {**RIVER_SOUTH, "address": "30 River Rd",
         "specialties_not_offered": "pelvic_health; pediatrics"},
        {**RIVER_SOUTH, "address": "40 River Rd"},
    ]  # fmt: skip
    assert dry_errors(client, editor["admin"], rows) == {
        (3, "specialties_not_offered"): (
            "differs from row 2 for the same clinic (Riverside Balance PT)"
        )
    }
    # A clinic's rows may leave it to any one of them.
    later = [RIVER_SOUTH, {**RIVER, "specialties": ""}]
    result = post_csv(client, to_csv(later), editor["admin"]).get_json()
    assert result["valid"] is True
    assert evidence(clinic_by_name(client, "Riverside")) == ([], ["pediatrics", "pelvic_health"])


def test_an_empty_cell_keeps_the_not_offered_codes(app, client, editor):
    post_csv(client, to_csv([RIVER]), editor["admin"])
    clinic_id = clinic_by_name(client, "Riverside")["id"]
    quiet = post_csv(client, to_csv([{**RIVER, "specialties_not_offered": ""}]), editor["admin"])
    assert quiet.get_json()["counts"]["rows"] == {"created": 0, "updated": 0, "unchanged": 1}
    # Absent column, JSON null, and an empty list alike; another change goes through.
    without = tuple(column for column in COLUMNS if column != "specialties_not_offered")
    renamed = {**RIVER, "website": "https://river.example"}
    result = post_csv(client, to_csv([renamed], without), editor["admin"]).get_json()
    assert result["counts"]["clinics"]["updated"] == 1
    for empty in (None, [], ""):
        row = {**RIVER, "website": None, "specialties": None, "specialties_not_offered": empty}
        response = client.post(IMPORTS, json=[row], headers=auth(editor["admin"]))
        assert response.status_code == 200, response.get_json()
    river = client.get(f"/v1/clinics/{clinic_id}").get_json()
    assert river["website"] == "https://river.example"
    assert evidence(river) == (["neurology", "vestibular"], ["pediatrics", "pelvic_health"])


def test_the_change_log_reads_as_the_admin_apis(app, client, editor):
    twin = {**RIVER, "clinic_name": "Riverside Twin PT", "phone": "(612) 555-0192"}
    post_csv(client, to_csv([RIVER, twin]), editor["admin"])
    river_id = clinic_by_name(client, "Riverside Balance")["id"]
    twin_id = clinic_by_name(client, "Riverside Twin")["id"]
    created = audit(client, editor["admin"], river_id)[0]
    assert created["action"] == "create"
    assert created["diff"]["specialties"] == [None, ["neurology", "vestibular"]]
    assert created["diff"]["specialties_not_offered"] == [None, ["pediatrics", "pelvic_health"]]

    # The same statement through the admin API and through an import.
    url = f"/v1/clinics/{twin_id}"
    patched = client.patch(
        url,
        json={"specialties_not_offered": ["vestibular", "pediatrics"]},
        headers=auth(editor["admin"], **{"If-Match": client.get(url).headers["ETag"]}),
    )
    assert patched.status_code == 200, patched.get_json()
    moved = {**RIVER, "specialties": "", "specialties_not_offered": "vestibular;pediatrics"}
    post_csv(client, to_csv([moved]), editor["admin"])
    by_import = audit(client, editor["admin"], river_id)[-1]
    by_api = audit(client, editor["admin"], twin_id)[-1]
    expected = {
        "specialties": [["neurology", "vestibular"], ["neurology"]],
        "specialties_not_offered": [["pediatrics", "pelvic_health"], ["pediatrics", "vestibular"]],
    }
    assert by_import["action"] == by_api["action"] == "update"
    assert by_import["diff"] == by_api["diff"] == expected
    # And the links say the same, but for who said so.
    twin_links = links(client.get(url).get_json())
    river_links = links(client.get(f"/v1/clinics/{river_id}").get_json())
    assert {code: said[:2] for code, said in twin_links.items()} == {
        code: said[:2] for code, said in river_links.items()
    }
    assert twin_links["vestibular"][2] == "api key directory-admin"
    assert river_links["vestibular"][2] == "import by directory-admin"


def test_csv_export_has_the_not_offered_column(app, client, editor):
    post_csv(client, to_csv([RIVER, RIVER_SOUTH, NORTHSIDE]), editor["admin"])
    text_csv = client.get("/v1/clinics.csv").get_data(as_text=True)
    reader = csv.reader(io.StringIO(text_csv))
    header = next(reader)
    assert header[-2:] == ["specialties", "specialties_not_offered"]
    assert tuple(header) == COLUMNS
    rows = list(csv.DictReader(io.StringIO(text_csv)))
    river = [row for row in rows if row["clinic_name"] == "Riverside Balance PT"]
    assert len(river) == 2
    for row in river:
        assert row["specialties"] == "neurology;vestibular"
        assert row["specialties_not_offered"] == "pediatrics;pelvic_health"
    northside = next(row for row in rows if row["clinic_name"] == "Northside Hand Clinic")
    assert (northside["specialties"], northside["specialties_not_offered"]) == (
        "",
        "running;sports",
    )
    # A seeded clinic with no statement against anything: an empty cell.
    seeded = next(row for row in rows if row["clinic_name"] == "Shea PT")
    assert seeded["specialties_not_offered"] == ""


def test_geojson_has_the_not_offered_codes(app, client, editor):
    post_csv(client, to_csv([RIVER, NORTHSIDE]), editor["admin"])
    features = json.loads(client.get("/v1/locations.geojson").get_data(as_text=True))["features"]
    by_name = {feature["properties"]["clinic_name"]: feature["properties"] for feature in features}
    river = by_name["Riverside Balance PT"]
    assert river["specialties"] == ["neurology", "vestibular"]
    assert river["specialties_not_offered"] == ["pediatrics", "pelvic_health"]
    northside = by_name["Northside Hand Clinic"]
    assert (northside["specialties"], northside["specialties_not_offered"]) == (
        [],
        ["running", "sports"],
    )
    assert all("specialties_not_offered" in properties for properties in by_name.values())


def test_an_export_reimported_with_not_offered_codes_changes_nothing(app, client, editor):
    post_csv(client, to_csv([RIVER, RIVER_SOUTH, NORTHSIDE]), editor["admin"])
    exported = client.get("/v1/clinics.csv").get_data()
    assert b"pediatrics;pelvic_health" in exported and b"running;sports" in exported
    before = counts(app)
    result = post_csv(client, exported, editor["admin"]).get_json()
    assert result["errors"] == []
    assert result["counts"]["clinics"]["updated"] == result["counts"]["clinics"]["created"] == 0
    assert result["counts"]["rows"]["updated"] == result["counts"]["rows"]["created"] == 0
    assert result["changes_recorded"] == 0
    assert counts(app) == before
    assert client.get("/v1/clinics.csv").get_data() == exported


def etag_of(client, path: str, etag: str | None = None) -> tuple[int, str]:
    """(status, ETag) of an export, its stream read to the end."""
    response = client.get(path, headers={"If-None-Match": etag} if etag else {})
    response.get_data()
    response.close()
    return response.status_code, response.headers["ETag"]


def test_the_export_etag_changes_when_a_link_flips(app, client, editor):
    post_csv(client, to_csv([RIVER]), editor["admin"])
    clinic_id = clinic_by_name(client, "Riverside")["id"]
    paths = ("/v1/clinics.csv", "/v1/locations.geojson")
    etags = {path: etag_of(client, path)[1] for path in paths}
    assert all(etag_of(client, path, etag)[0] == 304 for path, etag in etags.items())
    # A link that says the opposite now, written as a bulk writer writes it (the import): the
    # directory's revision bumped and the clinic stamped with it, none of its columns changed.
    with Session(get_database(app).engine) as session:
        revision = bump_revision(session)
        flipped = session.execute(
            text(
                "UPDATE clinic_specialty SET offered = NOT offered "
                "WHERE clinic_id = :id AND specialty_code = 'vestibular'"
            ),
            {"id": clinic_id},
        )
        assert flipped.rowcount == 1
        session.execute(
            text("UPDATE clinic SET revision = :revision WHERE id = :id"),
            {"revision": revision, "id": clinic_id},
        )
        session.commit()
    for path, etag in etags.items():
        status, fresh = etag_of(client, path, etag)
        assert status == 200, path
        assert fresh != etag
    exported = client.get("/v1/clinics.csv").get_data(as_text=True)
    assert "pediatrics;pelvic_health;vestibular" in exported
