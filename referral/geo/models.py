"""Network geocoder results cached in the database, keyed by a hash so no address is stored."""

from datetime import datetime

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel

from referral.timeutil import utcnow


class GeocodeCacheEntry(SQLModel, table=True):
    __tablename__ = "geocode_cache"

    # sha256 of provider + normalized query: the query may be a patient's address.
    key: str = Field(primary_key=True, max_length=64)
    provider: str = Field(max_length=50)
    found: bool
    lat: float | None = None
    lon: float | None = None
    precision: str | None = Field(default=None, max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
