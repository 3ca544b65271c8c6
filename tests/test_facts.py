"""Opening hours, new patients, telehealth, languages: unknown stays unknown, never false."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database
from referral.directory.hours import HoursError, check_exceptions, check_schedule, is_open
from tests.helpers import assert_problem

WEEKDAYS_9_TO_5 = {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
ALWAYS = {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def test_open_is_judged_in_the_locations_own_time_zone():
    monday_9am_chicago = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # CST is UTC-6
    assert is_open(WEEKDAYS_9_TO_5, None, "America/Chicago", monday_9am_chicago) is True
    assert is_open(WEEKDAYS_9_TO_5, None, "America/New_York", monday_9am_chicago) is True
    assert is_open(WEEKDAYS_9_TO_5, None, "America/Los_Angeles", monday_9am_chicago) is False
    # 23:30 UTC Monday is 17:30 in Chicago: closed; Tuesday 01:00 UTC is still Monday there.
    assert (
        is_open(
            WEEKDAYS_9_TO_5, None, "America/Chicago", datetime(2026, 11, 23, 23, 30, tzinfo=UTC)
        )
        is False
    )
    assert (
        is_open(WEEKDAYS_9_TO_5, None, "America/Chicago", datetime(2026, 11, 24, 1, 0, tzinfo=UTC))
        is False
    )
    # Summer time: 9:00 in Chicago is 14:00 UTC in July.
    july = datetime(2026, 7, 6, 14, 5, tzinfo=UTC)
    assert is_open(WEEKDAYS_9_TO_5, None, "America/Chicago", july) is True
    assert is_open(WEEKDAYS_9_TO_5, None, "America/Chicago", july - timedelta(minutes=10)) is False


def test_exceptions_override_the_week():
    thanksgiving = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)  # Thursday, 10:00 in Chicago
    closed = [{"date": "2026-11-26", "closed": True, "note": "Thanksgiving"}]
    assert is_open(WEEKDAYS_9_TO_5, None, "America/Chicago", thanksgiving) is True
    assert is_open(WEEKDAYS_9_TO_5, closed, "America/Chicago", thanksgiving) is False
    saturday_clinic = [{"date": "2026-11-28", "hours": [["10:00", "12:00"]]}]
    saturday = datetime(2026, 11, 28, 16, 30, tzinfo=UTC)  # 10:30 in Chicago
    assert is_open(WEEKDAYS_9_TO_5, saturday_clinic, "America/Chicago", saturday) is True


def test_unknown_hours_or_zone_is_unknown_not_closed():
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert is_open(None, None, "America/Chicago", now) is None
    assert is_open(WEEKDAYS_9_TO_5, None, None, now) is None
    assert is_open({}, None, "America/Chicago", now) is False  # known: never open


@pytest.mark.parametrize(
    "schedule",
    [{"mon": [["25:00", "26:00"]]}, {"mon": [["17:00", "09:00"]]}, {"funday": []},
     {"mon": [["09:00", "12:00"], ["11:00", "13:00"]]}, {"mon": "9-5"}],
)  # fmt: skip
def test_bad_schedules_are_refused(schedule):
    with pytest.raises(HoursError):
        check_schedule(schedule)


@pytest.mark.parametrize(
    "exceptions",
    [[{"date": "2026-13-01", "closed": True}], [{"date": "2026-12-25"}],
     [{"date": "2026-12-25", "closed": True, "hours": [["09:00", "10:00"]]}],
     [{"date": "2026-12-25", "closed": True}, {"date": "2026-12-25", "closed": True}]],
)  # fmt: skip
def test_bad_exceptions_are_refused(exceptions):
    with pytest.raises(HoursError):
        check_exceptions(exceptions)


@pytest.fixture
def admin(app) -> dict[str, str]:
    with Session(get_database(app).engine) as session:
        _, key = create_key(session, name="facts-admin", scopes=["admin"])
        session.commit()
    return {"Authorization": f"Bearer {key}"}


def set_facts(client, admin, city: str, facts: dict) -> dict:
    clinic = client.get("/v1/clinics", query_string={"city": city}).get_json()[0]
    location = next(loc for loc in clinic["locations"] if loc["city"] == city)
    url = f"/v1/clinics/{clinic['id']}/locations/{location['id']}"
    etag = client.get(url).headers["ETag"]
    response = client.patch(url, json=facts, headers={**admin, "If-Match": etag})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_seeded_facts_are_unknown(client):
    for hit in client.get("/v1/locations/nearest?zip=78201&limit=50").get_json()["results"]:
        location = hit["location"]
        assert location["opening_hours"] is None
        assert location["accepting_new_patients"] is None
        assert location["telehealth"] is None
        assert location["languages"] is None
        assert hit["open_now"] is None


def test_open_now_filter_counts_the_unknown(client, admin):
    set_facts(client, admin, "Coon Rapids", {"opening_hours": ALWAYS})
    set_facts(client, admin, "Minneapolis", {"opening_hours": {}})  # known: closed every day
    body = client.get("/v1/locations/nearest?zip=55413&open_now=true&limit=50").get_json()
    assert [hit["location"]["city"] for hit in body["results"]] == ["Coon Rapids"]
    assert body["results"][0]["open_now"] is True
    assert body["excluded_unknown"] == {"open_now": 34}
    listed = client.get("/v1/clinics?open_now=true")
    assert [c["name"] for c in listed.get_json()] == ["PRO Therapy"]
    assert json.loads(listed.headers["X-Excluded-Unknown"]) == {"open_now": 30}


def test_new_patients_telehealth_and_language_filters(client, admin):
    set_facts(client, admin, "Coon Rapids", {"accepting_new_patients": True, "telehealth": False,
                                            "languages": ["en", "es"]})  # fmt: skip
    set_facts(client, admin, "Minneapolis", {"accepting_new_patients": False, "languages": ["en"]})
    near = "/v1/locations/nearest?zip=55413&limit=50"
    accepting = client.get(f"{near}&accepting_new_patients=true").get_json()
    assert [h["location"]["city"] for h in accepting["results"]] == ["Coon Rapids"]
    assert accepting["excluded_unknown"] == {"accepting_new_patients": 34}
    full = client.get(f"{near}&accepting_new_patients=false").get_json()
    assert [h["location"]["city"] for h in full["results"]] == ["Minneapolis"]
    spanish = client.get(f"{near}&language=es").get_json()
    assert [h["location"]["city"] for h in spanish["results"]] == ["Coon Rapids"]
    assert spanish["excluded_unknown"] == {"language": 34}
    remote = client.get(f"{near}&telehealth=true").get_json()
    assert remote["results"] == [] and remote["excluded_unknown"] == {"telehealth": 35}
    assert_problem(client.get(f"{near}&language=spanish"), 422, "language")
    assert_problem(client.get(f"{near}&telehealth=maybe"), 422, "telehealth")


def test_updated_since_returns_changes_including_deactivations(client, admin):
    since = datetime.now(UTC).isoformat()
    assert client.get("/v1/clinics", query_string={"updated_since": since}).get_json() == []
    set_facts(client, admin, "Coon Rapids", {"telehealth": True})
    shea = client.get("/v1/clinics", query_string={"q": "Shea"}).get_json()[0]
    url = f"/v1/clinics/{shea['id']}"
    client.delete(url, headers={**admin, "If-Match": client.get(url).headers["ETag"]})
    changed = client.get("/v1/clinics", query_string={"updated_since": since}).get_json()
    assert {(c["name"], c["active"]) for c in changed} == {
        ("PRO Therapy", True),
        ("Shea PT", False),
    }
    assert_problem(client.get("/v1/clinics?updated_since=yesterday"), 422, "updated_since")


@pytest.mark.parametrize(
    ("facts", "field"),
    [({"opening_hours": {"mon": [["09:00", "25:00"]]}}, "opening_hours"),
     ({"hours_exceptions": [{"date": "2026-12-25"}]}, "hours_exceptions"),
     ({"languages": ["english"]}, "languages.0"),
     ({"accepting_new_patients": "perhaps"}, "accepting_new_patients")],
)  # fmt: skip
def test_bad_facts_are_named(client, admin, facts, field):
    clinic = client.get("/v1/clinics", query_string={"q": "PRO Therapy"}).get_json()[0]
    location = clinic["locations"][0]
    url = f"/v1/clinics/{clinic['id']}/locations/{location['id']}"
    response = client.patch(
        url, json=facts, headers={**admin, "If-Match": client.get(url).headers["ETag"]}
    )
    assert_problem(response, 422, field)
