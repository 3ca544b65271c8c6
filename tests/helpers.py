"""Shared test helpers: reading what is stored, and checking problem responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlmodel import Session, select

from referral.db import get_database
from referral.directory.models import Clinic, Location


@dataclass(frozen=True)
class StoredLocation:
    id: int
    clinic_id: int
    lat: float
    lon: float
    city: str | None
    specialties: frozenset[str]


def stored_locations(app: Flask) -> list[StoredLocation]:
    """Every active, geocoded location of an active clinic, read straight from the tables."""
    with Session(get_database(app).engine) as session:
        rows = session.exec(select(Location, Clinic).where(Location.clinic_id == Clinic.id)).all()
        return [
            StoredLocation(
                id=location.id or 0,
                clinic_id=clinic.id or 0,
                lat=location.lat,
                lon=location.lon,
                city=location.city,
                specialties=frozenset(clinic.specialty_codes),
            )
            for location, clinic in rows
            if location.active
            and clinic.active
            and location.lat is not None
            and location.lon is not None
        ]


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``, naming ``field`` if given."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"] == "about:blank"
    if field is not None:
        named = [param["name"] for param in body.get("invalid_params", [])]
        assert field in named, body
        assert field in body["detail"]
    return body


def auth(key: str, **headers: str) -> dict[str, str]:
    """Request headers with an API key (and any others)."""
    return {"Authorization": f"Bearer {key}", **headers}
