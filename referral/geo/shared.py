"""What the network geocoder shares between workers and hosts: its request budget and the
secret that keys its cache.

The budget: a provider such as Nominatim allows one request a second from the whole service,
not from each worker. With a Redis ``RATELIMIT_STORAGE_URI`` the budget is one key there
(``SET NX PX``: whoever sets it may ask now), shared by every host using that Redis; without
one it is a file in the instance folder holding the time of the last request, read and
written under an exclusive lock, shared by every worker of the host. A spent budget is never
waited for: ``take()`` says how many seconds remain and the caller answers at once
(docs/operations.md, "Geocoder").
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

SECRET_FILE = "geocode-cache-secret"
BUDGET_FILE = "geocoder-budget-{provider}"
REDIS_SCHEMES = ("redis://", "rediss://")


class GeocoderBusy(Exception):
    """The shared request budget is spent; a request may go in ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"geocoder busy for {retry_after:.3f}s")
        self.retry_after = retry_after


class Budget(Protocol):
    def take(self) -> float:
        """0 when a request may go now (and counts it), else the seconds until one may."""


class LocalBudget:
    """One process's budget (for a geocoder made outside an app)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf
        self._lock = threading.Lock()

    def take(self) -> float:
        with self._lock:
            now = time.monotonic()
            wait = self._last + self.interval - now
            if wait > 0:
                return wait
            self._last = now
            return 0.0


class FileBudget:
    """Every worker of this host: the last request's time in a file, under flock."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval

    def take(self) -> float:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a write: microseconds
            try:
                last = float(os.pread(fd, 64, 0).decode("ascii").strip() or "-inf")
            except ValueError:
                last = -math.inf
            now = time.time()
            wait = last + self.interval - now
            # More than one interval ahead: the clock went back; do not lock out for that long.
            if 0 < wait <= self.interval:
                return wait
            os.pwrite(fd, f"{now!r}".ljust(32).encode("ascii"), 0)
            return 0.0
        finally:
            os.close(fd)  # releases the lock


class RedisBudget:
    """Every host using one Redis: a key that lives one interval; whoever sets it may ask."""

    def __init__(self, url: str, key: str, interval: float, fallback: Budget) -> None:
        # Loaded only here: a worker without a network geocoder and Redis never needs the
        # client (not to dodge an import cycle).
        import redis

        # A slow Redis must not hold a search (as for the rate limits: referral/ops/limits.py).
        self._client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self._unreachable: type[Exception] = redis.RedisError
        self.key = key
        self.interval = interval
        self._fallback = fallback

    def take(self) -> float:
        milliseconds = max(1, math.ceil(self.interval * 1000))
        try:
            for _ in range(2):  # the key may expire between SET and PTTL: try once more
                if self._client.set(self.key, b"1", px=milliseconds, nx=True):
                    return 0.0
                left = int(self._client.pttl(self.key))  # type: ignore[arg-type]
                if left > 0:
                    return left / 1000
            return self.interval
        except self._unreachable as exc:
            # The type only: messages name hosts. Counted on this host until Redis is back.
            log.warning(
                "geocoder budget: Redis unreachable (%s), using this host's", type(exc).__name__
            )
            return self._fallback.take()


def make_budget(
    provider: str, interval: float, *, instance_path: str, storage_uri: str, key_prefix: str
) -> Budget:
    """The budget for ``provider``: in Redis when ``storage_uri`` is one, else this host's file."""
    local = FileBudget(Path(instance_path) / BUDGET_FILE.format(provider=provider), interval)
    if storage_uri.startswith(REDIS_SCHEMES):
        return RedisBudget(storage_uri, f"{key_prefix}:geocoder-budget:{provider}", interval, local)
    return local


def instance_secret(instance_path: str) -> str:
    """The cache secret kept in the instance folder, made (random, mode 0600) by whichever
    worker comes first; the others read that one."""
    path = Path(instance_path) / SECRET_FILE
    if not path.exists():
        draft = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(draft, path)  # fails if another worker published one first: use that
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < 32:
        raise ValueError(
            f"{path} holds no usable secret: delete it (one is made again) or set "
            "REFERRAL_GEOCODE_CACHE_SECRET"
        )
    return secret
