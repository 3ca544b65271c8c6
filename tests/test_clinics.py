"""Listing, filtering and reading clinics; specialties; CORS, ETag and caching."""

from __future__ import annotations

import json

from tests.helpers import assert_problem, auth

ORIGIN = {"Origin": "https://site.example"}


def pagination(response) -> dict:
    return json.loads(response.headers["X-Pagination"])


def test_list_is_paginated_with_total(client):
    first = client.get("/v1/clinics?page_size=10")
    assert first.status_code == 200
    assert pagination(first)["total"] == 31
    assert pagination(first)["total_pages"] == 4
    assert len(first.get_json()) == 10
    pages = [client.get(f"/v1/clinics?page_size=10&page={n}").get_json() for n in (1, 2, 3, 4)]
    ids = [clinic["id"] for page in pages for clinic in page]
    assert len(ids) == len(set(ids)) == 31
    # Named clinics first, alphabetically; the unnamed ones last.
    names = [clinic["name"] for page in pages for clinic in page]
    assert names[-3:] == [None, None, None]
    assert names[:28] == sorted(names[:28], key=str)


def test_default_page_size(client):
    assert len(client.get("/v1/clinics").get_json()) == 20


def test_filter_by_name(client):
    names = [c["name"] for c in client.get("/v1/clinics?q=prorehab").get_json()]
    assert names == ["ProRehab Inc", "ProRehab Physical Therapy"]
    # LIKE wildcards in q are literal text.
    assert client.get("/v1/clinics?q=%25").get_json() == []
    assert client.get("/v1/clinics?q=_").get_json() == []


def test_filter_by_specialty_city_state_zip(client):
    sports = {c["name"] for c in client.get("/v1/clinics?specialty=sports").get_json()}
    assert sports == {
        "Xcel Sports Medicine",
        "Orthopedic & Sports Physical Therapy",
        "Tallahassee Orthopedic & Sports Physical Therapy",
        "PRO Therapy",
    }
    both = client.get("/v1/clinics?specialty=sports&specialty=running").get_json()
    assert [c["name"] for c in both] == ["PRO Therapy"]
    san_antonio = {c["name"] for c in client.get("/v1/clinics?city=san antonio").get_json()}
    assert san_antonio == {
        "Evidence in Motion (EIM)",
        "Fit for Work",
        "Texas Physical Therapy Specialists",
    }
    kentucky = client.get("/v1/clinics?state=ky&page_size=100")
    assert pagination(kentucky)["total"] == 4  # Lexington, Confluent, ProRehab x2
    assert [c["name"] for c in client.get("/v1/clinics?zip=554").get_json()] == ["PRO Therapy"]
    assert client.get("/v1/clinics?zip=9").get_json() == []


def test_clinic_by_id_has_locations_specialties_and_source(client):
    listed = client.get("/v1/clinics?q=PRO Therapy").get_json()[0]
    clinic = client.get(f"/v1/clinics/{listed['id']}").get_json()
    assert clinic["name"] == "PRO Therapy"
    assert clinic["phone"] is None
    assert clinic["needs_review"] is True
    assert "phone missing in source" in clinic["review_reasons"]
    assert {loc["city"] for loc in clinic["locations"]} == {"Minneapolis", "Coon Rapids"}
    assert set(clinic["specialties"]) == {r["code"] for r in clinic["specialty_reasons"]}
    assert all(r["reason"] for r in clinic["specialty_reasons"])
    assert clinic["source"]["file"] == "003_509d6912eafce3c0.txt"
    assert "2112 Broadway Street NE," in clinic["source"]["text"]
    for location in clinic["locations"]:
        assert location["geocode_precision"] == "postal_code"
        assert location["geocode_source"]


def test_specialties_vocabulary(client):
    specialties = client.get("/v1/specialties").get_json()
    by_code = {s["code"]: s for s in specialties}
    assert by_code["sports"]["nucc_taxonomy"] == "2251S0007X"
    assert by_code["orthopedic"]["nucc_taxonomy"] == "2251X0800X"
    assert by_code["running"]["nucc_taxonomy"] is None
    assert [s["code"] for s in specialties] == sorted(by_code)


def test_cors_open_for_public_gets(client):
    for url in ("/v1/clinics", "/v1/specialties", "/v1/locations/nearest?zip=78201"):
        response = client.get(url, headers={"Origin": "https://site.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    exposed = client.get("/v1/clinics", headers={"Origin": "https://a.example"}).headers
    assert "X-Pagination" in exposed["Access-Control-Expose-Headers"]
    preflight = client.options(
        "/v1/clinics",
        headers={"Origin": "https://site.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" not in preflight.headers.get("Access-Control-Allow-Methods", "")


def test_cors_not_open_outside_the_public_api(client):
    response = client.get("/openapi.json", headers={"Origin": "https://site.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def cors_headers(response) -> list[str]:
    return [name for name, _ in response.headers if name.lower().startswith("access-control")]


def test_cors_stays_closed_for_directory_writes(client, editor):
    # Public paths, but not reads: no CORS for the write, its refusal or its preflight.
    made = client.post(
        "/v1/clinics", json={"name": "Cors Clinic"}, headers=auth(editor["admin"], **ORIGIN)
    )
    assert made.status_code == 201, made.get_json()
    assert cors_headers(made) == []
    refused = client.post("/v1/clinics", json={"name": "X"}, headers=ORIGIN)
    assert_problem(refused, 401)
    assert cors_headers(refused) == []
    clinic = f"/v1/clinics/{made.get_json()['id']}"
    for url, method in (("/v1/clinics", "POST"), (clinic, "PATCH"), (clinic, "DELETE"),
                        (f"{clinic}/locations", "POST")):  # fmt: skip
        preflight = client.options(
            url,
            headers={**ORIGIN, "Access-Control-Request-Method": method,
                     "Access-Control-Request-Headers": "authorization, content-type, if-match"},
        )  # fmt: skip
        assert cors_headers(preflight) == [], (url, method)
    # A plain OPTIONS is no preflight: nothing either.
    assert cors_headers(client.options("/v1/clinics", headers=ORIGIN)) == []
    # The public reads keep theirs, errors and preflights included.
    for url in (clinic, "/v1/clinics/999999", "/v1/locations/nearest?zip=00000"):
        assert client.get(url, headers=ORIGIN).headers["Access-Control-Allow-Origin"] == "*", url
        preflight = client.options(url, headers={**ORIGIN, "Access-Control-Request-Method": "GET"})
        assert preflight.headers["Access-Control-Allow-Origin"] == "*", url
        assert preflight.headers["Access-Control-Allow-Methods"], url


def test_etag_and_not_modified(client):
    for url in ("/v1/clinics?state=TX", "/v1/specialties", "/v1/locations/nearest?zip=78201"):
        first = client.get(url)
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"].startswith("public, max-age=")
        again = client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.get_data() == b""
        changed = client.get(url, headers={"If-None-Match": '"stale"'})
        assert changed.status_code == 200


def test_errors_are_not_cached_publicly(client):
    response = client.get("/v1/locations/nearest?zip=00000")
    assert_problem(response, 422, "zip")
    assert "public" not in response.headers.get("Cache-Control", "")


def test_creation_answers_the_etag_a_get_would(client, editor):
    # A client may PATCH right after creating, with no GET in between.
    made = client.post("/v1/clinics", json={"name": "Etag Clinic"}, headers=auth(editor["writer"]))
    assert made.status_code == 201, made.get_json()
    url = made.headers["Location"]
    seen = client.get(url, headers=auth(editor["writer"]))
    assert made.headers["ETag"] == seen.headers["ETag"]
    place = client.post(
        f"{url}/locations",
        json={"city": "Minneapolis", "state": "MN", "lat": 44.95, "lon": -93.29},
        headers=auth(editor["writer"]),
    )
    assert place.status_code == 201, place.get_json()
    where = place.headers["Location"]
    assert (
        place.headers["ETag"] == client.get(where, headers=auth(editor["writer"])).headers["ETag"]
    )
    moved = client.patch(
        where,
        json={"address_line1": "1 Lake St"},
        headers=auth(editor["writer"], **{"If-Match": place.headers["ETag"]}),
    )
    assert moved.status_code == 200, moved.get_json()
    # The clinic's ETag changed with its location: the one from creation is stale now, and
    # the 412 says how to recover.
    renamed = client.patch(
        url,
        json={"name": "Etag Clinic Two"},
        headers=auth(editor["writer"], **{"If-Match": made.headers["ETag"]}),
    )
    body = assert_problem(renamed, 412, "If-Match")
    assert "fetch it again" in body["detail"]
    current = client.get(url, headers=auth(editor["writer"])).headers["ETag"]
    renamed = client.patch(
        url,
        json={"name": "Etag Clinic Two"},
        headers=auth(editor["writer"], **{"If-Match": current}),
    )
    assert renamed.status_code == 200, renamed.get_json()


def test_creation_etag_is_in_the_spec(app):
    paths = app.extensions["referral_api"].spec.to_dict()["paths"]
    for path in ("/v1/clinics", "/v1/clinics/{clinic_id}/locations"):
        assert "ETag" in paths[path]["post"]["responses"]["201"]["headers"], path
