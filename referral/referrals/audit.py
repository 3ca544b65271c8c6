"""The audit trail of referral reads and writes: ``record`` writes in its own transaction, so
that the line stands even when the request it records fails; ``add`` writes in the caller's,
for a write that succeeded (the line is then stored with the change, or neither is)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from referral.referrals.models import AuditEvent
from referral.timeutil import utcnow

# Core inserts: an audit line is never read back, so it needs no ORM object.
_TABLE: Table = AuditEvent.__table__  # type: ignore[attr-defined]
_INSERT = _TABLE.insert()


def _rows(
    actor_key_id: int | None, action: str, outcome: str, referral_ids: Iterable[str | None]
) -> list[dict[str, Any]]:
    now = utcnow()
    rows = [
        {
            "at": now,
            "actor_key_id": actor_key_id,
            "action": action,
            "referral_id": referral_id,
            "outcome": outcome,
        }
        for referral_id in referral_ids
    ]
    if not rows:
        rows = [
            {"at": now, "actor_key_id": actor_key_id, "action": action,
             "referral_id": None, "outcome": outcome}
        ]  # fmt: skip
    return rows


def record(
    engine: Engine,
    *,
    actor_key_id: int | None,
    action: str,
    outcome: str,
    referral_ids: Iterable[str | None] = (None,),
) -> None:
    rows = _rows(actor_key_id, action, outcome, referral_ids)
    with engine.begin() as connection:
        connection.execute(_INSERT, rows)


def add(
    session: Session,
    *,
    actor_key_id: int | None,
    action: str,
    outcome: str,
    referral_ids: Iterable[str | None] = (None,),
) -> None:
    """Record in ``session``'s transaction (committed with it)."""
    session.connection().execute(_INSERT, _rows(actor_key_id, action, outcome, referral_ids))
