"""Prometheus metrics: requests and their latency per endpoint, referrals created, geocoder
calls and geocode cache hits.

Under gunicorn every worker is a process with its own counters. gunicorn's config
(referral/ops/gunicorn_config.py) points PROMETHEUS_MULTIPROC_DIR at a directory made for
this server before any worker starts; prometheus_client then keeps each process's values in
files there, and /metrics, whichever worker answers, sums them all (dead workers' counts
included, so counters never go back). Without that variable (tests, ``flask run``) the
counts are this process's own.

Labels are bounded: the endpoint is the Flask endpoint name (``locations.Nearest``), never
the path or query string; the method is one of the standard ones or OTHER.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"  # no route (404, or 405 on a known path)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "referral_http_requests",
    "HTTP requests answered, by endpoint, method and status.",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "referral_http_request_duration_seconds",
    "Time from the request reaching the app to its response headers, by endpoint and method.",
    ["endpoint", "method"],
)
REFERRALS_CREATED = Counter("referral_referrals_created", "Referrals created (not replays).")
GEOCODER_CALLS = Counter(
    "referral_geocoder_calls",
    "Calls to the network geocoder (cache misses), by provider and outcome "
    "(found, not_found, error; busy: refused at once, the shared request budget spent).",
    ["provider", "outcome"],
)
GEOCODE_CACHE_HITS = Counter(
    "referral_geocode_cache_hits",
    "Network geocoder queries answered from the database cache, by provider.",
    ["provider"],
)


def referral_created() -> None:
    REFERRALS_CREATED.inc()


def geocoder_called(provider: str, outcome: str) -> None:
    GEOCODER_CALLS.labels(provider=provider, outcome=outcome).inc()


def geocode_cache_hit(provider: str) -> None:
    GEOCODE_CACHE_HITS.labels(provider=provider).inc()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> Response:
    """Every metric in the Prometheus text format, summed over this server's workers."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    response = Response(body, status=200)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


# (endpoint, method, status) -> the counter's and the histogram's children for those labels.
# Label values are bounded (endpoint names, METHODS + OTHER, HTTP statuses), so is this.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def request_answered(endpoint: str | None, method: str, status: int, seconds: float | None) -> None:
    """Count one answered request and its duration (when it was timed).

    ``labels()`` checks and converts its arguments and takes a lock on every call: the two
    children are looked up once per label set and kept, so a request costs three value
    updates (the counter, the histogram's sum and one bucket) and nothing else.
    """
    # Keyed by the labels, never the raw method: clients may send any token as a method.
    key = (endpoint or UNMATCHED, method if method in METHODS else "OTHER", status)
    children = _children.get(key)
    if children is None:
        children = _children.setdefault(
            key,
            (REQUESTS.labels(key[0], key[1], str(status)), LATENCY.labels(key[0], key[1])),
        )
    children[0].inc()
    if seconds is not None:
        children[1].observe(seconds)
