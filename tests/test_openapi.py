"""openapi.yaml is what the code generates; the docs UI works with no internet."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO_ROOT


def test_openapi_yaml_matches_the_code(app):
    generated = app.extensions["referral_api"].spec.to_dict()
    committed = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    assert committed == generated, "openapi.yaml drifted: run `make openapi` and commit it"


def test_openapi_write_command_writes_the_same_spec(runner, tmp_path):
    target = tmp_path / "spec.yaml"
    result = runner.invoke(args=["openapi", "write", "--format=yaml", str(target)])
    assert result.exit_code == 0, result.output
    committed = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    assert yaml.safe_load(target.read_text(encoding="utf-8")) == committed


def test_openapi_json_is_served(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {
        "/v1/locations/nearest",
        "/v1/clinics",
        "/v1/clinics/{clinic_id}",
        "/v1/specialties",
    } <= set(spec["paths"])
    errors = spec["components"]["responses"]["UNPROCESSABLE_ENTITY"]["content"]
    assert list(errors) == ["application/problem+json"]


def test_docs_ui_uses_only_our_own_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls, html
    for url in urls:
        assert url.startswith("/"), f"external asset {url}"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.get_data()) > 1000
    assert "http://" not in html and "https://" not in html
    assert "/openapi.json" in html
