"""Synthetic directories for the benchmark: deterministic (a seed), plausible, importable.

Clinics sit near real ZIP centroids of the offline gazetteer (so they spread like the US ZIPs
do), every fifth clinic has a second location, each clinic offers a few specialties. One
location in ten comes without coordinates, so the import places it by its ZIP, as real files
do. Origins for the load (nearest queries, referral bodies) are drawn the same way.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass

import phonenumbers

from referral.geo.gazetteer import Gazetteer

# (code, share of clinics offering it); a clinic with none drawn gets "orthopedic".
SPECIALTY_SHARES = (
    ("orthopedic", 0.70), ("spine", 0.45), ("sports", 0.35), ("manual_therapy", 0.25),
    ("post_surgical", 0.20), ("running", 0.12), ("work_rehab", 0.10), ("geriatrics", 0.10),
    ("pelvic_health", 0.08), ("vestibular", 0.06), ("dry_needling", 0.15),
    ("pediatrics", 0.05), ("neurology", 0.05), ("hand", 0.04),
)  # fmt: skip
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
           "specialties")  # fmt: skip
MILITARY = ("AA", "AE", "AP")
JITTER_DEGREES = 0.03  # about 3 km: clinics of one ZIP do not share a point


@dataclass(frozen=True)
class Directory:
    """The import file's rows (one location each) and the clinics they make."""

    clinics: int
    rows: list[dict[str, str]]

    def csv_bytes(self) -> bytes:
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue().encode("utf-8")


def _exchanges() -> list[str]:
    """Area code and exchange pairs phonenumbers accepts (the line digits never matter to it;
    checking every number instead would double the time to make 100,000 clinics)."""
    pairs = []
    for area in AREA_CODES:
        for exchange in range(200, 1000):
            if exchange != 555 and phonenumbers.is_valid_number(
                phonenumbers.parse(f"+1{area}{exchange}4567")
            ):
                pairs.append(f"({area}) {exchange}")
    return pairs


def _phone(rng: random.Random, exchanges: list[str]) -> str:
    """A valid US number, written as people write them: (210) 734-5678."""
    return f"{rng.choice(exchanges)}-{rng.randint(0, 9999):04d}"


def _zips(gazetteer: Gazetteer) -> list[str]:
    """ZIPs of the states, DC and Puerto Rico (no military APO/FPO codes, whose centroids
    sit at 0, 0)."""
    found = []
    for zip_code in gazetteer.zip_codes():
        place = gazetteer.zip_place(zip_code)
        if place and place.state not in MILITARY and 17 < place.lat < 72 and place.lon < -64:
            found.append(zip_code)
    return found


def _near(rng: random.Random, gazetteer: Gazetteer, zips: list[str]) -> tuple[str, float, float]:
    zip_code = rng.choice(zips)
    place = gazetteer.zip_place(zip_code)
    assert place is not None
    lat = round(place.lat + rng.gauss(0, JITTER_DEGREES), 6)
    lon = round(place.lon + rng.gauss(0, JITTER_DEGREES), 6)
    return zip_code, max(-90.0, min(90.0, lat)), max(-180.0, min(180.0, lon))


def _location(rng: random.Random, gazetteer: Gazetteer, zips: list[str]) -> dict[str, str]:
    zip_code, lat, lon = _near(rng, gazetteer, zips)
    place = gazetteer.zip_place(zip_code)
    assert place is not None
    placed = rng.random() >= 0.1
    return {
        "address": f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}",
        "city": place.city,
        "state": place.state,
        "zip": zip_code,
        "lat": f"{lat}" if placed else "",
        "lon": f"{lon}" if placed else "",
    }


def directory(size: int, gazetteer: Gazetteer, seed: int = 20240601) -> Directory:
    """``size`` clinics; every fifth has two locations (so 1.2 x ``size`` rows)."""
    rng = random.Random(f"{seed}:{size}")
    zips = _zips(gazetteer)
    exchanges = _exchanges()
    rows: list[dict[str, str]] = []
    for number in range(1, size + 1):
        codes = [code for code, share in SPECIALTY_SHARES if rng.random() < share]
        clinic = {
            "clinic_name": f"Bench Physical Therapy {number:06d}",
            "phone": _phone(rng, exchanges),
            "website": f"https://clinic-{number:06d}.example.com",
            "specialties": ";".join(codes or ["orthopedic"]),
        }
        for _ in range(2 if number % 5 == 0 else 1):
            rows.append({**clinic, **_location(rng, gazetteer, zips)})
    return Directory(size, rows)


def nearest_paths(count: int, gazetteer: Gazetteer, seed: int = 7) -> list[str]:
    """GET paths of ``/v1/locations/nearest`` (limit 10, one specialty) from ``count``
    different origins: four in five by coordinates, one in five by ZIP."""
    rng = random.Random(seed)
    zips = _zips(gazetteer)
    paths = []
    for _ in range(count):
        zip_code, lat, lon = _near(rng, gazetteer, zips)
        origin = f"zip={zip_code}" if rng.random() < 0.2 else f"lat={lat}&lon={lon}"
        paths.append(f"/v1/locations/nearest?{origin}&specialty={NEAREST_SPECIALTY}&limit=10")
    return paths


def referral_bodies(count: int, gazetteer: Gazetteer, seed: int = 11) -> list[str]:
    """JSON bodies of ``POST /v1/referrals``: origins by ZIP (seven in ten) or coordinates,
    one concern each."""
    rng = random.Random(seed)
    zips = _zips(gazetteer)
    bodies = []
    for number in range(count):
        zip_code, lat, lon = _near(rng, gazetteer, zips)
        origin: dict[str, object] = (
            {"zip": zip_code} if rng.random() < 0.7 else {"lat": lat, "lon": lon}
        )
        body = {
            "origin": origin,
            "concerns": [CONCERNS[number % len(CONCERNS)]],
            "patient_ref": f"bench-{number:06d}",
        }
        bodies.append(json.dumps(body, separators=(",", ":")))
    return bodies
