"""Load under an operator's markers, against real PostgreSQL: skips recorded, revisions guarded."""
from datetime import time

import pytest
from botocore.exceptions import ClientError
from loadkit import Buckets, dimensions, payment, sale

from totes import load, stage, storage, supersede
from totes.observability import metrics_for
from totes_local import supersede_cli

SKIP_REASON = "processed manifest truncated, ticket 40"


@pytest.fixture
def conn(postgres, database):
    """A connection to a fresh, empty warehouse."""
    connection = postgres.connect(database("supersede"))
    yield connection
    connection.close()


@pytest.fixture
def buckets(aws):
    """Writes test inputs into this test's ingest and processed buckets."""
    return Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])


@pytest.fixture(autouse=True)
def metrics():
    """The run-level metrics object, emptied after each test."""
    run_metrics = metrics_for()
    yield run_metrics
    run_metrics.clear_metrics()


def run(conn) -> load.LoadReport:
    return load.load_into(conn, load.LoadSettings.from_environment(), stage.Deadline.unbounded())


def recorded(conn) -> list[list]:
    return conn.run('SELECT "manifest_key", "processed_key", "skipped_by", "rows_loaded" '
                    'FROM "etl"."loaded_manifest" ORDER BY 1')


def test_a_corrupt_manifest_stops_the_load_until_a_skip_records_it_as_loaded_with_nothing(
        conn, buckets, captured_logs):
    first = buckets.publish({**dimensions(), "fact_sales_order": [sale(1)]})
    broken = buckets.ingest_run()
    storage.put_new_json(buckets.processed, broken, {"format": "totes.processed/2"})
    third = buckets.publish({"fact_payment": [payment(3)]})
    with pytest.raises(load.LoadError, match=f"manifest {broken} cannot be read"):
        run(conn)
    failed = next(line for line in captured_logs() if line["message"] == "load failed")
    assert failed["release"] == supersede.release_command("load", broken, buckets.processed)

    skip = supersede.write_skip(buckets.processed, "load", broken, SKIP_REASON, "arn:ops")
    report = run(conn)
    assert report.manifests_loaded == [third] and report.manifests_skipped == [broken]
    assert report.as_dict()["manifests_skipped"] == [broken]
    assert ("ManifestsSkipped", 1) in [(m.name, m.value) for m in report.metrics()]
    assert recorded(conn)[1] == [broken, None, skip.key, 0]
    assert recorded(conn)[0][0] == first
    assert conn.run('SELECT count(*) FROM "fact_payment"') == [[1]]


def test_a_stuck_load_reports_the_manifest_and_a_passing_fault_does_not(
        conn, buckets, monkeypatch):
    broken = buckets.ingest_run()
    storage.put_new_json(buckets.processed, broken, {"format": "totes.processed/2"})
    report = load.LoadReport(last_loaded_manifest=None)
    with pytest.raises(load.LoadError):
        load._load_pending(conn, load.LoadSettings.from_environment(), report,
                           stage.Deadline.unbounded())
    assert report.stuck == broken
    assert ("LoadStuck", 1) in [(m.name, m.value) for m in report.metrics()]

    def slow_down(bucket, key):
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "GetObject")

    monkeypatch.setattr(storage, "read_json", slow_down)
    report = load.LoadReport(last_loaded_manifest=None)
    with pytest.raises(load.LoadError):
        load._load_pending(conn, load.LoadSettings.from_environment(), report,
                           stage.Deadline.unbounded())
    assert report.stuck is None
    assert "LoadStuck" not in [m.name for m in report.metrics()]


def fact_versions(conn) -> list[list]:
    return conn.run('SELECT "sales_order_id", "units_sold" FROM "fact_sales_order" ORDER BY 1, 2')


def test_transforming_again_is_refused_until_the_warehouse_forgets_the_old_output(
        conn, buckets):
    first = buckets.publish({**dimensions(), "fact_sales_order": [sale(1)]})
    second = buckets.publish({"fact_sales_order": [sale(2, updated=time(14, 1, 30))]})
    third = buckets.publish({"fact_sales_order": [sale(3, updated=time(14, 2, 30))]})
    run(conn)
    assert fact_versions(conn) == [[1, 10], [2, 10], [3, 10]]

    revision = supersede.declare_revision(buckets.processed, second, "units bug", "arn:ops")
    for key, order, at in ((second, 2, time(14, 1, 30)), (third, 3, time(14, 2, 30))):
        buckets.transform(key, {"fact_sales_order": [sale(order, updated=at, units_sold=7)]},
                          revision=1)
    with pytest.raises(load.SupersededLoadError, match=rf"2 loaded manifest\(s\) from {second}"):
        run(conn)
    assert fact_versions(conn) == [[1, 10], [2, 10], [3, 10]]

    conn.run(" ".join(supersede_cli.reload_sql(revision.from_manifest)))
    report = run(conn)
    assert report.manifests_loaded == [first, second, third]
    assert fact_versions(conn) == [[1, 10], [2, 7], [3, 7]]
    assert [row[1] for row in recorded(conn)] == [
        None, f"_revisions/0001/{second}", f"_revisions/0001/{third}"]
    assert run(conn).manifests_loaded == []
