"""Nearest search and fact filters over a snapshot (snapshot.py), with compiled libraries.

What a filter can ask of a location (its clinic's specialty evidence as bits, its facts, a
phone on record) is kept per row as arrays (``Facets``); a filter is judged over all rows at
once with numpy (``Verdicts``) and kept for the next query asking the same, with its per-point
mask. The placed locations are unit vectors in a k-d tree (pykdtree, compiled): a query takes
the k nearest passing points by chord, measures them exactly (pyproj's geodesic), and asks
again only for points whose chord still allows a shorter geodesic than the k-th
(docs/nearest.md, "Exact").
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from referral.directory.facts import SPECIALTY, FactFilter
from referral.directory.hours import is_open
from referral.directory.snapshot import Snapshot
from referral.geo.distance import (
    chord_surely_within,
    chord_within,
    geodesic_km_many,
    lower_km,
    unit_vectors,
)

# pykdtree parallelises one query over OpenMP threads: for the few points of one request that
# costs far more than it gains, and a worker's request threads are parallel already. Set
# before the OpenMP runtime loads (an operator's own setting wins).
os.environ.setdefault("OMP_NUM_THREADS", "1")
from pykdtree.kdtree import KDTree

# What a location may be unknown for, as bits.
BITS = {SPECIALTY: 1, "open_now": 2, "accepting_new_patients": 4, "telehealth": 8, "language": 16}
# Candidates asked of the tree beyond the k wanted: enough, nearly always, to see that no
# farther chord can hide a shorter geodesic (the bound is 1% wide).
_SPARE = 4
# Past this many candidates the exact shell is measured from all passing points at once.
_MAX_TREE_K = 512
# Fewer candidates than this are measured as they are; more, each distinct point once.
_MEASURED_AT_ONCE = 256
# Filters whose verdicts (and per-point masks) are kept per snapshot.
_KEPT = 32


@dataclass
class Facets:
    """Per location row of one snapshot, what a filter can ask of it, as arrays; and the
    verdicts of recent filters (a filter's verdict is the same for every query asking it)."""

    alive: NDArray[np.bool_]
    offered: NDArray[np.uint64]  # bit per specialty code on record as offered (the clinic's)
    lacking: NDArray[np.uint64]  # ... on record as not offered
    accepting: NDArray[np.int8]  # -1 unknown, 0 no, 1 yes
    telehealth: NDArray[np.int8]
    language: NDArray[np.int32]  # pool code of the languages
    profile: NDArray[np.int64]  # opening hours and time zone, as an index into profiles
    phone: NDArray[np.bool_]
    codes: dict[str, int]  # specialty code -> bit
    profiles: list[tuple[Any, Any, str | None]]
    languages: list[Any]
    _verdicts: OrderedDict[Hashable, Verdicts] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open_states(self, when: datetime) -> NDArray[np.int8]:
        """Per hours profile: 1 open, 0 closed, -1 unknown, at ``when``."""
        return np.fromiter(
            (_open_code(*profile, when) for profile in self.profiles),
            dtype=np.int8,
            count=len(self.profiles),
        )

    def cached(self, key: Hashable, make: Callable[[], Verdicts]) -> Verdicts:
        with self._lock:
            found = self._verdicts.get(key)
            if found is not None:
                self._verdicts.move_to_end(key)
                return found
        made = make()
        with self._lock:
            self._verdicts[key] = made
            while len(self._verdicts) > _KEPT:
                self._verdicts.popitem(last=False)
        return made


def _open_code(schedule: Any, exceptions: Any, zone: str | None, when: datetime) -> int:
    try:
        state = is_open(schedule, exceptions, zone, when)
    except (ValueError, TypeError, AttributeError):
        state = None  # hours validation keeps these out; unknown rather than an error
    return -1 if state is None else int(state)


def facets(snapshot: Snapshot) -> Facets:
    found = snapshot.derived.get("facets")
    if found is None:
        found = snapshot.derived["facets"] = _facets(snapshot)
    assert isinstance(found, Facets)
    return found


def _facets(snapshot: Snapshot) -> Facets:
    clinics, locations = snapshot.clinics, snapshot.locations
    clinic = locations.clinic
    pairs = np.stack((locations.hours.codes, locations.time_zone.codes), axis=1)
    distinct, profile = (
        np.unique(pairs, axis=0, return_inverse=True)
        if len(pairs)
        else (np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64))
    )
    hours, zones = locations.hours.values, locations.time_zone.values
    return Facets(
        alive=locations.alive,
        offered=clinics.evidence.offered[clinic],
        lacking=clinics.evidence.lacking[clinic],
        accepting=locations.accepting_new_patients,
        telehealth=locations.telehealth,
        language=locations.languages.codes,
        profile=profile.reshape(-1),
        phone=clinics.phone.present()[clinic],
        codes={code: bit for bit, code in enumerate(clinics.evidence.codes)},
        profiles=[(*hours[h], zones[z]) for h, z in distinct],
        languages=list(locations.languages.values),
    )


@dataclass(frozen=True)
class Verdicts:
    """Per location row, for one filter: whether it fails outright, and what it is unknown
    for (bits); what passes then depends on what the query allows to be unknown."""

    fail: NDArray[np.bool_]
    unknown: NDArray[np.uint8]

    def blocked(self, allowed: int) -> NDArray[np.uint8]:
        return np.where(self.fail, 0, self.unknown & ~np.uint8(allowed)).astype(np.uint8)

    def passes(self, allowed: int) -> NDArray[np.bool_]:
        return ~self.fail & ((self.unknown & ~np.uint8(allowed)) == 0)


def allowed_bits(facts: FactFilter) -> int:
    allowed = 0
    for name in facts.allow_unknown:
        allowed |= BITS.get(name, 0)
    return allowed


def filter_key(specialties: Sequence[str], facts: FactFilter) -> Hashable:
    """What decides a filter's verdicts (opening hours: to the minute)."""
    minute = None if facts.open_at is None else int(facts.open_at.timestamp()) // 60
    return (
        tuple(sorted(set(specialties))),
        facts.contactable,
        minute,
        facts.accepting_new_patients,
        facts.telehealth,
        facts.language,
    )


def judge(found: Facets, specialties: Sequence[str], facts: FactFilter) -> Verdicts:
    """The same rules as a row's verdict (specialty_fit, FactFilter.unknowns), over every
    location row at once; kept for the next query with the same filter."""
    return found.cached(filter_key(specialties, facts), lambda: _judge(found, specialties, facts))


def _judge(found: Facets, specialties: Sequence[str], facts: FactFilter) -> Verdicts:
    size = len(found.alive)
    fail = ~found.alive
    unknown = np.zeros(size, dtype=np.uint8)
    wanted = set(specialties)
    if wanted:
        known = [found.codes[code] for code in wanted if code in found.codes]
        mask = np.uint64(sum(1 << bit for bit in known))
        fail = fail | ((found.lacking & mask) != 0)
        confirmed = (
            (found.offered & mask) == mask if len(known) == len(wanted) else np.zeros(size, bool)
        )
        unknown |= np.where(confirmed, 0, BITS[SPECIALTY]).astype(np.uint8)
    if facts.contactable is not None:
        fail = fail | (found.phone != facts.contactable)
    if facts.open_at is not None:
        state = found.open_states(facts.open_at)[found.profile]
        fail = fail | (state == 0)
        unknown |= np.where(state < 0, BITS["open_now"], 0).astype(np.uint8)
    for name, column in (
        ("accepting_new_patients", found.accepting),
        ("telehealth", found.telehealth),
    ):
        wanted_fact = getattr(facts, name)
        if wanted_fact is not None:
            fail = fail | ((column >= 0) & (column != int(wanted_fact)))
            unknown |= np.where(column < 0, BITS[name], 0).astype(np.uint8)
    if facts.language is not None:
        per_value = np.array(
            [-1 if value is None else int(facts.language in value) for value in found.languages],
            dtype=np.int8,
        )
        state = per_value[found.language] if len(per_value) else np.zeros(size, np.int8)
        fail = fail | (state == 0)
        unknown |= np.where(state < 0, BITS["language"], 0).astype(np.uint8)
    return Verdicts(fail, unknown)


def names_of(bits: int) -> tuple[str, ...]:
    """The names of unknown bits, in the order a row's verdict lists them."""
    return tuple(name for name, bit in BITS.items() if bits & bit)


# ---- the placed locations ------------------------------------------------------------------


@dataclass(frozen=True)
class PointFilter:
    """One filter over the placed points: which to skip, how many pass, and the unknown
    bits that left the others out (for excluded_unknown), with their points' vectors."""

    skip: NDArray[np.bool_]
    passing: int
    unknown: NDArray[np.uint8]  # per point, the filter's unknown bits
    blocked_points: NDArray[np.int64]
    blocked_bits: NDArray[np.uint8]
    blocked_xyz: NDArray[np.float64]
    everywhere: dict[str, int]  # excluded_unknown without a radius


@dataclass
class Spatial:
    """The alive, placed locations of one snapshot in a k-d tree of unit vectors."""

    rows: NDArray[np.int64]  # location row of each point
    ids: NDArray[np.int64]
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    xyz: NDArray[np.float64]
    tree: KDTree | None
    _filters: OrderedDict[Hashable, PointFilter] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return len(self.rows)

    def filtered(self, key: Hashable, verdicts: Verdicts, allowed: int) -> PointFilter:
        """The filter's points, kept per filter: a repeated filter costs a lookup."""
        key = (key, allowed)
        with self._lock:
            found = self._filters.get(key)
            if found is not None:
                self._filters.move_to_end(key)
                return found
        fail, unknown = verdicts.fail[self.rows], verdicts.unknown[self.rows]
        blocked = np.where(fail, 0, unknown & ~np.uint8(allowed)).astype(np.uint8)
        skip = fail | (blocked != 0)
        points = np.flatnonzero(blocked)
        made = PointFilter(
            everywhere=_counts(blocked[points]),
            skip=skip,
            passing=int(self.size - np.count_nonzero(skip)),
            unknown=unknown,
            blocked_points=points,
            blocked_bits=blocked[points],
            blocked_xyz=self.xyz[points],
        )
        with self._lock:
            self._filters[key] = made
            while len(self._filters) > _KEPT:
                self._filters.popitem(last=False)
        return made


def spatial(snapshot: Snapshot) -> Spatial:
    found = snapshot.derived.get("spatial")
    if found is None:
        found = snapshot.derived["spatial"] = _spatial(snapshot)
    assert isinstance(found, Spatial)
    return found


def _spatial(snapshot: Snapshot) -> Spatial:
    locations = snapshot.locations
    rows = np.flatnonzero(locations.alive & np.isfinite(locations.lat) & np.isfinite(locations.lon))
    lat, lon = locations.lat[rows], locations.lon[rows]
    xyz = unit_vectors(lat, lon)
    return Spatial(
        rows=rows,
        ids=locations.id[rows],
        lat=lat,
        lon=lon,
        xyz=xyz,
        tree=KDTree(xyz, leafsize=16) if len(rows) else None,
    )


@dataclass(frozen=True)
class Found:
    # (km, location row, unknown bits) nearest first, ties to the lower location id.
    hits: list[tuple[float, int, int]]
    outside: tuple[float, int, int] | None
    excluded_unknown: dict[str, int]


def nearest(
    snapshot: Snapshot,
    lat: float,
    lon: float,
    *,
    specialties: Sequence[str] = (),
    radius_km: float | None = None,
    limit: int = 5,
    facts: FactFilter,
    explain: bool = True,
) -> Found:
    space = spatial(snapshot)
    verdicts = judge(facets(snapshot), specialties, facts)
    points = space.filtered(filter_key(specialties, facts), verdicts, allowed_bits(facts))
    q = _unit(lat, lon)
    hits = _best(space, q, points.skip, points.passing, lat, lon, limit, radius_km)
    outside = None
    excluded: dict[str, int] = {}
    if explain:
        if not hits and radius_km is not None:
            anywhere = _best(space, q, points.skip, points.passing, lat, lon, 1, None)
            outside = anywhere[0] if anywhere else None
        if specialties or facts.active:
            excluded = _excluded(space, points, q, lat, lon, radius_km)
    unknown = verdicts.unknown

    def tagged(hit: tuple[float, int]) -> tuple[float, int, int]:
        return hit[0], hit[1], int(unknown[hit[1]])

    return Found([tagged(hit) for hit in hits], tagged(outside) if outside else None, excluded)


def _unit(lat: float, lon: float) -> NDArray[np.float64]:
    phi, lam = math.radians(lat), math.radians(lon)
    cos_phi = math.cos(phi)
    return np.array([[cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi)]])


def _query(
    space: Spatial, q: NDArray[np.float64], k: int, bound: float | None, skip: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    assert space.tree is not None
    k = min(k, space.size)
    options: dict[str, Any] = {"mask": skip}
    if bound is not None:
        # The tree keeps distances below its bound: widen it by a hair, never narrow it.
        options["distance_upper_bound"] = bound * (1 + 1e-9) + 1e-15
    distances, points = space.tree.query(q, k=k, **options)
    distances, points = distances.reshape(-1), points.reshape(-1).astype(np.int64)
    found = points < space.size
    return distances[found], points[found]


def _best(
    space: Spatial,
    q: NDArray[np.float64],
    skip: NDArray[np.bool_],
    passing: int,
    lat: float,
    lon: float,
    limit: int,
    radius_km: float | None,
) -> list[tuple[float, int]]:
    """The ``limit`` passing points nearest by geodesic (within the radius), as (km, row)."""
    if limit <= 0 or passing == 0 or space.tree is None:
        return []
    bound = chord_within(radius_km) if radius_km is not None else None
    asked = min(passing, limit + _SPARE)
    chords, points = _query(space, q, asked, bound, skip)
    km = _measure(space, lat, lon, points)
    # Unless every passing point (within the radius) came back, a point not returned has a
    # chord at least the last one's: only if that still allows a geodesic as short as the
    # k-th must more be measured.
    if len(points) == asked < passing:
        kth = float(np.sort(km)[limit - 1])
        if lower_km(chords[-1]) <= kth:
            points, km = _shell(space, q, skip, lat, lon, points, km, kth, bound, passing)
    order = np.lexsort((space.ids[points], km))
    best = [
        (float(km[i]), int(space.rows[points[i]]))
        for i in order
        if radius_km is None or km[i] <= radius_km
    ]
    return best[:limit]


def _shell(
    space: Spatial,
    q: NDArray[np.float64],
    skip: NDArray[np.bool_],
    lat: float,
    lon: float,
    points: NDArray[np.int64],
    km: NDArray[np.float64],
    kth: float,
    bound: float | None,
    passing: int,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Every passing point whose chord allows a geodesic up to ``kth``, measured."""
    reach = chord_within(kth)
    if bound is not None:
        reach = min(reach, bound)
    asked = min(passing, max(4 * len(points), 64))
    while asked <= _MAX_TREE_K:
        chords, found = _query(space, q, asked, reach, skip)
        if len(found) < asked or asked >= passing:
            break
        asked *= 4
    else:
        # Very many points within 1% of the k-th distance (a dense cluster, duplicates):
        # measure the shell from all passing points at once, bounded by the directory's size.
        candidates = np.flatnonzero(~skip)
        chords = np.linalg.norm(space.xyz[candidates] - q, axis=1)
        found = candidates[chords <= reach * (1 + 1e-9) + 1e-15]
    new = np.setdiff1d(found, points, assume_unique=False)
    if len(new) == 0:
        return points, km
    extra = _measure(space, lat, lon, new)
    return np.concatenate((points, new)), np.concatenate((km, extra))


def _measure(
    space: Spatial, lat: float, lon: float, points: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Geodesics to ``points``, each distinct coordinate measured once (duplicates are
    common: clinics placed at a ZIP's or a city's centre)."""
    if len(points) <= _MEASURED_AT_ONCE:
        return geodesic_km_many(lat, lon, space.lat[points], space.lon[points])
    coordinates = np.stack((space.lat[points], space.lon[points]), axis=1)
    distinct, back = np.unique(coordinates, axis=0, return_inverse=True)
    measured = geodesic_km_many(lat, lon, distinct[:, 0], distinct[:, 1])
    return measured[back.reshape(-1)]


def _excluded(
    space: Spatial,
    points: PointFilter,
    q: NDArray[np.float64],
    lat: float,
    lon: float,
    radius_km: float | None,
) -> dict[str, int]:
    """Per name, how many placed locations (within the radius, if any) were left out for
    being unknown for it."""
    if radius_km is None:
        return points.everywhere
    bits = points.blocked_bits
    if len(bits):
        # Surely in or surely out by the chord's bounds (a dot product per point left out);
        # the thin shell between them measured exactly.
        # Squared chords (not 2 - 2 cos, which loses what a short distance is made of).
        chords2 = np.square(points.blocked_xyz - q).sum(axis=1)
        inside = chords2 <= chord_surely_within(radius_km) ** 2
        maybe = chords2 <= chord_within(radius_km) ** 2
        shell = np.flatnonzero(maybe & ~inside)
        if len(shell):
            measured = _measure(space, lat, lon, points.blocked_points[shell])
            inside[shell] = measured <= radius_km
        bits = bits[inside]
    return _counts(bits)


def _counts(bits: NDArray[np.uint8]) -> dict[str, int]:
    counts = {name: int(np.count_nonzero(bits & bit)) for name, bit in BITS.items()}
    return {name: count for name, count in counts.items() if count}


__all__ = [
    "BITS",
    "Facets",
    "Found",
    "Spatial",
    "Verdicts",
    "allowed_bits",
    "facets",
    "filter_key",
    "judge",
    "names_of",
    "nearest",
    "spatial",
]
