"""Reading an import file: CSV or a JSON array, from a binary stream, a row at a time.

``read_rows`` yields each row (a ``SourceRow``) and each error found while reading (a
``RowError``) in file order, holding no more of the file than the row it is on (and a block
of the stream); ``read_chunks`` groups them a few thousand rows at a time for the checks,
which are fast over a column of rows. A file that stops being readable (bad UTF-8, broken CSV
quoting, broken JSON) ends with an error where it stopped: the rows before it were read.
``read_import`` reads a whole file held in memory (small files, tests, the benchmark).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from referral.admin.imports.base import (
    CHUNK_ROWS,
    COLUMNS,
    FORMATS,
    REQUIRED_COLUMNS,
    SPECIALTY_COLUMNS,
    RowError,
    SourceRow,
    collector_paused,
)
from referral.web.text import starts_like_formula

_BLOCK = 64 * 1024  # bytes read from the stream at a time (JSON: characters taken)

Chunk = tuple[list[SourceRow], list[RowError]]


@dataclass
class ParsedFile:
    """A whole file's rows and errors, read into memory (``read_import``)."""

    format: str
    rows: list[SourceRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def chunks(self, size: int | None = None) -> Iterator[Chunk]:
        """The rows a chunk at a time (CHUNK_ROWS), each with the errors read among them (all
        of the errors with the first chunk: they were read before any row was checked)."""
        size = size or CHUNK_ROWS
        errors = list(self.errors)
        for start in range(0, len(self.rows), size):
            yield self.rows[start : start + size], errors
            errors = []
        if errors or not self.rows:
            yield [], errors


def detect_format(filename: str | None, mimetype: str | None, head: bytes) -> str:
    """csv or json: from the file name, else the media type, else the first character of
    ``head`` (the file's first bytes)."""
    name = (filename or "").lower()
    for fmt in FORMATS:
        if name.endswith(f".{fmt}"):
            return fmt
    media = (mimetype or "").lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media in ("text/csv", "application/csv"):
        return "csv"
    start = head[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if start[:1] in (b"[", b"{") else "csv"


def read_import(data: bytes, fmt: str) -> ParsedFile:
    """The rows of a CSV or JSON file (UTF-8) held in memory, and its errors."""
    _check_format(fmt)
    parsed = ParsedFile(fmt)
    with collector_paused():  # a dict per row: see collector_paused
        for item in read_rows(io.BytesIO(data), fmt):
            if type(item) is SourceRow:
                parsed.rows.append(item)
            else:
                parsed.errors.append(item)  # type: ignore[arg-type]
    return parsed


def read_chunks(stream: IO[bytes], fmt: str, size: int | None = None) -> Iterator[Chunk]:
    """``read_rows`` a chunk of ``size`` rows (CHUNK_ROWS) at a time, each with the errors
    read among them; the last chunk may be short or hold errors only."""
    size = size or CHUNK_ROWS
    rows: list[SourceRow] = []
    errors: list[RowError] = []
    for item in read_rows(stream, fmt):
        if type(item) is SourceRow:
            rows.append(item)
            if len(rows) == size:
                yield rows, errors
                rows, errors = [], []
        else:
            errors.append(item)  # type: ignore[arg-type]
    if rows or errors:
        yield rows, errors


def read_rows(stream: IO[bytes], fmt: str) -> Iterator[SourceRow | RowError]:
    """The rows of a CSV or JSON (UTF-8) stream and the errors found reading it, in file
    order."""
    _check_format(fmt)
    # A leading BOM is dropped; newline="": the CSV reader sees line ends as they are.
    text = io.TextIOWrapper(
        io.BufferedReader(_Raw(stream), _BLOCK), encoding="utf-8-sig", newline=""
    )
    reader = _csv_rows(text) if fmt == "csv" else _json_rows(text)
    try:
        yield from reader
    except UnicodeDecodeError as exc:
        yield RowError(0, None, f"not UTF-8 text ({exc.reason})")


class _Raw(io.RawIOBase):
    """Any stream with ``read`` as a raw stream (a request's body, an upload's spooled file),
    for io's buffered and text layers. Closing it leaves the stream open."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        return size


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _unknown_column(name: str) -> str:
    return f"unknown column {name!r} (known: {', '.join(COLUMNS)})"


def _unquoted(text: str) -> str:
    """A stripped cell without an export's defusing of a formula trigger."""
    if len(text) > 1 and text[0] == "'" and starts_like_formula(text[1:]):
        return text[1:]
    return text


# ---- CSV ----------------------------------------------------------------------------------


def read_csv(text: str) -> ParsedFile:
    """The rows of CSV text (already decoded) and its errors."""
    parsed = ParsedFile("csv")
    for item in _csv_rows(io.StringIO(text, newline="")):
        if type(item) is SourceRow:
            parsed.rows.append(item)
        else:
            parsed.errors.append(item)  # type: ignore[arg-type]
    return parsed


def _csv_rows(lines: Iterable[str]) -> Iterator[SourceRow | RowError]:
    reader = csv.reader(lines)
    header: list[str | None] | None = None
    named: list[str] | None = None  # the header, when every column has a known name
    try:
        for number, record in enumerate(reader, start=1):
            if header is None:
                header_errors: list[RowError] = []
                header = _read_header(record, header_errors)
                yield from header_errors
                named = [name for name in header if name]
                if len(named) != len(header):
                    named = None
                continue
            cells = [cell.strip() for cell in record]
            if not any(cells):
                continue  # blank lines and rows of empty cells (spreadsheets leave them)
            if len(cells) != len(header):
                yield RowError(
                    number, None, f"has {len(record)} cells; the header has {len(header)}"
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
            yield SourceRow(number, values)
    except csv.Error as exc:
        yield RowError.quoting(reader.line_num, None, f"not readable as CSV: {exc}")
    if header is None:
        yield RowError(1, None, f"no header row (columns: {', '.join(COLUMNS)})")


def _read_header(record: list[str], errors: list[RowError]) -> list[str | None]:
    names: list[str | None] = []
    for position, raw in enumerate(record, start=1):
        name = raw.strip().lower()
        if not name:
            errors.append(RowError(1, f"column {position}", "the column has no name"))
            names.append(None)
        elif name not in COLUMNS:
            errors.append(RowError.quoting(1, name, _unknown_column(name)))
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


# ---- JSON ---------------------------------------------------------------------------------

_NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")
_DECODER = json.JSONDecoder()
# How a JSON value other than an array can start: the file is JSON, but not rows.
_VALUE_STARTS = frozenset('{"-0123456789tfn')


class _JsonError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _JsonArray:
    """The items of a JSON array read from a text stream one at a time: the buffer holds the
    item being read and at most a block more (an item longer than the buffer makes it grow to
    twice its size, so a long item costs a few re-reads, not one per block)."""

    def __init__(self, text: Any) -> None:
        self._text = text
        self._buffer = ""
        self._at = 0  # position in the buffer
        self._eof = False
        # Where the buffer starts in the file, for error positions as json.loads gives them.
        self._line = 1
        self._column = 1

    def _more(self, at_least: int = _BLOCK) -> bool:
        """Read at least ``at_least`` more characters (fewer at the end); False at the end."""
        if self._eof:
            return False
        self._drop_read()
        got = []
        wanted = max(at_least, _BLOCK)
        while wanted > 0:
            block = self._text.read(wanted)
            if not block:
                self._eof = True
                break
            got.append(block)
            wanted -= len(block)
        if not got:
            return False
        self._buffer += "".join(got)
        return True

    def _drop_read(self) -> None:
        done = self._buffer[: self._at]
        if done:
            newlines = done.count("\n")
            if newlines:
                self._line += newlines
                self._column = len(done) - done.rfind("\n")
            else:
                self._column += len(done)
            self._buffer = self._buffer[self._at :]
            self._at = 0

    def _where(self, position: int) -> str:
        before = self._buffer[:position]
        newlines = before.count("\n")
        if newlines:
            line, column = self._line + newlines, position - before.rfind("\n")
        else:
            line, column = self._line, self._column + position
        return f"(line {line}, column {column})"

    def _fail(self, message: str, position: int) -> _JsonError:
        return _JsonError(f"not valid JSON: {message} {self._where(position)}")

    def _skip_whitespace(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            found = _NOT_WHITESPACE.search(self._buffer, self._at)
            if found is not None:
                self._at = found.start()
                return self._buffer[self._at]
            self._at = len(self._buffer)
            if not self._more():
                return ""

    def items(self) -> Iterator[Any]:
        """Each item of the array; _JsonError when the text is not a JSON array."""
        first = self._skip_whitespace()
        if first != "[":
            if first and first in _VALUE_STARTS:
                raise _JsonError("must be a JSON array of objects, one per row")
            raise self._fail("Expecting value", self._at)
        self._at += 1
        if self._skip_whitespace() == "]":
            self._at += 1
        else:
            while True:
                yield self._value()
                following = self._skip_whitespace()
                if following == "]":
                    self._at += 1
                    break
                if following != ",":
                    raise self._fail("Expecting ',' delimiter", self._at)
                self._at += 1
        if self._skip_whitespace():
            raise self._fail("Extra data", self._at)

    def _value(self) -> Any:
        self._skip_whitespace()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._buffer, self._at)
            except json.JSONDecodeError as exc:
                if not self._eof:  # perhaps only cut off: read as much again, then retry
                    self._more(len(self._buffer) - self._at)
                    continue
                raise self._fail(exc.msg, exc.pos) from None
            except (ValueError, RecursionError):
                raise _JsonError("JSON nested too deeply, or a number too long") from None
            # A number (or literal) at the very end of the buffer may go on in the stream.
            if end == len(self._buffer) and not self._eof:
                self._more(len(self._buffer) - self._at)
                continue
            self._at = end
            return value


def _json_rows(text: Any) -> Iterator[SourceRow | RowError]:
    try:
        for number, item in enumerate(_JsonArray(text).items(), start=1):
            if not isinstance(item, dict):
                yield RowError(number, None, "must be an object of the import columns")
                continue
            values: dict[str, Any] = {}
            errors: list[RowError] = []
            for key, raw in item.items():
                if key not in COLUMNS:
                    errors.append(RowError.quoting(number, str(key), _unknown_column(str(key))))
                    continue
                try:
                    values[key] = _json_value(key, raw)
                except ValueError as exc:
                    errors.append(RowError(number, key, str(exc)))
            yield from errors
            yield SourceRow(number, values)
    except _JsonError as exc:
        yield RowError.quoting(0, None, exc.reason)


def read_json(text: str) -> ParsedFile:
    """The rows of JSON text (already decoded) and its errors."""
    parsed = ParsedFile("json")
    for item in _json_rows(io.StringIO(text)):
        if type(item) is SourceRow:
            parsed.rows.append(item)
        else:
            parsed.errors.append(item)  # type: ignore[arg-type]
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
