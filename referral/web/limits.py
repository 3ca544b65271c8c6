"""Bounds every request must respect, whatever the endpoint."""

# Ids are 32-bit integers in the database: larger ones cannot exist, and PostgreSQL would
# reject them with an error rather than "not found".
MAX_ID = 2**31 - 1
# Deeper pages than this are not browsing but scraping; the offset must also stay in range.
MAX_PAGE = 100_000
