"""What Athena, Spark and Trino require of the lake's tables and files, on what publish wrote.

None of those engines runs here (no runtime is reachable offline; DuckDB's own
Iceberg reader does, in test_lake_duckdb.py), so each property
those engines document is checked on the files themselves, with pyarrow and
pyiceberg, after one publish of every table: Parquet only, Iceberg v2, Glue's
``table_type``/``metadata_location``, lower-case names, Glue columns in Athena's
types, Iceberg field ids in every data file, only types Athena and Spark read (no
nanosecond or unsigned integers, no Arrow dictionaries, decimals as the schema
says), and one data file per table per commit (the small-files guidance: a commit
never splits its rows into several).
"""
import io
from datetime import date, datetime, timezone

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from loadkit import Buckets, dimensions, gone, payment, purchase, sale

from totes import lake, publish, storage
from totes.lake_schema import LAKE_TABLES
from totes.stage import Deadline

DAY = date(2024, 11, 15)
DETECTED = datetime(2024, 11, 15, 15, 0, tzinfo=timezone.utc)


def publish_every_table(aws) -> dict:
    """Every lake table after one publish of a manifest that changes them all."""
    rows = dimensions()
    rows["dim_date"] = [{"date_id": DAY, "year": 2024, "month": 11, "day": 15, "day_of_week": 5,
                         "day_name": "Friday", "month_name": "November", "quarter": 4}]
    rows |= {"fact_sales_order": [sale(1), sale(2)], "fact_purchase_orders": [purchase(1)],
             "fact_payment": [payment(1), payment(2)]}
    Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"]).publish(
        rows, deletions={"fact_payment": [gone("fact_payment", 2, DETECTED)]})
    settings = publish.PublishSettings(aws["PROCESSED_BUCKET"], aws["LAKE_BUCKET"],
                                       aws["LAKE_DATABASE"])
    assert publish.run_publish(settings, Deadline.unbounded()).manifests_published
    tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"]).tables
    assert set(tables) == set(LAKE_TABLES)
    return tables


def data_files(table) -> list[pq.ParquetFile]:
    """Every data file of the table's current snapshot, read from the lake bucket."""
    files = []
    for task in table.scan().plan_files():
        bucket, _, key = task.file.file_path.removeprefix("s3://").partition("/")
        files.append(pq.ParquetFile(io.BytesIO(storage.read_bytes(bucket, key))))
    assert files, table.name()
    return files


def assert_iceberg_v2_writing_parquet(name: str, table) -> None:
    """Athena operates on v2 tables only, and reads (engine 2) and writes Parquet only."""
    assert table.metadata.format_version == 2, name
    assert table.properties["write.format.default"] == "parquet", name
    assert {task.file.file_format.value for task in table.scan().plan_files()} == {
        "PARQUET"}, name


def assert_glue_marks_it_iceberg_at_its_metadata_file(name: str, table, found: dict) -> None:
    """Athena finds an Iceberg table by Glue's ``table_type`` and reads ``metadata_location``."""
    assert found["Parameters"]["table_type"] == "ICEBERG", name
    assert found["Parameters"]["metadata_location"] == table.metadata_location, name


def assert_names_lower_case(name: str, table, found: dict) -> None:
    """Glue and Athena keep names lower-case: a capital would not match the Iceberg schema."""
    assert name == name.lower()
    columns = [field.name for field in table.schema().fields]
    assert columns == [column.lower() for column in columns], name
    assert [column["Name"] for column in found["StorageDescriptor"]["Columns"]] == columns, name


#: Athena's DDL names of the types the lake's columns have (its data types page).
ATHENA_TYPES = {"int", "bigint", "string", "date", "decimal(10,2)", "boolean"}


def assert_glue_columns_in_athena_types(name: str, table, found: dict) -> None:
    """Glue lists each column with a type Athena names, and the column's Iceberg field id."""
    ids = {field.name: field.field_id for field in table.schema().fields}
    for column in found["StorageDescriptor"]["Columns"]:
        assert column["Type"] in ATHENA_TYPES, (name, column)
        assert int(column["Parameters"]["iceberg.field.id"]) == ids[column["Name"]], name


def assert_field_ids_in_every_data_file(name: str, table) -> None:
    """Spark's and Trino's Iceberg readers match Parquet columns by field id, not by name."""
    expected = {field.name: field.field_id for field in table.schema().fields}
    for parquet in data_files(table):
        ids = {field.name: int(field.metadata[b"PARQUET:field_id"])
               for field in parquet.schema_arrow}
        assert ids == expected, name


def assert_types_readers_read(name: str, table) -> None:
    """Each column as the Iceberg schema's own Arrow type: no unsigned integer, no dictionary.

    Equal to the schema's type, a timestamp would be in microseconds with the schema's
    time zone flag (Athena and Spark refuse nanoseconds); decimals keep (10, 2).
    """
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    wanted = schema_to_pyarrow(table.schema(), include_field_ids=False)
    for parquet in data_files(table):
        for field in parquet.schema_arrow:
            kind, expected = field.type, wanted.field(field.name).type
            assert not pa.types.is_dictionary(kind), (name, field.name)
            assert not pa.types.is_unsigned_integer(kind), (name, field.name)
            assert kind == expected or (pa.types.is_large_string(kind)
                                        and pa.types.is_string(expected)), (name, field.name)
            if pa.types.is_decimal(kind):
                assert (kind.precision, kind.scale) == (10, 2), (name, field.name)


def assert_one_data_file_per_commit(name: str, table) -> None:
    """A commit never splits its rows into several files (Athena's small-files guidance)."""
    assert int(table.current_snapshot().summary["added-data-files"]) == 1, name
    assert len(list(table.scan().plan_files())) == 1, name


def test_every_lake_table_and_data_file_is_as_athena_spark_and_trino_require(aws):
    glue = boto3.client("glue")
    for name, table in publish_every_table(aws).items():
        found = glue.get_table(DatabaseName=aws["LAKE_DATABASE"], Name=name)["Table"]
        assert_iceberg_v2_writing_parquet(name, table)
        assert_glue_marks_it_iceberg_at_its_metadata_file(name, table, found)
        assert_names_lower_case(name, table, found)
        assert_glue_columns_in_athena_types(name, table, found)
        assert_field_ids_in_every_data_file(name, table)
        assert_types_readers_read(name, table)
        assert_one_data_file_per_commit(name, table)
