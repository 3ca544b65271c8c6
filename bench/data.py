"""Synthetic directories and load for the benchmark: deterministic (seeded), plausible,
importable by ``referral import``.

Nothing here imports the service: places come from the ``zipcodes`` package (the same ZIP
centroids the service's offline gazetteer is built from), so the files stay valid while the
service's internals change.

- ``directory``: N clinics near real ZIP centroids (so they spread as US ZIPs do), every fifth
  with a second location, a few offered specialties each and, for one clinic in five, one
  specialty on record as *not* offered; one location in ten without coordinates (the import
  places it by its ZIP, as real files do). With ``cluster`` a share of the clinics sit
  uniformly in a 1-degree box instead (a dense metro area).
- ``spread_origins`` / ``box_origins``: distinct nearest-query origins, shuffled.
- ``referral_bodies``: ``POST /v1/referrals`` bodies.
- ``import_file``: a big import file (a directory's rows plus new clinics up to a size).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import phonenumbers

# (code, share of clinics offering it); a clinic with none drawn gets "orthopedic".
SPECIALTY_SHARES = (
    ("orthopedic", 0.70), ("spine", 0.45), ("sports", 0.35), ("manual_therapy", 0.25),
    ("post_surgical", 0.20), ("running", 0.12), ("work_rehab", 0.10), ("geriatrics", 0.10),
    ("pelvic_health", 0.08), ("vestibular", 0.06), ("dry_needling", 0.15),
    ("pediatrics", 0.05), ("neurology", 0.05), ("hand", 0.04),
)  # fmt: skip
NOT_OFFERED_SHARE = 0.2  # clinics with one code on record as not offered
# The one specialty every nearest query asks for (offered by ~45% of clinics).
NEAREST_SPECIALTY = "spine"
# Concerns the referral bodies send, each mapping to one common specialty (seed_data/concerns).
CONCERNS = ("low_back_pain", "neck_pain", "knee_pain", "hip_pain", "shoulder_pain",
            "sports_injury")  # fmt: skip
AREA_CODES = (205, 210, 212, 303, 305, 312, 404, 415, 503, 512, 602, 612, 617, 702, 713, 801,
              816, 901, 907, 919)  # fmt: skip
STREETS = ("Main", "Oak", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park",
           "Pine", "River", "Church", "Broadway", "Center", "Highland")  # fmt: skip
SUFFIXES = ("St", "Ave", "Rd", "Blvd", "Dr", "Ln", "Way", "Pkwy")
COLUMNS = ("clinic_name", "phone", "website", "address", "city", "state", "zip", "lat", "lon",
           "specialties", "specialties_not_offered")  # fmt: skip
MILITARY = ("AA", "AE", "AP")
JITTER_DEGREES = 0.03  # about 3 km: clinics of one ZIP do not share a point
CLINIC_PREFIX = "Bench Physical Therapy"


@dataclass(frozen=True)
class Place:
    zip: str
    city: str
    state: str
    lat: float
    lon: float


@dataclass(frozen=True)
class Box:
    """A lat/lon box: ``south``..``south + size`` by ``west``..``west + size`` degrees."""

    south: float
    west: float
    size: float = 1.0

    def contains(self, lat: float, lon: float) -> bool:
        return (
            self.south <= lat <= self.south + self.size
            and self.west <= lon <= self.west + self.size
        )

    def point(self, rng: random.Random) -> tuple[float, float]:
        return (
            round(self.south + rng.random() * self.size, 6),
            round(self.west + rng.random() * self.size, 6),
        )


# Dallas-Fort Worth: a 1-degree box (about 111 x 94 km) with a few hundred ZIPs in it.
CLUSTER_BOX = Box(32.3, -97.5)


@dataclass(frozen=True)
class Directory:
    """The import file's rows (one location each) and the clinics they make."""

    clinics: int
    rows: list[dict[str, str]]

    def csv_bytes(self) -> bytes:
        return csv_bytes(self.rows)

    def located_in(self, box: Box) -> int:
        """Rows whose coordinates are in ``box`` (the ones without coordinates not counted)."""
        located = ((row["lat"], row["lon"]) for row in self.rows if row["lat"])
        return sum(1 for lat, lon in located if box.contains(float(lat), float(lon)))


def csv_bytes(rows: Sequence[dict[str, str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


@cache
def places() -> tuple[Place, ...]:
    """ZIP centroids of the states, DC and Puerto Rico (no military APO/FPO codes, whose
    centroids sit at 0, 0), ascending by ZIP."""
    import zipcodes  # ~1 s and a few hundred MB: only when data is made

    found = []
    for raw in zipcodes.list_all():
        if not (raw.get("lat") and raw.get("long")) or raw["state"] in MILITARY:
            continue
        lat, lon = float(raw["lat"]), float(raw["long"])
        if 17 < lat < 72 and lon < -64:
            found.append(Place(raw["zip_code"], raw["city"], raw["state"], lat, lon))
    return tuple(sorted(found, key=lambda place: place.zip))


@cache
def _exchanges() -> tuple[str, ...]:
    """Area code and exchange pairs phonenumbers accepts (the line digits never matter to it;
    checking every number instead would double the time to make 100,000 clinics)."""
    pairs = []
    for area in AREA_CODES:
        for exchange in range(200, 1000):
            if exchange != 555 and phonenumbers.is_valid_number(
                phonenumbers.parse(f"+1{area}{exchange}4567")
            ):
                pairs.append(f"({area}) {exchange}")
    return tuple(pairs)


def _phone(rng: random.Random) -> str:
    """A valid US number, written as people write them: (210) 734-5678."""
    return f"{rng.choice(_exchanges())}-{rng.randint(0, 9999):04d}"


def _near(rng: random.Random) -> tuple[Place, float, float]:
    place = rng.choice(places())
    lat = round(place.lat + rng.gauss(0, JITTER_DEGREES), 6)
    lon = round(place.lon + rng.gauss(0, JITTER_DEGREES), 6)
    return place, max(-90.0, min(90.0, lat)), max(-180.0, min(180.0, lon))


@cache
def _places_in(box: Box) -> tuple[Place, ...]:
    inside = tuple(place for place in places() if box.contains(place.lat, place.lon))
    if not inside:
        raise ValueError(f"no ZIP centroid in {box}")
    return inside


def _location(rng: random.Random, box: Box | None) -> dict[str, str]:
    if box is None:
        place, lat, lon = _near(rng)
        placed = rng.random() >= 0.1
    else:  # anywhere in the box, filed under one of its ZIPs; always with coordinates
        place = rng.choice(_places_in(box))
        lat, lon = box.point(rng)
        placed = True
    return {
        "address": f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}",
        "city": place.city,
        "state": place.state,
        "zip": place.zip,
        "lat": f"{lat}" if placed else "",
        "lon": f"{lon}" if placed else "",
    }


def _clinic_rows(
    rng: random.Random, number: int, prefix: str, site: str, box: Box | None
) -> list[dict[str, str]]:
    codes = [code for code, share in SPECIALTY_SHARES if rng.random() < share] or ["orthopedic"]
    not_offered = ""
    if rng.random() < NOT_OFFERED_SHARE:
        not_offered = rng.choice([code for code, _ in SPECIALTY_SHARES if code not in codes])
    clinic = {
        "clinic_name": f"{prefix} {number:06d}",
        "phone": _phone(rng),
        "website": f"https://{site}-{number:06d}.example.com",
        "specialties": ";".join(codes),
        "specialties_not_offered": not_offered,
    }
    return [{**clinic, **_location(rng, box)} for _ in range(2 if number % 5 == 0 else 1)]


def _clinics(
    seed: str, prefix: str, site: str, cluster: Box | None = None, cluster_share: float = 0.0
) -> Iterator[list[dict[str, str]]]:
    rng = random.Random(seed)
    number = 0
    while True:
        number += 1
        box = cluster if cluster is not None and rng.random() < cluster_share else None
        yield _clinic_rows(rng, number, prefix, site, box)


def directory(
    size: int,
    seed: int = 20240601,
    *,
    prefix: str = CLINIC_PREFIX,
    cluster: Box | None = None,
    cluster_share: float = 0.0,
) -> Directory:
    """``size`` clinics; every fifth has two locations (so 1.2 x ``size`` rows). With
    ``cluster``, each clinic sits in that box with probability ``cluster_share``."""
    label = f"{seed}:{size}" if cluster is None else f"{seed}:{size}:{cluster}:{cluster_share}"
    clinics = _clinics(label, prefix, "clinic", cluster, cluster_share)
    rows = [row for _, made in zip(range(size), clinics, strict=False) for row in made]
    return Directory(size, rows)


def import_file(base: Sequence[dict[str, str]], target_bytes: int, seed: int = 99) -> bytes:
    """A CSV of ``base`` (a directory already imported: its rows plan as unchanged) followed
    by new clinics until the file is about ``target_bytes`` long (at least the base)."""
    rows = list(base)
    size = len(csv_bytes(rows))
    for made in _clinics(f"import:{seed}", "Bench Import Clinic", "new"):
        if size >= target_bytes:
            break
        size += len(csv_bytes(made)) - len(csv_bytes([]))
        rows.extend(made)
    return csv_bytes(rows)


def spread_origins(count: int, seed: int = 7) -> list[tuple[float, float]]:
    """``count`` distinct origins near ZIP centroids (where people live), shuffled."""
    rng = random.Random(seed)
    seen: set[tuple[float, float]] = set()
    while len(seen) < count:
        _, lat, lon = _near(rng)
        seen.add((round(lat, 5), round(lon, 5)))
    return _shuffled(seen, rng)


def box_origins(count: int, box: Box, seed: int = 8) -> list[tuple[float, float]]:
    """``count`` distinct origins uniformly inside ``box``, shuffled."""
    rng = random.Random(seed)
    seen: set[tuple[float, float]] = set()
    while len(seen) < count:
        lat, lon = box.point(rng)
        seen.add((round(lat, 5), round(lon, 5)))
    return _shuffled(seen, rng)


def _shuffled(points: set[tuple[float, float]], rng: random.Random) -> list[tuple[float, float]]:
    ordered = sorted(points)
    rng.shuffle(ordered)
    return ordered


def write_origins(path: Path, origins: Sequence[tuple[float, float]]) -> Path:
    """One ``lat,lon`` a line: what the wrk scripts read."""
    path.write_text("".join(f"{lat},{lon}\n" for lat, lon in origins), encoding="ascii")
    return path


def referral_bodies(count: int, seed: int = 11) -> list[str]:
    """JSON bodies of ``POST /v1/referrals``: origins by ZIP (seven in ten) or coordinates,
    one concern each."""
    rng = random.Random(seed)
    bodies = []
    for number in range(count):
        place, lat, lon = _near(rng)
        origin: dict[str, object] = (
            {"zip": place.zip} if rng.random() < 0.7 else {"lat": lat, "lon": lon}
        )
        body = {
            "origin": origin,
            "concerns": [CONCERNS[number % len(CONCERNS)]],
            "patient_ref": f"bench-{number:06d}",
        }
        bodies.append(json.dumps(body, separators=(",", ":")))
    return bodies
