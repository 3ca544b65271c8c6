"""Text fields people will read: refuse characters that hide or disguise what is written.

Names, addresses and notes are shown to patients and clinics. Control characters, the bidi
overrides and isolates of "Trojan Source" (U+202A-U+202E, U+2066-U+2069), and invisible
zero-width characters (U+200B, U+2060, U+FEFF) let a record display as something it is not,
or two records that look identical differ. ZWJ and ZWNJ stay allowed: some scripts need them.
An uploaded file's name is kept as a safe basename; a CSV cell a spreadsheet could run as a
formula, disguised or not, is defused (docs/reliability.md).
"""

from __future__ import annotations

import re
import unicodedata

import marshmallow as ma
from werkzeug.utils import secure_filename

# Written as regex escapes, not the characters: the spec carries them as patterns (below).
_DISGUISING = r"\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff"
# C0 and C1 controls (and DEL); multi-line text may keep tab and line breaks.
_SINGLE_LINE_CLASS = rf"\x00-\x1f\x7f-\x9f{_DISGUISING}"
_MULTI_LINE_CLASS = rf"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_DISGUISING}"
_SINGLE_LINE_BAD = re.compile(f"[{_SINGLE_LINE_CLASS}]")
_MULTI_LINE_BAD = re.compile(f"[{_MULTI_LINE_CLASS}]")


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` is refused, or None; the reason names the character by code point."""
    found = (_MULTI_LINE_BAD if multiline else _SINGLE_LINE_BAD).search(value)
    if found is None:
        return None
    return (
        f"contains U+{ord(found.group()):04X} (control, bidi override or invisible characters "
        "are not accepted)"
    )


class PlainText:
    """A marshmallow validator: ``validate=[Length(...), PlainText()]``."""

    def __init__(self, *, multiline: bool = False) -> None:
        self.multiline = multiline
        # What the spec says (apispec documents a validator's ``regex`` as ``pattern``): no
        # refused character, and at least one that is not white space.
        refused = _MULTI_LINE_CLASS if multiline else _SINGLE_LINE_CLASS
        self.regex = re.compile(rf"^[^{refused}]*[^\s{refused}][^{refused}]*$")

    def __call__(self, value: str) -> str:
        reason = text_problem(value, multiline=self.multiline)
        if reason is not None:
            raise ma.ValidationError(reason)
        if not value.strip():
            raise ma.ValidationError("must not be blank")
        return value


# ---- file names ---------------------------------------------------------------------------


def safe_file_name(name: str | None) -> str | None:
    """An uploaded file's name as it may be stored and shown: werkzeug's ``secure_filename``
    (a basename of ASCII letters, digits, ``_ . -``); None when nothing safe is left."""
    if not name:
        return None
    return secure_filename(unicodedata.normalize("NFKC", name)) or None


# ---- spreadsheet cells --------------------------------------------------------------------

# Cells a spreadsheet runs as a formula start with one of these (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A plain number is not a formula to a spreadsheet, even with a sign (-97.5, +18005550100).
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def _lead(text: str) -> str:
    """``text`` as a spreadsheet may read its start: NFKC (full-width U+FF1D is =), then white
    space and invisible format characters (zero-width space, BOM) taken off."""
    normal = unicodedata.normalize("NFKC", text)
    start = 0
    while start < len(normal) and (
        normal[start].isspace() or unicodedata.category(normal[start]) == "Cf"
    ):
        start += 1
    return normal[start:]


def starts_like_formula(text: str) -> bool:
    """True when a spreadsheet could run ``text`` as a formula (see docs/reliability.md)."""
    if _PLAIN_NUMBER.fullmatch(text):
        return False
    return text.startswith(FORMULA_PREFIXES) or _lead(text).startswith(FORMULA_PREFIXES)


def defuse(text: str) -> str:
    """A CSV cell a spreadsheet would run as a formula gets a leading "'"."""
    return "'" + text if starts_like_formula(text) else text
