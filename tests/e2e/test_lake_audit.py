"""The audit covers the lake: the lake's dimensions and current facts against the source.

The same comparison and in-flight rules as the warehouse's, judged against the
lake's own capture point (the newest manifest a publish completed), on a lake the
publish built in moto's Glue and S3, read back with pyiceberg.
"""
import json
from datetime import timedelta

import pyarrow as pa
import pytest
from pyiceberg.expressions import EqualTo

from totes import audit, audit_lake, lake, publish
from totes_local import simulator

pytestmark = pytest.mark.e2e


def run_audit(e2e) -> audit.AuditReport:
    """Audit the warehouse and the lake against the source, as the handler does."""
    source = e2e.source.connect()
    target = e2e.postgres.connect(e2e.warehouse)
    try:
        return audit.audit_databases(
            source, target, audit.BucketStore(e2e.env["INGEST_BUCKET"]),
            lake=audit_lake.IcebergLake(audit.LakeSettings.from_environment()))
    finally:
        source.close()
        target.close()


def lake_mismatches(report: audit.AuditReport) -> dict[str, dict]:
    """Lake tables (lake names) with mismatches, with their counts and examples."""
    return {name: {kind: table[kind] for kind in ("missing", "extra", "different", "examples")}
            for name, table in report.lake.to_json()["tables"].items()
            if table["missing"] or table["extra"] or table["different"]}


def lake_table(e2e, name: str):
    """A lake table, as the publish's Glue catalog opens it."""
    return lake.glue_catalog(e2e.env["LAKE_BUCKET"]).load_table((e2e.env["LAKE_DATABASE"], name))


def change_behind_the_pipelines_back(e2e, name: str, key: str, value: int,
                                     column: str, new: object) -> None:
    """Rewrite one lake row with another value (one Iceberg overwrite), as a stray writer would."""
    table = lake_table(e2e, name)
    rows = table.scan(row_filter=EqualTo(key, value)).to_arrow()
    assert rows.num_rows == 1
    index = rows.schema.get_field_index(column)
    rows = rows.set_column(index, rows.schema.field(index),
                           pa.array([new], rows.schema.field(index).type))
    table.overwrite(rows, overwrite_filter=EqualTo(key, value))


def test_a_published_lake_audits_clean_and_unpublished_changes_are_in_flight(e2e, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    before = run_audit(e2e)
    assert before.ok and before.lake.status == audit.LAKE_NEVER_PUBLISHED
    assert before.lake.tables == {} and before.lake.capture_point is None
    assert before.lake.lag_seconds == 0  # the warehouse holds one manifest, the lake none

    e2e.pipeline.publish()
    report = run_audit(e2e)
    assert report.ok, lake_mismatches(report)
    assert report.lake.status == audit.LAKE_COMPARED
    assert report.lake.capture_point == report.capture_point
    assert set(report.lake.to_json()["tables"]) == {
        audit.lake_table_name(name) for name in audit.audit_sql.SEGMENTED}
    sales = report.lake.tables["fact_sales_order"]
    assert sales.source_rows == sales.warehouse_rows == e2e.source.counts["sales_order"]
    assert report.lake.in_flight == 0

    # Loaded into the warehouse, not yet published: in flight for the lake only.
    source = e2e.source.connect()
    try:
        clock = simulator.latest_change(source) + timedelta(minutes=1)
        first_order = source.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
        simulator.amend_sales_order(source, first_order, clock)
        simulator.change_address(source, 1, clock + timedelta(minutes=1), city="Hull")
        gone = source.run("SELECT max(payment_id) FROM payment")[0][0]
        source.run("DELETE FROM payment WHERE payment_id = :p", p=gone)
    finally:
        source.close()
    e2e.pipeline.cycle()
    report = run_audit(e2e)
    assert report.ok, lake_mismatches(report)
    assert report.in_flight == 0  # the warehouse has it all
    assert report.lake.capture_point < report.capture_point
    assert report.lake.lag_seconds > 0  # behind the warehouse: in flight, not a mismatch
    assert report.lake.tables["fact_sales_order"].in_flight == 1
    assert report.lake.tables["dim_location"].in_flight == 1
    assert report.lake.tables["fact_payment"].in_flight == 1  # its deletion, not yet published
    assert report.lake.tables["fact_payment"].extra == 0

    e2e.pipeline.publish()
    report = run_audit(e2e)
    assert report.ok, lake_mismatches(report)
    assert report.lake.capture_point == report.capture_point and report.lake.in_flight == 0
    assert report.lake.lag_seconds == 0


def test_a_lake_never_published_reports_its_lag_behind_everything_the_warehouse_holds(e2e):
    e2e.pipeline.cycle()
    first = run_audit(e2e).capture_point
    e2e.pipeline.cycle()
    report = run_audit(e2e)

    assert report.lake.status == audit.LAKE_NEVER_PUBLISHED and report.capture_point > first
    assert report.lake.lag_seconds == audit.lag_seconds(report.capture_point, first) > 0
    [lag] = [metric.value for metric in report.metrics() if metric.name == audit.LAKE_LAG_METRIC]
    assert lag == report.lake.lag_seconds


def test_a_lake_changed_behind_the_pipelines_back_is_a_mismatch_under_the_same_alarm(
        e2e, monkeypatch, capsys, captured_logs):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    source = e2e.source.connect()
    try:
        gone = source.run("SELECT max(payment_id) FROM payment")[0][0]
        source.run("DELETE FROM payment WHERE payment_id = :p", p=gone)
    finally:
        source.close()
    e2e.pipeline.publish()  # the payment, published before its deletion is captured
    deleted_row = lake_table(e2e, "fact_payment_current").scan(
        row_filter=EqualTo("payment_id", gone)).to_arrow()
    e2e.pipeline.cycle()  # sweeps: the deletion is captured and loaded
    e2e.pipeline.publish()
    assert run_audit(e2e).ok

    # A dimension value changed, a current fact dropped, a deleted payment current again.
    change_behind_the_pipelines_back(e2e, "dim_design", "design_id", 2, "file_name", "x.json")
    missing = e2e.warehouse_rows("SELECT min(sales_order_id) FROM fact_sales_order")[0][0]
    lake_table(e2e, "fact_sales_order_current").delete(EqualTo("sales_order_id", missing))
    lake_table(e2e, "fact_payment_current").append(deleted_row)

    report = run_audit(e2e)
    assert not report.ok and report.mismatches == 3
    assert all(table.mismatches == 0 for table in report.tables.values())  # the warehouse is fine
    assert lake_mismatches(report) == {
        "dim_design": {"missing": 0, "extra": 0, "different": 1, "examples": [2]},
        "fact_sales_order_current": {"missing": 1, "extra": 0, "different": 0,
                                     "examples": [missing]},
        "fact_payment_current": {"missing": 0, "extra": 1, "different": 0, "examples": [gone]},
    }

    # The handler: the same alarmed metric, the lake's tables named in the warning.
    capsys.readouterr()
    summary = e2e.pipeline.audit()
    assert summary["ok"] is False and summary["mismatches"] == 3
    assert summary["lake"]["status"] == "compared"
    (line,) = [line for line in captured_logs() if line["message"].startswith("audit found")]
    assert line["message"] == ("audit found 3 mismatch(es) in lake.dim_design, "
                               "lake.fact_payment_current, lake.fact_sales_order_current")
    assert "x.json" not in str(line)
    metrics = [json.loads(text) for text in capsys.readouterr().out.splitlines()
               if text.startswith('{"_aws"')]
    (run,) = [metric for metric in metrics if "AuditInFlight" in metric]
    assert run["AuditMismatches"] == [3.0]


def test_a_lake_not_configured_or_unreadable_leaves_the_warehouses_verdict_standing(
        e2e, monkeypatch, captured_logs):
    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    e2e.warehouse_rows("UPDATE dim_design SET file_name = 'x' WHERE design_id = 2")

    monkeypatch.delenv("LAKE_DATABASE")
    summary = e2e.pipeline.audit()
    assert summary["lake"]["status"] == "not configured" and summary["mismatches"] == 1
    assert "the lake was not audited: not configured" in [
        line["message"] for line in captured_logs()]

    monkeypatch.setenv("LAKE_DATABASE", "no_such_database")  # published, but not readable
    summary = e2e.pipeline.audit()
    assert summary["lake"]["status"] == "failed" and summary["mismatches"] == 1
    assert summary["tables"]["dim_design"]["examples"] == [2]
    (error,) = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert error["message"] == audit.LAKE_NOT_COMPARED and "NoSuchTable" in str(error)


def point_glue_back(e2e, name: str) -> str:
    """Point a lake table's Glue entry at its first metadata file by hand (the console's edit)."""
    import boto3

    glue = boto3.client("glue")
    found = glue.get_table(DatabaseName=e2e.env["LAKE_DATABASE"], Name=name)["Table"]
    older = lake_table(e2e, name).metadata.metadata_log[0].metadata_file
    table_input = {key: found[key] for key in ("Name", "TableType", "StorageDescriptor")}
    table_input["Parameters"] = found["Parameters"] | {"metadata_location": older}
    glue.update_table(DatabaseName=e2e.env["LAKE_DATABASE"], TableInput=table_input)
    return older


def amend_first_order(e2e, minutes: int) -> None:
    """Change the first sales order, ``minutes`` after the source's latest change."""
    source = e2e.source.connect()
    try:
        first_order = source.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
        simulator.amend_sales_order(source, first_order,
                                    simulator.latest_change(source) + timedelta(minutes=minutes))
    finally:
        source.close()


def point_glue_at(e2e, name: str, location: str) -> None:
    """Point a lake table's Glue entry at ``location`` (the runbook's repair: the newest file)."""
    import boto3

    glue = boto3.client("glue")
    found = glue.get_table(DatabaseName=e2e.env["LAKE_DATABASE"], Name=name)["Table"]
    table_input = {key: found[key] for key in ("Name", "TableType", "StorageDescriptor")}
    table_input["Parameters"] = found["Parameters"] | {"metadata_location": location}
    glue.update_table(DatabaseName=e2e.env["LAKE_DATABASE"], TableInput=table_input)


def test_a_history_table_pointed_back_fails_the_lake_audit_and_publish_refuses_to_build_on_it(
        e2e, captured_logs):
    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    amend_first_order(e2e, 1)
    e2e.pipeline.cycle()
    assert e2e.pipeline.publish()["manifests_published"] == 1
    newest = lake_table(e2e, "fact_sales_order")
    snapshots = len(newest.metadata.snapshots)
    older = point_glue_back(e2e, "fact_sales_order")  # not compared: only this check sees it

    summary = e2e.pipeline.audit()
    assert summary["lake"]["status"] == "failed"
    (error,) = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert error["message"] == audit.LAKE_NOT_COMPARED
    assert "LakeRolledBackError" in str(error) and older in str(error)

    # A publish on top would number its metadata file past the older one and hide the
    # rollback from that check, with the newest version gone from the history.
    amend_first_order(e2e, 2)
    e2e.pipeline.cycle()
    with pytest.raises(publish.LakeBehindError, match="fact_sales_order"):
        e2e.pipeline.publish()
    assert e2e.pipeline.audit()["lake"]["status"] == "failed"  # the evidence kept
    point_glue_at(e2e, "fact_sales_order", newest.metadata_location)  # the runbook's repair
    assert e2e.pipeline.publish()["manifests_published"] == 1
    assert len(lake_table(e2e, "fact_sales_order").metadata.snapshots) == snapshots + 1
    assert e2e.pipeline.audit()["lake"]["status"] != "failed"


def test_a_history_pointed_at_another_tables_metadata_fails_the_lake_audit(e2e, captured_logs):
    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    amend_first_order(e2e, 1)
    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    current = lake_table(e2e, "fact_sales_order_current").metadata_location
    # the same columns and as many commits: the rollback check cannot tell
    point_glue_at(e2e, "fact_sales_order", current)

    summary = e2e.pipeline.audit()
    assert summary["lake"]["status"] == "failed"
    (error,) = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert error["message"] == audit.LAKE_NOT_COMPARED
    assert "ForeignMetadataError" in str(error) and current in str(error)


def history_file(e2e, name: str = "fact_sales_order") -> tuple[str, str, int]:
    """Bucket, key and recorded size of the first data file a lake table's snapshot lists."""
    (first, *_) = lake_table(e2e, name).scan().plan_files()
    bucket, _, key = first.file.file_path.removeprefix("s3://").partition("/")
    return bucket, key, first.file.file_size_in_bytes


def lake_file_errors(captured_logs) -> list[str]:
    """The ERROR lines logged, as text."""
    return [str(line) for line in captured_logs() if line["level"] == "ERROR"]


def test_a_clean_lake_checks_every_tables_files_and_an_orphan_is_no_finding(e2e, captured_logs):
    import boto3

    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    bucket, key, _ = history_file(e2e)
    # a failed commit's orphan beside the history's files: listed, listed by no snapshot
    boto3.client("s3").put_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/orphan.parquet",
                                  Body=b"PAR1 not committed")
    summary = e2e.pipeline.audit()
    assert summary["ok"] and summary["lake"]["status"] == "compared"
    assert lake_file_errors(captured_logs) == []
    (checked,) = [line["message"] for line in captured_logs()
                  if line["message"].startswith("lake data files as recorded")]
    assert f"of {len(audit_lake.LAKE_TABLES)} tables" in checked and "orphan" not in checked


def test_a_history_data_file_deleted_fails_the_lake_audit_naming_it(e2e, captured_logs):
    import boto3

    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    bucket, key, size = history_file(e2e)
    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.delete_object(Bucket=bucket, Key=key)  # a delete marker, as the deployed bucket keeps

    summary = e2e.pipeline.audit()
    assert summary["lake"]["status"] == "failed"
    (error,) = lake_file_errors(captured_logs)
    assert audit.LAKE_NOT_COMPARED in error and "LakeFileError" in error
    assert f"fact_sales_order: s3 key {key}: missing from the bucket ({size} bytes" in error

    # The runbook's repair: delete the marker by its version id, the original is current again.
    (marker,) = s3.list_object_versions(Bucket=bucket, Prefix=key)["DeleteMarkers"]
    s3.delete_object(Bucket=bucket, Key=key, VersionId=marker["VersionId"])
    assert e2e.pipeline.audit()["lake"]["status"] == "compared"


def test_a_history_data_file_replaced_by_other_rows_fails_the_lake_audit(e2e, captured_logs):
    import io

    import boto3
    import pyarrow.parquet as pq

    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    bucket, key, size = history_file(e2e)
    other = io.BytesIO()  # a valid Parquet file of the history's columns, one row of it only
    pq.write_table(lake_table(e2e, "fact_sales_order").scan(limit=1).to_arrow(), other)
    assert other.tell() != size
    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    replacing = s3.put_object(Bucket=bucket, Key=key, Body=other.getvalue())["VersionId"]

    summary = e2e.pipeline.audit()
    assert summary["lake"]["status"] == "failed"
    (error,) = lake_file_errors(captured_logs)
    assert "LakeFileError" in error
    assert (f"fact_sales_order: s3 key {key}: {other.tell()} bytes in the bucket, {size} in its "
            "manifest") in error

    # The runbook's repair: delete the replacing version, the original is current again.
    s3.delete_object(Bucket=bucket, Key=key, VersionId=replacing)
    assert e2e.pipeline.audit()["lake"]["status"] == "compared"
