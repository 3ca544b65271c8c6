"""Every table, imported in one place so migrations and metadata see them all."""

from referral.directory.models import Clinic, ClinicSpecialty, Location, Specialty
from referral.geo.models import GeocodeCacheEntry

__all__ = ["Clinic", "ClinicSpecialty", "GeocodeCacheEntry", "Location", "Specialty"]
