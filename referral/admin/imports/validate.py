"""Checking rows: every cell with the admin API's own rules (the fields of POST /v1/clinics
and of a clinic's POST .../locations, and normalize_phone), a chunk of rows at a time, column
by column (a column's repeated values once; import_fast.py's checks over a whole column, then
cell by cell where they are not sure)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import marshmallow as ma

from referral.admin.import_fast import (
    UNSURE,
    ColumnCheck,
    FastCheck,
    compile_column,
    compile_field,
    compile_list,
    fast_phone,
)
from referral.admin.imports.base import (
    COLUMNS,
    REQUIRED_COLUMNS,
    SPECIALTY_COLUMNS,
    SPECIALTY_SEPARATOR,
    RowError,
    SourceRow,
    collapse,
)
from referral.admin.schemas import ClinicCreateSchema, LocationCreateSchema
from referral.admin.service import EditError, normalize_phone

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


# The field each column is checked with (the spec documents a JSON row with them).
SCHEMA_FIELDS = _SCHEMA_FIELDS
