"""Filters on location facts that may be unknown: open now, accepting new patients,
telehealth, language. An unknown fact never matches, unless the filter allows it, and is
counted so answers can say so."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from referral.directory.hours import is_open


class HasFacts(Protocol):
    """A location, as an ORM row or a record (referral/directory/records.py)."""

    @property
    def opening_hours(self) -> dict[str, Any] | None: ...
    @property
    def hours_exceptions(self) -> list[dict[str, Any]] | None: ...
    @property
    def time_zone(self) -> str | None: ...
    @property
    def accepting_new_patients(self) -> bool | None: ...
    @property
    def telehealth(self) -> bool | None: ...
    @property
    def languages(self) -> list[str] | None: ...


@dataclass(frozen=True)
class FactFilter:
    """Filters on facts that may be unknown: an unknown never matches, and is counted."""

    open_at: datetime | None = None
    accepting_new_patients: bool | None = None
    telehealth: bool | None = None
    language: str | None = None
    # Whether the clinic has a phone on record (referral matching ranks those first).
    contactable: bool | None = None
    # Names (a filter's, or SPECIALTY) whose "unknown" passes: the location is then a
    # possible match rather than left out. Matching takes a clinic not known to refuse new
    # patients, and not known to lack a specialty.
    allow_unknown: frozenset[str] = frozenset()

    def blocked(self, unknown: Iterable[str]) -> list[str]:
        """Of the names a location is unknown for, those that leave it out."""
        return [name for name in unknown if name not in self.allow_unknown]

    def unknowns(self, location: HasFacts) -> list[str] | None:
        """None when the location fails a known fact; else the filters it is unknown for
        (an empty list: it matches)."""
        unknown = []
        if self.open_at is not None:
            open_now = is_open(
                location.opening_hours, location.hours_exceptions, location.time_zone, self.open_at
            )
            if open_now is None:
                unknown.append("open_now")
            elif not open_now:
                return None
        for name in ("accepting_new_patients", "telehealth"):
            wanted = getattr(self, name)
            if wanted is not None:
                actual = getattr(location, name)
                if actual is None:
                    unknown.append(name)
                elif actual != wanted:
                    return None
        if self.language is not None:
            if location.languages is None:
                unknown.append("language")
            elif self.language not in location.languages:
                return None
        return unknown

    @property
    def active(self) -> bool:
        return any(
            value is not None
            for value in (
                self.open_at,
                self.accepting_new_patients,
                self.telehealth,
                self.language,
                self.contactable,
            )
        )


# The name under which an unknown specialty is counted and allowed, beside the facts'.
SPECIALTY = "specialty"
NO_FACTS = FactFilter()
