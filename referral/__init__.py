"""referral: a physical-therapy clinic directory and referral service."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from referral.config import default_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """App factory: defaults, then ``REFERRAL_*`` environment variables, then ``config``."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(default_settings(app.instance_path))
    # Values are parsed as JSON where they can be (numbers, booleans, objects).
    app.config.from_prefixed_env(prefix="REFERRAL")
    if config:
        app.config.from_mapping(config)
    os.makedirs(app.instance_path, exist_ok=True)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep schema order: origin first

    from referral import commands, db
    from referral.web import init_web

    db.init_app(app)
    init_web(app)
    commands.init_app(app)
    return app
