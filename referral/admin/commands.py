"""`referral import FILE [--dry-run]`: the bulk import from the command line."""

from __future__ import annotations

import getpass
from pathlib import Path

import click
from flask.cli import with_appcontext

from referral.admin.imports import (
    FORMATS,
    OUTCOMES,
    Actor,
    ImportConflictError,
    ImportPlan,
    apply_import,
    detect_format,
    plan_import,
    read_import,
)
from referral.db import session_scope
from referral.geo.chain import get_geocoder

MAX_ERRORS_SHOWN = 200


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return f"cli ({user})"[:120]


def _echo_counts(plan: ImportPlan, verb: str) -> None:
    for kind, counts in plan.counts().items():
        summary = ", ".join(f"{counts[outcome]} {outcome}" for outcome in OUTCOMES)
        click.echo(f"{kind} {verb}: {summary}")


def _echo_errors(plan: ImportPlan) -> None:
    for error in plan.errors[:MAX_ERRORS_SHOWN]:
        where = f"row {error.row}" if error.row else "file"
        if error.field:
            where += f", {error.field}"
        click.echo(f"{where}: {error.reason}", err=True)
    hidden = len(plan.errors) - MAX_ERRORS_SHOWN
    if hidden > 0:
        click.echo(f"... and {hidden} more error(s)", err=True)


def _echo_plan(plan: ImportPlan) -> None:
    for entry in plan.row_plans():
        clinic, location = entry["clinic"], entry["location"]
        place = ", ".join(
            part for part in (location["address"], location["city"], location["state"]) if part
        )
        line = (
            f"row {entry['row']}: {entry['action']} (clinic {clinic['action']}: {clinic['name']}"
            f"; location {location['action']}: {place})"
        )
        click.echo(line + "".join(f" [{note}]" for note in entry["notes"]))


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check every row and show the plan; write nothing.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="csv or json (default: from the file name, else its first character).",
)
@click.option("--show-plan", is_flag=True, help="List every row: created, updated or unchanged.")
@click.option("--actor", default=None, help="Who imports, for the audit log (default: cli user).")
@with_appcontext
def import_command(
    file: Path, dry_run: bool, fmt: str | None, show_plan: bool, actor: str | None
) -> None:
    """Import clinics and locations from a CSV or JSON FILE, all rows in one transaction.

    Columns: clinic_name, phone, website, address, city, state, zip, lat, lon, specialties
    (';'-separated codes); each row is one location of a clinic. Any row error: nothing is
    written and the errors are listed (exit status 1)."""
    data = file.read_bytes()
    parsed = read_import(data, fmt or detect_format(file.name, None, data))
    with session_scope() as session:
        with click.progressbar(length=max(len(parsed.rows), 1), label="checking rows") as bar:
            plan = plan_import(session, parsed, get_geocoder(), progress=bar.update)
        if show_plan:
            _echo_plan(plan)
        if plan.errors:
            _echo_counts(plan, "planned")
            _echo_errors(plan)
            click.echo(f"{len(plan.errors)} error(s): nothing was imported", err=True)
            raise click.exceptions.Exit(1)
        if dry_run:
            _echo_counts(plan, "planned")
            click.echo("dry run: nothing was written")
            return
        try:
            with click.progressbar(length=max(plan.write_count, 1), label="writing") as bar:
                recorded = apply_import(
                    session,
                    plan,
                    Actor(name=(actor or _default_actor())[:120]),
                    source=file.name,
                    progress=bar.update,
                )
        except ImportConflictError as exc:
            raise click.ClickException(str(exc)) from exc
    _echo_counts(plan, "imported")
    click.echo(f"{recorded} change(s) recorded in the audit log")
