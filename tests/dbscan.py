"""Reading every stored row of a database, whatever its tables: snapshots to prove that
nothing changed, and scans to prove that a secret is stored nowhere.

Tables are found by reflection, so a table added later is covered without touching this.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# The audit trail: refused attempts are recorded there, by design.
AUDIT_TABLE = "audit_event"
# Columns that record use rather than content: authentication stamps a valid key's
# last_used_at before any scope or body check (and at most once a minute).
USAGE_COLUMNS = {("api_key", "last_used_at")}


def canonical(value: Any) -> str:
    """One text form per stored value, equal across SQLite and PostgreSQL."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


_REFLECTED: weakref.WeakKeyDictionary[Engine, sa.MetaData] = weakref.WeakKeyDictionary()


def _metadata(engine: Engine) -> sa.MetaData:
    """The database's tables, reflected once per engine (again when the set of tables changes)."""
    names = set(sa.inspect(engine).get_table_names())
    metadata = _REFLECTED.get(engine)
    if metadata is None or set(metadata.tables) != names:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        _REFLECTED[engine] = metadata
    return metadata


def table_names(engine: Engine) -> list[str]:
    return sorted(_metadata(engine).tables)


def rows(engine: Engine, table: str) -> Iterator[dict[str, Any]]:
    """Every row of ``table`` as {column: value}, in primary key order where there is one."""
    reflected = _metadata(engine).tables[table]
    order = list(reflected.primary_key.columns) or list(reflected.columns)
    with engine.connect() as connection:
        for row in connection.execute(sa.select(reflected).order_by(*order)):
            yield dict(row._mapping)


@dataclass(frozen=True)
class Snapshot:
    # Every table but the audit trail: sorted canonical rows, usage columns left out.
    tables: dict[str, list[str]]
    # The audit trail in id order: (id, action, referral_id, outcome, actor_key_id).
    audit: list[tuple[Any, ...]]


def snapshot(engine: Engine) -> Snapshot:
    tables: dict[str, list[str]] = {}
    audit: list[tuple[Any, ...]] = []
    for table in table_names(engine):
        for row in rows(engine, table):
            if table == AUDIT_TABLE:
                audit.append(
                    (row["id"], row["action"], row["referral_id"], row["outcome"],
                     row["actor_key_id"])
                )  # fmt: skip
                continue
            kept = {
                column: canonical(value)
                for column, value in row.items()
                if (table, column) not in USAGE_COLUMNS
            }
            tables.setdefault(table, []).append(json.dumps(kept, sort_keys=True))
        tables.setdefault(table, [])
        tables[table].sort()
    return Snapshot(tables, audit)


def changed_rows(before: Snapshot, after: Snapshot) -> dict[str, dict[str, list[str]]]:
    """Per table, the rows that disappeared and appeared (empty when nothing changed)."""
    found: dict[str, dict[str, list[str]]] = {}
    for table in sorted(set(before.tables) | set(after.tables)):
        old, new = before.tables.get(table, []), after.tables.get(table, [])
        if old != new:
            gone = [row for row in old if row not in new]
            added = [row for row in new if row not in old]
            found[table] = {"gone": gone, "added": added}
    return found


def text_cells(engine: Engine) -> Iterator[tuple[str, str, str]]:
    """(table, column, text) for every non-null cell of every table, as stored text.

    Values are rendered the way they are stored (JSON as JSON text, bytes decoded leniently),
    so a secret inside a JSON document or a blob is found as well as in a text column.
    """
    for table in table_names(engine):
        for row in rows(engine, table):
            for column, value in row.items():
                if value is None:
                    continue
                if isinstance(value, bytes | bytearray | memoryview):
                    text = bytes(value).decode("utf-8", errors="replace")
                elif isinstance(value, str):
                    text = value
                else:
                    text = json.dumps(value, default=str, ensure_ascii=False)
                yield table, column, text
