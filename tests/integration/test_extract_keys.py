"""The key sweep's listing: every primary key of a table, ascending, in blocks of a bounded size.

:func:`totes.extract.copy_keys` walks a table's key index one block at a time, each
block continuing above the last key of the one before; the blocks, joined, must be
exactly the table's keys in order, none longer than asked, and an empty table must
give no line at all.
"""
import pytest

from totes import extract, sweep
from totes.db import quote_ident
from totes.source import SOURCE_TABLES


class Lines:
    """A sink keeping the lines it is handed."""

    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)


@pytest.mark.parametrize("block_keys", [1, 7, 100_000])
def test_every_key_comes_once_in_order_in_blocks_of_at_most_the_size_asked(totesys, block_keys):
    conn = totesys.connect()
    try:
        conn.run("DELETE FROM payment WHERE payment_id % 5 = 0")   # gaps in the keys
        for table in ("payment", "currency"):
            key = quote_ident(SOURCE_TABLES[table])
            expected = [key for [key] in conn.run(
                f"SELECT {key} FROM {quote_ident(table)} ORDER BY {key}")]  # nosec B608
            sink = Lines()
            extract.copy_keys(conn, table, block_keys, sink)
            blocks = [sweep.parse_block(line) for line in sink.lines]
            assert all(line.endswith(b"\n") for line in sink.lines)
            assert [key for block in blocks for key in block] == expected
            assert all(0 < len(block) <= block_keys for block in blocks)
            assert len(blocks) == -(-len(expected) // block_keys)
    finally:
        conn.close()


def test_an_empty_table_gives_no_line(source_db):
    sink = Lines()
    extract.copy_keys(source_db, "payment", 7, sink)
    assert sink.lines == []
