"""`referral import FILE [--dry-run]`: the bulk import from the command line, on the same path
as the HTTP endpoint (referral/admin/imports/runs.py: the file read as it is planned, one
import at a time, the run recorded with its plan and errors)."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlmodel import Session

from referral.admin.imports import (
    FORMATS,
    OUTCOMES,
    Actor,
    ImportBusyError,
    ImportConflictError,
    ImportSettings,
    LeaseLostError,
    detect_format,
    run_import,
)
from referral.admin.imports.base import Progress
from referral.admin.imports.runs import APPLIED, ERRORS, PLAN, stream_entries
from referral.admin.models import ImportRun
from referral.db import get_database
from referral.geo.chain import get_geocoder


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    return f"cli ({user})"[:120]


class _Bars:
    """A progress bar over the file's bytes while rows are checked, then one over the rows
    written (click's bars, opened and closed as the import moves on)."""

    def __init__(self, size: int) -> None:
        self._bar: Any = None
        self._open(size, "checking rows")

    def _open(self, length: int, label: str) -> Progress:
        self.close()
        self._bar = click.progressbar(length=max(length, 1), label=label)
        self._bar.__enter__()
        return self._bar.update

    def read(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def writing(self, rows: int) -> Progress:
        return self._open(rows, "writing")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class _Counted:
    """A binary file that tells ``seen`` how many bytes each read took."""

    def __init__(self, stream: IO[bytes], seen: Progress) -> None:
        self._stream = stream
        self._seen = seen

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._seen(len(data))
        return data


def _echo_counts(summary: dict[str, Any], verb: str) -> None:
    for kind, counts in (summary.get("counts") or {}).items():
        line = ", ".join(f"{counts[outcome]} {outcome}" for outcome in OUTCOMES)
        click.echo(f"{kind} {verb}: {line}")


def _echo_error(error: dict[str, Any]) -> None:
    where = f"row {error['row']}" if error["row"] else "file"
    if error["field"]:
        where += f", {error['field']}"
    click.echo(f"{where}: {error['reason']}", err=True)


def _entries(session: Session, run_id: int, kind: str) -> Iterator[dict[str, Any]]:
    for part in stream_entries(session, run_id, kind):
        for line in part.splitlines():
            yield json.loads(line)


def _echo_errors(session: Session, run: ImportRun, every: bool) -> None:
    assert run.id is not None
    shown = (run.summary or {}).get("errors", [])
    for error in _entries(session, run.id, ERRORS) if every else shown:
        _echo_error(error)
    hidden = run.error_count - len(shown)
    if hidden > 0 and not every:
        click.echo(f"... and {hidden} more error(s) (--all-errors lists them)", err=True)


def _echo_plan(session: Session, run_id: int) -> None:
    for entry in _entries(session, run_id, PLAN):
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
@click.option("--dry-run", is_flag=True, help="Check every row and show the counts; write nothing.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="csv or json (default: from the file name, else its first character).",
)
@click.option("--show-plan", is_flag=True, help="List every row: created, updated or unchanged.")
@click.option("--all-errors", is_flag=True, help="List every row error, not only the first.")
@click.option("--actor", default=None, help="Who imports, for the audit log (default: cli user).")
@with_appcontext
def import_command(
    file: Path, dry_run: bool, fmt: str | None, show_plan: bool, all_errors: bool, actor: str | None
) -> None:
    """Import clinics and locations from a CSV or JSON FILE, all rows in one transaction.

    Columns: clinic_name, phone, website, address, city, state, zip, lat, lon, specialties,
    specialties_not_offered (';'-separated codes); each row is one location of a clinic. Any
    row error: nothing is written and the errors are listed (exit status 1). The file is read
    as it is checked; one import runs at a time (the HTTP endpoint's too); each is recorded
    as an import run (GET /v1/admin/imports/ID)."""
    settings = ImportSettings.from_config(current_app.config)
    with file.open("rb") as raw, Session(get_database().engine) as session:
        fmt = fmt or detect_format(file.name, None, raw.read(64))
        raw.seek(0)
        bars = _Bars(file.stat().st_size)
        try:
            run = run_import(
                session,
                _Counted(raw, bars.read),  # type: ignore[arg-type]
                fmt,
                get_geocoder(),
                Actor(name=(actor or _default_actor())[:120]),
                dry_run=dry_run,
                source=file.name,
                settings=settings,
                writing=bars.writing,
            )
        except (ImportBusyError, ImportConflictError, LeaseLostError) as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            bars.close()
        assert run.id is not None
        summary = run.summary or {}
        click.echo(f"import run {run.id}: {run.state} (GET /v1/admin/imports/{run.id})")
        if show_plan:
            _echo_plan(session, run.id)
        if run.error_count:
            _echo_counts(summary, "planned")
            _echo_errors(session, run, all_errors)
            click.echo(f"{run.error_count} error(s): nothing was imported", err=True)
            raise click.exceptions.Exit(1)
        if run.state != APPLIED:
            _echo_counts(summary, "planned")
            click.echo("dry run: nothing was written")
            return
        _echo_counts(summary, "imported")
        click.echo(f"{summary.get('changes_recorded', 0)} change(s) recorded in the audit log")
