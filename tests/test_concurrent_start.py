"""Several hosts starting at once: `db upgrade && seed` from 3 processes on one fresh database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import REPO_ROOT

SCRIPT = Path(sys.executable).parent / "referral"
PROCESSES = 3


def count_rows(url: str, table: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_and_seed_once(empty_database_url, tmp_path):
    env = {**os.environ, "REFERRAL_DATABASE_URL": empty_database_url}
    command = f"{SCRIPT} db upgrade && {SCRIPT} seed"
    processes = [
        subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(PROCESSES)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    clinics = json.loads((REPO_ROOT / "seed_data" / "clinics.json").read_text(encoding="utf-8"))
    specialties = json.loads(
        (REPO_ROOT / "seed_data" / "specialties.json").read_text(encoding="utf-8")
    )
    assert count_rows(empty_database_url, "clinic") == len(clinics["clinics"])
    assert count_rows(empty_database_url, "specialty") == len(specialties)
    assert count_rows(empty_database_url, "alembic_version") == 1
    # Exactly one process created the seed; the others found it done.
    created = [o for o in outputs if f"clinic: {len(clinics['clinics'])} created" in o]
    assert len(created) == 1, outputs
