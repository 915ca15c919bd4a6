"""The per-run row budget: a backfill drains over several runs, every version written once."""
from collections import Counter
from datetime import timedelta

import pytest

from totes import ingest, storage
from totes.source import SOURCE_TABLES

from test_ingest import T0, insert, latest_manifest, seed_one_of_each, table_rows


def designs(conn, count, last_updated=None):
    """Add designs 2..count+1, one millisecond apart unless they all share ``last_updated``."""
    for design_id in range(2, count + 2):
        at = last_updated or T0 + timedelta(milliseconds=design_id)
        insert(conn, "design", design_id=design_id, design_name=f"d{design_id}",
               file_location="/d", file_name="f", created_at=T0, last_updated=at)


def drain(monkeypatch, budget, runs=50):
    """Run ingest with ``budget`` until a run reports complete; return every run's result."""
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", str(budget))
    results = [ingest.run_ingest()]
    while not results[-1].complete:
        assert len(results) < runs, "the backfill does not drain"
        results.append(ingest.run_ingest())
    return results


def written_versions(bucket, table):
    """Count every (id, last_updated) written for ``table`` across all committed manifests."""
    written = Counter()
    for key in storage.manifest_keys_after(bucket, None):
        manifest = storage.read_json(bucket, key)
        written.update((row[SOURCE_TABLES[table]], row["last_updated"])
                       for row in table_rows(bucket, manifest, table))
    return written


def source_versions(conn, table):
    """Every (id, last_updated) in the source, rendered as the manifests render it."""
    key = SOURCE_TABLES[table]
    return Counter((row_id, at.isoformat(timespec="milliseconds")) for row_id, at in conn.run(
        f'SELECT "{key}", last_updated FROM "{table}"'))  # nosec B608: allow-listed names


def assert_every_version_exactly_once(conn, bucket, superseded=None):
    """No loss and no duplicate, table by table: the source's versions plus ``superseded`` ones."""
    superseded = superseded or {}
    for table in SOURCE_TABLES:
        expected = source_versions(conn, table) + Counter(superseded.get(table, ()))
        assert written_versions(bucket, table) == expected, table


def test_a_cut_inside_a_table_writes_a_prefix_and_leaves_later_tables_untouched(
        source_db, aws, monkeypatch, captured_logs):
    seed_one_of_each(source_db)
    designs(source_db, 9)
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "7")  # address, currency, department, 4 designs

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert result.total_rows == 7 and not result.complete and manifest["complete"] is False
    design = manifest["tables"]["design"]
    assert (design["rows"], design["truncated"]) == (4, True)
    assert design["cursor"]["resume_after"] == 4
    assert design["cursor"]["resume_since"] == manifest["snapshot"]
    assert [row["design_id"] for row in
            table_rows(aws["INGEST_BUCKET"], manifest, "design")] == [1, 2, 3, 4]
    for table in list(SOURCE_TABLES)[4:]:
        entry = manifest["tables"][table]
        assert (entry["rows"], entry["files"], entry["truncated"]) == (0, [], True)
        assert set(entry["cursor"].values()) == {None}
    for table in ("address", "currency", "department"):
        assert manifest["tables"][table]["truncated"] is False
    [line] = [line for line in captured_logs() if line["message"].startswith("row budget")]
    assert line["message"] == ("row budget reached; the next run continues from design at "
                               "the row after key 4")
    assert line["tables_waiting"] == list(SOURCE_TABLES)[3:] and line["max_rows_per_run"] == 7


def test_the_next_run_continues_where_the_cut_stopped(source_db, aws, monkeypatch):
    seed_one_of_each(source_db)
    designs(source_db, 9)
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "7")
    ingest.run_ingest()
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "1000")

    result = ingest.run_ingest()

    assert result.complete and result.rows["design"] == 6
    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert [row["design_id"] for row in
            table_rows(aws["INGEST_BUCKET"], manifest, "design")] == list(range(5, 11))
    assert_every_version_exactly_once(source_db, aws["INGEST_BUCKET"])


def test_a_budget_spent_at_a_table_end_cuts_before_the_next_table_with_rows(
        source_db, aws, monkeypatch, captured_logs):
    seed_one_of_each(source_db)
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "4")

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert [table for table, rows in result.rows.items() if rows] == list(SOURCE_TABLES)[:4]
    assert manifest["tables"]["design"]["truncated"] is False
    payment_type = manifest["tables"]["payment_type"]
    assert (payment_type["rows"], payment_type["truncated"]) == (0, True)
    assert set(payment_type["cursor"].values()) == {None}
    assert any(line["message"] == "row budget reached; the next run continues from "
               "payment_type at its first row" for line in captured_logs())


@pytest.mark.parametrize("budget", [11, 12, 1_000_000], ids=["exact", "one-spare", "default"])
def test_a_budget_that_covers_the_data_completes_in_one_run(source_db, aws, monkeypatch, budget):
    seed_one_of_each(source_db)
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", str(budget))

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert result.complete and manifest["complete"] is True and result.total_rows == 11
    assert not any(entry["truncated"] for entry in manifest["tables"].values())


@pytest.mark.parametrize("budget", [1, 3, 5])
def test_ties_on_last_updated_across_a_cut_are_neither_lost_nor_duplicated(
        source_db, aws, monkeypatch, budget):
    seed_one_of_each(source_db)
    designs(source_db, 12, last_updated=T0 + timedelta(minutes=1))

    results = drain(monkeypatch, budget)

    assert sum(result.total_rows for result in results) == 11 + 12
    assert all(result.total_rows == budget for result in results[:-1])
    assert_every_version_exactly_once(source_db, aws["INGEST_BUCKET"])


def test_changes_during_a_backfill_all_arrive(source_db, aws, monkeypatch):
    seed_one_of_each(source_db)
    designs(source_db, 20)
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "6")
    ingest.run_ingest()
    ingest.run_ingest()
    # Business goes on mid-backfill: a row stamped behind the rows written, tied with a design
    # already written, and updates to rows of a finished and of an unfinished table.
    insert(source_db, "design", design_id=99, design_name="late", file_location="/d",
           file_name="f", created_at=T0, last_updated=T0 + timedelta(milliseconds=5))
    source_db.run("UPDATE design SET design_name = 'renamed', last_updated = :at "
                  "WHERE design_id = 2", at=T0 + timedelta(minutes=5))
    source_db.run("UPDATE address SET city = 'York', last_updated = :at", at=T0 + timedelta(
        minutes=2))

    drain(monkeypatch, 6)
    assert ingest.run_ingest().total_rows == 0

    # Every version arrives; a row changed while its pass was cut may be read twice (the
    # finished pass falls back to the older snapshot), which downstream deduplicates.
    superseded = {"address": [(1, "2024-11-15T14:00:00.120")],
                  "design": [(2, "2024-11-15T14:00:00.122")]}
    for table in SOURCE_TABLES:
        expected = source_versions(source_db, table) + Counter(superseded.get(table, ()))
        written = written_versions(aws["INGEST_BUCKET"], table)
        assert set(written) == set(expected), table
        assert all(written[version] <= 2 for version in written), table


@pytest.mark.parametrize("chunk_rows, budget", [(2, 5), (3, 7), (4, 8)])
def test_a_backfill_read_two_chunks_at_a_time_writes_every_version_once(
        source_db, aws, monkeypatch, chunk_rows, budget):
    monkeypatch.setenv("CHUNK_ROWS", str(chunk_rows))
    seed_one_of_each(source_db)
    designs(source_db, 20)

    results = drain(monkeypatch, budget)

    assert len(results) > 2
    assert_every_version_exactly_once(source_db, aws["INGEST_BUCKET"])
    for key in storage.manifest_keys_after(aws["INGEST_BUCKET"], None):
        files = storage.read_json(aws["INGEST_BUCKET"], key)["tables"]["design"]["files"]
        assert all(file["rows"] <= chunk_rows for file in files)
