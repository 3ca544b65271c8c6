"""What a new user follows: the README's tables and local examples, and `make run`'s port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def make_run_command(**variables: str) -> str:
    """The serve command `make run` would run (make -n: nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("BIND", "WORKERS", "MAKEFLAGS")}
    env.update({k: v for k, v in variables.items() if k.startswith("REFERRAL_")})
    overrides = [f"{k}={v}" for k, v in variables.items() if not k.startswith("REFERRAL_")]
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO_ROOT), "run", *overrides],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return next(line for line in done.stdout.splitlines() if "referral serve" in line)


def test_make_run_takes_the_port_from_bind_or_from_referral_bind():
    assert "--bind 0.0.0.0:8080" in make_run_command(BIND="0.0.0.0:8080")
    # Without BIND, nothing overrides REFERRAL_BIND (or WORKERS, REFERRAL_WORKERS).
    command = make_run_command(REFERRAL_BIND="127.0.0.1:9001", REFERRAL_WORKERS="3")
    assert "--bind" not in command and "--workers" not in command
    assert "--workers 4" in make_run_command(WORKERS="4")
    assert "make run BIND=" in README


def test_readme_tables_are_not_split():
    # A blank line inside a table starts a new one without a header: its rows render as text.
    tables = re.split(r"\n(?!\|)[^\n]*", "\n" + README)
    for block in (b.strip() for b in tables if b.strip().startswith("|")):
        lines = block.splitlines()
        assert len(lines) >= 2 and re.fullmatch(r"\|( *-+ *\|)+", lines[1]), lines[0]
    assert re.search(r"\| `GET /v1/concerns` \|", README)


def test_local_examples_use_plain_http():
    assert not re.search(r"https://(127\.0\.0\.1|localhost|0\.0\.0\.0)", README)
    assert "http://127.0.0.1:8000" in README


def test_a_location_by_coordinates_still_needs_city_and_state():
    row = next(line for line in README.splitlines() if "/locations/{location_id}`" in line)
    assert "`city` and `state` are still required" in row
