"""A dry run holds a chunk of rows, not the file: the memory it takes (Python's own
allocations, traced: reading, checking, planning, storing the plan) grows by far less than the
file does, from 1 MB to 10 MB."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

from sqlmodel import Session

from referral.admin.imports import COLUMNS, Actor, run_import
from referral.db import get_database
from referral.geo.chain import get_geocoder

PLACES = [("Minneapolis", "MN", "55408"), ("Austin", "TX", "78701"), ("Seattle", "WA", "98101"),
          ("Chicago", "IL", "60601"), ("San Antonio", "TX", "78205")]  # fmt: skip
CODES = ["spine", "sports;spine", "orthopedic", "", "running;hand"]


def write_file(path: Path, size: int) -> int:
    """A CSV of about ``size`` bytes of valid rows, every fifth clinic with two locations, one
    location in ten without coordinates; how many rows."""
    rows = 0
    with path.open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(COLUMNS)
        while file.tell() < size:
            clinic = rows * 5 // 6
            city, state, zip_code = PLACES[clinic % len(PLACES)]
            placed = rows % 10 != 0
            phone = f"(612) 555-{clinic % 10000:04d}" if clinic % 3 == 0 else ""
            writer.writerow(
                [f"Memory Clinic {clinic:07d}", phone,
                 f"https://clinic-{clinic}.example.com", f"{rows} Main St", city, state, zip_code,
                 f"{40 + (rows % 1000) / 1000:.4f}" if placed else "",
                 f"{-90 - (rows % 997) / 1000:.4f}" if placed else "",
                 CODES[clinic % len(CODES)], ""]
            )  # fmt: skip
            rows += 1
    return rows


def dry_run_peak(app, path: Path) -> tuple[int, int]:
    """(peak bytes allocated during a dry run of the file, rows planned)."""
    with app.app_context(), Session(get_database(app).engine) as session:
        geocoder = get_geocoder(app)
        with path.open("rb") as stream:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            run = run_import(session, stream, "csv", geocoder, Actor("memory"), dry_run=True)
            peak = tracemalloc.get_traced_memory()[1] - start
    assert run.error_count == 0, run.summary["errors"][:3]
    return peak, run.summary["plan_entries"]


def test_dry_run_memory_does_not_grow_with_the_file(app, tmp_path: Path) -> None:
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    write_file(tmp_path / "warm.csv", 20_000)
    small_rows = write_file(small, 1_000_000)
    large_rows = write_file(large, 10_000_000)
    tracemalloc.start()
    try:
        dry_run_peak(app, tmp_path / "warm.csv")  # one-time costs: the gazetteer, caches
        small_peak, small_planned = dry_run_peak(app, small)
        large_peak, large_planned = dry_run_peak(app, large)
    finally:
        tracemalloc.stop()
    assert (small_planned, large_planned) == (small_rows, large_rows)
    growth = large_peak - small_peak
    file_growth = large.stat().st_size - small.stat().st_size
    # 9 MB more file, no more memory (a chunk of rows, the directory's index, the places
    # met); a file held in memory, with a plan of every row, took some 20 times its size.
    assert growth < file_growth / 10, (small_peak, large_peak)
    assert large_peak < 40_000_000, large_peak
