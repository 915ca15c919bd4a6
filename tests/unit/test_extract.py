"""The SQL ingest sends: allow-listed identifiers, quoted; values only through set_config."""
from datetime import datetime

import pytest

from totes import extract, keys
from totes.capture import Snapshot, TableCursor
from totes.source import SOURCE_COLUMNS, UnknownTableError


def test_a_first_read_copies_a_chunk_of_rows_in_key_order_with_only_the_contract_columns():
    sql = extract.changes_sql("currency", TableCursor())
    assert sql == (
        "COPY (SELECT count(*), max(k)::text, "
        "string_agg(k::text, ',' ORDER BY k) FILTER (WHERE line IS NULL), "
        "coalesce(string_agg(line, E'\\n' ORDER BY k), '') || E'\\n' "
        "AS lines FROM (SELECT t.\"currency_id\" AS k, "
        "'{\"currency_id\":' || coalesce(t.\"currency_id\"::text, 'null') || "
        "',\"currency_code\":' || coalesce(to_json(t.\"currency_code\")::text, 'null') || "
        "',\"last_updated\":' || coalesce(to_char(t.\"last_updated\", "
        "E'\\\\\"YYYY-MM-DD\"T\"HH24:MI:SS.MS\\\\\"'), 'null') || '}' || "
        "(CASE WHEN t.\"last_updated\" > (SELECT current_setting('totes.clock')::timestamp) "
        "THEN CASE WHEN '10000-01-01'::timestamp <= t.\"last_updated\" OR "
        "t.\"last_updated\" < '0001-01-01'::timestamp THEN NULL ELSE 'F' END "
        "WHEN t.\"last_updated\" < '0001-01-01'::timestamp THEN NULL ELSE '' END) AS line "
        "FROM (SELECT t.\"currency_id\", t.\"currency_code\", t.\"last_updated\" "
        "FROM \"currency\" AS t "
        "ORDER BY t.\"currency_id\" LIMIT current_setting('totes.limit')::bigint) AS t "
        "ORDER BY t.\"currency_id\" OFFSET 0) AS chunk) "
        "TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01', FORCE_QUOTE (lines))")


def test_a_second_connections_chunk_skips_the_first_chunks_rows_before_rendering_any():
    sql = extract.changes_sql("staff", TableCursor(), after=True, offset=True)
    assert ("ORDER BY t.\"staff_id\" OFFSET current_setting('totes.offset')::bigint "
            "LIMIT current_setting('totes.limit')::bigint) AS t "
            "ORDER BY t.\"staff_id\" OFFSET 0) AS chunk" in sql)
    assert "offset" not in extract.changes_sql("staff", TableCursor(), after=True)


def test_a_chunk_after_the_first_continues_above_the_last_key_and_may_carry_every_key():
    sql = extract.changes_sql("staff", TableCursor(), after=True, all_keys=True)
    assert "string_agg(k::text, ',' ORDER BY k)" in sql and "max(k)" not in sql
    assert ("WHERE t.\"staff_id\" > current_setting('totes.after')::bigint ORDER BY"
            in sql)


def test_a_chunk_line_is_read_as_count_keys_unfit_keys_and_the_json_lines_unquoted():
    lines = b'{"staff_id":1,"a":"x"}\n{"staff_id":2,"a":"y"}F\n'
    chunk = extract.Chunk.parse(b"2\x021,2\x02\x02\x01" + lines + b"\x01\n")
    assert (chunk.rows, chunk.keys, chunk.lines, chunk.last_key) == (2, b"1,2", lines, 2)
    assert extract.Chunk.parse(b"0\x02\x02\x02\n") == extract.Chunk(0, b"", b"")
    assert extract.Chunk.parse(b"3\x025\x021,5\x02\x01" + lines + b"\x01\n").unfit == b"1,5"


@pytest.mark.parametrize("line", [
    b"1\x021\x02\x02{}\n\n",  # unquoted
    b"1\x021\x02\x02\x01{\"a\":\x01\x01}\n\x01\n",  # a doubled quote inside: not JSON text
])
def test_a_chunk_line_not_in_the_asked_shape_is_refused(line):
    with pytest.raises(extract.ChunkFormatError):
        extract.Chunk.parse(line)


def test_an_incremental_read_selects_by_writing_transaction_with_a_window_read_once():
    sql = extract.changes_sql("staff", TableCursor(since=Snapshot(10, 12, (10,))))
    assert ("WHERE t.xmin::text::bigint >= 3 AND ((SELECT current_setting('totes.xmax32')"
            "::bigint) - t.xmin::text::bigint + 4294967296) % 4294967296 <= "
            "(SELECT current_setting('totes.width')::bigint) ORDER BY") in sql
    assert "last_updated\" >=" not in sql


def test_a_resumed_pass_continues_above_the_bound_key():
    cursor = TableCursor(since=Snapshot(10, 12), resume_after=7, resume_since=Snapshot(20, 20))
    assert ("AND t.\"staff_id\" > current_setting('totes.after')::bigint ORDER BY"
            in extract.changes_sql("staff", cursor))


def test_a_table_carried_over_from_the_watermark_format_is_read_once_by_last_updated():
    sql = extract.changes_sql("staff", TableCursor(since_last_updated=datetime(2024, 11, 15)))
    assert ("WHERE t.\"last_updated\" >= current_setting('totes.since_last_updated')::timestamp "
            "ORDER BY") in sql
    assert "xmin" not in sql


def test_timestamps_are_rendered_quoted_with_milliseconds_and_other_columns_as_json():
    select = extract.row_json_sql("payment")
    for column, kind in SOURCE_COLUMNS["payment"].items():
        stamp = f"to_char(t.\"{column}\", E'\\\\\"YYYY-MM-DD\"T\"HH24:MI:SS.MS\\\\\"')"
        value = {"timestamp": stamp,
                 "int": f"t.\"{column}\"::text", "bool": f"t.\"{column}\"::text"}.get(
                     kind, f"to_json(t.\"{column}\")::text")
        assert f"',\"{column}\":' || coalesce({value}, 'null')" in select or (
            f"'{{\"{column}\":' || coalesce({value}, 'null')" in select)
    assert "company_ac_number" not in select


def test_a_rows_money_that_is_not_a_number_or_a_timestamp_outside_years_1_to_9999_has_no_line():
    line = extract.row_json("payment")
    for column in ("created_at", "last_updated"):
        assert f"t.\"{column}\" < '0001-01-01'::timestamp" in line
    assert "'10000-01-01'::timestamp <= t.\"created_at\"" in line
    assert ("t.\"payment_amount\" <= '-Infinity'::numeric OR "
            "t.\"payment_amount\" >= 'Infinity'::numeric") in line
    assert line.count("THEN NULL") == 2


def test_the_key_sweep_lists_keys_in_order_as_blocks_joined_by_the_server():
    assert extract.keys_sql("transaction", 500, after=False) == (
        "SELECT string_agg(k::text, ',' ORDER BY k) FROM (SELECT \"transaction_id\" AS k "
        "FROM \"transaction\" ORDER BY \"transaction_id\" LIMIT 500) AS block")
    assert extract.keys_sql("transaction", 500, after=True) == (
        "SELECT string_agg(k::text, ',' ORDER BY k) FROM (SELECT \"transaction_id\" AS k "
        "FROM \"transaction\" WHERE \"transaction_id\" > :after ORDER BY \"transaction_id\" "
        "LIMIT 500) AS block")


@pytest.mark.parametrize("table", [
    "_prisma_migrations", "pg_authid", 'staff"; DROP TABLE staff; --', "Staff"])
def test_only_allow_listed_tables_ever_reach_sql(table):
    with pytest.raises((UnknownTableError, KeyError)):
        extract.changes_sql(table, TableCursor())
    with pytest.raises(UnknownTableError):
        extract.keys_sql(table, 10, after=True)


def test_new_run_ids_are_unique_and_sort_by_start_time():
    first, second = keys.new_run_id(), keys.new_run_id()
    assert first != second and len(first.suffix) == 8
    assert keys.parse_manifest_key(keys.manifest_key(first)) == first
    assert keys.parse_run_id(str(first)) == first
    with pytest.raises(ValueError, match="not a run id"):
        keys.parse_run_id("20241115T142009123Z")
