"""Applying a valid plan: bulk statements a batch at a time, the change log included; the
caller commits, so the import is one transaction (all rows, or none).

Batches are read back from the plan's scratch database: memory holds a batch, whatever the
file's size. The ids of what is created are written back to it, for the stored plan.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, cast

from sqlalchemy import CursorResult, Dialect, Table, bindparam, delete, func, select, text, update
from sqlalchemy.sql import sqltypes
from sqlmodel import Session, SQLModel

from referral.admin.imports.base import (
    BATCH_ROWS,
    CREATED,
    UPDATED,
    Actor,
    ImportConflictError,
    Progress,
    collector_paused,
)
from referral.admin.imports.plan import ClinicPlan, ImportPlan, location_state
from referral.admin.imports.scratch import load
from referral.admin.models import AdminChange
from referral.admin.service import LOCATION_FIELDS, change_diff
from referral.directory.models import Clinic, ClinicSpecialty, Location
from referral.directory.revision import bump_revision
from referral.timeutil import utcnow


def _table(model: type[SQLModel]) -> Table:
    """The model's Core table: bulk statements go through Core, not the ORM."""
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), BATCH_ROWS):
        yield items[start : start + BATCH_ROWS]


def _driver_value(table: Table, name: str, dialect: Dialect) -> Callable[[Any], Any] | None:
    """What Core does to a value of the column before the driver gets it (the dialect's own
    type's bind processor: datetimes as text on SQLite, JSON serialized, ...)."""
    column_type = table.c[name].type
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    if (
        process is not None
        and isinstance(column_type, sqltypes.JSON)
        and dialect.name == "sqlite"
        and getattr(dialect, "_json_serializer", None) is None
    ):
        # Core's processor is json.dumps(value) here (SQLite text needs no further
        # conversion): a dict takes the one reused encoder with json.dumps's own settings,
        # the same text without json.dumps's per-call set-up; anything else goes to Core.
        return partial(_json_or, process)
    return process


# json.dumps's settings; no circularity check (a change-log diff is a fresh tree of plain
# values, and a circular one would fail anyway).
_JSON_TEXT = json.JSONEncoder(check_circular=False).encode


def _json_or(process: Callable[[Any], Any], value: Any) -> Any:
    return _JSON_TEXT(value) if type(value) is dict else process(value)


def _insert(
    session: Session,
    table: Table,
    names: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    constants: dict[str, Any],
    progress: Progress | None,
) -> None:
    """INSERT ``rows`` (the values of ``names``; ``constants`` the same in every row), in
    batches: COPY on PostgreSQL with psycopg, else the driver's executemany.

    Not Core's executemany: its per-row parameter processing (a dict per row, every value
    through its type) cost more than the database's own work, and psycopg's executemany
    (one INSERT per row, pipelined) spends more time in Python than COPY does in all. The
    values still go through the columns' bind processors, as Core would send them; a
    constant once, not per row."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    fixed: list[Any] = []
    for name, value in constants.items():
        process = _driver_value(table, name, dialect)
        fixed.append(process(value) if process is not None else value)
    tail = tuple(fixed)
    processors = [
        (index, process)
        for index, name in enumerate(names)
        if (process := _driver_value(table, name, dialect)) is not None
    ]
    preparer = dialect.identifier_preparer
    columns = ", ".join(preparer.quote(name) for name in (*names, *constants))
    target = f"{preparer.format_table(table)} ({columns})"
    copy = dialect.name == "postgresql" and dialect.driver == "psycopg"
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"COPY {target} FROM STDIN"
        if copy
        else f"INSERT INTO {target} VALUES ({', '.join([marker] * (len(names) + len(tail)))})"
    )
    for batch in _batches(rows):
        # Column by column (C-level transposes and maps, no Python loop per row).
        cells: list[Sequence[Any]] = list(zip(*batch, strict=True))
        for index, process in processors:
            column = cells[index]
            if column.count(None) == len(column) and process(None) is None:
                continue  # nothing to convert (a JSON column left empty, say)
            cells[index] = list(map(process, column))
        cells.extend([value] * len(batch) for value in tail)
        values = list(zip(*cells, strict=True))
        if copy:
            # The transaction's own psycopg connection: COPY is part of it.
            driver = connection.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor, cursor.copy(sql) as writer:
                for value in values:
                    writer.write_row(value)
        else:
            connection.exec_driver_sql(sql, values)
        if progress is not None:
            progress(len(batch))


def _new_ids(session: Session, table: Table, count: int) -> list[int]:
    """Ids for ``count`` new rows of ``table``, given to them explicitly on insert (so no
    RETURNING, which SQLite's executemany has not, is needed to learn them).

    PostgreSQL: drawn from the table's sequence. SQLite: the ones SQLite itself would give,
    the next after the largest (the tables have no AUTOINCREMENT); the transaction already
    holds SQLite's write lock (``bump_revision`` wrote first), so no one else can take them."""
    if count == 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        return list(
            session.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence(:table, 'id')) "
                    "FROM generate_series(1, :n)"
                ),
                {"table": table.name, "n": count},
            ).scalars()
        )
    top = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(top + 1, top + 1 + count))


def _update_versioned(
    session: Session,
    table: Table,
    columns: Iterable[str],
    rows: list[dict[str, Any]],
    progress: Progress | None,
) -> None:
    """UPDATE ... WHERE id = :b_id AND version = :b_version, version + 1; a row whose version
    moved on since planning means someone else wrote it: ImportConflictError."""
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.version == bindparam("b_version"))
        .values(
            {**{name: bindparam(f"b_{name}") for name in columns}, "version": table.c.version + 1}
        )
    )
    checks_count = session.get_bind().dialect.supports_sane_multi_rowcount
    for batch in _batches(rows):
        result = cast(CursorResult[Any], session.execute(statement, list(batch)))
        if checks_count and result.rowcount != len(batch):
            raise ImportConflictError(
                f"{len(batch) - result.rowcount} {table.name} record(s) changed during the "
                "import; nothing was imported: try again"
            )
        if progress is not None:
            progress(len(batch))


def apply_import(
    session: Session,
    plan: ImportPlan,
    actor: Actor,
    *,
    source: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Write a valid plan with bulk statements and log each change; the caller commits (one
    transaction: all rows or none). Returns the number of change-log entries written.

    Raises ImportConflictError when a record changed since planning (roll back then)."""
    if not plan.valid:
        raise ValueError("a plan with row errors cannot be applied")
    with collector_paused():
        return _Writer(session, plan, actor, source, progress).run()


def _created_diff(after: dict[str, Any]) -> dict[str, Any]:
    """change_diff({}, after), without its lookups: every value but None, from None."""
    return {key: [None, value] for key, value in after.items() if value is not None}


_CLINIC_NEW = ("id", "name", "phone", "phone_original", "website", "source_text")
_LOCATION_NEW = ("id", "clinic_id", *LOCATION_FIELDS)
_CHANGE_NEW = ("entity", "entity_id", "clinic_id", "action", "diff")
# What an import may change of a stored location.
_MOVED = ("address_line1", "city", "state", "zip", "lat", "lon",
          "geocode_precision", "geocode_source", "time_zone")  # fmt: skip


class _Writer:
    def __init__(
        self,
        session: Session,
        plan: ImportPlan,
        actor: Actor,
        source: str | None,
        progress: Progress | None,
    ) -> None:
        self.session = session
        self.scratch = plan.scratch
        self.actor = actor
        self.source = source
        self.progress = progress
        self.changes = 0

    def run(self) -> int:
        # Bulk statements bypass the ORM's flush hook: mark the directory changed ourselves,
        # and stamp every row written with the revision. It comes first: on SQLite it takes
        # the write lock that _new_ids counts on.
        self.revision = bump_revision(self.session)
        self.now = utcnow()
        self.created: dict[str, Any] = {
            "needs_review": False,
            "review_reasons": [],
            "seed_key": None,
            "created_at": self.now,
            "updated_at": self.now,
            "version": 1,
            "revision": self.revision,
        }
        # In the change log's order: new clinics, changed clinics, new locations, changed ones.
        for batch in self.scratch.clinic_batches(BATCH_ROWS, action=CREATED):
            self._new_clinics([ClinicPlan.from_record(record) for record in batch])
        for batch in self.scratch.clinic_batches(BATCH_ROWS, action=UPDATED):
            self._changed_clinics([ClinicPlan.from_record(record) for record in batch])
        for rows in self.scratch.location_batches(BATCH_ROWS, action=CREATED):
            self._new_locations(rows)
        for rows in self.scratch.location_batches(BATCH_ROWS, action=UPDATED):
            self._changed_locations(rows)
        self.scratch.commit()
        return self.changes

    def _log(self, changes: list[tuple[Any, ...]]) -> None:
        """Change-log entries (_CHANGE_NEW)."""
        _insert(
            self.session,
            _table(AdminChange),
            _CHANGE_NEW,
            changes,
            {"at": self.now, "actor_key_id": self.actor.key_id, "actor": self.actor.name},
            self.progress,
        )
        self.changes += len(changes)

    def _new_clinics(self, clinics: list[ClinicPlan]) -> None:
        table = _table(Clinic)
        for clinic, clinic_id in zip(
            clinics, _new_ids(self.session, table, len(clinics)), strict=True
        ):
            clinic.id = clinic_id
        source = self.source
        _insert(
            self.session,
            table,
            _CLINIC_NEW,
            [
                (
                    clinic.id,
                    clinic.name,
                    clinic.phone,
                    clinic.phone_original,
                    clinic.website,
                    f"imported by {self.actor.name} (row {clinic.first_row})",
                )
                for clinic in clinics
            ],
            {
                "source_file": f"import: {source}"[:200] if source else "import",
                "active": True,
                **self.created,
            },
            self.progress,
        )
        self.scratch.set_clinic_ids((cast(int, clinic.id), clinic.idx) for clinic in clinics)
        _write_specialties(self.session, clinics, self.actor, self.source)
        self._log(
            [
                ("clinic", clinic.id, clinic.id, "create", _created_diff(clinic.state()))
                for clinic in clinics
            ]
        )

    def _changed_clinics(self, clinics: list[ClinicPlan]) -> None:
        _update_versioned(
            self.session,
            _table(Clinic),
            ("name", "website", "updated_at", "revision"),
            [
                {
                    "b_id": clinic.id,
                    "b_version": clinic.version,
                    "b_name": clinic.name,
                    "b_website": clinic.website,
                    "b_updated_at": self.now,
                    "b_revision": self.revision,
                }
                for clinic in clinics
            ],
            self.progress,
        )
        _write_specialties(self.session, clinics, self.actor, self.source)
        changes = []
        for clinic in clinics:
            assert clinic.id is not None and clinic.before is not None
            changes.append(
                (
                    "clinic",
                    clinic.id,
                    clinic.id,
                    "update",
                    change_diff(clinic.before, clinic.state()),
                )
            )
        self._log(changes)

    def _new_locations(self, rows: list[tuple[Any, ...]]) -> None:
        table = _table(Location)
        ids = _new_ids(self.session, table, len(rows))
        inserted = []
        changes = []
        for (_, _, _, _, state, clinic_id, _, _), location_id in zip(rows, ids, strict=True):
            values = load(state)[0]  # in LOCATION_FIELDS order
            inserted.append((location_id, clinic_id, *values))
            changes.append(
                ("location", location_id, clinic_id, "create",
                 _created_diff(dict(zip(LOCATION_FIELDS, values, strict=True))))
            )  # fmt: skip
        _insert(
            self.session,
            table,
            _LOCATION_NEW,
            inserted,
            {"city_original": None, "state_original": None, **self.created},
            self.progress,
        )
        self.scratch.set_location_ids(
            (location_id, row[0]) for row, location_id in zip(rows, ids, strict=True)
        )
        self._log(changes)

    def _changed_locations(self, rows: list[tuple[Any, ...]]) -> None:
        updates = []
        changes = []
        for _, _, location_id, _, state, clinic_id, _, _ in rows:
            values, before, version, _ = location_state(state)
            assert before is not None
            updates.append(
                {
                    "b_id": location_id,
                    "b_version": version,
                    **{f"b_{name}": values[name] for name in _MOVED},
                    "b_updated_at": self.now,
                    "b_revision": self.revision,
                }
            )
            changes.append(
                ("location", location_id, clinic_id or 0, "update", change_diff(before, values))
            )
        _update_versioned(
            self.session, _table(Location), (*_MOVED, "updated_at", "revision"), updates,
            self.progress,
        )  # fmt: skip
        self._log(changes)


def _write_specialties(
    session: Session, clinics: Iterable[ClinicPlan], actor: Actor, source: str | None
) -> None:
    """The clinics' specialty links as planned: a code in neither set any more goes, a new
    one comes, one that moved between offered and not offered is updated; each link written
    says what was said and who said so (the admin API's reasons)."""
    said_by = (f"import by {actor.name}: {source}" if source else f"import by {actor.name}")[:200]
    reasons = {offered: _reason(actor, offered) for offered in (True, False)}
    removed: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    added: list[tuple[int, str, bool, str]] = []
    for clinic in clinics:
        assert clinic.id is not None
        if not clinic.before:  # a new clinic: all its codes (no maps to build)
            added += [
                (clinic.id, code, offered, reasons[offered])
                for offered, codes in ((True, clinic.specialties),
                                       (False, clinic.specialties_not_offered))
                for code in sorted(set(codes))
            ]  # fmt: skip
            continue
        before = dict.fromkeys(clinic.before["specialties"], True)
        before.update(dict.fromkeys(clinic.before["specialties_not_offered"], False))
        after = dict.fromkeys(clinic.specialties, True)
        after.update(dict.fromkeys(clinic.specialties_not_offered, False))
        if before == after:
            continue  # the clinic changed otherwise
        removed.extend(
            {"b_clinic": clinic.id, "b_code": code} for code in sorted(before.keys() - after.keys())
        )
        for code, offered in sorted(after.items()):
            was = before.get(code)
            if was is None:
                added.append((clinic.id, code, offered, reasons[offered]))
            elif was != offered:
                moved.append(
                    {"b_clinic": clinic.id, "b_code": code, "b_offered": offered,
                     "b_reason": reasons[offered]}
                )  # fmt: skip
    table = _table(ClinicSpecialty)
    link = (
        table.c.clinic_id == bindparam("b_clinic"),
        table.c.specialty_code == bindparam("b_code"),
    )
    if removed:
        session.execute(delete(table).where(*link), removed)
    if moved:
        session.execute(
            update(table)
            .where(*link)
            .values(offered=bindparam("b_offered"), reason=bindparam("b_reason"), source=said_by),
            moved,
        )
    _insert(
        session,
        table,
        ("clinic_id", "specialty_code", "offered", "reason"),
        added,
        {"source": said_by},
        None,
    )


def _reason(actor: Actor, offered: bool) -> str:
    """A link's reason, as the admin API words it (service._said_by)."""
    return f"set by {actor.name}: {'offered' if offered else 'not offered'}"[:500]
