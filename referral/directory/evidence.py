"""What the directory knows of a clinic and the specialties a search or referral needs:
offered, known not offered, or unknown (no statement either way). Unknown is never "no"."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from referral.directory.models import ClinicSpecialty


class HasSpecialties(Protocol):
    """A clinic, as an ORM row or a record (referral/directory/records.py)."""

    @property
    def specialty_codes(self) -> Sequence[str]: ...
    @property
    def not_offered_codes(self) -> Sequence[str]: ...


class Fit(StrEnum):
    CONFIRMED = "confirmed"  # on record as offering every needed specialty
    POSSIBLE = "possible"  # none known lacking, some not on record
    LACKING = "lacking"  # on record as not offering one of them


@dataclass(frozen=True)
class SpecialtyFit:
    offered: tuple[str, ...]
    unknown: tuple[str, ...]
    lacking: tuple[str, ...]

    @property
    def kind(self) -> Fit:
        if self.lacking:
            return Fit.LACKING
        return Fit.POSSIBLE if self.unknown else Fit.CONFIRMED


def specialty_fit(clinic: HasSpecialties, needed: Iterable[str]) -> SpecialtyFit:
    """Each needed code, in the order given, as offered, unknown or lacking at ``clinic``."""
    offered = set(clinic.specialty_codes)
    lacking = set(clinic.not_offered_codes)
    codes = list(dict.fromkeys(needed))
    return SpecialtyFit(
        offered=tuple(code for code in codes if code in offered),
        unknown=tuple(code for code in codes if code not in offered and code not in lacking),
        lacking=tuple(code for code in codes if code in lacking),
    )


def evidence_by_clinic(session: Session) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Per clinic id, the codes on record as offered, and those on record as not offered,
    each in code order (one query)."""
    offered: dict[int, list[str]] = {}
    lacking: dict[int, list[str]] = {}
    link = ClinicSpecialty.__table__  # type: ignore[attr-defined]
    for clinic_id, code, is_offered in session.execute(
        select(link.c.clinic_id, link.c.specialty_code, link.c.offered).order_by(
            link.c.clinic_id, link.c.specialty_code
        )
    ):
        (offered if is_offered else lacking).setdefault(clinic_id, []).append(code)
    return offered, lacking


__all__ = ["Fit", "HasSpecialties", "SpecialtyFit", "evidence_by_clinic", "specialty_fit"]
