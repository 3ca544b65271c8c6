"""The admin change log (every directory edit with who, when, and what changed) and the
import runs (each bulk import, its stored plan and errors, and the lease one import holds).

No ``from __future__ import annotations`` here: SQLModel reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, LargeBinary
from sqlmodel import Field, SQLModel

from referral.timeutil import utcnow


class AdminChange(SQLModel, table=True):
    __tablename__ = "admin_change"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    actor_key_id: int | None = Field(default=None, foreign_key="api_key.id")
    actor: str = Field(max_length=120)
    entity: str = Field(max_length=20)  # "clinic" or "location"
    entity_id: int
    clinic_id: int = Field(index=True)
    action: str = Field(max_length=20)  # create, update, deactivate
    # {field: [before, after]} for every field the change touched.
    diff: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class ImportRunBase(SQLModel):
    """One bulk import, dry or not: who, when, how it went (referral/admin/imports/runs.py)."""

    started_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    actor_key_id: int | None = Field(default=None, foreign_key="api_key.id")
    actor: str = Field(max_length=120)
    dry_run: bool
    # running, planned (a dry run), applied, refused (row errors), conflict (a record changed
    # meanwhile), failed, abandoned (its process stopped; another import took its lease).
    state: str = Field(max_length=20)
    format: str | None = Field(default=None, max_length=10)
    source: str | None = Field(default=None, max_length=200)  # the file's name, if uploaded
    rows_read: int = Field(default=0)
    error_count: int = Field(default=0)
    # Counts, first errors and the like, as GET /v1/admin/imports/{id} answers them.
    summary: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    detail: str | None = Field(default=None, max_length=500)  # why it failed


class ImportRun(ImportRunBase, table=True):
    __tablename__ = "import_run"
    # Ids are in URLs: never given again after old runs are deleted (SQLite would reuse them).
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)


class ImportRunPart(SQLModel, table=True):
    """A run's plan (one entry per planned row) or errors, stored in parts: gzip-compressed
    JSON lines, a fixed number of entries per part (the last may hold fewer), so a page reads
    one or two parts and a download streams them."""

    __tablename__ = "import_run_part"

    run_id: int = Field(foreign_key="import_run.id", primary_key=True, ondelete="CASCADE")
    kind: str = Field(primary_key=True, max_length=10)  # "plan" or "errors"
    seq: int = Field(primary_key=True)
    entries: int
    data: bytes = Field(sa_type=LargeBinary)


class ImportLease(SQLModel, table=True):
    """The one row that says which import runs: one at a time, across workers and hosts. A
    holder renews it while it works; one that stops (a crash) loses it when it expires."""

    __tablename__ = "import_lease"

    id: int = Field(primary_key=True)
    holder: str | None = Field(default=None, max_length=64)  # a random token per import
    run_id: int | None = Field(default=None)
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
