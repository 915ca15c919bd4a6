"""The lake's row hashes, computed in Python, equal the ones PostgreSQL computes for the same rows.

The lake audit compares hashes of lake rows (:mod:`totes.audit_lake`) with hashes
the source database computes (:mod:`totes.audit_sql`): a single character rendered
differently would make every lake row differ. So the same values, hostile ones
included, are rendered and hashed by both, here with a real PostgreSQL.
"""
from datetime import date
from decimal import Decimal

import pytest

from totes import audit_lake, audit_sql

pytestmark = pytest.mark.integration

HOSTILE = "O'Brien \"Ltd\" '); DROP TABLE staff; --\nsecond line\t\\N \\. ,\u202eRTL \U0001F45C ß"

#: (value, the SQL expression of the same value, rendered as audit_sql renders its type).
VALUES = [
    (None, "quote_nullable(NULL::text)"),
    ("", "quote_nullable(''::text)"),
    (HOSTILE, "quote_nullable((CAST(:hostile AS text))::text)"),
    ("back\\slash", "quote_nullable((CAST(:backslash AS text))::text)"),
    (0, "quote_nullable((0)::text)"),
    (-42, "quote_nullable((-42)::text)"),
    (True, "quote_nullable((true)::text)"),
    (False, "quote_nullable((false)::text)"),
    (date(2024, 2, 29), "quote_nullable(to_char(DATE '2024-02-29', 'YYYY-MM-DD'))"),
    ("08:56:11.074", "quote_nullable(to_char(TIME '08:56:11.074', 'HH24:MI:SS.MS'))"),
    (Decimal("100.00"), "quote_nullable(trim_scale(100.00::numeric(10,2))::text)"),
    (Decimal("0.10"), "quote_nullable(trim_scale(0.10::numeric(10,2))::text)"),
    (Decimal("0.00"), "quote_nullable(trim_scale(0.00::numeric(10,2))::text)"),
    (Decimal("-0.00"), "quote_nullable(trim_scale(-0.00::numeric(10,2))::text)"),
    (Decimal("-12.50"), "quote_nullable(trim_scale(-12.50::numeric(10,2))::text)"),
    (Decimal("99999999.99"), "quote_nullable(trim_scale(99999999.99::numeric(10,2))::text)"),
]


@pytest.fixture
def conn(postgres, database):
    """A connection to a fresh database (only expressions are evaluated)."""
    connection = postgres.connect(database("hashes"))
    yield connection
    connection.close()


@pytest.mark.parametrize("value, expression", VALUES)
def test_each_value_renders_as_postgresql_renders_it(conn, value, expression):
    params = {name: text for name, text in (("hostile", HOSTILE), ("backslash", "back\\slash"))
              if f":{name}" in expression}
    (rendered,), = conn.run(f"SELECT {expression}", **params)
    assert audit_lake.quote_nullable(audit_lake.value_text(value)) == rendered


def test_a_whole_rows_hash_is_postgresqls(conn):
    values = [value for value, _ in VALUES]
    text = "concat_ws(',', " + ", ".join(expression for _, expression in VALUES) + ")"
    sql = "SELECT " + audit_sql.Relation("", "", text).hash_sql + ", " + text
    (digest, rendered), = conn.run(sql, hostile=HOSTILE, backslash="back\\slash")
    assert audit_lake.row_text(values) == rendered
    assert audit_lake.row_hash(audit_lake.row_text(values)) == digest
