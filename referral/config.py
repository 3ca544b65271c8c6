"""Default settings. Layering (defaults, ``REFERRAL_*`` environment, test dict) is in create_app."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from limits import parse_many

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "REFERRAL_"

# How the server runs (read by gunicorn's config, referral/ops/gunicorn_config.py, before any
# app exists; also in app.config so every setting is listed in one place). REFERRAL_WORKERS,
# REFERRAL_THREADS... override them; `referral serve --bind/--workers/--threads` overrides both.
SERVER_DEFAULTS: dict[str, Any] = {
    "BIND": "127.0.0.1:8000",
    # Processes: each has its own database pool and gazetteer copy. Threads per process:
    # requests mostly wait on the database, so a few threads use a worker's memory better.
    "WORKERS": 2,
    "THREADS": 4,
    # A request running longer than this gets its worker killed and restarted.
    "TIMEOUT": 30,
    # On SIGTERM, workers finish their requests for up to this long before being killed.
    "GRACEFUL_TIMEOUT": 30,
    "KEEPALIVE": 5,
    # One listening socket per worker (SO_REUSEPORT), the kernel spreading new connections
    # over them: "auto" (only where Linux hands a stopping worker's queued connections to the
    # others, net.ipv4.tcp_migrate_req=1), true or false. With one shared socket the first
    # worker awake can take a whole burst of keep-alive connections and keep them while the
    # others idle (docs/operations.md, "Spreading connections over workers").
    "REUSE_PORT": "auto",
    "LOG_LEVEL": "info",
    # Prometheus multiprocess files; None: a fresh directory per server start (see
    # docs/operations.md). Emptied when the server starts either way.
    "METRICS_DIR": None,
}


def default_settings(instance_path: str) -> dict[str, Any]:
    return {
        # SQLite file under the instance folder unless REFERRAL_DATABASE_URL says otherwise.
        "DATABASE_URL": f"sqlite:///{Path(instance_path) / 'referral.db'}",
        "DATABASE_ECHO": False,
        "SQLITE_BUSY_TIMEOUT_MS": 5000,
        # No database statement runs longer than this: a request that would is answered 503
        # (bounded work: docs/performance.md). 0 lifts it (commands set their own).
        "DATABASE_STATEMENT_TIMEOUT_MS": 10000,
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
        # Referral matching (docs/matching.md). The reach when the app gives no max_distance,
        # by urgency: about 50, 40 and 25 miles (an hour's drive, less for urgent cases).
        "MATCH_REACH_ROUTINE_KM": 80.0,
        "MATCH_REACH_SOON_KM": 65.0,
        "MATCH_REACH_URGENT_KM": 40.0,
        # A possible match (a needed specialty not on record) ranks as if it were this much,
        # and this many times, farther: a confirmed match wins unless it is farther than both.
        "MATCH_CONFIRMED_DETOUR_KM": 16.0,
        "MATCH_CONFIRMED_DETOUR_RATIO": 1.5,
        # How often a worker checks whether the directory changed (its nearest index is then
        # rebuilt); a worker's own edits are seen at once. See docs/nearest.md.
        "NEAREST_INDEX_CHECK_SECONDS": 1.0,
        # Request bodies beyond this are refused with 413 before they are read.
        "MAX_CONTENT_LENGTH": 64 * 1024,
        # Idempotency-Key records: kept at least a day so late retries still replay.
        "IDEMPOTENCY_RETENTION_HOURS": 48,
        # Imports (referral/admin/imports): row errors an answer lists (all are kept with the
        # run); how long a dead import's lease blocks the next; how long runs are kept.
        "IMPORT_MAX_ERRORS": 100,
        "IMPORT_LEASE_SECONDS": 60.0,
        "IMPORT_RUN_RETENTION_DAYS": 30.0,
        # Public GETs may be cached briefly by browsers and CDNs.
        "PUBLIC_CACHE_MAX_AGE": 60,
        # How long a worker trusts an API key's row (referral/auth/keys.py): a key revoked
        # elsewhere is refused by every worker within this many seconds; 0 reads it each time.
        "API_KEY_CACHE_SECONDS": 5.0,
        **SERVER_DEFAULTS,
        # The container's entrypoint loads seed_data/ before serving when true. Off by default:
        # seeding puts seeded clinics back as the files say, undoing admin edits to them.
        "SEED_ON_START": False,
        # Reverse proxies / load balancers in front that set X-Forwarded-For/-Proto/-Host:
        # 0 trusts none (client IP is the peer's address). Set it to the number of proxies,
        # or any client can pick its own IP (and rate-limit key) with one header.
        "TRUSTED_PROXIES": 0,
        # GET /metrics answers only "Authorization: Bearer <token>"; with None it answers 404
        # to everyone (docs/operations.md, "Metrics").
        "METRICS_TOKEN": None,
        # Rate limits (Flask-Limiter reads the RATELIMIT_* names itself). memory:// counts per
        # process: with several workers or machines use Redis, e.g. redis://redis:6379/0.
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_STORAGE_OPTIONS": {},
        # Keys in the shared store start with this (servers or tests sharing a Redis differ).
        "RATELIMIT_KEY_PREFIX": "referral",
        "RATELIMIT_STRATEGY": "fixed-window",
        # Per client IP, over all public directory GETs together.
        "RATELIMIT_PUBLIC": "300 per minute",
        # Per client IP, nearest searches by street address (those may go to a network
        # geocoder, which is slow and limited itself); counted on top of RATELIMIT_PUBLIC.
        "RATELIMIT_GEOCODE": "30 per minute",
        # Per API key (its id, never the key), POST /v1/referrals.
        "RATELIMIT_REFERRALS": "600 per minute",
        # Per API key (its id), public directory GETs made with a usable key: instead of
        # RATELIMIT_PUBLIC, so an editor is not held by anonymous traffic from its address.
        "RATELIMIT_KEYED": "600 per minute",
        # Per client IP, requests to routes needing a key that are refused 401 (no usable
        # key); past it they get 429 before any lookup or audit. Usable keys are never held.
        "RATELIMIT_KEY_REFUSALS": "60 per minute",
        "RATELIMIT_HEADERS_ENABLED": True,
        # The limit store being down must not take the API down: fall back to per-process
        # counting in memory (logged) until it is back.
        "RATELIMIT_SWALLOW_ERRORS": True,
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
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


# The limits referral.ops.limits applies (checked at start: a typo must not fail requests).
RATE_LIMITS = (
    "RATELIMIT_PUBLIC",
    "RATELIMIT_KEYED",
    "RATELIMIT_GEOCODE",
    "RATELIMIT_REFERRALS",
    "RATELIMIT_KEY_REFUSALS",
)


def _number(config: Mapping[str, Any], name: str) -> float:
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{ENV_PREFIX}{name} must be a number: {value!r}")
    return float(value)


def check_settings(config: Mapping[str, Any]) -> None:
    """Refuse, naming the variable, settings that would make answers wrong rather than slow."""
    largest = _number(config, "NEAREST_MAX_RADIUS_KM")
    for urgency in ("ROUTINE", "SOON", "URGENT"):
        name = f"MATCH_REACH_{urgency}_KM"
        if not 0 < _number(config, name) <= largest:
            raise ValueError(
                f"{ENV_PREFIX}{name} must be above 0 and at most "
                f"{ENV_PREFIX}NEAREST_MAX_RADIUS_KM ({largest:g}): {config[name]!r}"
            )
    if _number(config, "MATCH_CONFIRMED_DETOUR_KM") < 0:
        raise ValueError(f"{ENV_PREFIX}MATCH_CONFIRMED_DETOUR_KM must be 0 or more")
    if _number(config, "MATCH_CONFIRMED_DETOUR_RATIO") < 1:
        raise ValueError(f"{ENV_PREFIX}MATCH_CONFIRMED_DETOUR_RATIO must be 1 or more")
    for name in ("IMPORT_MAX_ERRORS", "IMPORT_LEASE_SECONDS", "IMPORT_RUN_RETENTION_DAYS"):
        if not _number(config, name) > 0:
            raise ValueError(f"{ENV_PREFIX}{name} must be above 0: {config[name]!r}")
    if _number(config, "DATABASE_STATEMENT_TIMEOUT_MS") < 0:
        raise ValueError(f"{ENV_PREFIX}DATABASE_STATEMENT_TIMEOUT_MS must be 0 or more")
    for name in RATE_LIMITS:
        try:
            parse_many(str(config[name]))
        except ValueError:
            limit = config[name]
            raise ValueError(
                f"{ENV_PREFIX}{name} must be a rate limit such as '60 per minute': {limit!r}"
            ) from None


def _env_value(raw: str) -> Any:
    # As Flask's from_prefixed_env: JSON where it parses (numbers, booleans), else the text.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def server_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """SERVER_DEFAULTS overridden by REFERRAL_* variables (for gunicorn, before any app)."""
    environ = os.environ if environ is None else environ
    settings = dict(SERVER_DEFAULTS)
    for name in settings:
        raw = environ.get(f"{ENV_PREFIX}{name}")
        if raw is not None and raw != "":
            settings[name] = _env_value(raw)
    minimums = {"WORKERS": 1, "THREADS": 1, "TIMEOUT": 0, "GRACEFUL_TIMEOUT": 0, "KEEPALIVE": 0}
    for name, least in minimums.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{ENV_PREFIX}{name} must be a whole number >= {least}: {value!r}")
    settings["BIND"] = str(settings["BIND"])
    settings["LOG_LEVEL"] = str(settings["LOG_LEVEL"])
    reuse_port = settings["REUSE_PORT"]
    if not (reuse_port is True or reuse_port is False or reuse_port == "auto"):
        raise ValueError(f"{ENV_PREFIX}REUSE_PORT must be auto, true or false: {reuse_port!r}")
    return settings
