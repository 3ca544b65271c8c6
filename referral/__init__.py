"""referral: a physical-therapy clinic directory and referral service."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from referral.config import check_settings, default_settings
from referral.web.json import OrjsonProvider


class ReferralFlask(Flask):
    def log_exception(self, exc_info: Any) -> None:
        # Only the type and the route: exception messages can carry request data (SQL
        # parameters, payload fragments), and referrals concern patients' health.
        exc_type = exc_info[0].__name__ if exc_info and exc_info[0] else "unknown"
        self.logger.error(
            "unhandled %s on %s %s", exc_type, request.method, request.url_rule or "(no route)"
        )


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """App factory: defaults, then ``REFERRAL_*`` environment variables, then ``config``."""
    # The instance folder (SQLite file, gazetteer cache) may be put elsewhere, e.g. a volume.
    app = ReferralFlask(
        __name__,
        instance_relative_config=True,
        instance_path=os.environ.get("REFERRAL_INSTANCE_PATH") or None,
    )
    app.config.from_mapping(default_settings(app.instance_path))
    # Values are parsed as JSON where they can be (numbers, booleans, objects).
    app.config.from_prefixed_env(prefix="REFERRAL")
    if config:
        app.config.from_mapping(config)
    check_settings(app.config)
    os.makedirs(app.instance_path, exist_ok=True)
    app.json = OrjsonProvider(app)
    app.json.sort_keys = False  # keep schema order: origin first

    from referral import commands, db, ops
    from referral.web import init_web

    db.init_app(app)
    init_web(app)
    ops.init_app(app)
    commands.init_app(app)
    return app
