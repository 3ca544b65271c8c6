"""``referral keys``: create, list and revoke API keys.

A new key is printed once, alone on the last line of ``keys create``'s output; it is stored
nowhere (only its hash is) and printed by nothing else.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import click
from flask.cli import with_appcontext

from referral.auth.keys import ApiKeyError, create_key, get_key, list_keys, revoke_key
from referral.auth.models import SCOPES, ApiKey
from referral.db import session_scope
from referral.timeutil import as_utc, utcnow

# Options each ApiKeyError.field is reported against.
_PARAM_HINTS = {
    "name": "--name",
    "scopes": "--scopes",
    "clinic": "--clinic",
    "expires_at": "--expires-in-days",
    "key_id": "KEY_ID",
}


def _bad_parameter(exc: ApiKeyError) -> click.BadParameter:
    return click.BadParameter(str(exc), param_hint=_PARAM_HINTS.get(exc.field))


def _when(moment: datetime | None, empty: str = "-") -> str:
    if moment is None:
        return empty
    return as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def _status(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.is_expired(utcnow()):
        return "expired"
    return "active"


@click.group("keys")
def keys() -> None:
    """API keys for assessment apps, dashboards and clinics."""


@keys.command("create")
@click.option("--name", required=True, help="The app or partner (also the referral source).")
@click.option(
    "--scopes",
    required=True,
    metavar="SCOPE[,SCOPE]",
    help=f"Comma-separated, from: {', '.join(SCOPES)} (admin implies all).",
)
@click.option(
    "--clinic",
    "clinic_id",
    type=int,
    default=None,
    help="Bind the key to this clinic id (required for referrals:status).",
)
@click.option(
    "--expires-in-days",
    type=click.IntRange(min=1),
    default=None,
    help="Expire the key after N days (default: never).",
)
@with_appcontext
def keys_create(name: str, scopes: str, clinic_id: int | None, expires_in_days: int | None) -> None:
    """Create a key; it is printed once, alone on the last line, and never again."""
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    try:
        with session_scope() as session:
            row, key = create_key(
                session,
                name=name,
                scopes=scopes.split(","),
                clinic_id=clinic_id,
                expires_at=expires_at,
            )
            summary = [
                f"created API key {row.key_id} for {row.name!r}",
                f"  scopes:  {', '.join(row.scopes)}",
                f"  clinic:  {row.clinic_id if row.clinic_id is not None else '-'}",
                f"  expires: {_when(row.expires_at, 'never')}",
                f"  hint:    {row.hint}",
                "The key follows; it is shown only this once and cannot be recovered:",
            ]
    except ApiKeyError as exc:
        raise _bad_parameter(exc) from None
    # Only after the commit: a key that was never stored is never shown.
    for line in summary:
        click.echo(line)
    click.echo(key)


@keys.command("list")
@with_appcontext
def keys_list() -> None:
    """Every key (never the key itself: its hint)."""
    with session_scope() as session:
        rows = [
            (
                key.key_id,
                key.name,
                ",".join(key.scopes),
                str(key.clinic_id) if key.clinic_id is not None else "-",
                key.hint,
                _when(key.created_at),
                _when(key.expires_at, "never"),
                _when(key.revoked_at),
                _when(key.last_used_at, "never"),
                _status(key),
            )
            for key in list_keys(session)
        ]
    if not rows:
        click.echo("no API keys")
        return
    header = (
        "KEY_ID",
        "NAME",
        "SCOPES",
        "CLINIC",
        "HINT",
        "CREATED",
        "EXPIRES",
        "REVOKED",
        "LAST_USED",
        "STATUS",
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(line.rstrip())


@keys.command("revoke")
@click.argument("key_id")
@with_appcontext
def keys_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (from `referral keys list`); running servers refuse it within
    5 seconds (they trust a key's row for that long: API_KEY_CACHE_SECONDS)."""
    try:
        with session_scope() as session:
            already = get_key(session, key_id).revoked_at is not None
            row = revoke_key(session, key_id)
            verb = "was already revoked" if already else "revoked"
            message = f"API key {row.key_id} ({row.name}) {verb} at {_when(row.revoked_at)}"
    except ApiKeyError as exc:
        raise _bad_parameter(exc) from None
    click.echo(message)
