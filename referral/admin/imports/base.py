"""What every step of the import shares: the columns, a row error, who imports, the keys rows
are matched by."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from referral.auth.models import ApiKey
from referral.web.text import FORMULA_PREFIXES as TEXT_FORMULA_PREFIXES

COLUMNS = (
    "clinic_name", "phone", "website", "address", "city", "state", "zip", "lat", "lon",
    "specialties", "specialties_not_offered",
)  # fmt: skip
# The columns of specialty codes: offered, then on record as not offered.
SPECIALTY_COLUMNS = ("specialties", "specialties_not_offered")
REQUIRED_COLUMNS = ("clinic_name", "city", "state")
SPECIALTY_SEPARATOR = ";"
FORMATS = ("csv", "json")
# Spreadsheet formula triggers (referral/web/text.py): exports prefix such cells with "'";
# imports take it off again.
FORMULA_PREFIXES = TEXT_FORMULA_PREFIXES

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
OUTCOMES = (CREATED, UPDATED, UNCHANGED)

IMPORT_SOURCE = "import"  # geocode_source of coordinates given in an import (precision manual)
CHUNK_ROWS = 5000  # rows read, checked and planned at a time
BATCH_ROWS = 2000  # rows per bulk statement (and per progress step of the writes)
DEFAULT_MAX_ERRORS = 100  # row errors an answer lists (all are stored with the run)

# What an error may quote of the file: a header cell or a JSON key can be any length.
_FIELD_MAX = 100
_REASON_MAX = 500

Progress = Callable[[int], None]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a chunk holds some ten thousand small objects, and
    the collector's repeated scans of them would double the time. Nothing here makes
    reference cycles; the previous state is restored."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ImportConflictError(RuntimeError):
    """A clinic or location changed between planning and writing (its version moved on)."""


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True, slots=True)
class RowError:
    """``row`` as in the file (CSV: the header is row 1; JSON: the n-th object is row n;
    0: the file as a whole); ``field`` is the column, or None for the whole row."""

    row: int
    field: str | None
    reason: str

    @classmethod
    def quoting(cls, row: int, field: str | None, reason: str) -> RowError:
        """An error whose field or reason quotes the file: clipped, so that an answer listing
        errors stays small whatever the file holds."""
        return cls(
            row,
            None if field is None else _clipped(field, _FIELD_MAX),
            _clipped(reason, _REASON_MAX),
        )

    @property
    def name(self) -> str:
        """How problem details name it: ``rows[N].field``, ``rows[N]``, or ``file``."""
        if self.row == 0:
            return "file"
        return f"rows[{self.row}].{self.field}" if self.field else f"rows[{self.row}]"

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class Actor:
    """Who imports: recorded in the change log and on the import run."""

    name: str
    key_id: int | None = None

    @classmethod
    def from_key(cls, key: ApiKey) -> Actor:
        return cls(name=key.name, key_id=key.id)


@dataclass(frozen=True, slots=True)
class SourceRow:
    row: int
    values: dict[str, Any]  # column -> raw value, for the columns the row gives


def collapse(text: str | None) -> str:
    return " ".join((text or "").split())


def clinic_key(name: str | None, phone: str | None) -> str:
    """A clinic's identity as one string: its phone (E.164, or empty), a tab, its name folded.
    (Neither holds a tab: a phone is digits, a collapsed name has no tabs.)"""
    return f"{phone or ''}\t{collapse(name).casefold()}"


def location_key(
    address: str | None, city: str | None, state: str | None, zip_code: str | None
) -> str:
    """A location's place within its clinic as one string (collapsed parts hold no tabs)."""
    return "\t".join(
        (
            collapse(address).casefold(),
            collapse(city).casefold(),
            collapse(state).casefold(),
            collapse(zip_code).casefold(),
        )
    )
