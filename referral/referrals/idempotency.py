"""Idempotency-Key records for POSTs, per calling API key.

A record is written once, finished: in the transaction that stores the referral it answers,
with the request's body hash, the stored answer and the referral's id, before the referral's
own rows (service.py). The unique (api_key_id, key) constraint decides races: a concurrent
request with the same key waits at its insert (PostgreSQL: on the unique index; SQLite: for
the write lock) until the first one's transaction ends, then either fails with an
IntegrityError (the first committed: answer its record) or goes ahead (the first rolled back,
or its worker died: nothing of it stays). There is no "in flight" state to get stuck.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, select
from sqlmodel import Session

from referral.referrals.models import IdempotencyRecord
from referral.timeutil import as_utc, utcnow

DONE = "done"

_TABLE: Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
_FIND = select(
    _TABLE.c.id,
    _TABLE.c.request_hash,
    _TABLE.c.state,
    _TABLE.c.response_status,
    _TABLE.c.response_body,
    _TABLE.c.referral_id,
    _TABLE.c.expires_at,
)
_INSERT = _TABLE.insert()


@dataclass(frozen=True)
class StoredAnswer:
    """An Idempotency-Key's record as read."""

    record_id: int
    request_hash: str
    state: str
    response_status: int | None
    response_body: dict[str, Any] | None  # None once purged: answer from the referral log
    referral_id: str | None
    expires_at: datetime

    def answers(self, now: datetime) -> bool:
        """Whether the key is taken: a finished record that has not expired. (Anything else
        is deleted by the next request with the key, in its own transaction.)"""
        return self.state == DONE and as_utc(self.expires_at) > now


def fingerprint(payload: Any) -> str:
    """Hash of the parsed body: the same JSON however it is spaced or ordered."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find(session: Session, *, api_key_id: int, key: str) -> StoredAnswer | None:
    """The key's record, read in ``session``'s transaction (one Core select)."""
    row = (
        session.connection()
        .execute(_FIND.where(_TABLE.c.api_key_id == api_key_id, _TABLE.c.key == key))
        .first()
    )
    return None if row is None else StoredAnswer(*row)


def forget(session: Session, stale: StoredAnswer, now: datetime) -> None:
    """Delete an expired record (or one left "in_flight" by an older release) in
    ``session``'s transaction, before the insert that replaces it. Conditional: a concurrent
    request may be replacing the same record, and then the insert decides."""
    condition = _TABLE.c.id == stale.record_id
    if stale.state == DONE:
        condition &= _TABLE.c.expires_at <= now
    session.connection().execute(delete(_TABLE).where(condition))


def insert(
    session: Session,
    *,
    api_key_id: int,
    key: str,
    request_hash: str,
    status: int,
    body: dict[str, Any],
    referral_id: str,
    now: datetime,
    retention: timedelta,
) -> None:
    """Store the finished record in ``session``'s transaction. Raises IntegrityError when
    another request's record with this key committed first (or once it does)."""
    session.connection().execute(
        _INSERT,
        {
            "api_key_id": api_key_id,
            "key": key,
            "request_hash": request_hash,
            "state": DONE,
            "response_status": status,
            "response_body": body,
            "referral_id": referral_id,
            "created_at": now,
            "expires_at": now + retention,
        },
    )


def delete_expired(session: Session) -> int:
    result = session.execute(delete(_TABLE).where(_TABLE.c.expires_at <= utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]
