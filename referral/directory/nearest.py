"""Nearest search: the one function behind "which clinics are closest to here".

Everything that asks for nearest locations calls ``find_nearest``. Candidates come from a
per-worker in-memory spatial index (referral/directory/spatial_index.py) in increasing
distance, with a proven bound that stops the scan once nothing further can enter the answer;
the rows of the chosen candidates are then read from the database (as plain records, one
Core query: referral/directory/records.py) and checked again, so what is shown is never older
than the database even while the index is.

Freshness: each worker reads the directory's revision (one primary-key row, bumped with every
directory change: referral/directory/revision.py) at most every NEAREST_INDEX_CHECK_SECONDS,
and at once after its own directory commits; a changed revision rebuilds the index in the
request that noticed it while other threads keep answering from the previous one. See
docs/nearest.md for the bound and the costs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from flask import Flask, current_app, has_app_context
from sqlalchemy.engine import Engine
from sqlmodel import Session

from referral.db import get_session
from referral.directory.evidence import specialty_fit
from referral.directory.facts import NO_FACTS, SPECIALTY, FactFilter
from referral.directory.models import Location
from referral.directory.records import LocationRecord, read_locations
from referral.directory.revision import local_generation, read_revision
from referral.directory.spatial_index import DirectoryIndex, NearestSearch, load_index
from referral.geo.distance import geodesic_km, km_to_miles

log = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class NearestHit:
    # find_nearest's hits hold records; callers ranking ORM rows of their own may use those.
    location: LocationRecord | Location
    distance_km: float
    # What the hit is unknown for among what was asked (SPECIALTY, fact names): it passed
    # because the search allowed those unknowns (FactFilter.allow_unknown).
    unknown: tuple[str, ...] = ()

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
    explain: bool = True,
) -> NearestResult:
    """The ``limit`` active locations nearest to (lat, lon) by geodesic distance, of clinics
    offering every one of ``specialties`` (or not known to lack any, when ``facts`` allows an
    unknown SPECIALTY), within ``radius_km`` if given, passing ``facts``. Ties go to the lower
    location id, so answers are stable. Without ``explain``, neither ``excluded_unknown`` nor
    ``nearest_outside_radius`` is looked for (matching asks for neither)."""
    index = current_index(session)
    search = NearestSearch(
        index, lat, lon, specialties=specialties, radius_km=radius_km, facts=facts
    )
    hits = _verified(session, search, limit, specialties, facts)
    outside = None
    if not explain:
        return NearestResult(hits=hits, nearest_outside_radius=None)
    if not hits and radius_km is not None:
        anywhere = NearestSearch(
            index, lat, lon, specialties=specialties, facts=facts, judge=search.judge
        )
        found = _verified(session, anywhere, 1, specialties, facts)
        outside = found[0] if found else None
    return NearestResult(
        hits=hits, nearest_outside_radius=outside, excluded_unknown=search.excluded_unknown()
    )


def _verified(
    session: Session,
    search: NearestSearch,
    limit: int,
    specialties: Sequence[str],
    facts: FactFilter,
) -> list[NearestHit]:
    """The search's best, each checked against its row as it is now: a row that no longer
    matches (deactivated, lost a specialty, a fact changed) is dropped and the search goes on
    past it; one that moved gets its distance from where it is now."""
    required = tuple(dict.fromkeys(specialties))
    index = search.index
    checked: dict[int, NearestHit] = {}
    while True:
        best = search.best(limit)
        unread = [location_id for _, location_id, _ in best if location_id not in checked]
        if not unread:
            break
        rows = read_locations(session.connection(), unread)
        for km, location_id, point in best:
            if location_id in checked:
                continue
            row = rows.get(location_id)
            hit = None
            verdict = None if row is None else row_verdict(row, required, facts)
            if row is not None and verdict is not None and not facts.blocked(verdict):
                assert row.lat is not None and row.lon is not None
                if (row.lat, row.lon) != (index.lat[point], index.lon[point]):
                    km = geodesic_km(search.lat, search.lon, row.lat, row.lon)
                if search.radius_km is None or km <= search.radius_km:
                    hit = NearestHit(row, km, verdict)
            if hit is None:
                search.drop(location_id)
            else:
                checked[location_id] = hit
    hits = [checked[location_id] for _, location_id, _ in best]
    hits.sort(key=lambda hit: (hit.distance_km, hit.location.id or 0))
    return hits


def row_verdict(
    location: LocationRecord | Location, required: Sequence[str], facts: FactFilter
) -> tuple[str, ...] | None:
    """The index's Judge.verdict for one row as it is now: None when it fails, else what it
    is unknown for (SPECIALTY first, then the facts)."""
    clinic = location.clinic
    if not (location.active and clinic.active) or location.lat is None or location.lon is None:
        return None
    fit = specialty_fit(clinic, required)
    if fit.lacking:
        return None
    # A clinic fact, so not among FactFilter.unknowns' location facts.
    if facts.contactable is not None and (clinic.phone is not None) != facts.contactable:
        return None
    unknown = facts.unknowns(location) if facts.active else []
    if unknown is None:
        return None
    return ((SPECIALTY,) if fit.unknown else ()) + tuple(unknown)


# ---- one index per database per worker -----------------------------------------------------


class IndexHolder:
    """The current index of one database in this process, and when it was last checked."""

    def __init__(self) -> None:
        self.index: DirectoryIndex | None = None
        self._checked_at = -math.inf
        self._generation = -1
        self._build_lock = threading.Lock()

    def current(self, session: Session, engine: Engine, check_seconds: float) -> DirectoryIndex:
        index = self.index
        now = time.monotonic()
        generation = local_generation()
        if (
            index is not None
            and generation == self._generation
            and now - self._checked_at < check_seconds
        ):
            return index
        # Noted before reading: a commit after this point changes the generation again.
        self._checked_at, self._generation = now, generation
        revision = read_revision(session)
        if index is not None and index.revision == revision:
            return index
        if index is not None and not self._build_lock.acquire(blocking=False):
            return index  # another thread is rebuilding: answer from the previous revision
        if index is None:
            self._build_lock.acquire()  # nothing to answer from yet: wait for the first build
        try:
            built = self.index
            # Another thread may have rebuilt meanwhile (as new as this revision, or newer);
            # the index judged stale here is rebuilt even if its revision is higher (a
            # database restored from a backup counts from an older number).
            if built is None or built is index or built.revision < revision:
                built = self.index = _build(engine)
            return built
        finally:
            self._build_lock.release()


def _build(engine: Engine) -> DirectoryIndex:
    with engine.connect() as connection:
        index = load_index(connection)
    log.info(
        "nearest index: revision %d, %d locations, %.1f MB, built in %.2f s",
        index.revision,
        index.size,
        index.nbytes() / 1e6,
        index.build_seconds,
    )
    return index


_holders: weakref.WeakKeyDictionary[Engine, IndexHolder] = weakref.WeakKeyDictionary()
_holders_lock = threading.Lock()


def _holder(engine: Engine) -> IndexHolder:
    with _holders_lock:
        holder = _holders.get(engine)
        if holder is None:
            holder = _holders[engine] = IndexHolder()
        return holder


def _check_seconds() -> float:
    if has_app_context():
        return float(current_app.config.get("NEAREST_INDEX_CHECK_SECONDS", DEFAULT_CHECK_SECONDS))
    return DEFAULT_CHECK_SECONDS


def current_index(session: Session) -> DirectoryIndex:
    """This worker's index of the session's database, checked and rebuilt as needed."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    return _holder(engine).current(session, engine, _check_seconds())


def warm_index(app: Flask) -> None:
    """Build this process's index now, e.g. from gunicorn's post_worker_init, so that no
    query waits for the first build (about as long as a rebuild: docs/nearest.md)."""
    with app.app_context():
        current_index(get_session())


__all__ = [
    "IndexHolder",
    "NearestHit",
    "NearestResult",
    "current_index",
    "find_nearest",
    "row_verdict",
    "warm_index",
]
