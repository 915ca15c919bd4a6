"""The pgoutput decoder on messages built byte by byte, and the rendering of each kind of value.

The real server's output is decoded in tests/integration/test_logical_decoding.py;
these cover what a healthy server rarely sends: malformed messages and values the
warehouse could not carry.
"""
from datetime import datetime

import pytest

from totes import logical, pgoutput
from totes.source import SOURCE_COLUMNS


def relation(oid=7, name="currency", columns=("currency_id", "currency_code", "last_updated"),
             identity=b"d", keys=(0,)):
    """A Relation message for ``name`` with text columns (type oids do not matter here).

    ``keys`` are the positions of the replica identity's columns (flag 1).
    """
    body = oid.to_bytes(4, "big") + b"public\x00" + name.encode() + b"\x00" + identity
    body += len(columns).to_bytes(2, "big")
    for index, column in enumerate(columns):
        body += bytes([index in keys]) + column.encode() + b"\x00" + (25).to_bytes(4, "big")
        body += (-1).to_bytes(4, "big", signed=True)
    return b"R" + body


def tuple_data(*values):
    """TupleData: text values, None as NULL."""
    body = len(values).to_bytes(2, "big")
    for value in values:
        if value is None:
            body += b"n"
        else:
            body += b"t" + len(value.encode()).to_bytes(4, "big") + value.encode()
    return body


def test_begin_and_commit_decode_lsns_and_times_from_the_postgres_epoch():
    begin = pgoutput.decode(b"B" + (0x1_0000_0010).to_bytes(8, "big")
                            + (86_400_000_001).to_bytes(8, "big") + (42).to_bytes(4, "big"))
    commit = pgoutput.decode(b"C\x00" + (16).to_bytes(8, "big") + (40).to_bytes(8, "big")
                             + (0).to_bytes(8, "big"))
    assert begin == pgoutput.Begin(0x1_0000_0010, datetime(2000, 1, 2, 0, 0, 0, 1), 42)
    assert pgoutput.lsn_text(begin.final_lsn) == "1/10"
    assert commit == pgoutput.Commit(0, 16, 40, datetime(2000, 1, 1))


def test_an_insert_renders_the_contract_line_and_an_update_keeps_its_old_key():
    shape = pgoutput.RowShape.of(pgoutput.decode(relation()))
    insert = pgoutput.decode(b"I" + (7).to_bytes(4, "big") + b"N"
                             + tuple_data("3", 'G"B', "2024-01-02 03:04:05.6"))
    update = pgoutput.decode(b"U" + (7).to_bytes(4, "big") + b"K" + tuple_data("2", None, None)
                             + b"N" + tuple_data("3", "EUR", "2024-01-02 03:04:05"))
    assert shape.line(insert.new) == (
        b'{"currency_id":3,"currency_code":"G\\"B","last_updated":"2024-01-02T03:04:05.600"}\n')
    assert (update.old_kind, shape.key(update.old), shape.key(update.new)) == ("K", 2, 3)
    assert shape.line(update.new).endswith(b'"last_updated":"2024-01-02T03:04:05.000"}\n')


@pytest.mark.parametrize("data, problem", [
    (b"", "empty"),
    (b"Z\x00", "not one pgoutput protocol 1 sends"),
    (b"B\x00\x01", "ends early"),
    (b"C" + bytes(25) + b"\x00", "trailing bytes"),
    (b"I" + (7).to_bytes(4, "big") + b"X", "without its new tuple"),
    (b"I" + (7).to_bytes(4, "big") + b"N\x00\x01b\x00\x00\x00\x00", "not protocol 1 text"),
    (b"D" + (7).to_bytes(4, "big") + b"N", "old key"),
    (b"Y" + (7).to_bytes(4, "big") + b"public", "unterminated string"),
])
def test_a_malformed_message_is_refused(data, problem):
    with pytest.raises(pgoutput.DecodeError, match=problem):
        pgoutput.decode(data)


@pytest.mark.parametrize("kind, text", [
    ("int", "1.5"), ("money", "NaN"), ("money", "Infinity"), ("bool", "true"),
    ("timestamp", "infinity"), ("timestamp", "2024-01-02 03:04:05 BC"),
    ("timestamp", "2024-01-02T03:04:05"),
])
def test_a_value_the_warehouse_cannot_carry_is_refused_naming_the_column(kind, text):
    column = {"int": "payment_id", "money": "payment_amount", "bool": "paid",
              "timestamp": "created_at"}[kind]
    # The column under test at 0, the key at 2 (a valid one) unless it is under test, the
    # others NULL at 1.
    positions = {name: 1 for name in SOURCE_COLUMNS["payment"]}
    positions.update({"payment_id": 2, column: 0})
    shape = pgoutput.RowShape("payment", positions)
    with pytest.raises(pgoutput.DecodeError, match=f"payment.{column} holds a value") as raised:
        shape.line((text, None, "1"))
    assert text not in str(raised.value)     # row data never reaches the logs


def test_a_key_that_is_not_an_integer_is_refused_without_its_value():
    positions = {name: 0 for name in SOURCE_COLUMNS["payment"]}
    shape = pgoutput.RowShape("payment", positions)
    with pytest.raises(pgoutput.DecodeError, match="payment_id is not an integer") as raised:
        shape.key(("secret-ish text",))
    assert "secret-ish" not in str(raised.value)


def test_a_relation_lacking_a_contract_column_is_refused():
    with pytest.raises(pgoutput.DecodeError, match="currency .* lacks the column.*currency_code"):
        pgoutput.RowShape.of(pgoutput.decode(relation(columns=("currency_id", "last_updated"))))


@pytest.mark.parametrize("identity, keys, has_key", [
    (b"d", (0,), True),          # DEFAULT: the primary key
    (b"f", (0, 1, 2), True),     # FULL: every column
    (b"i", (0, 1), True),        # USING INDEX on an index with the key
    (b"i", (1,), False),         # USING INDEX on an index without it
    (b"n", (), False),           # NOTHING
])
def test_a_relation_tells_whether_its_replica_identity_carries_the_primary_key(
        identity, keys, has_key):
    shape = pgoutput.RowShape.of(pgoutput.decode(relation(identity=identity, keys=keys)))
    assert shape.identity_has_key is has_key


@pytest.mark.parametrize("text", ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_lsns_round_trip(text):
    assert pgoutput.lsn_text(pgoutput.parse_lsn(text)) == text


@pytest.mark.parametrize("text", ["", "16", "16/", "x/1", "1/123456789"])
def test_a_malformed_lsn_is_refused(text):
    with pytest.raises(ValueError, match="not an LSN"):
        pgoutput.parse_lsn(text)


def test_the_slot_query_counts_exactly_the_change_messages_as_changes():
    listed = ", ".join(str(byte) for byte in pgoutput.CHANGE_KINDS)
    assert logical.CHANGES_SQL.count(f"IN ({listed})") == 2
