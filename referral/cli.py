"""The ``referral`` console script: a Flask CLI group over create_app (see commands.py)."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup

from referral import create_app


def _app_factory() -> Flask:
    return create_app()


@click.group(cls=FlaskGroup, create_app=_app_factory)
def main() -> None:
    """referral: the clinic directory and referral service."""
