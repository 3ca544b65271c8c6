"""An optional network geocoder: any geopy provider, held to one request budget shared by
every worker and host (referral/geo/shared.py), cached in the database under keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from geopy.adapters import URLLibAdapter
from geopy.exc import GeocoderServiceError, GeopyError
from geopy.geocoders import get_geocoder_for_service
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from referral.directory.models import GeocodePrecision
from referral.geo.models import GeocodeCacheEntry
from referral.geo.shared import Budget, GeocoderBusy, LocalBudget
from referral.ops import metrics
from referral.timeutil import utcnow

log = logging.getLogger(__name__)
# geopy logs request URLs (the address, maybe a patient's) at DEBUG: never let that through.
logging.getLogger("geopy").setLevel(logging.INFO)


class GeocoderConfigError(ValueError):
    """The configured geocoder cannot be used as configured."""


@dataclass(frozen=True)
class NetworkResult:
    lat: float
    lon: float
    precision: GeocodePrecision
    source: str


def nominatim_precision(raw: dict[str, Any]) -> GeocodePrecision:
    """Nominatim says what it found in ``class``/``type`` (and ``addresstype`` lately)."""
    # Both are read: an address point is class "place", type "house", addresstype "place".
    kinds = {str(raw.get("type") or ""), str(raw.get("addresstype") or "")}
    category = str(raw.get("class") or raw.get("category") or "")
    if kinds & _NOMINATIM_ROOFTOP_KINDS or category in _NOMINATIM_ROOFTOP_CLASSES:
        return GeocodePrecision.ROOFTOP
    # "residential" alone is also a land use (an area), so only a highway's counts as a street.
    if category == "highway" or kinds & {"road", "street"}:
        return GeocodePrecision.STREET
    if kinds & {"postcode", "postal_code"}:
        return GeocodePrecision.POSTAL_CODE
    return GeocodePrecision.CITY


_NOMINATIM_ROOFTOP_KINDS = {"house", "building", "apartments", "commercial", "office"}
_NOMINATIM_ROOFTOP_CLASSES = {"building", "amenity", "office", "healthcare", "shop"}


def google_precision(raw: dict[str, Any]) -> GeocodePrecision:
    location_type = raw.get("geometry", {}).get("location_type")
    return {
        "ROOFTOP": GeocodePrecision.ROOFTOP,
        "RANGE_INTERPOLATED": GeocodePrecision.STREET,
        "GEOMETRIC_CENTER": GeocodePrecision.STREET,
    }.get(location_type, GeocodePrecision.CITY)


# Providers whose answers say how precise they are; any other is taken as city-level,
# because claiming more precision than we know would be untruthful.
PRECISION_READERS: dict[str, Callable[[dict[str, Any]], GeocodePrecision]] = {
    "nominatim": nominatim_precision,
    "googlev3": google_precision,
}


class NetworkGeocoder:
    def __init__(
        self,
        provider: str,
        options: dict[str, Any],
        *,
        engine_factory: Callable[[], Engine],
        min_delay_seconds: float = 1.0,
        timeout_seconds: float = 5.0,
        cache_ttl: timedelta = timedelta(days=90),
        query_options: dict[str, Any] | None = None,
        cache_secret: str | None = None,
        budget: Callable[[str, float], Budget] | None = None,
    ) -> None:
        """``budget(provider, min_delay_seconds)`` makes the shared request budget (one
        process's without it); ``cache_secret`` keys the cache's hashes and is required."""
        if not cache_secret:
            raise GeocoderConfigError(
                "a network geocoder needs a cache secret: plain hashes of addresses can be "
                "confirmed by guessing (set REFERRAL_GEOCODE_CACHE_SECRET)"
            )
        self.provider = provider.lower()
        try:
            geocoder_class = get_geocoder_for_service(self.provider)
        except GeopyError as exc:
            raise GeocoderConfigError(f"unknown geocoder {provider!r}") from exc
        options = dict(options)
        if self.provider == "nominatim":
            agent = str(options.get("user_agent") or "")
            # Nominatim's usage policy: identify the application; geopy's default is refused.
            if not agent or agent.startswith("geopy"):
                raise GeocoderConfigError(
                    "Nominatim needs a real User-Agent: set REFERRAL_GEOCODER_OPTIONS to "
                    '{"user_agent": "your-app/1.0 (contact@example.org)"}'
                )
            min_delay_seconds = max(min_delay_seconds, 1.0)
        options.setdefault("timeout", timeout_seconds)
        # geopy picks requests' adapter whenever requests is installed, and it retries on
        # its own; the plain urllib adapter leaves retries (and their pacing) to us.
        options.setdefault("adapter_factory", URLLibAdapter)
        try:
            self._geocoder = geocoder_class(**options)
        except (GeopyError, TypeError, ValueError) as exc:
            # An unknown option, or an agent geopy itself refuses: still a configuration error.
            raise GeocoderConfigError(f"geocoder {provider!r}: {exc}") from exc
        self.min_delay_seconds = float(min_delay_seconds)
        make = budget or (lambda _provider, interval: LocalBudget(interval))
        self._budget = make(self.provider, self.min_delay_seconds)
        self._query_options = dict(query_options or {})
        if self.provider == "nominatim":
            self._query_options.setdefault("country_codes", "us")
        self._engine_factory = engine_factory
        self._cache_secret = cache_secret.encode()
        self._cache_ttl = cache_ttl
        self._read_precision = PRECISION_READERS.get(
            self.provider, lambda _raw: GeocodePrecision.CITY
        )

    @property
    def source(self) -> str:
        return f"geopy {self.provider}"

    def cache_key(self, query: str) -> str:
        normalized = " ".join(query.casefold().split())
        message = f"{self.provider}\n{normalized}".encode()
        return hmac.new(self._cache_secret, message, hashlib.sha256).hexdigest()

    def geocode(self, query: str) -> NetworkResult | None:
        """The cached answer, else the provider's; GeocoderBusy when a request would be
        needed and the shared budget is spent (never waited for)."""
        key = self.cache_key(query)
        with Session(self._engine_factory()) as session:
            cached = session.get(GeocodeCacheEntry, key)
            if cached is not None and not self._expired(cached):
                log.debug("geocode cache hit", extra={"provider": self.provider})
                metrics.geocode_cache_hit(self.provider)
                return self._from_cache(cached)
        try:
            location = self._lookup(query)
        except GeopyError as exc:
            # The query may be a patient's address: log the failure, never the text.
            log.warning("geocoder %s failed: %s", self.provider, type(exc).__name__)
            metrics.geocoder_called(self.provider, "error")
            return None
        metrics.geocoder_called(self.provider, "not_found" if location is None else "found")
        if location is None:
            entry = GeocodeCacheEntry(key=key, provider=self.provider, found=False)
        else:
            entry = GeocodeCacheEntry(
                key=key,
                provider=self.provider,
                found=True,
                lat=float(location.latitude),
                lon=float(location.longitude),
                precision=self._read_precision(location.raw).value,
            )
        self._store(entry)
        return self._from_cache(entry)

    def _lookup(self, query: str) -> Any:
        """geopy's answer, with one retry after a service error. The first request must find
        the budget open; the retry may wait for it, at most one interval (then gives up)."""
        wait = self._budget.take()
        if wait > 0:
            metrics.geocoder_called(self.provider, "busy")
            raise GeocoderBusy(wait)
        try:
            return self._geocoder.geocode(query, exactly_one=True, **self._query_options)
        except GeocoderServiceError as exc:
            failure = exc
            log.info("geocoder %s failed, retrying once: %s", self.provider, type(exc).__name__)
        wait = self._budget.take()
        if 0 < wait <= self.min_delay_seconds:
            time.sleep(wait)
            wait = self._budget.take()
        if wait > 0:
            raise failure
        return self._geocoder.geocode(query, exactly_one=True, **self._query_options)

    def _expired(self, entry: GeocodeCacheEntry) -> bool:
        created = entry.created_at
        if created.tzinfo is None:  # SQLite hands back naive datetimes
            created = created.replace(tzinfo=utcnow().tzinfo)
        return utcnow() - created > self._cache_ttl

    def _store(self, entry: GeocodeCacheEntry) -> None:
        with Session(self._engine_factory()) as session:
            try:
                session.merge(entry)
                session.commit()
            except IntegrityError:  # another worker cached the same query first
                session.rollback()

    def _from_cache(self, entry: GeocodeCacheEntry) -> NetworkResult | None:
        if not entry.found or entry.lat is None or entry.lon is None:
            return None
        return NetworkResult(
            lat=entry.lat,
            lon=entry.lon,
            precision=GeocodePrecision(entry.precision or GeocodePrecision.CITY),
            source=self.source,
        )
