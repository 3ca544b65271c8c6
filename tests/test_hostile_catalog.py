"""A catalog of hostile and malformed requests: each is refused with its exact 4xx as an RFC 9457
problem (application/problem+json naming the field at fault, where there is one), and nothing
stored changes.

"Nothing stored changes" means, for every table found in the database (by reflection, so new
tables are covered too), the multiset of rows is identical before and after the request, with
two exceptions that are part of the design and asserted precisely instead:

- ``audit_event``: a request that reached the referral API with a real key (usable, revoked or
  expired) adds exactly one row recording the refusal (outcome never "ok" or "replayed"); any
  other request adds none (a request without a real key is limited per IP instead, issue #15
  item 1); no row changes.
- ``api_key.last_used_at``: authentication stamps a valid key's use (at most once a minute)
  before scopes or bodies are checked. It records use, not content, and is left out.

Most cases run in-process against one world per backend (seeded directory, keys of every kind,
two referrals with an idempotency record, an admin edit). Transport cases that only a real
server shows (chunked bodies, raw header bytes) run against gunicorn over raw sockets.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlmodel import Session, select

from referral.auth.keys import create_key, revoke_key
from referral.auth.models import ApiKey
from referral.db import get_database
from referral.directory.models import Clinic
from referral.timeutil import utcnow
from tests.conftest import build_app
from tests.dbscan import Snapshot, changed_rows, snapshot
from tests.live import Served, serve

BODY = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}
BODY_TEXT = json.dumps(BODY)
JSON = "application/json"
PROBLEM = "application/problem+json"
LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH's default
_NO_BODY = object()
# Outcomes of audit rows that record success; a refusal must never be recorded as one.
SUCCESS_OUTCOMES = {"ok", "replayed"}


# --- the world every case runs against ------------------------------------------------------


@dataclass
class World:
    url: str
    app: Flask
    keys: dict[str, str]
    ids: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def engine(self) -> sa.Engine:
        return get_database(self.app).engine

    def fill(self, text: str) -> str:
        return text.format(**self.keys, **self.ids)


def _make_keys(app: Flask) -> dict[str, str]:
    with Session(get_database(app).engine) as session:

        def clinic(seed_key: str) -> int:
            found = session.exec(select(Clinic.id).where(Clinic.seed_key == seed_key)).one()
            assert found is not None
            return found

        def make(name: str, scopes: list[str], **kwargs: Any) -> str:
            return create_key(session, name=name, scopes=scopes, **kwargs)[1]

        keys = {
            "app": make("catalog-app", ["referrals:write"]),
            "victim": make("victim-app", ["referrals:write"]),
            "admin": make("catalog-ops", ["admin"]),
            "dashboard": make("catalog-dashboard", ["referrals:read"]),
            "writer": make("catalog-data-team", ["clinics:write"]),
            "pro": make("pro-desk", ["referrals:status", "referrals:read"],
                        clinic_id=clinic("pro-therapy")),
            "shea": make("shea-desk", ["referrals:status"], clinic_id=clinic("shea-pt")),
            "revoked": make("revoked-ops", ["admin"]),
            "expired": make("expired-ops", ["admin"], expires_at=utcnow() + timedelta(days=1)),
        }  # fmt: skip
        revoke_key(session, keys["revoked"].split("_")[1])
        session.commit()
    # Keys cannot be made already expired: move the expiry into the past in the table.
    with get_database(app).engine.begin() as connection:
        connection.execute(
            sa.update(ApiKey)
            .where(ApiKey.key_id == keys["expired"].split("_")[1])
            .values(expires_at=utcnow() - timedelta(hours=1))
        )
    key_id = keys["app"].split("_")[1]
    keys["wrong_secret"] = f"rk_{key_id}_{'A' * 43}"
    keys["unknown"] = f"rk_{'0' * 12}_{'B' * 43}"
    return keys


def _populate(world: World) -> None:
    client = world.app.test_client()

    def ok(response: Any, status: int = 201) -> Any:
        assert response.status_code == status, response.get_data(as_text=True)
        return response

    def bearer(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.keys[name]}"}

    own = ok(client.post("/v1/referrals", json=BODY, headers=bearer("app"))).get_json()
    victim = ok(
        client.post(
            "/v1/referrals",
            json={**BODY, "patient_ref": "victim-ref-1", "assessment": {"pain": 6}},
            headers={**bearer("victim"), "Idempotency-Key": "victim-1"},
        )
    ).get_json()
    assert victim["match"]["clinic"]["name"] == "PRO Therapy"
    clinic = ok(
        client.post(
            "/v1/clinics",
            json={"name": "Catalog Clinic", "phone": "(612) 555-0147"},
            headers=bearer("writer"),
        )
    ).get_json()
    location = ok(
        client.post(
            f"/v1/clinics/{clinic['id']}/locations",
            json={"city": "Minneapolis", "state": "MN", "lat": 44.95, "lon": -93.29},
            headers=bearer("writer"),
        )
    ).get_json()
    etag = ok(client.get(f"/v1/clinics/{clinic['id']}", headers=bearer("writer")), 200)
    world.ids.update(
        own=own["id"],
        victim_referral=victim["id"],
        clinic=clinic["id"],
        location=location["id"],
        clinic_etag=etag.headers["ETag"],
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One seeded database per backend for the whole catalog: every case must leave it as it
    found it, which each case checks, so sharing it is safe and fast."""
    server = None
    name = ""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path_factory.mktemp("catalog") / "referral.db"
        shutil.copyfile(template, target)
        url = f"sqlite:///{target}"
    else:
        server = request.getfixturevalue("postgres")
        name = f"referral_catalog_{uuid.uuid4().hex[:12]}"
        url = server.create(name, template=request.getfixturevalue("postgres_template"))
    app = build_app(url)
    world = World(url, app, _make_keys(app))
    _populate(world)
    yield world
    get_database(app).dispose()
    if server is not None:
        server.drop(name)


# --- the catalog ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # {own}, {victim_referral}, {clinic}, {location}, {<key name>} are filled in
    status: int
    field: str | None = None  # the field the problem must name (or a parent of it)
    key: str | None = "app"  # which key authenticates; None: no Authorization header
    json: Any = _NO_BODY
    data: str | bytes | None = None  # a raw body (with content_type)
    content_type: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    if_match: bool = False  # send the clinic's current ETag
    audited: bool | None = None  # None: when the path is under /v1/referrals


def C(id: str, method: str, path: str, status: int, field: str | None = None, **kw: Any) -> Any:
    return pytest.param(Case(id, method, path, status, field, **kw), id=id)


def post_raw(id: str, text: str | bytes, status: int, field: str | None = None, **kw: Any) -> Any:
    """A referral POST with a raw JSON body."""
    return C(id, "POST", "/v1/referrals", status, field, data=text, content_type=JSON, **kw)


def post_with(
    id: str, extra: dict[str, Any], status: int, field: str | None = None, **kw: Any
) -> Any:
    """A referral POST of the valid body with ``extra`` merged in."""
    return C(id, "POST", "/v1/referrals", status, field, json={**BODY, **extra}, **kw)


def with_origin(id: str, origin: str, status: int, field: str) -> Any:
    text = f'{{"origin": {origin}, "concerns": ["running_low_back_pain"]}}'
    return post_raw(id, text, status, field)


W = {"key": "writer"}  # directory maintenance
A = {"key": "admin"}
BIG = "x" * (LIMIT + 1024)
CLINIC = "/v1/clinics"
LOCATIONS = "/v1/clinics/{clinic}/locations"
OWN = "/v1/referrals/{own}"
VICTIM = "/v1/referrals/{victim_referral}"
NEAREST = "/v1/locations/nearest"

CATALOG = [
    # --- oversized bodies (chunked ones are in LIVE_CATALOG) ---
    post_with("oversized-referral-body", {"assessment": {"x": BIG}}, 413),
    C("oversized-clinic-body", "POST", CLINIC, 413, json={"name": BIG}, **W),
    C("oversized-location-body", "POST", LOCATIONS, 413, json={"city": BIG}, **W),
    C("oversized-status-change", "PATCH", OWN, 413, json={"status": "cancelled", "note": BIG}),
    # --- malformed JSON ---
    post_raw("json-garbage", "{not json", 400),
    post_raw("json-truncated", '{"origin": {"zip": "55413"', 400),
    post_raw("json-trailing-garbage", BODY_TEXT + " xyz", 400),
    post_raw("json-single-quotes", BODY_TEXT.replace('"', "'"), 400),
    post_raw("json-invalid-utf8", b'{"concerns": ["\xff\xfe"]}', 400),
    post_raw("json-deeply-nested", "[" * 5000 + "]" * 5000, 400),
    post_raw(
        "json-number-5000-digits", BODY_TEXT[:-1] + ', "assessment": {"s": %s}}' % ("9" * 5000), 400
    ),
    post_raw("json-array-not-object", "[]", 422),
    post_raw("json-scalar-not-object", '"referral"', 422),
    post_raw("json-empty-body", "", 422, "origin"),
    post_raw(
        "json-escaped-nul",
        '{"origin": {"zip": "55413"}, "concerns": ["a\\u0000"]}',
        422,
        "concerns.0",
    ),
    # --- wrong content type ---
    C(
        "ctype-text-plain",
        "POST",
        "/v1/referrals",
        415,
        "Content-Type",
        data=BODY_TEXT,
        content_type="text/plain",
    ),
    C(
        "ctype-form-urlencoded",
        "POST",
        "/v1/referrals",
        415,
        "Content-Type",
        data="origin=55413",
        content_type="application/x-www-form-urlencoded",
    ),
    C(
        "ctype-multipart",
        "POST",
        "/v1/referrals",
        415,
        "Content-Type",
        data=b"--b\r\n\r\nx\r\n--b--\r\n",
        content_type="multipart/form-data; boundary=b",
    ),
    C("ctype-missing", "POST", "/v1/referrals", 415, "Content-Type", data=BODY_TEXT),
    C(
        "ctype-xml-clinic",
        "POST",
        CLINIC,
        415,
        "Content-Type",
        data="<clinic/>",
        content_type="application/xml",
        **W,
    ),
    C(
        "ctype-text-status-change",
        "PATCH",
        OWN,
        415,
        "Content-Type",
        data='{"status": "cancelled"}',
        content_type="text/plain",
    ),
    # --- NaN, infinities, huge numbers ---
    post_raw("nan-max-distance", BODY_TEXT[:-1] + ', "max_distance": NaN}', 422, "max_distance"),
    post_raw(
        "infinity-max-distance", BODY_TEXT[:-1] + ', "max_distance": Infinity}', 422, "max_distance"
    ),
    with_origin("minus-infinity-lat", '{"lat": -Infinity, "lon": 0}', 422, "origin.lat"),
    with_origin("overflow-1e309-lon", '{"lat": 45, "lon": 1e309}', 422, "origin.lon"),
    post_raw(
        "nan-inside-assessment",
        BODY_TEXT[:-1] + ', "assessment": {"score": NaN}}',
        422,
        "assessment",
    ),
    post_with(
        "huge-integer-clinic-id", {"preferred_clinic_id": 10**30}, 422, "preferred_clinic_id"
    ),
    post_with("float-clinic-id", {"preferred_clinic_id": 3.0}, 422, "preferred_clinic_id"),
    post_with("negative-max-distance", {"max_distance": -1}, 422, "max_distance"),
    post_with("boolean-urgency", {"urgency": True}, 422, "urgency"),
    C(
        "location-lat-1e400",
        "POST",
        LOCATIONS,
        422,
        "lat",
        data='{"city": "X", "state": "MN", "lat": 1e400, "lon": 0}',
        content_type=JSON,
        **W,
    ),
    C("nearest-lat-1e308", "GET", f"{NEAREST}?lat=1e308&lon=0", 422, "lat", key=None),
    C("nearest-lat-hex", "GET", f"{NEAREST}?lat=0x10&lon=0", 422, "lat", key=None),
    C("nearest-limit-exponent", "GET", f"{NEAREST}?zip=55413&limit=1e3", 422, "limit", key=None),
    # --- times with no UTC equivalent (they overflowed into a 500) ---
    C(
        "time-beyond-utc-created-after",
        "GET",
        "/v1/referrals?created_after=0001-01-01T00:00:00%2B14:00",
        422,
        "created_after",
        **A,
    ),
    C(
        "time-beyond-utc-stats",
        "GET",
        "/v1/referrals/stats?created_before=9999-12-31T23:59:59-14:00",
        422,
        "created_before",
        **A,
    ),
    C(
        "time-beyond-utc-audit-until",
        "GET",
        "/v1/admin/audit?until=9999-12-31T23:59:59-14:00",
        422,
        "until",
        **A,
    ),
    C(
        "time-beyond-utc-updated-since",
        "GET",
        "/v1/clinics?updated_since=0001-01-01T00:00:00%2B14:00",
        422,
        "updated_since",
        key=None,
    ),
    # --- coordinates out of range ---
    with_origin("origin-lat-above-90", '{"lat": 90.000001, "lon": 0}', 422, "origin.lat"),
    with_origin("origin-lon-below-minus-180", '{"lat": 0, "lon": -180.5}', 422, "origin.lon"),
    C(
        "location-lat-91",
        "POST",
        LOCATIONS,
        422,
        "lat",
        json={"city": "X", "state": "MN", "lat": 91, "lon": 0},
        **W,
    ),
    C(
        "location-lat-without-lon",
        "POST",
        LOCATIONS,
        422,
        "lon",
        json={"city": "X", "state": "MN", "lat": 45},
        **W,
    ),
    # --- overlong strings ---
    post_with("patient-ref-65-chars", {"patient_ref": "p" * 65}, 422, "patient_ref"),
    post_with("concern-code-41-chars", {"concerns": ["c" * 41]}, 422, "concerns.0"),
    post_with("eleven-concerns", {"concerns": ["running_low_back_pain"] * 11}, 422, "concerns"),
    post_with("assessment-key-65-chars", {"assessment": {"k" * 65: 1}}, 422, "assessment"),
    C(
        "note-1001-chars",
        "PATCH",
        OWN,
        422,
        "note",
        json={"status": "cancelled", "note": "n" * 1001},
    ),
    C("clinic-name-201-chars", "POST", CLINIC, 422, "name", json={"name": "n" * 201}, **W),
    C(
        "idempotency-key-256-chars",
        "POST",
        "/v1/referrals",
        422,
        "Idempotency-Key",
        json=BODY,
        headers={"Idempotency-Key": "i" * 256},
    ),
    C("source-filter-101-chars", "GET", "/v1/referrals?source=" + "s" * 101, 422, "source", **A),
    C(
        "authorization-10kb",
        "GET",
        "/v1/referrals",
        401,
        key=None,
        headers={"Authorization": "Bearer " + "k" * 10_000},
        audited=False,
    ),
    C("referral-id-5000-chars", "GET", "/v1/referrals/" + "a" * 5000, 404, "referral_id", **A),
    # --- unicode edge cases ---
    post_raw(
        "lone-high-surrogate-in-assessment",
        BODY_TEXT[:-1] + ', "assessment": {"summary": "ok \\ud800"}}',
        400,
        "assessment.summary",
    ),
    post_raw(
        "lone-surrogate-in-assessment-key",
        BODY_TEXT[:-1] + ', "assessment": {"\\udfff": 1}}',
        400,
        "assessment",
    ),
    C(
        "lone-low-surrogate-in-clinic-name",
        "POST",
        CLINIC,
        400,
        "name",
        data='{"name": "Clinic \\udc00"}',
        content_type=JSON,
        **W,
    ),
    C(
        "rtl-override-in-clinic-name",
        "POST",
        CLINIC,
        422,
        "name",
        json={"name": "Clinic \u202etxt.exe"},
        **W,
    ),
    C(
        "rtl-isolate-in-city",
        "POST",
        LOCATIONS,
        422,
        "city",
        json={"city": "Minne\u2067apolis", "state": "MN"},
        **W,
    ),
    C(
        "rtl-override-in-note",
        "PATCH",
        OWN,
        422,
        "note",
        json={"status": "cancelled", "note": "ok \u202e"},
    ),
    post_with(
        "rtl-override-in-assessment",
        {"assessment": {"summary": "pain \u202e01"}},
        422,
        "assessment",
    ),
    C(
        "zero-width-space-in-clinic-name",
        "POST",
        CLINIC,
        422,
        "name",
        json={"name": "PRO\u200bTherapy"},
        **W,
    ),
    C(
        "bom-in-address",
        "POST",
        LOCATIONS,
        422,
        "address_line1",
        json={"address_line1": "\ufeff1 Main St", "city": "Minneapolis", "state": "MN"},
        **W,
    ),
    C(
        "escape-char-in-clinic-name",
        "POST",
        CLINIC,
        422,
        "name",
        json={"name": "Clinic \x1b[31m"},
        **W,
    ),
    C(
        "newline-in-clinic-name",
        "POST",
        CLINIC,
        422,
        "name",
        json={"name": "Clinic\nFake header"},
        **W,
    ),
    post_with(
        "zero-width-in-concern-code", {"concerns": ["running\u200blow_back_pain"]}, 422, "concerns"
    ),
    post_with("emoji-patient-ref", {"patient_ref": "p\U0001f600"}, 422, "patient_ref"),
    post_with(
        "cyrillic-homoglyph-patient-ref", {"patient_ref": "p\u0430tient-1"}, 422, "patient_ref"
    ),
    with_origin(
        "fullwidth-digits-zip", '{"zip": "\uff15\uff15\uff14\uff11\uff13"}', 422, "origin.zip"
    ),
    C("nul-in-query", "GET", "/v1/clinics?q=%00", 422, "q", key=None),
    # --- SQL injection in query, path and body ---
    C("sqli-query-status", "GET", "/v1/referrals?status=created'%20OR%201=1--", 422, "status", **A),
    C("sqli-query-clinic-id", "GET", "/v1/referrals?clinic_id=1%20OR%201=1", 422, "clinic_id", **A),
    C(
        "sqli-query-created-after",
        "GET",
        "/v1/referrals?created_after=2024-01-01'%20OR%20'1'='1",
        422,
        "created_after",
        **A,
    ),
    C("sqli-query-state", "GET", "/v1/clinics?state=TX'%20OR%20'1'='1", 422, "state", key=None),
    C("sqli-query-zip", "GET", f"{NEAREST}?zip=55413'%20OR%201=1--", 422, "zip", key=None),
    C("sqli-path-referral", "GET", "/v1/referrals/1'%20OR%20'1'='1", 404, "referral_id", **A),
    C("sqli-path-clinic", "GET", "/v1/clinics/1%20OR%201=1", 404, key=None),
    post_with(
        "sqli-body-patient-ref", {"patient_ref": "x'; DROP TABLE referral;--"}, 422, "patient_ref"
    ),
    post_with("sqli-body-concern", {"concerns": ["low_back_pain' OR '1'='1"]}, 422, "concerns"),
    C(
        "sqli-body-specialty",
        "POST",
        CLINIC,
        422,
        "specialties",
        json={"name": "X", "specialties": ["sports'; DELETE FROM clinic;--"]},
        **W,
    ),
    # --- header injection (CR/LF cannot pass the HTTP layer: see FRAMING_CATALOG) ---
    C(
        "idempotency-key-with-space",
        "POST",
        "/v1/referrals",
        422,
        "Idempotency-Key",
        json=BODY,
        headers={"Idempotency-Key": "a b"},
    ),
    C(
        "idempotency-key-sql",
        "POST",
        "/v1/referrals",
        422,
        "Idempotency-Key",
        json=BODY,
        headers={"Idempotency-Key": "'; DROP TABLE idempotency_record;--"},
    ),
    C(
        "idempotency-key-reused-other-body",
        "POST",
        "/v1/referrals",
        422,
        "Idempotency-Key",
        json={**BODY, "urgency": "soon"},
        headers={"Idempotency-Key": "victim-1"},
        key="victim",
    ),
    # --- unknown fields and mass assignment ---
    post_with("unknown-field-ssn", {"ssn": "123-45-6789"}, 422, "ssn"),
    post_with("mass-assign-status", {"status": "completed"}, 422, "status"),
    post_with("mass-assign-source", {"source": "victim-app"}, 422, "source"),
    post_with(
        "proto-key-in-origin",
        {"origin": {"zip": "55413", "__proto__": {"admin": True}}},
        422,
        "origin.__proto__",
    ),
    C("mass-assign-clinic-id", "POST", CLINIC, 422, "id", json={"name": "X", "id": 1}, **W),
    C(
        "mass-assign-location-clinic",
        "POST",
        LOCATIONS,
        422,
        "clinic_id",
        json={"city": "X", "state": "MN", "clinic_id": 1},
        **W,
    ),
    C(
        "unknown-field-status-change",
        "PATCH",
        OWN,
        422,
        "clinic_id",
        json={"status": "cancelled", "clinic_id": 1},
    ),
    C(
        "unknown-field-clinic-patch",
        "PATCH",
        "/v1/clinics/{clinic}",
        422,
        "created_at",
        json={"created_at": "2020-01-01"},
        if_match=True,
        **W,
    ),
    # --- page sizes and radii beyond their caps ---
    C("clinics-page-size-101", "GET", "/v1/clinics?page_size=101", 422, "page_size", key=None),
    C("clinics-page-size-negative", "GET", "/v1/clinics?page_size=-1", 422, "page_size", key=None),
    C("referrals-page-size-101", "GET", "/v1/referrals?page_size=101", 422, "page_size", **A),
    C("referrals-page-100001", "GET", "/v1/referrals?page=100001", 422, "page", **A),
    C("audit-page-size-201", "GET", "/v1/admin/audit?page_size=201", 422, "page_size", **A),
    C("review-page-size-201", "GET", "/v1/admin/review?page_size=201", 422, "page_size", **A),
    C(
        "nearest-radius-5000.1-km",
        "GET",
        f"{NEAREST}?zip=55413&radius=5000.1&unit=km",
        422,
        "radius",
        key=None,
    ),
    post_with(
        "max-distance-5000.5-km", {"max_distance": 5000.5, "unit": "km"}, 422, "max_distance"
    ),
    # --- keys: missing, malformed, unknown, revoked, expired, wrong scope ---
    C("key-missing", "GET", "/v1/referrals", 401, key=None, audited=False),
    C(
        "key-basic-scheme",
        "GET",
        "/v1/referrals",
        401,
        key=None,
        headers={"Authorization": "Basic YWRtaW46YWRtaW4="},
        audited=False,
    ),
    C(
        "key-bearer-empty",
        "GET",
        "/v1/referrals",
        401,
        key=None,
        headers={"Authorization": "Bearer "},
        audited=False,
    ),
    C(
        "key-without-scheme",
        "GET",
        "/v1/referrals",
        401,
        key=None,
        headers={"Authorization": "{admin}"},
        audited=False,
    ),
    C(
        "key-malformed",
        "GET",
        "/v1/referrals",
        401,
        key=None,
        headers={"Authorization": "Bearer rk_not_a_key"},
        audited=False,
    ),
    C(
        "key-with-trailing-junk",
        "GET",
        "/v1/referrals",
        401,
        key=None,
        headers={"Authorization": "Bearer {admin}x"},
        audited=False,
    ),
    C("key-unknown", "GET", "/v1/referrals", 401, key="unknown", audited=False),
    C("key-wrong-secret", "GET", "/v1/referrals", 401, key="wrong_secret", audited=False),
    C("key-in-query-string", "GET", "/v1/referrals?api_key={admin}", 401, key=None, audited=False),
    C("key-revoked", "GET", "/v1/referrals", 401, key="revoked"),
    C("key-revoked-on-audit", "GET", "/v1/admin/audit", 401, key="revoked"),
    C("key-expired", "POST", "/v1/referrals", 401, key="expired", json=BODY),
    C("key-expired-on-clinic-create", "POST", CLINIC, 401, key="expired", json={"name": "X"}),
    C("scope-dashboard-sends-referral", "POST", "/v1/referrals", 403, key="dashboard", json=BODY),
    C("scope-clinic-key-sends-referral", "POST", "/v1/referrals", 403, key="pro", json=BODY),
    C("scope-app-reads-stats", "GET", "/v1/referrals/stats", 403),
    C("scope-app-exports", "GET", "/v1/referrals/export.csv", 403),
    C("scope-app-adds-clinic", "POST", CLINIC, 403, json={"name": "X"}),
    C("scope-writer-reads-audit", "GET", "/v1/admin/audit", 403, **W),
    C(
        "scope-app-imports",
        "POST",
        "/v1/admin/imports?dry_run=true",
        403,
        data="clinic_name\nX\n",
        content_type="text/csv",
    ),
    # --- another app's referral ---
    C("other-app-reads-referral", "GET", VICTIM, 404, "referral_id"),
    C(
        "other-app-cancels-referral",
        "PATCH",
        VICTIM,
        404,
        "referral_id",
        json={"status": "cancelled"},
    ),
    C(
        "other-clinic-accepts-referral",
        "PATCH",
        VICTIM,
        404,
        "referral_id",
        key="shea",
        json={"status": "accepted"},
    ),
    C("dashboard-reads-app-referral", "GET", VICTIM, 404, "referral_id", key="dashboard"),
    C(
        "sender-accepts-own-referral",
        "PATCH",
        VICTIM,
        403,
        "status",
        key="victim",
        json={"status": "accepted"},
    ),
    # --- methods no route has ---
    C("delete-referral", "DELETE", VICTIM, 405, key="admin", audited=False),
    C("put-clinic", "PUT", "/v1/clinics/{clinic}", 405, json={"name": "X"}, **W),
]


def assert_refused(status_code: int, content_type: str, body: dict[str, Any], case: Case) -> None:
    assert status_code == case.status, body
    assert content_type.split(";")[0].strip() == PROBLEM
    assert body["status"] == case.status
    assert body["type"] == "about:blank" and body["title"]
    if case.field is not None:
        names = [param["name"] for param in body.get("invalid_params", [])]
        assert any(name == case.field or name.startswith(f"{case.field}.") for name in names), body
        assert case.field in body["detail"], body


def assert_nothing_changed(before: Snapshot, after: Snapshot, case: Case) -> None:
    assert changed_rows(before, after) == {}, case.id
    assert after.audit[: len(before.audit)] == before.audit, "an audit row changed"
    added = after.audit[len(before.audit) :]
    audited = case.audited if case.audited is not None else case.path.startswith("/v1/referrals")
    assert len(added) == (1 if audited else 0), added
    assert all(row[3] not in SUCCESS_OUTCOMES for row in added), added


def test_catalog_is_large_and_distinct() -> None:
    ids = [param.values[0].id for param in CATALOG + LIVE_CATALOG]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60


@pytest.mark.parametrize("case", CATALOG)
def test_hostile_request_is_refused_and_changes_nothing(world: World, case: Case) -> None:
    headers = {world.fill(k): world.fill(v) for k, v in case.headers.items()}
    if case.key is not None:
        headers["Authorization"] = f"Bearer {world.keys[case.key]}"
    if case.if_match:
        headers["If-Match"] = world.ids["clinic_etag"]
    data = case.data
    content_type = case.content_type
    if case.json is not _NO_BODY:
        data, content_type = json.dumps(case.json), JSON
    before = snapshot(world.engine)
    response = world.app.test_client().open(
        world.fill(case.path),
        method=case.method,
        data=data,
        content_type=content_type,
        headers=headers,
    )
    after = snapshot(world.engine)
    assert_refused(response.status_code, response.content_type, response.get_json(), case)
    assert_nothing_changed(before, after, case)


# --- through a real server: chunked bodies and raw header bytes ------------------------------


@pytest.fixture(scope="module")
def live(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # A small import limit, so that an oversized import is cheap to send.
    env = {"REFERRAL_IMPORT_MAX_BYTES": str(IMPORT_LIMIT)}
    with serve(world.url, tmp_path_factory.mktemp("catalog-live"), workers=1, env=env) as served:
        yield served


@dataclass(frozen=True)
class RawAnswer:
    status: int
    content_type: str
    body: bytes


def raw_request(
    served: Served,
    method: str,
    path: str,
    headers: list[bytes],
    body: bytes = b"",
    *,
    chunked: bool = False,
) -> RawAnswer:
    """Send bytes exactly as given (no client library to tidy them up) and read the answer."""
    port = int(served.base.rsplit(":", 1)[1])
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += headers
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        payload += b"0\r\n\r\n"
    else:
        if not any(h.lower().startswith(b"content-length:") for h in headers):
            head.append(b"Content-Length: %d" % len(body))
        payload = body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return RawAnswer(response.status, response.getheader("Content-Type", ""), response.read())


@dataclass(frozen=True)
class LiveCase:
    id: str
    status: int
    field: str | None
    headers: list[bytes]
    body: bytes
    chunked: bool = False
    path: str = "/v1/referrals"
    key: str = "app"
    audited: bool | None = None

    @property
    def method(self) -> str:
        return "POST"


CT_JSON = b"Content-Type: application/json"
_PADDED = BODY_TEXT.encode() + b" " * (LIMIT + 4096)
IMPORT_LIMIT = 4096
# Whole rows well past the import limit: cut at it, the first rows would import as "valid".
_IMPORT_CSV = (
    "clinic_name,phone,website,address,city,state,zip,lat,lon,specialties\n"
    + "".join(f"Catalog Import {n:04d},,,{n} Main St,Minneapolis,MN,55413,,,\n" for n in range(200))
).encode()

LIVE_CATALOG = [
    pytest.param(LiveCase(*args), id=args[0])
    for args in [
        ("chunked-oversized-referral", 413, None, [CT_JSON],
         json.dumps({**BODY, "assessment": {"x": BIG}}).encode(), True),
        # Valid JSON in the first 64 KB: cut at the limit, it would have been accepted.
        ("chunked-oversized-valid-prefix", 413, None, [CT_JSON], _PADDED, True),
        ("chunked-oversized-clinic", 413, None, [CT_JSON],
         json.dumps({"name": BIG}).encode(), True, "/v1/clinics", "writer"),
        ("chunked-oversized-import", 413, None, [b"Content-Type: text/csv"], _IMPORT_CSV, True,
         "/v1/admin/imports?dry_run=true", "writer"),
        ("chunked-malformed-json", 400, None, [CT_JSON], b"{not json", True),
        ("chunked-wrong-content-type", 415, "Content-Type", [b"Content-Type: text/plain"],
         BODY_TEXT.encode(), True),
        ("content-length-shorter-than-body", 400, None, [CT_JSON, b"Content-Length: 5"],
         BODY_TEXT.encode()),
        ("idempotency-key-with-tab", 422, "Idempotency-Key",
         [CT_JSON, b"Idempotency-Key: abc\tdef"], BODY_TEXT.encode()),
        ("idempotency-key-utf8-bytes", 422, "Idempotency-Key",
         [CT_JSON, "Idempotency-Key: caf\u00e9\U0001f600".encode()], BODY_TEXT.encode()),
        ("idempotency-key-latin1-byte", 422, "Idempotency-Key",
         [CT_JSON, b"Idempotency-Key: abc\xffdef"], BODY_TEXT.encode()),
    ]
]  # fmt: skip


@pytest.mark.parametrize("case", LIVE_CATALOG)
def test_hostile_bytes_through_gunicorn(world: World, live: Served, case: LiveCase) -> None:
    headers = [f"Authorization: Bearer {world.keys[case.key]}".encode(), *case.headers]
    before = snapshot(world.engine)
    answer = raw_request(live, case.method, case.path, headers, case.body, chunked=case.chunked)
    after = snapshot(world.engine)
    as_case = Case(case.id, case.method, case.path, case.status, case.field, audited=case.audited)
    assert_refused(answer.status, answer.content_type, json.loads(answer.body), as_case)
    assert_nothing_changed(before, after, as_case)


# Malformed framing is refused by gunicorn's parser before any application code runs: a CR or
# LF inside a header value (header injection / response splitting), control bytes, obsolete
# line folding, request smuggling shapes, header blocks over gunicorn's limit. Gunicorn answers
# these itself, as problem details too (referral/ops/server_errors.py), quoting nothing back.
FRAMING_CATALOG = [
    pytest.param(status, headers, id=name)
    for name, status, headers in [
        ("cr-in-idempotency-key", 400, [b"Idempotency-Key: abc\rX-Injected: 1"]),
        ("lf-in-idempotency-key", 400, [b"Idempotency-Key: abc\nX-Injected: 1"]),
        ("cr-in-request-id", 400, [b"X-Request-ID: abc\rSet-Cookie: session=evil"]),
        ("folded-request-id", 400, [b"X-Request-ID: abc", b" Set-Cookie: session=evil"]),
        ("control-byte-in-header", 400, [b"Idempotency-Key: abc\x01def"]),
        ("conflicting-content-lengths", 400, [b"Content-Length: 5", b"Content-Length: 6"]),
        ("content-length-and-chunked", 400, [b"Content-Length: 5",
                                              b"Transfer-Encoding: chunked"]),
        ("header-block-over-limit", 431, [b"X-Request-ID: " + b"r" * 9000]),
    ]
]  # fmt: skip


@pytest.mark.parametrize(("status", "headers"), FRAMING_CATALOG)
def test_malformed_framing_never_reaches_the_app(
    world: World, live: Served, status: int, headers: list[bytes]
) -> None:
    auth = f"Authorization: Bearer {world.keys['app']}".encode()
    before = snapshot(world.engine)
    answer = raw_request(live, "POST", "/v1/referrals", [auth, CT_JSON, *headers], b"{}")
    after = snapshot(world.engine)
    assert answer.status == status, answer.body
    assert_gunicorn_problem(answer, status)
    assert changed_rows(before, after) == {}
    assert after.audit == before.audit  # the app never saw it: not even an audit row


def assert_gunicorn_problem(answer: RawAnswer, status: int) -> None:
    assert answer.content_type == "application/problem+json", answer.body
    problem = json.loads(answer.body)
    assert problem["status"] == status and problem["type"] == "about:blank", problem
    assert problem["title"] and problem["detail"], problem


def test_an_unparsable_request_line_is_a_problem_that_quotes_nothing(live: Served) -> None:
    port = int(live.base.rsplit(":", 1)[1])
    address = b"742%20Evergreen%20Terrace"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /v1/locations/nearest?address=" + address + b" HTTP/1.1 x\r\n"
                     b"Host: 127.0.0.1\r\n\r\n")  # fmt: skip
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        answer = RawAnswer(response.status, response.getheader("Content-Type", ""), response.read())
    assert answer.status == 400, answer.body
    assert_gunicorn_problem(answer, 400)
    assert b"Evergreen" not in answer.body
    assert "Evergreen" not in live.output()
