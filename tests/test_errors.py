"""Bad input gets a 4xx problem+json naming the field; never a 500."""

from __future__ import annotations

import pytest

from tests.helpers import assert_problem, auth

NEAREST = "/v1/locations/nearest"

# (query string, status, field named)
NEAREST_CASES = [
    ("zip=00000", 422, "zip"),  # well formed, but no such ZIP
    ("zip=abcde", 422, "zip"),
    ("zip=7820", 422, "zip"),
    ("lat=91&lon=0", 422, "lat"),
    ("lat=-90.5&lon=0", 422, "lat"),
    ("lat=0&lon=181", 422, "lon"),
    ("lat=NaN&lon=0", 422, "lat"),
    ("lat=inf&lon=0", 422, "lat"),
    ("lat=abc&lon=0", 422, "lat"),
    ("lat=10", 422, "lon"),
    ("lon=10", 422, "lat"),
    ("zip=78201&lat=29&lon=-98", 422, "zip"),
    ("zip=78201&lat=29&lon=-98", 422, "lat"),
    ("zip=78201&city=Austin&state=TX", 422, "city"),
    ("zip=78201&address=1 Main St, Austin, TX", 422, "address"),
    ("", 422, "origin"),
    ("limit=3", 422, "origin"),
    ("zip=78201&specialty=underwater_basket_weaving", 422, "specialty"),
    ("zip=78201&specialty=sports&specialty=nope", 422, "specialty"),
    ("zip=78201&radius=0", 422, "radius"),
    ("zip=78201&radius=-5", 422, "radius"),
    ("zip=78201&radius=100000", 422, "radius"),
    ("zip=78201&radius=4000&unit=mi", 422, "radius"),
    ("zip=78201&radius=abc", 422, "radius"),
    ("zip=78201&radius=NaN", 422, "radius"),
    ("zip=78201&unit=furlongs", 422, "unit"),
    ("zip=78201&limit=0", 422, "limit"),
    ("zip=78201&limit=51", 422, "limit"),
    ("zip=78201&limit=2.5", 422, "limit"),
    ("city=Austin", 422, "state"),
    ("state=TX", 422, "city"),
    ("city=Austin&state=ZZ", 422, "state"),
    ("city=Nowhereville&state=TX", 422, "city"),
    ("address=zzzz", 422, "address"),
    ("address=a", 422, "address"),
    (f"address={'x' * 301}", 422, "address"),
    (f"city={'x' * 101}&state=TX", 422, "city"),
]


@pytest.mark.parametrize(("query", "status", "field"), NEAREST_CASES)
def test_nearest_rejects(client, query, status, field):
    assert_problem(client.get(f"{NEAREST}?{query}"), status, field)


def test_two_origins_names_every_field_given(client):
    body = assert_problem(client.get(f"{NEAREST}?zip=78201&lat=29&lon=-98"), 422)
    assert {p["name"] for p in body["invalid_params"]} == {"zip", "lat", "lon"}
    assert all(p["location"] == "query" for p in body["invalid_params"])


CLINIC_CASES = [
    ("/v1/clinics?page_size=1000", 422, "page_size"),
    ("/v1/clinics?page_size=0", 422, "page_size"),
    ("/v1/clinics?page=0", 422, "page"),
    ("/v1/clinics?page=abc", 422, "page"),
    ("/v1/clinics?specialty=nope", 422, "specialty"),
    ("/v1/clinics?state=Texas", 422, "state"),
    ("/v1/clinics?zip=7820a", 422, "zip"),
    ("/v1/clinics?zip=123456", 422, "zip"),
    (f"/v1/clinics?q={'x' * 101}", 422, "q"),
    ("/v1/clinics/999999", 404, "clinic_id"),
]


@pytest.mark.parametrize(("url", "status", "field"), CLINIC_CASES)
def test_clinics_reject(client, url, status, field):
    assert_problem(client.get(url), status, field)


def test_unknown_route_and_method_are_problems(client):
    assert_problem(client.get("/v1/nope"), 404)
    assert_problem(client.get("/v1/clinics/abc"), 404)
    response = client.post("/v1/specialties", json={"code": "x"})
    assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


def test_problem_instance_is_the_path(client):
    body = assert_problem(client.get(f"{NEAREST}?zip=00000"), 422, "zip")
    assert body["instance"] == NEAREST
    assert "00000" in body["detail"]


def test_error_responses_do_not_change_the_directory(client):
    before = client.get("/v1/clinics?page_size=100").get_json()
    for query, _, _ in NEAREST_CASES:
        client.get(f"{NEAREST}?{query}")
    assert client.get("/v1/clinics?page_size=100").get_json() == before


def test_unexpected_errors_are_problems_without_internals(app, client, monkeypatch):
    from referral.directory import views

    def broken(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views, "find_nearest", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get(f"{NEAREST}?zip=78201")
    body = assert_problem(response, 500)
    assert "secret" not in response.get_data(as_text=True)
    assert body["detail"] == "The server could not complete the request."


def test_nul_is_refused_alike_in_a_query_and_in_a_body(client, editor):
    # One status wherever a NUL is sent: the text is well-formed, but no field takes it.
    assert_problem(client.get(f"{NEAREST}?city=a%00b&state=TX"), 422, "city")
    body = client.post(
        "/v1/clinics",
        data='{"name": "Clinic \\u0000"}',
        content_type="application/json",
        headers=auth(editor["admin"]),
    )
    assert_problem(body, 422, "name")
    # A lone surrogate is not text at all: still a 400.
    surrogate = client.post(
        "/v1/clinics",
        data='{"name": "Clinic \\udc00"}',
        content_type="application/json",
        headers=auth(editor["admin"]),
    )
    assert_problem(surrogate, 400, "name")
