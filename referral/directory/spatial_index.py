"""A compact in-memory spatial index of the active directory, for nearest search.

What it holds (flat ``array`` buffers, no Python object per location): each active, geocoded
location of an active clinic as a unit vector on the sphere (from its geodetic latitude and
longitude), its exact latitude and longitude, its id, and a small integer "group" naming its
clinic's specialty evidence (offered, not offered) and its facts (new patients, telehealth,
languages, opening hours, the last compiled to integers; a phone on record). Points are
ordered along a 3-D Morton curve and packed into a bounding-box tree (leaves of 16 points, 8
children a node); there is one tree over all points and one per specialty code, over the
locations whose clinic is on record as offering it.

Why the answers are exact although the tree works on a sphere: with geodetic latitude as the
sphere's latitude, the WGS84 metric ds^2 = M^2 dphi^2 + N^2 cos^2(phi) dlambda^2 lies between
a(1-e^2)^2 and a^2/(1-e^2) times the unit sphere's dphi^2 + cos^2(phi) dlambda^2, because
both radii of curvature M and N lie in [a(1-e^2), a/sqrt(1-e^2)] (6335.439 to 6399.594 km).
Every curve's length therefore scales within that range, and so does the shortest one: for a
central angle sigma on the sphere the geodesic distance s obeys
6335.439 km * sigma <= s <= 6399.594 km * sigma. Candidates come out of the tree in
increasing sigma; once 6335.439 * sigma of the next one exceeds the k-th best exact geodesic
distance found so far (or the radius), nothing further can enter the answer. Distances that
decide anything are exact geodesics from geographiclib, computed exactly as the brute force
does; the tree only decides what need not be looked at.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from array import array
from bisect import insort
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from heapq import heappop, heappush
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, case, func, select

from referral.directory.facts import NO_FACTS, SPECIALTY, FactFilter
from referral.directory.hours import DAYS, _minutes, is_open
from referral.directory.models import Clinic, ClinicSpecialty, Location
from referral.directory.revision import read_revision
from referral.geo.distance import geodesic_km

# WGS84 and the bounds on its radii of curvature (see the module docstring).
_A_KM = 6378.137
_FLATTENING = 1 / 298.257223563
_E2 = _FLATTENING * (2 - _FLATTENING)
MIN_KM_PER_RADIAN = _A_KM * (1 - _E2)  # meridional radius at the equator
MAX_KM_PER_RADIAN = _A_KM / math.sqrt(1 - _E2)  # both radii at the poles
# Slack for rounding and for geographiclib's own error (about 15 nm): a micrometre, and a
# relative 1e-9, always widening the candidate set.
_LOW = MIN_KM_PER_RADIAN * (1 - 1e-9)
_HIGH = MAX_KM_PER_RADIAN * (1 + 1e-9)
_ABS_KM = 1e-9

LEAF_SIZE = 16
FANOUT = 8
# Fact filters passing fewer than one point in this many: the passing points are listed
# directly (one pass over the tree's group column) rather than found in distance order.
DIRECT_RATIO = 32
_UNKNOWN = -1  # fact codes: -1 unknown, 0 false, 1 true


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    phi, lam = math.radians(lat), math.radians(lon)
    cos_phi = math.cos(phi)
    return cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi)


def _angle(chord2: float) -> float:
    return 2.0 * math.asin(min(1.0, math.sqrt(chord2) / 2.0))


def lower_km(chord2: float) -> float:
    """No geodesic between points this far apart (squared chord) is shorter than this."""
    return _LOW * _angle(chord2) - _ABS_KM


def upper_km(chord2: float) -> float:
    """No geodesic between points this far apart (squared chord) is longer than this."""
    return _HIGH * _angle(chord2) + _ABS_KM


# ---- Morton order --------------------------------------------------------------------------


def _spread(value: int) -> int:
    out = 0
    for bit in range(8):
        out |= ((value >> bit) & 1) << (3 * bit)
    return out


_SPREAD = [_spread(value) for value in range(256)]


def _vectors_and_codes(
    lat: array[float], lon: array[float]
) -> tuple[array[float], array[float], array[float], list[int]]:
    """Unit vectors, and Morton codes of their 16-bit quantized coordinates (interleaved):
    nearby points get nearby codes."""
    # A 65,536-entry table, made per build and dropped after (2 MB while it lives).
    spread = [_SPREAD[q & 255] | (_SPREAD[q >> 8] << 24) for q in range(65536)]
    x, y, z = array("d"), array("d"), array("d")
    codes = []
    radians, cos, sin = math.radians, math.cos, math.sin
    for phi_deg, lam_deg in zip(lat, lon, strict=True):
        phi, lam = radians(phi_deg), radians(lam_deg)
        cos_phi = cos(phi)
        vx, vy, vz = cos_phi * cos(lam), cos_phi * sin(lam), sin(phi)
        x.append(vx)
        y.append(vy)
        z.append(vz)
        # Coordinates lie in [-1, 1], so the quantized values in [0, 65535].
        codes.append(
            spread[int((vx + 1.0) * 32767.5)]
            | (spread[int((vy + 1.0) * 32767.5)] << 1)
            | (spread[int((vz + 1.0) * 32767.5)] << 2)
        )
    return x, y, z, codes


# ---- opening hours, compiled ---------------------------------------------------------------


class _RawHours(Exception):
    """Hours this module does not compile (malformed): they are judged by hours.is_open."""


def _compile_intervals(intervals: Any) -> list[int]:
    out = [0]
    for start, end in intervals:
        out += [_minutes(start), _minutes(end)]
    out[0] = (len(out) - 1) // 2
    return out


def compile_hours(
    schedule: dict[str, Any], exceptions: list[dict[str, Any]] | None, zone_id: int
) -> list[int]:
    """[zone, n_exceptions, (count, open, close, ...) for mon..sun,
    (date ordinal, count, open, close, ...) per exception that can ever match]; an exception
    that is closed has no intervals. Raises _RawHours for what is_open would judge otherwise."""
    try:
        days = [_compile_intervals(schedule.get(day, [])) for day in DAYS]
        matching = []
        for exception in exceptions or []:
            when = exception.get("date")
            try:
                day = date.fromisoformat(when) if isinstance(when, str) else None
            except ValueError:
                day = None
            if day is None or day.isoformat() != when:
                continue  # is_open compares ISO strings: this one never matches
            hours = [] if exception.get("closed") else exception.get("hours", [])
            matching.append([day.toordinal(), *_compile_intervals(hours)])
    except Exception as exc:  # anything odd: leave the judging to is_open itself
        raise _RawHours from exc
    code = [zone_id, len(matching)]
    for day_code in days:
        code += day_code
    for item in matching:
        code += item
    return code


# ---- the index -----------------------------------------------------------------------------


@dataclass
class _Tree:
    """A packed bounding-box tree over some points, in Morton order. ``idx`` maps a tree
    position to the point's index in the directory arrays; ``grp`` is its group."""

    idx: array[int]
    grp: array[int]
    # levels[0] are the leaves; each level is six arrays: lo x, lo y, lo z, hi x, hi y, hi z.
    levels: list[tuple[array[float], ...]]
    # How many of the tree's points each of its groups has (two arrays, one entry a group).
    groups: array[int]
    counts: array[int]

    def group_counts(self) -> Iterator[tuple[int, int]]:
        return zip(self.groups, self.counts, strict=True)

    @property
    def size(self) -> int:
        return len(self.idx)

    def span(self, level: int, node: int) -> tuple[int, int]:
        width = LEAF_SIZE * FANOUT**level
        return node * width, min(len(self.idx), (node + 1) * width)

    def nbytes(self) -> int:
        total = self.idx.itemsize * len(self.idx) + self.grp.itemsize * len(self.grp)
        for level in self.levels:
            total += sum(part.itemsize * len(part) for part in level)
        return total + 8 * len(self.groups)


def _build_tree(
    members: Sequence[int], x: array[float], y: array[float], z: array[float], grp: array[int]
) -> _Tree:
    idx = array("i", members)
    tree_grp = array("i", map(grp.__getitem__, idx))
    levels: list[tuple[array[float], ...]] = []
    if members:
        bounds: tuple[array[float], ...] = tuple(array("d") for _ in range(6))
        lox, loy, loz, hix, hiy, hiz = bounds
        tx = array("d", [x[i] for i in idx])
        ty = array("d", [y[i] for i in idx])
        tz = array("d", [z[i] for i in idx])
        for start in range(0, len(idx), LEAF_SIZE):
            end = start + LEAF_SIZE
            lox.append(min(tx[start:end]))
            loy.append(min(ty[start:end]))
            loz.append(min(tz[start:end]))
            hix.append(max(tx[start:end]))
            hiy.append(max(ty[start:end]))
            hiz.append(max(tz[start:end]))
        levels.append(bounds)
        while len(levels[-1][0]) > FANOUT:
            below = levels[-1]
            above: tuple[array[float], ...] = tuple(array("d") for _ in range(6))
            for start in range(0, len(below[0]), FANOUT):
                for part in range(3):
                    above[part].append(min(below[part][start : start + FANOUT]))
                    above[part + 3].append(max(below[part + 3][start : start + FANOUT]))
            levels.append(above)
    totals = sorted(Counter(tree_grp).items())
    groups = array("i", [group for group, _ in totals])
    counts = array("i", [count for _, count in totals])
    return _Tree(idx, tree_grp, levels, groups, counts)


def _box_chord2(
    level: tuple[array[float], ...], node: int, qx: float, qy: float, qz: float
) -> tuple[float, float]:
    """Squared distance from q to the nearest and to the farthest point of a node's box."""
    near = far = 0.0
    for part, q in ((0, qx), (1, qy), (2, qz)):
        lo, hi = level[part][node], level[part + 3][node]
        if q < lo:
            near += (lo - q) ** 2
        elif q > hi:
            near += (q - hi) ** 2
        far += max((q - lo) ** 2, (hi - q) ** 2)
    return near, far


@dataclass
class DirectoryIndex:
    """One revision of the directory, as arrays. Immutable once built: threads share it."""

    revision: int
    ids: array[int]
    lat: array[float]
    lon: array[float]
    x: array[float]
    y: array[float]
    z: array[float]
    # Groups: a clinic specialty set and one combination of facts.
    g_spec: array[int]
    g_anp: array[int]
    g_tele: array[int]
    g_lang: array[int]
    g_hours: array[int]
    g_phone: array[int]
    # Per specialty set: the codes offered, and the codes known not to be offered.
    spec_sets: list[frozenset[str]]
    lacking_sets: list[frozenset[str]]
    languages: list[Any]  # [0] is None: unknown
    hours_code: array[int]
    hours_offset: array[int]  # per hours profile; profile 0 is "unknown"
    zones: list[ZoneInfo]
    raw_hours: dict[int, tuple[Any, Any, str]]
    all_tree: _Tree
    trees: dict[str, _Tree]
    build_seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.ids)

    def tree_for(self, specialties: Iterable[str]) -> _Tree | None:
        """The smallest tree holding every location that can match; None when a code has no
        location at all (nothing can match)."""
        codes = set(specialties)
        if not codes:
            return self.all_tree
        trees = [self.trees.get(code) for code in codes]
        if any(tree is None for tree in trees):
            return None
        return min((tree for tree in trees if tree is not None), key=lambda tree: tree.size)

    def nbytes(self) -> int:
        """Bytes held in the index's arrays (the Python objects around them are small and few,
        except the per-profile tables: counted at a rough 100 bytes an entry)."""
        arrays: list[array[Any]] = [
            self.ids, self.lat, self.lon, self.x, self.y, self.z,
            self.g_spec, self.g_anp, self.g_tele, self.g_lang, self.g_hours, self.g_phone,
            self.hours_code, self.hours_offset,
        ]  # fmt: skip
        total = sum(part.itemsize * len(part) for part in arrays)
        total += self.all_tree.nbytes() + sum(tree.nbytes() for tree in self.trees.values())
        tables = len(self.spec_sets) + len(self.languages) + len(self.zones) + len(self.raw_hours)
        return total + 100 * tables

    # ---- facts ---------------------------------------------------------------------------

    def open_state(self, profile: int, when: datetime) -> bool | None:
        """hours.is_open for one hours profile."""
        if profile == 0:
            return None
        raw = self.raw_hours.get(profile)
        if raw is not None:
            return is_open(raw[0], raw[1], raw[2], when)
        code = self.hours_code
        at = self.hours_offset[profile]
        local = when.astimezone(self.zones[code[at]])
        exceptions = code[at + 1]
        at += 2
        weekday = local.weekday()
        intervals = -1
        for day in range(7):
            if day == weekday:
                intervals = at
            at += 1 + 2 * code[at]
        today = local.date().toordinal()
        for _ in range(exceptions):
            if code[at] == today:
                intervals = at + 1
                break
            at += 2 + 2 * code[at + 1]
        minute = local.hour * 60 + local.minute
        count = code[intervals]
        return any(
            code[intervals + 1 + 2 * n] <= minute < code[intervals + 2 + 2 * n]
            for n in range(count)
        )


class IndexBuilder:
    """Collects locations one at a time, then packs them into a DirectoryIndex."""

    def __init__(self) -> None:
        self.ids: array[int] = array("q")
        self.lat: array[float] = array("d")
        self.lon: array[float] = array("d")
        self.grp: array[int] = array("i")
        self._groups: dict[tuple[int, int, int, int, int, int], int] = {}
        self.spec_sets: list[frozenset[str]] = []
        self.lacking_sets: list[frozenset[str]] = []
        self._spec_ids: dict[tuple[frozenset[str], frozenset[str]], int] = {}
        self.languages: list[Any] = [None]
        self._language_ids: dict[str, int] = {}
        self.hours_code: array[int] = array("i")
        self.hours_offset: array[int] = array("i", [0])
        self._hours_ids: dict[bytes, int] = {}
        self.zones: list[ZoneInfo] = []
        self._zone_ids: dict[str, int] = {}
        self.raw_hours: dict[int, tuple[Any, Any, str]] = {}

    def spec_set(self, codes: Iterable[str], lacking: Iterable[str] = ()) -> int:
        """The id of a clinic's specialty evidence: the codes it offers, those it lacks."""
        key = (frozenset(codes), frozenset(lacking))
        found = self._spec_ids.get(key)
        if found is None:
            found = self._spec_ids[key] = len(self.spec_sets)
            self.spec_sets.append(key[0])
            self.lacking_sets.append(key[1])
        return found

    def _language(self, languages: Any) -> int:
        if languages is None:
            return 0
        key = json.dumps(languages, sort_keys=True)
        found = self._language_ids.get(key)
        if found is None:
            found = self._language_ids[key] = len(self.languages)
            self.languages.append(tuple(languages) if isinstance(languages, list) else languages)
        return found

    def _hours(self, schedule: Any, exceptions: Any, time_zone: str | None) -> int:
        if schedule is None or not time_zone:
            return 0  # is_open: unknown
        key = hashlib.blake2b(
            json.dumps([schedule, exceptions, time_zone], sort_keys=True).encode(), digest_size=16
        ).digest()
        found = self._hours_ids.get(key)
        if found is not None:
            return found
        profile = len(self.hours_offset)
        try:
            zone_id = self._zone_ids.get(time_zone)
            if zone_id is None:
                zone = ZoneInfo(time_zone)
                zone_id = self._zone_ids[time_zone] = len(self.zones)
                self.zones.append(zone)
            code = compile_hours(schedule, exceptions, zone_id)
        except ZoneInfoNotFoundError:
            self._hours_ids[key] = 0
            return 0  # is_open: unknown
        except (_RawHours, ValueError, TypeError):
            self.raw_hours[profile] = (schedule, exceptions, time_zone)
            code = []
        self.hours_offset.append(len(self.hours_code))
        self.hours_code.extend(code)
        self._hours_ids[key] = profile
        return profile

    def add(
        self,
        location_id: int,
        spec_set: int,
        lat: float,
        lon: float,
        *,
        accepting_new_patients: bool | None = None,
        telehealth: bool | None = None,
        languages: Any = None,
        opening_hours: Any = None,
        hours_exceptions: Any = None,
        time_zone: str | None = None,
        has_phone: bool = True,
    ) -> None:
        if (
            accepting_new_patients is None
            and telehealth is None
            and languages is None
            and opening_hours is None
        ):
            # Nothing known: the common case.
            key = (spec_set, _UNKNOWN, _UNKNOWN, 0, 0, int(has_phone))
        else:
            key = (
                spec_set,
                _UNKNOWN if accepting_new_patients is None else int(bool(accepting_new_patients)),
                _UNKNOWN if telehealth is None else int(bool(telehealth)),
                self._language(languages),
                self._hours(opening_hours, hours_exceptions, time_zone),
                int(has_phone),
            )
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = len(self._groups)
        self.ids.append(location_id)
        self.lat.append(lat)
        self.lon.append(lon)
        self.grp.append(group)

    def finish(self, revision: int) -> DirectoryIndex:
        started = time.perf_counter()
        count = len(self.ids)
        x, y, z, codes = _vectors_and_codes(self.lat, self.lon)
        # One list of plain ints (code, then position) sorts faster and holds less than a
        # key function over a second list; positions come back from the low bits.
        shift = max(1, count.bit_length())
        for i in range(count):
            codes[i] = (codes[i] << shift) | i
        codes.sort()
        mask = (1 << shift) - 1
        order = array("i", [key & mask for key in codes])
        del codes
        # map() rather than list comprehensions: no list of floats to outlive (RSS).
        x, y, z = (array("d", map(part.__getitem__, order)) for part in (x, y, z))
        ids = array("q", map(self.ids.__getitem__, order))
        lat = array("d", map(self.lat.__getitem__, order))
        lon = array("d", map(self.lon.__getitem__, order))
        grp = array("i", map(self.grp.__getitem__, order))
        del order
        groups = sorted(self._groups.items(), key=lambda item: item[1])
        g_spec = array("i", [key[0] for key, _ in groups])
        g_anp = array("b", [key[1] for key, _ in groups])
        g_tele = array("b", [key[2] for key, _ in groups])
        g_lang = array("i", [key[3] for key, _ in groups])
        g_hours = array("i", [key[4] for key, _ in groups])
        g_phone = array("b", [key[5] for key, _ in groups])
        # Per code, the positions having it, in Morton order: one pass, appending to arrays
        # (no list of ints to sort, nor to outlive the build in the allocator).
        members: dict[str, array[int]] = {
            code: array("i") for code in sorted(set().union(*self.spec_sets))
        }
        targets = [tuple(members[code].append for code in codes) for codes in self.spec_sets]
        for i, group in enumerate(grp):
            for append in targets[g_spec[group]]:
                append(i)
        del targets
        all_tree = _build_tree(range(count), x, y, z, grp)
        trees = {}
        memberships = 0
        for code in list(members):
            points = members.pop(code)
            memberships += len(points)
            trees[code] = _build_tree(points, x, y, z, grp)
        index = DirectoryIndex(
            revision=revision,
            ids=ids, lat=lat, lon=lon, x=x, y=y, z=z,
            g_spec=g_spec, g_anp=g_anp, g_tele=g_tele, g_lang=g_lang, g_hours=g_hours,
            g_phone=g_phone,
            spec_sets=list(self.spec_sets),
            lacking_sets=list(self.lacking_sets),
            languages=list(self.languages),
            hours_code=self.hours_code,
            hours_offset=self.hours_offset,
            zones=list(self.zones),
            raw_hours=dict(self.raw_hours),
            all_tree=all_tree,
            trees=trees,
        )  # fmt: skip
        index.build_seconds = time.perf_counter() - started
        index.stats = {
            "locations": count,
            "groups": len(groups),
            "specialty_sets": len(self.spec_sets),
            "hours_profiles": len(self.hours_offset) - 1,
            "memberships": memberships,
        }
        return index


# ---- loading from the database -------------------------------------------------------------


def load_index(connection: Connection) -> DirectoryIndex:
    """Build the index of what ``connection`` sees. The revision is read first: the rows can
    only be as new or newer than the label (a newer change then just rebuilds once more)."""
    started = time.perf_counter()
    revision = read_revision(connection)
    location, clinic, link = Location.__table__, Clinic.__table__, ClinicSpecialty.__table__  # type: ignore[attr-defined]
    # A clinic's evidence as one text: offered codes as they are, codes it lacks after "!".
    evidence = case(
        (link.c.offered.is_(True), link.c.specialty_code), else_="!" + link.c.specialty_code
    )
    codes = (
        select(link.c.clinic_id, func.aggregate_strings(evidence, " ").label("codes"))
        .group_by(link.c.clinic_id)
        .subquery()
    )
    query = (
        select(
            location.c.id,
            location.c.lat,
            location.c.lon,
            location.c.accepting_new_patients,
            location.c.telehealth,
            location.c.languages,
            location.c.opening_hours,
            location.c.hours_exceptions,
            location.c.time_zone,
            clinic.c.phone.is_not(None),
            codes.c.codes,
        )
        .join(clinic, clinic.c.id == location.c.clinic_id)
        .outerjoin(codes, codes.c.clinic_id == location.c.clinic_id)
        .where(
            location.c.active.is_(True),
            clinic.c.active.is_(True),
            location.c.lat.is_not(None),
            location.c.lon.is_not(None),
        )
    )
    builder = IndexBuilder()
    spec_by_text: dict[str | None, int] = {}
    result = connection.execution_options(yield_per=2000).execute(query)
    add = builder.add
    for row in result:
        location_id, lat, lon, anp, telehealth, languages, hours, exceptions, zone, phone, text = (
            row
        )
        spec = spec_by_text.get(text)
        if spec is None:
            words = (text or "").split()
            spec = spec_by_text[text] = builder.spec_set(
                [word for word in words if not word.startswith("!")],
                [word[1:] for word in words if word.startswith("!")],
            )
        add(
            location_id,
            spec,
            lat,
            lon,
            accepting_new_patients=anp,
            telehealth=telehealth,
            languages=languages,
            opening_hours=hours,
            hours_exceptions=exceptions,
            time_zone=zone,
            has_phone=bool(phone),
        )
    index = builder.finish(revision)
    index.build_seconds = time.perf_counter() - started
    return index


# ---- queries -------------------------------------------------------------------------------


class Judge:
    """Per query: whether a group matches (an empty tuple), fails (None), or would match but
    for what it names as unknown (SPECIALTY, facts); the same rules as nearest's row check.
    ``passes`` applies the filter's ``allow_unknown``; ``blocked`` names what left a group
    out for being unknown."""

    def __init__(self, index: DirectoryIndex, specialties: Iterable[str], facts: FactFilter):
        self.required = frozenset(specialties)
        self.index = index
        self.facts = facts
        self._spec: dict[int, tuple[str, ...] | None] = {}
        self._memo: dict[int, tuple[str, ...] | None] = {}
        self._blocked: dict[int, tuple[str, ...]] = {}
        self._open: dict[int, bool | None] = {}

    def verdict(self, group: int) -> tuple[str, ...] | None:
        try:
            return self._memo[group]
        except KeyError:
            found = self._memo[group] = self._judge(group)
            return found

    def blocked(self, group: int) -> tuple[str, ...]:
        """What left the group out for being unknown (empty: it passes, or fails outright)."""
        try:
            return self._blocked[group]
        except KeyError:
            verdict = self.verdict(group)
            found = self._blocked[group] = (
                () if verdict is None else tuple(self.facts.blocked(verdict))
            )
            return found

    def passes(self, group: int) -> bool:
        return self.verdict(group) is not None and not self.blocked(group)

    def _specialty(self, spec: int) -> tuple[str, ...] | None:
        """None when the clinic is known to lack a required specialty; (SPECIALTY,) when it
        is not known to offer one; () when it offers all."""
        try:
            return self._spec[spec]
        except KeyError:
            index, required = self.index, self.required
            if required & index.lacking_sets[spec]:
                found: tuple[str, ...] | None = None
            else:
                found = () if required <= index.spec_sets[spec] else (SPECIALTY,)
            self._spec[spec] = found
            return found

    def _judge(self, group: int) -> tuple[str, ...] | None:
        index, facts = self.index, self.facts
        specialty = self._specialty(index.g_spec[group])
        if specialty is None:
            return None
        if facts.contactable is not None and bool(index.g_phone[group]) != facts.contactable:
            return None
        unknown: list[str] = list(specialty)
        if facts.open_at is not None:
            profile = index.g_hours[group]
            if profile not in self._open:
                self._open[profile] = index.open_state(profile, facts.open_at)
            state = self._open[profile]
            if state is None:
                unknown.append("open_now")
            elif not state:
                return None
        for name, codes in (
            ("accepting_new_patients", index.g_anp),
            ("telehealth", index.g_tele),
        ):
            wanted = getattr(facts, name)
            if wanted is not None:
                code = codes[group]
                if code == _UNKNOWN:
                    unknown.append(name)
                elif bool(code) != wanted:
                    return None
        if facts.language is not None:
            languages = index.languages[index.g_lang[group]]
            if languages is None:
                unknown.append("language")
            elif facts.language not in languages:
                return None
        return tuple(unknown)


class NearestSearch:
    """The k nearest locations passing a query's filters, by the index's data: exact geodesic
    distances, ties to the lower id. Resumable: ``drop`` a location (say its row changed since
    the index was built) and ask again, and the scan goes on where it stopped."""

    def __init__(
        self,
        index: DirectoryIndex,
        lat: float,
        lon: float,
        *,
        specialties: Sequence[str] = (),
        radius_km: float | None = None,
        facts: FactFilter = NO_FACTS,
        judge: Judge | None = None,
    ) -> None:
        self.index = index
        self.lat, self.lon = lat, lon
        self.radius_km = radius_km
        self.judge = judge or Judge(index, specialties, facts)
        # A clinic not on record for a specialty may pass too: then the tree of all.
        possible = SPECIALTY in self.judge.facts.allow_unknown
        self.tree = index.all_tree if possible else index.tree_for(specialties)
        self.q = unit_vector(lat, lon)
        self.heap: list[tuple[float, int, int]] = []
        self.accepted: list[tuple[float, int, int]] = []  # (km, location id, point index)
        self.examined = 0
        tree = self.tree
        if tree is None or not tree.levels:
            return
        if (self.judge.facts.active or possible) and self._few_pass(tree):
            return
        top = len(tree.levels) - 1
        for node in range(len(tree.levels[top][0])):
            near, _ = _box_chord2(tree.levels[top], node, *self.q)
            heappush(self.heap, (near, top, node))

    def _few_pass(self, tree: _Tree) -> bool:
        """When fact filters let few points of the tree through, walking the tree in distance
        order would pass over most of it: take those few directly instead, sorted by distance
        (a sorted list is a heap, so the search goes on unchanged)."""
        judge = self.judge
        passing = {group for group, _ in tree.group_counts() if judge.passes(group)}
        count = sum(number for group, number in tree.group_counts() if group in passing)
        if count * DIRECT_RATIO >= tree.size:
            return False
        qx, qy, qz = self.q
        x, y, z = self.index.x, self.index.y, self.index.z
        idx = tree.idx
        entries = []
        for position, group in enumerate(tree.grp):
            if group in passing:
                i = idx[position]
                chord2 = (x[i] - qx) ** 2 + (y[i] - qy) ** 2 + (z[i] - qz) ** 2
                entries.append((chord2, -1, position))
        entries.sort()
        self.heap = entries
        return True

    def _peek(self) -> float | None:
        """The squared chord of the nearest point not yet taken (None: no more points)."""
        heap = self.heap
        tree = self.tree
        if tree is None:
            return None
        qx, qy, qz = self.q
        x, y, z = self.index.x, self.index.y, self.index.z
        while heap and heap[0][1] >= 0:
            _, level, node = heappop(heap)
            if level == 0:
                start, end = tree.span(0, node)
                idx = tree.idx
                for position in range(start, end):
                    i = idx[position]
                    chord2 = (x[i] - qx) ** 2 + (y[i] - qy) ** 2 + (z[i] - qz) ** 2
                    heappush(heap, (chord2, -1, position))
            else:
                below = tree.levels[level - 1]
                first = node * FANOUT
                for child in range(first, min(first + FANOUT, len(below[0]))):
                    near, _ = _box_chord2(below, child, qx, qy, qz)
                    heappush(heap, (near, level - 1, child))
        return heap[0][0] if heap else None

    def best(self, limit: int) -> list[tuple[float, int, int]]:
        """(km, location id, point index) of the ``limit`` best, nearest first."""
        if limit <= 0 or self.tree is None:
            return []
        accepted, radius = self.accepted, self.radius_km
        tree = self.tree
        index, judge = self.index, self.judge
        while True:
            chord2 = self._peek()
            if chord2 is None:
                break
            bound = lower_km(chord2)
            if radius is not None and bound > radius:
                break
            if len(accepted) >= limit and bound > accepted[limit - 1][0]:
                break
            _, _, position = heappop(self.heap)
            self.examined += 1
            if not judge.passes(tree.grp[position]):
                continue
            i = tree.idx[position]
            km = geodesic_km(self.lat, self.lon, index.lat[i], index.lon[i])
            if radius is not None and km > radius:
                continue
            insort(accepted, (km, index.ids[i], i))
        return accepted[:limit]

    def drop(self, location_id: int) -> None:
        self.accepted = [entry for entry in self.accepted if entry[1] != location_id]

    def excluded_unknown(self) -> dict[str, int]:
        """Per fact filter (and SPECIALTY), how many locations that would otherwise match
        (within the radius, if any) were left out for that being unknown."""
        judge = self.judge
        if not (judge.facts.active or judge.required):
            return {}
        # Locations not on record for a specialty are in no specialty's tree: count in all.
        tree = self.index.all_tree
        by_group: Counter[int] = Counter()
        if self.radius_km is None:
            # Everywhere: the tree's per-group totals, no point is visited.
            for group, count in tree.group_counts():
                if judge.blocked(group):
                    by_group[group] = count
        elif tree.levels:
            self._count_within(tree, by_group)
        counts: Counter[str] = Counter()
        for group, count in by_group.items():
            for name in judge.blocked(group):
                counts[name] += count
        return {name: count for name, count in counts.items() if count}

    def _count_within(self, tree: _Tree, by_group: Counter[int]) -> None:
        """Count, per group left out for an unknown fact, its points within the radius: boxes
        surely inside are counted from their group column at once, boxes surely outside are
        skipped, exact geodesics decide only in the thin shell between the two bounds."""
        radius = self.radius_km
        assert radius is not None
        judge = self.judge
        qx, qy, qz = self.q
        index = self.index
        x, y, z = index.x, index.y, index.z
        top = len(tree.levels) - 1
        stack = [(top, node) for node in range(len(tree.levels[top][0]))]
        while stack:
            level, node = stack.pop()
            near, far = _box_chord2(tree.levels[level], node, qx, qy, qz)
            if lower_km(near) > radius:
                continue
            start, end = tree.span(level, node)
            if upper_km(far) <= radius:
                for group, count in Counter(tree.grp[start:end]).items():
                    if judge.blocked(group):
                        by_group[group] += count
                continue
            if level > 0:
                first = node * FANOUT
                below = len(tree.levels[level - 1][0])
                stack.extend(
                    (level - 1, child) for child in range(first, min(first + FANOUT, below))
                )
                continue
            for position in range(start, end):
                group = tree.grp[position]
                if not judge.blocked(group):
                    continue
                i = tree.idx[position]
                chord2 = (x[i] - qx) ** 2 + (y[i] - qy) ** 2 + (z[i] - qz) ** 2
                if lower_km(chord2) > radius:
                    continue
                if upper_km(chord2) <= radius or (
                    geodesic_km(self.lat, self.lon, index.lat[i], index.lon[i]) <= radius
                ):
                    by_group[group] += 1


__all__ = [
    "MAX_KM_PER_RADIAN",
    "MIN_KM_PER_RADIAN",
    "DirectoryIndex",
    "IndexBuilder",
    "Judge",
    "NearestSearch",
    "load_index",
    "lower_km",
    "unit_vector",
    "upper_km",
]
