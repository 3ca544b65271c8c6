"""Planning an import: every row checked and matched against the directory; nothing written.

The directory is read once per import into a compact index: each clinic's key (phone and
folded name) and id, each location's key (its clinic and folded address) and id, some 300
bytes a clinic. The records a chunk of rows matches are then read by id, a chunk at a time.
What the planner learns of the file (its clinics, the locations it has seen, each row's plan,
every error) goes to the scratch database (scratch.py), so memory holds a chunk of rows and
the index, whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select
from sqlmodel import Session, col

from referral.admin.imports.base import (
    CREATED,
    DEFAULT_MAX_ERRORS,
    IMPORT_SOURCE,
    OUTCOMES,
    UNCHANGED,
    UPDATED,
    Progress,
    RowError,
    SourceRow,
    collapse,
    collector_paused,
    location_key,
)
from referral.admin.imports.read import Chunk, ParsedFile, read_chunks
from referral.admin.imports.scratch import ClinicRecord, Scratch, dump, load
from referral.admin.imports.validate import ImportRow, _both_ways, _Validator
from referral.admin.service import LOCATION_FIELDS, change_diff
from referral.db import without_statement_timeout
from referral.directory.models import (
    Clinic,
    ClinicSpecialty,
    GeocodePrecision,
    Location,
    Specialty,
)
from referral.geo.chain import GeocoderChain, GeocodeResult

# Entries read back from the scratch database at a time.
_READ_BATCH = 2000

# ---- the directory ------------------------------------------------------------------------


@dataclass
class DirectoryIndex:
    """What rows are matched against, read once per import: keys and ids only."""

    # clinic_key -> id: the active clinic when several share a key, else the oldest.
    clinics: dict[str, int]
    # A folded name -> the ids of every clinic with it (an id, or a tuple of ids).
    names: dict[str, int | tuple[int, ...]]
    # f"{clinic id}\t{location_key}" -> id: the active location, else the oldest.
    locations: dict[str, int]
    known_specialties: set[str]


_INDEX_BATCH = 10_000


# Core tables: these reads are plain rows, with none of the ORM's per-row work.
_CLINIC = Clinic.__table__  # type: ignore[attr-defined]
_LOCATION = Location.__table__  # type: ignore[attr-defined]
_LINK = ClinicSpecialty.__table__  # type: ignore[attr-defined]


def load_index(session: Session) -> DirectoryIndex:
    with without_statement_timeout(session.connection()) as connection:
        return _load_index(connection)


def _load_index(connection: Connection) -> DirectoryIndex:
    """(A whole read of the directory's keys: long by nature, at some 100,000 clinics.)"""
    clinics: dict[str, int] = {}
    names: dict[str, int | tuple[int, ...]] = {}
    inactive: set[str] = set()  # keys whose clinic so far is inactive
    query = (
        select(_CLINIC.c.id, _CLINIC.c.name, _CLINIC.c.phone, _CLINIC.c.active)
        .order_by(_CLINIC.c.id)
        .execution_options(yield_per=_INDEX_BATCH)
    )
    for clinic_id, name, phone, active in connection.execute(query):
        if name is None:
            continue  # an unknown name matches no row (rows need a name)
        folded = collapse(name).casefold()
        key = f"{phone or ''}\t{folded}"  # clinic_key(name, phone)
        if key not in clinics or (active and key in inactive):
            clinics[key] = clinic_id
            if active:
                inactive.discard(key)
            else:
                inactive.add(key)
        known = names.get(folded)
        names[folded] = (
            clinic_id
            if known is None
            else (*known, clinic_id)
            if isinstance(known, tuple)
            else (known, clinic_id)
        )
    locations: dict[str, int] = {}
    inactive.clear()
    query = (
        select(
            _LOCATION.c.id, _LOCATION.c.clinic_id, _LOCATION.c.address_line1, _LOCATION.c.city,
            _LOCATION.c.state, _LOCATION.c.zip, _LOCATION.c.active,
        )
        .order_by(_LOCATION.c.id)
        .execution_options(yield_per=_INDEX_BATCH)
    )  # fmt: skip
    for location_id, clinic_id, address, city, state, zip_code, active in connection.execute(query):
        key = f"{clinic_id}\t{location_key(address, city, state, zip_code)}"
        if key not in locations or (active and key in inactive):
            locations[key] = location_id
            if active:
                inactive.discard(key)
            else:
                inactive.add(key)
    return DirectoryIndex(
        clinics=clinics,
        names=names,
        locations=locations,
        known_specialties=set(connection.execute(select(col(Specialty.code))).scalars()),
    )


@dataclass(slots=True)
class StoredClinic:
    id: int
    name: str | None
    phone: str | None
    phone_original: str | None
    website: str | None
    active: bool
    version: int
    specialties: tuple[str, ...] = ()  # sorted, on record as offered
    not_offered: tuple[str, ...] = ()  # sorted, on record as not offered


@dataclass(slots=True)
class StoredLocation:
    id: int
    active: bool
    version: int
    values: dict[str, Any]  # LOCATION_FIELDS


def _id_batches(ids: Iterable[int]) -> Iterator[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), _INDEX_BATCH):
        yield ordered[start : start + _INDEX_BATCH]


def stored_clinics(session: Session, ids: Iterable[int]) -> dict[int, StoredClinic]:
    connection = session.connection()
    found: dict[int, StoredClinic] = {}
    for batch in _id_batches(ids):
        for row in connection.execute(
            select(
                _CLINIC.c.id, _CLINIC.c.name, _CLINIC.c.phone, _CLINIC.c.phone_original,
                _CLINIC.c.website, _CLINIC.c.active, _CLINIC.c.version,
            ).where(_CLINIC.c.id.in_(batch))
        ):  # fmt: skip
            found[row[0]] = StoredClinic(*row)
        offered: dict[int, list[str]] = {}
        lacking: dict[int, list[str]] = {}
        for clinic_id, code, is_offered in connection.execute(
            select(_LINK.c.clinic_id, _LINK.c.specialty_code, _LINK.c.offered)
            .where(_LINK.c.clinic_id.in_(batch))
            .order_by(_LINK.c.clinic_id, _LINK.c.specialty_code)
        ):
            (offered if is_offered else lacking).setdefault(clinic_id, []).append(code)
        for clinic_id, codes in offered.items():
            found[clinic_id].specialties = tuple(codes)
        for clinic_id, codes in lacking.items():
            found[clinic_id].not_offered = tuple(codes)
    return found


_STORED_LOCATION = select(
    _LOCATION.c.id, _LOCATION.c.version, *(_LOCATION.c[name] for name in LOCATION_FIELDS)
)


def stored_locations(session: Session, ids: Iterable[int]) -> dict[int, StoredLocation]:
    connection = session.connection()
    found: dict[int, StoredLocation] = {}
    for batch in _id_batches(ids):
        for row in connection.execute(_STORED_LOCATION.where(_LOCATION.c.id.in_(batch))):
            values = dict(zip(LOCATION_FIELDS, row[2:], strict=True))
            found[row[0]] = StoredLocation(row[0], values["active"], row[1], values)
    return found


class _Places:
    """Offline geocoding, cached per (city, state, ZIP) for the import (so at most one entry
    per place the gazetteer knows, whatever the file's size)."""

    def __init__(self, geocoder: GeocoderChain) -> None:
        self.geocoder = geocoder
        self._cache: dict[tuple[str, str, str], GeocodeResult | None] = {}

    def find(
        self, city: str, state: str, zip_code: str | None, folded_city: str | None = None
    ) -> GeocodeResult | None:
        """``folded_city``: collapse(city).casefold(), when the caller has it."""
        if folded_city is None:
            folded_city = collapse(city).casefold()
        key = (folded_city, state, zip_code or "")
        try:
            return self._cache[key]
        except KeyError:
            found = self._cache[key] = self.geocoder.location(
                address_line1=None, city=city, state=state, zip_code=zip_code, use_network=False
            )
            return found


# ---- plans --------------------------------------------------------------------------------


@dataclass(slots=True)
class ClinicPlan:
    id: int | None
    name: str
    phone: str | None
    phone_original: str | None
    website: str | None
    # Sorted. Until _settle_clinic: as given, else as stored; then as they will be stored.
    specialties: tuple[str, ...]
    specialties_not_offered: tuple[str, ...]
    first_row: int
    active: bool = True
    version: int = 1
    before: dict[str, Any] | None = None  # the stored state, for an existing clinic
    website_row: int | None = None  # the row that set the website, for conflicts
    specialties_row: int | None = None
    not_offered_row: int | None = None
    action: str = UNCHANGED
    idx: int = 0  # its number in the scratch database
    planned: bool = False  # a row of it is planned (else it is not part of the plan)

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phone": self.phone,
            "phone_original": self.phone_original,
            "website": self.website,
            "active": self.active,
            "specialties": list(self.specialties),
            "specialties_not_offered": list(self.specialties_not_offered),
        }

    def record(self, key: str) -> ClinicRecord:
        """As the scratch database keeps it."""
        return (self.idx, key, self.id, self.action, self.planned, dump(self._stored()))

    def _stored(self) -> tuple[Any, ...]:
        return (
            self.name, self.phone, self.phone_original, self.website, self.specialties,
            self.specialties_not_offered, self.first_row, self.active, self.version,
            self.before, self.website_row, self.specialties_row, self.not_offered_row,
        )  # fmt: skip

    def stored_state(self) -> bytes:
        return dump(self._stored())

    @classmethod
    def from_record(cls, record: ClinicRecord) -> ClinicPlan:
        """A clinic as the scratch database keeps it (ClinicPlan.record)."""
        idx, _, clinic_id, action, planned, state = record
        (name, phone, phone_original, website, specialties, not_offered, first_row, active,
         version, before, website_row, specialties_row, not_offered_row) = load(state)  # fmt: skip
        return cls(
            clinic_id, name, phone, phone_original, website, specialties, not_offered,
            first_row, active, version, before, website_row, specialties_row, not_offered_row,
            action, idx, bool(planned),
        )  # fmt: skip


@dataclass(slots=True)
class LocationPlan:
    row: int
    clinic: ClinicPlan
    id: int | None
    values: dict[str, Any]  # LOCATION_FIELDS
    before: dict[str, Any] | None = None
    version: int = 1
    action: str = CREATED
    notes: list[str] = field(default_factory=list)

    def record(self) -> tuple[int, int, int | None, str, bytes]:
        """As the scratch database keeps it (the stored values only for an update: the
        change log's diff)."""
        before = None
        if self.action == UPDATED and self.before is not None:
            before = tuple(map(self.before.get, LOCATION_FIELDS))
        values = tuple(map(self.values.__getitem__, LOCATION_FIELDS))
        state = dump((values, before, self.version, self.notes))
        return (self.row, self.clinic.idx, self.id, self.action, state)


def location_state(
    state: bytes,
) -> tuple[dict[str, Any], dict[str, Any] | None, int, list[str]]:
    """A planned row's (values, stored values of an update, version, notes)."""
    values, before, version, notes = load(state)
    return (
        dict(zip(LOCATION_FIELDS, values, strict=True)),
        None if before is None else dict(zip(LOCATION_FIELDS, before, strict=True)),
        version,
        notes,
    )


def row_action(location_action: str, clinic_action: str) -> str:
    """A row is updated when its location is unchanged but its clinic changed."""
    if location_action == UNCHANGED and clinic_action != UNCHANGED:
        return UPDATED
    return location_action


def row_entry(
    row: int,
    location_action: str,
    location_id: int | None,
    location_state_: bytes,
    clinic_action: str,
    clinic_id: int | None,
    clinic_state: bytes,
) -> dict[str, Any]:
    """A planned row as the API answers it (RowPlanSchema)."""
    values, _, _, notes = load(location_state_)
    clinic = load(clinic_state)
    return {
        "row": row,
        "action": row_action(location_action, clinic_action),
        "clinic": {
            "action": clinic_action,
            "id": clinic_id,
            "name": clinic[0],
            "phone": clinic[1],
        },
        "location": {
            "action": location_action,
            "id": location_id,
            "address": values[_ADDRESS],
            "city": values[_CITY],
            "state": values[_STATE],
            "zip": values[_ZIP],
        },
        "notes": notes,
    }


_ADDRESS, _CITY, _STATE, _ZIP = (
    LOCATION_FIELDS.index(name) for name in ("address_line1", "city", "state", "zip")
)


@dataclass
class ImportPlan:
    """A planned file: its counts and first errors here, the rest in its scratch database.

    Close it when done (``close`` or ``with``): the scratch database goes then."""

    format: str
    rows_read: int
    errors: list[RowError]  # the first max_errors, in row order
    error_count: int
    error_rows: int  # how many rows (or the file) have errors
    scratch: Scratch
    _counts: dict[str, dict[str, int]]

    def __enter__(self) -> ImportPlan:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.scratch.close()

    @property
    def valid(self) -> bool:
        return self.error_count == 0

    def counts(self) -> dict[str, dict[str, int]]:
        return {kind: dict(counts) for kind, counts in self._counts.items()}

    @property
    def planned_rows(self) -> int:
        return sum(self._counts["rows"].values())

    @property
    def write_count(self) -> int:
        """Statements' worth of rows apply_import writes (for a progress bar)."""
        clinics = self._counts["clinics"]
        locations = self._counts["locations"]
        return 2 * (clinics[CREATED] + clinics[UPDATED] + locations[CREATED] + locations[UPDATED])

    def row_plans(self) -> Iterator[dict[str, Any]]:
        """Every planned row in file order, as the API answers it (with the ids of what was
        created, once applied)."""
        for batch in self.scratch.location_batches(_READ_BATCH):
            for row, _, location_id, action, state, clinic_id, clinic_action, clinic in batch:
                yield row_entry(row, action, location_id, state, clinic_action, clinic_id, clinic)

    def row_errors(self) -> Iterator[RowError]:
        """Every error, in row order."""
        for batch in self.scratch.error_batches(_READ_BATCH):
            yield from batch

    def report(self, *, dry_run: bool) -> dict[str, Any]:
        return {
            "dry_run": dry_run,
            "valid": self.valid,
            "format": self.format,
            "rows_read": self.rows_read,
            "counts": self.counts(),
            "error_count": self.error_count,
            "error_rows": self.error_rows,
            "errors": [error.as_dict() for error in self.errors],
            "plan_entries": self.planned_rows,
        }


# ---- planning -----------------------------------------------------------------------------


def plan_import(
    session: Session,
    parsed: ParsedFile,
    geocoder: GeocoderChain,
    *,
    progress: Progress | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
) -> ImportPlan:
    """Plan a file already read into memory (read_import): see plan_chunks."""
    return plan_chunks(
        session, parsed.format, parsed.chunks(), geocoder, progress=progress, max_errors=max_errors
    )


def plan_stream(
    session: Session,
    stream: Any,
    fmt: str,
    geocoder: GeocoderChain,
    *,
    progress: Progress | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
) -> ImportPlan:
    """Plan a file read from a binary stream as it is planned: see plan_chunks."""
    return plan_chunks(
        session, fmt, read_chunks(stream, fmt), geocoder, progress=progress, max_errors=max_errors
    )


def plan_chunks(
    session: Session,
    fmt: str,
    chunks: Iterable[Chunk],
    geocoder: GeocoderChain,
    *,
    progress: Progress | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
) -> ImportPlan:
    """Validate every row and match it against the directory; write nothing. ``progress`` is
    called with each chunk's number of rows."""
    planner = _Planner(session, geocoder)
    try:
        for rows, errors in chunks:
            with collector_paused():
                planner.feed(rows, errors)
            if progress is not None:
                progress(len(rows))
        return planner.finish(fmt, max_errors)
    except BaseException:
        planner.scratch.close()
        raise


class _Planner:
    def __init__(self, session: Session, geocoder: GeocoderChain) -> None:
        self.session = session
        self.index = load_index(session)
        self.validator = _Validator(self.index.known_specialties)
        self.places = _Places(geocoder)
        self.scratch = Scratch()
        self.rows_read = 0
        self._clinics = 0  # the number the next new clinic gets

    def feed(self, sources: list[SourceRow], read_errors: Sequence[RowError]) -> None:
        """Plan a chunk of rows: its clinics read from (and written back to) the scratch
        database, the stored records it matches read by id."""
        self.rows_read += len(sources)
        errors = list(read_errors)
        valid = [row for row in self.validator.rows(sources, errors) if row is not None]
        # clinic_key and location_key, knowing that a valid row's name is collapsed already,
        # its state a two-letter code and its ZIP without spaces.
        keys = [f"{row.phone or ''}\t{row.name.casefold()}" for row in valid]
        cities = [collapse(row.city).casefold() for row in valid]
        wheres = [
            f"{collapse(row.address).casefold()}\t{city}\t{row.state.casefold()}\t"
            f"{(row.zip or '').casefold()}"
            for row, city in zip(valid, cities, strict=True)
        ]
        clinics = {
            record[1]: ClinicPlan.from_record(record)
            for record in self.scratch.clinics(list(dict.fromkeys(keys)))
        }
        index = self.index
        stored = stored_clinics(
            self.session,
            {
                clinic_id
                for key in keys
                if key not in clinics and (clinic_id := index.clinics.get(key)) is not None
            },
        )
        location_ids = {}  # row -> the stored location it matches
        for row, key, where in zip(valid, keys, wheres, strict=True):
            plan = clinics.get(key)
            clinic_id = plan.id if plan is not None else index.clinics.get(key)
            if clinic_id is not None:
                found = index.locations.get(f"{clinic_id}\t{where}")
                if found is not None:
                    location_ids[row.row] = found
        locations = stored_locations(self.session, location_ids.values())
        seen = self.scratch.seen(
            [f"{clinics[key].idx}\t{where}" for key, where in zip(keys, wheres, strict=True)
             if key in clinics]
        )  # fmt: skip
        new_seen: list[tuple[str, int]] = []
        planned: list[LocationPlan] = []
        for row, key, where, city in zip(valid, keys, wheres, cities, strict=True):
            clinic = clinics.get(key)
            if clinic is None:
                clinic = clinics[key] = self._clinic_plan(row, index.clinics.get(key), stored)
            elif not _agrees(clinic, row, errors):
                continue
            seen_key = f"{clinic.idx}\t{where}"
            first = seen.setdefault(seen_key, row.row)
            if first != row.row:
                errors.append(RowError(row.row, "address", f"the same location as row {first}"))
                continue
            new_seen.append((seen_key, row.row))
            found = location_ids.get(row.row)
            location = _location_plan(
                row,
                city,
                clinic,
                locations.get(found) if found is not None else None,
                index,
                self.places,
                errors,
            )
            if location is not None:
                clinic.planned = True
                planned.append(location)
        scratch = self.scratch
        scratch.put_clinics(plan.record(key) for key, plan in clinics.items())
        scratch.put_seen(new_seen)
        scratch.put_locations(location.record() for location in planned)
        errors.sort(key=lambda error: error.row)
        scratch.put_errors(errors)
        scratch.commit()

    def _clinic_plan(
        self, row: ImportRow, clinic_id: int | None, stored: dict[int, StoredClinic]
    ) -> ClinicPlan:
        plan = _clinic_plan(row, stored.get(clinic_id) if clinic_id is not None else None)
        plan.idx = self._clinics
        self._clinics += 1
        return plan

    def finish(self, fmt: str, max_errors: int) -> ImportPlan:
        """Settle each stored clinic (its specialties, whether it changes; a new one is
        settled as planned) and count."""
        scratch = self.scratch
        for batch in scratch.clinic_batches(_READ_BATCH, stored_only=True):
            settled = []
            for record in batch:
                clinic = ClinicPlan.from_record(record)
                _settle_clinic(clinic)
                settled.append((clinic.action, clinic.stored_state(), clinic.idx))
            scratch.set_clinics(settled)
        scratch.commit()
        counts = {kind: dict.fromkeys(OUTCOMES, 0) for kind in ("rows", "clinics", "locations")}
        counts["clinics"].update(scratch.clinic_counts())
        for location_action, clinic_action, number in scratch.row_counts():
            counts["locations"][location_action] += number
            counts["rows"][row_action(location_action, clinic_action)] += number
        return ImportPlan(
            format=fmt,
            rows_read=self.rows_read,
            errors=scratch.first_errors(max_errors),
            error_count=scratch.errors,
            error_rows=scratch.error_rows() if scratch.errors else 0,
            scratch=scratch,
            _counts=counts,
        )


def _clinic_plan(row: ImportRow, stored: StoredClinic | None) -> ClinicPlan:
    website_given = row.website is not None  # "website" in row.given
    specialties_given = row.specialties is not None
    not_offered_given = row.specialties_not_offered is not None
    if stored is None:
        return ClinicPlan(
            id=None,
            name=row.name,
            phone=row.phone,
            phone_original=row.phone_original if row.phone else None,
            website=row.website,
            specialties=row.specialties or (),
            specialties_not_offered=row.specialties_not_offered or (),
            first_row=row.row,
            website_row=row.row if website_given else None,
            specialties_row=row.row if specialties_given else None,
            not_offered_row=row.row if not_offered_given else None,
            action=CREATED,
        )
    plan = ClinicPlan(
        id=stored.id,
        name=row.name,
        phone=stored.phone,
        phone_original=stored.phone_original,
        website=row.website if website_given else stored.website,
        specialties=row.specialties if row.specialties is not None else stored.specialties,
        specialties_not_offered=(
            row.specialties_not_offered
            if row.specialties_not_offered is not None
            else stored.not_offered
        ),
        first_row=row.row,
        active=stored.active,
        version=stored.version,
        website_row=row.row if website_given else None,
        specialties_row=row.row if specialties_given else None,
        not_offered_row=row.row if not_offered_given else None,
    )
    plan.before = {
        "name": stored.name,
        "phone": stored.phone,
        "phone_original": stored.phone_original,
        "website": stored.website,
        "active": stored.active,
        "specialties": list(stored.specialties),
        "specialties_not_offered": list(stored.not_offered),
    }
    return plan


# Each specialty column, the plan's attribute naming the row that gave it, the other column,
# and how a row contradicting the other column's earlier row is told.
_SPECIALTY_SIDES = (
    ("specialties", "specialties_row", "specialties_not_offered", "not_offered_row",
     "also listed as not offered in row {}"),
    ("specialties_not_offered", "not_offered_row", "specialties", "specialties_row",
     "also listed as offered in row {}"),
)  # fmt: skip


def _agrees(clinic: ClinicPlan, row: ImportRow, errors: list[RowError]) -> bool:
    """Rows of one clinic must say the same of it; a later row may fill in what earlier ones
    left out."""
    same = f"differs from row {{}} for the same clinic ({clinic.name})"
    ok = True
    if row.name != clinic.name:
        errors.append(RowError(row.row, "clinic_name", same.format(clinic.first_row)))
        ok = False
    if row.website is not None:  # "website" in row.given
        if clinic.website_row is None:
            clinic.website, clinic.website_row = row.website, row.row
        elif row.website != clinic.website:
            errors.append(RowError(row.row, "website", same.format(clinic.website_row)))
            ok = False
    for column, first_row, other, other_row, clash in _SPECIALTY_SIDES:
        value = getattr(row, column)
        if value is None:
            continue
        first, other_first = getattr(clinic, first_row), getattr(clinic, other_row)
        reason = None
        if first is not None:
            if value != getattr(clinic, column):
                reason = same.format(first)
        elif other_first is not None:
            reason = _both_ways(value, getattr(clinic, other), clash.format(other_first))
        if reason:
            errors.append(RowError(row.row, column, reason))
            ok = False
        elif first is None:
            setattr(clinic, column, value)
            setattr(clinic, first_row, row.row)
    return ok


def _settle_clinic(clinic: ClinicPlan) -> None:
    # The newer statement wins: codes given in one column leave the other's stored set,
    # unless the file gives that one too (then the two never share a code: _agrees).
    offered_given = clinic.specialties_row is not None
    lacking_given = clinic.not_offered_row is not None
    if offered_given and not lacking_given and clinic.specialties_not_offered:
        offered = set(clinic.specialties)
        clinic.specialties_not_offered = tuple(
            code for code in clinic.specialties_not_offered if code not in offered
        )
    elif lacking_given and not offered_given and clinic.specialties:
        lacking = set(clinic.specialties_not_offered)
        clinic.specialties = tuple(code for code in clinic.specialties if code not in lacking)
    if clinic.before is None:
        clinic.action = CREATED
    else:
        clinic.action = UPDATED if change_diff(clinic.before, clinic.state()) else UNCHANGED


_NEW_LOCATION: dict[str, Any] = dict.fromkeys(LOCATION_FIELDS) | {"active": True}


def _location_plan(
    row: ImportRow,
    folded_city: str,
    clinic: ClinicPlan,
    stored: StoredLocation | None,
    index: DirectoryIndex,
    places: _Places,
    errors: list[RowError],
) -> LocationPlan | None:
    """``stored``: the clinic's stored location at the row's address, if any."""
    values: dict[str, Any] = dict(stored.values if stored is not None else _NEW_LOCATION)
    values.update(address_line1=row.address, city=row.city, state=row.state, zip=row.zip)
    notes: list[str] = []
    if row.lat is not None and row.lon is not None:
        if stored is None or (stored.values["lat"], stored.values["lon"]) != (row.lat, row.lon):
            zone = places.find(row.city, row.state, row.zip, folded_city)
            values.update(
                lat=row.lat,
                lon=row.lon,
                geocode_precision=GeocodePrecision.MANUAL.value,
                geocode_source=IMPORT_SOURCE,
                time_zone=zone.time_zone if zone is not None else values["time_zone"],
            )
    elif values["lat"] is None or values["lon"] is None:
        found = places.find(row.city, row.state, row.zip, folded_city)
        if found is not None:
            values.update(
                lat=found.lat,
                lon=found.lon,
                geocode_precision=found.precision.value,
                geocode_source=found.source,
                time_zone=found.time_zone,
            )
        elif stored is None:
            errors.append(
                RowError(
                    row.row,
                    "address",
                    "could not be geocoded offline from city, state and ZIP; give lat and lon",
                )
            )
            return None
    if clinic.id is None:
        # No stored clinic has the row's name and phone: any with its name has another phone.
        others = index.names.get(row.name.casefold())
        if others is not None:
            ids = others if isinstance(others, tuple) else (others,)
            notes.append(
                "a separate clinic is made: the directory has this name with another phone "
                f"(clinic {', '.join(map(str, ids))})"
            )
    if not clinic.active:
        notes.append(f"clinic {clinic.id} is inactive; an import does not reactivate it")
    if stored is None:
        return LocationPlan(row.row, clinic, None, values, notes=notes)
    if not stored.active:
        notes.append(f"location {stored.id} is inactive; an import does not reactivate it")
    changed = bool(change_diff(stored.values, values))
    return LocationPlan(
        row.row,
        clinic,
        stored.id,
        values,
        before=stored.values,
        version=stored.version,
        action=UPDATED if changed else UNCHANGED,
        notes=notes,
    )


__all__ = [
    "ClinicPlan",
    "DirectoryIndex",
    "ImportPlan",
    "LocationPlan",
    "load_index",
    "plan_chunks",
    "plan_import",
    "plan_stream",
]
