"""Nearest search: the one function behind "which clinics are closest to here".

Everything that asks for nearest locations calls ``find_nearest``: the public search, the
widget, referral matching. It answers from this worker's read model (readmodel.py: a
snapshot of the active directory, fresh within the documented bound) with the compiled
search in search.py; no database row is read per query. docs/nearest.md has the method, the
proof that the answers are exact, and the freshness bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlmodel import Session

from referral.directory import search
from referral.directory.facts import NO_FACTS, FactFilter
from referral.directory.models import Location
from referral.directory.readmodel import current_snapshot
from referral.directory.records import LocationRecord, location_record
from referral.directory.snapshot import Snapshot
from referral.geo.distance import km_to_miles


class NearestHit:
    """A location and its distance; what it is unknown for among what was asked (SPECIALTY,
    fact names: it passed because the search allowed those unknowns). A hit of the read
    model knows its snapshot row, and makes its record only when one is asked for (matching
    reads records; the public answer is assembled from serialized fragments)."""

    __slots__ = ("_location", "distance_km", "row", "snapshot", "unknown")

    def __init__(
        self,
        location: LocationRecord | Location | None,
        distance_km: float,
        unknown: tuple[str, ...] = (),
        *,
        snapshot: Snapshot | None = None,
        row: int = -1,
    ) -> None:
        self._location = location
        self.distance_km = distance_km
        self.unknown = unknown
        self.snapshot, self.row = snapshot, row

    @property
    def location(self) -> LocationRecord | Location:
        if self._location is None:
            assert self.snapshot is not None
            self._location = location_record(self.snapshot, self.row)
        return self._location

    @property
    def distance_mi(self) -> float:
        return km_to_miles(self.distance_km)


@dataclass(frozen=True)
class NearestResult:
    hits: list[NearestHit]
    # Set only when a radius was given and nothing lay inside it.
    nearest_outside_radius: NearestHit | None
    # Per fact filter (and SPECIALTY), how many otherwise matching locations were left out
    # as unknown.
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
    explain: bool = True,
) -> NearestResult:
    """The ``limit`` active locations nearest to (lat, lon) by geodesic distance, of clinics
    offering every one of ``specialties`` (or not known to lack any, when ``facts`` allows an
    unknown SPECIALTY), within ``radius_km`` if given, passing ``facts``. Ties go to the lower
    location id, so answers are stable. Without ``explain``, neither ``excluded_unknown`` nor
    ``nearest_outside_radius`` is looked for (matching asks for neither)."""
    snapshot = current_snapshot(session)
    found = search.nearest(
        snapshot, lat, lon, specialties=specialties, radius_km=radius_km, limit=limit,
        facts=facts, explain=explain,
    )  # fmt: skip

    def hit(km: float, row: int, bits: int) -> NearestHit:
        return NearestHit(None, km, search.names_of(bits), snapshot=snapshot, row=row)

    return NearestResult(
        hits=[hit(*found_hit) for found_hit in found.hits],
        nearest_outside_radius=hit(*found.outside) if found.outside else None,
        excluded_unknown=found.excluded_unknown,
    )


__all__ = ["NearestHit", "NearestResult", "find_nearest"]
