"""Edits that race through a real server (two workers, two threads each): of two PATCHes of
one record with the same ETag, or a PATCH and a DELETE, one wins and the other gets 412 with
how to recover, every time, whether the version check fails at the edit's flush or at its
commit; never a 500."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

from tests.helpers import auth
from tests.live import OPENER, serve

ROUNDS = 8


def call(base: str, method: str, path: str, key: str, **extra: Any) -> tuple[int, Any]:
    body = extra.pop("body", None)
    headers = auth(key, **extra)
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(f"{base}{path}", data=data, headers=headers, method=method)
    try:
        with OPENER.open(request, timeout=30) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), error.headers


def race(*calls: Any) -> list[tuple[int, Any, Any]]:
    """Run the calls at the same moment (a barrier), each on its own thread."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(n: int, call_args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
        barrier.wait()
        results[n] = call(*call_args, **call_kwargs)

    threads = [
        threading.Thread(target=run, args=(n, args, kwargs))
        for n, (args, kwargs) in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def edit(base: str, method: str, path: str, key: str, etag: str, body: Any = None) -> Any:
    """The arguments of one edit call, for ``race``."""
    return (base, method, path, key), {"If-Match": etag, "body": body}


def hours(day: str, n: int) -> dict[str, Any]:
    return {"opening_hours": {day: [["08:00", f"{10 + n}:00"]]}}


def one_won(results: list[tuple[int, Any, Any]], winner: int) -> None:
    statuses = sorted(status for status, _, _ in results)
    assert statuses == sorted([winner, 412]), results
    lost = next(body for status, body, _ in results if status == 412)
    assert lost["invalid_params"][0]["name"] == "If-Match"
    assert "fetch it again" in lost["detail"]


def test_racing_edits_give_one_winner_and_a_412(database_url, editor, tmp_path):
    key = editor["admin"]
    with serve(database_url, tmp_path, workers=2, threads=2) as served:
        base = served.base
        clinic = call(base, "GET", "/v1/clinics?q=Shea", key)[1][0]
        path = f"/v1/clinics/{clinic['id']}"
        for n in range(ROUNDS):
            etag = call(base, "GET", path, key)[2]["ETag"]
            results = race(
                edit(base, "PATCH", path, key, etag, {"website": f"https://a{n}.example"}),
                edit(base, "PATCH", path, key, etag, {"website": f"https://b{n}.example"}),
            )
            one_won(results, 200)
        location = call(base, "GET", path, key)[1]["locations"][0]
        location_path = f"{path}/locations/{location['id']}"
        for n in range(ROUNDS):
            etag = call(base, "GET", location_path, key)[2]["ETag"]
            # Values no earlier round set: both edits are real changes (a no-op wins no race).
            results = race(
                edit(base, "PATCH", location_path, key, etag, hours("mon", n)),
                edit(base, "PATCH", location_path, key, etag, hours("tue", n)),
            )
            one_won(results, 200)
        # A PATCH racing a DELETE: one of them, never both, never a 500.
        etag = call(base, "GET", path, key)[2]["ETag"]
        results = race(
            edit(base, "PATCH", path, key, etag, {"website": "https://c.example"}),
            edit(base, "DELETE", path, key, etag),
        )
        statuses = sorted(status for status, _, _ in results)
        assert statuses in ([200, 412], [204, 412]), results
    assert "Traceback" not in served.output()
