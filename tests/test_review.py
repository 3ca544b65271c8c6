"""The review queue: what a person should look at in the directory, and why."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlmodel import Session

from referral.db import get_database
from referral.directory.models import Clinic, Location
from referral.timeutil import utcnow
from tests.helpers import assert_problem, auth

REVIEW = "/v1/admin/review"


@pytest.fixture
def keys(editor: dict[str, str]) -> dict[str, str]:
    return editor


def queue(client, key: str, **query: Any) -> list[dict[str, Any]]:
    response = client.get(REVIEW, query_string={"page_size": 200, **query}, headers=auth(key))
    assert response.status_code == 200, response.get_json()
    items: list[dict[str, Any]] = response.get_json()
    assert json.loads(response.headers["X-Pagination"])["total"] == len(items)
    return items


def with_code(items: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [item for item in items if code in item["codes"]]


def clinic_ids(app, *conditions: Any) -> set[int]:
    with Session(get_database(app).engine) as session:
        return set(session.execute(select(Clinic.id).where(*conditions)).scalars().all())


def test_the_seeded_nameless_and_phoneless_clinics_are_listed(app, client, keys):
    items = queue(client, keys["admin"])
    nameless = with_code(items, "unknown_name")
    assert len(nameless) == 3
    assert {item["clinic_id"] for item in nameless} == clinic_ids(app, Clinic.name.is_(None))
    for item in nameless:
        assert item["kind"] == "clinic" and item["location_id"] is None and item["name"] is None
        assert "name unknown" in item["reasons"]
        assert "name missing in source" in item["reasons"]  # the seed's own flag
    phoneless = with_code(items, "unknown_phone")
    assert {item["name"] for item in phoneless} == {"Colorado in Motion", "PRO Therapy"}
    assert all("phone unknown" in item["reasons"] for item in phoneless)


def test_clinics_sharing_a_phone_are_one_item(client, keys):
    shared = with_code(queue(client, keys["admin"]), "shared_phone")
    groups = {item["phone"]: sorted(str(c["name"]) for c in item["clinics"]) for item in shared}
    assert groups == {
        "+18664125554": ["Advanced Physical Therapy", "Preferred Physical Therapy"],
        "+18668663893": ["Physical Therapy Central", "Redbud Physical Therapy"],
        "+18886588483": ["None", "Texas Physical Therapy Specialists"],
    }
    advanced = next(item for item in shared if item["phone"] == "+18664125554")
    assert advanced["kind"] == "shared_phone"
    assert advanced["clinic_id"] == min(c["id"] for c in advanced["clinics"])
    assert "likely one organization" in advanced["reasons"][0]


def test_coarse_geocodes_and_flags_are_listed_with_their_reasons(client, keys):
    items = queue(client, keys["admin"])
    coarse = with_code(items, "coarse_geocode")
    assert coarse and all(item["kind"] == "location" for item in coarse)
    # PRO Therapy's locations are placed by ZIP (postal_code), not by city.
    assert "PRO Therapy" not in {item["name"] for item in coarse}
    assert "Wichita" in {item["city"] for item in coarse}
    shea = next(item for item in items if item["name"] == "Shea PT" and item["location_id"])
    assert "flagged" in shea["codes"]
    assert "state missing in source" in shea["reasons"]
    only_coarse = queue(client, keys["admin"], reason="coarse_geocode")
    assert len(only_coarse) == len(coarse)
    assert_problem(
        client.get(REVIEW, query_string={"reason": "vibes"}, headers=auth(keys["admin"])),
        422,
        "reason.0",
    )


def test_an_edited_clinic_leaves_the_queue_for_what_was_fixed(app, client, keys):
    calabasas = client.get("/v1/clinics", query_string={"city": "Calabasas"}).get_json()[0]
    assert calabasas["id"] in {
        i["clinic_id"] for i in with_code(queue(client, keys["admin"]), "unknown_name")
    }
    url = f"/v1/clinics/{calabasas['id']}"
    etag = client.get(url).headers["ETag"]
    named = client.patch(
        url, json={"name": "PTPN"}, headers=auth(keys["admin"], **{"If-Match": etag})
    )
    assert named.status_code == 200, named.get_json()

    pro = client.get("/v1/clinics", query_string={"q": "PRO Therapy"}).get_json()[0]
    url = f"/v1/clinics/{pro['id']}"
    etag = client.get(url).headers["ETag"]
    phoned = client.patch(
        url, json={"phone": "(612) 555-0100"}, headers=auth(keys["writer"], **{"If-Match": etag})
    )
    assert phoned.status_code == 200, phoned.get_json()

    items = queue(client, keys["admin"])
    assert len(with_code(items, "unknown_name")) == 2
    assert calabasas["id"] not in {i["clinic_id"] for i in with_code(items, "unknown_name")}
    clinic_item = [i for i in items if i["clinic_id"] == calabasas["id"] and i["kind"] == "clinic"]
    # The unknown name is answered; what is left is that no specialty is on record for it.
    assert [item["codes"] for item in clinic_item] == [["specialties_unknown"]]
    assert {i["name"] for i in with_code(items, "unknown_phone")} == {"Colorado in Motion"}
    assert [i["name"] for i in queue(client, keys["admin"], reason="unknown_phone")] == [
        "Colorado in Motion"
    ]


def test_stale_and_unplaced_records(app, client, keys):
    long_ago = utcnow() - timedelta(days=400)
    with Session(get_database(app).engine) as session:
        strive = session.execute(select(Clinic).where(Clinic.name == "Strive PTSR")).scalar_one()
        location_id = strive.locations[0].id
        session.execute(
            update(Clinic.__table__)
            .where(Clinic.__table__.c.id == strive.id)
            .values(updated_at=long_ago)
        )
        session.execute(
            update(Location.__table__)
            .where(Location.__table__.c.id == location_id)
            .values(lat=None, lon=None)
        )
        session.commit()
        strive_id = strive.id
    items = queue(client, keys["admin"])
    stale = with_code(items, "stale")
    assert [(i["kind"], i["clinic_id"]) for i in stale] == [("clinic", strive_id)]
    assert "not updated since" in stale[0]["reasons"][0]
    unplaced = with_code(items, "no_coordinates")
    assert [(i["location_id"], i["name"]) for i in unplaced] == [(location_id, "Strive PTSR")]
    assert "coarse_geocode" not in unplaced[0]["codes"]

    app.config["REVIEW_STALE_DAYS"] = 500
    assert with_code(queue(client, keys["admin"]), "stale") == []


def test_inactive_clinics_are_not_reviewed(client, keys):
    advanced = client.get("/v1/clinics", query_string={"q": "Advanced Physical"}).get_json()[0]
    url = f"/v1/clinics/{advanced['id']}"
    etag = client.get(url).headers["ETag"]
    assert client.delete(url, headers=auth(keys["admin"], **{"If-Match": etag})).status_code == 204
    items = queue(client, keys["admin"])
    assert advanced["id"] not in {item["clinic_id"] for item in items}
    assert "+18664125554" not in {item["phone"] for item in with_code(items, "shared_phone")}


def test_paginated_and_admin_only(client, keys):
    everything = queue(client, keys["admin"])
    page = client.get(REVIEW, query_string={"page_size": 5, "page": 2}, headers=auth(keys["admin"]))
    assert page.status_code == 200
    assert page.get_json() == everything[5:10]
    assert json.loads(page.headers["X-Pagination"])["total"] == len(everything)
    assert_problem(client.get(REVIEW), 401)
    assert_problem(client.get(REVIEW, headers=auth(keys["writer"])), 403)
