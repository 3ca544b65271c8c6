"""Offline US gazetteer on the ``zipcodes`` package: ZIP centroids and city centroids."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version

import zipcodes

from referral.directory.models import GeocodePrecision

SOURCE = f"zipcodes {version('zipcodes')}"

ZIP_RE = re.compile(r"^(\d{5})(?:-\d{4})?$")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class _ZipRecord:
    zip: str
    city: str
    state: str
    lat: float
    lon: float
    time_zone: str | None
    standard: bool


class Gazetteer:
    """Built once per process from the package's data; every lookup is a dict access."""

    def __init__(self) -> None:
        self._by_zip: dict[str, _ZipRecord] = {}
        primary: dict[tuple[str, str], list[_ZipRecord]] = {}
        alias: dict[tuple[str, str], list[_ZipRecord]] = {}
        alias_names: dict[tuple[str, str], str] = {}
        for raw in zipcodes.list_all():
            if not raw.get("lat") or not raw.get("long"):
                continue
            record = _ZipRecord(
                zip=raw["zip_code"],
                city=raw["city"],
                state=raw["state"],
                lat=float(raw["lat"]),
                lon=float(raw["long"]),
                time_zone=raw.get("timezone") or None,
                standard=raw.get("zip_code_type") == "STANDARD",
            )
            self._by_zip[record.zip] = record
            primary.setdefault((normalize_city(record.city), record.state), []).append(record)
            for other in raw.get("acceptable_cities") or []:
                key = (normalize_city(other), record.state)
                alias.setdefault(key, []).append(record)
                alias_names.setdefault(key, other.title() if other.isupper() else other)
        self._cities: dict[tuple[str, str], Place] = {}
        # A primary city name wins over the same name used as an alias elsewhere in the state.
        for key, records in alias.items():
            self._cities[key] = _centroid(records, alias_names[key], key[1])
        for key, records in primary.items():
            self._cities[key] = _centroid(records, records[0].city, key[1])
        self._states_by_city: dict[str, list[str]] = {}
        for name, state in primary:
            self._states_by_city.setdefault(name, []).append(state)

    def zip_place(self, zip_code: str) -> Place | None:
        match = ZIP_RE.match(zip_code.strip())
        record = self._by_zip.get(match.group(1)) if match else None
        if record is None:
            return None
        return Place(
            lat=record.lat,
            lon=record.lon,
            precision=GeocodePrecision.POSTAL_CODE,
            source=f"{SOURCE}: ZIP centroid",
            city=record.city,
            state=record.state,
            zip=record.zip,
            time_zone=record.time_zone,
        )

    def city_place(self, city: str, state: str) -> Place | None:
        return self._cities.get((normalize_city(city), state.strip().upper()))

    def states_with_city(self, city: str) -> list[str]:
        """States where ``city`` is a primary USPS city name (used to flag, never to fill)."""
        return sorted(self._states_by_city.get(normalize_city(city), []))

    def is_known_state(self, state: str) -> bool:
        return any(key[1] == state for key in self._cities)


def _centroid(records: list[_ZipRecord], city: str, state: str) -> Place:
    # Street-delivery ZIPs describe where people are; PO box ZIPs sit on post offices.
    chosen = [r for r in records if r.standard] or records
    zones = [r.time_zone for r in chosen if r.time_zone]
    return Place(
        lat=round(statistics.fmean(r.lat for r in chosen), 6),
        lon=round(statistics.fmean(r.lon for r in chosen), 6),
        precision=GeocodePrecision.CITY,
        source=f"{SOURCE}: mean of {len(chosen)} ZIP centroids",
        city=city,
        state=state,
        zip=None,
        time_zone=statistics.mode(zones) if zones else None,
    )


@cache
def get_gazetteer() -> Gazetteer:
    return Gazetteer()
