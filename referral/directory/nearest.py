"""Nearest search: the one function behind "which clinics are closest to here".

Everything that asks for nearest locations calls ``find_nearest``; how candidates are found
(today a bounding-box prefilter in SQL) can change behind it without touching callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import selectinload
from sqlmodel import Session, col, select

from referral.directory.facts import NO_FACTS, FactFilter
from referral.directory.models import Clinic, Location
from referral.directory.service import clinics_with_all_specialties
from referral.geo.distance import bounding_box, geodesic_km, km_to_miles


@dataclass(frozen=True)
class NearestHit:
    location: Location
    distance_km: float

    @property
    def distance_mi(self) -> float:
        return km_to_miles(self.distance_km)


@dataclass(frozen=True)
class NearestResult:
    hits: list[NearestHit]
    # Set only when a radius was given and nothing lay inside it.
    nearest_outside_radius: NearestHit | None
    # Per fact filter, how many otherwise matching locations were left out as unknown.
    excluded_unknown: dict[str, int] = field(default_factory=dict)


def find_nearest(
    session: Session,
    lat: float,
    lon: float,
    *,
    specialties: Sequence[str] = (),
    radius_km: float | None = None,
    limit: int = 5,
    facts: FactFilter = NO_FACTS,
) -> NearestResult:
    """The ``limit`` active locations nearest to (lat, lon) by geodesic distance, of clinics
    having every one of ``specialties``, within ``radius_km`` if given, passing ``facts``.
    Ties go to the lower location id, so answers are stable."""
    excluded: dict[str, int] = {}
    hits = _ranked(session, lat, lon, specialties, radius_km, limit, facts, excluded)
    outside = None
    if not hits and radius_km is not None:
        anywhere = _ranked(session, lat, lon, specialties, None, 1, facts, {})
        outside = anywhere[0] if anywhere else None
    return NearestResult(hits=hits, nearest_outside_radius=outside, excluded_unknown=excluded)


def _ranked(
    session: Session,
    lat: float,
    lon: float,
    specialties: Sequence[str],
    radius_km: float | None,
    limit: int,
    facts: FactFilter,
    excluded: dict[str, int],
) -> list[NearestHit]:
    query = (
        select(Location)
        .join(Clinic, col(Clinic.id) == col(Location.clinic_id))
        .where(
            col(Location.active).is_(True),
            col(Clinic.active).is_(True),
            col(Location.lat).is_not(None),
            col(Location.lon).is_not(None),
        )
        .options(
            selectinload(Location.clinic).selectinload(Clinic.specialty_links)  # type: ignore[arg-type]
        )
    )
    if specialties:
        query = query.where(clinics_with_all_specialties(specialties))
    if radius_km is not None:
        lat_min, lat_max, lon_min, lon_max = bounding_box(lat, lon, radius_km)
        query = query.where(col(Location.lat).between(lat_min, lat_max))
        if lon_min is not None and lon_max is not None:
            query = query.where(col(Location.lon).between(lon_min, lon_max))
    hits = []
    for location in session.exec(query).all():
        assert location.lat is not None and location.lon is not None
        distance = geodesic_km(lat, lon, location.lat, location.lon)
        if radius_km is not None and distance > radius_km:
            continue
        if facts.active:
            unknown = facts.unknowns(location)
            if unknown is None:
                continue
            if unknown:
                for name in unknown:
                    excluded[name] = excluded.get(name, 0) + 1
                continue
        hits.append(NearestHit(location, distance))
    hits.sort(key=lambda hit: (hit.distance_km, hit.location.id or 0))
    return hits[:limit]
