"""A bare Flask ping: the floor ``/healthz`` is compared with, served by the same gunicorn
settings as the service (``gunicorn bench.ping:app``)."""

from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping() -> Response:
    return jsonify(status="ok")
