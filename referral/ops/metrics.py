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
import time

from flask import Flask, Response, g, request
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
    "(found, not_found, error).",
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


def init_app(app: Flask) -> None:
    def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    def count(response: Response) -> Response:
        started = g.get("metrics_started")
        endpoint = request.endpoint or UNMATCHED
        method = request.method if request.method in METHODS else "OTHER"
        REQUESTS.labels(endpoint=endpoint, method=method, status=str(response.status_code)).inc()
        if started is not None:
            LATENCY.labels(endpoint=endpoint, method=method).observe(time.perf_counter() - started)
        return response

    # First of all before-request hooks, so a request refused by an earlier hook is timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, start_clock)
    app.after_request(count)
