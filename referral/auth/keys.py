"""API keys: making, finding and revoking them, and checking a request's bearer key.

A key reads ``rk_<key_id>_<secret>``: ``key_id`` (12 hex characters) is public and finds the
row; ``secret`` is ``secrets.token_urlsafe(32)``. Only the sha256 of the whole key is stored.
A slow or salted hash would add nothing here: the secret has 256 random bits, so the hash
cannot be reversed by guessing. Keys are shown once, when made, and never logged.

Each process keeps the rows of keys it recently authenticated, by the hash of the whole
key, for at most KEY_CACHE_SECONDS (app config ``API_KEY_CACHE_SECONDS``), so a busy client
does not cost a database read per request. The bound this puts on revocation: a key revoked
by ``revoke_key`` in the same process is refused at once; revoked anywhere else (another
worker, the CLI against a running server), it is refused by every process within
KEY_CACHE_SECONDS. Expiry is checked at every request against the row's ``expires_at``.
Unknown or wrong keys are never cached: each costs a read, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from flask import current_app, g, request
from flask_smorest import Api, abort
from sqlalchemy import event, or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from referral.auth.models import (
    SCOPE_ADMIN,
    SCOPE_REFERRALS_STATUS,
    SCOPES,
    ApiKey,
)
from referral.db import get_database, get_session
from referral.directory.models import Clinic
from referral.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "rk_"
KEY_ID_HEX_CHARS = 12
_SECRET_BYTES = 32  # token_urlsafe(32): 43 characters of [A-Za-z0-9_-]
_SECRET_CHARS = 43
KEY_RE = re.compile(
    rf"{KEY_PREFIX}(?P<key_id>[0-9a-f]{{{KEY_ID_HEX_CHARS}}})_(?P<secret>[A-Za-z0-9_-]{{{_SECRET_CHARS}}})"
)
KEY_ID_RE = re.compile(rf"[0-9a-f]{{{KEY_ID_HEX_CHARS}}}")
NAME_MAX_CHARS = 100  # the referral log keeps it as the source: VARCHAR(100)

# last_used_at is written at most this often per key, so reads do not all write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# How long a process trusts a key's row it has read (see the module docstring): the longest
# a revocation made elsewhere takes to reach it. Overridden by app config API_KEY_CACHE_SECONDS.
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_MAX_ENTRIES = 1024  # keys; past this the cache starts afresh

REALM = "referral"
BEARER_SCHEME_NAME = "bearerAuth"
# For views: @blp.doc(security=BEARER_SECURITY)
BEARER_SECURITY: list[dict[str, list[str]]] = [{BEARER_SCHEME_NAME: []}]


class ApiKeyError(ValueError):
    """Bad input to create_key or revoke_key; the message is safe to show (never a key)."""

    field = "key"


class UnknownScopeError(ApiKeyError):
    field = "scopes"

    def __init__(self, unknown: Iterable[str]) -> None:
        self.unknown = sorted(set(unknown))
        super().__init__(
            f"unknown scope(s): {', '.join(self.unknown)} (known: {', '.join(SCOPES)})"
        )


class ScopeError(ApiKeyError):
    field = "scopes"


class ClinicBindingError(ApiKeyError):
    field = "clinic"


class InvalidNameError(ApiKeyError):
    field = "name"


class InvalidExpiryError(ApiKeyError):
    field = "expires_at"


class UnknownKeyError(ApiKeyError):
    field = "key_id"


# --- the key itself -----------------------------------------------------------------------


def hash_key(key: str) -> str:
    """sha256 hex of the whole key (what is stored)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = KEY_RE.fullmatch(presented)
    if match is None:
        return None
    return match["key_id"], match["secret"]


def make_hint(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id}…{secret[-4:]}"


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """Stripped, deduplicated, in vocabulary order; unknown names raise UnknownScopeError."""
    wanted = {scope.strip() for scope in scopes if scope.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise UnknownScopeError(unknown)
    if not wanted:
        raise ScopeError(f"at least one scope is needed (known: {', '.join(SCOPES)})")
    return [scope for scope in SCOPES if scope in wanted]


def _new_key_id(session: Session) -> str:
    for _ in range(5):
        key_id = secrets.token_hex(KEY_ID_HEX_CHARS // 2)
        if session.exec(select(ApiKey.id).where(ApiKey.key_id == key_id)).first() is None:
            return key_id
    raise RuntimeError("could not find an unused key id")  # 48 random bits: never happens


# --- service functions ----------------------------------------------------------------------


def create_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    clinic_id: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Make a key: the stored row (added and flushed, not committed) and the key itself.

    The key is returned once and stored nowhere; only its hash is kept. Raises an
    ApiKeyError subclass on bad input, before anything is added to the session.
    """
    name = name.strip()
    if not name:
        raise InvalidNameError("a name is needed (the app or partner using the key)")
    if len(name) > NAME_MAX_CHARS:
        raise InvalidNameError(f"the name is longer than {NAME_MAX_CHARS} characters")
    checked = normalize_scopes(scopes)
    if clinic_id is not None:
        if SCOPE_ADMIN in checked:
            raise ClinicBindingError("an admin key cannot be bound to a clinic")
        if session.get(Clinic, clinic_id) is None:
            raise ClinicBindingError(f"no clinic with id {clinic_id}")
    elif SCOPE_REFERRALS_STATUS in checked:
        raise ClinicBindingError(f"a {SCOPE_REFERRALS_STATUS} key must be bound to a clinic")
    now = utcnow()
    if expires_at is not None:
        expires_at = as_utc(expires_at)
        if expires_at <= now:
            raise InvalidExpiryError("the expiry must be in the future")

    key_id = _new_key_id(session)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    key = f"{KEY_PREFIX}{key_id}_{secret}"
    assert parse_key(key) == (key_id, secret)
    row = ApiKey(
        name=name,
        scopes=checked,
        clinic_id=clinic_id,
        expires_at=expires_at,
        key_id=key_id,
        secret_hash=hash_key(key),
        hint=make_hint(key_id, secret),
        created_at=now,
    )
    session.add(row)
    session.flush()
    log.info("API key %s created for %r with scopes %s", key_id, name, ",".join(checked))
    return row, key


def find_key(session: Session, presented: str) -> ApiKey | None:
    """The key's row, or None when malformed, unknown or with a wrong secret.

    Expired and revoked keys are returned: check ``is_usable``. The hashes are compared in
    constant time.
    """
    parsed = parse_key(presented)
    if parsed is None:
        return None
    key_id, _secret = parsed
    row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None:
        return None
    if not hmac.compare_digest(row.secret_hash, hash_key(presented)):
        return None
    return row


def get_key(session: Session, key_id: str) -> ApiKey:
    key_id = key_id.strip().lower()
    if not KEY_ID_RE.fullmatch(key_id):
        # Never echo the value: it may be a whole key pasted by mistake.
        raise UnknownKeyError(
            f"expected a key id of {KEY_ID_HEX_CHARS} hex characters (see `referral keys list`)"
        )
    row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None:
        raise UnknownKeyError(f"no API key with id {key_id}")
    return row


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key by its key_id (flushed, not committed). Revoking twice keeps the first time.

    Raises UnknownKeyError for an unknown or malformed key_id.
    """
    row = get_key(session, key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
        log.info("API key %s revoked", row.key_id)
    # This process stops trusting the key at once, and again once the revocation is committed
    # (a request in between may have cached the row as it still was).
    forget_cached_keys(row.key_id)
    event.listen(session, "after_commit", lambda _s: forget_cached_keys(row.key_id), once=True)
    return row


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first."""
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id))))


# --- the per-process cache of authenticated keys ---------------------------------------------

_monotonic = time.monotonic  # tests move this clock
_cache_lock = threading.Lock()
# (database url, sha256 of the whole key) -> (when read, the row, detached and fully loaded)
_key_cache: dict[tuple[str, str], tuple[float, ApiKey]] = {}


def forget_cached_keys(key_id: str | None = None) -> None:
    """Drop this process's cached rows: of one key (by its public key_id), or all."""
    with _cache_lock:
        if key_id is None:
            _key_cache.clear()
            return
        for slot in [slot for slot, (_, row) in _key_cache.items() if row.key_id == key_id]:
            del _key_cache[slot]


def _cache_seconds() -> float:
    return float(current_app.config.get("API_KEY_CACHE_SECONDS", KEY_CACHE_SECONDS))


def _lookup(presented: str) -> ApiKey | None:
    """``find_key`` through the cache. The row returned is detached from every session and
    shared by this process's requests: read it, never change it."""
    slot = (get_database().url, hash_key(presented))
    ttl = _cache_seconds()
    entry = _key_cache.get(slot)
    if entry is not None and _monotonic() - entry[0] < ttl:
        return entry[1]
    read_at = _monotonic()
    session = get_session()
    row = find_key(session, presented)
    if row is None:
        return None
    # Out of the request's session: its commit must not expire (and so re-read) the key.
    session.expunge(row)
    if ttl > 0:
        with _cache_lock:
            if len(_key_cache) >= KEY_CACHE_MAX_ENTRIES:
                _key_cache.clear()
            _key_cache[slot] = (read_at, row)
    return row


# --- requests ------------------------------------------------------------------------------


def _challenge(error: str | None = None, **params: str) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    parts.extend(f'{name}="{value}"' for name, value in params.items())
    return "Bearer " + ", ".join(parts)


def _unauthorized(message: str, error: str | None = "invalid_token") -> NoReturn:
    # RFC 6750: no error code when no credentials came at all; invalid_token otherwise.
    abort(401, message=message, headers={"WWW-Authenticate": _challenge(error)})
    raise AssertionError("unreachable")


_VERDICT_ENVIRON = "referral.auth_verdict"


@dataclass(frozen=True)
class _Verdict:
    """What this request's Authorization header amounts to, worked out once per request."""

    key: ApiKey | None  # the usable key, or None
    message: str = ""  # why not (never the presented key)
    error: str | None = "invalid_token"  # RFC 6750 error code: none when no credentials came
    refused: ApiKey | None = None  # a real key that is revoked or expired


def _verdict() -> _Verdict:
    # Kept in the request's environ, not flask.g: an app context can outlive one request.
    cached: _Verdict | None = request.environ.get(_VERDICT_ENVIRON)
    if cached is None:
        cached = _judge(request.headers.get("Authorization", "").strip())
        request.environ[_VERDICT_ENVIRON] = cached
    return cached


def _judge(header: str) -> _Verdict:
    if not header:
        return _Verdict(None, "an API key is needed: Authorization: Bearer <key>", error=None)
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return _Verdict(
            None, "the Authorization header must be: Bearer <key>", error="invalid_request"
        )
    if parse_key(credentials) is None:
        return _Verdict(None, f"not an API key (they look like {KEY_PREFIX}<key id>_<secret>)")
    key = _lookup(credentials)
    if key is None:
        return _Verdict(None, "unknown or invalid API key")
    if key.revoked_at is not None:
        return _Verdict(None, "this API key has been revoked", refused=key)
    if key.is_expired(utcnow()):
        return _Verdict(None, "this API key has expired", refused=key)
    return _Verdict(key)


def request_key() -> ApiKey | None:
    """The usable API key this request carries, or None (no key, or not a usable one).

    Never aborts and records nothing: for deciding how to treat a request (its rate limit)
    before the view authenticates it."""
    return _verdict().key


def refused_key() -> ApiKey | None:
    """The real key (revoked or expired) this request was refused for, once authenticate()
    refused it; None for a missing, malformed, unknown or wrong key."""
    key: ApiKey | None = g.get("refused_api_key")
    return key


def authenticate() -> ApiKey:
    """The usable API key of this request's ``Authorization: Bearer <key>``, else abort 401.

    Stores the key on ``flask.g.api_key`` (a revoked or expired one it refuses, on
    ``refused_key()``). Messages never contain the presented key. The row may come from this
    process's cache (at most KEY_CACHE_SECONDS old) and belongs to no session: read it, never
    change it.
    """
    verdict = _verdict()
    key = verdict.key
    if key is None:
        if verdict.refused is not None:
            g.refused_api_key = verdict.refused
        _unauthorized(verdict.message, error=verdict.error)
    _touch(key, utcnow())
    g.api_key = key
    return key


def _touch(key: ApiKey, now: datetime) -> None:
    """Record use, at most once per LAST_USED_RESOLUTION per key, in its own transaction.

    The conditional UPDATE keeps concurrent requests (other workers) from all writing, and its
    own transaction leaves the request's session untouched. Failing to record use does not
    fail the request.
    """
    if key.last_used_at is not None and now - as_utc(key.last_used_at) < LAST_USED_RESOLUTION:
        return
    cutoff = now - LAST_USED_RESOLUTION
    statement = (
        update(ApiKey)
        .where(col(ApiKey.id) == key.id)
        .where(or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) <= cutoff))
        .values(last_used_at=now)
    )
    try:
        with get_database().engine.begin() as connection:
            written = connection.execute(statement).rowcount
    except SQLAlchemyError as exc:
        log.warning("could not record use of API key %s: %s", key.key_id, type(exc).__name__)
        return
    if written:
        # The row now says so; tell the loaded object without marking it dirty.
        set_committed_value(key, "last_used_at", now)


def require_scope(key: ApiKey, *scopes: str) -> None:
    """Abort 403 unless ``key`` has at least one of ``scopes`` (``admin`` has them all)."""
    if not scopes:
        raise ValueError("require_scope needs at least one scope")
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    if any(key.has_scope(scope) for scope in scopes):
        return
    needed = " ".join(scopes)
    abort(
        403,
        message=f"this API key lacks the scope for this request (needs one of: {needed})",
        headers={"WWW-Authenticate": _challenge("insufficient_scope", scope=needed)},
    )


def register_security_scheme(api: Api) -> None:
    """Declare the bearer key scheme ("bearerAuth") in a flask_smorest Api's OpenAPI spec."""
    components = api.spec.components
    if BEARER_SCHEME_NAME in components.security_schemes:
        return
    components.security_scheme(
        BEARER_SCHEME_NAME,
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": f"{KEY_PREFIX}<key id>_<secret>",
            "description": "An API key from `referral keys create`, sent as "
            "`Authorization: Bearer <key>`.",
        },
    )
