"""The packed gazetteer answers exactly what the plain dict tables of ``build_index`` answer,
for every ZIP and every city of the zipcodes package, and its cache file is rebuilt when it
cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from referral.directory.models import GeocodePrecision
from referral.geo import gazetteer as gz
from referral.geo.gazetteer import Gazetteer, Place, build_index, normalize_city, read_zipcodes


@pytest.fixture(scope="module")
def index() -> dict[str, Any]:
    return build_index(read_zipcodes())


@pytest.fixture(scope="module")
def packed(index: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Gazetteer:
    """Through the file, as workers load it."""
    path = tmp_path_factory.mktemp("gazetteer") / "packed.bin"
    gz.save(path, Gazetteer.from_index(index))
    loaded = gz.load(path)
    assert loaded is not None
    return loaded


# The answers of the dict tables, as the gazetteer gave them before it was packed.
def expected_zip(index: dict[str, Any], zip_code: str) -> Place | None:
    match = gz.ZIP_RE.match(zip_code.strip())
    row = index["zips"].get(match.group(1)) if match else None
    if row is None or match is None:
        return None
    city, state, lat, lon, time_zone = row
    return Place(lat, lon, GeocodePrecision.POSTAL_CODE, f"{gz.SOURCE}: ZIP centroid",
                 city, state, match.group(1), time_zone)  # fmt: skip


def expected_city(index: dict[str, Any], city: str, state: str) -> Place | None:
    state = state.strip().upper()
    row = index["cities"].get(f"{normalize_city(city)}|{state}")
    if row is None:
        return None
    name, lat, lon, count, time_zone = row
    return Place(lat, lon, GeocodePrecision.CITY, f"{gz.SOURCE}: mean of {count} ZIP centroids",
                 name, state, None, time_zone)  # fmt: skip


def test_every_zip_answers_as_before(index: dict[str, Any], packed: Gazetteer) -> None:
    assert len(index["zips"]) > 40_000
    for zip_code in index["zips"]:
        for asked in (zip_code, f" {zip_code}-1234 "):
            assert packed.zip_place(asked) == expected_zip(index, asked), asked


@pytest.mark.parametrize(
    "asked", ["00000", "99999", "00500", "1234", "123456", "7820", "78201-12", "abcde", "", " "]
)
def test_unknown_and_malformed_zips_answer_as_before(
    index: dict[str, Any], packed: Gazetteer, asked: str
) -> None:
    assert packed.zip_place(asked) == expected_zip(index, asked)


def test_every_city_answers_as_before(index: dict[str, Any], packed: Gazetteer) -> None:
    assert len(index["cities"]) > 30_000
    for key, row in index["cities"].items():
        _, state = key.split("|")
        for city, asked_state in ((row[0], state), (row[0].upper(), state.lower() + " ")):
            assert packed.city_place(city, asked_state) == expected_city(index, city, asked_state)


@pytest.mark.parametrize(
    ("city", "state"),
    [("Nowhere Town", "TX"), ("San Antonio", "ZZ"), ("", ""), ("San Antonio", "T"),
     ("San Antonio|TX", "TX"), ("San", "TX"), ("Ft. Worth", "TX"), ("St Paul", "MN")],
)  # fmt: skip
def test_unknown_and_abbreviated_cities_answer_as_before(
    index: dict[str, Any], packed: Gazetteer, city: str, state: str
) -> None:
    assert packed.city_place(city, state) == expected_city(index, city, state)


def test_states_with_city_answer_as_before(index: dict[str, Any], packed: Gazetteer) -> None:
    names = set(index["states"]) | {key.split("|")[0] for key in index["cities"]}
    for name in sorted(names):
        assert packed.states_with_city(name) == index["states"].get(name, []), name
    for name in ("", "nowhere town", "san", "springfield|il"):
        assert packed.states_with_city(name) == index["states"].get(normalize_city(name), [])


def test_a_cache_file_of_another_format_is_rebuilt(tmp_path: Path) -> None:
    path = gz.cache_path(tmp_path)
    path.write_bytes(b'{"format": 1}\n[]')
    gz.get_gazetteer.cache_clear()
    try:
        gazetteer = gz.get_gazetteer(str(tmp_path))
    finally:
        gz.get_gazetteer.cache_clear()
    place = gazetteer.zip_place("78201")
    assert place is not None and (place.city, place.state) == ("San Antonio", "TX")
    assert gz.load(path) is not None
