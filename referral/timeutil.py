"""Timestamps: always timezone-aware UTC."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one we store is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def to_utc(moment: datetime) -> datetime:
    """For comparisons in SQL: SQLite compares stored UTC text, so a bound value must be UTC
    too (an offset like -05:00 would otherwise be silently dropped)."""
    return as_utc(moment).astimezone(UTC)
