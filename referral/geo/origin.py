"""Where a search starts: coordinates, a ZIP, a city and state, or an address."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from referral.geo.chain import GeocoderBusyProblem, GeocoderChain
from referral.geo.shared import GeocoderBusy


class ResolvedFrom(StrEnum):
    COORDINATES = "coordinates"
    ZIP = "zip"
    CITY = "city"
    ADDRESS = "address"


@dataclass(frozen=True)
class Origin:
    lat: float
    lon: float
    resolved_from: ResolvedFrom
    # "exact" for coordinates given by the caller, else the geocode precision.
    precision: str
    source: str
    label: str | None


class OriginError(ValueError):
    """The origin cannot be placed; ``field`` names the parameter at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def resolve_origin(
    chain: GeocoderChain,
    *,
    lat: float | None = None,
    lon: float | None = None,
    zip_code: str | None = None,
    city: str | None = None,
    state: str | None = None,
    address: str | None = None,
) -> Origin:
    """Exactly one form must be given (the schemas check that); this places it."""
    if lat is not None and lon is not None:
        return Origin(lat, lon, ResolvedFrom.COORDINATES, "exact", "caller", None)
    if zip_code:
        found = chain.zip(zip_code)
        if found is None:
            raise OriginError("zip", f"unknown ZIP code {zip_code!r}")
        kind = ResolvedFrom.ZIP
    elif city and state:
        found = chain.city(city, state)
        if found is None:
            raise OriginError("city", f"no city named {city!r} in {state}")
        kind = ResolvedFrom.CITY
    elif address:
        found = chain.text(address)
        if found is None:
            raise OriginError(
                "address", "could not place this address; add a ZIP code or 'City, ST'"
            )
        kind = ResolvedFrom.ADDRESS
    else:
        raise OriginError("origin", "give lat and lon, zip, city and state, or address")
    return Origin(found.lat, found.lon, kind, found.precision.value, found.source, found.label)


def resolve_origin_args(
    chain: GeocoderChain,
    args: Mapping[str, object],
    *,
    location: str = "query",
    field_prefix: str = "",
) -> Origin:
    """``resolve_origin`` from parsed request fields named lat, lon, zip, city, state, address.

    GeocoderBusyProblem (503, Retry-After) when the address needs the network geocoder and
    its shared budget is spent; it names ``field_prefix + "address"`` in ``location``."""

    def text(name: str) -> str | None:
        value = args.get(name)
        return None if value is None else str(value)

    def number(name: str) -> float | None:
        value = args.get(name)
        return None if value is None else float(value)  # type: ignore[arg-type]

    try:
        return resolve_origin(
            chain,
            lat=number("lat"),
            lon=number("lon"),
            zip_code=text("zip"),
            city=text("city"),
            state=text("state"),
            address=text("address"),
        )
    except GeocoderBusy as exc:
        instead = "search by zip, city and state, or lat and lon"
        raise GeocoderBusyProblem(
            location, f"{field_prefix}address", exc.retry_after, instead
        ) from None
