"""Offline US gazetteer on the ``zipcodes`` package: ZIP centroids and city centroids.

Reading all of ``zipcodes`` costs seconds and ~200 MB, so it is done once, in a child process,
into a compact JSON file in the instance folder; every worker then loads that file quickly.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
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


class Gazetteer:
    """Serves lookups from the compact index (see ``build_index``): a dict access each."""

    def __init__(self, index: dict[str, Any]) -> None:
        self._zips: dict[str, list[Any]] = index["zips"]
        self._cities: dict[str, list[Any]] = index["cities"]
        self._states: dict[str, list[str]] = index["states"]

    def zip_place(self, zip_code: str) -> Place | None:
        match = ZIP_RE.match(zip_code.strip())
        row = self._zips.get(match.group(1)) if match else None
        if row is None or match is None:
            return None
        city, state, lat, lon, time_zone = row
        return Place(
            lat=lat,
            lon=lon,
            precision=GeocodePrecision.POSTAL_CODE,
            source=f"{SOURCE}: ZIP centroid",
            city=city,
            state=state,
            zip=match.group(1),
            time_zone=time_zone,
        )

    def city_place(self, city: str, state: str) -> Place | None:
        state = state.strip().upper()
        row = self._cities.get(f"{normalize_city(city)}|{state}")
        if row is None:
            return None
        name, lat, lon, count, time_zone = row
        return Place(
            lat=lat,
            lon=lon,
            precision=GeocodePrecision.CITY,
            source=f"{SOURCE}: mean of {count} ZIP centroids",
            city=name,
            state=state,
            zip=None,
            time_zone=time_zone,
        )

    def states_with_city(self, city: str) -> list[str]:
        """States where ``city`` is a primary USPS city name (used to flag, never to fill)."""
        return list(self._states.get(normalize_city(city), []))


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
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(build_index(read_zipcodes()), tmp, separators=(",", ":"))
    # Atomic: a worker never reads a half-written file, and racing builders agree.
    os.replace(tmp.name, path)


def cache_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"gazetteer-v1-zipcodes-{ZIPCODES_VERSION}.json"


@cache
def get_gazetteer(cache_dir: str | None = None) -> Gazetteer:
    """One gazetteer per process; with ``cache_dir``, built from a cached compact file."""
    if cache_dir is None:
        return Gazetteer(build_index(read_zipcodes()))
    path = cache_path(cache_dir)
    if not path.exists():
        subprocess.run([sys.executable, "-m", "referral.geo.gazetteer", str(path)], check=True)
    with path.open(encoding="utf-8") as handle:
        return Gazetteer(json.load(handle))


if __name__ == "__main__":
    write_index(Path(sys.argv[1]))
