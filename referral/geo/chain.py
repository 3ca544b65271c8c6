"""The geocoder chain: the offline gazetteer first, then (only when configured) a network
geocoder, then the gazetteer's coarser answer for what the network could not place."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from flask import Flask, current_app
from werkzeug.exceptions import ServiceUnavailable

from referral.db import get_database
from referral.directory.models import GeocodePrecision
from referral.geo.gazetteer import Gazetteer, Place, get_gazetteer
from referral.geo.shared import GeocoderBusy, instance_secret, make_budget
from referral.geo.usps import STATE_CODES

if TYPE_CHECKING:
    from referral.geo.network import NetworkGeocoder

_ZIP_ANYWHERE = re.compile(r"\b([0-9]{5})(?:-[0-9]{4})?\b")
_CITY_SPACE_STATE = re.compile(r"([^\W\d][^,\d]*?)\s+([A-Za-z]{2})")
_STATE_ZIP_TAIL = re.compile(r"^\s*([A-Za-z]{2})(?:\s+[0-9]{5}(?:-[0-9]{4})?)?\s*\Z")


@dataclass(frozen=True)
class GeocodeResult:
    lat: float
    lon: float
    precision: GeocodePrecision
    source: str
    time_zone: str | None = None
    label: str | None = None

    @classmethod
    def from_place(cls, place: Place) -> GeocodeResult:
        return cls(
            lat=place.lat,
            lon=place.lon,
            precision=place.precision,
            source=place.source,
            time_zone=place.time_zone,
            label=place.label,
        )


class GeocoderBusyProblem(ServiceUnavailable):
    """503 naming the address field, with Retry-After: the network geocoder's shared budget
    is spent. Rendered as problem+json by the API's error handler (its ``data`` is
    flask-smorest's: message, errors by location and field, headers)."""

    def __init__(self, location: str, field: str, retry_after: float, instead: str) -> None:
        super().__init__()
        seconds = max(1, math.ceil(retry_after))
        reason = (
            "the address geocoder is at its limit of requests for the whole service; retry "
            f"after {seconds} s (Retry-After), or {instead}"
        )
        self.data = {
            "message": f"{field}: {reason}",
            "errors": {location: {field: [reason]}},
            "headers": {"Retry-After": str(seconds)},
        }


@dataclass(frozen=True)
class ParsedAddress:
    """What the gazetteer can read from free text: a ZIP, and a trailing "City, ST"."""

    zip: str | None
    city: str | None
    state: str | None
    is_only_zip: bool
    is_only_city: bool


def parse_address(text: str) -> ParsedAddress:
    stripped = text.strip()
    zips = _ZIP_ANYWHERE.findall(stripped)
    parts = [part.strip() for part in stripped.split(",") if part.strip()]
    city = state = None
    if len(parts) >= 2:
        tail = _STATE_ZIP_TAIL.match(parts[-1])
        if tail:
            city, state = parts[-2], tail.group(1).upper()
    is_only_zip = bool(zips) and _ZIP_ANYWHERE.fullmatch(stripped) is not None
    return ParsedAddress(
        zip=zips[-1] if zips else None,
        city=city,
        state=state,
        is_only_zip=is_only_zip,
        is_only_city=len(parts) == 2 and city is not None and not zips,
    )


class GeocoderChain:
    def __init__(self, gazetteer: Callable[[], Gazetteer], network: NetworkGeocoder | None) -> None:
        self._gazetteer = gazetteer
        self.network = network

    @property
    def gazetteer(self) -> Gazetteer:
        return self._gazetteer()

    def zip(self, zip_code: str) -> GeocodeResult | None:
        place = self.gazetteer.zip_place(zip_code)
        return GeocodeResult.from_place(place) if place else None

    def city(self, city: str, state: str) -> GeocodeResult | None:
        place = self.gazetteer.city_place(city, state)
        return GeocodeResult.from_place(place) if place else None

    def text(self, text: str) -> GeocodeResult | None:
        """Free text: an address, or just a ZIP or "City, ST". GeocoderBusy when only the
        network could place it and its budget is spent (the caller names its own field)."""
        parsed = parse_address(text)
        if parsed.is_only_zip and parsed.zip:
            return self.zip(parsed.zip)
        if parsed.is_only_city and parsed.city and parsed.state:
            return self.city(parsed.city, parsed.state)
        spaced = _CITY_SPACE_STATE.fullmatch(text.strip())
        if spaced and spaced.group(2).upper() in STATE_CODES:
            # "San Antonio TX", as people type it; "12 Main Ct" must still reach the network.
            found = self.city(spaced.group(1), spaced.group(2).upper())
            if found is not None:
                return found
        return self._network_then_coarse(text, parsed)

    def location(
        self,
        *,
        address_line1: str | None,
        city: str | None,
        state: str | None,
        zip_code: str | None,
        use_network: bool = True,
    ) -> GeocodeResult | None:
        """A directory location's fields: street-level if a network geocoder can, else the
        ZIP centroid, else the city centroid."""
        parsed = ParsedAddress(zip_code, city, state, is_only_zip=False, is_only_city=False)
        if address_line1 and use_network and self.network is not None:
            where = ", ".join(part for part in (address_line1, city) if part)
            tail = " ".join(part for part in (state, zip_code) if part)
            try:
                return self._network_then_coarse(f"{where}, {tail}" if tail else where, parsed)
            except GeocoderBusy as exc:
                # A directory location's fields come in a JSON body (admin edits).
                raise GeocoderBusyProblem(
                    "json", "address_line1", exc.retry_after, "give lat and lon"
                ) from None
        return self._coarse(parsed)

    def _network_then_coarse(self, text: str, parsed: ParsedAddress) -> GeocodeResult | None:
        coarse = self._coarse(parsed)
        if self.network is not None:
            found = self.network.geocode(text)
            if found is not None:
                return GeocodeResult(
                    lat=found.lat,
                    lon=found.lon,
                    precision=found.precision,
                    source=found.source,
                    time_zone=coarse.time_zone if coarse else None,
                    label=coarse.label if coarse else None,
                )
        return coarse

    def _coarse(self, parsed: ParsedAddress) -> GeocodeResult | None:
        if parsed.zip:
            found = self.zip(parsed.zip)
            if found:
                return found
        if parsed.city and parsed.state:
            return self.city(parsed.city, parsed.state)
        return None


def build_chain(app: Flask) -> GeocoderChain:
    network = None
    provider = app.config.get("GEOCODER")
    if provider:
        # Loaded only when configured: geopy and its providers cost a worker ~7 MB that the
        # offline gazetteer alone never needs (not to dodge an import cycle).
        from referral.geo.network import GeocoderConfigError, NetworkGeocoder

        database = get_database(app)
        instance = app.instance_path
        storage_uri = str(app.config.get("RATELIMIT_STORAGE_URI") or "")
        prefix = str(app.config.get("RATELIMIT_KEY_PREFIX") or "referral")
        try:
            # Secure by default: without a configured secret, one kept in the instance folder.
            secret = app.config.get("GEOCODE_CACHE_SECRET") or instance_secret(instance)
        except (OSError, ValueError) as exc:
            raise GeocoderConfigError(f"geocode cache secret: {exc}") from exc
        network = NetworkGeocoder(
            str(provider),
            dict(app.config.get("GEOCODER_OPTIONS") or {}),
            engine_factory=lambda: database.engine,
            min_delay_seconds=float(app.config["GEOCODER_MIN_DELAY_SECONDS"]),
            timeout_seconds=float(app.config["GEOCODER_TIMEOUT_SECONDS"]),
            cache_ttl=timedelta(days=float(app.config["GEOCODE_CACHE_TTL_DAYS"])),
            query_options=dict(app.config.get("GEOCODER_QUERY_OPTIONS") or {}),
            cache_secret=str(secret),
            budget=lambda name, interval: make_budget(
                name, interval, instance_path=instance, storage_uri=storage_uri, key_prefix=prefix
            ),
        )
    cache_dir = app.config.get("GAZETTEER_CACHE_DIR") or app.instance_path
    return GeocoderChain(lambda: get_gazetteer(str(cache_dir)), network)


def init_app(app: Flask) -> None:
    # Built at start-up so a misconfigured geocoder fails loudly, not on the first query;
    # the gazetteer's tables load on first use.
    app.extensions["referral_geocoder"] = build_chain(app)


def get_geocoder(app: Flask | None = None) -> GeocoderChain:
    chain: GeocoderChain = (app or current_app).extensions["referral_geocoder"]
    return chain
