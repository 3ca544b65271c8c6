"""Referral matching: the clinic a clinician would send this patient to, and why.

The rule (docs/matching.md has it in plain words, with worked cases):

1. The reach is ``max_distance`` when the app gives one, else the default for the referral's
   urgency (after red flags raised it): ``MATCH_REACH_<URGENCY>_KM``.
2. Candidates are the active, located locations within reach whose clinic is not on record as
   lacking a needed specialty and not on record as refusing new patients.
3. They rank by: a phone on record first (someone can be reached); then by distance, where a
   possible match (some needed specialty not on record) counts as farther than it is,
   ``max(d + MATCH_CONFIRMED_DETOUR_KM, d * MATCH_CONFIRMED_DETOUR_RATIO)``, so a confirmed
   match wins unless it is much farther; then the lower location id.
4. The patient's preferred clinic comes first when one of its locations is within reach.
5. Nothing within reach: no match; the best candidates beyond reach are listed instead (by the
   same distance rule, phone or not: distance matters most out there) and the referral waits
   for a person to route it.

Every distance is measured from the origin as stored (coarsened), so no answer locates the
patient more precisely than the database does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from referral.config import default_settings
from referral.directory.evidence import Fit, SpecialtyFit, specialty_fit
from referral.directory.facts import SPECIALTY, FactFilter
from referral.directory.listing import find_clinic
from referral.directory.nearest import NearestHit, find_nearest
from referral.directory.readmodel import current_snapshot
from referral.geo.distance import geodesic_km, km_to_miles
from referral.referrals.models import Urgency

ALTERNATIVES = 3
ACCEPTING = "accepting_new_patients"
# Either way ("not known to refuse new patients"), confirmed only or possible too.
_CONFIRMED_ONLY = frozenset({ACCEPTING})
_POSSIBLE_TOO = frozenset({ACCEPTING, SPECIALTY})


class MatchInputError(ValueError):
    """The preferred clinic asked for does not exist (or is inactive)."""


@dataclass(frozen=True)
class MatchRules:
    reach_km: Mapping[Urgency, float]
    detour_km: float
    detour_ratio: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MatchRules:
        return cls(
            reach_km={
                urgency: float(config[f"MATCH_REACH_{urgency.value.upper()}_KM"])
                for urgency in Urgency
            },
            detour_km=float(config["MATCH_CONFIRMED_DETOUR_KM"]),
            detour_ratio=float(config["MATCH_CONFIRMED_DETOUR_RATIO"]),
        )

    def ranked_km(self, distance_km: float, fit: Fit) -> float:
        """The distance a candidate ranks at: a possible match counts as farther."""
        if fit == Fit.CONFIRMED:
            return distance_km
        return max(distance_km + self.detour_km, distance_km * self.detour_ratio)


# The settings' defaults (referral/config.py says why those values).
DEFAULT_RULES = MatchRules.from_config(default_settings(instance_path=""))


@dataclass(frozen=True)
class Reach:
    km: float
    basis: str  # "max_distance" or "urgency"

    @classmethod
    def of(cls, rules: MatchRules, urgency: Urgency, max_distance_km: float | None) -> Reach:
        if max_distance_km is not None:
            return cls(max_distance_km, "max_distance")
        return cls(rules.reach_km[urgency], "urgency")

    def describe(self, urgency: str) -> str:
        size = f"{self.km:.0f} km (about {km_to_miles(self.km):.0f} mi)"
        if self.basis == "max_distance":
            return f"{size}, the max_distance asked for"
        article = "an" if urgency[:1] in "aeiou" else "a"
        return f"{size}, the default reach for {article} {urgency} referral"


@dataclass(frozen=True)
class Candidate:
    hit: NearestHit
    fit: SpecialtyFit
    within_reach: bool
    preferred: bool = False
    assigned_by: str | None = None  # the admin key's name, when a person chose it

    @property
    def contactable(self) -> bool:
        return self.hit.location.clinic.phone is not None

    @property
    def distance_km(self) -> float:
        return self.hit.distance_km

    def reason(self) -> str:
        kind = self.fit.kind
        who = (
            f"assigned by {self.assigned_by}, "
            if self.assigned_by
            else "preferred clinic, "
            if self.preferred
            else ""
        )
        parts = [f"{who}{kind} match"]
        if self.fit.offered:
            parts.append(f"on record as offering {', '.join(self.fit.offered)}")
        if self.fit.unknown:
            parts.append(f"specialties not on record: {', '.join(self.fit.unknown)}")
        if self.fit.lacking:
            parts.append(f"on record as not offering {', '.join(self.fit.lacking)}")
        if not self.contactable:
            parts.append("no phone on record")
        if self.hit.location.accepting_new_patients is False:
            parts.append("on record as not accepting new patients")
        where = "within reach" if self.within_reach else "beyond reach"
        parts.append(f"{distance_text(self.distance_km)} away ({where})")
        return "; ".join(parts)

    def why(self) -> dict[str, Any]:
        """What the answer says of the candidate (stored with the referral as it was)."""
        return {
            "fit": self.fit.kind.value,
            "preferred": self.preferred,
            "assigned_by": self.assigned_by,
            "specialties_unknown": list(self.fit.unknown),
            "specialties_not_offered": list(self.fit.lacking),
            "contactable": self.contactable,
            "accepting_new_patients": self.hit.location.accepting_new_patients,
            "within_reach": self.within_reach,
            "reason": self.reason(),
        }


def distance_text(km: float) -> str:
    return f"{km:.1f} km ({km_to_miles(km):.1f} mi)"


@dataclass(frozen=True)
class Match:
    chosen: Candidate | None  # None: nothing within reach, a person routes it
    alternatives: list[Candidate]
    notes: list[str]
    reach: Reach


def match_referral(
    session: Session,
    lat: float,
    lon: float,
    needed: Sequence[str],
    *,
    urgency: Urgency,
    max_distance_km: float | None,
    preferred_clinic_id: int | None,
    rules: MatchRules = DEFAULT_RULES,
) -> Match:
    """Match a referral from (lat, lon), the stored (coarsened) origin: see the module's rule."""
    reach = Reach.of(rules, urgency, max_distance_km)
    notes = [f"reach: {reach.describe(urgency.value)}"]
    preferred = None
    if preferred_clinic_id is not None:
        preferred, note = _preferred(session, preferred_clinic_id, lat, lon, needed, reach)
        notes.append(note)
    ranked = rank_candidates(
        session, lat, lon, needed, radius_km=reach.km, rules=rules, limit=ALTERNATIVES + 1
    )
    if preferred is not None:
        others = [c for c in ranked if c.hit.location.id != preferred.hit.location.id]
        return Match(preferred, others[:ALTERNATIVES], notes, reach)
    if not ranked:
        beyond = rank_candidates(
            session, lat, lon, needed, radius_km=None, rules=rules, limit=ALTERNATIVES,
            phone_first=False,
        )  # fmt: skip
        notes.append(_nothing_within_reach(needed, beyond))
        return Match(None, beyond, notes, reach)
    chosen = ranked[0]
    notes.append(chosen.reason())
    if chosen.fit.kind == Fit.POSSIBLE:
        notes.append(_why_possible(session, lat, lon, chosen, needed, reach, rules))
    return Match(chosen, ranked[1 : ALTERNATIVES + 1], notes, reach)


def rank_candidates(
    session: Session,
    lat: float,
    lon: float,
    needed: Sequence[str],
    *,
    radius_km: float | None,
    rules: MatchRules,
    limit: int,
    phone_first: bool = True,
) -> list[Candidate]:
    """The ``limit`` best candidates by the rule, within ``radius_km`` (None: anywhere);
    without ``phone_first``, by distance alone (phone or not).

    Bounded work: the best ``limit`` of the whole ranking are among the ``limit`` nearest
    confirmed and the ``limit`` nearest confirmed-or-possible of each phone class (a possible
    match never ranks nearer than it is), and the phone-less class is looked at only when the
    other has fewer than ``limit``. When the ``limit`` nearest confirmed-or-possible are all
    confirmed (or are all there is), they are the ``limit`` nearest confirmed too: that
    search is skipped."""
    found: dict[int, NearestHit] = {}

    def search(contactable: bool | None, allowed: frozenset[str]) -> list[NearestHit]:
        facts = FactFilter(
            accepting_new_patients=True, contactable=contactable, allow_unknown=allowed
        )
        hits = find_nearest(
            session, lat, lon, specialties=needed, radius_km=radius_km, limit=limit,
            facts=facts, explain=False,
        ).hits  # fmt: skip
        for hit in hits:
            found.setdefault(hit.location.id or 0, hit)
        return hits

    for contactable in (True, False) if phone_first else (None,):
        hits = search(contactable, _POSSIBLE_TOO)
        if needed and any(SPECIALTY in hit.unknown for hit in hits):
            search(contactable, _CONFIRMED_ONLY)
        if len(found) >= limit:
            break
    within = radius_km is not None
    candidates = [Candidate(hit, specialty_fit(hit.location.clinic, needed), within)
                  for hit in found.values()]  # fmt: skip
    candidates.sort(
        key=lambda c: (
            phone_first and not c.contactable,
            rules.ranked_km(c.distance_km, c.fit.kind),
            c.hit.location.id or 0,
        )
    )
    return candidates[:limit]


def _preferred(
    session: Session,
    clinic_id: int,
    lat: float,
    lon: float,
    needed: Sequence[str],
    reach: Reach,
) -> tuple[Candidate | None, str]:
    clinic = find_clinic(current_snapshot(session), clinic_id)
    if clinic is None:
        raise MatchInputError(f"no active clinic with id {clinic_id}")
    hits = sorted(
        (
            NearestHit(location, geodesic_km(lat, lon, location.lat, location.lon))
            for location in clinic.locations
            if location.lat is not None and location.lon is not None
        ),
        key=lambda hit: (hit.distance_km, hit.location.id or 0),
    )
    if not hits:
        return None, "the preferred clinic has no located, active location; matched by the rule"
    nearest = hits[0]
    if nearest.distance_km > reach.km:
        return None, (
            f"the preferred clinic is {distance_text(nearest.distance_km)} away, beyond reach; "
            "matched by the rule instead"
        )
    candidate = Candidate(nearest, specialty_fit(clinic, needed), True, preferred=True)
    return (
        candidate,
        f"the patient's preferred clinic is within reach: it comes first ({candidate.reason()})",
    )


def _nothing_within_reach(needed: Sequence[str], beyond: list[Candidate]) -> str:
    what = f"offering or possibly offering {', '.join(needed)} " if needed else ""
    listed = (
        "; the nearest options beyond reach are listed as alternatives"
        if beyond
        else "; no candidate anywhere"
    )
    return (
        f"no clinic {what}within reach that is not known to refuse new patients: stored "
        f"for a person to route{listed}"
    )


def _why_possible(
    session: Session,
    lat: float,
    lon: float,
    chosen: Candidate,
    needed: Sequence[str],
    reach: Reach,
    rules: MatchRules,
) -> str:
    codes = ", ".join(needed)
    facts = FactFilter(accepting_new_patients=True, allow_unknown=_CONFIRMED_ONLY)
    confirmed = find_nearest(
        session, lat, lon, specialties=needed, radius_km=reach.km, limit=1, facts=facts,
        explain=False,
    ).hits  # fmt: skip
    if not confirmed:
        return f"no clinic within reach is on record as offering all of: {codes}"
    best = Candidate(confirmed[0], specialty_fit(confirmed[0].location.clinic, needed), True)
    if best.contactable != chosen.contactable:  # phone first: only a phone-less one can be
        return (
            f"the nearest clinic on record as offering all of {codes} "
            f"({distance_text(best.distance_km)} away) has no phone on record"
        )
    return (
        f"the nearest clinic on record as offering all of {codes} is "
        f"{distance_text(best.distance_km)} away: more than {rules.detour_km:g} km and "
        f"{rules.detour_ratio:g}x farther than this one"
    )


__all__ = [
    "ALTERNATIVES",
    "DEFAULT_RULES",
    "Candidate",
    "Match",
    "MatchInputError",
    "MatchRules",
    "Reach",
    "match_referral",
    "rank_candidates",
]
