"""Reading an import file from a stream, a block at a time, reads what reading it whole did:
the same rows, the same errors (for JSON, json.loads's own messages and positions), whatever
the block boundaries; a file that stops being readable stops there, with the rows before."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral.admin.imports import COLUMNS, RowError, SourceRow, read_chunks, read_rows
from referral.admin.imports import read as reading


def streamed(data: bytes, fmt: str, block: int) -> list[SourceRow | RowError]:
    with mock.patch.object(reading, "_BLOCK", block):
        return list(read_rows(io.BytesIO(data), fmt))


def split(items: list[SourceRow | RowError]) -> tuple[list[Any], list[RowError]]:
    rows = [(item.row, item.values) for item in items if isinstance(item, SourceRow)]
    return rows, [item for item in items if isinstance(item, RowError)]


# ---- CSV ----------------------------------------------------------------------------------

CELLS = st.one_of(
    st.sampled_from(["", " ", "x", "'=1", 'a "quoted" b', "two\nlines", "cr\rhere", "crlf\r\n"]),
    st.text(alphabet=st.sampled_from(list('ab ,"\n\r\t\u00e9\u6771')), max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(
    header=st.sampled_from([list(COLUMNS), ["clinic_name", "city", "state", "fax"], ["city"]]),
    data=st.data(),
    block=st.sampled_from([1, 2, 3, 7, 64, 65536]),
    terminator=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
)
def test_csv_streamed_is_csv_read_whole(
    header: list[str], data: st.DataObject, block: int, terminator: str, bom: bool
) -> None:
    records = data.draw(st.lists(st.lists(CELLS, min_size=1, max_size=len(header) + 1), max_size=6))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=terminator)
    writer.writerow(header)
    writer.writerows(records)
    text = buffer.getvalue()
    whole = reading.read_csv(text)
    raw = ("\ufeff" if bom else "").encode() + text.encode()
    rows, errors = split(streamed(raw, "csv", block))
    assert rows == [(row.row, row.values) for row in whole.rows]
    assert sorted(errors, key=lambda e: e.row) == sorted(whole.errors, key=lambda e: e.row)


def test_csv_stops_at_bytes_that_are_not_utf8_keeping_the_rows_before() -> None:
    good = "clinic_name,city,state\n" + "".join(f"Clinic {n},Austin,TX\n" for n in range(2000))
    data = good.encode() + b"Bad \xff,Austin,TX\nAfter,Austin,TX\n"
    rows, errors = split(streamed(data, "csv", 64))
    # Those before the block the bad bytes are in (text is decoded 8 KB at a time).
    assert 1500 < len(rows) <= 2000
    assert errors == [RowError(0, None, "not UTF-8 text (invalid start byte)")]


def test_chunks_hold_the_rows_in_order_with_the_errors_read_among_them() -> None:
    lines = ["clinic_name,city,state,fax"]  # an unknown column: an error in row 1
    lines += [f"Clinic {n},Austin,TX," if n != 5 else "short,row" for n in range(12)]
    data = ("\n".join(lines) + "\n").encode()
    chunks = list(read_chunks(io.BytesIO(data), "csv", 4))
    assert [[row.row for row in rows] for rows, _ in chunks] == [
        [2, 3, 4, 5], [6, 8, 9, 10], [11, 12, 13],
    ]  # fmt: skip
    assert [[(e.row, e.field) for e in errors] for _, errors in chunks] == [
        [(1, "fax")], [(7, None)], [],
    ]  # fmt: skip


def test_an_error_quoting_the_file_is_clipped() -> None:
    name = "x" * 100_000
    data = f"clinic_name,city,state,{name}\nA,Austin,TX,1\n".encode()
    _, errors = split(streamed(data, "csv", 65536))
    assert len(errors) == 1
    assert len(errors[0].field or "") <= 100 and len(errors[0].reason) <= 500


# ---- JSON ---------------------------------------------------------------------------------


def reference_json(text: str) -> tuple[list[Any], list[RowError]]:
    """What reading the whole text with json.loads made of it (the importer before it
    streamed), for text that starts an array."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        return [], [RowError(0, None, reason)]
    assert isinstance(items, list)
    rows: list[Any] = []
    errors: list[RowError] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            errors.append(RowError(number, None, "must be an object of the import columns"))
            continue
        values: dict[str, Any] = {}
        for key, raw in item.items():
            if key not in COLUMNS:
                errors.append(RowError.quoting(number, key, reading._unknown_column(key)))
                continue
            try:
                values[key] = reading._json_value(key, raw)
            except ValueError as exc:
                errors.append(RowError(number, key, str(exc)))
        rows.append((number, values))
    return rows, errors


CELL_VALUES = st.one_of(
    st.none(), st.text(max_size=8), st.integers(-1000, 10**30), st.floats(allow_nan=False),
    st.booleans(), st.lists(st.sampled_from(["spine", "sports", 3]), max_size=3),
)  # fmt: skip
ITEMS = st.one_of(
    st.dictionaries(st.sampled_from([*COLUMNS, "owner"]), CELL_VALUES, max_size=5),
    st.integers(-(10**20), 10**20),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def dumped(items: list[Any], indent: int | None, spaces: str) -> str:
    text = json.dumps(items, indent=indent, ensure_ascii=False)
    return spaces + text + spaces


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(ITEMS, max_size=6),
    indent=st.sampled_from([None, 0, 2]),
    spaces=st.sampled_from(["", " ", "\n\t "]),
    block=st.sampled_from([1, 2, 5, 64]),
)
def test_json_streamed_is_json_read_whole(
    items: list[Any], indent: int | None, spaces: str, block: int
) -> None:
    text = dumped(items, indent, spaces)
    rows, errors = split(streamed(text.encode(), "json", block))
    expected_rows, expected_errors = reference_json(text)
    assert rows == expected_rows
    assert errors == expected_errors


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(ITEMS, min_size=1, max_size=5),
    indent=st.sampled_from([None, 2]),
    data=st.data(),
    block=st.sampled_from([1, 3, 64]),
)
def test_broken_json_is_told_as_json_loads_tells_it(
    items: list[Any], indent: int | None, data: st.DataObject, block: int
) -> None:
    """Cut short, or with a character put in: the same message and position as json.loads
    (after the rows before the break: for a file cut short, its first rows)."""
    text = dumped(items, indent, "")
    at = data.draw(st.integers(1, len(text)))
    broken = data.draw(
        st.sampled_from([text[:at], text[:at] + "}" + text[at:], text[:at] + "x" + text[at:]])
    )
    try:
        json.loads(broken)
    except json.JSONDecodeError:
        pass
    else:
        return  # still JSON (a character inside a string, say)
    found = streamed(broken.encode(), "json", block)
    _, expected = reference_json(broken)
    assert found[-1] == expected[0]
    if broken == text[:at]:
        whole_rows, _ = reference_json(text)
        rows, _ = split(found[:-1])
        assert rows == whole_rows[: len(rows)]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"clinic_name": "X"}', "must be a JSON array of objects, one per row"),
        ("  ", "not valid JSON: Expecting value (line 1, column 3)"),
        ("\ufeff[1", "not valid JSON: Expecting ',' delimiter (line 1, column 3)"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply, or a number too long"),
        ("[" + "1" * 5000 + "]", "JSON nested too deeply, or a number too long"),
    ],
)
def test_json_file_errors(text: str, reason: str) -> None:
    assert streamed(text.encode(), "json", 64)[-1] == RowError(0, None, reason)


def test_a_long_json_item_is_read_in_few_steps() -> None:
    """An item far longer than a block: the buffer grows by doubling, not a block at a time."""
    row = {"clinic_name": "x" * 200_000, "city": "Austin", "state": "TX"}
    data = json.dumps([row, row]).encode()
    with mock.patch.object(reading._JsonArray, "_more", autospec=True,
                           side_effect=reading._JsonArray._more) as more:  # fmt: skip
        rows, errors = split(streamed(data, "json", 64))
    assert errors == [] and [number for number, _ in rows] == [1, 2]
    assert more.call_count < 60
