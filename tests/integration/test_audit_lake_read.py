"""The lake audit reads a lake table file by file, batch by batch, exactly the rows pyiceberg reads.

pyiceberg's own batch reader decodes every data file of a scan at once; the audit
reads the planned files itself so its memory is bounded by a batch. Against moto's
Glue and S3, with tables written by pyiceberg as publish writes them.
"""
from types import SimpleNamespace

import pyarrow as pa
import pytest

from loadkit import arrow_table, created_without, payment

from totes import audit_lake, lake, lake_schema
from totes.lake_schema import LAKE_TABLES

pytestmark = pytest.mark.integration


def currencies(first: int, count: int, schema: pa.Schema) -> pa.Table:
    """``count`` currencies from id ``first``, their names with a quote and a backslash."""
    ids = range(first, first + count)
    return pa.table({"currency_id": list(ids), "currency_code": [f"C{i:02}" for i in ids],
                     "currency_name": [f"it's {i}\\" for i in ids]}, schema=schema)


def test_a_table_of_several_files_is_read_in_bounded_batches_as_pyiceberg_reads_it(
        aws, monkeypatch):
    table = lake.open_table(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"],
                            LAKE_TABLES["dim_currency"])
    schema = table.schema().as_arrow()
    for first in (1, 21, 41):  # three commits: three data files
        table.append(currencies(first, 20, schema))
    table.delete("currency_id < 5")  # rewritten without them, as publish deletes
    table.refresh()
    monkeypatch.setattr(audit_lake, "CHUNK_ROWS", 7)
    columns = list(dict.fromkeys([audit_lake.key_column("dim_currency"),
                                  *audit_lake.compared_columns("dim_currency")]))

    batches = list(audit_lake.lake_batches(table, LAKE_TABLES["dim_currency"], columns))

    assert len(list(table.scan().plan_files())) == 3
    assert max(batch.num_rows for batch in batches) <= 7
    assert sum(batch.num_rows for batch in batches) == 56
    keys, hashes = audit_lake.hashed_batches(batches, "dim_currency")
    expected = table.scan(selected_fields=tuple(columns)).to_arrow()
    their_keys, their_hashes = audit_lake.hashed_batches(expected.to_batches(), "dim_currency")
    assert sorted(zip(keys.tolist(), hashes.tolist())) == sorted(
        zip(their_keys.tolist(), their_hashes.tolist()))
    side = audit_lake.LakeTables({"dim_currency": table}).side("dim_currency", skip=[10])
    assert side.bounds() == (5, 60) and side.rows_fetched == 56
    assert 10 not in side.keys(5, 60, limit=100)


def columns_of(name: str) -> list[str]:
    """The columns the lake audit reads for warehouse table ``name``, key first."""
    return list(dict.fromkeys([audit_lake.key_column(name), *audit_lake.compared_columns(name)]))


def reopened(aws, spec: lake_schema.LakeTable):
    """``spec``'s lake table opened by this release, which adds the contract's new columns."""
    return lake.open_table(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"], spec)


LEEDS = {"location_id": 1, "address_line_1": "1 Canal Street", "district": "", "city": "Leeds",
         "postal_code": "LS1 4AP", "country": "United Kingdom", "phone": "0113 496 0000"}


def test_a_file_written_before_a_column_was_added_reads_it_null_as_pyiceberg_does(aws):
    spec = LAKE_TABLES["dim_location"]
    older = created_without(aws, spec, "address_line_2")
    older.append(pa.Table.from_pylist([LEEDS], schema=older.schema().as_arrow()))
    table = reopened(aws, spec)
    newer = {**LEEDS, "location_id": 2, "address_line_2": "Floor 2"}
    table.append(pa.Table.from_pylist([newer], schema=table.schema().as_arrow()))
    table.refresh()
    columns = columns_of("dim_location")

    batches = list(audit_lake.lake_batches(table, spec, columns))

    read = pa.Table.from_batches(batches).sort_by("location_id")
    assert read["address_line_2"].to_pylist() == [None, "Floor 2"]
    keys, hashes = audit_lake.hashed_batches(batches, "dim_location")
    expected = table.scan(selected_fields=tuple(columns)).to_arrow()
    their_keys, their_hashes = audit_lake.hashed_batches(expected.to_batches(), "dim_location")
    assert sorted(zip(keys.tolist(), hashes.tolist())) == sorted(
        zip(their_keys.tolist(), their_hashes.tolist()))
    side = audit_lake.LakeTables({"dim_location": table}).side("dim_location", skip=[])
    assert side.rows_fetched == 2


def test_a_not_null_column_added_with_a_default_reads_its_default_in_older_files(aws):
    spec = LAKE_TABLES["fact_payment_current"]
    older = created_without(aws, spec, "is_deleted")
    rows = lake_schema.to_lake(spec, arrow_table("fact_payment", [payment(1)])
                               .append_column("payment_record_id", pa.array([1], pa.int64()))
                               .append_column("manifest_key", pa.array(["a manifest"])))
    older.append(rows.drop_columns(["is_deleted"]))
    table = reopened(aws, spec)

    batches = list(audit_lake.lake_batches(table, spec, columns_of("fact_payment")))

    assert pa.Table.from_batches(batches)["is_deleted"].to_pylist() == [False]
    side = audit_lake.LakeTables({"fact_payment_current": table}).side("fact_payment", skip=[])
    assert side.rows_fetched == 1


def test_a_data_file_with_delete_files_is_refused_not_misread():
    task = SimpleNamespace(delete_files={"a positional delete file"},
                           file=SimpleNamespace(file_path="s3://lake/x.parquet",
                                                file_format="PARQUET"))
    table = SimpleNamespace(scan=lambda **_: SimpleNamespace(plan_files=lambda: [task]))
    with pytest.raises(audit_lake.LakeReadError, match="another writer"):
        list(audit_lake.lake_batches(table, LAKE_TABLES["dim_currency"], ["currency_id"]))


def test_a_data_file_deleted_from_the_lake_bucket_fails_the_read_not_a_table_read_short(aws):
    import boto3
    from botocore.exceptions import ClientError

    table = lake.open_table(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"],
                            LAKE_TABLES["dim_currency"])
    table.append(currencies(1, 3, table.schema().as_arrow()))
    (task,) = table.scan().plan_files()
    bucket, _, key = task.file.file_path.removeprefix("s3://").partition("/")
    boto3.client("s3").delete_object(Bucket=bucket, Key=key)  # a delete marker, as S3 keeps it
    with pytest.raises(ClientError, match="NoSuchKey"):  # the lake audit fails, logged at ERROR
        list(audit_lake.lake_batches(table, LAKE_TABLES["dim_currency"], ["currency_id"]))


def test_the_files_check_lists_the_data_prefix_page_by_page_and_ignores_older_snapshots(
        aws, monkeypatch):
    import boto3

    table = lake.open_table(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"],
                            LAKE_TABLES["dim_currency"])
    schema = table.schema().as_arrow()
    for first in (1, 4, 7):
        table.append(currencies(first, 3, schema))
    table.overwrite(currencies(1, 2, schema))  # the three files of older snapshots only now
    monkeypatch.setattr(audit_lake, "LIST_PAGE_SIZE", 1)
    check = audit_lake.check_data_files({"dim_currency": table})
    assert (check.tables, check.files, check.objects_listed) == (1, 1, 4)
    assert check.list_requests == 4  # a page an object: paginated, never a request per file

    (task,) = table.scan().plan_files()
    bucket, _, key = task.file.file_path.removeprefix("s3://").partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body + b"\0")
    with pytest.raises(audit_lake.LakeFileError, match=(
            f"dim_currency: s3 key {key}: {len(body) + 1} bytes in the bucket, {len(body)} in "
            "its manifest")):
        audit_lake.check_data_files({"dim_currency": table})


def test_the_local_lake_has_the_deployed_layout_the_audit_role_may_list(aws):
    """Tables at ``<bucket>/<table>``, as the template's database location puts them."""
    from pathlib import Path

    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(Path(__file__).resolve().parents[2] / "template.yaml"))
    database = template["Resources"]["LakeDatabase"]["Properties"]["DatabaseInput"]
    assert database["LocationUri"] == {"Fn::Sub": "s3://${LakeBucket}/"}
    table = lake.open_table(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"],
                            LAKE_TABLES["dim_currency"])
    assert table.location() == f"s3://{aws['LAKE_BUCKET']}/dim_currency"
    assert table.location_provider().data_path == f"s3://{aws['LAKE_BUCKET']}/dim_currency/data"
