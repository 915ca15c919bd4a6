"""``totes supersede`` as an operator runs it: markers written with their author, status read."""
from urllib.parse import quote

import pytest
from loadkit import Buckets, dimensions, sale

from totes import load, stage, supersede
from totes_local import cli


@pytest.fixture
def buckets(aws):
    """This test's ingest and processed buckets, with a writer of pipeline objects."""
    return Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])


def totes(*argv: str) -> int:
    return cli.main(["supersede", *argv])


def test_skip_writes_a_marker_signed_by_the_caller_and_says_what_follows(buckets, capsys):
    key = buckets.ingest_run()
    assert totes("skip", "--stage", "transform", "--manifest", key, "--reason", "bad export",
                 "--processed-bucket", buckets.processed) == 0
    out = capsys.readouterr().out
    marker = f"_supersede/skips/transform/0000/{key}"
    assert out.startswith(f"wrote s3://{buckets.processed}/{marker}\n")
    assert "run the audit afterwards" in out
    written = supersede.read_markers(buckets.processed).skip("transform", key)
    assert written.reason == "bad export" and written.created_by.startswith("arn:aws:")


def test_retransform_prints_the_warehouse_statements_to_run(buckets, capsys):
    key = buckets.ingest_run()
    assert totes("retransform", "--from", key, "--reason", "bug 31",
                 "--processed-bucket", buckets.processed) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote s3://{buckets.processed}/_supersede/revisions/0001.json\n")
    assert "\nBEGIN;\nDELETE FROM \"fact_sales_order\" WHERE" in out
    assert "'2024-11-15T13:56:00.000';" in out  # the run started 14:01, less the 5 minutes
    assert "\"manifest_key\" >= '_manifests/2024/11/15/20241115T135600000Z';\nCOMMIT;" in out


def test_a_key_that_is_not_a_manifest_is_one_line_and_status_2(buckets, capsys):
    assert totes("skip", "--stage", "load", "--manifest", "sales_order/x.jsonl", "--reason", "r",
                 "--processed-bucket", buckets.processed) == 2
    err = capsys.readouterr().err
    assert err.startswith("totes supersede: error: manifest 'sales_order/x.jsonl' is not an")
    assert err.count("\n") == 1


def test_status_shows_the_markers_and_the_manifest_each_stage_waits_on(
        buckets, postgres, database, capsys):
    first = buckets.publish({**dimensions(), "fact_sales_order": [sale(1)]})
    second = buckets.ingest_run()
    name = database("status")
    conn = postgres.connect(name)
    try:
        load.load_into(conn, load.LoadSettings.from_environment(), stage.Deadline.unbounded())
    finally:
        conn.close()
    totes("skip", "--stage", "transform", "--manifest", second, "--reason", "bad export",
          "--processed-bucket", buckets.processed)
    capsys.readouterr()
    socket_dir = quote(postgres.socket_dir, safe="")
    dsn = f"postgresql://{postgres.user}@{socket_dir}:{postgres.port}/{name}"
    assert totes("status", "--processed-bucket", buckets.processed, "--ingest-bucket",
                 buckets.ingest, "--dsn-warehouse", dsn) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "markers:"
    assert lines[1] == f"  skip by transform at revision 0: {second}"
    assert lines[2].endswith(": bad export")
    assert lines[3:] == [f"transform: newest manifest done {first}",
                         f"transform: next manifest {second}",
                         f"load: newest manifest loaded {first}; next ready none "
                         "(waiting for transform)"]


def test_status_without_markers_or_options_says_so(buckets, capsys):
    assert totes("status", "--processed-bucket", buckets.processed) == 0
    assert capsys.readouterr().out.splitlines() == [
        "markers:", "  none", "transform: newest manifest done none"]


def test_a_transform_skip_of_a_manifest_already_transformed_is_refused(buckets, capsys):
    done = buckets.publish({})
    assert totes("skip", "--stage", "transform", "--manifest", done, "--reason", "r",
                 "--processed-bucket", buckets.processed) == 2
    assert f"transform is already past {done}" in capsys.readouterr().err
    assert supersede.read_markers(buckets.processed).skips == {}
