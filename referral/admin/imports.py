"""Bulk import of clinics and their locations from CSV or JSON, as plain functions over a session.

Each row is one location of a clinic, with the columns of ``COLUMNS``. A row's clinic is an
existing clinic with the same name (case and spacing aside) and phone (E.164), else a new one;
rows of one file with the same name and phone are one clinic. A row's location is the clinic's
location with the same address, city, state and ZIP (case and spacing aside), else a new one.

The steps: ``read_import`` (bytes to rows, or file-level errors), ``plan_import`` (every row
validated with the admin API's rules, matched against the directory loaded once, geocoded
offline; nothing written) and ``apply_import`` (the plan written with bulk statements, the
change log included; the caller commits, so the import is one transaction).

An empty cell (or an absent column, or a JSON null) never erases: ``website``,
``specialties`` and ``specialties_not_offered`` left empty keep the clinic's values (rows of
one clinic may leave them to one row; rows that give them must agree), ``lat``/``lon`` left
empty keep a location's stored coordinates, else the location is placed offline (ZIP
centroid, else city centroid). ``phone`` and the address columns are identity: empty there
means none. Imports never (de)activate.

Specialties, as the admin API has them: ``specialties`` (codes ``;``-separated in CSV, a list
or such a string in JSON) is every specialty the clinic is on record as offering and
``specialties_not_offered`` every one it is on record as not offering; a code in neither is
unknown, which is not "no". A clinic's codes given in one column leave the other column's
stored set (the newer statement wins) unless that column is given too; a code given in both
(in one row, or in two rows of one clinic) is an error. The links written say who said so
(``source``: the importer and the file's name) and whether the clinic offers the specialty.
"""

from __future__ import annotations

import copy
import csv
import gc
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from typing import Any, cast

import marshmallow as ma
from sqlalchemy import CursorResult, Dialect, Table, bindparam, delete, func, select, text, update
from sqlalchemy.sql import sqltypes
from sqlmodel import Session, SQLModel, col

from referral.admin.import_fast import (
    UNSURE,
    ColumnCheck,
    FastCheck,
    compile_column,
    compile_field,
    compile_list,
    fast_phone,
)
from referral.admin.models import AdminChange
from referral.admin.schemas import ClinicCreateSchema, LocationCreateSchema
from referral.admin.service import LOCATION_FIELDS, EditError, change_diff, normalize_phone
from referral.auth.models import ApiKey
from referral.directory.evidence import evidence_by_clinic
from referral.directory.models import (
    Clinic,
    ClinicSpecialty,
    GeocodePrecision,
    Location,
    Specialty,
)
from referral.directory.revision import bump_revision
from referral.geo.chain import GeocoderChain, GeocodeResult
from referral.timeutil import utcnow

COLUMNS = (
    "clinic_name", "phone", "website", "address", "city", "state", "zip", "lat", "lon",
    "specialties", "specialties_not_offered",
)  # fmt: skip
# The columns of specialty codes: offered, then on record as not offered.
SPECIALTY_COLUMNS = ("specialties", "specialties_not_offered")
REQUIRED_COLUMNS = ("clinic_name", "city", "state")
SPECIALTY_SEPARATOR = ";"
FORMATS = ("csv", "json")
# Spreadsheet formula triggers. Exports prefix such cells with "'"; imports take it off again.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
OUTCOMES = (CREATED, UPDATED, UNCHANGED)

IMPORT_SOURCE = "import"  # geocode_source of coordinates given in an import (precision manual)
_BATCH = 2000  # rows per bulk statement (and per progress step)

Progress = Callable[[int], None]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: an import holds a few hundred thousand small
    objects, and the collector's repeated scans of them would double its time. Nothing here
    makes reference cycles; the previous state is restored."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ImportConflictError(RuntimeError):
    """A clinic or location changed between planning and writing (its version moved on)."""


@dataclass(frozen=True)
class RowError:
    """``row`` as in the file (CSV: the header is row 1; JSON: the n-th object is row n;
    0: the file as a whole); ``field`` is the column, or None for the whole row."""

    row: int
    field: str | None
    reason: str

    @property
    def name(self) -> str:
        """How problem details name it: ``rows[N].field``, ``rows[N]``, or ``file``."""
        if self.row == 0:
            return "file"
        return f"rows[{self.row}].{self.field}" if self.field else f"rows[{self.row}]"


@dataclass(frozen=True)
class Actor:
    """Who imports: recorded in the change log."""

    name: str
    key_id: int | None = None

    @classmethod
    def from_key(cls, key: ApiKey) -> Actor:
        return cls(name=key.name, key_id=key.id)


@dataclass(frozen=True, slots=True)
class SourceRow:
    row: int
    values: dict[str, Any]  # column -> raw value, for the columns the row gives


@dataclass
class ParsedFile:
    format: str
    rows: list[SourceRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


# ---- reading ------------------------------------------------------------------------------


def detect_format(filename: str | None, mimetype: str | None, data: bytes) -> str:
    """csv or json: from the file name, else the media type, else the first character."""
    name = (filename or "").lower()
    for fmt in FORMATS:
        if name.endswith(f".{fmt}"):
            return fmt
    media = (mimetype or "").lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media in ("text/csv", "application/csv"):
        return "csv"
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head[:1] in (b"[", b"{") else "csv"


def read_import(data: bytes, fmt: str) -> ParsedFile:
    """The rows of a CSV or JSON file (UTF-8), or the file-level errors."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ParsedFile(fmt, errors=[RowError(0, None, f"not UTF-8 text ({exc.reason})")])
    with _collector_paused():  # a row's dict per row: see _collector_paused
        return read_csv(text) if fmt == "csv" else read_json(text)


def _unknown_column(name: str) -> str:
    return f"unknown column {name!r} (known: {', '.join(COLUMNS)})"


def _unquoted(text: str) -> str:
    """A stripped cell without an export's defusing of a formula trigger."""
    if len(text) > 1 and text[0] == "'" and text[1] in FORMULA_PREFIXES:
        return text[1:]
    return text


def read_csv(text: str) -> ParsedFile:
    parsed = ParsedFile("csv")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str | None] | None = None
    named: list[str] | None = None  # the header, when every column has a known name
    try:
        for number, record in enumerate(reader, start=1):
            if header is None:
                header = _read_header(record, parsed.errors)
                named = [name for name in header if name]
                if len(named) != len(header):
                    named = None
                continue
            cells = [cell.strip() for cell in record]
            if not any(cells):
                continue  # blank lines and rows of empty cells (spreadsheets leave them)
            if len(cells) != len(header):
                parsed.errors.append(
                    RowError(number, None, f"has {len(record)} cells; the header has {len(header)}")
                )
                continue
            if "'" in "".join(cells):  # rare: then look for defused formula triggers
                cells = [_unquoted(cell) for cell in cells]
            # An empty cell is None, as an absent column.
            values: dict[str, str | None]
            if named is not None and "" not in cells:
                values = dict(zip(named, cells, strict=True))
            elif named is not None:
                values = {name: cell or None for name, cell in zip(named, cells, strict=True)}
            else:
                values = {
                    name: cell or None for name, cell in zip(header, cells, strict=True) if name
                }
            parsed.rows.append(SourceRow(number, values))
    except csv.Error as exc:
        parsed.errors.append(RowError(reader.line_num, None, f"not readable as CSV: {exc}"))
    if header is None:
        parsed.errors.append(RowError(1, None, f"no header row (columns: {', '.join(COLUMNS)})"))
    return parsed


def _read_header(record: list[str], errors: list[RowError]) -> list[str | None]:
    names: list[str | None] = []
    for position, raw in enumerate(record, start=1):
        name = raw.strip().lower()
        if not name:
            errors.append(RowError(1, f"column {position}", "the column has no name"))
            names.append(None)
        elif name not in COLUMNS:
            errors.append(RowError(1, name, _unknown_column(name)))
            names.append(None)
        elif name in names:
            errors.append(RowError(1, name, "the column is given twice"))
            names.append(None)
        else:
            names.append(name)
    for name in REQUIRED_COLUMNS:
        if name not in names and not any(e.field == name for e in errors):
            errors.append(RowError(1, name, "required column missing"))
    return names


def read_json(text: str) -> ParsedFile:
    parsed = ParsedFile("json")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        parsed.errors.append(RowError(0, None, reason))
        return parsed
    except (ValueError, RecursionError):
        parsed.errors.append(RowError(0, None, "JSON nested too deeply, or a number too long"))
        return parsed
    if not isinstance(items, list):
        parsed.errors.append(RowError(0, None, "must be a JSON array of objects, one per row"))
        return parsed
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            parsed.errors.append(RowError(number, None, "must be an object of the import columns"))
            continue
        values: dict[str, Any] = {}
        for key, raw in item.items():
            if key not in COLUMNS:
                parsed.errors.append(RowError(number, str(key), _unknown_column(str(key))))
                continue
            try:
                values[key] = _json_value(key, raw)
            except ValueError as exc:
                parsed.errors.append(RowError(number, key, str(exc)))
        parsed.rows.append(SourceRow(number, values))
    return parsed


def _json_value(key: str, raw: Any) -> Any:
    # Text, or a number for lat and lon (read from text too, as a CSV cell); a number where the
    # spec's ImportRow says text is refused, not turned into text.
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.strip() or None
    if key in ("lat", "lon") and isinstance(raw, int | float) and not isinstance(raw, bool):
        return raw
    if key in SPECIALTY_COLUMNS and isinstance(raw, list):
        if not all(isinstance(code, str) for code in raw):
            raise ValueError("must be a list of specialty codes")
        return raw
    raise ValueError("must be a string")


# ---- validating ---------------------------------------------------------------------------

# The admin API's fields, so a row obeys exactly the rules of POST /v1/clinics and of a
# clinic's POST .../locations.
_CLINIC_SCHEMA_FIELDS = ClinicCreateSchema().fields
_LOCATION_SCHEMA_FIELDS = LocationCreateSchema().fields
_SCHEMA_FIELDS: dict[str, ma.fields.Field[Any]] = {
    "clinic_name": _CLINIC_SCHEMA_FIELDS["name"],
    "phone": _CLINIC_SCHEMA_FIELDS["phone"],
    "website": _CLINIC_SCHEMA_FIELDS["website"],
    "specialties": _CLINIC_SCHEMA_FIELDS["specialties"],
    "specialties_not_offered": _CLINIC_SCHEMA_FIELDS["specialties_not_offered"],
    "address": _LOCATION_SCHEMA_FIELDS["address_line1"],
    "city": _LOCATION_SCHEMA_FIELDS["city"],
    "state": _LOCATION_SCHEMA_FIELDS["state"],
    "zip": _LOCATION_SCHEMA_FIELDS["zip"],
    "lat": _LOCATION_SCHEMA_FIELDS["lat"],
    "lon": _LOCATION_SCHEMA_FIELDS["lon"],
}
# A file's cells are text: coordinates are read from "44.9" too (the API takes JSON numbers).
for _column in ("lat", "lon"):
    _SCHEMA_FIELDS[_column] = copy.copy(_SCHEMA_FIELDS[_column])
    _SCHEMA_FIELDS[_column].strict = False  # type: ignore[attr-defined]
# Columns whose values repeat across rows: their checks are cached per value.
_CACHED = frozenset({"phone", "website", *SPECIALTY_COLUMNS, "city", "state", "zip"})


@dataclass(slots=True)
class ImportRow:
    """A valid row, its values normalized. (Slots: a few hundred thousand of these and the
    plans below are made per import.)"""

    row: int
    name: str
    phone: str | None
    phone_original: str | None
    website: str | None
    specialties: tuple[str, ...] | None  # sorted; None when the row does not say
    specialties_not_offered: tuple[str, ...] | None  # the same
    address: str | None
    city: str
    state: str
    zip: str | None
    lat: float | None
    lon: float | None

    @property
    def given(self) -> frozenset[str]:
        """The columns the row gives a value in."""
        values = {
            "clinic_name": self.name, "phone": self.phone, "website": self.website,
            "specialties": self.specialties,
            "specialties_not_offered": self.specialties_not_offered, "address": self.address,
            "city": self.city, "state": self.state, "zip": self.zip, "lat": self.lat,
            "lon": self.lon,
        }  # fmt: skip
        return frozenset(name for name, value in values.items() if value is not None)


def collapse(text: str | None) -> str:
    return " ".join((text or "").split())


def clinic_key(name: str | None, phone: str | None) -> tuple[str, str | None]:
    return collapse(name).casefold(), phone


def location_key(
    address: str | None, city: str | None, state: str | None, zip_code: str | None
) -> tuple[str, str, str, str]:
    return (
        collapse(address).casefold(),
        collapse(city).casefold(),
        collapse(state).casefold(),
        collapse(zip_code).casefold(),
    )


def _fast_phone(text_check: FastCheck) -> FastCheck:
    def check(raw: str) -> Any:
        text = text_check(raw)
        if text is UNSURE:
            return UNSURE
        return fast_phone(text) or UNSURE

    return check


def _phone_column(text_column: ColumnCheck) -> ColumnCheck:
    def check(raws: list[str]) -> list[Any] | None:
        texts = text_column(raws)
        if texts is None:
            return None
        return [phone if phone is not None else UNSURE for phone in map(fast_phone, texts)]

    return check


# Fast paths for the cells of text: the same rules, the same values (import_fast.py); a cell
# they are not sure of goes to the field itself, so error messages come from marshmallow.
_FAST: dict[str, FastCheck] = {
    column: check
    for column, field in _SCHEMA_FIELDS.items()
    if (check := compile_field(field)) is not None
}
if "phone" in _FAST:
    _FAST["phone"] = _fast_phone(_FAST["phone"])
# The same, a whole column at once (import_fast.compile_column): None sends it cell by cell.
_FAST_COLUMNS: dict[str, ColumnCheck] = {
    column: whole
    for column, field in _SCHEMA_FIELDS.items()
    if column in _FAST and (whole := compile_column(field)) is not None
}
if "phone" in _FAST_COLUMNS:
    _FAST_COLUMNS["phone"] = _phone_column(_FAST_COLUMNS["phone"])
# Lists of codes, per column (then: every code known); None sends the column to the reference.
_FAST_LISTS = {column: compile_list(_SCHEMA_FIELDS[column]) for column in SPECIALTY_COLUMNS}


class _Validator:
    def __init__(self, known_specialties: set[str]) -> None:
        self.known_specialties = known_specialties
        self._cache: dict[str, dict[Any, tuple[Any, str | None]]] = {
            column: {} for column in _CACHED
        }

    def check(self, column: str, raw: Any) -> tuple[Any, str | None]:
        """(value, None) or (None, reason)."""
        cache = self._cache.get(column)
        if cache is None:
            return self._check(column, raw)
        key = tuple(raw) if type(raw) is list else raw  # specialties as a JSON list
        found = cache.get(key)
        if found is None:
            found = cache[key] = self._check(column, raw)
        return found

    def _check(self, column: str, raw: Any) -> tuple[Any, str | None]:
        if column in SPECIALTY_COLUMNS:
            codes = raw.split(SPECIALTY_SEPARATOR) if isinstance(raw, str) else raw
            codes = tuple(code.strip() for code in codes if code.strip())
            fast_codes = _FAST_LISTS[column]
            if fast_codes is not None:
                value = fast_codes(codes)
                if value is not UNSURE and all(code in self.known_specialties for code in value):
                    return tuple(sorted(set(value))), None
            return self._reference(column, codes)
        if type(raw) is str:
            fast = _FAST.get(column)
            if fast is not None:
                value = fast(raw)
                if value is not UNSURE:
                    return value, None
        return self._reference(column, raw)

    def _reference(self, column: str, raw: Any) -> tuple[Any, str | None]:
        """The check with the admin API's own fields (and normalize_phone)."""
        if column in SPECIALTY_COLUMNS:
            raw = list(raw or ())
        try:
            value = _SCHEMA_FIELDS[column].deserialize(raw)
        except ma.ValidationError as exc:
            return None, _message(exc.messages)
        if column == "phone" and value is not None:
            try:
                value = normalize_phone(value)
            except EditError as exc:
                return None, exc.reason
        if column in SPECIALTY_COLUMNS:
            unknown = [code for code in dict.fromkeys(value) if code not in self.known_specialties]
            if unknown:
                return None, f"unknown code(s): {', '.join(unknown)}"
            value = tuple(sorted(set(value)))
        return value, None

    def rows(self, sources: Sequence[SourceRow], errors: list[RowError]) -> list[ImportRow | None]:
        """Each row as an ImportRow, or None with its errors appended to ``errors`` (in row
        order; a row's in column order, then the lat/lon pairing, then a code both offered
        and not).

        Column by column, not row by row: a column's repeated values are checked once, and
        the per-cell work is a few C-level list passes instead of ten Python iterations."""
        failed: dict[int, list[RowError]] = {}
        value_dicts = [source.values for source in sources]
        columns: list[list[Any]] = []  # in COLUMNS order
        raw_columns: dict[str, list[Any]] = {}
        for column in COLUMNS:
            raws = list(map(dict.get, value_dicts, itertools.repeat(column)))
            raw_columns[column] = raws
            values, problems = self._column(column, raws)
            for index, reason in problems:
                failed.setdefault(index, []).append(RowError(sources[index].row, column, reason))
            columns.append(values)
        for index, (lat, lon) in enumerate(
            zip(raw_columns["lat"], raw_columns["lon"], strict=True)
        ):
            if (lat is None) != (lon is None):
                name = "lat" if lat is None else "lon"
                failed.setdefault(index, []).append(
                    RowError(sources[index].row, name, "lat and lon go together")
                )
        offered_column, lacking_column = columns[_OFFERED], columns[_NOT_OFFERED]
        if lacking_column.count(None) != len(lacking_column):  # any row says "not offered"
            for index, (offered, lacking) in enumerate(
                zip(offered_column, lacking_column, strict=True)
            ):
                if offered is not None and lacking is not None:
                    both = _both_ways(offered, lacking, "also listed as offered")
                    if both is not None:
                        failed.setdefault(index, []).append(
                            RowError(sources[index].row, "specialties_not_offered", both)
                        )
        rows: list[ImportRow | None] = []
        cells = enumerate(zip(sources, *columns, strict=True))
        # In COLUMNS order.
        for index, (source, name, phone, website, address, city, state, zip_code, lat, lon,
                    specialties, not_offered) in cells:  # fmt: skip
            if failed and index in failed:
                errors.extend(failed[index])
                rows.append(None)
                continue
            rows.append(
                ImportRow(
                    row=source.row,
                    name=collapse(name),
                    phone=phone,
                    phone_original=source.values.get("phone"),
                    website=website,
                    specialties=specialties,
                    specialties_not_offered=not_offered,
                    address=address,
                    city=city,
                    state=state,
                    zip=zip_code,
                    lat=lat,
                    lon=lon,
                )
            )
        return rows

    def row(self, source: SourceRow, errors: list[RowError]) -> ImportRow | None:
        return self.rows([source], errors)[0]

    def _column(self, column: str, raws: list[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
        """A column's values (None where absent or refused) and its refusals (index, reason)."""
        if column not in _CACHED:
            return self._cells(column, raws)
        # A repeated value once: its distinct values checked as a column of their own.
        keys = [tuple(raw) if type(raw) is list else raw for raw in raws]
        distinct = list(dict.fromkeys(keys))
        values, problems = self._cells(column, distinct)
        value_of = dict(zip(distinct, values, strict=True))
        found = list(map(value_of.__getitem__, keys))
        if not problems:
            return found, problems
        reason_of = {distinct[index]: reason for index, reason in problems}
        return found, [
            (index, reason_of[key]) for index, key in enumerate(keys) if key in reason_of
        ]

    def _cells(self, column: str, raws: list[Any]) -> tuple[list[Any], list[tuple[int, str]]]:
        """_column for cells taken one by one (and by the fast paths, the whole column first)."""
        problems: list[tuple[int, str]] = []
        quick = self._quick(column, raws)
        if quick is None:
            quick = [UNSURE] * len(raws)
        unsure = [index for index, value in enumerate(quick) if value is UNSURE]
        if not unsure:
            return quick, problems
        values = list(quick)  # quick may be raws itself
        for index in unsure:
            value, reason = self._cell(column, raws[index])
            if reason is not None:
                problems.append((index, reason))
            values[index] = value if value != () else None  # "; ;" says nothing either
        return values, problems

    @staticmethod
    def _quick(column: str, raws: list[Any]) -> list[Any] | None:
        """The fast paths' values, UNSURE where they are not sure; None without a fast path."""
        fast = _FAST.get(column)
        if fast is None:
            return None
        whole = _FAST_COLUMNS.get(column)
        if whole is not None:
            # The column's text cells (an absent one is None: cell by cell, as ever).
            texts = [raw for raw in raws if type(raw) is str]
            if "\x00" not in "".join(texts):
                values = whole(texts)
                if values is not None:
                    if len(texts) == len(raws):
                        return values
                    given = iter(values)
                    return [next(given) if type(raw) is str else UNSURE for raw in raws]
        return [fast(raw) if type(raw) is str and "\x00" not in raw else UNSURE for raw in raws]

    def _cell(self, column: str, raw: Any) -> tuple[Any, str | None]:
        """(value, None), (None, None) for an absent value, or (None, reason)."""
        if raw is None:
            return None, ("required" if column in REQUIRED_COLUMNS else None)
        if _has_nul(raw):
            return None, "NUL characters are not accepted"
        return self._check(column, raw)


_OFFERED = COLUMNS.index("specialties")
_NOT_OFFERED = COLUMNS.index("specialties_not_offered")


def _both_ways(codes: Sequence[str], others: Sequence[str], said: str) -> str | None:
    """``f"{said}: X, Y"`` for the codes of ``codes`` also in ``others``, else None."""
    both = sorted(set(codes).intersection(others))
    return f"{said}: {', '.join(both)}" if both else None


def _has_nul(raw: Any) -> bool:
    # PostgreSQL refuses NUL in text: an error in the row, never one from the database.
    if isinstance(raw, str):
        return "\x00" in raw
    return isinstance(raw, list | tuple) and any("\x00" in code for code in raw)


def _message(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(_message(value) for value in messages.values())
    if isinstance(messages, list | tuple):
        return "; ".join(_message(value) for value in messages)
    return str(messages)


# ---- planning -----------------------------------------------------------------------------


@dataclass(slots=True)
class ClinicPlan:
    id: int | None
    name: str
    phone: str | None
    phone_original: str | None
    website: str | None
    # Sorted. Until _settle_clinic: as given, else as stored; then as they will be stored.
    specialties: tuple[str, ...]
    specialties_not_offered: tuple[str, ...]
    first_row: int
    active: bool = True
    version: int = 1
    before: dict[str, Any] | None = None  # the stored state, for an existing clinic
    website_row: int | None = None  # the row that set the website, for conflicts
    specialties_row: int | None = None
    not_offered_row: int | None = None
    action: str = UNCHANGED

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phone": self.phone,
            "phone_original": self.phone_original,
            "website": self.website,
            "active": self.active,
            "specialties": list(self.specialties),
            "specialties_not_offered": list(self.specialties_not_offered),
        }


@dataclass(slots=True)
class LocationPlan:
    row: int
    clinic: ClinicPlan
    id: int | None
    values: dict[str, Any]  # LOCATION_FIELDS
    before: dict[str, Any] | None = None
    version: int = 1
    action: str = CREATED
    notes: list[str] = field(default_factory=list)

    @property
    def row_action(self) -> str:
        if self.action == UNCHANGED and self.clinic.action != UNCHANGED:
            return UPDATED
        return self.action


@dataclass
class ImportPlan:
    format: str
    rows_read: int
    errors: list[RowError]
    clinics: list[ClinicPlan]
    locations: list[LocationPlan]  # one per valid row, in file order

    @property
    def valid(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, dict[str, int]]:
        counts = {kind: dict.fromkeys(OUTCOMES, 0) for kind in ("rows", "clinics", "locations")}
        for clinic in self.clinics:
            counts["clinics"][clinic.action] += 1
        for location in self.locations:
            counts["locations"][location.action] += 1
            counts["rows"][location.row_action] += 1
        return counts

    @property
    def write_count(self) -> int:
        """Statements' worth of rows apply_import writes (for a progress bar)."""
        changed = [c for c in self.clinics if c.action != UNCHANGED]
        return len(changed) * 2 + sum(2 for loc in self.locations if loc.action != UNCHANGED)

    def row_plans(self) -> Iterator[dict[str, Any]]:
        for location in self.locations:
            clinic = location.clinic
            yield {
                "row": location.row,
                "action": location.row_action,
                "clinic": {
                    "action": clinic.action,
                    "id": clinic.id,
                    "name": clinic.name,
                    "phone": clinic.phone,
                },
                "location": {
                    "action": location.action,
                    "id": location.id,
                    "address": location.values["address_line1"],
                    "city": location.values["city"],
                    "state": location.values["state"],
                    "zip": location.values["zip"],
                },
                "notes": location.notes,
            }

    def report(self, *, dry_run: bool, include_plan: bool = True) -> dict[str, Any]:
        return {
            "dry_run": dry_run,
            "valid": self.valid,
            "format": self.format,
            "rows_read": self.rows_read,
            "counts": self.counts(),
            "errors": [
                {"row": error.row, "field": error.field, "reason": error.reason}
                for error in self.errors
            ],
            "plan": list(self.row_plans()) if include_plan else [],
        }


@dataclass(slots=True)
class _StoredLocation:
    id: int
    active: bool
    version: int
    values: dict[str, Any]


@dataclass
class _Directory:
    """What the import matches against, loaded with one query per table."""

    clinics: dict[tuple[str, str | None], Any]
    clinics_by_name: dict[str, list[Any]]
    specialties: dict[int, tuple[str, ...]]  # sorted, offered
    not_offered: dict[int, tuple[str, ...]]  # sorted, on record as not offered
    locations: dict[int, dict[tuple[str, str, str, str], _StoredLocation]]
    known_specialties: set[str]


def _load_directory(session: Session) -> _Directory:
    clinics: dict[tuple[str, str | None], Any] = {}
    by_name: dict[str, list[Any]] = {}
    stored = session.execute(
        select(
            col(Clinic.id), col(Clinic.name), col(Clinic.phone), col(Clinic.phone_original),
            col(Clinic.website), col(Clinic.active), col(Clinic.version),
        ).order_by(col(Clinic.id))
    ).all()  # fmt: skip
    for clinic in stored:
        if clinic.name is None:
            continue  # an unknown name matches no row (rows need a name)
        key = clinic_key(clinic.name, clinic.phone)
        # The active one when several share a key, else the oldest.
        if key not in clinics or (clinic.active and not clinics[key].active):
            clinics[key] = clinic
        by_name.setdefault(key[0], []).append(clinic)
    specialties, not_offered = evidence_by_clinic(session)
    locations: dict[int, dict[tuple[str, str, str, str], _StoredLocation]] = {}
    columns = [col(getattr(Location, name)) for name in LOCATION_FIELDS]
    for row in session.execute(
        select(col(Location.id), col(Location.clinic_id), col(Location.version), *columns)
        .order_by(col(Location.id))
    ):  # fmt: skip
        values = {name: getattr(row, name) for name in LOCATION_FIELDS}
        where = location_key(
            values["address_line1"], values["city"], values["state"], values["zip"]
        )
        known = locations.setdefault(row.clinic_id, {})
        if where not in known or (values["active"] and not known[where].active):
            known[where] = _StoredLocation(row.id, values["active"], row.version, values)
    return _Directory(
        clinics=clinics,
        clinics_by_name=by_name,
        specialties={cid: tuple(sorted(codes)) for cid, codes in specialties.items()},
        not_offered={cid: tuple(sorted(codes)) for cid, codes in not_offered.items()},
        locations=locations,
        known_specialties=set(session.execute(select(col(Specialty.code))).scalars()),
    )


class _Places:
    """Offline geocoding, cached per (city, state, ZIP) for the import."""

    def __init__(self, geocoder: GeocoderChain) -> None:
        self.geocoder = geocoder
        self._cache: dict[tuple[str, str, str], GeocodeResult | None] = {}

    def find(
        self, city: str, state: str, zip_code: str | None, folded_city: str | None = None
    ) -> GeocodeResult | None:
        """``folded_city``: collapse(city).casefold(), when the caller has it."""
        if folded_city is None:
            folded_city = collapse(city).casefold()
        key = (folded_city, state, zip_code or "")
        try:
            return self._cache[key]
        except KeyError:
            found = self._cache[key] = self.geocoder.location(
                address_line1=None, city=city, state=state, zip_code=zip_code, use_network=False
            )
            return found


def plan_import(
    session: Session,
    parsed: ParsedFile,
    geocoder: GeocoderChain,
    *,
    progress: Progress | None = None,
) -> ImportPlan:
    """Validate every row and match it against the directory; write nothing."""
    with _collector_paused():
        return _plan_import(session, parsed, geocoder, progress)


def _plan_import(
    session: Session, parsed: ParsedFile, geocoder: GeocoderChain, progress: Progress | None
) -> ImportPlan:
    directory = _load_directory(session)
    validator = _Validator(directory.known_specialties)
    places = _Places(geocoder)
    errors = list(parsed.errors)
    clinics: dict[tuple[str, str | None], ClinicPlan] = {}
    seen_locations: dict[tuple[Any, ...], int] = {}
    locations: list[LocationPlan] = []
    done = 0
    for row in validator.rows(parsed.rows, errors):
        done += 1
        if progress is not None and done % _BATCH == 0:
            progress(_BATCH)
        if row is None:
            continue
        key = (row.name.casefold(), row.phone)  # clinic_key: row.name is collapsed already
        clinic = clinics.get(key)
        if clinic is None:
            clinic = clinics[key] = _clinic_plan(row, directory)
        elif not _agrees(clinic, row, errors):
            continue
        # location_key(row.address, row.city, row.state, row.zip), knowing that a valid row's
        # state is a two-letter code and its ZIP has no spaces.
        where = (
            collapse(row.address).casefold(),
            collapse(row.city).casefold(),
            row.state.casefold(),
            (row.zip or "").casefold(),
        )
        first = seen_locations.setdefault((key, where), row.row)
        if first != row.row:
            errors.append(RowError(row.row, "address", f"the same location as row {first}"))
            continue
        location = _location_plan(row, where, clinic, directory, places, errors)
        if location is not None:
            locations.append(location)
    if progress is not None and done % _BATCH:
        progress(done % _BATCH)
    # A clinic whose every row failed is not part of the plan.
    planned = {id(location.clinic): location.clinic for location in locations}
    for clinic in planned.values():
        _settle_clinic(clinic)
    errors.sort(key=lambda error: error.row)
    return ImportPlan(
        format=parsed.format,
        rows_read=len(parsed.rows),
        errors=errors,
        clinics=list(planned.values()),
        locations=locations,
    )


def _clinic_plan(row: ImportRow, directory: _Directory) -> ClinicPlan:
    stored = directory.clinics.get(clinic_key(row.name, row.phone))
    website_given = row.website is not None  # "website" in row.given
    specialties_given = row.specialties is not None
    not_offered_given = row.specialties_not_offered is not None
    if stored is None:
        return ClinicPlan(
            id=None,
            name=row.name,
            phone=row.phone,
            phone_original=row.phone_original if row.phone else None,
            website=row.website,
            specialties=row.specialties or (),
            specialties_not_offered=row.specialties_not_offered or (),
            first_row=row.row,
            website_row=row.row if website_given else None,
            specialties_row=row.row if specialties_given else None,
            not_offered_row=row.row if not_offered_given else None,
            action=CREATED,
        )
    stored_specialties = directory.specialties.get(stored.id, ())
    stored_not_offered = directory.not_offered.get(stored.id, ())
    plan = ClinicPlan(
        id=stored.id,
        name=row.name,
        phone=stored.phone,
        phone_original=stored.phone_original,
        website=row.website if website_given else stored.website,
        specialties=row.specialties if row.specialties is not None else stored_specialties,
        specialties_not_offered=(
            row.specialties_not_offered
            if row.specialties_not_offered is not None
            else stored_not_offered
        ),
        first_row=row.row,
        active=stored.active,
        version=stored.version,
        website_row=row.row if website_given else None,
        specialties_row=row.row if specialties_given else None,
        not_offered_row=row.row if not_offered_given else None,
    )
    plan.before = {
        "name": stored.name,
        "phone": stored.phone,
        "phone_original": stored.phone_original,
        "website": stored.website,
        "active": stored.active,
        "specialties": list(stored_specialties),
        "specialties_not_offered": list(stored_not_offered),
    }
    return plan


# Each specialty column, the plan's attribute naming the row that gave it, the other column,
# and how a row contradicting the other column's earlier row is told.
_SPECIALTY_SIDES = (
    ("specialties", "specialties_row", "specialties_not_offered", "not_offered_row",
     "also listed as not offered in row {}"),
    ("specialties_not_offered", "not_offered_row", "specialties", "specialties_row",
     "also listed as offered in row {}"),
)  # fmt: skip


def _agrees(clinic: ClinicPlan, row: ImportRow, errors: list[RowError]) -> bool:
    """Rows of one clinic must say the same of it; a later row may fill in what earlier ones
    left out."""
    same = f"differs from row {{}} for the same clinic ({clinic.name})"
    ok = True
    if row.name != clinic.name:
        errors.append(RowError(row.row, "clinic_name", same.format(clinic.first_row)))
        ok = False
    if row.website is not None:  # "website" in row.given
        if clinic.website_row is None:
            clinic.website, clinic.website_row = row.website, row.row
        elif row.website != clinic.website:
            errors.append(RowError(row.row, "website", same.format(clinic.website_row)))
            ok = False
    for column, first_row, other, other_row, clash in _SPECIALTY_SIDES:
        value = getattr(row, column)
        if value is None:
            continue
        first, other_first = getattr(clinic, first_row), getattr(clinic, other_row)
        reason = None
        if first is not None:
            if value != getattr(clinic, column):
                reason = same.format(first)
        elif other_first is not None:
            reason = _both_ways(value, getattr(clinic, other), clash.format(other_first))
        if reason:
            errors.append(RowError(row.row, column, reason))
            ok = False
        elif first is None:
            setattr(clinic, column, value)
            setattr(clinic, first_row, row.row)
    return ok


def _settle_clinic(clinic: ClinicPlan) -> None:
    # The newer statement wins: codes given in one column leave the other's stored set,
    # unless the file gives that one too (then the two never share a code: _agrees).
    offered_given = clinic.specialties_row is not None
    lacking_given = clinic.not_offered_row is not None
    if offered_given and not lacking_given and clinic.specialties_not_offered:
        offered = set(clinic.specialties)
        clinic.specialties_not_offered = tuple(
            code for code in clinic.specialties_not_offered if code not in offered
        )
    elif lacking_given and not offered_given and clinic.specialties:
        lacking = set(clinic.specialties_not_offered)
        clinic.specialties = tuple(code for code in clinic.specialties if code not in lacking)
    if clinic.before is None:
        clinic.action = CREATED
    else:
        clinic.action = UPDATED if change_diff(clinic.before, clinic.state()) else UNCHANGED


_NEW_LOCATION: dict[str, Any] = dict.fromkeys(LOCATION_FIELDS) | {"active": True}


def _location_plan(
    row: ImportRow,
    where: tuple[str, str, str, str],
    clinic: ClinicPlan,
    directory: _Directory,
    places: _Places,
    errors: list[RowError],
) -> LocationPlan | None:
    """``where``: the row's location_key."""
    stored = directory.locations.get(clinic.id, {}).get(where) if clinic.id is not None else None
    values: dict[str, Any] = dict(stored.values if stored is not None else _NEW_LOCATION)
    values.update(address_line1=row.address, city=row.city, state=row.state, zip=row.zip)
    notes: list[str] = []
    if row.lat is not None and row.lon is not None:
        if stored is None or (stored.values["lat"], stored.values["lon"]) != (row.lat, row.lon):
            zone = places.find(row.city, row.state, row.zip, where[1])
            values.update(
                lat=row.lat,
                lon=row.lon,
                geocode_precision=GeocodePrecision.MANUAL.value,
                geocode_source=IMPORT_SOURCE,
                time_zone=zone.time_zone if zone is not None else values["time_zone"],
            )
    elif values["lat"] is None or values["lon"] is None:
        found = places.find(row.city, row.state, row.zip, where[1])
        if found is not None:
            values.update(
                lat=found.lat,
                lon=found.lon,
                geocode_precision=found.precision.value,
                geocode_source=found.source,
                time_zone=found.time_zone,
            )
        elif stored is None:
            errors.append(
                RowError(
                    row.row,
                    "address",
                    "could not be geocoded offline from city, state and ZIP; give lat and lon",
                )
            )
            return None
    if clinic.id is None:
        others = [
            stored_clinic
            for stored_clinic in directory.clinics_by_name.get(row.name.casefold(), [])
            if stored_clinic.phone != row.phone
        ]
        if others:
            notes.append(
                "a separate clinic is made: the directory has this name with another phone "
                f"(clinic {', '.join(str(other.id) for other in others)})"
            )
    if not clinic.active:
        notes.append(f"clinic {clinic.id} is inactive; an import does not reactivate it")
    if stored is None:
        return LocationPlan(row.row, clinic, None, values, notes=notes)
    if not stored.active:
        notes.append(f"location {stored.id} is inactive; an import does not reactivate it")
    changed = bool(change_diff(stored.values, values))
    return LocationPlan(
        row.row,
        clinic,
        stored.id,
        values,
        before=stored.values,
        version=stored.version,
        action=UPDATED if changed else UNCHANGED,
        notes=notes,
    )


# ---- applying -----------------------------------------------------------------------------


def _table(model: type[SQLModel]) -> Table:
    """The model's Core table: bulk statements go through Core, not the ORM."""
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _batches(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


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
    if plan.errors:
        raise ValueError("a plan with row errors cannot be applied")
    with _collector_paused():
        return _apply_import(session, plan, actor, source, progress)


def _created_diff(after: dict[str, Any]) -> dict[str, Any]:
    """change_diff({}, after), without its lookups: every value but None, from None."""
    return {key: [None, value] for key, value in after.items() if value is not None}


_CLINIC_NEW = ("id", "name", "phone", "phone_original", "website", "source_text")
_LOCATION_NEW = ("id", "clinic_id", *LOCATION_FIELDS)
_CHANGE_NEW = ("entity", "entity_id", "clinic_id", "action", "diff")


def _apply_import(
    session: Session,
    plan: ImportPlan,
    actor: Actor,
    source: str | None,
    progress: Progress | None,
) -> int:
    # Bulk statements bypass the ORM's flush hook: mark the directory changed ourselves, and
    # stamp every row written with the revision. It comes first: on SQLite it takes the write
    # lock that _new_ids counts on.
    revision = bump_revision(session)
    now = utcnow()
    changes: list[tuple[Any, ...]] = []  # _CHANGE_NEW
    created: dict[str, Any] = {
        "needs_review": False,
        "review_reasons": [],
        "seed_key": None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "revision": revision,
    }

    # Clinics: new ones (their ids are needed for their locations), then changed ones.
    new_clinics = [clinic for clinic in plan.clinics if clinic.action == CREATED]
    clinic_table = _table(Clinic)
    for clinic, clinic_id in zip(
        new_clinics, _new_ids(session, clinic_table, len(new_clinics)), strict=True
    ):
        clinic.id = clinic_id
    _insert(
        session,
        clinic_table,
        _CLINIC_NEW,
        [
            (
                clinic.id,
                clinic.name,
                clinic.phone,
                clinic.phone_original,
                clinic.website,
                f"imported by {actor.name} (row {clinic.first_row})",
            )
            for clinic in new_clinics
        ],
        {
            "source_file": f"import: {source}"[:200] if source else "import",
            "active": True,
            **created,
        },
        progress,
    )
    for clinic in new_clinics:
        assert clinic.id is not None
        changes.append(("clinic", clinic.id, clinic.id, "create", _created_diff(clinic.state())))
    changed_clinics = [clinic for clinic in plan.clinics if clinic.action == UPDATED]
    _update_versioned(
        session,
        clinic_table,
        ("name", "website", "updated_at", "revision"),
        [
            {
                "b_id": clinic.id,
                "b_version": clinic.version,
                "b_name": clinic.name,
                "b_website": clinic.website,
                "b_updated_at": now,
                "b_revision": revision,
            }
            for clinic in changed_clinics
        ],
        progress,
    )
    for clinic in changed_clinics:
        assert clinic.id is not None and clinic.before is not None
        changes.append(
            ("clinic", clinic.id, clinic.id, "update", change_diff(clinic.before, clinic.state()))
        )
    _write_specialties(session, plan, actor, source)

    # Locations: new ones, then changed ones.
    new_locations = [location for location in plan.locations if location.action == CREATED]
    location_table = _table(Location)
    for location, location_id in zip(
        new_locations, _new_ids(session, location_table, len(new_locations)), strict=True
    ):
        location.id = location_id
    location_fields = itemgetter(*LOCATION_FIELDS)
    _insert(
        session,
        location_table,
        _LOCATION_NEW,
        [
            (location.id, location.clinic.id, *location_fields(location.values))
            for location in new_locations
        ],
        {"city_original": None, "state_original": None, **created},
        progress,
    )
    for location in new_locations:
        assert location.id is not None and location.clinic.id is not None
        changes.append(
            ("location", location.id, location.clinic.id, "create",
             _created_diff(location.values))
        )  # fmt: skip
    changed_locations = [location for location in plan.locations if location.action == UPDATED]
    moved = ("address_line1", "city", "state", "zip", "lat", "lon",
             "geocode_precision", "geocode_source", "time_zone")  # fmt: skip
    _update_versioned(
        session,
        location_table,
        (*moved, "updated_at", "revision"),
        [
            {
                "b_id": location.id,
                "b_version": location.version,
                **{f"b_{name}": location.values[name] for name in moved},
                "b_updated_at": now,
                "b_revision": revision,
            }
            for location in changed_locations
        ],
        progress,
    )
    for location in changed_locations:
        assert location.id is not None and location.before is not None
        changes.append(
            ("location", location.id, location.clinic.id or 0, "update",
             change_diff(location.before, location.values))
        )  # fmt: skip

    _insert(
        session,
        _table(AdminChange),
        _CHANGE_NEW,
        changes,
        {"at": now, "actor_key_id": actor.key_id, "actor": actor.name},
        progress,
    )
    return len(changes)


def _write_specialties(
    session: Session, plan: ImportPlan, actor: Actor, source: str | None
) -> None:
    """The changed clinics' specialty links as planned: a code in neither set any more goes, a
    new one comes, one that moved between offered and not offered is updated; each link
    written says what was said and who said so (the admin API's reasons)."""
    said_by = (f"import by {actor.name}: {source}" if source else f"import by {actor.name}")[:200]
    reasons = {offered: _reason(actor, offered) for offered in (True, False)}
    removed: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    added: list[tuple[int, str, bool, str]] = []
    for clinic in plan.clinics:
        if clinic.action == UNCHANGED:
            continue
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


__all__ = [
    "COLUMNS",
    "FORMATS",
    "Actor",
    "ImportConflictError",
    "ImportPlan",
    "ParsedFile",
    "RowError",
    "apply_import",
    "detect_format",
    "plan_import",
    "read_import",
]
