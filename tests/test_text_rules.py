"""Text rules that disguise could slip past (#15 items 5, 6, 7): identifying data in an
assessment written in look-alike letters or hidden in values; an uploaded file's name and an
hours exception's note held to the plain-text rules; formula starters behind white space or in
full-width form defused in every CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session

from referral.auth.keys import create_key
from referral.db import get_database
from referral.directory.models import Clinic
from referral.referrals.models import Referral
from referral.web.text import defuse, safe_file_name, starts_like_formula
from tests.helpers import assert_problem, auth
from tests.test_imports import IMPORTS, LAKESIDE, post_csv, to_csv

BODY = {"origin": {"zip": "55413"}, "concerns": ["running_low_back_pain"]}


def stored_referrals(app: Any) -> list[Referral]:
    with Session(get_database(app).engine) as session:
        return list(session.execute(select(Referral)).scalars().all())


# ---- 5. identifying data in an assessment ---------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["\uff4e\uff41\uff4d\uff45",  # full-width "name"
     "n\u0430me",  # Cyrillic a
     "P\u0410TIENT_N\u0410ME",  # Cyrillic capital A
     "\u0440h\u043ene",  # Cyrillic er and o: "phone"
     "\U0001d41e\U0001d426\U0001d41a\U0001d422\U0001d425",  # mathematical bold "email"
     "addr\u0435ss"],  # Cyrillic ie
)  # fmt: skip
def test_look_alike_identifying_keys_are_refused(app, client, editor, key):
    response = client.post(
        "/v1/referrals", json={**BODY, "assessment": {key: "x"}}, headers=auth(editor["app"])
    )
    body = assert_problem(response, 422, "assessment")
    assert "looks like identifying data" in body["detail"]
    assert stored_referrals(app) == []


@pytest.mark.parametrize(
    ("assessment", "field"),
    [({"summary": "John Smith SSN 123-45-6789"}, "assessment.summary"),
     ({"summary": "ssn \uff11\uff12\uff13\uff0d\uff14\uff15\uff0d\uff16\uff17\uff18\uff19"},
      "assessment.summary"),
     ({"notes": ["fine", "call me on (612) 555-0100"]}, "assessment.notes.1"),
     ({"answers": {"contact": "+44 20 7946 0958"}}, "assessment.answers.contact"),
     ({"notes": "write to jane.doe@example.com"}, "assessment.notes"),
     ({"notes": "write to jane.doe\uff20example.com"}, "assessment.notes")],
)  # fmt: skip
def test_identifiers_in_values_are_refused_naming_the_field(app, client, editor, assessment, field):
    response = client.post(
        "/v1/referrals", json={**BODY, "assessment": assessment}, headers=auth(editor["app"])
    )
    body = assert_problem(response, 422, field)
    assert "looks like identifying data" in body["detail"]
    for echoed in ("6789", "0100", "0958", "example.com"):
        assert echoed not in body["detail"]  # the value is not sent back
    assert stored_referrals(app) == []


def test_what_a_running_assessment_measures_is_accepted(app, client, editor):
    assessment = {
        "pain_score": 6,
        "summary": "low back pain after 10 km, worse on hills since 2026-05-01; 3x/week",
        "weekly_km": 42.5,
        "onset_weeks": 3,
        "pain_while_running": "7/10",
        "radiating_pain": False,
        "single_leg_bridge_s": [35, 40],
        "red_flags_screened": ["none"],
        "n\u00famero_de_sesiones": 2,  # letters with accents are fine
    }
    response = client.post(
        "/v1/referrals", json={**BODY, "assessment": assessment}, headers=auth(editor["app"])
    )
    assert response.status_code == 201, response.get_json()
    assert len(stored_referrals(app)) == 1


# ---- 6. file names and hours notes -------------------------------------------------------------


def test_uploaded_file_name_is_stored_as_a_safe_basename(app, client, editor):
    hostile = "<img src=x onerror=alert(1)>\u202eVSC.csv"
    response = client.post(
        IMPORTS,
        data={"file": (io.BytesIO(to_csv([LAKESIDE])), hostile)},
        headers=auth(editor["admin"]),
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    with Session(get_database(app).engine) as session:
        clinic_id, source = session.execute(
            select(Clinic.id, Clinic.source_file).where(Clinic.name == LAKESIDE["clinic_name"])
        ).one()
    assert source == "import: img_srcx_onerroralert1VSC.csv"
    public = client.get(f"/v1/clinics/{clinic_id}").get_data(as_text=True)
    assert "<img" not in public and "\u202e" not in public and "\\u202e" not in public


def test_safe_file_name():
    assert safe_file_name("../../etc/passwd") == "etc_passwd"
    assert safe_file_name("\uff43\uff4c\uff49\uff4e\uff49\uff43\uff53.csv") == "clinics.csv"
    assert safe_file_name("\u202e") is None
    assert safe_file_name(None) is None


@pytest.mark.parametrize(
    "note", ["Christmas \u202eyad", "\u2067closed", "zero\u200bwidth", "line\nbreak", "   "]
)
def test_hours_exception_note_follows_the_plain_text_rules(client, editor, note):
    made = client.post("/v1/clinics", json={"name": "Note Clinic"}, headers=auth(editor["admin"]))
    assert made.status_code == 201, made.get_json()
    place = {
        "city": "Minneapolis",
        "state": "MN",
        "hours_exceptions": [{"date": "2026-12-25", "closed": True, "note": note}],
    }
    response = client.post(
        f"/v1/clinics/{made.get_json()['id']}/locations", json=place, headers=auth(editor["admin"])
    )
    body = assert_problem(response, 422, "hours_exceptions")
    assert "note" in body["detail"]
    place["hours_exceptions"][0]["note"] = "Christmas Day"
    response = client.post(
        f"/v1/clinics/{made.get_json()['id']}/locations", json=place, headers=auth(editor["admin"])
    )
    assert response.status_code == 201, response.get_json()


# ---- 7. formulas in disguise ---------------------------------------------------------------


DISGUISED = [
    " =HYPERLINK(1)",
    "\uff1dHYPERLINK(1)",  # full-width equals
    "\u3000+cmd",  # ideographic space, then plus
    "\ufeff@SUM(1)",  # BOM, then at
    "\uff0d1+2",  # full-width minus
    "\t=1",
    "\r=1",
    "\u200b=1",
]


@pytest.mark.parametrize("text", DISGUISED)
def test_defuse_sees_through_white_space_and_full_width(text):
    assert starts_like_formula(text)
    assert defuse(text) == "'" + text


def test_plain_text_and_numbers_are_left_alone():
    for text in ("Lakeside", "-93.29", "+16125550147", " Lakeside", "a=b"):
        assert defuse(text) == text


@pytest.mark.parametrize("name", [" =HYPERLINK(1)", "\uff1dHYPERLINK(1)", "\uff20SUM(1)"])
def test_directory_export_defuses_disguised_formulas_and_reimports(app, client, editor, name):
    made = client.post("/v1/clinics", json={"name": name}, headers=auth(editor["admin"]))
    assert made.status_code == 201, made.get_json()
    location = {"city": "Minneapolis", "state": "MN", "zip": "55408", "lat": 44.95, "lon": -93.29}
    url = f"/v1/clinics/{made.get_json()['id']}/locations"
    placed = client.post(url, json=location, headers=auth(editor["admin"]))
    assert placed.status_code == 201, placed.get_json()
    text = client.get("/v1/clinics.csv").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    cell = next(row["clinic_name"] for row in rows if row["clinic_name"].endswith(name.strip()[1:]))
    assert cell == "'" + name
    # The import takes the defusing "'" off again: the same name, nothing changes.
    again = post_csv(client, text.encode(), editor["admin"], dry_run=True)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["counts"]["rows"]["created"] == 0


def test_referral_export_defuses_disguised_formulas(app, client, editor):
    with Session(get_database(app).engine) as session:
        _, evil = create_key(session, name="\uff1dHYPERLINK(1)", scopes=["referrals:write"])
        session.commit()
    assert client.post("/v1/referrals", json=BODY, headers=auth(evil)).status_code == 201
    text = client.get("/v1/referrals/export.csv", headers=auth(editor["admin"]))
    rows = list(csv.DictReader(io.StringIO(text.get_data(as_text=True))))
    assert rows[0]["source"] == "'\uff1dHYPERLINK(1)"
