"""The lake read by an engine that is not pyiceberg: DuckDB's own Iceberg reader.

Every other lake test reads the tables back through pyiceberg, the library that
wrote them. Here DuckDB's ``iceberg_scan`` (its C++ Iceberg extension, a signed
binary from PyPI loaded by path, never downloaded at run time) reads each table
straight from the metadata file Glue names as current, and the files from the
lake bucket on the moto server through DuckDB's own S3 client (httpfs): the path
Athena, Spark and Trino take, from Glue's ``metadata_location`` to S3, with nothing
of pyiceberg between. The rows must equal the warehouse's, the same manifests
loaded by the load: values and types (dates, ``decimal(10,2)``, the times as the
lake's ``HH:MM:SS.fff`` text, NULLs), after publishes that replace dimension
members, append fact versions, correct one, record deletions (two stamped as their
id's own latest version, which the audit's lake side then hashes as its warehouse
side does), add a column to a table that already holds data files without it,
bring a deleted row back as it was
(its old version ranks latest again, as the warehouse ranks it), and after an operator's revision
(the lake's tables put back in an overwrite, the manifest's new output on top).
"""
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from loadkit import DAY, Buckets, dimensions, gone, payment, purchase, sale

from tests.e2e.lake_kit import compared, warehouse_view
from totes import audit, audit_lake, audit_sql, lake, load, publish, stage, supersede
from totes.lake_schema import LAKE_TABLES, LakeTable, iceberg_schema
from totes.stage import Deadline
from totes_local import supersede_cli

pytestmark = pytest.mark.integration

#: DuckDB's name of each Iceberg type the lake uses.
DUCKDB_TYPES = {"int": "INTEGER", "long": "BIGINT", "string": "VARCHAR", "date": "DATE",
                "decimal(10, 2)": "DECIMAL(10,2)", "boolean": "BOOLEAN"}

#: the column the contract gains between the second and third publishes.
ADDED = ("dim_location", "address_line_2")


def extension(package: str) -> str:
    """The DuckDB extension binary a PyPI package (``duckdb_extension_<name>``) ships."""
    import importlib

    import duckdb

    module = importlib.import_module(f"duckdb_extension_{package}")
    assert module.__file__ is not None
    folder = Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    (binary,) = folder.glob(f"{package}.duckdb_extension")
    return str(binary)


@pytest.fixture
def duckdb_s3(aws) -> Iterator[Any]:
    """A DuckDB connection with the Iceberg, Avro and S3 extensions, S3 being the moto server."""
    import duckdb

    engine = duckdb.connect(config={"autoinstall_known_extensions": False,
                                    "autoload_known_extensions": False})
    for package in ("avro", "httpfs", "iceberg"):
        engine.execute(f"LOAD '{extension(package)}'")
    settings = {"s3_endpoint": aws["AWS_ENDPOINT_URL"].removeprefix("http://"),
                "s3_use_ssl": False, "s3_url_style": "path", "s3_region": aws["AWS_REGION"],
                "s3_access_key_id": aws["AWS_ACCESS_KEY_ID"],
                "s3_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"]}
    for name, value in settings.items():
        engine.execute(f"SET {name} = ?", [value])
    yield engine
    engine.close()


@pytest.fixture
def warehouse_conn(postgres, database):
    """A fresh warehouse, loaded by the load from the same manifests as the lake."""
    connection = postgres.connect(database("load"))
    yield connection
    connection.close()


def dates(*days: date) -> list[dict]:
    """``dim_date`` rows as the transform writes them, for every date the facts use."""
    return [{"date_id": day, "year": day.year, "month": day.month, "day": day.day,
             "day_of_week": day.isoweekday(), "day_name": f"{day:%A}",
             "month_name": f"{day:%B}", "quarter": (day.month - 1) // 3 + 1} for day in days]


def locations(second: str | None) -> list[dict]:
    """Location 1 as loadkit's, and location 2 with ``second`` as its address's second line."""
    first = dimensions()["dim_location"][0]
    return [first, first | {"location_id": 2, "address_line_1": "2 Wharf Street",
                            "address_line_2": second, "district": None}]


def metadata_location(aws, name: str) -> str:
    """The table's current metadata file, as Glue names it to every engine."""
    found = boto3.client("glue").get_table(DatabaseName=aws["LAKE_DATABASE"], Name=name)
    location: str = found["Table"]["Parameters"]["metadata_location"]
    return location


def lake_columns(name: str) -> list[str]:
    """The compared columns (:func:`compared`) the lake's contract has now."""
    return [column for column in compared(name)[0] if column in LAKE_TABLES[name].column_names]


def lake_through_duckdb(engine, aws, name: str) -> tuple[dict[str, str], list[tuple]]:
    """The column types and compared rows DuckDB reads of a table from Glue's metadata file."""
    location = [metadata_location(aws, name)]
    described = engine.execute("DESCRIBE SELECT * FROM iceberg_scan(?)", location).fetchall()
    columns, order = lake_columns(name), compared(name)[1]
    quoted = ", ".join(f'"{column}"' for column in columns)
    rows = engine.execute(f'SELECT {quoted} FROM iceberg_scan(?) ORDER BY "{order}"',
                          location).fetchall()
    return {row[0]: row[1] for row in described}, rows


def typed(rows: list[tuple]) -> list[tuple]:
    """Each value with its Python type, so ``Decimal('1')`` never equals ``1.0`` or ``True``."""
    return [tuple((type(value).__name__, value) for value in row) for row in rows]


def assert_duckdb_reads_the_warehouse(engine, aws, conn) -> None:
    """Every lake table, read by DuckDB, in the lake schema's types, holds the warehouse's rows."""
    warehouse = type("Warehouse", (), {"warehouse_rows": staticmethod(conn.run)})
    for name, spec in LAKE_TABLES.items():
        types, found = lake_through_duckdb(engine, aws, name)
        assert types == {field.name: DUCKDB_TYPES[str(field.field_type)]
                         for field in iceberg_schema(spec).fields}, name
        kept = [compared(name)[0].index(column) for column in lake_columns(name)]
        wanted = [tuple(row[index] for index in kept) for row in warehouse_view(warehouse, name)]
        assert wanted or name.endswith("_current"), (name, "an empty table proves nothing")
        assert typed(found) == typed(wanted), name


def assert_the_audit_hashes_the_lake_as_the_warehouse(aws, conn) -> None:
    """Each compared table's keys and row hashes are the same on the audit's two targets."""
    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    names = {name: audit.lake_table_name(name) for name in audit_sql.SEGMENTED}
    lake_target = audit_lake.LakeTables({
        lake_name: catalog.load_table((aws["LAKE_DATABASE"], lake_name))
        for lake_name in names.values()})
    warehouse_target = audit.WarehouseTarget(conn)
    for name in names:
        lake_side, warehouse_side = lake_target.side(name, []), warehouse_target.side(name, [])
        low, high = warehouse_side.bounds()
        assert lake_side.bounds() == (low, high), name
        if low is not None and high is not None:
            assert lake_side.hashes(low, high) == warehouse_side.hashes(low, high), name


def publish_and_load(aws, conn) -> None:
    """Load every pending manifest into the warehouse and publish it to the lake."""
    report = load.load_into(conn, load.LoadSettings.from_environment(), stage.Deadline(
        lambda: 900.0))
    assert report.manifests_loaded
    settings = publish.PublishSettings(aws["PROCESSED_BUCKET"], aws["LAKE_BUCKET"],
                                       aws["LAKE_DATABASE"])
    assert publish.run_publish(settings, Deadline.unbounded()).manifests_published


def table_files(aws) -> int:
    """How many data files the table that gained :data:`ADDED` reads, checking it has it."""
    table = lake.glue_catalog(aws["LAKE_BUCKET"]).load_table((aws["LAKE_DATABASE"], ADDED[0]))
    assert ADDED[1] in table.schema().column_names
    return len(list(table.scan().plan_files()))


def without_added_column(monkeypatch) -> None:
    """The contract as a release before :data:`ADDED` had it: the lake's table lacks the column."""
    columns = LakeTable.columns

    def older(self: LakeTable) -> tuple:
        return tuple(column for column in columns.fget(self)  # type: ignore[attr-defined]
                     if (self.name, column.name) != ADDED)

    monkeypatch.setattr(LakeTable, "columns", property(older))


def test_duckdb_reads_every_lake_table_as_the_warehouse_holds_it_through_changes_and_a_revision(
        aws, warehouse_conn, duckdb_s3, monkeypatch):
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    # each run starts just after the versions it captures, as ingest's do (a revision's reload
    # removes the warehouse's versions stamped from its manifest's start on: supersede_cli)
    runs = [datetime(2024, 11, 15, hour, minute, tzinfo=timezone.utc)
            for hour, minute in ((10, 5), (11, 35), (12, 5))]
    days = dates(DAY, date(2024, 11, 18), date(2024, 11, 20))
    with monkeypatch.context() as older:
        without_added_column(older)
        buckets.publish({**dimensions(), "dim_location": locations(None), "dim_date": days,
                         "fact_sales_order": [sale(1), sale(2, unit_price=Decimal("0.05"))],
                         "fact_purchase_orders": [purchase(1)],
                         "fact_payment": [payment(1), payment(2, paid=True)]},
                        started_at=runs[0])
        publish_and_load(aws, warehouse_conn)
        assert_duckdb_reads_the_warehouse(duckdb_s3, aws, warehouse_conn)

        # a member renamed, an order amended and one new, a version changed in place, a deletion;
        # and deletions stamped as the id's own latest version (a row written and deleted within
        # one millisecond, as log-based capture stamps them): payment 1's from the first run,
        # payment 3's in this one
        later = time(11, 30, 0, 5000)
        own = [datetime.combine(DAY, stamp, timezone.utc)
               for stamp in (payment(1)["last_updated_time"], later)]
        buckets.publish(
            {**dimensions(first_name="Grace"),
             "fact_sales_order": [sale(1, updated=later, units_sold=99, created_time=time(0, 0)),
                                  sale(3, updated=later, agreed_delivery_date=DAY)],
             "fact_purchase_orders": [purchase(1, item_quantity=4)],
             "fact_payment": [payment(3, updated=later)]},
            deletions={"fact_payment": [
                gone("fact_payment", 2, runs[1] - timedelta(minutes=1)),
                gone("fact_payment", 1, own[0]), gone("fact_payment", 3, own[1])]},
            started_at=runs[1])
        publish_and_load(aws, warehouse_conn)
        assert_duckdb_reads_the_warehouse(duckdb_s3, aws, warehouse_conn)

    # the contract gains the column: location 1 stays in a data file written without it
    deleted = {"fact_sales_order": [gone("fact_sales_order", 3, runs[2] - timedelta(minutes=1))]}
    # and payment 2, deleted, is back as it was (its first version again: it ranks latest)
    back = {"fact_payment": [payment(2, paid=True)]}
    third = buckets.publish({"dim_location": locations("Unit 4")[1:],
                             "fact_sales_order": [sale(2, updated=time(12, 0), units_sold=1)],
                             **back}, deletions=deleted, started_at=runs[2])
    publish_and_load(aws, warehouse_conn)
    assert_duckdb_reads_the_warehouse(duckdb_s3, aws, warehouse_conn)
    # the lake audit sees payments 1 and 3 (deleted as stamped) as the warehouse audit does
    assert_the_audit_hashes_the_lake_as_the_warehouse(aws, warehouse_conn)
    added_in = table_files(aws)

    # an operator's revision from that manifest: each side put back, then its new output on top
    supersede.declare_revision(aws["PROCESSED_BUCKET"], third, "units bug", "arn:ops")
    buckets.transform(third, {"dim_location": locations("Unit 5")[1:],
                              "fact_sales_order": [sale(2, updated=time(12, 0), units_sold=2)],
                              **back}, deletions=deleted, revision=1)
    warehouse_conn.run(" ".join(supersede_cli.reload_sql(third)))
    publish_and_load(aws, warehouse_conn)
    assert_duckdb_reads_the_warehouse(duckdb_s3, aws, warehouse_conn)
    assert table_files(aws) == added_in
    glue = boto3.client("glue").get_table(DatabaseName=aws["LAKE_DATABASE"], Name=ADDED[0])
    assert ADDED[1] in [column["Name"] for column in glue["Table"]["StorageDescriptor"]["Columns"]]


def retransform_as_printed(capsys, aws, conn, start: str) -> str:
    """Declare a revision from ``start`` with ``totes supersede``, run what it prints, return it."""
    from totes_local import cli

    capsys.readouterr()
    assert cli.main(["supersede", "retransform", "--from", start, "--reason", "clock bug",
                     "--processed-bucket", aws["PROCESSED_BUCKET"]]) == 0
    printed = capsys.readouterr().out
    conn.run(printed[printed.index("BEGIN;"):])
    return printed


def test_a_revision_leaves_no_version_of_the_superseded_output_stamped_before_its_manifest(
        aws, warehouse_conn, duckdb_s3, capsys):
    # A transform bug stamped versions an hour early: the manifest's re-read of order 1 (its
    # capture overlaps the run before) and its new order 2 both land before the manifest's
    # start. Fixed, its output no longer holds those versions; both sides must forget them.
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    first_run, bad_run = (datetime(2024, 11, 15, 10, 5, tzinfo=timezone.utc),
                          datetime(2024, 11, 15, 10, 35, tzinfo=timezone.utc))
    buckets.publish({**dimensions(), "dim_date": dates(DAY, date(2024, 11, 18),
                                                       date(2024, 11, 20)),
                     "fact_sales_order": [sale(1, updated=time(10, 0))],
                     "fact_purchase_orders": [purchase(1)],
                     "fact_payment": [payment(1, updated=time(10, 0))]}, started_at=first_run)
    publish_and_load(aws, warehouse_conn)
    bad = buckets.publish({"fact_sales_order": [sale(1, updated=time(9, 0)),
                                                sale(2, updated=time(9, 30), units_sold=3)]},
                          started_at=bad_run)
    publish_and_load(aws, warehouse_conn)
    assert_duckdb_reads_the_warehouse(duckdb_s3, aws, warehouse_conn)

    printed = retransform_as_printed(capsys, aws, warehouse_conn, bad)
    assert "versions stamped from 2024-11-15 09:00:00, before that manifest started" in printed
    assert "'2024-11-15T08:55:00.000';" in printed  # the earliest stamp, less the 5 minutes
    buckets.transform(bad, {"fact_sales_order": [sale(1, updated=time(10, 0)),
                                                 sale(2, updated=time(10, 30), units_sold=3)]},
                      revision=1)
    publish_and_load(aws, warehouse_conn)
    assert_duckdb_reads_the_warehouse(duckdb_s3, aws, warehouse_conn)
    assert warehouse_conn.run(
        'SELECT "sales_order_id", "last_updated_time" FROM "fact_sales_order" '
        'ORDER BY "sales_record_id"') == [[1, time(10, 0)], [2, time(10, 30)]]
