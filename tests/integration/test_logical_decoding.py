"""pgoutput as the real server writes it: every column type of the 11 tables, decoded exactly.

Each row is written once at the source, decoded from the slot, and compared with
the line snapshot capture renders for the same row on the server (``row_to_json``):
the two capture modes must hand the transform the same values.
"""
import random
import string
from datetime import timedelta
from decimal import Decimal

import pytest

from totes import extract, jsonl, logical, pgoutput
from totes.source import SOURCE_COLUMNS, SOURCE_TABLES

from logical_cluster import logical_cluster  # noqa: F401  (the module's fixture)
from test_ingest import T0, insert, sales_order, seed_one_of_each

SLOT = PUBLICATION = "totes_decoding"
HOSTILE = {
    "address_line_1": "'); DROP TABLE staff; --",
    "address_line_2": 'quote " and \\ backslash \' apostrophe \\u0041 {"json": [1]}',
    "district": "emoji 👜🧳 and RTL עברית العربية \u200f mark",
    "city": "line one\nline two\r\n\ttabbed \x01\x1f control",
    "postal_code": "\u2028\u2029 separators",
    # incompressible and long: stored out of line (TOASTed)
    "country": "Ünïcödé ß ﬁ " + "".join(random.Random(13).choices(string.ascii_letters, k=20_000)),
    "phone": "",
}


@pytest.fixture
def source(logical_cluster):  # noqa: F811
    """A fresh totesys with its publication and slot; the slot dropped afterwards."""
    name = logical_cluster.fresh_source()
    conn = logical_cluster.postgres.connect(name)
    conn.run("SET datestyle = 'ISO, YMD'")
    logical.ensure_source(conn, SLOT, PUBLICATION)
    yield conn
    conn.run("SELECT pg_drop_replication_slot(:slot)", slot=SLOT)
    conn.close()


def peek(conn):
    """Every message the slot holds, decoded, in order."""
    return [pgoutput.decode(data) for [data] in conn.run(
        "SELECT data FROM pg_logical_slot_peek_binary_changes(:slot, NULL, NULL, "
        "'proto_version', '1', 'publication_names', :pub)", slot=SLOT, pub=PUBLICATION)]


def decoded_rows(messages):
    """(table, kind, row dict) for every change, rendered as ingest writes it."""
    shapes, rows = {}, []
    for message in messages:
        if isinstance(message, pgoutput.Relation):
            shapes[message.oid] = pgoutput.RowShape.of(message)
        elif isinstance(message, (pgoutput.Insert, pgoutput.Update)):
            shape = shapes[message.relation]
            [row] = jsonl.decode_lines([shape.line(message.new)])
            rows.append((shape.table, type(message).__name__, row))
        elif isinstance(message, pgoutput.Delete):
            shape = shapes[message.relation]
            rows.append((shape.table, "Delete", shape.key(message.old)))
    return rows


def snapshot_rows(conn, table):
    """The rows of ``table`` exactly as snapshot capture renders them (mark dropped)."""
    return [row for [line] in conn.run(f"SELECT {extract.row_json_sql(table)}")  # nosec B608
            for row in jsonl.decode_lines([line.removesuffix(extract.FUTURE_MARK.decode())])]


def test_every_table_and_column_type_decodes_to_the_snapshot_line(source):
    seed_one_of_each(source, at=T0)
    insert(source, "address", address_id=2, created_at=T0, last_updated=T0 + timedelta(
        milliseconds=880), **HOSTILE)
    sales_order(source, 2, T0.replace(microsecond=0), unit_price=Decimal("99999999.99"))
    sales_order(source, 3, T0.replace(microsecond=999000), unit_price=Decimal("0.01"))
    insert(source, "payment_type", payment_type_id=2, payment_type_name="PURCHASE_REFUND",
           created_at=T0, last_updated=T0)
    insert(source, "transaction", transaction_id=2, transaction_type="PURCHASE",
           sales_order_id=None, purchase_order_id=1, created_at=T0, last_updated=T0)
    insert(source, "payment", payment_id=2, transaction_id=2, counterparty_id=1,
           payment_amount=Decimal("-0.50"), currency_id=1, payment_type_id=2, paid=True,
           payment_date="not a date, but text", company_ac_number=1, counterparty_ac_number=2,
           created_at=T0, last_updated=T0)

    decoded = decoded_rows(peek(source))

    assert {table for table, _, _ in decoded} == set(SOURCE_TABLES)
    for table in SOURCE_TABLES:
        mine = [row for name, kind, row in decoded if name == table and kind == "Insert"]
        assert mine == snapshot_rows(source, table), table
        assert all(list(row) == [SOURCE_TABLES[table], *(
            name for name in SOURCE_COLUMNS[table] if name != SOURCE_TABLES[table])]
            for row in mine)
    [hostile] = [row for name, _, row in decoded if name == "address" and row["address_id"] == 2]
    assert {name: hostile[name] for name in HOSTILE} == HOSTILE
    assert hostile["last_updated"] == "2024-11-15T14:00:01.000"
    orders = {row["sales_order_id"]: row for name, _, row in decoded if name == "sales_order"}
    assert orders[2]["unit_price"] == Decimal("99999999.99")
    assert orders[2]["last_updated"] == "2024-11-15T14:00:00.000"
    assert orders[3]["last_updated"] == "2024-11-15T14:00:00.999"
    assert orders[1]["last_updated"] == "2024-11-15T14:00:00.120"
    payments = {row["payment_id"]: row for name, _, row in decoded if name == "payment"}
    assert (payments[1]["paid"], payments[2]["paid"]) == (False, True)
    assert payments[2]["payment_amount"] == Decimal("-0.50")
    transactions = {row["transaction_id"]: row for name, _, row in decoded
                    if name == "transaction"}
    assert transactions[2]["sales_order_id"] is None
    assert transactions[2]["transaction_type"] == "PURCHASE"


def test_updates_and_deletes_decode_with_their_keys_and_an_unchanged_toast_is_marked(source):
    seed_one_of_each(source)
    insert(source, "address", address_id=2, created_at=T0, last_updated=T0, **HOSTILE)
    source.run("UPDATE sales_order SET units_sold = 7 WHERE sales_order_id = 1")
    source.run("UPDATE sales_order SET sales_order_id = 9 WHERE sales_order_id = 1")
    source.run("DELETE FROM payment WHERE payment_id = 1")
    source.run("UPDATE address SET phone = '999' WHERE address_id = 2")

    messages = peek(source)
    relations = {m.oid: pgoutput.RowShape.of(m) for m in messages
                 if isinstance(m, pgoutput.Relation)}
    updates = [m for m in messages if isinstance(m, pgoutput.Update)]
    [delete] = [m for m in messages if isinstance(m, pgoutput.Delete)]

    def of(table):
        return [u for u in updates if relations[u.relation].table == table]

    order = relations[of("sales_order")[0].relation]
    assert [order.key(u.new) for u in of("sales_order")] == [1, 9]
    assert of("sales_order")[0].old is None             # key unchanged: no old tuple
    assert of("sales_order")[1].old_kind == "K" and order.key(of("sales_order")[1].old) == 1
    [cascaded] = of("transaction")                      # ON UPDATE CASCADE, decoded too
    assert relations[cascaded.relation].line(cascaded.new).startswith(b'{"transaction_id":1,')
    assert relations[delete.relation].key(delete.old) == 1 and delete.old_kind == "K"
    # The long country was not rewritten, so pgoutput does not resend it: marked, and a
    # row still holding the mark is refused, never written with a value missing (ingest
    # fills it in first: test_logical_operations).
    [address_update] = of("address")
    assert pgoutput.UNCHANGED in address_update.new
    assert relations[address_update.relation].unchanged(address_update.new) == ("country",)
    with pytest.raises(pgoutput.DecodeError, match="address.country.*unchanged TOASTed"):
        relations[address_update.relation].line(address_update.new)
    source.run('ALTER TABLE "address" REPLICA IDENTITY FULL')
    source.run("UPDATE address SET phone = '000' WHERE address_id = 2")
    full = [m for m in peek(source) if isinstance(m, pgoutput.Update)][-1]
    [row] = jsonl.decode_lines([relations[full.relation].line(full.new, full.old)])
    assert (row["country"], row["phone"]) == (HOSTILE["country"], "000")


def test_begin_and_commit_carry_the_commit_lsn_and_time_and_rolled_back_work_is_absent(source):
    seed_one_of_each(source)
    source.run("START TRANSACTION")
    sales_order(source, 2, T0)
    source.run("ROLLBACK")
    source.run("TRUNCATE payment, transaction")

    messages = peek(source)
    begins = [m for m in messages if isinstance(m, pgoutput.Begin)]
    commits = [m for m in messages if isinstance(m, pgoutput.Commit)]
    [truncate] = [m for m in messages if isinstance(m, pgoutput.Truncate)]
    [[now]] = source.run("SELECT (now() AT TIME ZONE 'UTC')::timestamp")

    assert [b.final_lsn for b in begins] == [c.commit_lsn for c in commits]
    assert all(c.end_lsn > c.commit_lsn for c in commits)
    assert all(b.commit_time == c.commit_time and abs(now - b.commit_time) < timedelta(
        minutes=1) for b, c in zip(begins, commits))
    assert 2 not in [row["sales_order_id"] for table, kind, row in decoded_rows(messages)
                     if table == "sales_order"]
    names = {m.oid: m.name for m in messages if isinstance(m, pgoutput.Relation)}
    assert sorted(names[oid] for oid in truncate.relations) == ["payment", "transaction"]
