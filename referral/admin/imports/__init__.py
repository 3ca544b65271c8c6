"""Bulk import of clinics and their locations from CSV or JSON, as plain functions over a session.

Each row is one location of a clinic, with the columns of ``COLUMNS``. A row's clinic is an
existing clinic with the same name (case and spacing aside) and phone (E.164), else a new one;
rows of one file with the same name and phone are one clinic. A row's location is the clinic's
location with the same address, city, state and ZIP (case and spacing aside), else a new one.

The steps, each a module, all with memory that does not grow with the file:

- ``read``: the file read from a stream a row at a time (CSV, or a JSON array item by item),
  grouped in chunks of a few thousand rows, with the errors found reading it;
- ``validate``: a chunk's rows checked with the admin API's rules, column by column;
- ``plan``: each chunk matched against the directory (a compact index of it loaded once per
  import; the records a chunk matches read by id), geocoded offline; what it learns of the file
  (its clinics, the locations seen, every row's plan, every error) kept in a scratch database
  on disk (``scratch``), not in memory; nothing written;
- ``apply``: a valid plan written with bulk statements a batch at a time, the change log
  included; the caller commits, so the import is one transaction;
- ``runs``: one import at a time (a lease in the database), each import recorded as a run with
  its summary, and its whole plan and errors stored compressed for paging and download.
  ``run_import`` is the whole of it, as the HTTP endpoint and ``referral import`` run it.

An empty cell (or an absent column, or a JSON null) never erases: ``website``,
``specialties`` and ``specialties_not_offered`` left empty keep the clinic's values (rows of
one clinic may leave them to one row; rows that give them must agree), ``lat``/``lon`` left
empty keep a location's stored coordinates, else the location is placed offline (ZIP
centroid, else city centroid). ``phone`` and the address columns are identity: empty there
means none. Imports never (de)activate.

Specialties, as the admin API has them: ``specialties`` (codes ``;``-separated in CSV, a list
or such a string in JSON) is every specialty the clinic is on record as offering and
``specialties_not_offered`` every one it is on record as not offering; a code in neither is
unknown, which is not "no". A clinic's codes given in one column leave the other column's
stored set (the newer statement wins) unless that column is given too; a code given in both
(in one row, or in two rows of one clinic) is an error. The links written say who said so
(``source``: the importer and the file's name) and whether the clinic offers the specialty.
"""

from referral.admin.imports.apply import apply_import
from referral.admin.imports.base import (
    CHUNK_ROWS,
    COLUMNS,
    CREATED,
    DEFAULT_MAX_ERRORS,
    FORMATS,
    FORMULA_PREFIXES,
    OUTCOMES,
    REQUIRED_COLUMNS,
    SPECIALTY_COLUMNS,
    SPECIALTY_SEPARATOR,
    UNCHANGED,
    UPDATED,
    Actor,
    ImportConflictError,
    RowError,
    SourceRow,
)
from referral.admin.imports.plan import ImportPlan, plan_chunks, plan_import, plan_stream
from referral.admin.imports.read import (
    ParsedFile,
    detect_format,
    read_chunks,
    read_import,
    read_rows,
)
from referral.admin.imports.runs import (
    ImportBusyError,
    ImportSettings,
    LeaseLostError,
    run_import,
)
from referral.admin.imports.validate import SCHEMA_FIELDS

__all__ = [
    "CHUNK_ROWS",
    "COLUMNS",
    "CREATED",
    "DEFAULT_MAX_ERRORS",
    "FORMATS",
    "FORMULA_PREFIXES",
    "OUTCOMES",
    "REQUIRED_COLUMNS",
    "SCHEMA_FIELDS",
    "SPECIALTY_COLUMNS",
    "SPECIALTY_SEPARATOR",
    "UNCHANGED",
    "UPDATED",
    "Actor",
    "ImportBusyError",
    "ImportConflictError",
    "ImportPlan",
    "ImportSettings",
    "LeaseLostError",
    "ParsedFile",
    "RowError",
    "SourceRow",
    "apply_import",
    "detect_format",
    "plan_chunks",
    "plan_import",
    "plan_stream",
    "read_chunks",
    "read_import",
    "read_rows",
    "run_import",
]
