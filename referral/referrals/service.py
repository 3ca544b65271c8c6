"""Sending a referral (POST /v1/referrals) as one use case: ``submit_referral``.

Everything happens in one transaction of the caller's session, committed or rolled back here:

1. With an Idempotency-Key, its record is read first: a finished record answers at once (the
   same body: its stored answer, replayed; another body: IdempotencyKeyReusedError). A
   replay costs that one read and its audit line.
2. The origin is placed, the referral matched (from the directory's in-memory read model) and
   its answer made, all before anything is written: on SQLite the first write takes the
   database's one write lock, held until the commit.
3. The writes, in this order: the idempotency record (finished: body hash, answer, referral
   id; an expired one with the same key is deleted just before), the referral, its first
   history line, the "ok" audit line; then the commit. The record comes first so that its
   unique (api_key_id, key) index decides a race before anything else is written: a
   concurrent request with the same key waits at that insert until the first one's
   transaction ends, then gets an IntegrityError and answers the first one's record (or goes
   ahead, if the first one rolled back). A worker killed mid-request leaves nothing behind,
   so its client's retry proceeds at once.

Refusals are audited by the caller in a short transaction of their own (they must stand when
the request fails); only the lines of answered requests ("ok", "replayed") are written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from referral.auth.models import ApiKey
from referral.geo.chain import GeocoderChain
from referral.referrals import audit, idempotency
from referral.referrals import log as referral_log
from referral.referrals.intake import (
    NewReferral,
    ReferralInputError,
    create_referral,
    referral_request,
    store_referral,
)
from referral.referrals.matching import MatchRules
from referral.referrals.schemas import ReferralSchema, referral_json
from referral.timeutil import utcnow

CREATE = "referral.create"
CREATED = 201
# The record's insert lost a race to a record that is no answer (deleted meanwhile, or an
# older release's unfinished claim): tried again once, then the IntegrityError stands.
_INSERT_ATTEMPTS = 2


class IdempotencyKeyReusedError(ValueError):
    """The Idempotency-Key already answered a request with a different body."""


@dataclass(frozen=True)
class Submitted:
    """The answer to send: the new referral (``replayed`` false), or the stored answer of an
    earlier request with the same Idempotency-Key and body (``replayed`` true)."""

    body: dict[str, Any]
    status: int = CREATED
    replayed: bool = False

    @property
    def referral_id(self) -> str | None:
        referral_id = self.body.get("id")
        return None if referral_id is None else str(referral_id)


def submit_referral(
    session: Session,
    *,
    key: ApiKey,
    body: Mapping[str, Any],
    idempotency_key: str | None,
    rules: MatchRules,
    geocoder: GeocoderChain,
    retention: timedelta,
) -> Submitted:
    """Match, store and audit the referral ``body`` (``ReferralCreateSchema``'s output) sent
    with ``key``, and with an ``idempotency_key`` its stored answer, in one transaction of
    ``session``; or answer that key's stored record. Raises ReferralInputError (the body
    cannot be matched as asked: nothing written) or IdempotencyKeyReusedError; the session's
    transaction is committed or rolled back either way."""
    try:
        return _submit(
            session,
            key=key,
            body=body,
            idempotency_key=idempotency_key,
            rules=rules,
            geocoder=geocoder,
            retention=retention,
        )
    except BaseException:
        session.rollback()
        raise


def _submit(
    session: Session,
    *,
    key: ApiKey,
    body: Mapping[str, Any],
    idempotency_key: str | None,
    rules: MatchRules,
    geocoder: GeocoderChain,
    retention: timedelta,
) -> Submitted:
    assert key.id is not None
    now = utcnow()
    request_hash: str | None = None
    stale: idempotency.StoredAnswer | None = None
    if idempotency_key is not None:
        request_hash = idempotency.fingerprint(body)
        stored = idempotency.find(session, api_key_id=key.id, key=idempotency_key)
        if stored is not None:
            if stored.answers(now):
                return _stored(session, key, stored, request_hash)
            stale = stored  # expired (or left by an older release): replaced below
    new = create_referral(
        session,
        referral_request(body, geocoder),
        source=key.name,
        source_key_id=key.id,
        rules=rules,
    )
    answer = _answer(session, new)
    # The writes: from the first one to the commit, SQLite's one write lock is held.
    if idempotency_key is not None and request_hash is not None:
        for attempt in range(_INSERT_ATTEMPTS):
            if stale is not None:
                idempotency.forget(session, stale, now)
            try:
                idempotency.insert(
                    session,
                    api_key_id=key.id,
                    key=idempotency_key,
                    request_hash=request_hash,
                    status=CREATED,
                    body=answer,
                    referral_id=new.id,
                    now=now,
                    retention=retention,
                )
                break
            except IntegrityError:
                # A concurrent request with this key committed its record first (this
                # insert waited for it): nothing of this one was written.
                session.rollback()
                stored = idempotency.find(session, api_key_id=key.id, key=idempotency_key)
                if stored is not None and stored.answers(now):
                    return _stored(session, key, stored, request_hash)
                if attempt + 1 == _INSERT_ATTEMPTS:
                    raise
                # Gone again, or an older release's unfinished claim: replace it.
                stale = stored
    store_referral(session, new)
    # Committed with the referral: the "ok" line exists exactly when the referral does.
    audit.add(session, actor_key_id=key.id, action=CREATE, outcome="ok", referral_ids=[new.id])
    session.commit()
    return Submitted(answer)


def _answer(session: Session, new: NewReferral) -> dict[str, Any]:
    """The new referral's answer, dumped from the rows in hand (nothing is read back)."""
    # The rows stand in for the models: the dump reads their attributes only.
    referral: Any = SimpleNamespace(**new.row)
    events: Any = [SimpleNamespace(**event) for event in new.history]
    return referral_json(
        referral_log.detail(session, referral, location=new.location, events=events)
    )


def _stored(
    session: Session, key: ApiKey, stored: idempotency.StoredAnswer, request_hash: str
) -> Submitted:
    """A finished record's answer (replayed, audited) or, for another body, the refusal."""
    if stored.request_hash != request_hash:
        session.rollback()
        raise IdempotencyKeyReusedError("the Idempotency-Key was used with a different body")
    body = dict(stored.response_body or {})
    if not body.get("id") and stored.referral_id:
        # The stored answer was purged (it repeated patient data): answer from the log.
        referral = referral_log.get_by_id(session, stored.referral_id)
        if referral is not None:
            body = ReferralSchema().dump(referral_log.detail(session, referral))
    body["replayed"] = True
    audit.add(
        session,
        actor_key_id=key.id,
        action=CREATE,
        outcome="replayed",
        referral_ids=[stored.referral_id],
    )
    session.commit()
    return Submitted(body, status=stored.response_status or CREATED, replayed=True)


__all__ = [
    "IdempotencyKeyReusedError",
    "ReferralInputError",
    "Submitted",
    "submit_referral",
]
