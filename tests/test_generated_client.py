"""A client generated from the spec by a tool nobody here wrote (openapi-python-client) works:
typed models for what the service answers, operation names it can use, a referral sent and
read back through it."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database

PACKAGE = "referral_generated_client"


@pytest.fixture
def generated(app, tmp_path: Path) -> Iterator[ModuleType]:
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(app.extensions["referral_api"].spec.to_dict()), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
         "--output-path", str(tmp_path / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Only the NDJSON downloads are beyond it (a content type it does not parse).
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    assert all(".ndjson" in line or "/v1/admin/imports" in line for line in warnings), warnings
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def wired(package: ModuleType, app: Any, key: str | None = None) -> Any:
    """The generated client, talking to the test app in process (no server, no network)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = package.Client(base_url="http://testserver")
    client.set_httpx_client(
        httpx.Client(
            base_url="http://testserver",
            transport=httpx.WSGITransport(app=app),
            headers=headers,
        )
    )
    return client


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_nearest_through_the_generated_client(app, generated):
    nearest = module("api.locations.get_nearest_locations")
    models = module("models")
    client = wired(generated, app)
    answer = nearest.sync(client=client, zip_="78201", radius=25.0, limit=3)
    assert isinstance(answer, models.NearestResponse), answer
    assert isinstance(answer.radius, models.Radius)  # typed, not a catch-all wrapper
    assert answer.radius.value == 25.0 and answer.radius.unit == "mi"
    assert 0 < answer.count == len(answer.results) <= 3
    hit = answer.results[0]
    assert isinstance(hit, models.NearestHit)
    assert hit.distance_mi <= 25.0
    assert isinstance(hit.location, models.Location) and hit.clinic.name
    # No radius: null, read as None.
    anywhere = nearest.sync(client=client, zip_="78201", limit=1)
    assert anywhere.radius is None
    # A radius beyond the stated limit is refused as a typed problem.
    refused = nearest.sync_detailed(
        client=client, zip_="78201", radius=5001.0, unit=models.GetNearestLocationsUnit.KM
    )
    assert refused.status_code == 422
    assert isinstance(refused.parsed, models.Problem)
    assert refused.parsed.invalid_params[0].name == "radius"


def test_a_referral_through_the_generated_client(app, generated):
    with Session(get_database(app).engine) as session:
        _, sender = create_key(session, name="generated-app", scopes=["referrals:write"])
        _, admin = create_key(session, name="generated-admin", scopes=["admin"])
        session.commit()
    models = module("models")
    send = module("api.referrals.post_referrals")
    body = models.ReferralCreate.from_dict(
        {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}
    )
    sent = send.sync_detailed(client=wired(generated, app, sender), body=body)
    assert sent.status_code == 201, sent.content
    referral = sent.parsed
    assert isinstance(referral, models.Referral)
    assert isinstance(referral.match, models.Match)  # typed, not a catch-all wrapper
    assert isinstance(referral.reach, models.Reach)
    assert referral.match.clinic.name
    read = module("api.referrals.get_referral_by_id").sync(
        referral.id, client=wired(generated, app, admin)
    )
    assert isinstance(read, models.Referral)
    assert read.id == referral.id and read.match.location.id == referral.match.location.id
    change = module("api.referrals.patch_referral_by_id")
    moved = change.sync(
        referral.id,
        client=wired(generated, app, admin),
        body=models.StatusMove.from_dict({"status": "accepted"}),
    )
    assert isinstance(moved, models.Referral), moved
    assert str(moved.status) == "accepted"
