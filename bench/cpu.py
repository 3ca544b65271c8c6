"""App CPU per request, in-process: ``python -m bench.cpu URL BASELINE LIMIT_STORAGE`` with
the API key on stdin prints {endpoint: ms} as JSON. Run by bench/run.py in a fresh process."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import data  # noqa: E402
from referral import create_app  # noqa: E402
from referral.db import get_database  # noqa: E402

# Limits no load here can reach: the limiter's bookkeeping (a Redis round trip per request)
# is measured, a 429 never happens. bench/run.py sets the server's limits to this too.
HIGH_LIMIT = "1000000000 per minute"
CPU_REQUESTS = 300
WARM = 30


def app_cpu(url: str, key: str, baseline: str, limit_storage: str) -> dict[str, float]:
    """CPU milliseconds per request of each endpoint in this process: Flask's test client,
    no HTTP server, no load generator, nothing else competing. Not a target; it says what
    each request costs the app itself, which is what bounds the throughput ratios."""
    from referral.geo.gazetteer import get_gazetteer

    app = create_app(
        {
            "DATABASE_URL": url,
            "RATELIMIT_STORAGE_URI": limit_storage,
            "RATELIMIT_PUBLIC": HIGH_LIMIT,
            "RATELIMIT_REFERRALS": HIGH_LIMIT,
            "RATELIMIT_GEOCODE": HIGH_LIMIT,
        }
    )
    gazetteer = get_gazetteer(str(REPO / "instance"))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    # Other origins and bodies than the load's (other seeds): nothing is answered twice.
    paths = data.nearest_paths(CPU_REQUESTS + WARM, gazetteer, seed=101)
    bodies = data.referral_bodies(CPU_REQUESTS + WARM, gazetteer, seed=102)
    post = partial(client.post, "/v1/referrals", content_type="application/json", headers=headers)
    calls: dict[str, list[Callable[[], Any]]] = {
        "healthz": [partial(client.get, baseline)] * (CPU_REQUESTS + WARM),
        "nearest": [partial(client.get, path) for path in paths],
        "referral": [partial(post, data=body) for body in bodies],
    }
    costs = {}
    try:
        for name, requests in calls.items():
            for call in requests[:WARM]:  # warm: the index, caches, connections
                call()
            started = time.process_time()
            for call in requests[WARM:]:
                status = call().status_code
                if status >= 400:
                    raise RuntimeError(f"in-process {name}: HTTP {status}")
            costs[name] = (time.process_time() - started) / CPU_REQUESTS * 1000
    finally:
        get_database(app).dispose()
    return costs


def main() -> None:
    url, baseline, limit_storage = sys.argv[1:4]
    key = sys.stdin.read().strip()
    print(json.dumps(app_cpu(url, key, baseline, limit_storage)))


if __name__ == "__main__":
    main()
