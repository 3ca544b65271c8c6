"""The read model's nearest search against brute force: random directories (clusters,
duplicates, the antimeridian, the poles, sparse specialties, specialties on record as not
offered, unknown facts, clinics without a phone), every filter and allowed unknown, ties by
id; the sphere-to-ellipsoid bound it relies on; pyproj's geodesic against geographiclib's."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referral.directory import search
from referral.directory.facts import NO_FACTS, SPECIALTY, FactFilter
from referral.directory.snapshot import Changes, Snapshot, clinic_columns, location_columns
from referral.geo.distance import (
    MAX_KM_PER_RADIAN,
    MIN_KM_PER_RADIAN,
    chord_within,
    geodesic_km,
    lower_km,
    unit_vectors,
    upper_km,
)

CODES = ("ortho", "spine", "sports", "pelvic", "rare")
LANGUAGES = (None, ["en"], ["en", "es"], ["es", "vi"], [])
ZONES = ("America/Chicago", "America/Los_Angeles", "Pacific/Auckland", "Asia/Kolkata",
         "Asia/Kathmandu", "UTC", "", "Mars/Olympus_Mons")  # fmt: skip
SCHEDULES: tuple[dict[str, Any] | None, ...] = (
    None,
    {},
    {day: [["08:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
    {"sat": [["09:00", "12:00"], ["13:00", "24:00"]], "sun": [["00:00", "24:00"]]},
    {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
)


CHRISTMAS = [{"date": "2026-12-25", "closed": True}]


@dataclass(frozen=True)
class Rec:
    """A location as the brute force sees it (the attributes FactFilter.unknowns reads)."""

    id: int
    lat: float
    lon: float
    specialties: frozenset[str]
    lacking: frozenset[str] = frozenset()  # on record as not offered
    has_phone: bool = True
    accepting_new_patients: bool | None = None
    telehealth: bool | None = None
    languages: list[str] | None = None
    opening_hours: dict[str, Any] | None = None
    hours_exceptions: list[dict[str, Any]] | None = None
    time_zone: str | None = None


@dataclass
class Answer:
    hits: list[tuple[float, int]]
    outside: tuple[float, int] | None
    excluded: dict[str, int] = field(default_factory=dict)


def brute_force(
    recs: list[Rec],
    distances: dict[int, float],
    specialties: frozenset[str],
    radius_km: float | None,
    limit: int,
    facts: FactFilter,
) -> Answer:
    """What find_nearest answers, by looking at every location."""

    def ranked(radius: float | None, count: int, excluded: dict[str, int]) -> list[Any]:
        found = []
        for rec in recs:
            if specialties & rec.lacking:
                continue
            if facts.contactable is not None and rec.has_phone != facts.contactable:
                continue
            km = distances[rec.id]
            if radius is not None and km > radius:
                continue
            unknown = [] if specialties <= rec.specialties else [SPECIALTY]
            if facts.active:
                known = facts.unknowns(rec)  # type: ignore[arg-type]
                if known is None:
                    continue
                unknown += known
            blocked = [name for name in unknown if name not in facts.allow_unknown]
            if blocked:
                for name in blocked:
                    excluded[name] = excluded.get(name, 0) + 1
                continue
            found.append((km, rec.id))
        return sorted(found)[:count]

    excluded: dict[str, int] = {}
    hits = ranked(radius_km, limit, excluded)
    outside = None
    if not hits and radius_km is not None:
        anywhere = ranked(None, 1, {})
        outside = anywhere[0] if anywhere else None
    return Answer(hits, outside, excluded)


def indexed(
    snapshot: Snapshot,
    lat: float,
    lon: float,
    specialties: frozenset[str],
    radius_km: float | None,
    limit: int,
    facts: FactFilter,
) -> Answer:
    """find_nearest's use of the snapshot, without the database."""
    found = search.nearest(
        snapshot, lat, lon, specialties=sorted(specialties), radius_km=radius_km, limit=limit,
        facts=facts,
    )  # fmt: skip
    ids = snapshot.locations.id
    hits = [(km, int(ids[row])) for km, row, _ in found.hits]
    outside = None if found.outside is None else (found.outside[0], int(ids[found.outside[1]]))
    return Answer(hits, outside, found.excluded_unknown)


NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def build(recs: list[Rec], revision: int = 1) -> Snapshot:
    """One clinic per location (the clinic's id is the location's), as the database gives
    them to the read model (rows in its select order, JSON as text)."""
    clinics = [
        (rec.id, True, f"Clinic {rec.id}", "+16125550100" if rec.has_phone else None, None,
         None, None, None, False, "[]", NOW)
        for rec in recs
    ]  # fmt: skip
    evidence = {
        rec.id: tuple(
            sorted(
                [(code, True, "test", None) for code in rec.specialties]
                + [(code, False, "test", None) for code in rec.lacking]
            )
        )
        for rec in recs
    }
    locations = [
        (rec.id, True, rec.id, None, None, "X", "TX", None, rec.lat, rec.lon, "manual", "test",
         rec.time_zone, False, "[]", _text(rec.opening_hours), _text(rec.hours_exceptions),
         rec.accepting_new_patients, rec.telehealth, _text(rec.languages), NOW)
        for rec in recs
    ]  # fmt: skip
    return Snapshot.build(
        Changes(
            revision,
            clinic_columns(clinics, evidence),
            location_columns(locations),
            complete=True,
        )
    )


# ---- random directories --------------------------------------------------------------------


def _wrap(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def _place(
    rng: random.Random, kind: str, centers: list[tuple[float, float]]
) -> tuple[float, float]:
    if kind == "global":
        return math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)
    if kind == "antimeridian":
        return rng.uniform(-60, 60), _wrap(180 + rng.gauss(0, 2))
    if kind == "polar":
        lat = rng.choice([1, -1]) * min(90.0, 90 - abs(rng.gauss(0, 3)))
        return lat, rng.uniform(-180, 180)
    lat, lon = rng.choice(centers)  # clusters: a city's worth of points, some a few metres apart
    spread = rng.choice([0.00001, 0.01, 0.3])
    return max(-90.0, min(90.0, lat + rng.gauss(0, spread))), _wrap(lon + rng.gauss(0, spread))


def random_directory(seed: int, size: int, kind: str, *, facts: bool = True) -> list[Rec]:
    rng = random.Random(seed)
    centers = [(rng.uniform(-70, 70), rng.uniform(-180, 180)) for _ in range(rng.randint(1, 6))]
    ids = rng.sample(range(1, 50 * size + 10), size)
    shares = {"ortho": 0.7, "spine": 0.4, "sports": 0.2, "pelvic": 0.05}
    rare = set(rng.sample(range(size), min(size, rng.randint(0, 3))))
    recs: list[Rec] = []
    for n, location_id in enumerate(ids):
        if recs and rng.random() < 0.08:  # an exact duplicate of an earlier point
            twin = rng.choice(recs)
            lat, lon = twin.lat, twin.lon
        else:
            lat, lon = _place(rng, kind, centers)
        codes = {code for code, share in shares.items() if rng.random() < share}
        if n in rare:
            codes.add("rare")
        # Most clinics say nothing of most specialties; some say they lack one.
        lacking = {code for code in CODES if code not in codes and rng.random() < 0.15}
        extra: dict[str, Any] = {}
        if facts:
            extra = {
                "accepting_new_patients": rng.choice([None, None, True, False]),
                "telehealth": rng.choice([None, True, False]),
                "languages": rng.choice(LANGUAGES),
                "opening_hours": rng.choice(SCHEDULES),
                "hours_exceptions": rng.choice(
                    [None, [], [{"date": "2026-12-25", "closed": True}]]
                ),
                "time_zone": rng.choice(ZONES),
            }
        recs.append(
            Rec(location_id, lat, lon, frozenset(codes), frozenset(lacking),
                has_phone=rng.random() < 0.8, **extra)
        )  # fmt: skip
    return recs


queries = st.fixed_dictionaries(
    {
        "specialties": st.sets(st.sampled_from((*CODES, "absent")), max_size=2),
        "radius_km": st.one_of(st.none(), st.floats(0, 21000), st.sampled_from([0.0, 1.0, 50.0])),
        "limit": st.integers(0, 12),
        "facts": st.builds(
            FactFilter,
            open_at=st.one_of(
                st.none(),
                st.datetimes(
                    min_value=datetime(2026, 12, 20), max_value=datetime(2026, 12, 31),
                    timezones=st.just(UTC),
                ),
            ),
            accepting_new_patients=st.one_of(st.none(), st.booleans()),
            telehealth=st.one_of(st.none(), st.booleans()),
            language=st.one_of(st.none(), st.sampled_from(["en", "es", "vi", "fr"])),
            contactable=st.one_of(st.none(), st.booleans()),
            allow_unknown=st.frozensets(
                st.sampled_from([SPECIALTY, "accepting_new_patients", "open_now", "language"])
            ),
        ),
    }
)  # fmt: skip


def origins(recs: list[Rec], rng: random.Random) -> list[tuple[float, float]]:
    twin = rng.choice(recs)
    near = rng.choice(recs)
    return [
        (twin.lat, twin.lon),  # on a location (ties with its duplicates)
        (
            max(-90.0, min(90.0, near.lat + rng.gauss(0, 0.05))),
            _wrap(near.lon + rng.gauss(0, 0.05)),
        ),
        (rng.choice([90.0, -90.0]), rng.uniform(-180, 180)),  # a pole
        (rng.uniform(-60, 60), rng.choice([180.0, -180.0])),  # on the antimeridian
        (math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)),
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 1500),
    kind=st.sampled_from(["clusters", "global", "antimeridian", "polar"]),
    asked=st.lists(queries, min_size=4, max_size=4),
)
def test_index_agrees_with_brute_force(seed, size, kind, asked):
    recs = random_directory(seed, size, kind)
    snapshot = build(recs)
    rng = random.Random(seed)
    for lat, lon in rng.sample(origins(recs, rng), 2):
        distances = {rec.id: geodesic_km(lat, lon, rec.lat, rec.lon) for rec in recs}
        for query in asked:
            spec = frozenset(query["specialties"])
            args = (spec, query["radius_km"], query["limit"], query["facts"])
            expected = brute_force(recs, distances, *args)
            assert indexed(snapshot, lat, lon, *args) == expected, (lat, lon, query)


CHRISTMAS_AFTERNOON = datetime(2026, 12, 25, 15, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["clusters", "global"])
def test_thousands_of_locations_many_queries(kind):
    recs = random_directory(11, 4000, kind)
    snapshot = build(recs)
    rng = random.Random(5)
    for lat, lon in origins(recs, rng)[:3]:
        distances = {rec.id: geodesic_km(lat, lon, rec.lat, rec.lon) for rec in recs}
        for spec, radius, limit, facts in [
            (frozenset(), None, 50, NO_FACTS),
            (frozenset({"spine", "sports"}), None, 10, NO_FACTS),
            (frozenset({"rare"}), None, 3, NO_FACTS),
            (frozenset({"ortho"}), 300.0, 10, FactFilter(telehealth=True)),
            (
                frozenset(),
                2000.0,
                5,
                FactFilter(open_at=CHRISTMAS_AFTERNOON, language="es"),
            ),
            (frozenset({"pelvic"}), 0.5, 5, FactFilter(accepting_new_patients=True)),
            # Referral matching's searches: possible matches, not known to refuse, by phone.
            (
                frozenset({"spine", "sports"}),
                800.0,
                4,
                FactFilter(
                    accepting_new_patients=True,
                    contactable=True,
                    allow_unknown=frozenset({SPECIALTY, "accepting_new_patients"}),
                ),
            ),
            (
                frozenset({"rare"}),
                None,
                3,
                FactFilter(contactable=False, allow_unknown=frozenset({SPECIALTY})),
            ),
        ]:
            expected = brute_force(recs, distances, spec, radius, limit, facts)
            assert indexed(snapshot, lat, lon, spec, radius, limit, facts) == expected


def test_ties_go_to_the_lower_id():
    # Eight locations on one point, and pairs mirrored across the origin's meridian and parallel
    # at exactly the same geodesic distance.
    recs = [Rec(id_, 10.0, 20.0, frozenset({"ortho"})) for id_ in (80, 12, 55, 3, 99, 41, 7, 60)]
    recs += [Rec(200 + n, 10.0, 20.0 + sign * 0.5, frozenset()) for n, sign in enumerate((1, -1))]
    recs += [Rec(300 - n, sign * 1.0, 0.0, frozenset()) for n, sign in enumerate((1, -1))]
    snapshot = build(recs)
    answer = indexed(snapshot, 10.0, 20.0, frozenset(), None, 9, NO_FACTS)
    assert [location_id for _, location_id in answer.hits] == [3, 7, 12, 41, 55, 60, 80, 99, 200]
    assert answer.hits[0][0] == 0.0
    equator = indexed(snapshot, 0.0, 0.0, frozenset(), None, 2, NO_FACTS)
    assert [location_id for _, location_id in equator.hits] == [299, 300]
    assert equator.hits[0][0] == equator.hits[1][0]


def test_empty_directory_and_unknown_codes():
    empty = build([])
    assert indexed(empty, 0, 0, frozenset(), 10.0, 5, NO_FACTS) == Answer([], None, {})
    snapshot = build([Rec(1, 0, 0, frozenset({"ortho"}))])
    assert indexed(snapshot, 0, 0, frozenset({"absent"}), None, 5, NO_FACTS).hits == []
    assert indexed(snapshot, 0, 0, frozenset({"ortho"}), None, 0, NO_FACTS).hits == []


# ---- the bound -----------------------------------------------------------------------------


latitudes = st.one_of(
    st.floats(-90, 90), st.sampled_from([90.0, -90.0, 0.0, 89.999999, -89.999999])
)
longitudes = st.one_of(st.floats(-180, 180), st.sampled_from([180.0, -180.0, 0.0]))


def _chord(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    a, b = unit_vectors(np.array([lat1, lat2]), np.array([lon1, lon2]))
    return float(np.linalg.norm(a - b))


@settings(max_examples=400, deadline=None)
@given(lat1=latitudes, lon1=longitudes, lat2=latitudes, lon2=longitudes)
def test_sphere_bounds_hold_for_geodesics(lat1, lon1, lat2, lon2):
    chord = _chord(lat1, lon1, lat2, lon2)
    km = geodesic_km(lat1, lon1, lat2, lon2)
    assert lower_km(chord) <= km <= upper_km(chord)
    assert chord <= chord_within(km)


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(-89.9, 89.9), lon=longitudes, bearing=st.floats(0, 360),
       km=st.floats(0.0001, 50.0))  # fmt: skip
def test_sphere_bounds_hold_close_by(lat, lon, bearing, km):
    target = Geodesic.WGS84.Direct(lat, lon, bearing, km * 1000)
    lat2, lon2 = target["lat2"], target["lon2"]
    chord = _chord(lat, lon, lat2, lon2)
    assert lower_km(chord) <= geodesic_km(lat, lon, lat2, lon2) <= upper_km(chord)


@settings(max_examples=400, deadline=None)
@given(lat1=latitudes, lon1=longitudes, lat2=latitudes, lon2=longitudes)
def test_pyproj_measures_as_geographiclib(lat1, lon1, lat2, lon2):
    # The service measures with pyproj's compiled Karney; geographiclib is the reference.
    reference = Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"] / 1000
    assert abs(geodesic_km(lat1, lon1, lat2, lon2) - reference) < 1e-9


def test_radii_of_curvature_bounds():
    assert round(MIN_KM_PER_RADIAN, 3) == 6335.439
    assert round(MAX_KM_PER_RADIAN, 3) == 6399.594


def test_rare_fact_matches_agree():
    rng = random.Random(8)
    recs = [
        Rec(
            n + 1,
            rng.uniform(-60, 60),
            rng.uniform(-180, 180),
            frozenset({"ortho"}),
            telehealth=(n % 700 == 0) or None,
        )
        for n in range(3000)
    ]
    snapshot = build(recs)
    wanted = FactFilter(telehealth=True)
    for lat, lon in origins(recs, rng):
        distances = {rec.id: geodesic_km(lat, lon, rec.lat, rec.lon) for rec in recs}
        for radius, limit in ((None, 3), (3000.0, 10), (1.0, 2)):
            args = (frozenset({"ortho"}), radius, limit, wanted)
            assert indexed(snapshot, lat, lon, *args) == brute_force(recs, distances, *args)


def test_a_dense_cluster_of_duplicates_stays_exact():
    # 3,000 locations on 30 points a few metres apart: the exact shell around the k-th
    # distance holds hundreds of candidates (past what the tree is asked for at once).
    rng = random.Random(3)
    points = [(40 + rng.uniform(0, 1e-4), -100 + rng.uniform(0, 1e-4)) for _ in range(30)]
    recs = [Rec(n + 1, *points[n % 30], frozenset({"ortho"})) for n in range(3000)]
    snapshot = build(recs)
    for lat, lon in [(40.00005, -100.00005), (40.1, -100.1), points[0]]:
        distances = {rec.id: geodesic_km(lat, lon, rec.lat, rec.lon) for rec in recs}
        for limit in (1, 10, 50):
            args = (frozenset({"ortho"}), None, limit, NO_FACTS)
            assert indexed(snapshot, lat, lon, *args) == brute_force(recs, distances, *args)


def test_a_zero_radius_counts_what_sits_on_the_origin():
    # Found by hypothesis: 1 - cos of coincident unit vectors is lost to rounding, so the
    # counts measure squared chords.
    recs = [Rec(1, -69.30463046789262, 68.45692974796407, frozenset()), Rec(2, 10, 10, frozenset())]
    snapshot = build(recs)
    answer = indexed(snapshot, recs[0].lat, recs[0].lon, frozenset({"ortho"}), 0.0, 0, NO_FACTS)
    assert answer.excluded == {"specialty": 1}
