"""Operations: probes and metrics, request ids and JSON logs, rate limits, gunicorn config.

Nothing here is imported at package level: gunicorn's master loads referral.ops.logs and
referral.ops.gunicorn_config before it sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client
picks its storage when first imported, which must happen in the workers, after that.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Wire request ids, metrics, /healthz /readyz /metrics and rate limits into ``app``
    (after referral.web: limits attach to its blueprints and document them in its spec)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    from referral.ops import health, limits, metrics, requestid

    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies > 0:
        # X-Forwarded-For/-Proto as set by that many proxies; X-Forwarded-Host is not
        # trusted (a proxy that does not set it would pass the client's through).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    requestid.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(health.ops_blp)
    limits.init_app(app)
