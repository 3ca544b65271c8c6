"""The audit trail of referral reads and writes, written in its own transaction so that it
stands even when the request it records fails."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from referral.referrals.models import AuditEvent
from referral.timeutil import utcnow


def record(
    engine: Engine,
    *,
    actor_key_id: int | None,
    action: str,
    outcome: str,
    referral_ids: Iterable[str | None] = (None,),
) -> None:
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
    with Session(engine) as session:
        session.execute(insert(AuditEvent), rows)
        session.commit()
