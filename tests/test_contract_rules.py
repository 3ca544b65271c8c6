"""The rules contract fuzzing made the spec state, checked one by one (in-process).

tests/test_contract.py proves the service and openapi.yaml agree as a whole; these pin the
individual decisions, so a regression names itself.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from referral.web.fields import load_vocabularies
from tests.conftest import REPO_ROOT
from tests.helpers import assert_problem, auth

ISO_WITH_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?[+-]\d{2}:\d{2}")


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text(encoding="utf-8"))


def clinic(client, q: str = "Shea") -> tuple[str, str]:
    found = client.get("/v1/clinics", query_string={"q": q}).get_json()[0]
    url = f"/v1/clinics/{found['id']}"
    return url, client.get(url).headers["ETag"]


def test_timestamps_always_carry_their_offset(client):
    body = client.get("/v1/clinics").get_json()
    stamps = [body[0]["updated_at"], *(loc["updated_at"] for loc in body[0]["locations"])]
    assert all(ISO_WITH_OFFSET.fullmatch(stamp) for stamp in stamps), stamps


def test_pagination_header_is_json_as_documented(client, spec):
    page = client.get("/v1/clinics", query_string={"page_size": 2})
    assert json.loads(page.headers["X-Pagination"])["page"] == 1
    header = spec["components"]["headers"]["PAGINATION"]
    assert list(header["content"]) == ["application/json"]


@pytest.mark.parametrize("page", ["100001", "+100001", " 100001"])
def test_pages_beyond_the_documented_maximum_are_refused(client, spec, page):
    assert_problem(client.get("/v1/clinics", query_string={"page": page}), 422, "page")
    parameters = spec["paths"]["/v1/clinics"]["get"]["parameters"]
    (documented,) = [p for p in parameters if p.get("name") == "page"]
    assert documented["schema"]["maximum"] == 100_000


@pytest.mark.parametrize(
    ("value", "status"),
    [(None, 428), ("", 400), ("abc", 400), ('"unterminated', 400), ('"stale"', 412),
     ('W/"stale", "other"', 412)],
)  # fmt: skip
def test_if_match_missing_malformed_or_stale(client, editor, value, status):
    url, _ = clinic(client)
    headers = (
        auth(editor["admin"]) if value is None else auth(editor["admin"], **{"If-Match": value})
    )
    problem = assert_problem(client.patch(url, json={"active": True}, headers=headers), status)
    if status == 400:
        assert problem["invalid_params"][0]["name"] == "If-Match"


def test_if_match_star_and_current_etag_are_accepted(client, editor):
    url, etag = clinic(client)
    for value in (etag, "*"):
        response = client.patch(url, json={}, headers=auth(editor["admin"], **{"If-Match": value}))
        assert response.status_code == 200, response.get_json()


def test_options_lists_only_the_methods_of_that_path(client):
    for path in ("/v1/referrals/stats", "/v1/referrals/export.csv"):
        allowed = set(client.options(path).headers["Allow"].split(", "))
        assert allowed == {"GET", "HEAD", "OPTIONS"}, path
    by_id = client.options("/v1/referrals/" + "a" * 32).headers["Allow"]
    assert "PATCH" in by_id


def test_a_malformed_referral_id_is_still_a_named_404(client, editor):
    response = client.get("/v1/referrals/not-an-id", headers=auth(editor["admin"]))
    assert_problem(response, 404, "referral_id")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"telehealth": 0}, "telehealth"),
     ({"accepting_new_patients": "yes"}, "accepting_new_patients"),
     ({"lat": "44.9", "lon": -93.2}, "lat"), ({"lat": True, "lon": -93.2}, "lat"),
     # "\u017f" (long s) upper-cases to "S": "K\u017f" must not pass for KS.
     ({"state": "K\u017f"}, "state"), ({"state": " TX"}, "state")],
)  # fmt: skip
def test_json_bodies_take_json_types_and_plain_state_codes(client, editor, body, field):
    url, _ = clinic(client)
    place = {"city": "Minneapolis", "state": "MN", **body}
    response = client.post(f"{url}/locations", json=place, headers=auth(editor["admin"]))
    assert_problem(response, 422, field)


def test_state_codes_take_any_case(client, editor):
    url, _ = clinic(client)
    place = {"city": "Minneapolis", "state": "mN", "lat": 44.97, "lon": -93.26}
    made = client.post(f"{url}/locations", json=place, headers=auth(editor["admin"]))
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["state"] == "MN"


@pytest.mark.parametrize(
    "website",
    ["javascript:alert(1)", "http://localhost", "https://exa mple.com", "ftp://files.example",
     "https://example.com/\u00e9"],
)  # fmt: skip
def test_websites_follow_the_documented_pattern(client, editor, spec, website):
    response = client.post("/v1/clinics", json={"name": "X", "website": website},
                           headers=auth(editor["admin"]))  # fmt: skip
    assert_problem(response, 422, "website")
    pattern = spec["components"]["schemas"]["ClinicCreate"]["properties"]["website"]["pattern"]
    assert re.fullmatch(pattern, website) is None


@pytest.mark.parametrize(
    "exceptions",
    [[{"date": "2026-12-25", "closed": "yes"}],
     [{"date": "2026-12-25", "closed": True, "note": 7}],
     [{"date": "2026-12-25", "closed": True, "note": "x" * 201}],
     [{"date": "20261225", "closed": True}]],
)  # fmt: skip
def test_hours_exceptions_are_exactly_as_documented(client, editor, exceptions):
    url, _ = clinic(client)
    place = {"city": "Minneapolis", "state": "MN", "hours_exceptions": exceptions}
    response = client.post(f"{url}/locations", json=place, headers=auth(editor["admin"]))
    assert_problem(response, 422, "hours_exceptions")


def test_the_spec_lists_the_seeded_vocabularies(spec):
    codes = load_vocabularies(REPO_ROOT / "seed_data")
    body = spec["components"]["schemas"]["ReferralCreate"]["properties"]
    assert body["concerns"]["items"]["enum"] == codes["concerns"]
    assert body["red_flags"]["items"]["enum"] == codes["red_flags"]
    assert body["specialties"]["items"]["enum"] == codes["specialties"]


def test_declining_needs_a_note_in_the_spec_too(spec):
    body = spec["paths"]["/v1/referrals/{referral_id}"]["patch"]["requestBody"]
    forms = body["content"]["application/json"]["schema"]["oneOf"]
    schemas = spec["components"]["schemas"]
    decline = schemas[forms[1]["$ref"].rsplit("/", 1)[-1]]
    assert decline["properties"]["status"]["enum"] == ["declined"]
    assert "note" in decline["required"]
    move = schemas[forms[0]["$ref"].rsplit("/", 1)[-1]]
    assert "declined" not in move["properties"]["status"]["enum"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/clinics", {"name": "   "}, "name"),
    ("/v1/clinics", {"name": "\u00a0\u2003"}, "name"),
    ("LOCATIONS", {"city": " ", "state": "TX", "lat": 30.0, "lon": -97.0}, "city"),
    ("LOCATIONS", {"city": "Austin", "state": "TX", "address_line1": "  "}, "address_line1"),
])  # fmt: skip
def test_names_and_places_are_not_blank(client, editor, spec, path, body, field):
    url, _ = clinic(client)
    response = client.post(path.replace("LOCATIONS", f"{url}/locations"), json=body,
                           headers=auth(editor["admin"]))  # fmt: skip
    assert_problem(response, 422, field)
    pattern = spec["components"]["schemas"]["ClinicCreate"]["properties"]["name"]["pattern"]
    assert re.fullmatch(pattern, body[field]) is None


def test_json_import_rows_take_text_as_text(client, editor):
    row = {"clinic_name": "Zed PT", "city": "Austin", "state": "TX", "zip": 78701}
    response = client.post("/v1/admin/imports", query_string={"dry_run": "true"}, json=[row],
                           headers=auth(editor["admin"]))  # fmt: skip
    assert [(e["row"], e["field"]) for e in response.get_json()["errors"]] == [(1, "zip")]
