"""Idempotency-Key handling for POSTs, per calling API key.

A key is claimed in its own committed transaction (the unique constraint decides races), then
completed in the same transaction that stores the referral, so a referral and its stored
response exist together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from referral.referrals.models import IdempotencyRecord
from referral.timeutil import as_utc, utcnow

IN_FLIGHT = "in_flight"
DONE = "done"


class ClaimOutcome(StrEnum):
    NEW = "new"  # go ahead; complete() or release() the record afterwards
    REPLAY = "replay"  # same key, same body, finished: answer the stored response
    MISMATCH = "mismatch"  # same key, different body
    IN_FLIGHT = "in_flight"  # same key, still being processed


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    record_id: int
    response_status: int | None = None
    response_body: dict[str, Any] | None = None
    referral_id: str | None = None
    # The claim's created_at doubles as its owner token: a takeover changes it, so a slow
    # original can neither complete nor release a claim that is no longer its own.
    claimed_at: datetime | None = None


class ClaimLostError(RuntimeError):
    """Another retry took this claim over (it looked abandoned); store nothing."""


def fingerprint(payload: Any) -> str:
    """Hash of the parsed body: the same JSON however it is spaced or ordered."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(
    engine: Engine,
    *,
    api_key_id: int,
    key: str,
    request_hash: str,
    retention: timedelta,
    stale_after: timedelta,
) -> Claim:
    now = utcnow()
    with Session(engine) as session:
        for _attempt in range(3):
            existing = session.exec(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
                )
            ).first()
            if existing is not None and as_utc(existing.expires_at) <= now:
                # Conditional: a concurrent retry may be deleting the same expired record.
                session.execute(
                    delete(IdempotencyRecord)
                    .where(
                        col(IdempotencyRecord.id) == existing.id,
                        col(IdempotencyRecord.expires_at) <= now,
                    )
                    .execution_options(synchronize_session=False)
                )
                session.commit()
                session.expunge_all()
                continue
            if existing is not None:
                return _classify(session, existing, request_hash, now, stale_after)
            record = IdempotencyRecord(
                api_key_id=api_key_id,
                key=key,
                request_hash=request_hash,
                state=IN_FLIGHT,
                created_at=now,
                expires_at=now + retention,
            )
            session.add(record)
            try:
                session.commit()
            except IntegrityError:  # a concurrent request claimed it first: look again
                session.rollback()
                continue
            assert record.id is not None
            return Claim(ClaimOutcome.NEW, record.id, claimed_at=now)
    raise RuntimeError("idempotency key could not be claimed")


def _classify(
    session: Session,
    record: IdempotencyRecord,
    request_hash: str,
    now: datetime,
    stale_after: timedelta,
) -> Claim:
    assert record.id is not None
    if record.request_hash != request_hash:
        return Claim(ClaimOutcome.MISMATCH, record.id)
    if record.state == DONE:
        return Claim(
            ClaimOutcome.REPLAY,
            record.id,
            record.response_status,
            record.response_body,
            referral_id=record.referral_id,
        )
    if as_utc(record.created_at) < now - stale_after:
        # The request that claimed it died mid-way (nothing was stored with it): take over,
        # unless another retry takes over first.
        taken = session.execute(
            update(IdempotencyRecord)
            .where(
                col(IdempotencyRecord.id) == record.id,
                col(IdempotencyRecord.state) == IN_FLIGHT,
                col(IdempotencyRecord.created_at) == record.created_at,
            )
            .values(created_at=now)
        )
        session.commit()
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return Claim(ClaimOutcome.NEW, record.id, claimed_at=now)
    return Claim(ClaimOutcome.IN_FLIGHT, record.id)


def _owned(claim: Claim) -> Any:
    return (
        (col(IdempotencyRecord.id) == claim.record_id)
        & (col(IdempotencyRecord.state) == IN_FLIGHT)
        & (col(IdempotencyRecord.created_at) == claim.claimed_at)
    )


def complete(
    session: Session, claim: Claim, *, status: int, body: dict[str, Any], referral_id: str
) -> None:
    """Store the response in the caller's transaction (the one that stores the referral);
    raise ClaimLostError if the claim is no longer this request's."""
    done = session.execute(
        update(IdempotencyRecord)
        .where(_owned(claim))
        .values(state=DONE, response_status=status, response_body=body, referral_id=referral_id)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise ClaimLostError("the Idempotency-Key was taken over by a retry")


def release(engine: Engine, claim: Claim) -> None:
    """The request failed and stored nothing: free the key for a corrected retry (unless a
    retry owns it now)."""
    with Session(engine) as session:
        session.execute(delete(IdempotencyRecord).where(_owned(claim)))
        session.commit()


def delete_expired(session: Session) -> int:
    result = session.execute(
        delete(IdempotencyRecord).where(col(IdempotencyRecord.expires_at) <= utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
