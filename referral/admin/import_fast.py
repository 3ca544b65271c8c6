"""Fast paths for the import's per-cell checks: the rules of the admin API's marshmallow fields
and of ``normalize_phone`` (phonenumbers), applied in fewer steps.

A fast check only ever says "valid, and this is the value" when the reference would say the
same; for anything else (an error, a shape it does not know) it answers ``UNSURE`` and the
import asks the reference, so every message still comes from one place. A field with a
validator this module does not know gets no fast path at all: a rule added to the schema is
never skipped. tests/test_import_fast.py holds both to agreement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Final

import marshmallow as ma
import phonenumbers
from marshmallow import validate
from phonenumbers.phonemetadata import PhoneMetadata

from referral.web.fields import Pattern, StrictFloat, VocabularyCode
from referral.web.text import PlainText, text_problem


class _Unsure:
    def __repr__(self) -> str:
        return "UNSURE"


UNSURE: Final = _Unsure()

FastCheck = Callable[[str], Any]  # a cell's text -> its value, or UNSURE


def compile_field(field: ma.fields.Field[Any]) -> FastCheck | None:
    """A fast check of text against ``field``, or None when the field is not one this knows:
    a plain ``String``, or a ``Float`` (``StrictFloat(strict=False)``: text is read), whose
    validators are all ``Length``, ``PlainText``, ``Pattern`` or ``Range``."""
    if type(field) in (ma.fields.String, VocabularyCode):  # the latter: a String, documented
        is_number = False
    elif (type(field) is StrictFloat and not field.strict) or type(field) is ma.fields.Float:
        is_number = True
    else:
        return None
    checks: list[Callable[[Any], bool]] = []
    for validator in field.validators:
        check = _compile_validator(validator, is_number)
        if check is None:
            return None
        checks.append(check)
    if not is_number:

        def text_check(value: str) -> Any:
            for check in checks:
                if not check(value):
                    return UNSURE
            return value

        return text_check
    allow_nan = bool(getattr(field, "allow_nan", False))

    def number_check(value: str) -> Any:
        try:
            number = float(value)  # what ma.fields.Float does (num_type)
        except ValueError:
            return UNSURE
        if not allow_nan and (math.isnan(number) or math.isinf(number)):
            return UNSURE
        for check in checks:
            if not check(number):
                return UNSURE
        return number

    return number_check


def compile_list(field: ma.fields.Field[Any]) -> Callable[[Sequence[str]], Any] | None:
    """A fast check of a sequence of text items against ``field``, a ``List`` of a field
    compile_field knows, with ``Length`` validators only: the list, or UNSURE."""
    if type(field) is not ma.fields.List:
        return None
    item_check = compile_field(field.inner)
    if item_check is None or not all(type(v) is validate.Length for v in field.validators):
        return None
    checks = [_compile_validator(validator, False) for validator in field.validators]

    def list_check(items: Sequence[str]) -> Any:
        values = []
        for item in items:
            if type(item) is not str:
                return UNSURE
            value = item_check(item)
            if value is UNSURE:
                return UNSURE
            values.append(value)
        for check in checks:
            if check is None or not check(values):
                return UNSURE
        return values

    return list_check


def _compile_validator(validator: Any, is_number: bool) -> Callable[[Any], bool] | None:
    kind = type(validator)
    if kind is validate.Length and not is_number:
        equal, low, high = validator.equal, validator.min, validator.max
        if equal is not None:
            return lambda value: len(value) == equal
        return lambda value: (
            (low is None or len(value) >= low) and (high is None or len(value) <= high)
        )
    if kind is PlainText and not is_number:
        multiline = validator.multiline
        return lambda value: (
            text_problem(value, multiline=multiline) is None and bool(value.strip())
        )
    if kind is Pattern and not is_number:
        regex: re.Pattern[str] = validator.regex
        return lambda value: regex.fullmatch(value) is not None
    if kind is validate.Range and is_number:
        low, high = validator.min, validator.max
        low_in, high_in = validator.min_inclusive, validator.max_inclusive
        return lambda value: (
            (low is None or (value >= low if low_in else value > low))
            and (high is None or (value <= high if high_in else value < high))
        )
    return None


# ---- whole columns ---------------------------------------------------------------------------

ColumnCheck = Callable[[list[str]], "list[Any] | None"]  # cells -> their values, or None


def compile_column(field: ma.fields.Field[Any]) -> ColumnCheck | None:
    """compile_field's check for a whole column of text cells at once: each rule taken over
    the column in C-level passes (lengths by their least and greatest, refused characters by
    one search of the cells joined by a space, which no rule refuses and which cannot join two
    cells' characters into a match: the refused characters are single characters; ranges by
    the least and greatest number). Every cell's value when every cell passes; else None, and
    the cells go one by one (compile_field's check, then the reference)."""
    if compile_field(field) is None:
        return None  # a rule this module does not know, or not a text or number field
    is_number = type(field) is not ma.fields.String and type(field) is not VocabularyCode
    checks = [_compile_column_validator(validator, is_number) for validator in field.validators]
    if any(check is None for check in checks):
        return None
    known = [check for check in checks if check is not None]
    if not is_number:

        def text_column(values: list[str]) -> list[Any] | None:
            if values and not all(check(values) for check in known):
                return None
            return values

        return text_column

    def number_column(values: list[str]) -> list[Any] | None:
        try:
            numbers = list(map(float, values))  # what ma.fields.Float does (num_type)
        except ValueError:
            return None
        if not all(map(math.isfinite, numbers)):
            return None  # NaN and infinities cell by cell (allow_nan decides there)
        if numbers and not all(check(numbers) for check in known):
            return None
        return numbers

    return number_column


def _compile_column_validator(
    validator: Any, is_number: bool
) -> Callable[[list[Any]], bool] | None:
    """_compile_validator's rule over a non-empty column: True when every value passes."""
    kind = type(validator)
    if kind is validate.Length and not is_number:
        equal, low, high = validator.equal, validator.min, validator.max

        def lengths(values: list[Any]) -> bool:
            sizes = list(map(len, values))
            shortest, longest = min(sizes), max(sizes)
            if equal is not None:
                return shortest == longest == equal
            return (low is None or shortest >= low) and (high is None or longest <= high)

        return lengths
    if kind is PlainText and not is_number:
        multiline = validator.multiline
        return lambda values: (
            text_problem(" ".join(values), multiline=multiline) is None
            and all(map(str.strip, values))
        )
    if kind is Pattern and not is_number:
        regex: re.Pattern[str] = validator.regex
        return lambda values: all(map(regex.fullmatch, values))  # a match is always true
    if kind is validate.Range and is_number:
        low, high = validator.min, validator.max
        low_in, high_in = validator.min_inclusive, validator.max_inclusive

        def bounds(values: list[Any]) -> bool:
            least, most = min(values), max(values)
            return (low is None or (least >= low if low_in else least > low)) and (
                high is None or (most <= high if high_in else most < high)
            )

        return bounds
    return None


# ---- phone numbers --------------------------------------------------------------------------

# The everyday shapes of a North American number: 10 ASCII digits, the area code not starting
# with 0 or 1, optionally "+1" first, the area code optionally in parentheses, groups
# optionally apart by one space, dot or dash. phonenumbers.parse(text, "US") reads each of them
# as country code 1 and these 10 digits as the national number: no extension, no letters, no
# IDD "011" or national prefix "1" to strip, nothing to normalize.
_NANP_SHAPE = re.compile(
    r"(?:\+1[ .-]?)?(?:\(([2-9][0-9]{2})\)|([2-9][0-9]{2}))[ .-]?([0-9]{3})[ .-]?([0-9]{4})"
)

_NANP_CODE = 1
_Desc = tuple[frozenset[int], re.Pattern[str]]
# (leading digits, same country code, general description, the type descriptions)
_Region = tuple[re.Pattern[str] | None, bool, _Desc | None, tuple[_Desc | None, ...]]


def _desc(desc: Any) -> _Desc | None:
    if desc is None or not desc.national_number_pattern:
        return None  # matches nothing, as in phonenumbers
    return frozenset(desc.possible_length), re.compile(desc.national_number_pattern)


@cache
def _nanp_regions() -> tuple[_Region, ...]:
    """phonenumbers' own metadata for the regions of country code 1, in its order."""
    regions: list[_Region] = []
    for region_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[_NANP_CODE]:
        metadata = PhoneMetadata.metadata_for_region(region_code.upper(), None)
        if metadata is None:
            continue
        # Any type will do (_known_type): the likeliest first.
        types = [metadata.fixed_line]
        if not metadata.same_mobile_and_fixed_line_pattern:
            types.append(metadata.mobile)
        types += [
            metadata.premium_rate, metadata.toll_free, metadata.shared_cost, metadata.voip,
            metadata.personal_number, metadata.pager, metadata.uan, metadata.voicemail,
        ]  # fmt: skip
        regions.append(
            (
                re.compile(metadata.leading_digits) if metadata.leading_digits else None,
                metadata.country_code == _NANP_CODE,
                _desc(metadata.general_desc),
                tuple(_desc(desc) for desc in types),
            )
        )
    return tuple(regions)


def _matches(nsn: str, desc: _Desc | None) -> bool:
    if desc is None:
        return False
    lengths, pattern = desc
    if lengths and len(nsn) not in lengths:
        return False
    return pattern.fullmatch(nsn) is not None


def _known_type(nsn: str, region: _Region) -> bool:
    """phonenumbers' _number_type_helper(nsn, metadata) != UNKNOWN: the general description
    matches, and one of the types does."""
    _, _, general, types = region
    return _matches(nsn, general) and any(_matches(nsn, desc) for desc in types)


def nanp_valid(nsn: str) -> bool:
    """phonenumbers.is_valid_number for country code 1 and national number ``nsn``: the
    number's region (the first whose leading digits match, or, for one without, whose
    patterns the number fits), then the number's validity for that region."""
    regions = _nanp_regions()
    if len(regions) == 1:
        return regions[0][1] and _known_type(nsn, regions[0])
    for region in regions:
        leading, same_code = region[0], region[1]
        if leading is not None:
            if leading.match(nsn):
                return same_code and _known_type(nsn, region)
        elif _known_type(nsn, region):
            return same_code
    return False


def fast_phone(text: str) -> str | None:
    """``normalize_phone(text)`` (E.164) for a valid number of an everyday North American
    shape; None for anything else (an invalid number included): ask normalize_phone then."""
    shape = _NANP_SHAPE.fullmatch(text)
    if shape is None:
        return None
    nsn = (shape[1] or shape[2]) + shape[3] + shape[4]
    return f"+1{nsn}" if nanp_valid(nsn) else None
