"""The lake audit's pure parts: canonical text, hashed rows answering as a database side would."""
from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
from aws_lambda_powertools.metrics import MetricUnit

from totes import audit, audit_lake, audit_sql
from totes.warehouse_schema import CURRENT_VIEWS, TABLES


def texts(values, kind):
    """The canonical texts of one lake column of ``values`` (Arrow type ``kind``), quoted."""
    return audit_lake.row_texts([pa.array(values, kind)])


def test_values_render_as_the_warehouse_renders_them():
    money = pa.decimal128(10, 2)
    assert texts([Decimal("100.00"), Decimal("0.10"), Decimal("-12.50"), Decimal("1.05"),
                  Decimal("0.00"), Decimal("100.10"), None], money) == [
        "'100'", "'0.1'", "'-12.5'", "'1.05'", "'0'", "'100.1'", "NULL"]
    assert texts([date(2024, 1, 2), None], pa.date32()) == ["'2024-01-02'", "NULL"]
    assert texts([True, False, None], pa.bool_()) == ["'true'", "'false'", "NULL"]
    assert texts([7, -42], pa.int32()) == ["'7'", "'-42'"]
    assert texts(["08:56:11.074"], pa.string()) == ["'08:56:11.074'"]


def test_text_is_quoted_as_quote_nullable_quotes_it():
    backslash = "\\"
    assert texts([None, "", "O'Brien", f"a{backslash}b'"], pa.string()) == [
        "NULL", "''", "'O''Brien'", f"E'a{backslash * 2}b'''"]
    assert audit_lake.row_texts([pa.array([1]), pa.array([None], pa.string()),
                                 pa.array(["x"])]) == ["'1',NULL,'x'"]


def test_a_hash_is_a_signed_64_bit_integer():
    for text in ("", "'1'", "NULL,'x'"):
        digest = audit_lake.row_hash(text)
        assert -(1 << 63) <= digest < (1 << 63)
    assert audit_lake.row_hash("a") != audit_lake.row_hash("b")


@pytest.mark.parametrize("name", audit_sql.SEGMENTED)
def test_every_compared_table_is_keyed_as_the_warehouse_side_is(name):
    key = audit_lake.key_column(name)
    assert audit_sql.warehouse_relation(name).key_sql == f'w."{key}"'
    assert key in audit_lake.compared_columns(name)
    lake_name = audit.lake_table_name(name)
    assert lake_name == (f"{name}_current" if name in CURRENT_VIEWS else name)


def hashed(pairs, skip=()):
    """Hashed rows of (key, hash) pairs."""
    return audit_lake.HashedRows([key for key, _ in pairs], [h for _, h in pairs], skip)


def test_hashed_rows_answer_bounds_segments_leaves_and_keys():
    pairs = [(key, key * 1000 - 7) for key in (5, 1, 9, 3, 12, 20)]
    rows = hashed(pairs, skip=[9])
    assert rows.bounds() == (1, 20)
    assert rows.segments(1, 20, 5) == {0: (3, 1000 - 7 + 3000 - 7 + 5000 - 7),
                                       2: (1, 12000 - 7), 3: (1, 20000 - 7)}
    assert rows.hashes(3, 12) == {3: 2993, 5: 4993, 12: 11993}
    assert rows.keys(1, 20, 2) == [1, 3]
    assert rows.keys(13, 19, 5) == []
    assert hashed([]).bounds() == (None, None) and hashed([]).segments(1, 9, 2) == {}


def test_segment_sums_are_exact_where_64_bits_would_overflow():
    big = (1 << 63) - 1
    rows = hashed([(1, big), (2, big), (3, -big - 1), (4, -big - 1), (5, -1)])
    assert rows.segments(1, 5, 2) == {0: (2, 2 * big), 1: (2, 2 * (-big - 1)), 2: (1, -1)}
    assert rows.segments(1, 5, 10) == {0: (5, -3)}


def test_the_comparison_finds_what_differs_between_a_lake_side_and_another():
    ours = hashed([(key, key) for key in range(1, 1001)])
    theirs = hashed([(key, key if key != 500 else -1) for key in range(2, 1003)])
    found = audit.compare(ours, theirs, fanout=4, leaf_rows=8)
    assert (found.missing, found.missing_keys) == (1, [1])
    assert (found.different, found.different_keys) == (1, [500])
    assert sorted(found.extra_keys) == [1001, 1002]


def test_a_lake_audit_reports_its_tables_under_their_lake_names():
    lake = audit.LakeAudit(audit.LAKE_COMPARED, "_manifests/x.json", {
        "fact_payment": audit.TableAudit(source_rows=3, warehouse_rows=2, missing=1),
        "dim_staff": audit.TableAudit(source_rows=1, warehouse_rows=1)})
    summary = lake.to_json()
    assert summary["mismatches"] == 1 and summary["status"] == "compared"
    assert summary["tables"]["fact_payment_current"]["lake_rows"] == 2
    assert "warehouse_rows" not in summary["tables"]["dim_staff"]
    report = audit.AuditReport("now", "_manifests/y.json", {
        "dim_staff": audit.TableAudit()}, lake=lake)
    assert not report.ok and report.mismatches == 1
    (run,) = [metric for metric in report.metrics()
              if metric.name == "AuditMismatches" and metric.table is None]
    assert run.value == 1


def test_without_a_lake_the_report_says_so_and_counts_the_warehouse_alone():
    report = audit.AuditReport("now", None, {"dim_staff": audit.TableAudit()})
    assert report.ok and report.to_json()["lake"] == {
        "status": "not configured", "capture_point": None, "lag_seconds": None,
        "mismatches": 0, "in_flight": 0, "tables": {}}


def test_the_lags_sign_says_which_capture_point_is_older():
    older = "_manifests/2024/11/18/20241118T090000123Z-3f9a1c2e.json"
    newer = "_manifests/2024/11/18/20241118T100500123Z-aa11bb22.json"
    assert audit.lag_seconds(newer, older) == 3900.0
    assert audit.lag_seconds(older, newer) == -3900.0
    assert audit.lag_seconds(None, older) is None


def test_the_lakes_lag_is_a_metric_whenever_its_capture_point_was_read():
    lagging = audit.LakeAudit(audit.LAKE_COMPARED, "_manifests/x.json", lag_seconds=3900.0)
    failed = audit.LakeAudit(audit.LAKE_FAILED, "_manifests/x.json", lag_seconds=120.0)
    for lake, value in ((lagging, 3900.0), (failed, 120.0)):
        report = audit.AuditReport("now", None, {}, lake=lake)
        (lag,) = [metric for metric in report.metrics() if metric.name == "LakeLagSeconds"]
        assert lag.value == value and lag.unit == MetricUnit.Seconds and lag.table is None
    for status in (audit.LAKE_NOT_CONFIGURED, audit.LAKE_NEVER_PUBLISHED):
        report = audit.AuditReport("now", None, {}, lake=audit.LakeAudit(status))
        assert "LakeLagSeconds" not in {metric.name for metric in report.metrics()}


def test_a_lake_never_published_lags_from_the_oldest_manifest_the_warehouse_loaded():
    first = "_manifests/2024/11/18/20241118T090000123Z-3f9a1c2e.json"
    newest = "_manifests/2024/11/18/20241118T100500123Z-aa11bb22.json"
    never = audit.LakeState(audit.LAKE_NEVER_PUBLISHED)
    lake = audit.audit_lake(never, newest, None, None, None, first_loaded_key=first)
    assert lake.status == audit.LAKE_NEVER_PUBLISHED and lake.lag_seconds == 3900.0
    unconfigured = audit.LakeState(audit.LAKE_NOT_CONFIGURED)
    assert audit.audit_lake(unconfigured, newest, None, None, None).lag_seconds is None


def test_the_lake_is_configured_by_its_database(monkeypatch):
    for name, value in {"INGEST_BUCKET": "i", "TOTESYS_SECRET_ID": "t",
                        "WAREHOUSE_SECRET_ID": "w", "PROCESSED_BUCKET": "p",
                        "LAKE_BUCKET": "l"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LAKE_DATABASE", raising=False)
    assert audit.AuditSettings.from_environment().lake is None
    monkeypatch.setenv("LAKE_DATABASE", "db")
    assert audit.AuditSettings.from_environment().lake == audit.LakeSettings("p", "l", "db")
    assert TABLES  # the contract the lake mirrors


def test_batches_are_hashed_chunk_by_chunk_as_they_are_whole(monkeypatch):
    rows = [{"design_id": key, "design_name": f"d{key}", "file_location": "/x",
             "file_name": None if key % 2 else f"{key}.json"} for key in (3, 1, 2, 5, 4)]
    batch = pa.RecordBatch.from_pylist(rows)
    monkeypatch.setattr(audit_lake, "CHUNK_ROWS", 2)
    keys, hashes = audit_lake.hashed_batches([batch, batch.slice(0, 0)], "dim_design")
    columns = audit_lake.compared_columns("dim_design")
    assert keys.tolist() == [3, 1, 2, 5, 4]
    expected = audit_lake.row_texts(pa.array([row[column] for row in rows]) for column in columns)
    assert hashes.tolist() == [audit_lake.row_hash(text) for text in expected]


def test_the_summary_line_names_the_lakes_tables_and_says_when_they_match():
    from totes_local import audit_cli

    clean = audit.AuditReport("now", "_manifests/y.json", {"dim_staff": audit.TableAudit()},
                              lake=audit.LakeAudit(audit.LAKE_COMPARED, "_manifests/y.json", {
                                  "dim_staff": audit.TableAudit()}))
    assert audit_cli.summary_line(clean.to_json()).endswith("; so do the lake's 1 tables")
    unpublished = audit.AuditReport("now", None, {"dim_staff": audit.TableAudit()},
                                    lake=audit.LakeAudit(audit.LAKE_NEVER_PUBLISHED))
    assert "lake" not in audit_cli.summary_line(unpublished.to_json())
    wrong = audit.AuditReport("now", "_manifests/y.json", {"dim_staff": audit.TableAudit()},
                              lake=audit.LakeAudit(audit.LAKE_COMPARED, "_manifests/y.json", {
                                  "fact_payment": audit.TableAudit(extra=1, examples=[9])}))
    assert audit_cli.summary_line(wrong.to_json()) == (
        "audit: 1 MISMATCH(ES) in lake.fact_payment_current (0 missing, 1 extra, 0 different; "
        "e.g. 9)")


class BrokenLake:
    """A lake reader whose catalog cannot be reached."""

    def open(self, store):
        raise ConnectionError("glue unreachable")


def test_a_lake_that_cannot_be_opened_is_failed_not_raised():
    state = audit.open_lake(BrokenLake(), store=None)
    assert state.status == audit.LAKE_FAILED and state.target is None
    assert audit.audit_lake(state, None, None, None, None).status == audit.LAKE_FAILED
    assert audit.open_lake(None, store=None).status == audit.LAKE_NOT_CONFIGURED


def listed(key, size, etag='"0123456789abcdef0123456789abcdef"'):
    """A ``ListObjectsV2`` entry."""
    return {"Key": key, "Size": size, "ETag": etag,
            "LastModified": datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)}


def test_files_as_recorded_and_orphans_beside_them_are_no_finding():
    files = {"t/data/a.parquet": 10, "t/data/b.parquet": 20}
    pages = [[listed("t/data/a.parquet", 10), listed("t/data/orphan.parquet", 5)],
             [listed("t/data/b.parquet", 20)]]
    assert audit_lake.compare_listing("fact_payment", files, pages) == []


def test_a_file_stored_anew_with_its_size_is_no_finding():
    # Athena's OPTIMIZE uploads its files in parts; a restored or copied bucket stores every
    # file again, later than its commit: neither is a replacement.
    files = {"t/data/compacted.parquet": 10, "t/data/restored.parquet": 10}
    pages = [[listed("t/data/compacted.parquet", 10, etag='"0123456789abcdef-2"'),
              {**listed("t/data/restored.parquet", 10),
               "LastModified": datetime(2027, 1, 1, tzinfo=timezone.utc)}]]
    assert audit_lake.compare_listing("fact_payment", files, pages) == []


def test_a_file_missing_or_resized_is_a_finding_naming_it():
    files = {f"t/data/{name}.parquet": 10 for name in ("gone", "resized")}
    pages = [[listed("t/data/resized.parquet", 11)]]
    assert audit_lake.compare_listing("fact_payment", files, pages) == [
        "fact_payment: s3 key t/data/resized.parquet: 11 bytes in the bucket, 10 in its manifest",
        "fact_payment: s3 key t/data/gone.parquet: missing from the bucket (10 bytes in its "
        "manifest)"]
