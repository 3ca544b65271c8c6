"""How gunicorn's workers listen: one shared socket, or one socket per worker (SO_REUSEPORT).

Why it matters: with one shared socket every idle worker is woken for a new connection and
the first one running takes it. A burst of connections (a load balancer's or a proxy's
keep-alive pool opening, a load generator) can land on a single worker, and keep-alive keeps
them there: measured here with 2 workers and 16 keep-alive clients, about half the runs had
every request served by one worker, at half the throughput (docs/operations.md). With one
socket per worker, the kernel spreads new connections over the sockets by hash instead.

The cost: connections already queued on a stopping worker's socket (a restart after
``--max-requests``, a reload, a killed worker) are reset when it closes, unless Linux migrates
them to the other sockets (``net.ipv4.tcp_migrate_req=1``, Linux 5.14+; per network namespace,
so a container can set it). "auto" therefore uses one socket per worker only where that is
on; ``REFERRAL_REUSE_PORT=true`` asks for it anyway.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@dataclass(frozen=True)
class ListeningPlan:
    reuse_port: bool
    why: str


def kernel_migrates_queued_connections(path: Path = MIGRATE_REQ) -> bool:
    try:
        return path.read_text(encoding="ascii").strip() == "1"
    except OSError:
        return False


def plan_listening(
    setting: Any,
    addresses: Sequence[Any],
    environ: Mapping[str, str],
    *,
    platform: str = sys.platform,
    migrates: bool | None = None,
) -> ListeningPlan:
    """Whether workers get a socket each. ``setting`` is REUSE_PORT ("auto", True, False);
    ``addresses`` are gunicorn's parsed binds ((host, port) tuples, Unix paths, fds)."""
    if setting is False:
        return ListeningPlan(False, "REFERRAL_REUSE_PORT is false")
    if not platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT lets sockets share a port but does not spread connections.
        return ListeningPlan(False, f"SO_REUSEPORT spreads connections on Linux, not {platform}")
    if "LISTEN_FDS" in environ or "GUNICORN_FD" in environ:
        return ListeningPlan(False, "the listening socket is inherited (systemd or a re-exec)")
    for address in addresses:
        if not isinstance(address, tuple):
            return ListeningPlan(False, f"{address!r} is not a TCP address")
        if int(address[1]) == 0:
            return ListeningPlan(False, "port 0 would give each worker a different port")
    if setting is True:
        return ListeningPlan(True, "REFERRAL_REUSE_PORT is true")
    if migrates is None:
        migrates = kernel_migrates_queued_connections()
    if migrates:
        return ListeningPlan(True, "net.ipv4.tcp_migrate_req=1: a stopping worker's queue moves")
    return ListeningPlan(
        False,
        "net.ipv4.tcp_migrate_req is not 1: a stopping worker's queued connections would be "
        "reset (set it, or REFERRAL_REUSE_PORT=true to accept that)",
    )


def refuse_if_taken(addresses: Sequence[tuple[Any, ...]]) -> None:
    """Raise RuntimeError if something already listens on one of ``addresses``.

    With SO_REUSEPORT on every worker's socket, a second server started on the same port
    would not fail: it would silently share the port's connections with the first. A socket
    without the flag cannot bind where anything listens, so one is bound and closed here,
    before any worker binds."""
    for address in addresses:
        host = str(address[0])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As gunicorn's own sockets: connections in TIME_WAIT from an earlier server do
            # not count as taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(address[1])))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise RuntimeError(
                        f"{host}:{address[1]} is already in use: another server listens there"
                    ) from None
                raise RuntimeError(f"cannot listen on {host}:{address[1]}: {exc}") from None


__all__ = [
    "ListeningPlan",
    "kernel_migrates_queued_connections",
    "plan_listening",
    "refuse_if_taken",
]
