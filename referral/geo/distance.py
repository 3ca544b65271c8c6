"""Geodesic distances on the WGS84 ellipsoid (the same model as GPS and the ZIP centroids)."""

from __future__ import annotations

import math

from geographiclib.geodesic import Geodesic

KM_PER_MILE = 1.609344
_WGS84 = Geodesic.WGS84
# Lower bound on the length of one degree of latitude anywhere on WGS84 (at the equator).
_MIN_KM_PER_DEGREE_LAT = 110.574


def geodesic_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    result = _WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)
    return float(result["s12"]) / 1000.0


def km_to_miles(km: float) -> float:
    return km / KM_PER_MILE


def miles_to_km(miles: float) -> float:
    return miles * KM_PER_MILE


def bounding_box(
    lat: float, lon: float, radius_km: float
) -> tuple[float, float, float | None, float | None]:
    """A box that surely contains every point within ``radius_km``: (lat_min, lat_max, lon_min,
    lon_max). The longitude bounds are None when the box would reach a pole or cross the
    antimeridian, where a longitude window stops being a simple interval."""
    margin = 1.01  # generous: the box is only a prefilter, exact distances decide.
    dlat = radius_km / _MIN_KM_PER_DEGREE_LAT * margin
    lat_min, lat_max = lat - dlat, lat + dlat
    if lat_min <= -89.0 or lat_max >= 89.0:
        return max(lat_min, -90.0), min(lat_max, 90.0), None, None
    widest = max(abs(lat_min), abs(lat_max))
    km_per_degree_lon = 111.32 * math.cos(math.radians(widest))
    dlon = radius_km / km_per_degree_lon * margin
    lon_min, lon_max = lon - dlon, lon + dlon
    if dlon >= 180.0 or lon_min < -180.0 or lon_max > 180.0:
        return lat_min, lat_max, None, None
    return lat_min, lat_max, lon_min, lon_max
