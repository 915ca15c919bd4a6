"""The publish stage's edges against moto's Glue and S3: skips, conflicts, expiry, rewinds."""
import re
from datetime import datetime, time, timedelta, timezone
from types import SimpleNamespace

import boto3
import pyarrow as pa
import pytest
from loadkit import (Buckets, arrow_table, created_without, dimensions, gone, parquet_bytes,
                     payment)

from totes import errors, keys, lake, lake_io, lake_schema, publish, storage, supersede
from totes.config import ConfigurationError
from totes.lake_schema import LAKE_TABLES
from totes.manifest import ManifestError, ProcessedManifest
from totes.stage import Deadline
from totes.supersede import Markers, Revision
from totes.warehouse_schema import DELETIONS, arrow_schema
from totes_local import stack

FIRST = "_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json"
SECOND = "_manifests/2024/11/15/20241115T143009123Z-4f9a1c2e.json"


def settings(aws) -> publish.PublishSettings:
    return publish.PublishSettings(aws["PROCESSED_BUCKET"], aws["LAKE_BUCKET"],
                                   aws["LAKE_DATABASE"])


def empty_manifest(key: str, follows: str | None = None, revision: int | None = None) -> None:
    """A processed manifest of a run that changed nothing (transformed after ``follows``).

    ``revision`` None: as written before the revision and what it follows were recorded.
    """
    run = str(keys.parse_manifest_key(key))
    document = ProcessedManifest(run_id=run, ingest_manifest=key, ingest_started_at=None,
                                 transformed_at="2024-11-15T14:20:09.123Z", tables={},
                                 follows=follows, revision=revision)
    storage.put_new_json(settings_bucket(), key, document.to_json())


def settings_bucket() -> str:
    import os

    return os.environ["PROCESSED_BUCKET"]


def currency_table(aws):
    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    return lake.open_table(catalog, aws["LAKE_DATABASE"], LAKE_TABLES["dim_currency"])


def currencies(*names: str) -> pa.Table:
    return pa.table({"currency_id": pa.array(range(1, len(names) + 1), pa.int32()),
                     "currency_code": [name[:3].upper() for name in names],
                     "currency_name": list(names)})


def commit(table, rows: pa.Table, key: str, processed_key: str | None = None) -> None:
    change = lake.dimension_change(table, LAKE_TABLES["dim_currency"], rows)
    change.properties.update({lake.MANIFEST_PROPERTY: key,
                              lake.PROCESSED_PROPERTY: processed_key or key})
    with table.transaction() as transaction:
        change.commit(transaction)
    table.refresh()


def test_a_load_skip_is_a_publish_skip_and_a_quiet_manifest_commits_nothing(aws):
    empty_manifest(FIRST)
    empty_manifest(SECOND)
    supersede.write_skip(aws["PROCESSED_BUCKET"], "load", FIRST, "broken", "tester")
    report = publish.run_publish(settings(aws), Deadline.unbounded())
    assert report.manifests_skipped == [FIRST]
    assert report.manifests_published == [SECOND]
    assert report.response()["manifests_skipped"] == [FIRST]
    assert storage.read_json(aws["LAKE_BUCKET"], FIRST)["skipped_by"].startswith("_supersede/")
    assert all(table.current_snapshot() is None for table in
               publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]),
                            aws["LAKE_DATABASE"]).tables.values())
    again = publish.run_publish(settings(aws), Deadline.unbounded())
    assert again.manifests_published == [] and again.last_published_manifest == SECOND


def test_a_processed_object_replaced_by_a_later_version_is_refused_before_any_commit(aws):
    key = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"]).publish(
        {"dim_currency": dimensions()["dim_currency"]})
    listed = storage.read_json(aws["PROCESSED_BUCKET"], key)["tables"]["dim_currency"]["files"][0]
    boto3.client("s3").put_object(  # valid rows of the contract, not the ones transform wrote
        Bucket=aws["PROCESSED_BUCKET"], Key=listed["key"], Body=parquet_bytes("dim_currency", [
            {"currency_id": 1, "currency_code": "XXX", "currency_name": "Forged"}]))
    with pytest.raises(storage.ObjectChangedError, match=re.escape(
            f"{listed['key']} is not the object its manifest lists: SHA-256 expected "
            f"{listed['sha256']}")) as refused:
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert errors.kind_of(refused.value) == errors.INPUT
    assert all(table.current_snapshot() is None for table in
               publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]),
                            aws["LAKE_DATABASE"]).tables.values())
    assert not list(storage.list_keys(aws["LAKE_BUCKET"], keys.MANIFEST_PREFIX))


def test_a_later_tables_replaced_object_is_refused_before_an_earlier_table_is_committed(aws):
    every = dimensions()
    key = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"]).publish(
        {"dim_currency": every["dim_currency"], "dim_design": every["dim_design"]})
    listed = storage.read_json(aws["PROCESSED_BUCKET"], key)["tables"]["dim_design"]["files"][0]
    boto3.client("s3").put_object(  # dim_currency is committed before dim_design is read
        Bucket=aws["PROCESSED_BUCKET"], Key=listed["key"], Body=parquet_bytes("dim_design", [
            {"design_id": 1, "design_name": "Forged", "file_location": "/x", "file_name": "x"}]))
    with pytest.raises(storage.ObjectChangedError, match=re.escape(listed["key"])):
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert all(table.current_snapshot() is None for table in
               publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]),
                            aws["LAKE_DATABASE"]).tables.values())
    assert not list(storage.list_keys(aws["LAKE_BUCKET"], keys.MANIFEST_PREFIX))


def test_a_manifest_whose_objects_would_not_fit_the_temporary_folder_is_refused_whole(
        aws, monkeypatch):
    every = dimensions()
    key = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"]).publish(
        {"dim_currency": every["dim_currency"], "dim_design": every["dim_design"]})
    listed = sum(file["bytes"] for table in storage.read_json(
        aws["PROCESSED_BUCKET"], key)["tables"].values() for file in table["files"])
    room = listed + publish.SPOOL_RESERVE_BYTES
    monkeypatch.setattr(publish, "free_temporary_bytes", lambda: room - 1)
    with pytest.raises(publish.PublishSpaceError, match=re.escape(
            f"({listed:,} bytes)")) as refused:
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert errors.kind_of(refused.value) == errors.INPUT
    assert "EphemeralStorage" in str(refused.value)
    assert not list(storage.list_keys(aws["LAKE_BUCKET"], keys.MANIFEST_PREFIX))

    monkeypatch.setattr(publish, "free_temporary_bytes", lambda: room)
    assert publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published == [key]


def test_a_run_out_of_time_starts_nothing(aws):
    empty_manifest(FIRST)
    report = publish.run_publish(settings(aws), Deadline(lambda: 1.0))
    assert report.manifests_published == [] and report.last_published_manifest is None


def test_a_settings_error_names_the_variable(aws, monkeypatch):
    monkeypatch.delenv("LAKE_DATABASE", raising=False)
    with pytest.raises(ConfigurationError, match="LAKE_DATABASE"):
        publish.PublishSettings.from_environment()


def test_a_writer_that_committed_first_makes_the_next_commit_a_transient_conflict(aws):
    lake_tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"])
    stale = lake_tables.tables["dim_currency"]
    commit(currency_table(aws), currencies("Pound Sterling"), FIRST)
    change = lake.dimension_change(stale, LAKE_TABLES["dim_currency"], currencies("Euro"))
    with pytest.raises(publish.PublishConflictError):
        lake_tables.commit("dim_currency", change, SECOND, SECOND)


def test_two_publishes_adding_the_same_new_column_add_it_once_and_neither_fails(aws):
    catalog, spec = lake.glue_catalog(aws["LAKE_BUCKET"]), LAKE_TABLES["dim_location"]
    stale = created_without(aws, spec, "address_line_2")

    first = lake.open_table(catalog, aws["LAKE_DATABASE"], spec)
    second = lake.with_new_columns(stale, spec)  # read before the first one's commit

    assert first.schema().column_names == second.schema().column_names == list(spec.column_names)
    found = catalog.load_table((aws["LAKE_DATABASE"], spec.name))
    assert found.schema().column_names.count("address_line_2") == 1
    assert not found.schema().find_field("address_line_2").required
    assert len(found.schemas()) == 2


def test_a_column_the_contract_no_longer_has_is_made_optional_and_publishing_goes_on(
        aws, monkeypatch):
    table = currency_table(aws)
    commit(table, currencies("Pound Sterling", "Euro"), FIRST)
    columns = lake_schema.LakeTable.columns
    monkeypatch.setattr(lake_schema.LakeTable, "columns", property(
        lambda self: tuple(column for column in columns.fget(self)  # type: ignore[attr-defined]
                           if (self.name, column.name) != ("dim_currency", "currency_name"))))

    table = currency_table(aws)
    assert not table.schema().find_field("currency_name").required
    commit(table, currencies("Pound Sterling", "Euro", "Dollar").drop_columns(["currency_name"]),
           SECOND)
    assert sorted(table.scan().to_arrow().to_pylist(), key=lambda row: row["currency_id"]) == [
        {"currency_id": 1, "currency_code": "POU", "currency_name": "Pound Sterling"},
        {"currency_id": 2, "currency_code": "EUR", "currency_name": "Euro"},
        {"currency_id": 3, "currency_code": "DOL", "currency_name": None}]


@pytest.mark.parametrize("name, column", [("fact_payment", "is_deleted"),
                                          ("dim_location", "address_line_2")])
def test_a_column_added_takes_its_contract_place_as_in_a_fresh_table(aws, name, column):
    spec = LAKE_TABLES[name]
    created_without(aws, spec, column)
    table = lake.open_table(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"], spec)
    assert tuple(table.schema().column_names) == spec.column_names
    glue = boto3.client("glue").get_table(DatabaseName=aws["LAKE_DATABASE"], Name=spec.name)
    assert tuple(found["Name"] for found in glue["Table"]["StorageDescriptor"]["Columns"]) == (
        spec.column_names)


def payments(*versions: dict) -> pa.Table:
    """Payment versions in the contract's Arrow types, as a manifest's rows reach publish."""
    return arrow_table("fact_payment", list(versions))


def test_versions_written_before_a_defaulted_column_existed_read_its_default_when_changed(aws):
    spec, current_spec = LAKE_TABLES["fact_payment"], LAKE_TABLES["fact_payment_current"]
    tables = [created_without(aws, table, "is_deleted") for table in (spec, current_spec)]
    older = lake_schema.to_lake(spec, payments(payment(1), payment(2))
                                .append_column("payment_record_id", pa.array([1, 2], pa.int64()))
                                .append_column("manifest_key", pa.array([FIRST] * 2)))
    for table in tables:
        with table.transaction() as transaction:
            transaction.append(older.drop_columns(["is_deleted"]),
                               snapshot_properties={lake.MANIFEST_PROPERTY: FIRST,
                                                    lake.PROCESSED_PROPERTY: FIRST})
    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    history, current = (lake.open_table(catalog, aws["LAKE_DATABASE"], table)
                        for table in (spec, current_spec))  # the release adds is_deleted

    # payment 1 gains a version, payment 2 is deleted: both read rows without is_deleted
    deleted = pa.Table.from_pylist(
        [gone("fact_payment", 2, datetime(2024, 11, 15, 14, 29, tzinfo=timezone.utc))],
        schema=arrow_schema(DELETIONS["fact_payment"]))
    change = lake.fact_change(history, current, spec, SECOND,
                              payments(payment(1, updated=time(11, 0), paid=True)), deleted, 3)

    assert change.deletions == 1 and change.corrected == 0
    appended = change.history.appended
    assert appended is not None
    assert appended.select(["payment_id", "paid", "is_deleted"]).to_pylist() == [
        {"payment_id": 1, "paid": True, "is_deleted": False},
        {"payment_id": 2, "paid": False, "is_deleted": True}]
    assert change.current.appended is not None
    assert change.current.appended.select(["payment_id", "is_deleted"]).to_pylist() == [
        {"payment_id": 1, "is_deleted": False}]


def test_a_rerun_after_the_history_commit_keeps_a_version_deleted_in_the_same_manifest_out(
        aws, monkeypatch):
    run = datetime(2024, 11, 15, 10, 5, tzinfo=timezone.utc)
    # payment 1 is seen and then found deleted in one manifest: its current state is empty,
    # so fact_payment_current gets no commit and its last manifest stays older than this one
    Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"]).publish(
        {**dimensions(), "fact_payment": [payment(1)]},
        deletions={"fact_payment": [gone("fact_payment", 1, run - timedelta(minutes=1))]},
        started_at=run)
    record = publish._record

    def crash_before_the_first_record(*args, **kwargs):
        monkeypatch.setattr(publish, "_record", record)
        raise publish.PublishConflictError("crashed after the history commit")

    monkeypatch.setattr(publish, "_record", crash_before_the_first_record)
    with pytest.raises(publish.PublishConflictError):
        publish.run_publish(settings(aws), Deadline.unbounded())
    publish.run_publish(settings(aws), Deadline.unbounded())

    tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"]).tables
    history = tables["fact_payment"].scan().to_arrow().sort_by("payment_record_id")
    assert history.select(["payment_id", "is_deleted"]).to_pylist() == [
        {"payment_id": 1, "is_deleted": False}, {"payment_id": 1, "is_deleted": True}]
    assert tables["fact_payment_current"].scan().to_arrow().num_rows == 0


@pytest.mark.parametrize("across", [False, True], ids=["one manifest", "two manifests"])
def test_a_deletion_stamped_as_its_latest_version_becomes_that_version_as_the_load_does(
        aws, across):
    # Log-based capture stamps a deletion with its commit time: payment 7 written and deleted
    # within one millisecond has its deletion at its own last_updated (DAY 10:00:00.123).
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    stamped = datetime(2024, 11, 15, 10, 0, 0, 123000, tzinfo=timezone.utc)
    deletion = {"fact_payment": [gone("fact_payment", 7, stamped)]}
    versions = {**dimensions(), "fact_payment": [payment(7), payment(8)]}
    if across:
        buckets.publish(versions)
        buckets.publish({}, deletions=deletion)
    else:
        buckets.publish(versions, deletions=deletion)
    report = publish.run_publish(settings(aws), Deadline.unbounded())
    assert sum(report.deletions_published.values()) == 1

    def lake_state():
        tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"]).tables
        history = tables["fact_payment"].scan().to_arrow().sort_by("payment_record_id")
        current = tables["fact_payment_current"].scan().to_arrow()
        return (history.select(["payment_record_id", "payment_id", "last_updated_time",
                                "is_deleted"]).to_pylist(),
                current["payment_id"].to_pylist())

    history, current = lake_state()
    # the version at that stamp became the deletion, ranking latest (as in the warehouse)
    assert [row["payment_id"] for row in history] == [8, 7]
    assert history[1]["is_deleted"] and history[1]["last_updated_time"] == "10:00:00.123"
    assert not history[0]["is_deleted"]
    assert current == [8]

    buckets.publish({}, deletions=deletion)   # delivered again: nothing changes
    again = publish.run_publish(settings(aws), Deadline.unbounded())
    assert again.manifests_published and sum(again.deletions_published.values()) == 0
    assert lake_state() == (history, current)


def test_a_deletion_already_at_the_stamp_stays_when_that_deletion_arrives_again_later(aws):
    # payment 7 written and deleted in one millisecond, then written again: its deletion
    # delivered once more (stamped as the first version) must leave the new version current,
    # as the load's "a deletion there already stays" does
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    deletion = {"fact_payment": [gone("fact_payment", 7, datetime(
        2024, 11, 15, 10, 0, 0, 123000, tzinfo=timezone.utc))]}
    buckets.publish({**dimensions(), "fact_payment": [payment(7)]}, deletions=deletion)
    buckets.publish({"fact_payment": [payment(7, updated=time(11, 0), paid=True)]})
    buckets.publish({}, deletions=deletion)
    report = publish.run_publish(settings(aws), Deadline.unbounded())

    assert len(report.manifests_published) == 3 and report.deletions_published["fact_payment"] == 1
    tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"]).tables
    history = tables["fact_payment"].scan().to_arrow().sort_by("payment_record_id")
    assert history.select(["last_updated_time", "paid", "is_deleted"]).to_pylist() == [
        {"last_updated_time": "10:00:00.123", "paid": False, "is_deleted": True},
        {"last_updated_time": "11:00:00.000", "paid": True, "is_deleted": False}]
    current = tables["fact_payment_current"].scan().to_arrow()
    assert current.select(["payment_id", "paid"]).to_pylist() == [{"payment_id": 7, "paid": True}]


def test_a_column_change_that_loses_the_race_twice_is_a_transient_conflict(aws, monkeypatch):
    from pyiceberg.table import Table
    from pyiceberg.types import StringType

    spec = LAKE_TABLES["dim_location"]
    created_without(aws, spec, "address_line_2")
    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    update_schema = Table.update_schema
    races = []

    def another_writer_first(self, *args, **kwargs):
        """Another writer changes the schema between this read of the table and its change."""
        other = catalog.load_table((aws["LAKE_DATABASE"], spec.name))
        with update_schema(other) as update:
            update.add_column(f"other_{len(races)}", StringType())
        races.append(1)
        return update_schema(self, *args, **kwargs)

    monkeypatch.setattr(Table, "update_schema", another_writer_first)
    with pytest.raises(publish.PublishConflictError, match="dim_location"):
        publish.Lake(catalog, aws["LAKE_DATABASE"])
    assert len(races) == 2


def test_a_new_not_null_column_without_a_default_is_refused_as_the_warehouse_refuses_it(aws):
    catalog, spec = lake.glue_catalog(aws["LAKE_BUCKET"]), LAKE_TABLES["dim_currency"]
    created_without(aws, spec, "currency_name")
    with pytest.raises(lake.ColumnError, match="currency_name NOT NULL without a default"):
        lake.open_table(catalog, aws["LAKE_DATABASE"], spec)
    assert isinstance(lake.ColumnError(""), errors.InputError)


def test_expiry_forgets_old_snapshots_but_never_the_current_one_or_a_file(aws):
    table = currency_table(aws)
    commit(table, currencies("Pound Sterling"), FIRST)
    commit(table, currencies("Pound Sterling", "Euro"), SECOND)
    objects = list(storage.list_keys(aws["LAKE_BUCKET"], ""))
    assert lake.expire_snapshots(table, datetime.now(timezone.utc) - timedelta(days=1)) == 0
    expired = lake.expire_snapshots(table, datetime.now(timezone.utc) + timedelta(minutes=1))
    table.refresh()
    assert expired >= 1 and [s.snapshot_id for s in table.snapshots()] == [
        table.current_snapshot().snapshot_id]
    assert table.scan().to_arrow().num_rows == 2
    assert set(objects) <= set(storage.list_keys(aws["LAKE_BUCKET"], ""))

    # A revision reaching back past what is kept cannot be rewound from history.
    markers = Markers(revisions=(revision(SECOND),))
    with pytest.raises(lake.RewindError, match="rebuild the lake"):
        lake.rewind(table, markers)


def revision(start: str) -> Revision:
    return Revision(number=1, from_manifest=start, reason="bug", created_at="now",
                    created_by="tester")


def test_a_revision_from_the_first_manifest_empties_a_table_in_a_new_snapshot(aws):
    table = currency_table(aws)
    commit(table, currencies("Pound Sterling"), FIRST)
    assert not lake.rewind(table, Markers())
    assert lake.rewind(table, Markers(revisions=(revision(FIRST),)))
    table.refresh()
    assert table.scan().to_arrow().num_rows == 0
    assert table.current_snapshot().summary[lake.REWOUND_BY_PROPERTY] == \
        "_supersede/revisions/0001.json"
    assert len(table.snapshots()) == 2  # the old state is still there to travel back to


def test_a_revision_rewinds_a_table_another_engine_compacted_since(aws):
    table = currency_table(aws)
    commit(table, currencies("Pound Sterling"), FIRST)
    commit(table, currencies("Pound Sterling", "Euro"), SECOND)
    table.overwrite(table.scan().to_arrow())  # Athena's OPTIMIZE: a snapshot naming nothing
    table.refresh()
    assert lake.rewind(table, Markers(revisions=(revision(SECOND),)))
    table.refresh()
    assert table.scan().to_arrow()["currency_name"].to_pylist() == ["Pound Sterling"]
    assert table.current_snapshot().summary[lake.MANIFEST_PROPERTY] == FIRST


def test_the_lake_writes_each_object_once_and_never_deletes(aws):
    io = lake_io.CreateOnceFileIO(lake.io_properties())
    location = f"s3://{aws['LAKE_BUCKET']}/db/t/metadata/one.json"
    output = io.new_output(location)
    with output.create() as stream:
        stream.write(b"{}")
    assert len(output) == 2 and output.exists()
    assert io.new_input(location).open().read() == b"{}"
    with pytest.raises(storage.ObjectAlreadyExistsError):
        with io.new_output(location).create() as stream:
            stream.write(b"{\"again\": true}")
    with pytest.raises(RuntimeError):
        with io.new_output(location + ".failed").create() as stream:
            stream.write(b"half")
            raise RuntimeError("the writer failed")
    assert not io.new_output(location + ".failed").exists()
    with pytest.raises(PermissionError):
        io.delete(location)
    with pytest.raises(ValueError, match="S3 only"):
        with io.new_output("file:///tmp/x").create() as stream:
            stream.write(b"x")


def test_an_unreadable_manifest_stops_the_run_naming_it_with_what_was_done_published(aws):
    empty_manifest(FIRST)
    storage.put_new_json(aws["PROCESSED_BUCKET"], SECOND, {"format": "totes.processed/2"})
    with pytest.raises(ManifestError):
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert storage.read_json(aws["LAKE_BUCKET"], FIRST)["ingest_manifest"] == FIRST
    assert next(storage.list_keys(aws["LAKE_BUCKET"], SECOND), None) is None


def resident_mb() -> float:
    """This process's resident memory now (``VmRSS``), in MB."""
    with open("/proc/self/status") as status:
        (line,) = [line for line in status if line.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def test_arrows_freed_memory_is_given_back_after_each_manifest(aws, monkeypatch):
    import numpy as np

    chunks = [pa.array(np.arange(i, i + 5_000_000)) for i in range(10)]  # 400 MB in Arrow's pool
    held = resident_mb()
    del chunks
    publish.release_arrow_memory()
    assert held - resident_mb() > 300  # without the release, the pool keeps it resident

    released = []
    monkeypatch.setattr(publish, "release_arrow_memory", lambda: released.append(1))
    empty_manifest(FIRST)
    empty_manifest(SECOND)
    supersede.write_skip(aws["PROCESSED_BUCKET"], "load", FIRST, "broken", "tester")
    publish.run_publish(settings(aws), Deadline.unbounded())
    assert len(released) == 2  # after each manifest, published or skipped


def test_a_revision_past_snapshots_another_engine_expired_is_refused_not_an_emptied_table(aws):
    table = currency_table(aws)
    commit(table, currencies("Pound Sterling"), FIRST)
    commit(table, currencies("Pound Sterling", "Euro"), SECOND)
    # as Athena's VACUUM (Iceberg's own expiry) leaves a table: the first snapshot gone, the
    # second still naming it as its parent, and no expiry of the publish's recorded
    table.metadata = table.metadata.model_copy(update={"snapshots": table.snapshots()[1:]})
    with pytest.raises(lake.RewindError, match="rebuild the lake"):
        lake.rewind(table, Markers(revisions=(revision(SECOND),)))


def point_glue_at(aws, name: str, location: str) -> None:
    """Point a lake table's Glue entry at ``location`` by hand (the console's edit)."""
    glue = boto3.client("glue")
    found = glue.get_table(DatabaseName=aws["LAKE_DATABASE"], Name=name)["Table"]
    table_input = {key: found[key] for key in ("Name", "TableType", "StorageDescriptor")}
    table_input["Parameters"] = found["Parameters"] | {"metadata_location": location}
    glue.update_table(DatabaseName=aws["LAKE_DATABASE"], TableInput=table_input)


def test_a_table_behind_its_publish_record_is_refused_but_not_one_compacted_or_ahead_of_it(aws):
    table = currency_table(aws)
    commit(table, currencies("Pound Sterling"), FIRST)
    empty_manifest(FIRST)
    assert publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published
    table.overwrite(table.scan().to_arrow())  # another engine's compaction names no manifest
    assert not publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published
    commit(table, currencies("Pound Sterling", "Euro"), SECOND)  # a run that stopped here
    assert not publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published

    point_glue_at(aws, "dim_currency", table.metadata.metadata_log[0].metadata_file)
    with pytest.raises(publish.LakeBehindError, match=f"dim_currency: .* says it holds {FIRST}"):
        publish.run_publish(settings(aws), Deadline.unbounded())


def test_record_ids_stay_unique_after_another_engine_compacts_the_history(aws):
    run = datetime(2024, 11, 15, 10, 5, tzinfo=timezone.utc)
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    buckets.publish({**dimensions(), "fact_payment": [payment(1)]}, started_at=run)
    publish.run_publish(settings(aws), Deadline.unbounded())
    history = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]),
                           aws["LAKE_DATABASE"]).tables["fact_payment"]
    history.overwrite(history.scan().to_arrow())  # Athena's OPTIMIZE: a snapshot naming nothing
    buckets.publish({"fact_payment": [payment(2)]}, started_at=run + timedelta(minutes=5))
    publish.run_publish(settings(aws), Deadline.unbounded())

    ids = history.refresh().scan().to_arrow()["payment_record_id"].to_pylist()
    assert sorted(ids) == [1, 2]


def test_a_publish_run_at_once_is_not_taken_for_a_table_pointed_back(aws):
    commit(currency_table(aws), currencies("Pound Sterling"), FIRST)
    stale = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"])
    # the other run commits a manifest and writes its record after this one opened the tables
    commit(currency_table(aws), currencies("Pound Sterling", "Euro"), SECOND)
    empty_manifest(SECOND)
    assert publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published
    markers = supersede.read_markers(aws["PROCESSED_BUCKET"])
    newest, record = lake.newest_record(aws["LAKE_BUCKET"], markers)
    stale.check_not_behind(markers.processed_key(newest), record["tables"])


def test_a_manifest_not_following_the_one_published_last_is_refused_with_nothing_published(aws):
    empty_manifest(FIRST)
    assert publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published == [FIRST]
    # another stack's run, whole and sealed, copied in: it follows a run of its own bucket
    foreign = "_manifests/2024/11/15/20241115T142509123Z-0badf00d.json"
    empty_manifest(SECOND, follows=foreign)
    with pytest.raises(publish.ProcessedGapError, match=re.escape(
            f"{SECOND}: it follows {foreign}, but the last manifest published is {FIRST}")) as e:
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert errors.kind_of(e.value) == errors.INPUT
    assert next(storage.list_keys(aws["LAKE_BUCKET"], SECOND), None) is None


def test_another_pipelines_first_manifest_after_something_was_published_is_refused(aws):
    empty_manifest(FIRST, revision=0)  # this chain's first: it follows nothing
    assert publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published == [FIRST]
    empty_manifest(SECOND, revision=0)  # another stack's first run, copied in
    with pytest.raises(publish.ProcessedGapError, match=re.escape(
            f"{SECOND}: it follows no manifest (a chain's first), but the last manifest "
            f"published is {FIRST}")):
        publish.run_publish(settings(aws), Deadline.unbounded())


def test_the_first_manifest_missing_before_the_first_publish_is_refused(aws):
    empty_manifest(SECOND, follows=FIRST)  # FIRST's processed manifest is not there
    with pytest.raises(publish.ProcessedGapError, match="no manifest was published before it"):
        publish.run_publish(settings(aws), Deadline.unbounded())
    empty_manifest(FIRST)  # restored: both are published, in order
    assert publish.run_publish(settings(aws), Deadline.unbounded()).manifests_published == [
        FIRST, SECOND]


def test_a_history_pointed_at_its_current_tables_metadata_is_refused_not_built_on(aws):
    run = datetime(2024, 11, 15, 10, 5, tzinfo=timezone.utc)
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    buckets.publish({**dimensions(), "fact_payment": [payment(1)]}, started_at=run)
    buckets.publish({"fact_payment": [payment(1, time(11, 0), paid=True)]},
                    started_at=run + timedelta(minutes=5))
    publish.run_publish(settings(aws), Deadline.unbounded())
    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    current = catalog.load_table((aws["LAKE_DATABASE"], "fact_payment_current"))
    # the same columns, the same number of commits: a slip of the console's copy and paste
    point_glue_at(aws, "fact_payment", current.metadata_location)
    buckets.publish({"fact_payment": [payment(2)]}, started_at=run + timedelta(minutes=10))

    with pytest.raises(lake.ForeignMetadataError, match=re.escape(
            f"fact_payment: Glue names {current.metadata_location}")) as refused:
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert errors.kind_of(refused.value) == errors.INPUT
    assert catalog.load_table((aws["LAKE_DATABASE"], "fact_payment")).metadata_location == \
        current.metadata_location  # nothing committed on top
    with pytest.raises(lake.ForeignMetadataError, match="fact_payment_current"):
        lake.check_own_metadata(catalog.load_table((aws["LAKE_DATABASE"], "fact_payment")),
                                "fact_payment")


def test_a_table_pointed_at_another_stacks_table_of_the_same_name_is_refused(aws):
    run = datetime(2024, 11, 15, 10, 5, tzinfo=timezone.utc)
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    buckets.publish({**dimensions(), "fact_payment": [payment(1)]}, started_at=run)
    publish.run_publish(settings(aws), Deadline.unbounded())
    # Another stack's lake in the same account: its fact_payment, later stamped, at
    # <its bucket>/fact_payment (the location's end alone cannot tell it).
    other_bucket, other_database = f"{aws['LAKE_BUCKET']}-other", f"{aws['LAKE_DATABASE']}_other"
    stack.provision({}, buckets=(other_bucket,), glue_databases={other_database: other_bucket})
    theirs = lake.open_table(lake.glue_catalog(other_bucket), other_database,
                             LAKE_TABLES["fact_payment"])
    later = "_manifests/2024/11/16/20241116T090000000Z-0badf00d.json"
    theirs.append(pa.Table.from_pylist([], theirs.schema().as_arrow()), snapshot_properties={
        lake.MANIFEST_PROPERTY: later, lake.PROCESSED_PROPERTY: later})
    assert theirs.location().endswith("/fact_payment")
    assert lake.last_manifest(theirs) == later  # ahead of ours: not "behind" the record
    point_glue_at(aws, "fact_payment", theirs.metadata_location)  # a catalog restored wrongly
    buckets.publish({"fact_payment": [payment(2)]}, started_at=run + timedelta(minutes=10))

    with pytest.raises(lake.ForeignMetadataError, match=re.escape(
            f"fact_payment: Glue names {theirs.metadata_location}, the metadata of table "
            f"{theirs.metadata.table_uuid}")) as refused:
        publish.run_publish(settings(aws), Deadline.unbounded())
    assert errors.kind_of(refused.value) == errors.INPUT


def test_a_table_at_trinos_unique_location_is_its_own():
    unique = "s3://lake/fact_payment-0123456789abcdef0123456789abcdef"
    table = SimpleNamespace(location=lambda: unique, metadata=SimpleNamespace(table_uuid="u"),
                            metadata_location="m")
    assert lake.check_own_metadata(table, "fact_payment", "u") is table
    with pytest.raises(lake.ForeignMetadataError):
        lake.check_own_metadata(table, "fact_payment", "another uuid")


def test_the_newest_publish_record_gone_publishes_its_manifest_again_adding_nothing(aws):
    run = datetime(2024, 11, 15, 10, 5, tzinfo=timezone.utc)
    buckets = Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])
    buckets.publish({**dimensions(), "fact_payment": [payment(1)]}, started_at=run)
    key = buckets.publish({"fact_payment": [payment(1, time(11, 0), paid=True), payment(2)]},
                          started_at=run + timedelta(minutes=5))
    publish.run_publish(settings(aws), Deadline.unbounded())
    lake_tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"])
    before = {name: table.metadata_location for name, table in lake_tables.tables.items()}
    boto3.client("s3").delete_object(Bucket=aws["LAKE_BUCKET"], Key=key)  # the break-glass role

    again = publish.run_publish(settings(aws), Deadline.unbounded())
    assert again.manifests_published == [key] and sum(again.rows_appended.values()) == 0
    lake_tables = publish.Lake(lake.glue_catalog(aws["LAKE_BUCKET"]), aws["LAKE_DATABASE"])
    assert {name: table.metadata_location for name, table in lake_tables.tables.items()} == before
    assert storage.read_json(aws["LAKE_BUCKET"], key)["ingest_manifest"] == key
