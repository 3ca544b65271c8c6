"""The assessment a referral may carry: a small JSON summary without identifying data.

Key names are compared by their skeleton (what a reader sees), values searched for obvious
identifiers; docs/reliability.md says why this and not an allow-list of fields.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import marshmallow as ma

from referral.web.text import text_problem

# Parts of key names that would carry identity into the assessment summary, matched in the
# key's skeleton (fold_key: NFKC, look-alike letters folded, lowercased, only letters and
# digits kept; so patientName, phone_number, Home-Address, a full-width name and one with
# a Cyrillic a are all caught). See docs/reliability.md.
IDENTIFYING_KEY_PARTS = (
    "name", "mail", "phone", "mobile", "birth", "dob", "address", "street", "ssn", "mrn",
    "insurance", "passport", "license",
)  # fmt: skip
# Letters that look like Latin ones (Unicode's confusables.txt, the Cyrillic, Greek, Armenian
# and Latin-variant letters among them); NFKC already folds full-width and styled letters.
_LOOK_ALIKES = str.maketrans(
    {
        char: latin
        for chars, latin in {
            "\u0430\u0410": "a",
            "\u0432\u0412": "b",
            "\u0441\u0421": "c",
            "\u0501\u0500": "d",
            "\u0435\u0415\u0451\u0401": "e",
            "\u04bb\u04ba\u041d": "h",
            "\u0456\u0406\u0457\u0407": "i",
            "\u0458\u0408": "j",
            "\u04cf": "l",
            "\u043a\u041a": "k",
            "\u043c\u041c": "m",
            "\u043e\u041e": "o",
            "\u0440\u0420": "p",
            "\u051b\u051a": "q",
            "\u0455\u0405": "s",
            "\u0442\u0422": "t",
            "\u0443\u0423\u04af\u04ae": "y",
            "\u0445\u0425": "x",
            "\u051d\u051c": "w",
            "\u044c\u042c": "b",
            "\u043f": "n",
            "\u0491": "r",
            "\u03b1\u0391": "a",
            "\u03b2\u0392": "b",
            "\u03b5\u0395": "e",
            "\u03b6\u0396": "z",
            "\u0397": "h",
            "\u03b7": "n",
            "\u03b9\u0399": "i",
            "\u03ba\u039a": "k",
            "\u03bc\u039c": "m",
            "\u039d": "n",
            "\u03bd": "v",
            "\u03bf\u039f": "o",
            "\u03c1\u03a1": "p",
            "\u03c4\u03a4": "t",
            "\u03c5": "u",
            "\u03a5": "y",
            "\u03c7\u03a7": "x",
            "\u03b3": "y",
            "\u0585": "o",
            "\u057d": "u",
            "\u0570": "h",
            "\u0578": "n",
            "\u0581": "g",
            "\u0566": "q",
            "\u0131": "i",
            "\u0251": "a",
            "\u0261": "g",
            "\u0269": "i",
            "\u029f": "l",
            "\u0237": "j",
        }.items()
        for char in chars
    }
)
# Identifiers in values, matched in the NFKC form (full-width digits and at signs included).
_DASH = r"[-\s.\u2010-\u2015\u2212]"
EMAIL_VALUE = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", re.IGNORECASE)
SSN_VALUE = re.compile(rf"(?<!\d)\d{{3}}{_DASH}?\d{{2}}{_DASH}?\d{{4}}(?!\d)")
# North American numbers (10 digits, optional +1, brackets and separators) and any number
# written with a leading + and 8 to 15 digits.
PHONE_VALUE = re.compile(
    rf"(?<![\d+])(?:\+?1{_DASH}?)?\(?\d{{3}}\)?{_DASH}?\d{{3}}{_DASH}?\d{{4}}(?!\d)"
    rf"|\+\d(?:{_DASH}?\(?\d\)?){{7,14}}(?!\d)"
)
ASSESSMENT_MAX_BYTES = 4096
ASSESSMENT_MAX_DEPTH = 4
_IDENTIFYING = "looks like identifying data"
_SEND_NONE = "send no names, contact details or birth dates"


def fold_key(key: str) -> str:
    """A key's skeleton: what a reader sees, whatever characters spell it."""
    normal = unicodedata.normalize("NFKC", key).translate(_LOOK_ALIKES)
    # Accents off (é is e), then the same again for what lowercasing made.
    bare = "".join(
        char for char in unicodedata.normalize("NFKD", normal) if not unicodedata.combining(char)
    )
    return re.sub(r"[^a-z0-9]", "", bare.casefold().translate(_LOOK_ALIKES))


def value_identifier(text: str) -> str | None:
    """What kind of identifier ``text`` holds (an e-mail address, ...), or None."""
    normal = unicodedata.normalize("NFKC", text)
    if EMAIL_VALUE.search(normal):
        return "an e-mail address"
    if SSN_VALUE.search(normal):
        return "a social security number"
    if PHONE_VALUE.search(normal):
        return "a phone number"
    return None


def check_assessment(value: dict[str, Any]) -> None:
    """Size, depth, key names and values; a problem in a value is named by its path
    (``assessment.answers.0``), one in a key name by the assessment."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > ASSESSMENT_MAX_BYTES:
        raise ma.ValidationError(f"at most {ASSESSMENT_MAX_BYTES} bytes of JSON (got {size})")

    def at(path: str, reason: str) -> ma.ValidationError:
        return ma.ValidationError({path.rstrip("."): [reason]} if path else [reason])

    def walk(node: Any, depth: int, path: str) -> None:
        if depth > ASSESSMENT_MAX_DEPTH:
            raise ma.ValidationError(f"nested deeper than {ASSESSMENT_MAX_DEPTH} levels at {path}")
        if isinstance(node, dict):
            for key, child in node.items():
                key_problem = text_problem(str(key))
                if key_problem:
                    where = f" in {path.rstrip('.')}" if path else ""
                    raise ma.ValidationError(f"a key{where}: {key_problem}")
                folded = fold_key(str(key))
                if any(part in folded for part in IDENTIFYING_KEY_PARTS):
                    reads = "" if str(key).isascii() else f" (it reads '{folded}')"
                    raise ma.ValidationError(f"'{path}{key}' {_IDENTIFYING}{reads}; {_SEND_NONE}")
                walk(child, depth + 1, f"{path}{key}.")
        elif isinstance(node, str) and (kind := value_identifier(node)):
            raise at(path, f"{_IDENTIFYING} ({kind}); {_SEND_NONE}")
        elif isinstance(node, str) and (problem := text_problem(node, multiline=True)):
            raise at(path, problem)
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, depth + 1, f"{path}{index}.")
        elif isinstance(node, float) and (node != node or node in (float("inf"), float("-inf"))):
            raise at(path, "not a finite number")

    walk(value, 1, "")
