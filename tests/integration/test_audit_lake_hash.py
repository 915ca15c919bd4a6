"""The lake's row texts and hashes (Arrow and Python) equal PostgreSQL's for the same rows.

The lake audit compares hashes of lake rows (:mod:`totes.audit_lake`) with hashes
the source database computes (:mod:`totes.audit_sql`): a single character rendered
differently would make every lake row differ. So the same values, in the lake's
Arrow types, hostile ones included, are rendered and hashed by both, here with a
real PostgreSQL.
"""
from datetime import date
from decimal import Decimal

import pyarrow as pa
import pytest

from totes import audit_lake, audit_sql

pytestmark = pytest.mark.integration

HOSTILE = "O'Brien \"Ltd\" '); DROP TABLE staff; --\nsecond line\t\\N \\. ,\u202eRTL \U0001F45C ß"
BACKSLASH = "back\\slash"
PARAMS = {"hostile": HOSTILE, "backslash": BACKSLASH}
MONEY = pa.decimal128(10, 2)

#: (value, its lake type, the SQL expression of the same value as audit_sql renders its type).
VALUES = [
    (None, pa.string(), "quote_nullable(NULL::text)"),
    ("", pa.string(), "quote_nullable(''::text)"),
    (HOSTILE, pa.string(), "quote_nullable((CAST(:hostile AS text))::text)"),
    (BACKSLASH, pa.string(), "quote_nullable((CAST(:backslash AS text))::text)"),
    (0, pa.int32(), "quote_nullable((0)::text)"),
    (-42, pa.int64(), "quote_nullable((-42)::text)"),
    (None, pa.int32(), "quote_nullable((NULL::int)::text)"),
    (True, pa.bool_(), "quote_nullable((true)::text)"),
    (False, pa.bool_(), "quote_nullable((false)::text)"),
    (date(2024, 2, 29), pa.date32(), "quote_nullable(to_char(DATE '2024-02-29', 'YYYY-MM-DD'))"),
    (date(1, 1, 1), pa.date32(), "quote_nullable(to_char(DATE '0001-01-01', 'YYYY-MM-DD'))"),
    ("08:56:11.074", pa.string(),
     "quote_nullable(to_char(TIME '08:56:11.074', 'HH24:MI:SS.MS'))"),
    ("00:00:00.000", pa.string(), "quote_nullable(to_char(TIME '00:00:00', 'HH24:MI:SS.MS'))"),
    *((Decimal(text), MONEY, f"quote_nullable(trim_scale({text}::numeric(10,2))::text)")
      for text in ("100.00", "0.10", "0.00", "-0.00", "-12.50", "1.05", "100.10", "99999999.99",
                   "-99999999.99")),
]


@pytest.fixture
def conn(postgres, database):
    """A connection to a fresh database (only expressions are evaluated)."""
    connection = postgres.connect(database("hashes"))
    yield connection
    connection.close()


@pytest.mark.parametrize("value, kind, expression", VALUES)
def test_each_value_renders_as_postgresql_renders_it(conn, value, kind, expression):
    params = {name: text for name, text in PARAMS.items() if f":{name}" in expression}
    (rendered,), = conn.run(f"SELECT {expression}", **params)
    assert audit_lake.row_texts([pa.array([value], kind)]) == [rendered]


def test_a_whole_rows_text_and_hash_are_postgresqls(conn):
    text = "concat_ws(',', " + ", ".join(expression for _, _, expression in VALUES) + ")"
    sql = "SELECT " + audit_sql.Relation("", "", text).hash_sql + ", " + text
    (digest, rendered), = conn.run(sql, **PARAMS)
    (lake_text,) = audit_lake.row_texts(pa.array([value], kind) for value, kind, _ in VALUES)
    assert lake_text == rendered
    assert audit_lake.row_hash(lake_text) == digest
