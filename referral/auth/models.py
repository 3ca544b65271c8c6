"""API keys: only a hash of each key is stored, never the key itself.

No ``from __future__ import annotations`` here: SQLModel reads the annotations at runtime.
"""

from datetime import datetime

from sqlalchemy import JSON, DateTime
from sqlmodel import Field, SQLModel

from referral.timeutil import as_utc, utcnow

# The scope vocabulary. ``admin`` implies every other scope.
SCOPE_REFERRALS_WRITE = "referrals:write"  # assessment apps sending referrals
SCOPE_REFERRALS_READ = "referrals:read"  # dashboards
SCOPE_REFERRALS_STATUS = "referrals:status"  # a clinic updating its referrals' status
SCOPE_CLINICS_WRITE = "clinics:write"  # directory maintainers
SCOPE_ADMIN = "admin"
SCOPES: tuple[str, ...] = (
    SCOPE_REFERRALS_WRITE,
    SCOPE_REFERRALS_READ,
    SCOPE_REFERRALS_STATUS,
    SCOPE_CLINICS_WRITE,
    SCOPE_ADMIN,
)


class ApiKeyBase(SQLModel):
    # The app or partner holding the key; also the "source" of the referrals it sends.
    name: str = Field(max_length=120)
    scopes: list[str] = Field(default_factory=list, sa_type=JSON)
    # A key bound to one clinic (required for referrals:status). No ON DELETE: a clinic with
    # keys cannot be deleted out from under them (clinics are deactivated, not deleted).
    clinic_id: int | None = Field(default=None, foreign_key="clinic.id", index=True)
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class ApiKey(ApiKeyBase, table=True):
    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    # Public part of the key (rk_<key_id>_<secret>): how a presented key is looked up.
    key_id: str = Field(max_length=24, unique=True)
    # sha256 hex of the whole key.
    secret_hash: str = Field(max_length=64)
    # For people: prefix, key_id and the last 4 characters, e.g. "rk_3f9a2c1b7d4e…Wx9Q".
    hint: str = Field(max_length=40)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and as_utc(self.expires_at) <= as_utc(now)

    def is_usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and not self.is_expired(now)

    def has_scope(self, scope: str) -> bool:
        """Whether the key grants ``scope``; ``admin`` grants every scope."""
        return SCOPE_ADMIN in self.scopes or scope in self.scopes
