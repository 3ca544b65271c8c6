"""Everything `referral seed` loads from seed_data/, in dependency order."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from sqlmodel import Session

from referral.directory.seed import SeedReport, seed_directory
from referral.geo.chain import get_geocoder
from referral.referrals.vocabulary import seed_vocabulary


def seed_all(session: Session, app: Flask) -> SeedReport:
    seed_dir = Path(app.config["SEED_DATA_DIR"])
    report = seed_directory(session, seed_dir, get_geocoder(app))
    seed_vocabulary(session, seed_dir, report)
    return report
