"""Directory tables: a clinic (the organization) has locations and specialties.

No ``from __future__ import annotations`` here: SQLModel reads the annotations at runtime.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Index
from sqlalchemy.orm import declared_attr
from sqlmodel import Field, Relationship, SQLModel

from referral.timeutil import utcnow


class GeocodePrecision(StrEnum):
    """How precisely a stored coordinate places a location (best first)."""

    ROOFTOP = "rooftop"
    STREET = "street"
    POSTAL_CODE = "postal_code"
    CITY = "city"
    MANUAL = "manual"


class SpecialtyBase(SQLModel):
    code: str = Field(primary_key=True, max_length=40)
    label: str = Field(max_length=120)
    nucc_taxonomy: str | None = Field(default=None, max_length=10)
    description: str | None = Field(default=None, max_length=500)


class Specialty(SpecialtyBase, table=True):
    __tablename__ = "specialty"


class ClinicSpecialty(SQLModel, table=True):
    """What is on record about a clinic and one specialty: it offers it, or (``offered``
    false) it is known not to, with the reason and who said so. No row: unknown, which is not
    "no" (docs/matching.md)."""

    __tablename__ = "clinic_specialty"

    clinic_id: int = Field(foreign_key="clinic.id", primary_key=True, ondelete="CASCADE")
    specialty_code: str = Field(foreign_key="specialty.code", primary_key=True, max_length=40)
    offered: bool = Field(default=True)
    reason: str = Field(max_length=500)
    # Where the statement comes from: a source document, an admin's key, an import.
    source: str | None = Field(default=None, max_length=200)

    clinic: "Clinic" = Relationship(back_populates="specialty_links")


class ClinicBase(SQLModel):
    # Unknown stays None (never guessed); needs_review says a person should look.
    name: str | None = Field(default=None, max_length=200, index=True)
    phone: str | None = Field(default=None, max_length=20, description="E.164")
    phone_original: str | None = Field(default=None, max_length=40)
    website: str | None = Field(default=None, max_length=300)
    source_file: str | None = Field(default=None, max_length=200)
    source_text: str | None = Field(default=None, max_length=4000)
    needs_review: bool = Field(default=False)
    review_reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    active: bool = Field(default=True, index=True)


class Clinic(ClinicBase, table=True):
    __tablename__ = "clinic"

    id: int | None = Field(default=None, primary_key=True)
    # Stable key from seed_data/, so seeding again updates rather than duplicates.
    seed_key: str | None = Field(default=None, max_length=120, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    # Optimistic locking: an UPDATE that finds another version fails (two admins, one row).
    version: int = Field(default=1)
    # The directory revision of the transaction that last changed it (or its specialties):
    # read models fetch only what changed since the revision they hold (revision.py).
    revision: int = Field(default=0, index=True)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]

    locations: list["Location"] = Relationship(
        back_populates="clinic",
        sa_relationship_kwargs={"order_by": "Location.id", "cascade": "all, delete-orphan"},
    )
    specialty_links: list["ClinicSpecialty"] = Relationship(
        back_populates="clinic",
        sa_relationship_kwargs={
            "order_by": "ClinicSpecialty.specialty_code",
            "cascade": "all, delete-orphan",
        },
    )

    @property
    def specialty_codes(self) -> list[str]:
        """The specialties it is on record as offering."""
        return [link.specialty_code for link in self.specialty_links if link.offered]

    @property
    def not_offered_codes(self) -> list[str]:
        """The specialties it is on record as not offering."""
        return [link.specialty_code for link in self.specialty_links if not link.offered]


class LocationBase(SQLModel):
    address_line1: str | None = Field(default=None, max_length=200)
    address_line2: str | None = Field(default=None, max_length=200)
    city: str | None = Field(default=None, max_length=100)
    state: str | None = Field(default=None, max_length=2, index=True)
    zip: str | None = Field(default=None, max_length=10, index=True)
    city_original: str | None = Field(default=None, max_length=100)
    state_original: str | None = Field(default=None, max_length=100)
    lat: float | None = Field(default=None)
    lon: float | None = Field(default=None)
    geocode_precision: str | None = Field(default=None, max_length=20)  # a GeocodePrecision
    geocode_source: str | None = Field(default=None, max_length=100)
    time_zone: str | None = Field(default=None, max_length=64)
    needs_review: bool = Field(default=False)
    review_reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    active: bool = Field(default=True)
    # Facts people ask about. None is "unknown", never "no" (see directory/hours.py).
    opening_hours: dict[str, Any] | None = Field(default=None, sa_type=JSON(none_as_null=True))
    hours_exceptions: list[dict[str, Any]] | None = Field(
        default=None, sa_type=JSON(none_as_null=True)
    )
    accepting_new_patients: bool | None = None
    telehealth: bool | None = None
    # ISO 639-1 codes, e.g. ["en", "es"].
    languages: list[str] | None = Field(default=None, sa_type=JSON(none_as_null=True))


class Location(LocationBase, table=True):
    __tablename__ = "location"
    __table_args__ = (Index("ix_location_lat_lon", "lat", "lon"),)

    id: int | None = Field(default=None, primary_key=True)
    clinic_id: int = Field(foreign_key="clinic.id", index=True, ondelete="CASCADE")
    seed_key: str | None = Field(default=None, max_length=160, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    version: int = Field(default=1)
    revision: int = Field(default=0, index=True)  # as Clinic.revision

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]

    clinic: Clinic = Relationship(back_populates="locations")
