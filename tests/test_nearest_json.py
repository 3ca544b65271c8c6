"""The nearest answer is dumped by hand (referral/directory/schemas.py: location_json and
friends) and read as plain records (referral/directory/records.py): both must give exactly
what the documented marshmallow schemas give for the ORM rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from referral.db import get_database, get_session, session_scope
from referral.directory import readmodel, views
from referral.directory.listing import find_clinic
from referral.directory.models import Clinic, Location
from referral.directory.nearest import find_nearest
from referral.directory.readbuild import read_in_child
from referral.directory.readmodel import current_snapshot
from referral.directory.records import location_record
from referral.directory.schemas import (
    ClinicSchema,
    ClinicSummarySchema,
    LocationSchema,
    NearestResponseSchema,
    clinic_summary_json,
    location_json,
)
from referral.directory.snapshot import read_all

ODD_FACTS: list[dict[str, Any]] = [
    {
        "opening_hours": {"mon": [["08:00", "12:00"], ["13:00", "17:30"]], "sat": []},
        "hours_exceptions": [{"date": "2026-12-25", "closed": True, "note": "Christmas"}],
        "accepting_new_patients": True,
        "telehealth": False,
        "languages": ["en", "es", "vi"],
        "review_reasons": ["phone missing", "name missing"],
        "needs_review": True,
        "address_line2": "Suite 200",
    },
    {
        "opening_hours": {},
        "hours_exceptions": [],
        "accepting_new_patients": None,
        "telehealth": None,
        "languages": [],
        "time_zone": None,
        "geocode_source": None,
    },
    {"opening_hours": None, "hours_exceptions": None, "languages": None, "active": False},
]


@pytest.fixture
def odd_directory(app):
    """The seed, plus locations and clinics with every kind of value set or unknown."""
    with session_scope(app) as session:
        locations = list(session.exec(select(Location).order_by(Location.id)).all())
        for location, facts in zip(locations, ODD_FACTS, strict=False):
            for name, value in facts.items():
                setattr(location, name, value)
        clinic = locations[0].clinic
        clinic.name, clinic.phone, clinic.website = None, None, None
        clinic.needs_review = True
        clinic.review_reasons = ["name missing"]
    return app


def test_records_dump_as_the_schemas_dump_the_rows(odd_directory):
    with odd_directory.app_context():
        session = get_session()
        snapshot = current_snapshot(session)
        rows = [
            row for row in session.exec(select(Location)).all() if row.active and row.clinic.active
        ]
        assert len(rows) > 30
        assert {int(i) for i in snapshot.locations.id[snapshot.locations.alive]} == {
            row.id for row in rows
        }
        for row in rows:
            assert row.id is not None
            found = snapshot.location_rows.get(row.id)
            assert found is not None
            record = location_record(snapshot, found)
            expected = LocationSchema().dump(row)
            assert location_json(record) == expected
            assert location_json(row) == expected
            expected_clinic = ClinicSummarySchema().dump(row.clinic)
            assert clinic_summary_json(record.clinic) == expected_clinic
            assert clinic_summary_json(row.clinic) == expected_clinic


def test_a_clinic_from_the_read_model_dumps_as_its_row(odd_directory):
    # The public clinic JSON (and so its ETag, which a PATCH checks) is the same whether it
    # comes from the read model or from the database.
    with odd_directory.app_context():
        session = get_session()
        snapshot = current_snapshot(session)
        clinics = session.exec(select(Clinic).where(Clinic.active)).all()
        assert len(clinics) > 25
        for clinic in clinics:
            assert clinic.id is not None
            view = find_clinic(snapshot, clinic.id)
            assert view is not None
            assert ClinicSchema().dump(view) == ClinicSchema().dump(clinic)
        assert find_clinic(snapshot, 10**9) is None


@pytest.mark.parametrize(
    "query",
    [
        "zip=78201&limit=5",
        "lat=30.27&lon=-97.74&specialty=orthopedic&limit=10",
        "city=Austin&state=tx&radius=25&unit=km&limit=3",
        "lat=47.6&lon=-122.3&radius=1&unit=mi",  # nothing inside: nearest_outside_radius
        "lat=30.27&lon=-97.74&accepting_new_patients=true&language=es&telehealth=false",
        "lat=30.27&lon=-97.74&open_now=true",
    ],
)
def test_the_nearest_answer_is_what_the_schema_dumps(odd_directory, client, query, monkeypatch):
    if "open_now" in query:
        # The one location with hours is open Monday 08:00-12:00 and 13:00-17:30, local time:
        # ask at 10:00 on a Monday there, whatever the test machine's clock says.
        with odd_directory.app_context():
            first = get_session().exec(select(Location).order_by(Location.id)).first()
            assert first is not None and first.time_zone
            zone = ZoneInfo(first.time_zone)
        monday_morning = datetime(2026, 11, 23, 10, 0, tzinfo=zone).astimezone(UTC)
        monkeypatch.setattr(views, "utcnow", lambda: monday_morning)
    response = client.get(f"/v1/locations/nearest?{query}")
    assert response.status_code == 200
    body = response.get_json()
    with odd_directory.app_context():
        session = get_session()
        hits = [*body["results"], *filter(None, [body["nearest_outside_radius"]])]

        def orm_hit(hit: dict[str, Any]) -> dict[str, Any]:
            location = session.get(Location, hit["location"]["id"])
            assert location is not None
            return {**hit, "location": location, "clinic": session.get(Clinic, location.clinic_id)}

        expected = NearestResponseSchema().dump(
            {
                **body,
                "results": [orm_hit(hit) for hit in body["results"]],
                "nearest_outside_radius": orm_hit(body["nearest_outside_radius"])
                if body["nearest_outside_radius"]
                else None,
            }
        )
        assert hits or "radius" in query
    assert body == expected


def test_the_etag_is_of_the_bytes_sent_and_304_repeats_it(client):
    path = "/v1/locations/nearest?zip=78201&limit=3"
    first = client.get(path)
    etag = first.headers["ETag"]
    assert client.get(path).headers["ETag"] == etag  # same answer, same tag
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["ETag"] == etag
    assert again.data == b""
    other = client.get("/v1/locations/nearest?zip=78201&limit=2")
    assert other.headers["ETag"] != etag
    assert first.mimetype == "application/json"


def test_an_edit_changes_the_answer_and_its_etag(app, client):
    path = "/v1/locations/nearest?zip=78201&limit=1"
    before = client.get(path)
    location_id = before.get_json()["results"][0]["location"]["id"]
    with session_scope(app) as session:
        location = session.get(Location, location_id)
        assert location is not None
        location.address_line2 = "Suite 9"
        location.updated_at = datetime(2026, 11, 23, tzinfo=UTC)
    after = client.get(path, headers={"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200
    assert after.get_json()["results"][0]["location"]["address_line2"] == "Suite 9"
    assert after.get_json()["results"][0]["location"]["updated_at"] == "2026-11-23T00:00:00+00:00"


def test_find_nearest_hits_are_records_not_orm_rows(app):
    with app.app_context():
        session = get_session()
        found = find_nearest(session, 30.27, -97.74, limit=3)
        assert found.hits
        assert not any(isinstance(hit.location, Location) for hit in found.hits)
        assert len(session.identity_map) == 0  # nothing loaded into the session


def test_a_whole_read_in_a_child_process_is_the_same(odd_directory, monkeypatch):
    # A large directory is read by a child process (readbuild.py), handed over pickled.
    with odd_directory.app_context():
        engine = get_database(odd_directory).engine
        with engine.connect() as connection:
            here = read_all(connection)
        there = read_in_child(engine.url.render_as_string(hide_password=False))
        assert there.revision == here.revision
        assert list(there.locations.id) == list(here.locations.id)
        for snapshot in (here, there):
            assert snapshot.locations.alive.sum() == here.locations.alive.sum()
        for row in range(len(here.locations.id)):
            assert location_record(there, row) == location_record(here, row)
        for clinic_id in here.clinics.id:
            assert find_clinic(there, int(clinic_id)) == find_clinic(here, int(clinic_id))
        # And the read model takes that way from CHILD_THRESHOLD locations on.
        children = []
        monkeypatch.setattr(readmodel, "CHILD_THRESHOLD", 1)
        monkeypatch.setattr(
            readmodel, "read_in_child", lambda url: children.append(url) or read_in_child(url)
        )
        assert readmodel.current_snapshot(get_session()).revision == here.revision
        assert len(children) == 1
