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
import os
import re
import sys
import time
import traceback
from json.encoder import encode_basestring_ascii
from typing import Any

from gunicorn import glogging

from referral.ops import requestid

MAX_PATH_CHARS = 200
# gunicorn's warning for a request it cannot parse quotes the request line (an address, maybe
# a patient's, when a client sends one unencoded): only its address and the error's kind stay.
_INVALID_REQUEST = "Invalid request from ip="
_IP_CHARS = frozenset("0123456789abcdefABCDEF.:[]")
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"]+")
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The methods nearly every request uses, already as the access line writes them.
_QUOTED_METHODS = {
    method: f'"{method}"' for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


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


# (whole second, its "YYYY-MM-DDTHH:MM:SS"): formatted once a second, not once a line. One
# tuple, replaced whole, so threads never see a second with another second's text.
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """``2026-01-05T14:03:11.207Z``: UTC, milliseconds, exactly as
    ``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`` (rounded to
    the microsecond, half to even, then truncated to the millisecond)."""
    global _second
    second = int(created)
    micros = round((created - second) * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{micros // 1000:03d}Z"


# The process id, read again in a forked child (gunicorn's workers).
_pid = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_new_pid)

# As json.dumps writes a str (the C encoder; ASCII only, as json.dumps by default).
_json_str = encode_basestring_ascii


def _json_text(value: Any) -> str:
    """A JSON string for ``value``, or null: what json.dumps(value, default=str) writes for the
    access log's text fields."""
    if value is None:
        return "null"
    return _json_str(value if isinstance(value, str) else str(value))


def _json_int(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, default=str)


_ACCESS_LINE = (
    '{"ts": "%s", "level": "INFO", "logger": "gunicorn.access", "msg": "request", "pid": %d, '
    '"request_id": %s, "method": %s, "route": %s, "path": %s, "status": %s, '
    '"duration_ms": %r, "bytes": %s, "remote_addr": %s}'
)


def access_line(
    created: float,
    request_id: str | None,
    method: str | None,
    route: str | None,
    path: str | None,
    status: int,
    duration_ms: float,
    sent: int | None,
    remote_addr: str | None,
) -> str:
    """One access log line, as JsonFormatter would write the same fields (same keys, order and
    spacing), from one template: no dict, no json.dumps, no LogRecord."""
    return _ACCESS_LINE % (
        _timestamp(created),
        _pid,
        _json_text(request_id),
        _QUOTED_METHODS.get(method or "") or _json_text(safe_method(method)),
        _json_text(route),
        _json_text(safe_path(path)),
        _json_int(status),
        duration_ms,
        _json_int(sent),
        _json_text(remote_addr),
    )


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


def _error_kind(fallback: str) -> str:
    # gunicorn logs these inside the ``except`` that caught the parse error.
    exc_type = sys.exc_info()[0]
    return exc_type.__name__ if exc_type is not None else fallback


def without_request_text(msg: Any, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """gunicorn's message and arguments with nothing quoted from a request: an unparsable
    request is logged as its client address and the error's kind (``InvalidHTTPVersion``),
    and an exception passed as an argument as its type (``NoMoreData``'s text quotes the
    bytes received)."""
    if isinstance(msg, str) and msg.startswith(_INVALID_REQUEST):
        ip = msg[len(_INVALID_REQUEST) :].partition(": ")[0]
        if not ip or len(ip) > 64 or not set(ip) <= _IP_CHARS:
            ip = "unknown"
        return f"{_INVALID_REQUEST}%s: %s", (ip, _error_kind("unparsable request"))
    if any(isinstance(arg, BaseException) for arg in args):
        args = tuple(type(a).__name__ if isinstance(a, BaseException) else a for a in args)
    return msg, args


class GunicornJsonLogger(glogging.Logger):
    """gunicorn's logger with JSON lines: its own messages, the access log, and (through the
    root logger, on stderr) everything the app and its libraries log.

    The access log is written once per request, so its line is made from a template
    (access_line) and written straight to the stream gunicorn opened for it, under that
    handler's lock, flushed at once: the same line JsonFormatter would write, for a fraction
    of the cost of a LogRecord, its formatting and json.dumps.
    """

    _access_streams: list[logging.Handler] = []

    # gunicorn's own messages, each without request text (see without_request_text).
    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = without_request_text(msg, args)
        super().critical(msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = without_request_text(msg, args)
        super().error(msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = without_request_text(msg, args)
        super().warning(msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = without_request_text(msg, args)
        super().info(msg, *args, **kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = without_request_text(msg, args)
        super().debug(msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = without_request_text(msg, args)
        super().exception(msg, *args, **kwargs)

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
        self._access_streams = self._plain_streams(self.access_log, formatter)

    @staticmethod
    def _plain_streams(log: logging.Logger, formatter: logging.Formatter) -> list[logging.Handler]:
        """The access log's handlers, when every one is a plain stream or file that gunicorn set
        up with our formatter and no filter: then a line can be written to them directly.
        Anything else (syslog, a logconfig, a filter, a file not open yet) takes the logging
        path."""
        handlers = list(log.handlers)
        plain = (logging.StreamHandler, logging.FileHandler)
        if not handlers or log.filters or log.disabled or not log.isEnabledFor(logging.INFO):
            return []
        for handler in handlers:
            if (
                type(handler) not in plain
                or handler.formatter is not formatter
                or handler.filters
                or handler.level > logging.INFO
                or getattr(handler, "stream", None) is None
            ):
                return []
        return handlers

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            status = getattr(resp, "status_code", None)
            if status is None:
                status = int(str(resp.status).split()[0])
            request_id = environ.get(requestid.ENVIRON_ID)
            method = getattr(req, "method", None)
            route = environ.get(requestid.ENVIRON_ROUTE)
            path = getattr(req, "path", None)
            duration_ms = round(request_time.total_seconds() * 1000, 3)
            sent = getattr(resp, "sent", None)
            remote_addr = environ.get("REMOTE_ADDR")
            log = self.access_log
            streams = self._access_streams
            if streams and log.handlers == streams and log.isEnabledFor(logging.INFO):
                line = access_line(
                    time.time(),
                    request_id,
                    method,
                    route,
                    path,
                    status,
                    duration_ms,
                    sent,
                    remote_addr,
                )
                self._write_access(streams, line)
                return
            fields = {
                "request_id": request_id,
                "method": safe_method(method),
                "route": route,
                "path": safe_path(path),
                "status": status,
                "duration_ms": duration_ms,
                "bytes": sent,
                "remote_addr": remote_addr,
            }
            log.info("request", extra={"fields": fields})
        except Exception:
            self.error("could not write an access log line", exc_info=True)

    @staticmethod
    def _write_access(handlers: list[logging.Handler], line: str) -> None:
        # What StreamHandler.emit does with a formatted line, without making a record.
        for handler in handlers:
            stream_handler: logging.StreamHandler[Any] = handler  # type: ignore[assignment]
            with stream_handler.lock:  # type: ignore[union-attr]
                stream_handler.stream.write(line + "\n")
                stream_handler.stream.flush()
