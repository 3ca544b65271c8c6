"""Fields whose OpenAPI description says exactly what the service accepts and returns.

The contract test (tests/test_contract.py) fuzzes the service against openapi.yaml: a request
the spec allows must be accepted, one it forbids refused, and every answer must match it. So
rules the service checks are also written into the spec here, from the same code:

- ``UtcDateTime``: timestamps are always dumped with their offset (RFC 3339 ``date-time``);
  SQLite hands them back naive, and every one stored is UTC.
- ``VocabularyCode``: a specialty, concern or red-flag code; the spec lists the codes of the
  seeded vocabulary (``seed_data/``) as an ``enum``, filled in by ``vocabulary_enum``.
- ``exclusive_bounds``: ``Range(min_inclusive=False)`` as ``exclusiveMinimum`` (apispec
  writes only ``minimum``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import marshmallow as ma
from marshmallow import validate

from referral.timeutil import as_utc

VOCABULARIES = ("specialties", "concerns", "red_flags")


class UtcDateTime(ma.fields.AwareDateTime):
    """An aware timestamp: naive values (SQLite's) are UTC and dumped with ``+00:00``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=None, **kwargs)

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return super()._serialize(None if value is None else as_utc(value), attr, obj, **kwargs)


class VocabularyCode(ma.fields.String):
    """A code from a seeded vocabulary: ``specialties``, ``concerns`` or ``red_flags``.

    The service checks codes against its tables (422 for an unknown one); the spec lists the
    seeded codes as an enum, so a client (and the fuzzer) can know them in advance.
    """

    def __init__(self, vocabulary: str, **kwargs: Any) -> None:
        if vocabulary not in VOCABULARIES:
            raise ValueError(f"unknown vocabulary {vocabulary!r}")
        self.vocabulary = vocabulary
        kwargs.setdefault("validate", validate.Length(min=1, max=40))
        super().__init__(**kwargs)


def load_vocabularies(seed_dir: Path) -> dict[str, list[str]]:
    """The seeded codes per vocabulary; an empty dict when the seed files are not there."""
    try:
        specialties = json.loads((seed_dir / "specialties.json").read_text(encoding="utf-8"))
        concerns = json.loads((seed_dir / "concerns.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {
        "specialties": sorted(item["code"] for item in specialties),
        "concerns": sorted(item["code"] for item in concerns["concerns"]),
        "red_flags": sorted(item["code"] for item in concerns["red_flags"]),
    }


AttributeFunction = Callable[..., dict[str, Any]]


def enum_from_vocabularies(codes: Mapping[str, list[str]]) -> AttributeFunction:
    """An apispec attribute function: ``enum`` for VocabularyCode fields."""

    def vocabulary_enum(_converter: Any, field: ma.fields.Field, ret: dict[str, Any]) -> Any:
        if isinstance(field, VocabularyCode) and codes.get(field.vocabulary):
            return {"enum": list(codes[field.vocabulary])}
        return {}

    return vocabulary_enum


def spec_overrides(_converter: Any, field: ma.fields.Field, ret: dict[str, Any]) -> Any:
    """``metadata={"openapi": {...}}`` states rules apispec cannot derive (the structure of a
    free-form Dict, say); applied last, over what apispec made of the field."""
    return copy.deepcopy(field.metadata.get("openapi", {}))


def fresh_copies(_converter: Any, field: ma.fields.Field, ret: dict[str, Any]) -> Any:
    """Each property its own copy of what came from shared metadata (an inherited field is
    converted once per schema), so the YAML spec has no anchors and aliases."""
    return {key: copy.deepcopy(value) for key, value in ret.items() if isinstance(value, dict)}


def exclusive_bounds(_converter: Any, field: ma.fields.Field, ret: dict[str, Any]) -> Any:
    """OpenAPI 3.0's boolean ``exclusiveMinimum``/``exclusiveMaximum`` for open ranges."""
    found: dict[str, Any] = {}
    for validator in field.validators:
        if not isinstance(validator, validate.Range):
            continue
        if validator.min is not None and not validator.min_inclusive and "minimum" in ret:
            found["exclusiveMinimum"] = True
        if validator.max is not None and not validator.max_inclusive and "maximum" in ret:
            found["exclusiveMaximum"] = True
    return found


class Pattern(validate.Regexp):
    """``validate.Regexp`` for a pattern written so that Python and ECMA (the spec's regex
    dialect) read it alike: ``^...$``, matched whole (Python's ``$`` alone would let a trailing
    newline through, and ECMA has no ``\\Z``)."""

    def __call__(self, value: Any) -> Any:
        regex = cast("re.Pattern[str]", self.regex)
        if not isinstance(value, str) or regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


class StrictFloat(ma.fields.Float):
    """A JSON number, not text or a boolean ("1.5" and true are refused as the spec says);
    ``strict=False`` reads text too (CSV cells, query strings)."""

    def __init__(self, *, strict: bool = True, **kwargs: Any) -> None:
        self.strict = strict
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if self.strict and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(ma.fields.Boolean):
    """A JSON true or false, not 0, 1 or "yes" (marshmallow's Boolean takes those)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value
