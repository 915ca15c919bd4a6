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
from datetime import date, datetime, timedelta, timezone

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


def changed_lake(aws) -> tuple[dict, str]:
    """Every table after a first publish, a second that changes rows, and a revision of it.

    ``dim_location`` was created by a release without ``address_line_2`` (the publish adds
    it); the second manifest renames a member, corrects an order in place and deletes a
    payment; the revision puts the tables it changed back and publishes new output on top.
    """
    from loadkit import created_without

    from totes import supersede

    created_without(aws, LAKE_TABLES["dim_location"], "address_line_2")
    publish_every_table(aws)
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    second = buckets.publish(
        {**dimensions(first_name="Grace"), "fact_sales_order": [sale(1, units_sold=99)]},
        deletions={"fact_payment": [gone("fact_payment", 1, DETECTED)]},
        started_at=DETECTED + timedelta(minutes=5))  # after publish_every_table's run
    settings = publish.PublishSettings(aws["PROCESSED_BUCKET"], aws["LAKE_BUCKET"],
                                       aws["LAKE_DATABASE"])
    assert publish.run_publish(settings, Deadline.unbounded()).manifests_published
    supersede.declare_revision(aws["PROCESSED_BUCKET"], second, "bug", "arn:ops")
    buckets.transform(second, {**dimensions(first_name="Ada"),
                               "fact_sales_order": [sale(1, units_sold=98)]}, revision=1)
    assert publish.run_publish(settings, Deadline.unbounded()).tables_rewound
    tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"]).tables
    return tables, second


def assert_only_data_files(name: str, table) -> None:
    """No delete file in any snapshot kept: Athena reads position deletes but no equality ones.

    Rows are removed copy-on-write (their files rewritten without them), which every
    reader reads, and which Athena's own ``OPTIMIZE`` and ``VACUUM`` keep as they are.
    """
    from pyiceberg.manifest import DataFileContent, ManifestContent

    for snapshot in table.snapshots():
        for manifest in snapshot.manifests(table.io):
            assert manifest.content == ManifestContent.DATA, name
            for entry in manifest.fetch_manifest_entry(table.io):
                assert entry.data_file.content == DataFileContent.DATA, name


def assert_time_travel_sees_only_commits(name: str, table) -> None:
    """Every snapshot in the log, which ``FOR TIMESTAMP AS OF`` reads, ends a publish's commit.

    One snapshot per commit, so no moment shows a state between a commit's removal and
    its append (a changed member missing, a table empty during a rewind).
    """
    from totes.lake import MANIFEST_PROPERTY, PROCESSED_PROPERTY, REWOUND_BY_PROPERTY

    logged = [table.snapshot_by_id(entry.snapshot_id) for entry in table.metadata.snapshot_log]
    commits = [tuple(lake.summary_value(snapshot, prop) for prop in (
        MANIFEST_PROPERTY, PROCESSED_PROPERTY, REWOUND_BY_PROPERTY)) for snapshot in logged]
    assert len(commits) == len(set(commits)), (name, commits)


def test_after_changes_a_new_column_and_a_revision_readers_still_find_what_they_require(aws):
    tables, _ = changed_lake(aws)
    glue = boto3.client("glue")
    rewritten = 0
    for name, table in tables.items():
        found = glue.get_table(DatabaseName=aws["LAKE_DATABASE"], Name=name)["Table"]
        assert_glue_marks_it_iceberg_at_its_metadata_file(name, table, found)
        assert_names_lower_case(name, table, found)
        assert_glue_columns_in_athena_types(name, table, found)
        assert_field_ids_in_every_data_file(name, table)
        assert_types_readers_read(name, table)
        assert_only_data_files(name, table)
        assert_time_travel_sees_only_commits(name, table)
        rewritten += len(table.metadata.snapshot_log) > 1
    assert rewritten >= 4  # staff, both sales tables and payments were changed
    location = [column["Name"] for column in glue.get_table(
        DatabaseName=aws["LAKE_DATABASE"], Name="dim_location")["Table"]["StorageDescriptor"][
        "Columns"]]
    assert "address_line_2" in location
