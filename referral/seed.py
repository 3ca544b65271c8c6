"""Everything `referral seed` loads from seed_data/, in dependency order."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from sqlmodel import Session

from referral.db import session_scope
from referral.directory.seed import SeedReport, seed_directory
from referral.geo.chain import get_geocoder
from referral.migrations import runner
from referral.referrals.vocabulary import seed_vocabulary


def seed_all(session: Session, app: Flask) -> SeedReport:
    seed_dir = Path(app.config["SEED_DATA_DIR"])
    report = seed_directory(session, seed_dir, get_geocoder(app))
    seed_vocabulary(session, seed_dir, report)
    return report


def seed_once(app: Flask) -> SeedReport:
    """Seed and commit under the seed lock: of replicas starting together, one loads the
    seed and the others then find every row in place (all "unchanged")."""
    with runner.exclusive(app, runner.SEED_LOCK), session_scope(app) as session:
        return seed_all(session, app)
