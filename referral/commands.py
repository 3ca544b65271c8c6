"""Commands of the ``referral`` CLI (and of ``flask --app referral``): db, seed, serve, import."""

from __future__ import annotations

import os
import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from referral.migrations import runner

GUNICORN_CONFIG = "referral.ops.gunicorn_config"


def init_app(app: Flask) -> None:
    from referral.admin.commands import import_command
    from referral.auth.commands import keys
    from referral.backup import db_backup
    from referral.referrals.commands import referrals

    db.add_command(db_backup)
    for command in (db, seed, serve, keys, referrals, import_command):
        app.cli.add_command(command)


@click.group()
def db() -> None:
    """Database schema (alembic migrations: the only way the schema is made)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Migrate the database up to REVISION."""
    runner.upgrade(current_app, revision)
    click.echo(f"database at {runner.current_revision(current_app)}")


@db.command("downgrade")
@click.argument("revision")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (e.g. base)."""
    runner.downgrade(current_app, revision)
    click.echo(f"database at {runner.current_revision(current_app)}")


@db.command("current")
@with_appcontext
def db_current() -> None:
    """Show the database's revision and the code's head."""
    click.echo(f"current: {runner.current_revision(current_app)}")
    click.echo(f"head: {runner.head_revision(current_app)}")


@db.command("revision")
@click.option("-m", "--message", required=True)
@with_appcontext
def db_revision(message: str) -> None:
    """Write a new migration from the difference between the models and the database."""
    runner.make_revision(current_app, message)


@click.command("seed")
@with_appcontext
def seed() -> None:
    """Migrate, then load seed_data/ (idempotent: a second run changes nothing)."""
    from referral.directory.seed import KINDS
    from referral.seed import seed_once

    # Each under its own lock (see runner.exclusive): any number of replicas may run this at once.
    runner.upgrade(current_app)
    report = seed_once(current_app._get_current_object())  # type: ignore[attr-defined]
    for kind in KINDS:
        click.echo(
            f"{kind}: {report.created[kind]} created, {report.updated[kind]} updated, "
            f"{report.unchanged[kind]} unchanged"
        )


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.option("--bind", help="HOST:PORT  [default: REFERRAL_BIND, else 127.0.0.1:8000]")
@click.option("--workers", type=click.IntRange(min=1), help="[default: REFERRAL_WORKERS, else 2]")
@click.option("--threads", type=click.IntRange(min=1), help="[default: REFERRAL_THREADS, else 4]")
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def serve(
    bind: str | None, workers: int | None, threads: int | None, gunicorn_args: tuple[str, ...]
) -> None:
    """Serve referral:create_app() with gunicorn, configured by referral/ops/gunicorn_config.py
    (REFERRAL_* settings, JSON logs, metrics); extra arguments go to gunicorn."""
    argv = [sys.executable, "-m", "gunicorn", "--config", f"python:{GUNICORN_CONFIG}"]
    for flag, value in (("--bind", bind), ("--workers", workers), ("--threads", threads)):
        if value is not None:
            argv += [flag, str(value)]
    argv += [*gunicorn_args, "referral:create_app()"]
    # exec: gunicorn becomes this process, so signals reach it directly.
    os.execv(sys.executable, argv)
