"""Servers the bench runs on loopback: the service (``referral serve``), the PostGIS peer and
the bare Flask ping (``python -m gunicorn``, the same workers, threads, keep-alive and one
listening socket per worker), and what /proc says about their workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Never a proxy: every request goes straight to the server on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The service's default (REFERRAL_KEEPALIVE, 5 s): the other servers get the same.
KEEPALIVE = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    """Status and body (an HTTP error's too); OSError when nothing answers."""
    try:
        with OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Server:
    name: str
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    health: str  # a cheap path: readiness and draining

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self, what: object) -> str:
        return (
            f"{self.name}: {what}\n--- server output (last 3,000 characters) ---\n"
            + (self.output()[-3000:])
        )

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(self.explain(f"stopped with {self.process.returncode}"))

    def drain(self, limit: float = 900) -> float:
        """Wait until the server has finished what the last wrk run left queued (wrk stops
        sending, but requests already accepted still run) so it does not slow the next run;
        the seconds that took."""
        begun = time.monotonic()
        while time.monotonic() < begun + limit:
            self.check()
            started = time.perf_counter()
            try:
                get(f"{self.base}{self.health}")
            except OSError:
                time.sleep(0.5)
                continue
            if time.perf_counter() - started < 0.05:
                return time.monotonic() - begun
        raise RuntimeError(self.explain(f"did not drain its queue in {limit:.0f} s"))


def service_argv(bind: str, workers: int, threads: int) -> list[str]:
    script = Path(sys.executable).parent / "referral"
    return [str(script), "serve", "--bind", bind, "--workers", str(workers), "--threads",
            str(threads)]  # fmt: skip


def wsgi_argv(app: str, bind: str, workers: int, threads: int) -> list[str]:
    """gunicorn as the service runs it: gthread workers, a listening socket each."""
    return [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
            "--threads", str(threads), "--worker-class", "gthread", "--reuse-port",
            "--keep-alive", str(KEEPALIVE), "--timeout", "600", "--chdir", str(REPO),
            *_no_control_socket(), app]  # fmt: skip


@cache
def _no_control_socket() -> tuple[str, ...]:
    """Recent gunicorn opens a management socket per user unless told not to (the service's
    config turns it off too): several servers on one machine would fight over it."""
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    return ("--no-control-socket",) if "--no-control-socket" in done.stdout else ()


@contextmanager
def running(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    *,
    env: dict[str, str],
    health: str,
    workers: int,
    timeout: float = 300,
) -> Iterator[Server]:
    """Start ``argv`` (``{bind}`` in it is replaced by a free loopback address), wait until
    every worker answers ``health``, stop it (SIGTERM) on the way out."""
    port = free_port()
    bind = f"127.0.0.1:{port}"
    log = workdir / f"{name}.log"
    command = [part.replace("{bind}", bind) for part in argv]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, cwd=workdir, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(name, f"http://{bind}", process, log, health)
    try:
        wait_ready(server, workers, timeout)
        yield server
    finally:
        stop(process)


def wait_ready(server: Server, workers: int, timeout: float) -> None:
    """Every worker listens on a socket of its own, and one may still be building its nearest
    index after another answers: ready once several fresh connections in a row (spread over
    the sockets by the kernel) each answer quickly."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 6 * workers:
        if time.monotonic() > deadline:
            raise RuntimeError(server.explain(f"not ready in {timeout:.0f} s"))
        server.check()
        started = time.perf_counter()
        try:
            status, _ = get(f"{server.base}{server.health}", timeout=2)
        except OSError:
            status = 0
        if status == 200 and time.perf_counter() - started < 0.5:
            streak += 1
        else:
            streak = 0
            time.sleep(0.2)


def stop(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


# ---- /proc --------------------------------------------------------------------------------


def children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == parent:
                pids.append(int(entry.name))
    return sorted(pids)


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak since start or the last ``reset_peak``), in MB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


def reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (``clear_refs`` 5, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
