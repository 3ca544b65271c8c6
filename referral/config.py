"""Default settings. Layering (defaults, ``REFERRAL_*`` environment, test dict) is in create_app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_settings(instance_path: str) -> dict[str, Any]:
    return {
        # SQLite file under the instance folder unless REFERRAL_DATABASE_URL says otherwise.
        "DATABASE_URL": f"sqlite:///{Path(instance_path) / 'referral.db'}",
        "DATABASE_ECHO": False,
        "SQLITE_BUSY_TIMEOUT_MS": 5000,
        "SEED_DATA_DIR": str(REPO_ROOT / "seed_data"),
        # Where the gazetteer's compact index is cached (built once from zipcodes); None: the
        # instance folder.
        "GAZETTEER_CACHE_DIR": None,
        # Network geocoder: off unless named (e.g. "nominatim"); options go to geopy's class.
        "GEOCODER": None,
        "GEOCODER_OPTIONS": {},
        "GEOCODER_MIN_DELAY_SECONDS": 1.0,
        "GEOCODER_TIMEOUT_SECONDS": 5.0,
        "GEOCODE_CACHE_TTL_DAYS": 90,
        # Keys the geocode cache's hashes: without it a cached address could be confirmed by
        # hashing guesses. Set REFERRAL_GEOCODE_CACHE_SECRET in production.
        "GEOCODE_CACHE_SECRET": None,
        # Nearest search: the largest radius (or referral max_distance) accepted.
        "NEAREST_MAX_RADIUS_KM": 5000.0,
        # Request bodies beyond this are refused with 413 before they are read.
        "MAX_CONTENT_LENGTH": 64 * 1024,
        # Idempotency-Key records: kept at least a day so late retries still replay.
        "IDEMPOTENCY_RETENTION_HOURS": 48,
        # An in-flight key older than this belonged to a request that died: retries take over.
        "IDEMPOTENCY_STALE_SECONDS": 60,
        # Public GETs may be cached briefly by browsers and CDNs.
        "PUBLIC_CACHE_MAX_AGE": 60,
        # flask-smorest / OpenAPI.
        "API_TITLE": "Referral: clinic directory and referral service",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        # Swagger UI assets come from the swagger-ui-bundle package, served by us: no CDN.
        "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",
    }
