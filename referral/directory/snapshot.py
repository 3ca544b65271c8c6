"""The public read model's data: the active directory of one revision, as columns.

One ``Snapshot`` holds every active clinic and every active location of an active clinic:
numbers and flags as numpy arrays, free text in one UTF-8 buffer per column (``Texts``: no
Python object per row), repeated values (cities, time zones, opening hours, specialty
evidence) once each (``Pool``). A snapshot is immutable: ``with_changes`` makes a new one
from the rows changed since its revision (rows read by ``read_changes``) without reading the
rest again. Searches (search.py) and answers (records, the clinic list) read from it; the
holder that keeps one per worker fresh is readmodel.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Table, Text, cast, func, or_, select

from referral.directory.models import Clinic, ClinicSpecialty, Location
from referral.directory.revision import read_revision
from referral.timeutil import as_utc

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime) -> int:
    return (as_utc(value) - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(micros))


# Offsets into a column's buffer: 4 bytes a row (a column's text stays far below 2 GB).
_OFFSET = np.int32


class Texts:
    """A column of optional strings in one UTF-8 buffer, a start and an end offset per row
    (start -1: None). Changed rows get their new text appended; the old bytes stay until the
    next full build."""

    __slots__ = ("_data", "_end", "_start")

    def __init__(self, data: bytes, start: NDArray[np.int32], end: NDArray[np.int32]) -> None:
        self._data, self._start, self._end = data, start, end

    @classmethod
    def of(cls, values: Sequence[str | None]) -> Texts:
        start, end, data = _pack(values, 0)
        return cls(data, start, end)

    @classmethod
    def joined(cls, parts: Sequence[Texts]) -> Texts:
        """The rows of ``parts``, one after the other."""
        shifts = np.cumsum([0] + [len(part._data) for part in parts[:-1]])
        pairs = list(zip(parts, shifts, strict=True))
        starts = [np.where(p._start < 0, -1, p._start + k) for p, k in pairs]
        ends = [np.where(p._start < 0, -1, p._end + k) for p, k in pairs]
        return cls(
            b"".join(part._data for part in parts),
            np.concatenate(starts) if starts else np.empty(0, dtype=_OFFSET),
            np.concatenate(ends) if ends else np.empty(0, dtype=_OFFSET),
        )

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, row: int) -> str | None:
        start = int(self._start[row])
        if start < 0:
            return None
        return self._data[start : int(self._end[row])].decode()

    def updated(self, rows: NDArray[np.int64], values: Sequence[str | None], size: int) -> Texts:
        """This column grown to ``size`` rows, ``rows`` set to ``values``."""
        start, end = _grown(self._start, size, -1), _grown(self._end, size, -1)
        new_start, new_end, added = _pack(values, len(self._data))
        start[rows], end[rows] = new_start, new_end
        return Texts(self._data + added, start, end)

    def present(self) -> NDArray[np.bool_]:
        """Per row, whether it has a value (not None)."""
        return self._start >= 0

    def nbytes(self) -> int:
        return len(self._data) + self._start.nbytes + self._end.nbytes


def _pack(
    values: Sequence[str | None], offset: int
) -> tuple[NDArray[np.int32], NDArray[np.int32], bytes]:
    encoded = [b"" if value is None else value.encode() for value in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    end = (np.cumsum(lengths) + offset).astype(_OFFSET)
    start = end - lengths.astype(_OFFSET)
    missing = np.fromiter((value is None for value in values), dtype=bool, count=len(values))
    start[missing] = -1
    return start, end, b"".join(encoded)


def _grown(array: NDArray[Any], size: int, fill: Any) -> NDArray[Any]:
    grown = np.full(size, fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _same(value: Any) -> Any:
    return value


class Pool:
    """A column of values that repeat: each distinct value once, a small code per row.
    Items are keys (hashable: a JSON text, a tuple); ``decode`` makes each distinct one's
    value, once."""

    __slots__ = ("_decode", "_index", "codes", "values")

    def __init__(
        self,
        values: list[Any],
        codes: NDArray[np.int32],
        decode: Callable[[Any], Any],
        index: dict[Hashable, int],
    ) -> None:
        self.values, self.codes, self._decode, self._index = values, codes, decode, index

    @classmethod
    def of(cls, keys: Iterable[Hashable], decode: Callable[[Any], Any] = _same) -> Pool:
        pool = cls([], np.empty(0, dtype=np.int32), decode, {})
        pool.codes = np.fromiter(map(pool._code, keys), dtype=np.int32)
        return pool

    def appended(self, keys: Sequence[Hashable]) -> Pool:
        """This pool with rows for ``keys`` added at the end."""
        pool = Pool(list(self.values), self.codes, self._decode, dict(self._index))
        pool.codes = np.concatenate((self.codes, pool.codes_of(keys)))
        return pool

    def codes_of(self, keys: Sequence[Hashable]) -> NDArray[np.int32]:
        """The codes of ``keys``, new values added (for building the pool chunk by chunk)."""
        return np.fromiter(map(self._code, keys), dtype=np.int32, count=len(keys))

    def _code(self, key: Hashable) -> int:
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.values)
            self.values.append(self._decode(key))
        return found

    def __getitem__(self, row: int) -> Any:
        return self.values[self.codes[row]]

    def updated(self, rows: NDArray[np.int64], keys: Sequence[Hashable], size: int) -> Pool:
        pool = Pool(list(self.values), _grown(self.codes, size, 0), self._decode, dict(self._index))
        pool.codes[rows] = np.fromiter(map(pool._code, keys), dtype=np.int32, count=len(keys))
        return pool


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _reasons(text: str | None) -> tuple[str, ...]:
    return tuple(str(reason) for reason in json.loads(text or "[]") or ())


def _optional_tuple(text: str | None) -> tuple[Any, ...] | None:
    value = _json(text)
    return None if value is None else tuple(value)


def _hours(texts: tuple[str | None, str | None]) -> tuple[Any, Any]:
    return _json(texts[0]), _json(texts[1])


Link = tuple[str, bool, str, str | None]  # (code, offered, reason, source)


class Evidence:
    """Per clinic row, its specialty evidence: the codes on record as offered and as not
    offered as bits (what searches ask), and its links (code, offered, reason, source) in
    arrays sliced per clinic (what answers show): no Python object per link."""

    __slots__ = ("_code", "_end", "_named", "_offered_link", "_reason", "_source", "_start",
                 "codes", "lacking", "offered")  # fmt: skip

    def __init__(self, codes: list[str], **arrays: Any) -> None:
        self.codes = codes  # the code of each bit; new codes get new bits, never a reused one
        self.offered: NDArray[np.uint64] = arrays["offered"]
        self.lacking: NDArray[np.uint64] = arrays["lacking"]
        self._start: NDArray[np.int64] = arrays["start"]
        self._end: NDArray[np.int64] = arrays["end"]
        self._code: NDArray[np.int16] = arrays["code"]
        self._offered_link: NDArray[np.bool_] = arrays["offered_link"]
        self._reason: Pool = arrays["reason"]
        self._source: Pool = arrays["source"]
        self._named: dict[int, tuple[str, ...]] = {}

    def codes_of(self, bits: int) -> tuple[str, ...]:
        """The codes of a set of bits, in code order (as the ORM lists a clinic's)."""
        found = self._named.get(bits)
        if found is None:
            found = tuple(sorted(c for n, c in enumerate(self.codes) if bits >> n & 1))
            self._named[bits] = found
        return found

    @classmethod
    def of(cls, per_clinic: Sequence[Sequence[Link]]) -> Evidence:
        empty = cls(
            [],
            offered=np.empty(0, np.uint64), lacking=np.empty(0, np.uint64),
            start=np.empty(0, np.int64), end=np.empty(0, np.int64),
            code=np.empty(0, np.int16), offered_link=np.empty(0, bool),
            reason=Pool.of(()), source=Pool.of(()),
        )  # fmt: skip
        return empty.updated(np.arange(len(per_clinic)), per_clinic, len(per_clinic))

    @classmethod
    def read(cls, parts: Iterable[Sequence[Any]], clinic_ids: NDArray[np.int64]) -> Evidence:
        """The evidence of the clinics ``clinic_ids`` (ascending) from link rows (clinic id,
        code, offered, reason, source) ordered by clinic id, in chunks: arrays all along."""
        codes: list[str] = []
        bit: dict[str, int] = {}
        reason, source = Pool.of(()), Pool.of(())
        owners, code_parts, offered_parts, reason_parts, source_parts = [], [], [], [], []
        for part in parts:
            owners.append(np.fromiter((row[0] for row in part), np.int64, len(part)))
            code_parts.append(
                np.fromiter((bit.setdefault(row[1], len(bit)) for row in part), np.int16, len(part))
            )
            offered_parts.append(np.fromiter((bool(row[2]) for row in part), bool, len(part)))
            reason_parts.append(reason.codes_of([row[3] for row in part]))
            source_parts.append(source.codes_of([row[4] for row in part]))
        codes = [code for code, _ in sorted(bit.items(), key=lambda item: item[1])]
        if len(codes) > 64:
            raise ValueError(f"{len(codes)} specialty codes: the read model holds at most 64")
        owner = np.concatenate(owners) if owners else np.empty(0, np.int64)
        code = np.concatenate(code_parts) if code_parts else np.empty(0, np.int16)
        offered_link = np.concatenate(offered_parts) if offered_parts else np.empty(0, bool)
        reason.codes = np.concatenate(reason_parts) if reason_parts else reason.codes
        source.codes = np.concatenate(source_parts) if source_parts else source.codes
        count = len(clinic_ids)
        row = np.searchsorted(clinic_ids, owner)
        known = row < count
        known[known] = clinic_ids[row[known]] == owner[known]
        offered, lacking = np.zeros(count, np.uint64), np.zeros(count, np.uint64)
        bits = np.left_shift(np.uint64(1), code.astype(np.uint64))
        np.bitwise_or.at(offered, row[known & offered_link], bits[known & offered_link])
        np.bitwise_or.at(lacking, row[known & ~offered_link], bits[known & ~offered_link])
        return cls(
            codes,
            offered=offered,
            lacking=lacking,
            start=np.searchsorted(owner, clinic_ids, side="left").astype(np.int64),
            end=np.searchsorted(owner, clinic_ids, side="right").astype(np.int64),
            code=code,
            offered_link=offered_link,
            reason=reason,
            source=source,
        )

    def __getitem__(self, row: int) -> tuple[Link, ...]:
        start, end = int(self._start[row]), int(self._end[row])
        return tuple(
            (
                self.codes[int(self._code[n])],
                bool(self._offered_link[n]),
                self._reason[n],
                self._source[n],
            )
            for n in range(start, end)
        )

    def updated(
        self, rows: NDArray[np.int64], per_clinic: Sequence[Sequence[Link]], size: int
    ) -> Evidence:
        """Grown to ``size`` clinics, ``rows`` set to ``per_clinic``; new links appended."""
        codes = list(self.codes)
        bit = {code: n for n, code in enumerate(codes)}
        flat = [link for links in per_clinic for link in links]
        for code, *_ in flat:
            if code not in bit:
                bit[code] = len(codes)
                codes.append(code)
        if len(codes) > 64:
            raise ValueError(f"{len(codes)} specialty codes: the read model holds at most 64")
        counts = np.fromiter(map(len, per_clinic), dtype=np.int64, count=len(per_clinic))
        first = len(self._code)
        ends = first + np.cumsum(counts)
        offered, lacking = _grown(self.offered, size, 0), _grown(self.lacking, size, 0)
        offered[rows] = [sum(1 << bit[c] for c, o, *_ in links if o) for links in per_clinic]
        lacking[rows] = [sum(1 << bit[c] for c, o, *_ in links if not o) for links in per_clinic]
        start, end = _grown(self._start, size, 0), _grown(self._end, size, 0)
        start[rows], end[rows] = ends - counts, ends
        count = len(flat)
        return Evidence(
            codes,
            offered=offered,
            lacking=lacking,
            start=start,
            end=end,
            code=np.concatenate(
                (self._code, np.fromiter((bit[link[0]] for link in flat), np.int16, count))
            ),
            offered_link=np.concatenate(
                (self._offered_link, np.fromiter((link[1] for link in flat), bool, count))
            ),
            reason=self._reason.appended([link[2] for link in flat]),
            source=self._source.appended([link[3] for link in flat]),
        )

    def nbytes(self) -> int:
        arrays = (self.offered, self.lacking, self._start, self._end, self._code,
                  self._offered_link, self._reason.codes, self._source.codes)  # fmt: skip
        return sum(int(array.nbytes) for array in arrays)


class RowIndex:
    """Row of each id in its table, by binary search over the ids sorted (16 bytes a row,
    where a dict would take ~100)."""

    __slots__ = ("_ids", "_rows")

    def __init__(self, ids: NDArray[np.int64]) -> None:
        self._rows = np.argsort(ids, kind="stable")
        self._ids = ids[self._rows]

    def get(self, key: int) -> int | None:
        at = int(np.searchsorted(self._ids, key))
        if at < len(self._ids) and self._ids[at] == key:
            return int(self._rows[at])
        return None

    def find(self, keys: Sequence[int]) -> NDArray[np.int64]:
        """The row of each key, -1 for a key not here."""
        wanted = np.asarray(keys, dtype=np.int64)
        rows = np.full(len(wanted), -1, dtype=np.int64)
        if len(self._ids) == 0:
            return rows
        at = np.minimum(np.searchsorted(self._ids, wanted), len(self._ids) - 1)
        known = self._ids[at] == wanted
        rows[known] = self._rows[at[known]]
        return rows

    def rows_of(self, keys: Sequence[int], size: int) -> tuple[NDArray[np.int64], int]:
        """The row of each key: its own if known, else a new one from ``size`` on (a key
        given twice gets one); and the size with the new rows."""
        rows = self.find(keys)
        new = np.flatnonzero(rows < 0)
        distinct, back = np.unique(np.asarray(keys, dtype=np.int64)[new], return_inverse=True)
        rows[new] = size + back.reshape(-1)
        return rows, size + len(distinct)


# ---- the tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicTable:
    id: NDArray[np.int64]
    alive: NDArray[np.bool_]
    name: Texts
    phone: Texts
    phone_original: Texts
    website: Texts
    source_text: Texts
    source_file: Pool
    needs_review: NDArray[np.bool_]
    review_reasons: Pool
    updated: NDArray[np.int64]  # microseconds since the epoch, UTC
    evidence: Evidence


@dataclass(frozen=True)
class LocationTable:
    id: NDArray[np.int64]
    alive: NDArray[np.bool_]
    clinic: NDArray[np.int64]  # the clinic's row in ClinicTable
    address_line1: Texts
    address_line2: Texts
    city: Pool
    state: Pool
    zip: Texts
    lat: NDArray[np.float64]  # NaN: not placed
    lon: NDArray[np.float64]
    geocode_precision: Pool
    geocode_source: Pool
    time_zone: Pool
    needs_review: NDArray[np.bool_]
    review_reasons: Pool
    hours: Pool  # (opening_hours, hours_exceptions)
    accepting_new_patients: NDArray[np.int8]  # -1 unknown, 0 no, 1 yes
    telehealth: NDArray[np.int8]
    languages: Pool
    updated: NDArray[np.int64]


# How each column is read and kept: "id" and "alive" are arrays; Texts for free text; Pool
# (decoded once per distinct value) for what repeats; arrays for numbers and flags.
_ARRAY = {"needs_review": bool, "accepting_new_patients": np.int8, "telehealth": np.int8}
_POOLED: dict[str, Callable[[Any], Any]] = {
    "source_file": _same, "review_reasons": _reasons, "city": _same,
    "state": _same, "geocode_precision": _same, "geocode_source": _same,
    "time_zone": _same, "hours": _hours, "languages": _optional_tuple,
}  # fmt: skip
_TEXT_COLUMNS = frozenset(
    {"name", "phone", "phone_original", "website", "source_text", "address_line1",
     "address_line2", "zip"}
)  # fmt: skip


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


_CLINIC, _LOCATION, _LINK = _table(Clinic), _table(Location), _table(ClinicSpecialty)
# JSON columns are read as their text: equal values are then one key, decoded once.
_CLINIC_SELECT = (
    _CLINIC.c.id, _CLINIC.c.active, _CLINIC.c.name, _CLINIC.c.phone, _CLINIC.c.phone_original,
    _CLINIC.c.website, _CLINIC.c.source_text, _CLINIC.c.source_file, _CLINIC.c.needs_review,
    cast(_CLINIC.c.review_reasons, Text), _CLINIC.c.updated_at,
)  # fmt: skip
_LOCATION_SELECT = (
    _LOCATION.c.id, _LOCATION.c.active, _LOCATION.c.clinic_id, _LOCATION.c.address_line1,
    _LOCATION.c.address_line2, _LOCATION.c.city, _LOCATION.c.state, _LOCATION.c.zip,
    _LOCATION.c.lat, _LOCATION.c.lon, _LOCATION.c.geocode_precision,
    _LOCATION.c.geocode_source, _LOCATION.c.time_zone, _LOCATION.c.needs_review,
    cast(_LOCATION.c.review_reasons, Text), cast(_LOCATION.c.opening_hours, Text),
    cast(_LOCATION.c.hours_exceptions, Text), _LOCATION.c.accepting_new_patients,
    _LOCATION.c.telehealth, cast(_LOCATION.c.languages, Text), _LOCATION.c.updated_at,
)  # fmt: skip


def _fact(value: bool | None) -> int:
    return -1 if value is None else int(bool(value))


@dataclass
class Columns:
    """Rows of one table as columns, in the keys' form (JSON as text): ``ids`` and the
    values by column name."""

    ids: list[int] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def clinic_columns(
    rows: Iterable[Sequence[Any]], evidence: dict[int, tuple[Any, ...]] | None
) -> Columns:
    """Columns of clinic rows in _CLINIC_SELECT's order (with their evidence, if given)."""
    names = ("active", "name", "phone", "phone_original", "website", "source_text",
             "source_file", "needs_review", "review_reasons", "updated")  # fmt: skip
    out = Columns(values={name: [] for name in names})
    lists = [out.values[name] for name in names]
    for row in rows:
        out.ids.append(row[0])
        for target, value in zip(lists, row[1:-1], strict=False):
            target.append(value)
        out.values["updated"].append(to_micros(row[-1]))
    if evidence is not None:
        out.values["evidence"] = [evidence.get(clinic_id, ()) for clinic_id in out.ids]
    return out


def location_columns(rows: Iterable[Sequence[Any]]) -> Columns:
    """Columns of location rows in _LOCATION_SELECT's order; ``clinic`` holds clinic ids."""
    names = ("active", "clinic", "address_line1", "address_line2", "city", "state", "zip",
             "lat", "lon", "geocode_precision", "geocode_source", "time_zone", "needs_review",
             "review_reasons")  # fmt: skip
    extra = ("hours", "accepting_new_patients", "telehealth", "languages", "updated")
    out = Columns(values={name: [] for name in (*names, *extra)})
    lists = [out.values[name] for name in names]
    hours, accepting = out.values["hours"], out.values["accepting_new_patients"]
    telehealth, languages = out.values["telehealth"], out.values["languages"]
    updated = out.values["updated"]
    for row in rows:
        out.ids.append(row[0])
        for target, value in zip(lists, row[1:15], strict=True):
            target.append(value)
        hours.append((row[15], row[16]))
        accepting.append(_fact(row[17]))
        telehealth.append(_fact(row[18]))
        languages.append(row[19])
        updated.append(to_micros(row[20]))
    return out


def _array(name: str, values: list[Any]) -> NDArray[Any]:
    if name in ("lat", "lon"):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if name in ("alive", "active"):
        return np.array(values, dtype=bool)
    return np.array(values, dtype=_ARRAY.get(name, np.int64))


def _column(name: str, values: list[Any]) -> Any:
    if name in _TEXT_COLUMNS:
        return Texts.of(values)
    if name in _POOLED:
        return Pool.of(values, _POOLED[name])
    return _array(name, values)


def _new_table(kind: type[Any], columns: Columns, **given: Any) -> Any:
    built = _TableBuilder()
    built.add(columns, skip=given)
    return built.table(kind, **given)


class _TableBuilder:
    """A table made chunk by chunk, each chunk made compact at once: a full read never holds
    a Python object per cell of the whole directory."""

    def __init__(self) -> None:
        self.ids: list[NDArray[np.int64]] = []
        self.parts: dict[str, list[Any]] = {}
        self.pools: dict[str, Pool] = {}

    def add(self, columns: Columns, skip: Collection[str] = ()) -> None:
        self.ids.append(np.array(columns.ids, dtype=np.int64))
        for name, values in columns.values.items():
            if name in skip:
                continue
            part: Any
            if name == "evidence":
                part = values  # made whole at the end (its links are shared tuples meanwhile)
            elif name in _TEXT_COLUMNS:
                part = Texts.of(values)
            elif name in _POOLED:
                pool = self.pools.get(name)
                if pool is None:
                    pool = self.pools[name] = Pool.of((), _POOLED[name])
                part = pool.codes_of(values)
            else:
                part = _array(name, values)
            self.parts.setdefault(name, []).append(part)

    def table(self, kind: type[Any], **given: Any) -> Any:
        made: dict[str, Any] = dict(given)
        for name, parts in self.parts.items():
            field_name = "alive" if name == "active" else name
            if name == "evidence":
                made[field_name] = Evidence.of([links for part in parts for links in part])
            elif name in _TEXT_COLUMNS:
                made[field_name] = Texts.joined(parts)
            elif name in _POOLED:
                pool = self.pools[name]
                pool.codes = np.concatenate(parts).astype(np.int32)
                made[field_name] = pool
            else:
                made[field_name] = np.concatenate(parts)
        ids = np.concatenate(self.ids) if self.ids else np.empty(0, dtype=np.int64)
        return kind(id=ids, **made)


def _updated_table(table: Any, rows: NDArray[np.int64], columns: Columns, size: int) -> Any:
    made: dict[str, Any] = {"id": _grown(table.id, size, 0)}
    made["id"][rows] = columns.ids
    for name, values in columns.values.items():
        field_name = "alive" if name == "active" else name
        old = getattr(table, field_name)
        if isinstance(old, np.ndarray):
            grown = _grown(old, size, False if old.dtype == bool else 0)
            grown[rows] = _array(name, values)
            made[field_name] = grown
        else:
            made[field_name] = old.updated(rows, values, size)
    return replace(table, **made)


# ---- reading from the database -----------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """Rows read at ``revision``: clinics (any state) and locations; ``complete`` when they
    are the whole directory rather than what changed since a revision."""

    revision: int
    clinics: Columns
    locations: Columns
    complete: bool

    @property
    def size(self) -> int:
        return len(self.clinics) + len(self.locations)


def _evidence(
    connection: Connection, clinic_ids: Sequence[int] | None
) -> dict[int, tuple[tuple[str, bool, str, str | None], ...]]:
    query = select(
        _LINK.c.clinic_id, _LINK.c.specialty_code, _LINK.c.offered, _LINK.c.reason,
        _LINK.c.source,
    ).order_by(_LINK.c.clinic_id, _LINK.c.specialty_code)  # fmt: skip
    if clinic_ids is not None:
        query = query.where(_LINK.c.clinic_id.in_(clinic_ids))
    found: dict[int, list[tuple[str, bool, str, str | None]]] = {}
    # Links repeat (an import's reason and source): one tuple each, shared.
    shared: dict[tuple[str, bool, str, str | None], tuple[str, bool, str, str | None]] = {}
    for clinic_id, code, offered, reason, source in connection.execute(query):
        link = (code, bool(offered), reason, source)
        found.setdefault(clinic_id, []).append(shared.setdefault(link, link))
    return {clinic_id: tuple(links) for clinic_id, links in found.items()}


_CHUNK = 5000


def read_changes(connection: Connection, since: int) -> Changes:
    """The clinics and locations stamped with a revision above ``since``, and every location
    of such a clinic. The revision is read first, so the rows are as new as it, or newer."""
    revision = read_revision(connection)
    changed = select(_CLINIC.c.id).where(_CLINIC.c.revision > since)
    rows = list(connection.execute(select(*_CLINIC_SELECT).where(_CLINIC.c.revision > since)))
    evidence = _evidence(connection, [row[0] for row in rows]) if rows else {}
    locations = connection.execute(
        select(*_LOCATION_SELECT)
        .where(or_(_LOCATION.c.revision > since, _LOCATION.c.clinic_id.in_(changed)))
        .order_by(_LOCATION.c.id)
    )
    return Changes(revision, clinic_columns(rows, evidence), location_columns(locations), False)


def count_changes(connection: Connection, since: int) -> int:
    """How many rows ``read_changes(connection, since)`` would read (to choose between it and
    a whole read without reading them)."""
    changed = select(_CLINIC.c.id).where(_CLINIC.c.revision > since)
    clinics = select(func.count()).select_from(_CLINIC).where(_CLINIC.c.revision > since)
    locations = (
        select(func.count())
        .select_from(_LOCATION)
        .where(or_(_LOCATION.c.revision > since, _LOCATION.c.clinic_id.in_(changed)))
    )
    return int(
        connection.execute(clinics).scalar_one() + connection.execute(locations).scalar_one()
    )


def read_all(connection: Connection) -> Snapshot:
    """A snapshot of the whole active directory as ``connection`` sees it, read in chunks.
    The revision is read first, so the rows are as new as it, or newer."""
    revision = read_revision(connection)
    clinics = _TableBuilder()
    query = select(*_CLINIC_SELECT).where(_CLINIC.c.active.is_(True)).order_by(_CLINIC.c.id)
    for part in connection.execute(query.execution_options(yield_per=_CHUNK)).partitions():
        clinics.add(clinic_columns(part, None))
    ids = np.concatenate(clinics.ids) if clinics.ids else np.empty(0, dtype=np.int64)
    links = (
        select(_LINK.c.clinic_id, _LINK.c.specialty_code, _LINK.c.offered, _LINK.c.reason,
               _LINK.c.source)
        .join(_CLINIC, _CLINIC.c.id == _LINK.c.clinic_id)
        .where(_CLINIC.c.active.is_(True))
        .order_by(_LINK.c.clinic_id, _LINK.c.specialty_code)
        .execution_options(yield_per=_CHUNK)
    )  # fmt: skip
    evidence = Evidence.read(connection.execute(links).partitions(), ids)
    clinic_table: ClinicTable = clinics.table(ClinicTable, evidence=evidence)
    clinic_rows = RowIndex(clinic_table.id)
    locations = _TableBuilder()
    clinic_parts: list[NDArray[np.int64]] = []
    query = (
        select(*_LOCATION_SELECT)
        .join(_CLINIC, _CLINIC.c.id == _LOCATION.c.clinic_id)
        .where(_LOCATION.c.active.is_(True), _CLINIC.c.active.is_(True))
        .order_by(_LOCATION.c.id)
    )
    for part in connection.execute(query.execution_options(yield_per=_CHUNK)).partitions():
        columns = location_columns(part)
        clinic_parts.append(clinic_rows.find(columns.values["clinic"]))
        locations.add(columns, skip={"clinic"})
    clinic_of = np.concatenate(clinic_parts) if clinic_parts else np.empty(0, dtype=np.int64)
    location_table: LocationTable = locations.table(LocationTable, clinic=clinic_of)
    return Snapshot(
        revision=revision,
        clinics=clinic_table,
        locations=replace(location_table, alive=location_table.alive & (clinic_of >= 0)),
        clinic_rows=clinic_rows,
        location_rows=RowIndex(location_table.id),
    )


# ---- the snapshot ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    revision: int
    clinics: ClinicTable
    locations: LocationTable
    # Row of each id (alive or not) in its table.
    clinic_rows: RowIndex
    location_rows: RowIndex
    # Rows no longer alive (changed away) since the last full build.
    dead_rows: int = 0
    # Searches and lists built on demand from the tables, once per snapshot (search.py,
    # listing.py): kept here so they live and die with it.
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, changes: Changes) -> Snapshot:
        """A snapshot of a complete read given as columns (tests build directories so)."""
        assert changes.complete
        clinics: ClinicTable = _new_table(ClinicTable, changes.clinics)
        clinic_rows = RowIndex(clinics.id)
        clinic_of = clinic_rows.find(changes.locations.values["clinic"])
        table: LocationTable = _new_table(LocationTable, changes.locations, clinic=clinic_of)
        # A location whose clinic is not here (no longer active meanwhile) is not public.
        table = replace(table, alive=table.alive & (clinic_of >= 0))
        return cls(
            revision=changes.revision,
            clinics=clinics,
            locations=table,
            clinic_rows=clinic_rows,
            location_rows=RowIndex(table.id),
        )

    @property
    def size(self) -> int:
        return len(self.clinics.id) + len(self.locations.id)

    def with_changes(self, changes: Changes) -> Snapshot:
        """A new snapshot: this one with ``changes`` (rows changed since its revision)."""
        rows, size = self.clinic_rows.rows_of(changes.clinics.ids, len(self.clinics.id))
        clinics = _updated_table(self.clinics, rows, changes.clinics, size)
        clinic_rows = RowIndex(clinics.id)
        changed = changes.locations
        clinic_of = clinic_rows.find(changed.values["clinic"])
        keep = np.flatnonzero(clinic_of >= 0)  # a location of a clinic never public: skip
        known = Columns(
            ids=[changed.ids[n] for n in keep],
            values={name: [values[n] for n in keep] for name, values in changed.values.items()},
        )
        known.values["clinic"] = list(clinic_of[keep])
        rows, size = self.location_rows.rows_of(known.ids, len(self.locations.id))
        locations = _updated_table(self.locations, rows, known, size)
        # A location of an inactive clinic is not public either.
        alive = locations.alive & clinics.alive[locations.clinic]
        locations = replace(locations, alive=alive)
        dead = int((~clinics.alive).sum() + (~alive).sum())
        return Snapshot(
            changes.revision,
            clinics,
            locations,
            clinic_rows,
            RowIndex(locations.id),
            dead_rows=dead,
        )

    def nbytes(self) -> int:
        """Bytes held in the tables' columns (each distinct pooled value counted as ~100)."""
        return sum(
            _nbytes(getattr(table, name))
            for table in (self.clinics, self.locations)
            for name in table.__dataclass_fields__
        )


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Texts):
        return value.nbytes()
    if isinstance(value, Pool):
        return int(value.codes.nbytes) + 100 * len(value.values)
    if isinstance(value, Evidence):
        return value.nbytes()
    return 0


def load_snapshot(connection: Connection) -> Snapshot:
    return read_all(connection)


__all__ = [
    "Changes",
    "ClinicTable",
    "Evidence",
    "LocationTable",
    "Pool",
    "RowIndex",
    "Snapshot",
    "Texts",
    "count_changes",
    "from_micros",
    "load_snapshot",
    "read_changes",
    "to_micros",
]
