"""gunicorn's own error answers as problem details (RFC 9457), like every answer of the app.

Requests gunicorn cannot parse (a broken request line, a CR or LF inside a header, a header
block over its limits, conflicting lengths) never reach the app: gunicorn answers them itself,
with an HTML page quoting what it could not parse. gunicorn has no setting or hook for that
page; every worker writes it through ``gunicorn.util.write_error``, so each worker replaces
that one function after the fork (``post_fork`` in gunicorn_config.py). The answer names the
problem but never quotes the request back (it may hold a query string with an address).
"""

from __future__ import annotations

import http
import json
import socket

from referral.web.problems import PROBLEM_JSON

# What went wrong, per status gunicorn sends, in words that quote nothing from the request.
DETAILS = {
    400: "The request is not valid HTTP/1.1 (request line, header syntax or message framing).",
    403: "The request's forwarding headers came from an address that is not trusted.",
    414: "The request line is longer than the server accepts.",
    417: "The Expect header asks for something the server does not do.",
    431: "The request's header fields are larger or more numerous than the server accepts.",
    500: "The server could not complete the request.",
    501: "The request uses a transfer coding or method the server does not implement.",
}


def problem_bytes(status: int, reason: str) -> bytes:
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = reason
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": DETAILS.get(status, title),
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "\r\n"
    ).encode("latin-1")
    return head + body


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's signature; ``mesg`` (which quotes the request) is dropped."""
    from gunicorn import util

    util.write_nonblock(sock, problem_bytes(int(status_int), str(reason)))


def install() -> None:
    """Make this process's gunicorn answer its own errors with problem details."""
    from gunicorn import util

    util.write_error = write_problem


__all__ = ["DETAILS", "install", "problem_bytes", "write_problem"]
