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


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    methods = {"get", "put", "post", "patch", "delete", "head", "options"}
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in methods
    ]


def test_every_operation_has_a_usable_unique_operation_id(app):
    spec = app.extensions["referral_api"].spec.to_dict()
    names = [operation.get("operationId") for _, _, operation in operations(spec)]
    assert all(name and re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names), names
    assert len(names) == len(set(names))
    nearest = spec["paths"]["/v1/locations/nearest"]["get"]
    assert nearest["operationId"] == "get_nearest_locations"
    assert spec["paths"]["/v1/referrals"]["post"]["operationId"] == "post_referrals"


def test_every_operation_states_its_security_and_early_refusals(app):
    spec = app.extensions["referral_api"].spec.to_dict()
    assert spec["servers"], "a spec without servers"
    for path, method, operation in operations(spec):
        where = f"{method} {path}"
        assert "security" in operation, where
        public = method == "get" and re.fullmatch(r"/v1/(clinics|locations|specialties|concerns)"
                                                  r"(/.*)?|/v1/clinics\.csv|/v1/locations\.geojson",
                                                  path)  # fmt: skip
        assert (operation["security"] == []) == bool(public), where
        # An over-long request line (gunicorn) and a NUL in the query string (any route).
        assert {"414", "422"} <= set(map(str, operation["responses"])), where


def test_nullable_nested_schemas_are_typed_unions(app):
    schemas = app.extensions["referral_api"].spec.to_dict()["components"]["schemas"]
    for schema, field, ref in (
        ("NearestResponse", "radius", "Radius"),
        ("NearestResponse", "nearest_outside_radius", "NearestHit"),
        ("Referral", "match", "Match"),
        ("Referral", "reach", "Reach"),
    ):
        branches = schemas[schema]["properties"][field]["anyOf"]
        assert branches[0] == {"$ref": f"#/components/schemas/{ref}"}, (schema, field)
        # The other branch admits null and nothing else (no catch-all object).
        assert branches[1:] == [{"type": "object", "nullable": True, "enum": [None]}]


def test_links_use_uri_references(app):
    post = app.extensions["referral_api"].spec.to_dict()["paths"]["/v1/referrals"]["post"]
    for link in post["responses"]["201"]["links"].values():
        assert "{" not in link["operationRef"] and "%7B" in link["operationRef"]


def test_the_radius_limit_is_stated(app):
    nearest = app.extensions["referral_api"].spec.to_dict()["paths"]["/v1/locations/nearest"]
    assert "5,000 km" in nearest["get"]["description"]
