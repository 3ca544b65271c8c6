"""Load seed_data/ into the directory, idempotently: a second run changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from referral.directory.models import Clinic, ClinicSpecialty, Location, Specialty
from referral.geo.chain import GeocoderChain
from referral.timeutil import utcnow

KINDS = ("specialty", "clinic", "location", "concern", "red_flag")


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


@dataclass
class SeedReport:
    created: dict[str, int] = field(default_factory=_zero_counts)
    updated: dict[str, int] = field(default_factory=_zero_counts)
    unchanged: dict[str, int] = field(default_factory=_zero_counts)

    @property
    def changed(self) -> bool:
        return any(self.created.values()) or any(self.updated.values())

    def count(self, kind: str, outcome: str) -> None:
        getattr(self, outcome)[kind] += 1


def read_seed_file(seed_dir: Path, name: str) -> Any:
    with (seed_dir / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def apply_changes(record: Any, values: dict[str, Any]) -> bool:
    """Set the values that differ; say whether any did."""
    changed = False
    for key, value in values.items():
        if getattr(record, key) != value:
            setattr(record, key, value)
            changed = True
    return changed


def seed_directory(session: Session, seed_dir: Path, geocoder: GeocoderChain) -> SeedReport:
    """Upsert specialties, clinics and locations by their seed keys; flush, don't commit."""
    report = SeedReport()
    for item in read_seed_file(seed_dir, "specialties.json"):
        _upsert_specialty(session, item, report)
    session.flush()
    for item in read_seed_file(seed_dir, "clinics.json")["clinics"]:
        _upsert_clinic(session, item, geocoder, report)
    session.flush()
    return report


def _upsert_specialty(session: Session, item: dict[str, Any], report: SeedReport) -> None:
    values: dict[str, Any] = {
        "label": item["label"],
        "nucc_taxonomy": item.get("nucc_taxonomy"),
        "description": item.get("description"),
    }
    specialty = session.get(Specialty, item["code"])
    if specialty is None:
        session.add(Specialty(code=item["code"], **values))
        report.count("specialty", "created")
    elif apply_changes(specialty, values):
        report.count("specialty", "updated")
    else:
        report.count("specialty", "unchanged")


def _upsert_clinic(
    session: Session, item: dict[str, Any], geocoder: GeocoderChain, report: SeedReport
) -> None:
    reasons = list(item.get("review_reasons") or [])
    values: dict[str, Any] = {
        "name": item.get("name"),
        "phone": item.get("phone"),
        "phone_original": item.get("phone_original"),
        "website": item.get("website"),
        "source_file": item.get("source_file"),
        "source_text": item.get("source_text"),
        "review_reasons": reasons,
        "needs_review": bool(reasons),
    }
    clinic = session.exec(select(Clinic).where(Clinic.seed_key == item["key"])).first()
    if clinic is None:
        clinic = Clinic(seed_key=item["key"], **values)
        session.add(clinic)
        session.flush()
        outcome = "created"
    else:
        outcome = "updated" if apply_changes(clinic, values) else "unchanged"
    # What the source says of each specialty: offered (the default) or, explicitly, not.
    wanted = {
        s["code"]: {
            "offered": bool(s.get("offered", True)),
            "reason": s["reason"],
            "source": item.get("source_file"),
        }
        for s in item.get("specialties") or []
    }
    current = {link.specialty_code: link for link in clinic.specialty_links}
    for code, link in current.items():
        if code not in wanted:
            clinic.specialty_links.remove(link)
            outcome = outcome if outcome == "created" else "updated"
    for code, said in wanted.items():
        if code not in current:
            assert clinic.id is not None
            clinic.specialty_links.append(
                ClinicSpecialty(clinic_id=clinic.id, specialty_code=code, **said)
            )
            outcome = outcome if outcome == "created" else "updated"
        elif apply_changes(current[code], said):
            outcome = outcome if outcome == "created" else "updated"
    if outcome == "updated":
        clinic.updated_at = utcnow()
    report.count("clinic", outcome)
    for location_item in item["locations"]:
        _upsert_location(session, clinic, location_item, geocoder, report)


def location_values(item: dict[str, Any], geocoder: GeocoderChain) -> dict[str, Any]:
    """The stored fields of a seed location, geocoded offline, every inference flagged."""
    reasons = list(item.get("review_reasons") or [])
    state = item.get("state")
    city = item.get("city")
    if state is None and city:
        states = geocoder.gazetteer.states_with_city(city)
        if len(states) == 1:
            # Derived, not invented: the only state with this city name; still flagged.
            state = states[0]
            reasons.append(f"state {state} inferred: {city} is a USPS city name only in {state}")
    found = geocoder.location(
        address_line1=item.get("address_line1"),
        city=city,
        state=state,
        zip_code=item.get("zip"),
        use_network=False,
    )
    if found is None:
        reasons.append("could not be geocoded from the source's city, state and ZIP")
    return {
        "address_line1": item.get("address_line1"),
        "address_line2": item.get("address_line2"),
        "city": city,
        "state": state,
        "zip": item.get("zip"),
        "city_original": item.get("city_original"),
        "state_original": item.get("state_original"),
        "lat": found.lat if found else None,
        "lon": found.lon if found else None,
        "geocode_precision": found.precision.value if found else None,
        "geocode_source": found.source if found else None,
        "time_zone": found.time_zone if found else None,
        "review_reasons": reasons,
        "needs_review": bool(reasons),
    }


def _upsert_location(
    session: Session,
    clinic: Clinic,
    item: dict[str, Any],
    geocoder: GeocoderChain,
    report: SeedReport,
) -> None:
    values = location_values(item, geocoder)
    location = session.exec(select(Location).where(Location.seed_key == item["key"])).first()
    if location is None:
        assert clinic.id is not None
        session.add(Location(seed_key=item["key"], clinic_id=clinic.id, **values))
        report.count("location", "created")
    elif apply_changes(location, values):
        location.updated_at = utcnow()
        report.count("location", "updated")
    else:
        report.count("location", "unchanged")
