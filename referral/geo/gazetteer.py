"""Offline US gazetteer on the ``zipcodes`` package: ZIP centroids and city centroids.

Reading all of ``zipcodes`` costs seconds and ~200 MB, so it is done once, in a child process,
into a packed file of sorted arrays in the instance folder; every worker then loads that file
in milliseconds and keeps ~4 MB (as dicts of lists it was ~50 MB a worker).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from referral.directory.models import GeocodePrecision

ZIPCODES_VERSION = version("zipcodes")
SOURCE = f"zipcodes {ZIPCODES_VERSION}"

ZIP_RE = re.compile(r"^([0-9]{5})(?:-[0-9]{4})?\Z")


@dataclass(frozen=True, slots=True)
class Place:
    lat: float
    lon: float
    precision: GeocodePrecision
    source: str
    city: str
    state: str
    zip: str | None
    time_zone: str | None

    @property
    def label(self) -> str:
        where = f"{self.city}, {self.state}"
        return f"{where} {self.zip}" if self.zip else where


_ABBREVIATIONS = {"st": "saint", "ste": "sainte", "ft": "fort", "mt": "mount"}


def normalize_city(name: str) -> str:
    """Compare city names loosely: case, dots, spacing and St./Ft./Mt. do not matter."""
    words = name.replace(".", " ").casefold().split()
    return " ".join(_ABBREVIATIONS.get(word, word) for word in words)


@dataclass(frozen=True, slots=True)
class _ZipRecord:
    zip: str
    city: str
    state: str
    lat: float
    lon: float
    time_zone: str | None
    standard: bool


def build_index(rows: list[list[Any]]) -> dict[str, Any]:
    """From ``read_zipcodes`` rows, the compact lookup tables the Gazetteer serves from:
    ``zips``: zip -> [city, state, lat, lon, time zone];
    ``cities``: "normalized city|ST" -> [city, lat, lon, ZIPs averaged, time zone];
    ``states``: normalized city -> states where it is a primary USPS city name."""
    zips: dict[str, list[Any]] = {}
    primary: dict[tuple[str, str], list[_ZipRecord]] = {}
    alias: dict[tuple[str, str], list[_ZipRecord]] = {}
    alias_names: dict[tuple[str, str], str] = {}
    for zip_code, city, state, lat, lon, time_zone, standard, acceptable in rows:
        record = _ZipRecord(zip_code, city, state, lat, lon, time_zone, standard)
        zips[zip_code] = [city, state, lat, lon, time_zone]
        primary.setdefault((normalize_city(city), state), []).append(record)
        for other in acceptable:
            key = (normalize_city(other), state)
            alias.setdefault(key, []).append(record)
            alias_names.setdefault(key, other.title() if other.isupper() else other)
    cities: dict[str, list[Any]] = {}
    # A primary city name wins over the same name used as an alias elsewhere in the state.
    for key, records in alias.items():
        cities[f"{key[0]}|{key[1]}"] = _centroid(records, alias_names[key])
    for key, records in primary.items():
        cities[f"{key[0]}|{key[1]}"] = _centroid(records, records[0].city)
    states: dict[str, list[str]] = {}
    for name, state in sorted(primary):
        states.setdefault(name, []).append(state)
    return {"zips": zips, "cities": cities, "states": states}


def _centroid(records: list[_ZipRecord], city: str) -> list[Any]:
    # Street-delivery ZIPs describe where people are; PO box ZIPs sit on post offices.
    chosen = [r for r in records if r.standard] or records
    zones = [r.time_zone for r in chosen if r.time_zone]
    return [
        city,
        round(statistics.fmean(r.lat for r in chosen), 6),
        round(statistics.fmean(r.lon for r in chosen), 6),
        len(chosen),
        statistics.mode(zones) if zones else None,
    ]


class _Strings:
    """Many short strings as one ``str`` and an array of offsets: two objects, not thousands
    (a Python ``str`` costs ~50 bytes of overhead; most of these are 10 characters)."""

    __slots__ = ("_offsets", "_text")

    def __init__(self, text: str, offsets: array[int]) -> None:
        self._text = text
        self._offsets = offsets

    @classmethod
    def of(cls, items: list[str]) -> _Strings:
        offsets = array("I", [0])
        for item in items:
            offsets.append(offsets[-1] + len(item))
        return cls("".join(items), offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self._text[self._offsets[index] : self._offsets[index + 1]]

    # bisect works on anything with __len__ and __getitem__: no list of the strings is made.
    def find(self, item: str) -> int | None:
        """The index of ``item`` in this (sorted) table, or None."""
        at = bisect_left(self, item)
        return at if at < len(self) and self[at] == item else None

    def with_prefix(self, prefix: str) -> range:
        """The indexes of the items starting with ``prefix`` (contiguous: the table is sorted)."""
        start = bisect_left(self, prefix)
        end = start
        while end < len(self) and self[end].startswith(prefix):
            end += 1
        return range(start, end)


# The packed tables: name -> typecode ("s": a _Strings), in file order. Parallel arrays:
# ``zip_*`` by ascending ZIP, ``city_*`` by ascending "normalized city|ST" key.
_LAYOUT = {
    "names": "s",  # display names of cities, sorted; zip_name and city_name index them
    "zip_code": "I",  # the ZIP as a number
    "zip_name": "I",
    "zip_state": "B",  # index into the header's states
    "zip_zone": "B",  # index into the header's zones (0: unknown)
    "zip_lat": "d",
    "zip_lon": "d",
    "city_key": "s",
    "city_name": "I",
    "city_zone": "B",
    "city_count": "I",  # how many ZIP centroids were averaged
    "city_primary": "B",  # 1: a primary USPS city name in that state, 0: only an alias
    "city_lat": "d",
    "city_lon": "d",
}
_FORMAT = 2


class Gazetteer:
    """Serves lookups from packed, sorted arrays (see ``pack``): a binary search each.

    The same answers as the dict tables of ``build_index`` in a tenth of the memory: ~4 MB
    a process instead of ~50 MB of dicts, lists and small strings."""

    def __init__(self, tables: dict[str, Any], states: list[str], zones: list[str | None]) -> None:
        self._t = tables
        self._states = states
        self._zones = zones

    @classmethod
    def from_index(cls, index: dict[str, Any]) -> Gazetteer:
        return cls(*pack(index))

    def zip_place(self, zip_code: str) -> Place | None:
        match = ZIP_RE.match(zip_code.strip())
        if match is None:
            return None
        codes: array[int] = self._t["zip_code"]
        number = int(match.group(1))
        at = bisect_left(codes, number)
        if at == len(codes) or codes[at] != number:
            return None
        t = self._t
        return Place(
            lat=t["zip_lat"][at],
            lon=t["zip_lon"][at],
            precision=GeocodePrecision.POSTAL_CODE,
            source=f"{SOURCE}: ZIP centroid",
            city=t["names"][t["zip_name"][at]],
            state=self._states[t["zip_state"][at]],
            zip=match.group(1),
            time_zone=self._zones[t["zip_zone"][at]],
        )

    def zip_codes(self) -> list[str]:
        """Every ZIP it knows, ascending (synthetic data for benchmarks draws from them)."""
        return [f"{number:05d}" for number in self._t["zip_code"]]

    def city_place(self, city: str, state: str) -> Place | None:
        state = state.strip().upper()
        at = self._t["city_key"].find(f"{normalize_city(city)}|{state}")
        if at is None:
            return None
        t = self._t
        return Place(
            lat=t["city_lat"][at],
            lon=t["city_lon"][at],
            precision=GeocodePrecision.CITY,
            source=f"{SOURCE}: mean of {t['city_count'][at]} ZIP centroids",
            city=t["names"][t["city_name"][at]],
            state=state,
            zip=None,
            time_zone=self._zones[t["city_zone"][at]],
        )

    def states_with_city(self, city: str) -> list[str]:
        """States where ``city`` is a primary USPS city name (used to flag, never to fill)."""
        prefix = f"{normalize_city(city)}|"
        keys: _Strings = self._t["city_key"]
        primary: array[int] = self._t["city_primary"]
        return [keys[at][len(prefix) :] for at in keys.with_prefix(prefix) if primary[at]]


def pack(index: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str | None]]:
    """The dict tables of ``build_index`` as parallel arrays (``_LAYOUT``), the state codes
    and the time zones (zones[0] is None: unknown)."""
    zips: dict[str, list[Any]] = {
        code: row for code, row in index["zips"].items() if ZIP_RE.match(code)
    }
    cities: dict[str, list[Any]] = index["cities"]
    primary = {f"{name}|{state}" for name, states in index["states"].items() for state in states}
    if any(key.count("|") != 1 for key in cities):
        raise ValueError("a normalized city name contains '|'")
    names = sorted({row[0] for row in zips.values()} | {row[0] for row in cities.values()})
    name_at = {name: at for at, name in enumerate(names)}
    states = sorted({row[1] for row in zips.values()} | {key.split("|")[1] for key in cities})
    state_at = {state: at for at, state in enumerate(states)}
    found_zones = {row[4] for row in zips.values()} | {row[4] for row in cities.values()}
    zones: list[str | None] = [None, *sorted(zone for zone in found_zones if zone)]
    zone_at = {zone: at for at, zone in enumerate(zones)}
    if len(states) > 255 or len(zones) > 255:
        raise ValueError("too many states or time zones for one byte")
    zip_codes = sorted(zips)
    city_keys = sorted(cities)
    t: dict[str, Any] = {
        "names": _Strings.of(names),
        "zip_code": array("I", (int(code) for code in zip_codes)),
        "zip_name": array("I", (name_at[zips[code][0]] for code in zip_codes)),
        "zip_state": array("B", (state_at[zips[code][1]] for code in zip_codes)),
        "zip_zone": array("B", (zone_at[zips[code][4]] for code in zip_codes)),
        "zip_lat": array("d", (float(zips[code][2]) for code in zip_codes)),
        "zip_lon": array("d", (float(zips[code][3]) for code in zip_codes)),
        "city_key": _Strings.of(city_keys),
        "city_name": array("I", (name_at[cities[key][0]] for key in city_keys)),
        "city_zone": array("B", (zone_at[cities[key][4]] for key in city_keys)),
        "city_count": array("I", (cities[key][3] for key in city_keys)),
        "city_primary": array("B", (key in primary for key in city_keys)),
        "city_lat": array("d", (float(cities[key][1]) for key in city_keys)),
        "city_lon": array("d", (float(cities[key][2]) for key in city_keys)),
    }
    return t, states, zones


def save(path: Path, gazetteer: Gazetteer) -> None:
    """One JSON header line, then each table's bytes in ``_LAYOUT`` order (machine order)."""
    chunks: list[bytes] = []
    sizes: list[int] = []
    for name, typecode in _LAYOUT.items():
        table = gazetteer._t[name]
        if typecode == "s":
            chunks.append(table._text.encode("utf-8"))
            chunks.append(table._offsets.tobytes())
            sizes.extend((len(chunks[-2]), len(chunks[-1])))
        else:
            chunks.append(table.tobytes())
            sizes.append(len(chunks[-1]))
    header = {
        "format": _FORMAT,
        "byteorder": sys.byteorder,
        "itemsizes": {code: array(code).itemsize for code in "BId"},
        "states": gazetteer._states,
        "zones": gazetteer._zones,
        "sizes": sizes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n")
        for chunk in chunks:
            tmp.write(chunk)
    # Atomic: a worker never reads a half-written file, and racing builders agree.
    os.replace(tmp.name, path)


def load(path: Path) -> Gazetteer | None:
    """The gazetteer saved at ``path``; None when the file was written by another format or
    another kind of machine (then it is rebuilt)."""
    data = memoryview(path.read_bytes())
    end = bytes(data[:4096]).find(b"\n")
    if end < 0:
        return None
    header = json.loads(bytes(data[:end]))
    itemsizes = {code: array(code).itemsize for code in "BId"}
    if (
        header.get("format") != _FORMAT
        or header.get("byteorder") != sys.byteorder
        or header.get("itemsizes") != itemsizes
    ):
        return None
    sizes = iter(header["sizes"])
    position = end + 1

    def take() -> memoryview:
        nonlocal position
        size = next(sizes)
        chunk = data[position : position + size]
        position += size
        return chunk

    tables: dict[str, Any] = {}
    for name, typecode in _LAYOUT.items():
        if typecode == "s":
            text = str(take(), "utf-8")
            offsets = array("I")
            offsets.frombytes(take())
            tables[name] = _Strings(text, offsets)
        else:
            table = array(typecode)
            table.frombytes(take())
            tables[name] = table
    if position != len(data):
        return None
    return Gazetteer(tables, list(header["states"]), list(header["zones"]))


def read_zipcodes() -> list[list[Any]]:
    """The package's ZIPs as compact rows: zip, city, state, lat, lon, time zone, is a
    street-delivery ZIP, other accepted city names."""
    import zipcodes  # here only: importing its data is what costs the memory

    return [
        [
            raw["zip_code"],
            raw["city"],
            raw["state"],
            float(raw["lat"]),
            float(raw["long"]),
            raw.get("timezone") or None,
            raw.get("zip_code_type") == "STANDARD",
            list(raw.get("acceptable_cities") or []),
        ]
        for raw in zipcodes.list_all()
        if raw.get("lat") and raw.get("long")
    ]


def write_index(path: Path) -> None:
    save(path, Gazetteer.from_index(build_index(read_zipcodes())))


def cache_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"gazetteer-v{_FORMAT}-zipcodes-{ZIPCODES_VERSION}.bin"


@cache
def get_gazetteer(cache_dir: str | None = None) -> Gazetteer:
    """One gazetteer per process; with ``cache_dir``, loaded from a cached packed file (built
    on first use, in a child process: reading zipcodes costs ~200 MB that a worker keeps)."""
    if cache_dir is None:
        return Gazetteer.from_index(build_index(read_zipcodes()))
    path = cache_path(cache_dir)
    gazetteer = load(path) if path.exists() else None
    if gazetteer is None:
        subprocess.run([sys.executable, "-m", "referral.geo.gazetteer", str(path)], check=True)
        gazetteer = load(path)
    if gazetteer is None:
        raise RuntimeError(f"{path}: the gazetteer just built cannot be read")
    return gazetteer


if __name__ == "__main__":
    write_index(Path(sys.argv[1]))
