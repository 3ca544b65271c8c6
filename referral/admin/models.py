"""The admin change log: every directory edit with who, when, and what changed.

No ``from __future__ import annotations`` here: SQLModel reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime
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
