"""The import's fast cell checks agree with the reference: the admin API's marshmallow fields
and normalize_phone (phonenumbers). A fast path may say "not sure"; it may never accept a value
the reference refuses, nor give another value."""

from __future__ import annotations

import csv
import io
import math
import random
from typing import Any

import marshmallow as ma
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import validate

from referral.admin import imports
from referral.admin.import_fast import UNSURE, compile_field, fast_phone, nanp_valid
from referral.admin.imports import apply, read
from referral.admin.imports import validate as checks
from referral.admin.models import AdminChange
from referral.admin.service import EditError, normalize_phone
from referral.web.text import starts_like_formula

FAST_COLUMNS = sorted(checks._FAST)
KNOWN_SPECIALTIES = {"orthopedic", "spine", "sports"}

# Odd and hostile cells: edges of every rule, look-alike digits, controls, bidi overrides.
ODD = [
    "", " ", "a", "ab", "abc", "x" * 40, "x" * 41, "x" * 100, "x" * 101, "x" * 200, "x" * 201,
    "x" * 300, "x" * 301, "Clinic\x00", "Clinic\x01", "Clinic\x7f", "Clinic\x85", "Clinic\t",
    "Cl\u202einic", "Cl\u2066inic", "Cl\u200binic", "Cl\ufeffinic", "Cl\u200dinic", "  Lake  ",
    "Zoë Physio", "東京", "\u00a0", "\u2003", "line\nbreak", "line\rbreak",
    "12345", "12345-6789", "1234", "123456", "12345-678", "12345\n", "٠١٢٣٤",
    "\uff11\uff12\uff13\uff14\uff15",
    "0", "-0", "90", "90.0", "90.0000001", "-90", "-90.5", "180", "-180", "180.01", "1e1",
    "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "Infinity", "1_0", " 44.9", "44.9 ", "0x10",
    "44,9", "٤٤.٩", "\uff11\uff12", "+45", "--4", ".5", "5.", "1e-400",
    "https://a.example.com", "http://x.io/", "https://x.io:8080/p?q#f", "ftp://x.io",
    "https://x", "https://-x.io", "https://x.io/ space", "https://x.io/\u00e9", "HTTPS://X.IO",
    "TX", "tx", "XX", "Tx", "\u0131N",
    "(612) 555-0147", "612-555-0147", "612.555.0147", "6125550147", "+1 612 555 0147",
    "+16125550147", "+1-612-555-0147", "+1 (612) 555-0147", "(612)555-0147", "612 555 0147",
    "(012) 555-0147", "(112) 555-0147", "(612) 055-0147", "(612) 155-0147", "(800) 555-0147",
    "(900) 555-0147", "(612) 555-0147 x12", "612-555-CALL", "1-612-555-0147", "1 612 555 0147",
    "011 44 20 7946 0958", "+44 20 7946 0958", "+1 \uff16\uff11\uff12 555 0147", "(612 555-0147",
    "612) 555-0147", "+1  612 555 0147", "612--555-0147", "+2 612 555 0147", "911",
]  # fmt: skip


PHONE_SHAPES = [
    "({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "{a}{b}{c}", "+1 {a} {b} {c}", "+1{a}{b}{c}",
    "+1 ({a}) {b}-{c}", "1 {a} {b} {c}", "{a} {b} {c} x9", "({a}) {b}.{c}", "+1-{a}-{b}-{c}",
]  # fmt: skip


def reference(column: str, raw: Any) -> tuple[Any, str | None]:
    return checks._Validator(KNOWN_SPECIALTIES)._reference(column, raw)


def agrees(column: str, raw: str) -> None:
    fast = checks._FAST[column](raw)
    if fast is UNSURE:
        return
    value, reason = reference(column, raw)
    assert reason is None, (column, raw, fast, reason)
    assert (type(fast), fast) == (type(value), value), (column, raw)


def test_the_fast_paths_cover_the_per_row_columns() -> None:
    # The columns whose values rarely repeat are the ones a fast path pays for.
    assert {"clinic_name", "address", "lat", "lon", "phone", "website", "zip", "city"} <= set(
        FAST_COLUMNS
    )


@pytest.mark.parametrize("column", FAST_COLUMNS)
@pytest.mark.parametrize("raw", ODD)
def test_fast_path_never_disagrees_on_odd_cells(column: str, raw: str) -> None:
    agrees(column, raw)


@pytest.mark.parametrize(
    ("column", "raw", "value"),
    [
        ("clinic_name", "Lakeside Running Clinic", "Lakeside Running Clinic"),
        ("address", "1 Main St", "1 Main St"),
        ("city", "Minneapolis", "Minneapolis"),
        ("zip", "55401", "55401"),
        ("zip", "55401-1234", "55401-1234"),
        ("website", "https://lakeside.example.com", "https://lakeside.example.com"),
        ("lat", "44.9", 44.9),
        ("lon", "-93.27", -93.27),
        ("lat", "-90", -90.0),
        ("phone", "(612) 555-0147", "+16125550147"),
        ("phone", "+1 612 555 0147", "+16125550147"),
    ],
)
def test_fast_path_takes_everyday_cells(column: str, raw: str, value: Any) -> None:
    fast = checks._FAST[column](raw)
    assert fast == value
    assert reference(column, raw) == (value, None)


@pytest.mark.parametrize("column", [*FAST_COLUMNS, "state", *imports.SPECIALTY_COLUMNS])
@pytest.mark.parametrize("raw", ODD)
def test_validator_answers_as_the_reference(column: str, raw: str) -> None:
    """Values and error messages alike, whichever path a cell takes."""
    validator = checks._Validator(KNOWN_SPECIALTIES)
    if column in imports.SPECIALTY_COLUMNS:
        expected = reference(column, tuple(code for code in [raw.strip()] if code))
    else:
        expected = reference(column, raw)
    assert validator.check(column, raw) == expected


@settings(max_examples=300, deadline=None)
@given(column=st.sampled_from(FAST_COLUMNS), raw=st.text(max_size=60))
def test_fast_path_never_disagrees_on_any_text(column: str, raw: str) -> None:
    agrees(column, raw)


@settings(max_examples=300, deadline=None)
@given(
    column=st.sampled_from(["lat", "lon"]),
    number=st.floats(allow_nan=True, allow_infinity=True),
    style=st.sampled_from(["{}", "{:.6f}", "{:e}", " {} "]),
)
def test_fast_path_never_disagrees_on_numbers(column: str, number: float, style: str) -> None:
    agrees(column, style.format(number))


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(PHONE_SHAPES),
    a=st.integers(0, 999),
    b=st.integers(0, 999),
    c=st.integers(0, 9999),
)
def test_fast_phone_is_normalize_phone(shape: str, a: int, b: int, c: int) -> None:
    text = shape.format(a=f"{a:03d}", b=f"{b:03d}", c=f"{c:04d}")
    try:
        expected: str | None = normalize_phone(text)
    except EditError:
        expected = None
    fast = fast_phone(text)
    assert fast is None or fast == expected


def test_nanp_validity_is_phonenumbers() -> None:
    """Every area code, with a spread of exchanges and line numbers."""
    draw = random.Random(20261123)
    valid = 0
    for area in range(200, 1000):
        for _ in range(8):
            nsn = f"{area}{draw.randrange(1000):03d}{draw.randrange(10000):04d}"
            number = phonenumbers.PhoneNumber(country_code=1, national_number=int(nsn))
            expected = phonenumbers.is_valid_number(number)
            assert nanp_valid(nsn) is expected, nsn
            valid += expected
    assert valid > 1000  # the sample holds valid numbers, not only invalid ones


def test_fields_with_an_unknown_rule_get_no_fast_path() -> None:
    assert compile_field(ma.fields.String(validate=validate.OneOf(["a"]))) is None
    assert compile_field(ma.fields.String(validate=lambda value: True)) is None
    assert compile_field(ma.fields.Integer()) is None
    assert compile_field(ma.fields.String(validate=validate.Length(max=3))) is not None


def reference_csv_rows(text: str) -> list[tuple[int, dict[str, Any]]]:
    """read_csv's rows as it read them cell by cell before (the reference for its faster
    form): each named cell stripped, an export's "'" before a formula trigger taken off,
    empty as None; rows of empty cells skipped."""
    records = list(csv.reader(io.StringIO(text, newline="")))
    header = [name.strip().lower() for name in records[0]]
    rows = []
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record) or len(record) != len(header):
            continue
        values = {}
        for name, cell in zip(header, record, strict=True):
            if name not in imports.COLUMNS:
                continue
            cell = cell.strip()
            # An export's defusing "'" (before a formula starter, white space or not) is undone.
            if len(cell) > 1 and cell[0] == "'" and starts_like_formula(cell[1:]):
                cell = cell[1:]
            values[name] = cell or None
        rows.append((number, values))
    return rows


CELLS = st.one_of(
    st.sampled_from(["", " ", "'", "''", "'=1+1", " '+x ", "'-", "'@a", "'\tq", "O'Brien", "a'"]),
    st.text(alphabet=st.sampled_from(list("ab '=+-@\t\r\n,\"x0")), max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(
        [list(imports.COLUMNS), ["clinic_name", "city", "state", "bogus"], ["city", "state"]]
    ),
    data=st.data(),
)
def test_read_csv_reads_cells_as_the_reference(header: list[str], data: st.DataObject) -> None:
    records = data.draw(
        st.lists(
            st.lists(CELLS, min_size=len(header), max_size=len(header)), min_size=0, max_size=6
        )
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(records)
    text = buffer.getvalue()
    parsed = read.read_csv(text)
    assert [(row.row, row.values) for row in parsed.rows] == reference_csv_rows(text)


@pytest.mark.parametrize("column", imports.SPECIALTY_COLUMNS)
@pytest.mark.parametrize(
    "codes",
    [
        (),
        ("spine",),
        ("spine", "orthopedic", "spine"),
        ("sports", "nope"),
        ("spine",) * 20,
        ("spine",) * 21,
        ("x" * 40,),
        ("x" * 41,),
        ("spine", "Spine"),
        ("spine\x00",),
    ],
)
def test_specialties_answer_as_the_reference(column: str, codes: tuple[str, ...]) -> None:
    # (read_json has refused lists with other items than text already.)
    validator = checks._Validator(KNOWN_SPECIALTIES | {"x" * 40, "x" * 41})
    expected = validator._reference(column, codes)
    assert validator._check(column, codes) == expected
    assert validator._check(column, ";".join(codes)) == expected


@pytest.mark.parametrize("column", imports.SPECIALTY_COLUMNS)
def test_specialties_fast_path_takes_known_codes(column: str) -> None:
    fast = checks._FAST_LISTS[column]
    assert fast is not None
    assert fast(("spine", "sports")) == ["spine", "sports"]
    assert fast(("spine",) * 21) is UNSURE


def test_both_specialty_columns_are_the_admin_apis_fields() -> None:
    """The not-offered column is checked with the edit endpoints' own field, and answers as
    the offered column does (its own field's messages; unknown codes named alike)."""
    from referral.admin.schemas import ClinicCreateSchema

    fields = ClinicCreateSchema().fields
    for column in imports.SPECIALTY_COLUMNS:
        assert type(checks._SCHEMA_FIELDS[column]) is type(fields[column])
        assert repr(checks._SCHEMA_FIELDS[column].validators) == repr(fields[column].validators)
    validator = checks._Validator(KNOWN_SPECIALTIES)
    for raw in ["spine;nope;nope", "spine;" * 21, "x" * 41, "spine;sports"]:
        assert validator.check("specialties_not_offered", raw) == validator.check(
            "specialties", raw
        )
    assert validator.check("specialties_not_offered", "spine;nope") == (
        None,
        "unknown code(s): nope",
    )


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), JSON_VALUES, max_size=6) | JSON_VALUES)
def test_change_log_diffs_are_stored_as_core_stores_them(value: Any) -> None:
    """The import's JSON conversion on SQLite gives Core's own text (json.dumps)."""
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    table = apply._table(AdminChange)
    core = table.c["diff"].type.dialect_impl(dialect).bind_processor(dialect)
    ours = apply._driver_value(table, "diff", dialect)
    assert core is not None and ours is not None and ours is not core
    assert ours(value) == core(value)


EVERYDAY = {
    "clinic_name": ["Lakeside Physio", "Zoë Physio", "A"],
    "phone": ["(612) 555-0147", "+1 612 555 0147", "612.555.0147"],
    "website": ["https://a.example.com", "http://x.io/"],
    "address": ["12 Main St", "PO Box 4"],
    "city": ["Minneapolis", "St. Paul"],
    "state": ["MN", "TX"],
    "zip": ["55401", "55401-1234"],
    "lat": ["44.9", "-90", "0"],
    "lon": ["-93.2", "180", "12"],
    "specialties": ["orthopedic", "spine; sports", "; ;"],
    "specialties_not_offered": ["sports", "orthopedic;spine", " ; "],
}


def cell_by_cell(
    validator: checks._Validator, column: str, raws: list[Any]
) -> tuple[list[Any], list[tuple[int, str]]]:
    """A column checked one cell at a time (the path every cell could take)."""
    values, problems = [], []
    for index, raw in enumerate(raws):
        value, reason = validator._cell(column, tuple(raw) if type(raw) is list else raw)
        if reason is not None:
            problems.append((index, reason))
        values.append(value if value != () else None)
    return values, problems


@settings(max_examples=400, deadline=None)
@given(data=st.data(), column=st.sampled_from(list(imports.COLUMNS)))
def test_a_column_answers_as_its_cells(data: st.DataObject, column: str) -> None:
    """Whole-column checks, repeated values once: the values and refusals of each cell."""
    cell = st.sampled_from(EVERYDAY[column])
    if data.draw(st.booleans()):  # most columns are everyday cells; some have odd ones
        cell = cell | st.sampled_from(ODD) | st.none() | st.text(max_size=12)
    if column in imports.SPECIALTY_COLUMNS:
        cell = cell | st.lists(st.sampled_from([*KNOWN_SPECIALTIES, "x", " ", "a\x00"]))
    raws = data.draw(st.lists(cell, max_size=12))
    validator = checks._Validator(KNOWN_SPECIALTIES)
    got = validator._column(column, raws)
    assert got == cell_by_cell(validator, column, raws)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), column=st.sampled_from(sorted(checks._FAST_COLUMNS)))
def test_column_check_is_the_cell_check(data: st.DataObject, column: str) -> None:
    """A whole column passes exactly when each cell does (numbers: each finite one), with
    the cells' own values."""
    cell = st.sampled_from(EVERYDAY[column]) | st.sampled_from(ODD) | st.text(max_size=12)
    raws = data.draw(st.lists(cell, max_size=8))
    cells = [checks._FAST[column](raw) for raw in raws]
    whole = checks._FAST_COLUMNS[column](raws)
    if whole is None:
        assert any(
            value is UNSURE or (isinstance(value, float) and not math.isfinite(value))
            for value in cells
        )
    else:
        assert whole == cells
