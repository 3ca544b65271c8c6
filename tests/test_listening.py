"""How gunicorn's workers listen (referral/ops/listening.py): one socket per worker when
REFERRAL_REUSE_PORT asks for it and the binds allow it, a burst of keep-alive connections
spread over the workers, and a port already in use refused rather than silently shared."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from referral.ops.listening import (
    kernel_migrates_queued_connections,
    plan_listening,
    refuse_if_taken,
)
from tests.live import free_port, serve
from tests.test_ops import log_lines

LINUX = sys.platform.startswith("linux")
TCP = [("127.0.0.1", 8000)]


@pytest.mark.parametrize(
    ("setting", "addresses", "environ", "platform", "migrates", "expected"),
    [
        (True, TCP, {}, "linux", False, True),
        ("auto", TCP, {}, "linux", True, True),
        ("auto", TCP, {}, "linux", False, False),
        (False, TCP, {}, "linux", True, False),
        (True, [("::", 8000)], {}, "linux", False, True),
        (True, TCP, {}, "darwin", True, False),
        (True, ["/run/referral.sock"], {}, "linux", True, False),
        (True, [*TCP, "/run/referral.sock"], {}, "linux", True, False),
        (True, [3], {}, "linux", True, False),
        (True, [("127.0.0.1", 0)], {}, "linux", True, False),
        (True, TCP, {"LISTEN_FDS": "1"}, "linux", True, False),
        (True, TCP, {"GUNICORN_FD": "5"}, "linux", True, False),
    ],
)
def test_workers_get_a_socket_each_only_where_it_works(
    setting, addresses, environ, platform, migrates, expected
):
    plan = plan_listening(setting, addresses, environ, platform=platform, migrates=migrates)
    assert plan.reuse_port is expected
    assert plan.why


def test_auto_says_what_to_set_when_it_stays_shared():
    plan = plan_listening("auto", TCP, {}, platform="linux", migrates=False)
    assert "tcp_migrate_req" in plan.why and "REFERRAL_REUSE_PORT=true" in plan.why


def test_the_kernel_setting_is_read_from_proc(tmp_path):
    setting = tmp_path / "tcp_migrate_req"
    assert kernel_migrates_queued_connections(setting) is False  # no such file
    setting.write_text("0\n")
    assert kernel_migrates_queued_connections(setting) is False
    setting.write_text("1\n")
    assert kernel_migrates_queued_connections(setting) is True


def _listener(port: int, *, reuse_port: bool) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    return listener


@pytest.mark.skipif(not LINUX, reason="SO_REUSEPORT semantics checked on Linux")
@pytest.mark.parametrize("other_reuses_port", [False, True])
def test_a_port_in_use_is_refused(other_reuses_port):
    port = free_port()
    refuse_if_taken([("127.0.0.1", port)])  # free: nothing to say
    # Even a listener that would itself share the port (SO_REUSEPORT) counts as taken.
    taken = pytest.raises(RuntimeError, match=f"127.0.0.1:{port} is already in use")
    with _listener(port, reuse_port=other_reuses_port), taken:
        refuse_if_taken([("127.0.0.1", port)])


# --- live: a real gunicorn --------------------------------------------------------------------


def _listening_sockets(port: int) -> int:
    """LISTEN sockets on ``port`` (IPv4), from /proc/net/tcp: one per socket, whoever owns it."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "referral.db"
    shutil.copyfile(sqlite_template, target)
    return f"sqlite:///{target}"


def _burst(base: str, connections: int, requests_each: int) -> None:
    """``connections`` keep-alive clients opened at once, each sending its requests in turn."""
    host, port = base.removeprefix("http://").split(":")

    def client(_: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for _ in range(requests_each):
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                assert response.status == 200
        finally:
            connection.close()

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(client, range(connections)))


@pytest.mark.skipif(not LINUX, reason="/proc/net/tcp and SO_REUSEPORT balancing are Linux's")
@pytest.mark.parametrize("reuse_port", ["true", "false"])
def test_workers_listen_as_configured(sqlite_url, tmp_path, reuse_port):
    server = serve(
        sqlite_url, tmp_path, workers=2, threads=2, env={"REFERRAL_REUSE_PORT": reuse_port},
        ready_path="/healthz",
    )  # fmt: skip
    with server as served:
        port = int(served.base.rsplit(":", 1)[1])
        sockets = _listening_sockets(port)
        _burst(served.base, connections=16, requests_each=5)
        output = served.output()
    why = served.explain("")
    entries = log_lines(output)
    if reuse_port == "true":
        assert sockets == 2, why
        # 16 connections hashed over two sockets all land on one with probability 2**-15.
        pids = {e["pid"] for e in entries if e["logger"] == "gunicorn.access"}
        assert len(pids) == 2, why
        assert any("one socket per worker" in e["msg"] for e in entries), why
    else:
        assert sockets == 1, why
        assert any("one shared socket: REFERRAL_REUSE_PORT is false" in e["msg"] for e in entries)


@pytest.mark.skipif(not LINUX, reason="SO_REUSEPORT semantics checked on Linux")
def test_a_server_never_shares_a_port_that_is_taken(sqlite_url, tmp_path):
    port = free_port()
    env = {**os.environ, "REFERRAL_DATABASE_URL": sqlite_url, "REFERRAL_REUSE_PORT": "true"}
    script = Path(sys.executable).parent / "referral"
    with _listener(port, reuse_port=True):
        result = subprocess.run(
            [str(script), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert _listening_sockets(port) == 1  # ours alone: no worker joined it
    assert result.returncode != 0
    assert f"127.0.0.1:{port} is already in use" in result.stdout + result.stderr


@pytest.mark.skipif(not LINUX, reason="/proc/net/tcp and SO_REUSEPORT balancing are Linux's")
def test_workers_started_by_a_reload_listen_as_the_first_ones(sqlite_url, tmp_path):
    # A HUP re-reads gunicorn's config (reuse_port back to its default) but keeps the master's
    # sockets: without on_reload the new workers would have no socket to listen on.
    server = serve(
        sqlite_url, tmp_path, workers=2, env={"REFERRAL_REUSE_PORT": "true"}, ready_path="/healthz"
    )
    with server as served:
        port = int(served.base.rsplit(":", 1)[1])
        first = _worker_pids(served.process.pid)
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _worker_pids(served.process.pid)
            if len(now) == 2 and not now & first and _listening_sockets(port) == 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail(served.explain(f"no two new workers listening: {now} (first {first})"))
        _burst(served.base, connections=16, requests_each=2)
        output = served.output()
    served_by = {
        e["pid"]
        for e in log_lines(output)
        if e["logger"] == "gunicorn.access" and e.get("path") == "/healthz"
    }
    assert now <= served_by, served.explain("")


def _worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}
