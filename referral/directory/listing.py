"""The clinic list, one clinic, and the exports, answered from a snapshot (snapshot.py).

Per snapshot, built once: the active clinics in list order (named first, by name, then id),
their names folded into one text for substring search, clinics by city, state and ZIP, and
each clinic's locations. A query is then array operations: name matches by searching the one
text, places by lookups, specialties per evidence value, facts per group (search.py), never
a loop over rows it does not return.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from referral.directory.facts import NO_FACTS, SPECIALTY, FactFilter
from referral.directory.records import LocationRecord, location_record
from referral.directory.search import BITS, facets, judge
from referral.directory.snapshot import Snapshot, from_micros

_SEPARATOR = "\n"  # never in a name (names are plain one-line text)
_EMPTY: NDArray[np.int64] = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class SpecialtyLink:
    """What ClinicSchema's ``specialty_reasons`` dumps (as the ORM's ClinicSpecialty)."""

    specialty_code: str
    offered: bool
    reason: str
    source: str | None


@dataclass(frozen=True)
class ClinicView:
    """A clinic with its active locations, as ClinicSchema dumps it (the ORM Clinic's
    attributes), made from a snapshot."""

    id: int
    active: bool
    name: str | None
    phone: str | None
    phone_original: str | None
    website: str | None
    needs_review: bool
    review_reasons: list[str]
    source_file: str | None
    source_text: str | None
    updated_at: datetime
    specialty_links: list[SpecialtyLink]
    locations: list[LocationRecord]

    @property
    def specialty_codes(self) -> list[str]:
        return [link.specialty_code for link in self.specialty_links if link.offered]

    @property
    def not_offered_codes(self) -> list[str]:
        return [link.specialty_code for link in self.specialty_links if not link.offered]


@dataclass
class Listing:
    order: NDArray[np.int64]  # alive clinic rows in list order
    position: NDArray[np.int64]  # per clinic row: its place in ``order`` (-1: not listed)
    names: str  # folded names in list order, each followed by _SEPARATOR
    name_starts: NDArray[np.int64]
    # Places by the location pools' codes: folded city -> codes, state -> code; and the
    # alive locations' ZIPs sorted, with their rows (a prefix is a range of them).
    city_codes: dict[str, list[int]]
    state_codes: dict[str, int]
    zips: NDArray[np.bytes_]
    zip_rows: NDArray[np.int64]
    live: NDArray[np.int64]  # alive location rows
    location_starts: NDArray[np.int64]  # per clinic row: its alive locations' slice
    location_rows: NDArray[np.int64]  # alive location rows by clinic, then id

    def locations_of(self, clinic_row: int) -> NDArray[np.int64]:
        start, end = self.location_starts[clinic_row], self.location_starts[clinic_row + 1]
        return self.location_rows[start:end]


def listing(snapshot: Snapshot) -> Listing:
    found = snapshot.derived.get("listing")
    if found is None:
        found = snapshot.derived["listing"] = _listing(snapshot)
    assert isinstance(found, Listing)
    return found


def _fold(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


def _listing(snapshot: Snapshot) -> Listing:
    clinics, locations = snapshot.clinics, snapshot.locations
    alive = np.flatnonzero(clinics.alive)
    names = [clinics.name[int(row)] for row in alive]
    # Sorted in C over fixed-width text: named first, by name, then by id.
    text = np.array([name or "" for name in names], dtype=str) if names else np.array([], str)
    unnamed = np.fromiter((name is None for name in names), dtype=bool, count=len(names))
    ranked = np.lexsort((clinics.id[alive], text, unnamed))
    order = alive[ranked] if len(alive) else _EMPTY
    position = np.full(len(clinics.id), -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    folded = [(names[n] or "").lower() + _SEPARATOR for n in ranked]
    lengths = np.fromiter(map(len, folded), dtype=np.int64, count=len(folded))
    live = np.flatnonzero(locations.alive)
    by_clinic = live[np.lexsort((locations.id[live], locations.clinic[live]))]
    counts = np.bincount(locations.clinic[by_clinic], minlength=len(clinics.id))
    city_codes: dict[str, list[int]] = {}
    for code, city in enumerate(locations.city.values):
        if city:
            city_codes.setdefault(_fold(city), []).append(code)
    zip_text = np.array([(locations.zip[int(row)] or "").encode() for row in live], dtype="S10")
    zip_order = np.argsort(zip_text, kind="stable")
    return Listing(
        order=order,
        position=position,
        names="".join(folded),
        name_starts=np.concatenate(([0], np.cumsum(lengths)))[:-1] if len(folded) else _EMPTY,
        city_codes=city_codes,
        state_codes={
            str(value).upper(): code for code, value in enumerate(locations.state.values) if value
        },
        zips=zip_text[zip_order],
        zip_rows=live[zip_order],
        live=live,
        location_starts=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        location_rows=by_clinic,
    )


# ---- one clinic ----------------------------------------------------------------------------


def clinic_view(snapshot: Snapshot, row: int) -> ClinicView:
    clinics = snapshot.clinics
    found = listing(snapshot)
    return ClinicView(
        id=int(clinics.id[row]),
        active=bool(clinics.alive[row]),
        name=clinics.name[row],
        phone=clinics.phone[row],
        phone_original=clinics.phone_original[row],
        website=clinics.website[row],
        needs_review=bool(clinics.needs_review[row]),
        review_reasons=list(clinics.review_reasons[row]),
        source_file=clinics.source_file[row],
        source_text=clinics.source_text[row],
        updated_at=from_micros(int(clinics.updated[row])),
        specialty_links=[SpecialtyLink(*link) for link in clinics.evidence[row]],
        locations=[location_record(snapshot, int(n)) for n in found.locations_of(row)],
    )


def find_clinic(snapshot: Snapshot, clinic_id: int) -> ClinicView | None:
    """The active clinic with this id, or None."""
    row = snapshot.clinic_rows.get(clinic_id)
    if row is None or not snapshot.clinics.alive[row]:
        return None
    return clinic_view(snapshot, row)


def find_location(snapshot: Snapshot, clinic_id: int, location_id: int) -> LocationRecord | None:
    """The active location with this id of the active clinic with that one, or None."""
    clinic_row = snapshot.clinic_rows.get(clinic_id)
    row = snapshot.location_rows.get(location_id)
    if clinic_row is None or row is None or not snapshot.clinics.alive[clinic_row]:
        return None
    if not snapshot.locations.alive[row] or snapshot.locations.clinic[row] != clinic_row:
        return None
    return location_record(snapshot, row)


# ---- the list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    q: str | None = None
    specialties: Sequence[str] = ()
    include_possible: bool = False
    city: str | None = None
    state: str | None = None
    zip_prefix: str | None = None
    facts: FactFilter = NO_FACTS


@dataclass(frozen=True)
class ListPage:
    clinics: list[ClinicView]
    total: int
    # Per fact filter (and SPECIALTY), how many clinics were left out for it being unknown.
    excluded_unknown: dict[str, int]


def _name_matches(found: Listing, text: str) -> NDArray[np.int64]:
    """Positions (in list order) of the clinics whose folded name contains ``text``."""
    needle = text.strip().lower()
    hits: list[int] = []
    start = found.names.find(needle)
    while start >= 0:
        hits.append(start)
        # Next clinic: past the separator after this match.
        start = found.names.find(needle, found.names.index(_SEPARATOR, start) + 1)
    if not hits:
        return _EMPTY
    return np.searchsorted(found.name_starts, np.asarray(hits), side="right") - 1


def _specialty_masks(
    snapshot: Snapshot, codes: Sequence[str]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Per clinic row: on record as offering all of ``codes``; on record as lacking one."""
    evidence = snapshot.clinics.evidence
    bits = {code: bit for bit, code in enumerate(evidence.codes)}
    known = [bits[code] for code in codes if code in bits]
    mask = np.uint64(sum(1 << bit for bit in known))
    lacking: NDArray[np.bool_] = (evidence.lacking & mask) != 0
    if len(known) < len(codes):  # a code no clinic has on record: nobody offers it
        return np.zeros(len(evidence.offered), dtype=bool), lacking
    confirmed: NDArray[np.bool_] = (evidence.offered & mask) == mask
    return confirmed, lacking


def search(snapshot: Snapshot, query: ListQuery, *, offset: int, limit: int) -> ListPage:
    """One page of active clinics matching ``query`` in list order, the total, and what was
    left out for being unknown."""
    found = listing(snapshot)
    clinics = snapshot.clinics
    keep = np.zeros(len(clinics.id), dtype=bool)
    keep[found.order] = True
    if query.q:
        named = np.zeros_like(keep)
        named[found.order[_name_matches(found, query.q)]] = True
        keep &= named
    unknown_specialty = np.zeros_like(keep)
    if query.specialties:
        confirmed, lacking = _specialty_masks(snapshot, list(dict.fromkeys(query.specialties)))
        keep &= ~lacking
        if not query.include_possible:
            unknown_specialty = keep & ~confirmed
    located = _located_as_asked(snapshot, found, query)
    if located is not None:
        keep[~np.isin(np.arange(len(keep)), snapshot.locations.clinic[located])] = False
    excluded: dict[str, int] = {}
    if query.facts.active:
        keep, excluded = _by_facts(snapshot, found, query, keep, unknown_specialty, located)
    elif query.specialties and not query.include_possible:
        left_out = int(np.count_nonzero(keep & unknown_specialty))
        keep &= ~unknown_specialty
        excluded = {SPECIALTY: left_out} if left_out else {}
    listed = found.order[keep[found.order]]
    page = listed[offset : offset + limit]
    return ListPage([clinic_view(snapshot, int(row)) for row in page], len(listed), excluded)


def _located_as_asked(
    snapshot: Snapshot, found: Listing, query: ListQuery
) -> NDArray[np.int64] | None:
    """The alive location rows in the city, state and ZIP asked for (None: none asked)."""
    if not (query.city or query.state or query.zip_prefix):
        return None
    locations = snapshot.locations
    rows = found.live
    wanted = np.ones(len(rows), dtype=bool)
    if query.city:
        codes = found.city_codes.get(_fold(query.city), [])
        wanted &= np.isin(locations.city.codes[rows], codes)
    if query.state:
        wanted &= locations.state.codes[rows] == found.state_codes.get(query.state.upper(), -1)
    if query.zip_prefix:
        prefix = query.zip_prefix.encode()
        low = int(np.searchsorted(found.zips, prefix, side="left"))
        high = int(np.searchsorted(found.zips, prefix + b"\xff", side="left"))
        wanted &= np.isin(rows, found.zip_rows[low:high])
    return rows[wanted]


def _by_facts(
    snapshot: Snapshot,
    found: Listing,
    query: ListQuery,
    keep: NDArray[np.bool_],
    unknown_specialty: NDArray[np.bool_],
    located: NDArray[np.int64] | None,
) -> tuple[NDArray[np.bool_], dict[str, int]]:
    """A clinic matches when one of its locations (as asked) passes the facts; one that does
    not is counted under each name one of them was unknown for."""
    locations = snapshot.locations
    rows = located if located is not None else found.live
    clinic = locations.clinic[rows]
    rows, clinic = rows[keep[clinic]], clinic[keep[clinic]]
    verdicts = judge(facets(snapshot), (), query.facts)
    fail = verdicts.fail[rows]
    bits = verdicts.blocked(0)[rows] | np.where(
        unknown_specialty[clinic], BITS[SPECIALTY], 0
    ).astype(np.uint8)
    matched = np.zeros_like(keep)
    matched[clinic[~fail & (bits == 0)]] = True
    missed = keep & ~matched
    excluded: dict[str, int] = {}
    for name, bit in BITS.items():
        flagged = np.zeros_like(keep)
        flagged[clinic[~fail & ((bits & bit) != 0)]] = True
        count = int(np.count_nonzero(missed & flagged))
        if count:
            excluded[name] = count
    return keep & matched, excluded


# ---- the exports ---------------------------------------------------------------------------


def export_rows(snapshot: Snapshot, *, named_only: bool) -> Iterator[tuple[ClinicView, int]]:
    """(clinic, location row) for every alive location, clinics in list order, a clinic's
    locations by id; ``named_only`` leaves out clinics whose name is unknown."""
    found = listing(snapshot)
    for clinic_row in found.order:
        row = int(clinic_row)
        if named_only and snapshot.clinics.name[row] is None:
            continue
        located = found.locations_of(row)
        if len(located):
            view = clinic_view(snapshot, row)
            for location_row in located:
                yield view, int(location_row)


__all__ = [
    "ClinicView",
    "ListPage",
    "ListQuery",
    "Listing",
    "clinic_view",
    "export_rows",
    "find_clinic",
    "find_location",
    "listing",
    "search",
]
