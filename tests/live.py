"""Real servers for tests: `referral serve` (gunicorn) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Never a proxy: every request goes straight to the server on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            with OPENER.open(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {seconds}s")


@dataclass
class Served:
    base: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def explain(self, what: object) -> str:
        return f"{what}\n--- server output ---\n{self.output()}"


@contextmanager
def serve(
    database_url: str,
    workdir: Path,
    *,
    workers: int = 2,
    threads: int = 1,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    ready_path: str = "/v1/specialties",
    timeout: float = 30,
) -> Iterator[Served]:
    """`referral serve` on ``database_url``; output goes to ``workdir/server.log``."""
    port = free_port()
    log = workdir / "server.log"
    script = Path(sys.executable).parent / "referral"
    argv = [str(script), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--threads", str(threads), *extra_args]  # fmt: skip
    full_env = {**os.environ, "REFERRAL_DATABASE_URL": database_url, **(env or {})}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, cwd=workdir, env=full_env, stdout=sink, stderr=subprocess.STDOUT
        )
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        try:
            wait_for(f"{served.base}{ready_path}", process, timeout)
        except AssertionError as exc:
            raise AssertionError(served.explain(exc)) from None
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
