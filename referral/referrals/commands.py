"""`referral referrals ...`: maintenance of the referral log."""

from __future__ import annotations

from datetime import timedelta

import click
from flask.cli import with_appcontext

from referral.db import get_database, session_scope
from referral.referrals import audit
from referral.referrals.log import purge


@click.group("referrals")
def referrals() -> None:
    """Maintain the referral log."""


@referrals.command("purge")
@click.option(
    "--older-than",
    "days",
    required=True,
    type=click.FloatRange(min=0),
    help="Purge referrals created more than DAYS days ago.",
)
@with_appcontext
def purge_command(days: float) -> None:
    """Remove assessment payloads and patient refs of old referrals; counts, statuses and
    matches stay, so statistics do not change."""
    with session_scope() as session:
        report = purge(session, timedelta(days=days))
    if report.referral_ids:
        audit.record(
            get_database().engine,
            actor_key_id=None,
            action="referral.purge",
            outcome="ok",
            referral_ids=report.referral_ids,
        )
    click.echo(
        f"purged {len(report.referral_ids)} referrals; "
        f"cleared {report.idempotency_records} stored idempotent responses"
    )
