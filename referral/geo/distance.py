"""Geodesic distances on the WGS84 ellipsoid (the same model as GPS and the ZIP centroids),
by pyproj's compiled Geod (Karney's algorithm, as geographiclib, to a few nanometres).

Unit vectors on the sphere and the bounds relating their chords to geodesic lengths let a
k-d tree over unit vectors decide what need not be measured (docs/nearest.md, "Exact"):
with geodetic latitude as the sphere's latitude, both radii of curvature of WGS84 lie in
[a(1-e^2), a/sqrt(1-e^2)], so a geodesic between points at central angle sigma on the sphere
is between 6335.439 km * sigma and 6399.594 km * sigma long.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from pyproj import Geod

KM_PER_MILE = 1.609344
_GEOD = Geod(ellps="WGS84")

_A_KM = 6378.137
_FLATTENING = 1 / 298.257223563
_E2 = _FLATTENING * (2 - _FLATTENING)
MIN_KM_PER_RADIAN = _A_KM * (1 - _E2)  # meridional radius at the equator
MAX_KM_PER_RADIAN = _A_KM / math.sqrt(1 - _E2)  # both radii at the poles
# Slack for rounding and for the geodesic's own error (nanometres): a relative 1e-9 and a
# micrometre, always widening what is measured.
_LOW = MIN_KM_PER_RADIAN * (1 - 1e-9)
_HIGH = MAX_KM_PER_RADIAN * (1 + 1e-9)
_ABS_KM = 1e-9


def geodesic_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    _, _, metres = _GEOD.inv(lon1, lat1, lon2, lat2)
    return float(metres) / 1000.0


def geodesic_km_many(
    lat: float, lon: float, lats: NDArray[np.float64], lons: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Geodesic distances from one point to many, in one call."""
    if len(lats) == 0:
        return np.empty(0)
    _, _, metres = _GEOD.inv(np.full(len(lats), lon), np.full(len(lats), lat), lons, lats)
    return np.asarray(metres, dtype=np.float64) / 1000.0


def unit_vectors(lats: NDArray[np.float64], lons: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n, 3) points on the unit sphere, geodetic latitude taken as the sphere's."""
    phi, lam = np.radians(lats), np.radians(lons)
    cos_phi = np.cos(phi)
    return np.column_stack((cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)))


def _angle(chord: NDArray[np.float64] | float) -> NDArray[np.float64]:
    return 2.0 * np.arcsin(np.minimum(1.0, np.asarray(chord, dtype=np.float64) / 2.0))


def lower_km(chord: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """No geodesic between points this far apart (chord on the unit sphere) is shorter."""
    return _LOW * _angle(chord) - _ABS_KM


def upper_km(chord: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """No geodesic between points this far apart (chord on the unit sphere) is longer."""
    return _HIGH * _angle(chord) + _ABS_KM


def chord_within(km: float) -> float:
    """The longest chord whose points may be at most ``km`` apart by geodesic."""
    angle = (km + _ABS_KM) / _LOW
    if angle >= math.pi:
        return 2.0
    # A hair wider than exact: rounding must never leave a point out.
    return min(2.0, 2.0 * math.sin(angle / 2.0) * (1 + 1e-12))


def chord_surely_within(km: float) -> float:
    """The longest chord whose points are surely at most ``km`` apart by geodesic."""
    angle = (km - _ABS_KM) / _HIGH
    if angle <= 0:
        return 0.0
    if angle >= math.pi:
        return 2.0
    # A hair narrower than exact: rounding must never count a point in that is out.
    return 2.0 * math.sin(angle / 2.0) * (1 - 1e-12)


def km_to_miles(km: float) -> float:
    return km / KM_PER_MILE


def miles_to_km(miles: float) -> float:
    return miles * KM_PER_MILE
