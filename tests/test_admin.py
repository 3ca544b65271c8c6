"""Directory edits: validation, If-Match concurrency, deactivation, the change log."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_problem, auth


def first_id(client, q: str) -> int:
    return client.get("/v1/clinics", query_string={"q": q}).get_json()[0]["id"]


def test_create_clinic_and_location_then_find_it(client, editor):
    made = client.post(
        "/v1/clinics",
        json={"name": "Lakeside Running Clinic", "phone": "(612) 555-0147",
              "website": "https://lakeside.example", "specialties": ["running", "spine"]},
        headers=auth(editor["writer"]),
    )  # fmt: skip
    assert made.status_code == 201, made.get_json()
    clinic = made.get_json()
    assert clinic["phone"] == "+16125550147"
    assert made.headers["Location"] == f"/v1/clinics/{clinic['id']}"
    place = client.post(
        f"/v1/clinics/{clinic['id']}/locations",
        json={"address_line1": "100 Lake St", "city": "Minneapolis", "state": "mn", "zip": "55408"},
        headers=auth(editor["writer"]),
    )
    assert place.status_code == 201, place.get_json()
    location = place.get_json()
    assert location["geocode_precision"] == "postal_code"
    assert location["time_zone"] == "America/Chicago"
    manual = client.post(
        f"/v1/clinics/{clinic['id']}/locations",
        json={"city": "Minneapolis", "state": "MN", "lat": 44.95, "lon": -93.29},
        headers=auth(editor["writer"]),
    ).get_json()
    assert manual["geocode_precision"] == "manual" and manual["lat"] == 44.95
    nearest = client.get("/v1/locations/nearest?lat=44.95&lon=-93.29&limit=1").get_json()
    assert nearest["results"][0]["clinic"]["name"] == "Lakeside Running Clinic"


BAD_CLINICS = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "X", "phone": "12"}, "phone"),
    ({"name": "X", "phone": "555-0100"}, "phone"),
    ({"name": "X", "website": "javascript:alert(1)"}, "website"),
    ({"name": "X", "specialties": ["astrology"]}, "specialties"),
    ({"name": "X", "owner": "me"}, "owner"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CLINICS)
def test_clinic_validation(client, editor, body, field):
    total = json.loads(client.get("/v1/clinics").headers["X-Pagination"])["total"]
    assert_problem(client.post("/v1/clinics", json=body, headers=auth(editor["admin"])), 422, field)
    assert json.loads(client.get("/v1/clinics").headers["X-Pagination"])["total"] == total


BAD_LOCATIONS = [
    ({"state": "MN"}, "city"),
    ({"city": "Minneapolis", "state": "Minnesota"}, "state"),
    ({"city": "Minneapolis", "state": "MN", "zip": "5540"}, "zip"),
    ({"city": "Minneapolis", "state": "MN", "lat": 91, "lon": 0}, "lat"),
    ({"city": "Minneapolis", "state": "MN", "lat": 45}, "lon"),
    ({"city": "Nowhereville", "state": "MN"}, "address"),
    ({"city": "Minneapolis", "state": "MN", "floor": 2}, "floor"),
]


@pytest.mark.parametrize(("body", "field"), BAD_LOCATIONS)
def test_location_validation(client, editor, body, field):
    clinic_id = first_id(client, "PRO Therapy")
    response = client.post(
        f"/v1/clinics/{clinic_id}/locations", json=body, headers=auth(editor["admin"])
    )
    assert_problem(response, 422, field)
    assert len(client.get(f"/v1/clinics/{clinic_id}").get_json()["locations"]) == 2


def test_writes_need_an_editor_key(client, editor):
    clinic_id = first_id(client, "Shea")
    assert_problem(client.post("/v1/clinics", json={"name": "X"}), 401)
    assert_problem(client.post("/v1/clinics", json={"name": "X"}, headers=auth(editor["app"])), 403)
    assert_problem(client.patch(f"/v1/clinics/{clinic_id}", json={"name": "Y"}), 401)
    assert_problem(client.delete(f"/v1/clinics/{clinic_id}", headers=auth(editor["app"])), 403)


def test_if_match_is_required_and_must_be_current(client, editor):
    clinic_id = first_id(client, "Shea")
    url = f"/v1/clinics/{clinic_id}"
    etag = client.get(url).headers["ETag"]
    assert_problem(
        client.patch(url, json={"website": "https://shea.example"}, headers=auth(editor["admin"])),
        428,
    )
    first = client.patch(
        url,
        json={"website": "https://shea.example"},
        headers=auth(editor["admin"], **{"If-Match": etag}),
    )
    assert first.status_code == 200
    assert first.headers["ETag"] != etag
    # A second admin still holding the old ETag is refused, and nothing is overwritten.
    stale = client.patch(
        url,
        json={"website": "https://other.example"},
        headers=auth(editor["writer"], **{"If-Match": etag}),
    )
    assert_problem(stale, 412)
    assert client.get(url).get_json()["website"] == "https://shea.example"


def test_deactivate_and_reactivate(client, editor):
    clinic_id = first_id(client, "Fit for Work")
    url = f"/v1/clinics/{clinic_id}"
    etag = client.get(url).headers["ETag"]
    gone = client.delete(url, headers=auth(editor["admin"], **{"If-Match": etag}))
    assert gone.status_code == 204
    assert_problem(client.get(url), 404)
    names = [
        h["clinic"]["name"]
        for h in client.get("/v1/locations/nearest?zip=78201&limit=50").get_json()["results"]
    ]
    assert "Fit for Work" not in names
    seen = client.get(url, headers=auth(editor["admin"]))
    assert seen.status_code == 200 and seen.get_json()["active"] is False
    back = client.patch(
        url,
        json={"active": True},
        headers=auth(editor["admin"], **{"If-Match": seen.headers["ETag"]}),
    )
    assert back.status_code == 200
    assert client.get(url).status_code == 200


def test_naming_an_unnamed_clinic_clears_its_review_reason(client, editor):
    listed = client.get("/v1/clinics", query_string={"city": "Calabasas"}).get_json()[0]
    assert listed["name"] is None
    url = f"/v1/clinics/{listed['id']}"
    etag = client.get(url).headers["ETag"]
    named = client.patch(
        url, json={"name": "PTPN"}, headers=auth(editor["admin"], **{"If-Match": etag})
    ).get_json()
    assert named["name"] == "PTPN"
    assert "name missing in source" not in named["review_reasons"]


def test_location_edit_regeocodes_and_deactivates(client, editor):
    clinic_id = first_id(client, "PRO Therapy")
    clinic = client.get(f"/v1/clinics/{clinic_id}").get_json()
    coon = next(loc for loc in clinic["locations"] if loc["city"] == "Coon Rapids")
    url = f"/v1/clinics/{clinic_id}/locations/{coon['id']}"
    etag = client.get(url).headers["ETag"]
    moved = client.patch(
        url, json={"zip": "55448"}, headers=auth(editor["admin"], **{"If-Match": etag})
    )
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["zip"] == "55448"
    assert moved.get_json()["lat"] != coon["lat"]
    gone = client.delete(url, headers=auth(editor["admin"], **{"If-Match": moved.headers["ETag"]}))
    assert gone.status_code == 204
    assert len(client.get(f"/v1/clinics/{clinic_id}").get_json()["locations"]) == 1


def test_every_change_is_in_the_audit_log(client, editor):
    clinic_id = first_id(client, "Shea")
    url = f"/v1/clinics/{clinic_id}"
    etag = client.get(url).headers["ETag"]
    client.patch(
        url,
        json={"website": "https://shea.example"},
        headers=auth(editor["writer"], **{"If-Match": etag}),
    )
    etag = client.get(url).headers["ETag"]
    client.delete(url, headers=auth(editor["admin"], **{"If-Match": etag}))
    log = client.get(
        "/v1/admin/audit", query_string={"clinic_id": clinic_id}, headers=auth(editor["admin"])
    )
    assert log.status_code == 200
    changes = log.get_json()
    assert [c["action"] for c in changes] == ["deactivate", "update"]
    assert changes[1]["diff"] == {"website": [None, "https://shea.example"]}
    assert changes[1]["actor"] == "data-team"
    assert changes[0]["diff"] == {"active": [True, False]}
    assert_problem(client.get("/v1/admin/audit", headers=auth(editor["writer"])), 403)
    assert (
        client.get(
            "/v1/admin/audit",
            query_string={"clinic_id": clinic_id + 1000},
            headers=auth(editor["admin"]),
        ).get_json()
        == []
    )
