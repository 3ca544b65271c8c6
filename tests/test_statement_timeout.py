"""No database statement runs longer than DATABASE_STATEMENT_TIMEOUT_MS: on PostgreSQL its
own statement_timeout, on SQLite a progress handler; a request that hits it answers 503 with
Retry-After, as problem details, and the next statement on the same connection runs."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from referral.db import (
    get_database,
    get_session,
    is_statement_timeout,
    without_statement_timeout,
)
from tests.conftest import build_app
from tests.helpers import assert_problem

SLOW = {
    # Counting to a hundred million: seconds of work, no sleeping function needed.
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 100000000) SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(5)",
}


@pytest.fixture
def hurried(database_url):
    app = build_app(database_url, DATABASE_STATEMENT_TIMEOUT_MS=200)
    yield app
    get_database(app).dispose()


def test_a_long_statement_is_cut_short(hurried, backend):
    engine = get_database(hurried).engine
    started = time.monotonic()
    with engine.connect() as connection:
        with pytest.raises(sa.exc.DBAPIError) as caught:
            connection.execute(sa.text(SLOW[backend]))
        assert is_statement_timeout(caught.value)
        connection.rollback()
        # The connection is still good for the next statement, which has its own time.
        assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    assert time.monotonic() - started < 3


def test_a_request_that_runs_out_of_time_is_a_503(hurried, backend):
    def slow() -> str:
        get_session().execute(sa.text(SLOW[backend]))
        return "done"

    hurried.add_url_rule("/slow-for-test", view_func=slow)
    response = hurried.test_client().get("/slow-for-test")
    problem = assert_problem(response, 503)
    assert response.headers["Retry-After"] == "1"
    assert "did not answer in time" in problem["detail"]


def test_ordinary_work_is_not_cut(hurried):
    body = hurried.test_client().get("/v1/locations/nearest?zip=55413").get_json()
    assert body["results"]


LONGER = {  # longer than the 200 ms limit, shorter than a test should take
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 3000000) SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(0.5)",
}


def test_work_off_the_request_path_may_take_longer(hurried, backend):
    # The read model's whole read of the directory is long by nature: it lifts the limit on
    # its connection (and only while it reads).
    engine = get_database(hurried).engine
    with engine.connect() as connection:
        with without_statement_timeout(connection):
            connection.execute(sa.text(LONGER[backend])).scalar()
        with pytest.raises(sa.exc.DBAPIError) as caught:
            connection.execute(sa.text(SLOW[backend]))
        assert is_statement_timeout(caught.value)
