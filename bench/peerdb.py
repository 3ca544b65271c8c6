"""The PostGIS peer's database: a throwaway PostgreSQL database with PostGIS, loaded with the
rows the service serves.

The rows are read from the service's own tables after its import (the tables are a stable
interface; the service's Python is not): every active location with coordinates of an active
clinic, with the specialty codes the clinic is on record as offering (``clinic_specialty``
rows with ``offered`` true; a code on record as not offered, or not on record at all, does not
match, as in the service's nearest search without ``include_possible``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

TABLE = "peer_location"
SCHEMA = f"""
CREATE TABLE {TABLE} (
    id integer PRIMARY KEY,
    clinic_id integer NOT NULL,
    name text,
    address text,
    city text,
    state text,
    zip text,
    lat double precision NOT NULL,
    lon double precision NOT NULL,
    specialties text[] NOT NULL,
    geog geography(Point, 4326)
)
"""
INDEXES = (
    f"UPDATE {TABLE} SET geog = ST_MakePoint(lon, lat)::geography",
    f"ALTER TABLE {TABLE} ALTER COLUMN geog SET NOT NULL",
    f"CREATE INDEX {TABLE}_geog ON {TABLE} USING gist (geog)",
    f"CREATE INDEX {TABLE}_specialties ON {TABLE} USING gin (specialties)",
)
LOCATIONS = """
SELECT l.id, l.clinic_id, c.name, l.address_line1, l.city, l.state, l.zip, l.lat, l.lon
FROM location l JOIN clinic c ON c.id = l.clinic_id
WHERE l.active = :yes AND c.active = :yes AND l.lat IS NOT NULL AND l.lon IS NOT NULL
ORDER BY l.id
"""
OFFERED = "SELECT clinic_id, specialty_code FROM clinic_specialty WHERE offered = :yes"


class PostgisMissing(RuntimeError):
    """PostGIS cannot be had on this server; the message says what was tried."""


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq takes it."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def service_rows(service_url: str) -> list[tuple[Any, ...]]:
    """The peer's rows from the service's database (SQLite or PostgreSQL), specialty codes
    sorted, in location id order."""
    engine = sa.create_engine(service_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            offered: dict[int, list[str]] = defaultdict(list)
            for clinic_id, code in conn.execute(sa.text(OFFERED), {"yes": True}):
                offered[clinic_id].append(code)
            return [
                (*row, sorted(offered.get(row[1], ())))
                for row in conn.execute(sa.text(LOCATIONS), {"yes": True})
            ]
    finally:
        engine.dispose()


def _create_postgis(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")


def install_postgis(major: int) -> str:
    """``apt-get install postgresql-<major>-postgis-3`` (through sudo unless root). Returns
    what happened; raises PostgisMissing when it could not be installed."""
    package = f"postgresql-{major}-postgis-3"
    apt = shutil.which("apt-get")
    if apt is None:
        raise PostgisMissing(f"PostGIS is missing and there is no apt-get to install {package}")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise PostgisMissing(f"PostGIS is missing; installing {package} needs root")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, apt, "-y", "-q", "install", package]
    done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:  # the package lists may be stale or empty: update once, retry
        subprocess.run([*sudo, apt, "-q", "update"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PostgisMissing(f"could not install {package}: {' / '.join(tail)}")
    return f"installed {package} with apt-get"


def ensure_postgis(conn: psycopg.Connection[Any], *, local: bool) -> str:
    """``CREATE EXTENSION postgis`` in the connected database, installing Debian's package
    first when the extension is not available and the server is on this machine."""
    try:
        _create_postgis(conn)
        return "available"
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0]
    if not local:
        raise PostgisMissing(f"CREATE EXTENSION postgis failed on a remote server: {reason}")
    major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]
    what = install_postgis(major)
    try:
        _create_postgis(conn)
    except psycopg.Error as exc:
        raise PostgisMissing(f"{what}, but CREATE EXTENSION postgis still fails: {exc}") from exc
    return what


@dataclass
class Loaded:
    rows: int
    seconds: float
    postgis: str  # "available" or how it was installed
    version: str


class PeerDatabase:
    """A throwaway database on the PostgreSQL server ``server_url`` names (its user needs
    CREATEDB); ``drop()`` removes it."""

    def __init__(self, server_url: str, label: str = "peer") -> None:
        self.server = libpq_url(server_url)
        self.name = f"referral_bench_{label}_{uuid.uuid4().hex[:8]}"
        self.made = False

    @property
    def url(self) -> str:
        return make_url(self.server).set(database=self.name).render_as_string(hide_password=False)

    def _local(self) -> bool:
        return make_url(self.server).host in (None, "", "localhost", "127.0.0.1", "::1")

    def create(self) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.made = True

    def load(self, rows: list[tuple[Any, ...]]) -> Loaded:
        """PostGIS, the table, ``rows`` (as ``service_rows`` gives them), the indexes."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            postgis = ensure_postgis(conn, local=self._local())
            version = conn.execute("SELECT postgis_lib_version()").fetchone()[0]  # type: ignore[index]
            started = time.perf_counter()
            conn.execute(SCHEMA)
            with conn.cursor() as cursor:
                columns = "id, clinic_id, name, address, city, state, zip, lat, lon, specialties"
                with cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN") as copy:
                    copy.set_types(["int4", "int4", "text", "text", "text", "text", "text",
                                    "float8", "float8", "text[]"])  # fmt: skip
                    for row in rows:
                        copy.write_row(row)
            for statement in INDEXES:
                conn.execute(statement)
            conn.execute(f"VACUUM ANALYZE {TABLE}")
            seconds = time.perf_counter() - started
        return Loaded(len(rows), seconds, postgis, f"PostGIS {version}")

    def drop(self) -> None:
        if not self.made:
            return
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.made = False
