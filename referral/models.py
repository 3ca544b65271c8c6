"""Every table, imported in one place so migrations and metadata see them all."""

from referral.admin.models import AdminChange
from referral.auth.models import ApiKey
from referral.directory.models import Clinic, ClinicSpecialty, Location, Specialty
from referral.directory.revision import DirectoryRevision
from referral.geo.models import GeocodeCacheEntry
from referral.referrals.models import (
    AuditEvent,
    Concern,
    ConcernSpecialty,
    IdempotencyRecord,
    RedFlag,
    Referral,
    ReferralEvent,
)

__all__ = [
    "AdminChange",
    "ApiKey",
    "AuditEvent",
    "Clinic",
    "ClinicSpecialty",
    "Concern",
    "ConcernSpecialty",
    "DirectoryRevision",
    "GeocodeCacheEntry",
    "IdempotencyRecord",
    "Location",
    "RedFlag",
    "Referral",
    "ReferralEvent",
    "Specialty",
]
