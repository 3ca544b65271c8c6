"""Operations: probes and metrics, request ids and JSON logs, rate limits, gunicorn config.

Nothing that imports prometheus_client is imported at package level: gunicorn's master loads
referral.ops.logs and referral.ops.gunicorn_config before it sets PROMETHEUS_MULTIPROC_DIR,
and prometheus_client picks its storage when first imported, which must happen in the
workers, after that (referral.ops.metrics is imported when an app is made).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from flask import Flask

from referral.ops.requestid import ENVIRON_ROUTE, HEADER, assign

# The same name as WSGI response headers spell it, for comparing.
_HEADER_LOWER = HEADER.lower()


def init_app(app: Flask) -> None:
    """Wire request ids, metrics, /healthz /readyz /metrics and rate limits into ``app``
    (after referral.web: limits attach to its blueprints and document them in its spec)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    from referral.ops import health, limits

    app.wsgi_app = EveryRequest(app.wsgi_app)  # type: ignore[method-assign]
    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies > 0:
        # X-Forwarded-For/-Proto as set by that many proxies; X-Forwarded-Host is not
        # trusted (a proxy that does not set it would pass the client's through).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    app.register_blueprint(health.ops_blp)
    limits.init_app(app)


class EveryRequest:
    """What every request gets, done once at the edge of the app (WSGI), not in Flask hooks:

    - its id (the caller's X-Request-ID when sane, else a new one) in the environ before the
      app sees the request, so every log line written meanwhile carries it;
    - when the app starts its answer (``start_response``): the id echoed in X-Request-ID (on
      every answer, errors included), the matched route left in the environ for gunicorn's
      access log, and the request counted and timed in the metrics, by endpoint, method and
      status, from reaching the app to its response headers.

    Two Flask hooks did this before: each hook Flask calls, and each header set through
    werkzeug's Headers, costs microseconds that every request, /healthz included, paid.
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        from referral.ops.metrics import request_answered

        self.wsgi_app = wsgi_app
        self.request_answered = request_answered

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = perf_counter()
        request_id = assign(environ)
        answered = self.request_answered
        counted = False

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal counted
            # The request Flask made (werkzeug leaves it in the environ): its matched rule.
            rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
            environ[ENVIRON_ROUTE] = rule.rule if rule is not None else None
            if any(name.lower() == _HEADER_LOWER for name, _ in headers):
                headers = [(n, v) for n, v in headers if n.lower() != _HEADER_LOWER]
            headers.append((HEADER, request_id))
            if not counted:  # start_response may be called again, with exc_info
                counted = True
                answered(
                    rule.endpoint if rule is not None else None,
                    environ.get("REQUEST_METHOD", "").upper(),
                    int(status[:3]),
                    perf_counter() - started,
                )
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)
