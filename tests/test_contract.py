"""Contract fuzzing: schemathesis against openapi.yaml and a real gunicorn server.

Every operation, every check (``--checks all``), a fixed seed, every phase (coverage,
fuzzing, and stateful chains that follow the spec's links). schemathesis.toml holds the
configuration and says why each of its few tunings exists; tests/contract_hooks.py lists the
refusals the spec cannot state. Rate limits are off for the run (REFERRAL_RATELIMIT_ENABLED):
the fuzzer is one client sending thousands of requests; 429 is documented and tested in
tests/test_limits.py.

Keys are made for the run, least privilege first (see schemathesis.toml): an assessment app
(referrals:write and read), a data team (clinics:write), an admin, and a second app that must
not see the first one's referrals.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database
from tests.conftest import REPO_ROOT, build_app, skip_or_fail
from tests.live import serve

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Least privilege first: schemathesis moves an operation on to the next key when refused.
IDENTITIES = (
    ("app-a", ["referrals:write", "referrals:read"]),
    ("data-team", ["clinics:write"]),
    ("admin", ["admin"]),
    ("app-b", ["referrals:write", "referrals:read"]),
)
RUN_SECONDS = 900


def write_auth_file(database_url: str, path: Path) -> None:
    """A Web Fuzzing Commons auth file with a fresh key per identity."""
    app = build_app(database_url)
    entries = []
    with Session(get_database(app).engine) as session:
        for name, scopes in IDENTITIES:
            _, key = create_key(session, name=name, scopes=scopes)
            header = {"name": "Authorization", "value": f"Bearer {key}"}
            entries.append({"name": name, "fixedHeaders": [header]})
        session.commit()
    get_database(app).dispose()
    path.write_text(json.dumps({"auth": entries}), encoding="utf-8")


def _field(name: str) -> str:
    """rows[12].phone -> rows[N].phone; assessment.<any key> -> assessment."""
    if name.startswith("assessment."):
        return "assessment"
    return re.sub(r"\[\d+\]", "[N]", name)


def dropped_summary(path: Path) -> str:
    """How many failures each listed rule dropped (tests/contract_hooks.py): per operation,
    kind and the fields the problem named (row numbers folded)."""
    if not path.exists():
        return "none"
    counts: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        names = sorted({_field(name) for name in entry["names"]})
        counts[f"{entry['operation']}  {entry['kind']}  {', '.join(names)}"] += 1
    return "\n".join(f"{count:5d}  {what}" for what, count in counts.most_common())


def spec_operation_count() -> int:
    """How many operations openapi.yaml holds: every one must be run."""
    spec = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    verbs = {"get", "put", "post", "delete", "patch", "head", "options"}
    return sum(len(verbs & set(item)) for item in spec["paths"].values())


def test_the_service_keeps_its_contract(database_url: str, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists():
        skip_or_fail("schemathesis is not installed: pip install -e '.[dev]'")
    auth_file = tmp_path / "auth.json"
    dropped = tmp_path / "dropped.jsonl"
    write_auth_file(database_url, auth_file)
    # Loopback only: no proxy between schemathesis and the server.
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env |= {
        "NO_PROXY": "*",
        "REFERRAL_FUZZ_AUTH_FILE": str(auth_file),
        "REFERRAL_FUZZ_DROPPED": str(dropped),
    }
    server_env = {"REFERRAL_RATELIMIT_ENABLED": "false"}
    with serve(database_url, tmp_path, workers=2, env=server_env) as server:
        started = time.monotonic()
        command = [str(SCHEMATHESIS), "--config-file", str(REPO_ROOT / "schemathesis.toml"),
                   "run", str(REPO_ROOT / "openapi.yaml"), "--url", server.base,
                   "--checks", "all", "--seed", "1", "--no-color"]  # fmt: skip
        run = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
            check=False,
        )
        seconds = time.monotonic() - started
        server_tail = "\n".join(server.output().splitlines()[-40:])
    output = run.stdout + run.stderr
    summary = f"{output}\n--- dropped by tests/contract_hooks.py ---\n{dropped_summary(dropped)}"
    (tmp_path / "schemathesis.txt").write_text(summary, encoding="utf-8")
    assert run.returncode == 0, f"{summary}\n--- server log (tail) ---\n{server_tail}"
    # Every operation, every phase: nothing was left out.
    operations = spec_operation_count()
    assert f"{operations} selected / {operations} total" in output, output
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output
    print(f"\n{summary}\nschemathesis ran {seconds:.0f}s")
