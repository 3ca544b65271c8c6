"""gunicorn's settings for the referral service (`referral serve` passes this module with
``--config python:referral.ops.gunicorn_config``; the repository's gunicorn.conf.py imports
it for a bare ``gunicorn``).

gunicorn reads this module's public names as settings: helpers stay underscored. Values come
from REFERRAL_* variables over the defaults in referral/config.py (SERVER_DEFAULTS), and
command-line flags override both.

The app is loaded in each worker after the fork (no preload), so every worker creates its own
database engine, limit-store connection and metrics files.
"""

from __future__ import annotations

import glob as _glob
import os as _os
import shutil as _shutil
import sys as _sys
import tempfile as _tempfile
from typing import Any as _Any

from referral.config import server_settings as _server_settings

_settings = _server_settings()

bind = [_settings["BIND"]]
workers = _settings["WORKERS"]
threads = _settings["THREADS"]
timeout = _settings["TIMEOUT"]
graceful_timeout = _settings["GRACEFUL_TIMEOUT"]
keepalive = _settings["KEEPALIVE"]
loglevel = _settings["LOG_LEVEL"]
# JSON lines: gunicorn's own messages and the app's on stderr, the access log on stdout.
logger_class = "referral.ops.logs.GunicornJsonLogger"
accesslog = "-"
errorlog = "-"
wsgi_app = "referral:create_app()"
# Recent gunicorn's management socket defaults to one path per user ($HOME/.gunicorn): several
# servers on a machine would fight over it, and nothing here uses it.
control_socket_disable = True

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_made_metrics_dir: list[str] = []


def on_starting(server: _Any) -> None:
    """Before any worker: how workers listen (the final binds are known only now), and one
    metrics directory for this server, emptied of earlier runs' files, named in the
    environment the workers inherit."""
    _plan_listening(server)
    if "prometheus_client.values" in _sys.modules:
        # Too late to switch to multiprocess mode in this process: every worker would keep
        # its own counts and /metrics would show one worker's share.
        server.log.warning("prometheus_client was imported before the server started")
    directory = _settings["METRICS_DIR"] or _os.environ.get(_MULTIPROC_ENV)
    if directory:
        directory = str(directory)
        _os.makedirs(directory, exist_ok=True)
        for stale in _glob.glob(_os.path.join(directory, "*.db")):
            _os.remove(stale)
    else:
        directory = _tempfile.mkdtemp(prefix="referral-metrics-")
        _made_metrics_dir.append(directory)
    _os.environ[_MULTIPROC_ENV] = directory
    server.log.info("metrics directory %s", directory)


def _plan_listening(server: _Any) -> None:
    from referral.ops.listening import (
        kernel_migrates_queued_connections,
        plan_listening,
        refuse_if_taken,
    )

    # `--reuse-port` on the command line counts as REFERRAL_REUSE_PORT=true.
    setting = True if server.cfg.reuse_port else _settings["REUSE_PORT"]
    plan = plan_listening(setting, server.cfg.address, _os.environ)
    if plan.reuse_port:
        refuse_if_taken(server.cfg.address)  # RuntimeError: gunicorn says "Error: ..." and exits
    server.cfg.set("reuse_port", plan.reuse_port)
    # Kept for reloads: a HUP re-reads this config (reuse_port back to gunicorn's default)
    # but keeps the sockets, so new workers must listen the way the first ones did.
    server.referral_reuse_port = plan.reuse_port
    how = "one socket per worker (SO_REUSEPORT)" if plan.reuse_port else "one shared socket"
    server.log.info("listening: %s: %s", how, plan.why)
    if plan.reuse_port and not kernel_migrates_queued_connections():
        server.log.warning(
            "net.ipv4.tcp_migrate_req is not 1: connections queued for a stopping worker "
            "will be reset"
        )


def on_reload(server: _Any) -> None:
    server.cfg.set("reuse_port", getattr(server, "referral_reuse_port", False))


def post_fork(server: _Any, worker: _Any) -> None:
    # gunicorn's own error answers (unparsable requests) as problem+json, not its HTML page.
    from referral.ops.server_errors import install

    install()


def post_worker_init(worker: _Any) -> None:
    """Build this worker's read model before it takes requests, so no visitor's query waits
    for the first build (docs/nearest.md)."""
    from referral.directory.readmodel import warm_read_model

    try:
        warm_read_model(worker.wsgi)
    except Exception as exc:  # no database yet, say: the first query builds it instead
        worker.log.warning("read model not built at start (%s)", type(exc).__name__)


def child_exit(server: _Any, worker: _Any) -> None:
    # A dead worker's counters stay (they are totals); its live gauges, if any, go. Never
    # let bookkeeping fail the master.
    directory = _os.environ.get(_MULTIPROC_ENV)
    if not directory:
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(worker.pid, directory)
    except OSError as exc:
        server.log.warning("metrics: could not clean up after worker %s: %s", worker.pid, exc)


def on_exit(server: _Any) -> None:
    for directory in _made_metrics_dir:
        _shutil.rmtree(directory, ignore_errors=True)
