"""The seeded directory is complete, faithful to its sources, and seeding is idempotent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from referral.db import get_database
from referral.directory.models import Clinic, ClinicSpecialty, GeocodePrecision, Location, Specialty
from tests.conftest import REPO_ROOT, SHARED_SEEDS, skip_or_fail

SEED = json.loads((REPO_ROOT / "seed_data" / "clinics.json").read_text(encoding="utf-8"))
SPECIALTIES = json.loads((REPO_ROOT / "seed_data" / "specialties.json").read_text(encoding="utf-8"))
NETWORK_LIST = "000_e6b503c46ad2e93a.txt"
PRO_THERAPY = "003_509d6912eafce3c0.txt"


def source_text(name: str) -> str:
    path = SHARED_SEEDS / name
    if not path.exists():
        skip_or_fail(f"source documents not beside this checkout ({SHARED_SEEDS})")
    return path.read_text(encoding="utf-8")


def clinic_by_key(session: Session, key: str) -> Clinic:
    clinic = session.exec(select(Clinic).where(Clinic.seed_key == key)).one()
    return clinic


@pytest.fixture
def session(app):
    with Session(get_database(app).engine) as session:
        yield session


def test_counts(session):
    assert session.exec(select(func.count()).select_from(Clinic)).one() == 31
    assert session.exec(select(func.count()).select_from(Location)).one() == 36
    assert session.exec(select(func.count()).select_from(Specialty)).one() == len(SPECIALTIES)


def test_every_phone_line_of_the_network_list_is_one_clinic():
    text = source_text(NETWORK_LIST)
    listing = text.split("Find a Physical Therapist today!")[1].split("Back to top")[0]
    phone_lines = [line for line in listing.splitlines() if "Phone:" in line]
    from_list = [c for c in SEED["clinics"] if c["source_file"] == NETWORK_LIST]
    assert len(phone_lines) == len(from_list) == 30
    for line, clinic in zip(phone_lines, from_list, strict=True):
        written = line.split("Phone:")[1].strip()
        assert clinic["phone_original"] == (None if written == "n/a" else written)
        assert line.strip() in clinic["source_text"].splitlines()


@pytest.mark.parametrize("clinic", SEED["clinics"], ids=lambda c: c["key"])
def test_source_text_is_verbatim(clinic):
    text = source_text(clinic["source_file"])
    lines = {line.strip() for line in text.splitlines()}
    for line in clinic["source_text"].splitlines():
        assert line.strip() in lines


def test_network_list_cities_each_become_a_location():
    text = source_text(NETWORK_LIST)
    listing = text.split("Find a Physical Therapist today!")[1].split("Back to top")[0]
    # A city line is "City, ST" / "City ST" / "City", alone or before "Phone:".
    city_mentions = 0
    for clinic in (c for c in SEED["clinics"] if c["source_file"] == NETWORK_LIST):
        originals = [loc["city_original"] for loc in clinic["locations"]]
        for original in originals:
            assert original in clinic["source_text"]
        city_mentions += len(originals)
    assert city_mentions == 34
    assert "Tallahasee" in listing  # the source's misspelling, normalized below


def test_normalized_facts(session):
    tallahassee = clinic_by_key(session, "tallahassee-orthopedic-sports-physical-therapy")
    assert tallahassee.locations[0].city == "Tallahassee"
    assert tallahassee.locations[0].city_original == "Tallahasee"
    assert tallahassee.phone == "+18508778855"

    ptpn = clinic_by_key(session, "unnamed-calabasas-8007667876")
    assert ptpn.phone == "+18007667876"
    assert ptpn.phone_original == "800-766-PTPN"

    el_paso = clinic_by_key(session, "el-paso-physical-therapy-services")
    assert (el_paso.locations[0].state, el_paso.locations[0].state_original) == ("TX", "Texas")
    capitol = clinic_by_key(session, "capitol-physical-therapy")
    assert (capitol.locations[0].state, capitol.locations[0].state_original) == ("WI", "Wisc")
    mountain = clinic_by_key(session, "mountain-river-pt")
    assert mountain.phone == "+13048656778"


def test_every_phone_is_e164(session):
    for clinic in session.exec(select(Clinic)).all():
        if clinic.phone is not None:
            assert re.fullmatch(r"\+1[2-9]\d{9}", clinic.phone), clinic.phone
            assert clinic.phone_original


def test_unknowns_stay_unknown_and_are_flagged(session):
    nameless = session.exec(select(Clinic).where(Clinic.name.is_(None))).all()  # type: ignore[union-attr]
    assert {c.seed_key for c in nameless} == {
        "unnamed-calabasas-8007667876",
        "unnamed-columbus-7063227762",
        "unnamed-fort-worth-8886588483",
    }
    for clinic in nameless:
        assert clinic.needs_review
        assert "name missing in source" in clinic.review_reasons
    phoneless = session.exec(select(Clinic).where(Clinic.phone.is_(None))).all()  # type: ignore[union-attr]
    assert {c.seed_key for c in phoneless} == {"colorado-in-motion", "pro-therapy"}
    for clinic in phoneless:
        assert clinic.needs_review and "phone missing in source" in clinic.review_reasons


def test_missing_state_is_inferred_only_when_unambiguous_and_flagged(session):
    shea = clinic_by_key(session, "shea-pt").locations[0]
    assert shea.state == "TX"
    assert shea.state_original is None
    assert shea.needs_review
    assert any("inferred" in reason for reason in shea.review_reasons)
    calabasas = clinic_by_key(session, "unnamed-calabasas-8007667876").locations[0]
    assert calabasas.state == "CA"
    assert any("inferred" in reason for reason in calabasas.review_reasons)


def test_multi_city_clinics_have_one_location_per_city(session):
    expected = {
        "unnamed-columbus-7063227762": {("Columbus", "GA"), ("Auburn", "AL"), ("Columbia", "SC")},
        "prorehab-inc": {("Evansville", "IN"), ("Bowling Green", "KY")},
        "texas-physical-therapy-specialists": {("Austin", "TX"), ("San Antonio", "TX")},
        "pro-therapy": {("Minneapolis", "MN"), ("Coon Rapids", "MN")},
    }
    for key, cities in expected.items():
        clinic = clinic_by_key(session, key)
        assert {(loc.city, loc.state) for loc in clinic.locations} == cities


def test_pro_therapy_addresses(session):
    pro = clinic_by_key(session, "pro-therapy")
    assert pro.name == "PRO Therapy"
    assert pro.source_file == PRO_THERAPY
    by_city = {loc.city: loc for loc in pro.locations}
    minneapolis = by_city["Minneapolis"]
    assert (minneapolis.address_line1, minneapolis.address_line2, minneapolis.zip) == (
        "2112 Broadway Street NE",
        "Suite 195",
        "55413",
    )
    coon_rapids = by_city["Coon Rapids"]
    assert (coon_rapids.address_line1, coon_rapids.zip) == ("8770 Springbrook Dr. NW", "55433")
    # Offline seeding places a street address at its ZIP centroid, and says so.
    assert minneapolis.geocode_precision == GeocodePrecision.POSTAL_CODE
    assert set(pro.specialty_codes) >= {"running", "spine"}


def test_every_location_is_geocoded_with_precision_source_and_time_zone(session):
    for location in session.exec(select(Location)).all():
        assert location.lat is not None and location.lon is not None
        assert 18 < location.lat < 72 and -180 < location.lon < -60  # the United States
        assert location.geocode_precision in {p.value for p in GeocodePrecision}
        assert location.geocode_source and location.geocode_source.startswith("zipcodes")
        assert location.time_zone and location.time_zone.startswith(("America/", "Pacific/"))
    san_antonio = session.exec(select(Location).where(Location.city == "San Antonio")).first()
    assert san_antonio is not None and san_antonio.time_zone == "America/Chicago"


def test_specialties_only_with_reasons_and_known_codes(session):
    nucc = {s["code"]: s["nucc_taxonomy"] for s in SPECIALTIES}
    assert nucc["sports"] == "2251S0007X"
    assert nucc["orthopedic"] == "2251X0800X"
    for code in ("spine", "running", "dry_needling", "manual_therapy", "work_rehab"):
        assert code in nucc
    links = session.exec(select(ClinicSpecialty)).all()
    assert links
    for link in links:
        assert link.specialty_code in nucc
        assert len(link.reason) > 10
    xcel = clinic_by_key(session, "xcel-sports-medicine")
    assert xcel.specialty_codes == ["sports"]
    # No name or page of theirs supports a specialty: none is invented.
    assert clinic_by_key(session, "lake-centre-for-rehab").specialty_codes == []


def test_seeding_again_changes_nothing(app, runner):
    def snapshot() -> list[tuple]:
        with Session(get_database(app).engine) as session:
            clinics = [
                (c.id, c.seed_key, c.name, c.phone, c.updated_at, tuple(c.specialty_codes))
                for c in session.exec(select(Clinic).order_by(Clinic.id)).all()
            ]
            locations = [
                (loc.id, loc.seed_key, loc.lat, loc.lon, loc.updated_at, tuple(loc.review_reasons))
                for loc in session.exec(select(Location).order_by(Location.id)).all()
            ]
            return clinics + locations

    before = snapshot()
    result = runner.invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "clinic: 0 created, 0 updated, 31 unchanged" in result.output
    assert "location: 0 created, 0 updated, 36 unchanged" in result.output
    assert snapshot() == before


def test_seed_into_an_empty_database_via_cli(empty_database_url):
    from tests.conftest import build_app

    app = build_app(empty_database_url)
    result = app.test_cli_runner().invoke(args=["seed"])
    assert result.exit_code == 0, result.output
    assert "clinic: 31 created" in result.output
    assert "location: 36 created" in result.output
    from referral.db import get_database as database

    database(app).dispose()


def test_seed_file_is_where_the_app_reads_it(app):
    assert Path(app.config["SEED_DATA_DIR"]) == REPO_ROOT / "seed_data"
