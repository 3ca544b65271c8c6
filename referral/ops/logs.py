"""Structured logs: one JSON object per line, for gunicorn (access and error) and the app.

What a line may hold is decided here: the request id, method, route (the URL rule, e.g.
``/v1/clinics/<int:clinic_id>``), path *without* its query string (query strings carry
visitors' addresses), status, duration, response size, client address, process id. Never a
body, a query string, a header value other than the request id, an API key or a patient
reference. Exceptions are logged as their type and stack, without the message (messages can
quote SQL parameters or payload fragments).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

from gunicorn import glogging

from referral.ops import requestid

MAX_PATH_CHARS = 200
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"]+")
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def strip_query(text: str) -> str:
    """``/v1/x?address=...`` -> ``/v1/x``: what gunicorn's own messages quote of a request."""
    return text.split("?", 1)[0]


def safe_method(method: str | None) -> str:
    # Clients may send any token as a method: keep the line bounded and printable.
    if method and len(method) <= 16 and set(method) <= _METHOD_CHARS:
        return method
    return "OTHER"


def safe_path(path: str | None) -> str | None:
    if path is None:
        return None
    path = strip_query(path)
    return path if len(path) <= MAX_PATH_CHARS else path[:MAX_PATH_CHARS] + "..."


def _timestamp(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _stack_without_message(exc_info: Any) -> tuple[str, str]:
    exc_type, _exc, tb = exc_info
    name = exc_type.__name__ if exc_type is not None else "unknown"
    frames = "".join(traceback.format_tb(tb)) if tb is not None else ""
    return name, f"Traceback (most recent call last):\n{frames}{name}"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "pid", "request_id"?, ...fields}`` on one line.

    Structured values come in ``extra={"fields": {...}}``; the request id is added to any
    line logged while a request is handled.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": self._message(record),
            "pid": record.process,
        }
        request_id = requestid.request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc_type"], entry["traceback"] = _stack_without_message(record.exc_info)
        return json.dumps(entry, default=str)

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name.startswith("gunicorn"):
            # gunicorn quotes request lines in some messages ("Error handling request
            # /v1/...?address=...", invalid request lines at debug): drop the query strings.
            message = _QUERY_IN_TEXT.sub("?...", message)
        return message


class GunicornJsonLogger(glogging.Logger):
    """gunicorn's logger with JSON lines: its own messages, the access log, and (through the
    root logger, on stderr) everything the app and its libraries log."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)
        root = logging.getLogger()
        ours = [handler for handler in root.handlers if getattr(handler, "_referral_json", False)]
        if not ours:
            handler = logging.StreamHandler(sys.stderr)
            handler._referral_json = True  # type: ignore[attr-defined]
            root.addHandler(handler)
            ours = [handler]
        for handler in ours:
            handler.setFormatter(formatter)
        # Never below INFO for libraries: at DEBUG some log request URLs (an address, maybe a
        # patient's); gunicorn's own logger follows --log-level as usual.
        root.setLevel(max(logging.INFO, self.loglevel))
        # alembic says "Context impl PostgresqlImpl" at INFO on every readiness probe.
        logging.getLogger("alembic").setLevel(max(logging.WARNING, self.loglevel))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            status = getattr(resp, "status_code", None)
            if status is None:
                status = int(str(resp.status).split()[0])
            fields = {
                "request_id": environ.get(requestid.ENVIRON_ID),
                "method": safe_method(getattr(req, "method", None)),
                "route": environ.get(requestid.ENVIRON_ROUTE),
                "path": safe_path(getattr(req, "path", None)),
                "status": status,
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "bytes": getattr(resp, "sent", None),
                "remote_addr": environ.get("REMOTE_ADDR"),
            }
            self.access_log.info("request", extra={"fields": fields})
        except Exception:
            self.error("could not write an access log line", exc_info=True)
