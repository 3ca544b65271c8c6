"""The PostGIS peer: what a team would write instead of the service's nearest search.

Flask over PostgreSQL + PostGIS (table ``peer_location``, loaded by bench/peerdb.py): a GiST
index on a ``geography(Point)`` column for the KNN order, a GIN index on a ``text[]`` of the
clinic's offered specialty codes for the filter, ``ST_Distance`` on geography (WGS84
spheroid) for the distance. Served by gunicorn as the service is (bench/run.py):
``BENCH_PEER_DATABASE_URL=postgresql://... gunicorn 'bench.peer:create_app()'``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
from flask import Flask, abort, jsonify, request

NEAREST = """
SELECT id, clinic_id, name, address, city, state, zip, lat, lon, specialties,
       ST_Distance(geog, ST_MakePoint(%(lon)s, %(lat)s)::geography) AS meters
FROM peer_location
WHERE specialties @> %(specialties)s::text[]
ORDER BY geog <-> ST_MakePoint(%(lon)s, %(lat)s)::geography
LIMIT %(limit)s
"""
COLUMNS = ("location_id", "clinic_id", "name", "address", "city", "state", "zip", "lat", "lon",
           "specialties")  # fmt: skip


def create_app(database_url: str | None = None) -> Flask:
    app = Flask(__name__)
    url = database_url or os.environ["BENCH_PEER_DATABASE_URL"]
    local = threading.local()  # one connection per gunicorn thread

    def connection() -> psycopg.Connection[Any]:
        if getattr(local, "conn", None) is None or local.conn.closed:
            local.conn = psycopg.connect(url, autocommit=True)
        return local.conn

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.get("/nearest")
    def nearest() -> Any:
        try:
            lat, lon = float(request.args["lat"]), float(request.args["lon"])
            limit = int(request.args.get("limit", 10))
        except (KeyError, ValueError):
            abort(400)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 1 <= limit <= 50):
            abort(400)
        args = {"lat": lat, "lon": lon, "limit": limit,
                "specialties": request.args.getlist("specialty")}  # fmt: skip
        rows = connection().execute(NEAREST, args).fetchall()
        results = [
            {**dict(zip(COLUMNS, row[:-1], strict=True)), "distance_km": round(row[-1] / 1000, 3)}
            for row in rows
        ]
        return jsonify(count=len(results), results=results)

    return app
