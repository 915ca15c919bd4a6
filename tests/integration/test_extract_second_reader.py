"""Two connections in one snapshot read a table's chunks exactly as one connection does.

A :class:`totes.extract.SecondReader` imports the run's exported snapshot and reads
every other chunk after a table's first; the chunks (rows, keys, bytes, the cut at
the row budget) must be the ones a single connection reads, it must step aside when
it cannot lock at once, and a failure on it must fail the read.
"""
import threading
import time
from datetime import datetime, timedelta

import pg8000.native
import pytest

from totes import db, extract
from totes.capture import TableCursor
from totes.source import SOURCE_TABLES

CHUNK_ROWS = 20


def read_chunks(conn, connect, table, limit, *, second, cursor=TableCursor()):
    """Read ``table`` in one snapshot, with or without a second connection; chunks and reader."""
    with extract.snapshot(conn, locked=SOURCE_TABLES) as read_point:
        reader = extract.SecondReader(conn, connect, SOURCE_TABLES) if second else None
        try:
            chunks = list(extract.copy_changes(conn, table, cursor, read_point, limit,
                                               CHUNK_ROWS, all_keys=True, reader=reader))
        finally:
            if reader is not None:
                reader.close()
    return chunks, reader


@pytest.mark.parametrize("limit", [10_000, 3 * CHUNK_ROWS + 7, 4 * CHUNK_ROWS, 2 * CHUNK_ROWS + 1])
def test_two_connections_read_the_same_chunks_as_one_up_to_the_row_budget(totesys, limit):
    conn = totesys.connect()
    future = datetime.utcnow() + timedelta(days=30)
    conn.run("UPDATE payment SET last_updated = :stamp WHERE payment_id % 7 = 0", stamp=future)
    try:
        alone, _ = read_chunks(conn, totesys.connect, "payment", limit, second=False)
        paired, reader = read_chunks(conn, totesys.connect, "payment", limit, second=True)
    finally:
        conn.close()
    assert paired == alone
    assert sum(chunk.rows for chunk in alone) == min(limit, totesys.counts["payment"])
    assert reader.second_chunks >= 1
    assert any(extract.FUTURE_MARK + b"\n" in chunk.lines for chunk in paired)


def test_a_table_of_one_chunk_never_opens_a_second_connection(totesys):
    conn = totesys.connect()
    try:
        chunks, reader = read_chunks(conn, totesys.connect, "currency", 10_000, second=True)
    finally:
        conn.close()
    assert [chunk.rows for chunk in chunks] == [totesys.counts["currency"]]
    assert reader.second_chunks == 0 and not reader._opened


def test_a_second_connection_that_cannot_lock_at_once_leaves_the_reading_to_the_first(
        totesys, captured_logs):
    conn, rewrite = totesys.connect(), totesys.connect()
    queued = threading.Thread(target=lambda: rewrite.run(
        "BEGIN; LOCK TABLE payment IN ACCESS EXCLUSIVE MODE; ROLLBACK"))
    try:
        alone, _ = read_chunks(conn, totesys.connect, "payment", 10_000, second=False)
        with extract.snapshot(conn, locked=SOURCE_TABLES) as read_point:
            queued.start()  # waits behind this snapshot's ACCESS SHARE lock
            while not conn.run("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0]:
                time.sleep(0.01)
            reader = extract.SecondReader(conn, totesys.connect, SOURCE_TABLES)
            try:
                paired = list(extract.copy_changes(conn, "payment", TableCursor(), read_point,
                                                   10_000, CHUNK_ROWS, all_keys=True,
                                                   reader=reader))
            finally:
                reader.close()
        queued.join(timeout=10)
    finally:
        conn.close()
        rewrite.close()
    assert paired == alone and reader.second_chunks == 0 and reader._opened
    assert any("reading with one connection" in record["message"] for record in captured_logs())


def test_a_second_connection_that_cannot_be_opened_leaves_the_reading_to_the_first(
        totesys, captured_logs):
    def refused():
        raise db.DatabaseUnavailableError("too many connections for role")

    conn = totesys.connect()
    try:
        alone, _ = read_chunks(conn, totesys.connect, "payment", 10_000, second=False)
        paired, reader = read_chunks(conn, refused, "payment", 10_000, second=True)
    finally:
        conn.close()
    assert paired == alone and reader.second_chunks == 0 and reader._opened
    assert any("could not be opened" in record["message"] for record in captured_logs())


def test_a_failure_on_the_second_connection_fails_the_read(totesys):
    conn, admin = totesys.connect(), totesys.connect()
    try:
        with extract.snapshot(conn, locked=SOURCE_TABLES) as read_point:
            reader = extract.SecondReader(conn, totesys.connect, SOURCE_TABLES)
            try:
                [[pid]] = reader.second().run("SELECT pg_backend_pid()")
                admin.run("SELECT pg_terminate_backend(:pid)", pid=pid)
                with pytest.raises((pg8000.native.InterfaceError, pg8000.native.DatabaseError)):
                    list(extract.copy_changes(conn, "payment", TableCursor(), read_point, 10_000,
                                              CHUNK_ROWS, reader=reader))
            finally:
                reader.close()
    finally:
        conn.close()
        admin.close()
