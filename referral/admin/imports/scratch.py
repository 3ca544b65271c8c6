"""The planner's scratch space: what it learns of a file, on disk instead of in memory.

A private temporary SQLite database (``sqlite3.connect("")``: a file SQLite deletes when it is
closed), one per import, with a bounded page cache: the clinics of the file (key, id, outcome
and the rest pickled), the locations seen (for "the same location as row N"), each planned
row, and every error. The planner reads and writes it a chunk of rows at a time; applying and
the stored plan read it back in batches. Nothing in it leaves the process.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from referral.admin.imports.base import RowError

# The page cache SQLite may keep of it (KiB): the rest stays on disk.
CACHE_KIB = 16 * 1024

_SCHEMA = """
CREATE TABLE clinic (
    idx INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, id INTEGER, action TEXT NOT NULL,
    planned INTEGER NOT NULL, state BLOB NOT NULL
);
CREATE TABLE seen (key TEXT PRIMARY KEY, row INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE location (
    row INTEGER PRIMARY KEY, clinic INTEGER NOT NULL, id INTEGER, action TEXT NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE error (
    seq INTEGER PRIMARY KEY, row INTEGER NOT NULL, field TEXT, reason TEXT NOT NULL
);
CREATE INDEX error_order ON error (row, seq);
"""

ClinicRecord = tuple[int, str, int | None, str, bool, bytes]  # idx, key, id, action, planned, state
LocationRecord = tuple[int, int, int | None, str, bytes]  # row, clinic idx, id, action, state


def dump(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def load(data: bytes) -> Any:
    return pickle.loads(data)  # our own scratch file, written by this process


def _marks(count: int) -> str:
    return ",".join("?" * count)


class Scratch:
    def __init__(self) -> None:
        self.db = sqlite3.connect("", check_same_thread=False)
        self.db.executescript(
            f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-{CACHE_KIB};"
            + _SCHEMA
        )
        self.errors = 0  # how many are stored

    def close(self) -> None:
        self.db.close()

    def commit(self) -> None:
        self.db.commit()

    # ---- clinics

    def clinics(self, keys: Sequence[str]) -> list[ClinicRecord]:
        if not keys:
            return []
        return self.db.execute(
            "SELECT idx, key, id, action, planned, state FROM clinic "
            f"WHERE key IN ({_marks(len(keys))})",
            keys,
        ).fetchall()

    def put_clinics(self, records: Iterable[ClinicRecord]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO clinic VALUES (?, ?, ?, ?, ?, ?)", records)

    def clinic_batches(
        self, size: int, *, action: str | None = None, stored_only: bool = False
    ) -> Iterator[list[ClinicRecord]]:
        """The clinics planned (a row of theirs is), in the order the file first named them,
        ``size`` at a time (each batch read afresh: the caller may update the ones it got);
        ``stored_only``: those the directory has (until applied: those with an id)."""
        where = ["idx > ?", "planned"]
        if stored_only:
            where.append("id IS NOT NULL")
        if action is not None:
            where.append("action = ?")
        sql = (
            "SELECT idx, key, id, action, planned, state FROM clinic "
            f"WHERE {' AND '.join(where)} ORDER BY idx LIMIT {int(size)}"
        )
        last = -1
        while True:
            batch = self.db.execute(sql, (last, action) if action else (last,)).fetchall()
            if not batch:
                return
            yield batch
            last = batch[-1][0]

    def set_clinics(self, updates: Iterable[tuple[str, bytes, int]]) -> None:
        """(action, state, idx) per clinic."""
        self.db.executemany("UPDATE clinic SET action = ?, state = ? WHERE idx = ?", updates)

    def set_clinic_ids(self, ids: Iterable[tuple[int, int]]) -> None:
        """(id, idx) per clinic."""
        self.db.executemany("UPDATE clinic SET id = ? WHERE idx = ?", ids)

    def clinic_counts(self) -> dict[str, int]:
        return dict(
            self.db.execute("SELECT action, count(*) FROM clinic WHERE planned GROUP BY action")
        )

    # ---- locations seen, and planned

    def seen(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        return dict(
            self.db.execute(
                f"SELECT key, row FROM seen WHERE key IN ({_marks(len(keys))})", keys
            ).fetchall()
        )

    def put_seen(self, items: Iterable[tuple[str, int]]) -> None:
        self.db.executemany("INSERT INTO seen VALUES (?, ?)", items)

    def put_locations(self, records: Iterable[LocationRecord]) -> None:
        self.db.executemany("INSERT INTO location VALUES (?, ?, ?, ?, ?)", records)

    def location_batches(
        self, size: int, *, action: str | None = None
    ) -> Iterator[list[tuple[int, int, int | None, str, bytes, int | None, str, bytes]]]:
        """Planned rows in file order, ``size`` at a time, each with its clinic: (row, clinic
        idx, id, action, state, clinic id, clinic action, clinic state)."""
        sql = (
            "SELECT l.row, l.clinic, l.id, l.action, l.state, c.id, c.action, c.state "
            "FROM location l JOIN clinic c ON c.idx = l.clinic "
            f"WHERE l.row > ?{' AND l.action = ?' if action else ''} "
            f"ORDER BY l.row LIMIT {int(size)}"
        )
        last = -1
        while True:
            batch = self.db.execute(sql, (last, action) if action else (last,)).fetchall()
            if not batch:
                return
            yield batch
            last = batch[-1][0]

    def set_location_ids(self, ids: Iterable[tuple[int, int]]) -> None:
        """(id, row) per planned row."""
        self.db.executemany("UPDATE location SET id = ? WHERE row = ?", ids)

    def row_counts(self) -> list[tuple[str, str, int]]:
        """(location action, clinic action, rows)."""
        return self.db.execute(
            "SELECT l.action, c.action, count(*) FROM location l JOIN clinic c "
            "ON c.idx = l.clinic GROUP BY l.action, c.action"
        ).fetchall()

    # ---- errors

    def put_errors(self, errors: Sequence[RowError]) -> None:
        self.db.executemany(
            "INSERT INTO error (row, field, reason) VALUES (?, ?, ?)",
            [(error.row, error.field, error.reason) for error in errors],
        )
        self.errors += len(errors)

    def first_errors(self, limit: int) -> list[RowError]:
        return [
            RowError(*found)
            for found in self.db.execute(
                "SELECT row, field, reason FROM error ORDER BY row, seq LIMIT ?", (limit,)
            )
        ]

    def error_rows(self) -> int:
        """How many rows (or the file, as row 0) have errors."""
        return int(self.db.execute("SELECT count(DISTINCT row) FROM error").fetchone()[0])

    def error_batches(self, size: int) -> Iterator[list[RowError]]:
        """Every error in row order (a row's in the order they were found)."""
        last: tuple[int, int] = (-1, -1)
        while True:
            batch = self.db.execute(
                "SELECT row, seq, field, reason FROM error WHERE (row, seq) > (?, ?) "
                f"ORDER BY row, seq LIMIT {int(size)}",
                last,
            ).fetchall()
            if not batch:
                return
            yield [RowError(row, field, reason) for row, _, field, reason in batch]
            last = (batch[-1][0], batch[-1][1])
