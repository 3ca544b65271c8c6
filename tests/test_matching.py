"""Referral matching a clinician would sign off on (docs/matching.md): specialty evidence in
three values, a reach, ranking within reach with reasons, routing by a person when nothing is
within reach, and distances that reveal no more than the stored origin."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from geographiclib.geodesic import Geodesic
from sqlmodel import Session, select

from referral.auth.keys import create_key
from referral.db import get_database
from referral.directory.models import Clinic, ClinicSpecialty
from referral.migrations import runner as migrations
from referral.referrals.models import Referral
from referral.timeutil import utcnow
from tests.conftest import build_app
from tests.helpers import assert_problem, auth

# Rural Nebraska: no seeded clinic within 300 km, so each test builds its own neighbourhood.
HERE = (40.0, -100.0)


@pytest.fixture
def keys(app: Flask, editor: dict[str, str]) -> dict[str, str]:
    with Session(get_database(app).engine) as session:
        _, other_app = create_key(session, name="otherapp", scopes=["referrals:write"])
        session.commit()
    return {**editor, "other_app": other_app}


def refer(client: Any, key: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/referrals", json=body, headers=auth(key))
    assert response.status_code == 201, response.get_json()
    answer: dict[str, Any] = response.get_json()
    return answer


def place(
    client: Any,
    key: str,
    name: str,
    km: float,
    bearing: float,
    *,
    origin: tuple[float, float] = HERE,
    phone: str | None = "(612) 555-0100",
    location: dict[str, Any] | None = None,
    **clinic: Any,
) -> dict[str, int]:
    """A clinic with one location ``km`` from ``origin`` on ``bearing`` (exact geodesic)."""
    made = client.post(
        "/v1/clinics", json={"name": name, "phone": phone, **clinic}, headers=auth(key)
    )
    assert made.status_code == 201, made.get_json()
    clinic_id = made.get_json()["id"]
    point = Geodesic.WGS84.Direct(origin[0], origin[1], bearing, km * 1000)
    added = client.post(
        f"/v1/clinics/{clinic_id}/locations",
        json={"city": "Cambridge", "state": "NE", "lat": point["lat2"], "lon": point["lon2"],
              **(location or {})},
        headers=auth(key),
    )  # fmt: skip
    assert added.status_code == 201, added.get_json()
    return {"clinic_id": clinic_id, "location_id": added.get_json()["id"]}


def names(candidates: list[dict[str, Any]]) -> list[str]:
    return [c["clinic_name"] for c in candidates]


# ---- the cases on the seed directory ------------------------------------------------


def test_san_antonio_runner_goes_to_a_san_antonio_clinic_not_minneapolis(client, keys):
    answer = refer(client, keys["app"], origin={"zip": "78201"}, concerns=["running_low_back_pain"])
    match = answer["match"]
    assert answer["status"] == "created"
    assert match["location"]["city"] == "San Antonio"
    assert match["fit"] == "possible" and match["within_reach"] is True
    assert sorted(match["specialties_unknown"]) == ["running", "spine"]
    assert match["specialties_not_offered"] == []
    assert "specialties not on record: running, spine" in match["reason"]
    assert match["distance_km"] < 10
    assert answer["reach"] == {"km": 80.0, "mi": 49.7, "basis": "urgency"}
    assert answer["notes"][0].startswith("reach: 80 km")
    assert any(
        "no clinic within reach is on record as offering all of" in n for n in answer["notes"]
    )
    # The other San Antonio clinics are the alternatives, each saying why.
    assert {a["city"] for a in answer["alternatives"]} == {"San Antonio"}
    assert all(a["fit"] == "possible" and a["within_reach"] for a in answer["alternatives"])
    assert all(a["reason"] for a in answer["alternatives"])


def test_minneapolis_runner_is_a_confirmed_match_at_pro_therapy(client, keys):
    answer = refer(client, keys["app"], origin={"zip": "55413"}, concerns=["running_low_back_pain"])
    match = answer["match"]
    assert match["clinic"]["name"] == "PRO Therapy"
    assert match["location"]["city"] == "Minneapolis"
    assert match["fit"] == "confirmed" and match["specialties_unknown"] == []
    assert "on record as offering running, spine" in match["reason"]
    # PRO Therapy's sources give no phone: said, not hidden.
    assert match["contactable"] is False and "no phone on record" in match["reason"]


@pytest.mark.parametrize(
    ("zip_code", "concern"), [("99501", "low_back_pain"), ("33131", "knee_pain")]
)
def test_far_from_every_clinic_is_stored_for_routing_then_assigned(client, keys, zip_code, concern):
    answer = refer(client, keys["app"], origin={"zip": zip_code}, concerns=[concern])
    assert answer["status"] == "needs_routing"
    assert answer["match"] is None
    assert any("for a person to route" in note for note in answer["notes"])
    options = answer["alternatives"]
    assert len(options) == 3
    assert all(not o["within_reach"] and o["distance_km"] > 80 for o in options)
    assert [h["to_status"] for h in answer["history"]] == ["needs_routing"]

    admin = auth(keys["admin"])
    waiting = client.get("/v1/referrals", query_string={"status": "needs_routing"}, headers=admin)
    assert [r["id"] for r in waiting.get_json()] == [answer["id"]]
    review = client.get("/v1/admin/review", query_string={"reason": "needs_routing"}, headers=admin)
    [item] = review.get_json()
    assert item["kind"] == "referral" and item["referral_id"] == answer["id"]
    assert options[0]["clinic_name"] in item["reasons"][0]

    # Only a person (admin) routes it; the lifecycle says how.
    url = f"/v1/referrals/{answer['id']}"
    refused = client.patch(url, json={"status": "accepted"}, headers=admin)
    assert "assignment" in assert_problem(refused, 409, "status")["detail"]
    chosen = options[0]
    by_app = client.post(
        f"{url}/assignment", json={"location_id": chosen["location_id"]}, headers=auth(keys["app"])
    )
    assert_problem(by_app, 403)
    assigned = client.post(
        f"{url}/assignment",
        json={"location_id": chosen["location_id"], "note": "patient will travel"},
        headers=admin,
    )
    assert assigned.status_code == 200, assigned.get_json()
    body = assigned.get_json()
    assert body["status"] == "created"
    assert body["match"]["location"]["id"] == chosen["location_id"]
    assert body["match"]["assigned_by"] == "directory-admin"
    assert body["match"]["distance_km"] == chosen["distance_km"]
    assert body["history"][-1]["from_status"] == "needs_routing"
    assert body["history"][-1]["to_status"] == "created"
    assert "patient will travel" in body["history"][-1]["note"]
    assert not client.get("/v1/referrals", query_string={"status": "needs_routing"},
                          headers=admin).get_json()  # fmt: skip
    review = client.get("/v1/admin/review", query_string={"reason": "needs_routing"}, headers=admin)
    assert review.get_json() == []


def test_assignment_rules(app, client, keys):
    answer = refer(client, keys["app"], origin={"zip": "99501"}, concerns=["low_back_pain"])
    url = f"/v1/referrals/{answer['id']}/assignment"
    admin = auth(keys["admin"])
    assert_problem(
        client.post(url, json={"location_id": 999999}, headers=admin), 422, "location_id"
    )
    assert_problem(client.post(url, json={}, headers=admin), 422, "location_id")
    assert_problem(client.post(url, json={"location_id": "1"}, headers=admin), 422, "location_id")
    # The sending app may withdraw a referral that waits for routing.
    cancelled = client.patch(
        f"/v1/referrals/{answer['id']}", json={"status": "cancelled"}, headers=auth(keys["app"])
    )
    assert cancelled.status_code == 200
    location_id = answer["alternatives"][0]["location_id"]
    late = client.post(url, json={"location_id": location_id}, headers=admin)
    assert "cannot be assigned" in assert_problem(late, 409, "location_id")["detail"]
    missing = client.post(
        "/v1/referrals/" + "0" * 32 + "/assignment", json={"location_id": 1}, headers=admin
    )
    assert_problem(missing, 404, "referral_id")


def test_a_created_referral_may_be_reassigned_until_its_clinic_answers(client, keys):
    answer = refer(client, keys["app"], origin={"zip": "78201"}, concerns=["low_back_pain"])
    other = answer["alternatives"][0]
    url = f"/v1/referrals/{answer['id']}"
    moved = client.post(
        f"{url}/assignment", json={"location_id": other["location_id"]}, headers=auth(keys["admin"])
    )
    assert moved.status_code == 200
    assert moved.get_json()["match"]["clinic"]["id"] == other["clinic_id"]
    assert moved.get_json()["history"][-1]["note"].startswith("reassigned to")
    assert other["location_id"] not in {a["location_id"] for a in moved.get_json()["alternatives"]}


def test_a_red_flag_shortens_the_reach_and_keeps_the_advice(client, keys):
    answer = refer(
        client, keys["app"], origin={"zip": "78201"}, concerns=["low_back_pain"],
        red_flags=["saddle_numbness"],
    )  # fmt: skip
    assert answer["urgency"] == "urgent"
    assert answer["reach"] == {"km": 40.0, "mi": 24.9, "basis": "urgency"}
    assert "an urgent referral" in answer["notes"][0]
    assert answer["match"]["location"]["city"] == "San Antonio"
    assert "emergency" in answer["escalations"][0]["advice"]


def test_max_distance_is_the_reach_and_distance_never_refuses(app, client, keys):
    near = refer(
        client, keys["app"], origin={"zip": "55413"}, concerns=["running_low_back_pain"],
        max_distance=1, unit="mi",
    )  # fmt: skip
    assert near["reach"] == {"km": 1.609344, "mi": 1.0, "basis": "max_distance"}
    assert near["match"]["location"]["city"] == "Minneapolis"
    assert near["alternatives"] == []  # Coon Rapids is beyond a mile
    tiny = refer(
        client, keys["app"], origin={"zip": "55413"}, concerns=["running_low_back_pain"],
        max_distance=0.1, unit="km",
    )  # fmt: skip
    assert tiny["status"] == "needs_routing"
    assert names(tiny["alternatives"])[:2] == ["PRO Therapy", "PRO Therapy"]
    assert "the max_distance asked for" in tiny["notes"][0]


def test_reach_defaults_come_from_settings(database_url, keys):
    app = build_app(database_url, MATCH_REACH_ROUTINE_KM=2.0, MATCH_REACH_SOON_KM=300.0)
    client = app.test_client()
    try:
        # The San Antonio clinics sit at the city's centre, about 3 km from 78201's.
        routine = refer(client, keys["app"], origin={"zip": "78201"}, concerns=["low_back_pain"])
        assert routine["status"] == "needs_routing"
        assert routine["reach"]["km"] == 2.0
        soon = refer(
            client, keys["app"], origin={"zip": "78201"}, concerns=["low_back_pain"],
            urgency="soon",
        )  # fmt: skip
        assert soon["status"] == "created" and soon["reach"]["km"] == 300.0
    finally:
        get_database(app).dispose()


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"MATCH_REACH_ROUTINE_KM": 0}, "REFERRAL_MATCH_REACH_ROUTINE_KM"),
        ({"MATCH_REACH_URGENT_KM": 9000.0}, "REFERRAL_MATCH_REACH_URGENT_KM"),
        ({"MATCH_REACH_SOON_KM": "far"}, "REFERRAL_MATCH_REACH_SOON_KM"),
        ({"MATCH_CONFIRMED_DETOUR_RATIO": 0.5}, "REFERRAL_MATCH_CONFIRMED_DETOUR_RATIO"),
        ({"MATCH_CONFIRMED_DETOUR_KM": -1}, "REFERRAL_MATCH_CONFIRMED_DETOUR_KM"),
    ],
)
def test_bad_match_settings_are_refused_at_start(tmp_path, settings, variable):
    with pytest.raises(ValueError, match=variable):
        build_app(f"sqlite:///{tmp_path / 'x.db'}", **settings)


# ---- the ranking rule on a built neighbourhood ----------------------------------------------


def test_confirmed_beats_possible_unless_much_farther(client, keys):
    admin = keys["admin"]
    possible = place(client, admin, "Possible PT", 5, 0)
    confirmed = place(client, admin, "Spine Confirmed PT", 15, 90, specialties=["spine"])
    answer = refer(client, keys["app"], origin={"lat": HERE[0], "lon": HERE[1]},
                   concerns=["low_back_pain"])  # fmt: skip
    # 15 km is within 16 km of the possible one's 5 km: the confirmed one wins.
    assert answer["match"]["clinic"]["id"] == confirmed["clinic_id"]
    assert answer["match"]["fit"] == "confirmed"
    assert names(answer["alternatives"]) == ["Possible PT"]
    assert answer["alternatives"][0]["specialties_unknown"] == ["spine"]

    moved = client.get(f"/v1/clinics/{confirmed['clinic_id']}/locations/{confirmed['location_id']}")
    point = Geodesic.WGS84.Direct(HERE[0], HERE[1], 90, 25_000)
    changed = client.patch(
        f"/v1/clinics/{confirmed['clinic_id']}/locations/{confirmed['location_id']}",
        json={"lat": point["lat2"], "lon": point["lon2"]},
        headers=auth(admin, **{"If-Match": moved.headers["ETag"]}),
    )
    assert changed.status_code == 200, changed.get_json()
    answer = refer(client, keys["app"], origin={"lat": HERE[0], "lon": HERE[1]},
                   concerns=["low_back_pain"])  # fmt: skip
    # 25 km is more than 16 km and 1.5x farther than 5 km: the nearer possible one wins.
    assert answer["match"]["clinic"]["id"] == possible["clinic_id"]
    assert answer["match"]["fit"] == "possible"
    assert any("more than 16 km and 1.5x farther" in note for note in answer["notes"])
    assert names(answer["alternatives"]) == ["Spine Confirmed PT"]


def test_known_lacking_refusing_and_unreachable_clinics(client, keys):
    admin = keys["admin"]
    place(client, admin, "No Spine Here", 1, 0, specialties_not_offered=["spine"])
    place(client, admin, "Full Up", 2, 0, location={"accepting_new_patients": False})
    place(client, admin, "Phoneless Spine", 3, 180, phone=None, specialties=["spine"])
    welcoming = place(
        client, admin, "Welcoming", 30, 270, location={"accepting_new_patients": True}
    )
    answer = refer(client, keys["app"], origin={"lat": HERE[0], "lon": HERE[1]},
                   concerns=["low_back_pain"])  # fmt: skip
    # Lacking spine and refusing new patients: never candidates. A clinic that can be called
    # comes before one with no phone on record, even confirmed and nearer.
    assert answer["match"]["clinic"]["id"] == welcoming["clinic_id"]
    assert answer["match"]["contactable"] is True
    assert answer["match"]["accepting_new_patients"] is True
    assert names(answer["alternatives"]) == ["Phoneless Spine"]
    assert answer["alternatives"][0]["contactable"] is False
    assert "no phone on record" in answer["alternatives"][0]["reason"]
    # For a knee, the clinic lacking spine is a possible match again.
    knee = refer(client, keys["app"], origin={"lat": HERE[0], "lon": HERE[1]},
                 concerns=["knee_pain"])  # fmt: skip
    assert knee["match"]["clinic"]["name"] == "No Spine Here"


def test_preferred_clinic_keeps_its_place(app, client, keys):
    with Session(get_database(app).engine) as session:
        texas, shea = (
            session.exec(select(Clinic.id).where(Clinic.seed_key == key)).one()
            for key in ("texas-physical-therapy-specialists", "shea-pt")
        )
    body = {"origin": {"zip": "78201"}, "concerns": ["low_back_pain"]}
    answer = refer(client, keys["app"], **body, preferred_clinic_id=texas)
    assert answer["match"]["clinic"]["id"] == texas
    assert answer["match"]["location"]["city"] == "San Antonio"
    assert answer["match"]["preferred"] is True
    assert any(n.startswith("the patient's preferred clinic") for n in answer["notes"])
    # Shea PT is in Corpus Christi, beyond the routine reach: matched by the rule instead.
    far = refer(client, keys["app"], **body, preferred_clinic_id=shea)
    assert far["match"]["clinic"]["id"] != shea
    assert any("beyond reach" in note for note in far["notes"])
    # Within a larger max_distance it is honoured, even when it says it lacks the specialty.
    etag = client.get(f"/v1/clinics/{shea}").headers["ETag"]
    client.patch(f"/v1/clinics/{shea}", json={"specialties_not_offered": ["spine"]},
                 headers=auth(keys["admin"], **{"If-Match": etag}))  # fmt: skip
    wide = refer(client, keys["app"], **body, preferred_clinic_id=shea, max_distance=300)
    assert wide["match"]["clinic"]["id"] == shea
    assert wide["match"]["fit"] == "lacking"
    assert wide["match"]["specialties_not_offered"] == ["spine"]
    unknown = client.post(
        "/v1/referrals", json={**body, "preferred_clinic_id": 99999}, headers=auth(keys["app"])
    )
    assert_problem(unknown, 422, "preferred_clinic_id")


# ---- privacy: distances locate no one more precisely than the stored origin ----------------


def _recover(points: list[tuple[float, float]], distances: list[float]) -> tuple[float, float]:
    """Trilaterate: the point whose distances to ``points`` best fit ``distances`` (least
    squares on a local plane, refined on a shrinking grid to 1 m)."""
    lat0, lon0 = HERE
    kx = 111.320 * math.cos(math.radians(lat0))
    ky = 110.574
    xy = [((lon - lon0) * kx, (lat - lat0) * ky) for lat, lon in points]

    def error(x: float, y: float) -> float:
        return sum(
            (math.hypot(x - px, y - py) - d) ** 2 for (px, py), d in zip(xy, distances, strict=True)
        )

    best = (0.0, 0.0)
    step = 0.5
    while step > 0.0005:
        cx, cy = best
        best = min(
            ((cx + i * step, cy + j * step) for i in range(-10, 11) for j in range(-10, 11)),
            key=lambda p: error(*p),
        )
        step /= 4
    return lat0 + best[1] / ky, lon0 + best[0] / kx


def test_distances_reveal_no_more_than_the_stored_origin(client, keys):
    admin = keys["admin"]
    for n, (km, bearing) in enumerate([(4, 10), (9, 130), (14, 250), (20, 310)]):
        place(client, admin, f"Clinic {n}", km, bearing)
    # Two patients in one ~1 km cell (both round to 40.00, -100.00), far from its centre.
    first = (40.0041, -100.0047)
    second = (39.9958, -99.9962)
    answers = [
        refer(client, keys["app"], origin={"lat": lat, "lon": lon}, concerns=["knee_pain"])
        for lat, lon in (first, second)
    ]

    def distances(answer: dict[str, Any]) -> list[float]:
        return [answer["match"]["distance_km"]] + [a["distance_km"] for a in answer["alternatives"]]

    assert distances(answers[0]) == distances(answers[1])
    assert answers[0]["origin"] == answers[1]["origin"] == {"kind": "coordinates", "lat": 40.0,
                                                            "lon": -100.0}  # fmt: skip
    answer = answers[0]
    located = [answer["match"]["location"]] + [
        client.get(f"/v1/clinics/{a['clinic_id']}/locations/{a['location_id']}").get_json()
        for a in answer["alternatives"]
    ]
    recovered = _recover([(loc["lat"], loc["lon"]) for loc in located], distances(answer))

    def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
        return float(Geodesic.WGS84.Inverse(a[0], a[1], b[0], b[1])["s12"])

    # The best an attacker gets is the stored cell's centre, not the patient.
    assert metres(recovered, HERE) < 150
    assert metres(recovered, first) > 400
    # The same distances in the admin's export.
    exported = client.get("/v1/referrals/export.csv", headers=auth(admin))
    rows = {row["id"]: row for row in csv.DictReader(io.StringIO(exported.get_data(as_text=True)))}
    assert float(rows[answer["id"]]["distance_km"]) == answer["match"]["distance_km"]
    assert all(round(d, 1) == d for d in distances(answer))  # to 100 m: no false precision either


# ---- public search speaks the same language -------------------------------------------------


def test_nearest_counts_and_can_include_possible_matches(client, keys):
    strict = client.get(
        "/v1/locations/nearest", query_string={"zip": "78201", "specialty": "spine", "limit": 3}
    ).get_json()
    # Only PRO Therapy is on record for spine; the rest are unknown and counted.
    assert {hit["clinic"]["name"] for hit in strict["results"]} == {"PRO Therapy"}
    assert all(hit["specialty_match"] == "confirmed" for hit in strict["results"])
    assert strict["excluded_unknown"]["specialty"] >= 30
    wider = client.get(
        "/v1/locations/nearest",
        query_string={"zip": "78201", "specialty": "spine", "include_possible": "true", "limit": 3},
    ).get_json()
    assert [hit["location"]["city"] for hit in wider["results"]] == ["San Antonio"] * 3
    assert all(hit["specialty_match"] == "possible" for hit in wider["results"])
    assert all(hit["specialties_unknown"] == ["spine"] for hit in wider["results"])
    assert "specialty" not in wider["excluded_unknown"]
    plain = client.get("/v1/locations/nearest", query_string={"zip": "78201"}).get_json()
    assert all(hit["specialty_match"] is None for hit in plain["results"])
    assert "specialty" not in plain["excluded_unknown"]

    # On record as not offering: never listed, not even as possible, and not counted unknown.
    san_antonio = {hit["clinic"]["id"] for hit in wider["results"]}
    located = 0
    for clinic_id in san_antonio:
        located += len(client.get(f"/v1/clinics/{clinic_id}").get_json()["locations"])
        etag = client.get(f"/v1/clinics/{clinic_id}").headers["ETag"]
        client.patch(f"/v1/clinics/{clinic_id}", json={"specialties_not_offered": ["spine"]},
                     headers=auth(keys["admin"], **{"If-Match": etag}))  # fmt: skip
    after = client.get(
        "/v1/locations/nearest",
        query_string={"zip": "78201", "specialty": "spine", "include_possible": "true", "limit": 3},
    ).get_json()
    assert not san_antonio & {hit["clinic"]["id"] for hit in after["results"]}
    counted = client.get(
        "/v1/locations/nearest", query_string={"zip": "78201", "specialty": "spine"}
    ).get_json()
    # Texas Physical Therapy Specialists has an Austin location too: 4 locations in all.
    assert located == 4
    assert counted["excluded_unknown"]["specialty"] == strict["excluded_unknown"]["specialty"] - 4


def test_clinic_list_counts_unknown_specialties_too(client):
    strict = client.get("/v1/clinics", query_string={"specialty": "spine"})
    assert [c["name"] for c in strict.get_json()] == ["PRO Therapy"]
    total = len(client.get("/v1/clinics", query_string={"page_size": 100}).get_json())
    assert strict.headers["X-Excluded-Unknown"] == f'{{"specialty": {total - 1}}}'
    wider = client.get("/v1/clinics", query_string={"specialty": "spine", "include_possible": "1"})
    assert len(wider.get_json()) == 20  # a full page
    assert "X-Excluded-Unknown" not in wider.headers
    facts = client.get("/v1/clinics", query_string={"specialty": "spine", "telehealth": "true"})
    assert facts.get_json() == []
    # Every clinic but PRO Therapy is unknown for spine (and all for telehealth).
    assert facts.headers["X-Excluded-Unknown"] == (
        f'{{"specialty": {total - 1}, "telehealth": {total}}}'
    )


# ---- the record: admin API, public JSON, change log, review queue, seed --------------------


def test_admin_sets_offered_not_offered_and_unknown(app, client, keys):
    clinic = place(client, keys["admin"], "Evidence PT", 5, 0, specialties=["spine"])
    url = f"/v1/clinics/{clinic['clinic_id']}"

    def patch(body: dict[str, Any], status: int = 200) -> Any:
        etag = client.get(url).headers["ETag"]
        response = client.patch(url, json=body, headers=auth(keys["writer"], **{"If-Match": etag}))
        assert response.status_code == status, response.get_json()
        return response

    body = patch({"specialties_not_offered": ["spine", "pelvic_health"]}).get_json()
    # The newer statement wins: spine moved from offered to not offered.
    assert body["specialties"] == []
    assert body["specialties_not_offered"] == ["pelvic_health", "spine"]
    reasons = {item["code"]: item for item in body["specialty_reasons"]}
    assert reasons["spine"]["offered"] is False
    assert reasons["spine"]["source"] == "api key data-team"
    assert "not offered" in reasons["spine"]["reason"]
    both = patch({"specialties": ["sports"], "specialties_not_offered": ["sports"]}, 422)
    assert_problem(both, 422, "specialties_not_offered")
    body = patch({"specialties": ["sports", "pelvic_health"]}).get_json()
    assert body["specialties"] == ["pelvic_health", "sports"]
    assert body["specialties_not_offered"] == ["spine"]
    body = patch({"specialties": [], "specialties_not_offered": []}).get_json()
    assert body["specialties"] == body["specialties_not_offered"] == body["specialty_reasons"] == []

    changes = client.get(
        "/v1/admin/audit", query_string={"clinic_id": clinic["clinic_id"]},
        headers=auth(keys["admin"]),
    ).get_json()  # fmt: skip
    first_edit = changes[-3]  # newest first: create, location, then the first PATCH
    assert first_edit["diff"]["specialties_not_offered"] == [[], ["pelvic_health", "spine"]]
    assert first_edit["diff"]["specialties"] == [["spine"], []]
    unknown = client.post("/v1/clinics", json={"name": "X", "specialties_not_offered": ["astro"]},
                          headers=auth(keys["admin"]))  # fmt: skip
    assert_problem(unknown, 422, "specialties_not_offered")


def test_review_queue_lists_clinics_with_no_specialty_on_record(app, client, keys):
    items = client.get(
        "/v1/admin/review", query_string={"reason": "specialties_unknown", "page_size": 200},
        headers=auth(keys["admin"]),
    ).get_json()  # fmt: skip
    with Session(get_database(app).engine) as session:
        with_evidence = set(session.exec(select(ClinicSpecialty.clinic_id)).all())
        clinics = set(session.exec(select(Clinic.id).where(Clinic.active)).all())
    assert {item["clinic_id"] for item in items} == clinics - with_evidence
    assert all("no specialty on record" in " ".join(item["reasons"]) for item in items)


def test_review_queue_puts_waiting_referrals_first_most_urgent_first(client, keys):
    routine = refer(client, keys["app"], origin={"zip": "99501"}, concerns=["low_back_pain"])
    urgent = refer(client, keys["app"], origin={"zip": "99501"}, concerns=["low_back_pain"],
                   red_flags=["saddle_numbness"])  # fmt: skip
    items = client.get("/v1/admin/review", query_string={"page_size": 200},
                       headers=auth(keys["admin"])).get_json()  # fmt: skip
    assert [item["referral_id"] for item in items[:2]] == [urgent["id"], routine["id"]]
    assert items[0]["urgency"] == "urgent" and items[0]["clinic_id"] is None
    assert all(item["kind"] != "referral" for item in items[2:])


def test_seeded_specialties_carry_their_source(app):
    with Session(get_database(app).engine) as session:
        links = session.exec(select(ClinicSpecialty)).all()
        assert links and all(link.offered for link in links)
        sources = {link.source for link in links}
    assert sources <= {"000_e6b503c46ad2e93a.txt", "003_509d6912eafce3c0.txt"}
    assert "003_509d6912eafce3c0.txt" in sources


def test_the_migration_rounds_distances_stored_from_exact_origins(empty_database_url):
    app = build_app(empty_database_url)
    try:
        migrations.upgrade(app, "0007_directory_revision")
        now = utcnow()
        alternatives = [{"clinic_id": 1, "distance_km": 12.345}, {"clinic_id": 2}]
        with get_database(app).engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO referral (id, source, status, urgency, urgency_requested, "
                    "concerns, red_flags, specialties_requested, specialties_needed, escalations, "
                    "origin_kind, origin_lat, origin_lon, match_distance_km, match_notes, "
                    "alternatives, created_at, updated_at, version) VALUES (:id, 'app', "
                    "'created', 'routine', 'routine', '[]', '[]', '[]', '[]', '[]', 'zip', 29.46, "
                    "-98.52, 3.456, '[]', :alternatives, :now, :now, 1)"
                ),
                {"id": "a" * 32, "alternatives": json.dumps(alternatives), "now": now},
            )
        migrations.upgrade(app)
        with Session(get_database(app).engine) as session:
            referral = session.get(Referral, "a" * 32)
            assert referral is not None
            assert referral.match_distance_km == 3.0
            assert referral.alternatives == [
                {"clinic_id": 1, "distance_km": 12.0},
                {"clinic_id": 2},
            ]
            assert referral.reach_km is None and referral.match_why is None
    finally:
        get_database(app).dispose()
