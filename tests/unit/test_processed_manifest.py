"""The processed manifest record: what the transform writes is exactly what the load reads.

Both formats still in a processed bucket are read: ``totes.processed/1`` (before
deletions and the capture point) and ``totes.processed/2``.
"""
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from totes.manifest import (CapturePoint, DataFile, ManifestError, ProcessedManifest,
                            TableOutput)
from totes.warehouse_schema import DELETIONS, TABLES

KEY = "_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json"


def version_1(**changes) -> dict:
    """A processed manifest as the transform wrote it before deletions were carried."""
    return {"format": "totes.processed/1", "run_id": "20241115T142009123Z-3f9a1c2e",
            "ingest_manifest": KEY, "ingest_started_at": "2024-11-15T14:20:09.123Z",
            "transformed_at": "2024-11-15T14:20:15.002Z",
            "tables": {"dim_currency": {"rows": 2, "files": [
                {"key": "a.parquet", "rows": 2, "bytes": 10}]},
                "fact_payment": {"rows": 0, "files": []}},
            "reference": {"address": "_reference/address/x.parquet", "staff": None},
            **changes}


def version_2() -> ProcessedManifest:
    """A current manifest with a deletion file and a capture point."""
    return ProcessedManifest(
        run_id="20241115T142009123Z-3f9a1c2e", ingest_manifest=KEY,
        ingest_started_at="2024-11-15T14:20:09.123Z", transformed_at="2024-11-15T14:20:15.002Z",
        tables={name: TableOutput() for name in TABLES} | {
            "fact_payment": TableOutput((DataFile("p.parquet", 3, 30),))},
        reference={"address": "_reference/address/x.parquet", "department": None},
        deletions={name: TableOutput() for name in DELETIONS} | {
            "fact_payment": TableOutput((DataFile("p.deleted.parquet", 1, 5),))},
        capture=CapturePoint("1000:1004:1001", "2024-11-15T14:20:09.500"),
    )


def test_a_current_manifest_round_trips_through_its_json():
    manifest = version_2()
    document = manifest.to_json()
    assert document["format"] == "totes.processed/2"
    assert document["capture"] == {"snapshot": "1000:1004:1001",
                                   "database_time": "2024-11-15T14:20:09.500"}
    assert document["deletions"]["fact_payment"] == {
        "rows": 1, "files": [{"key": "p.deleted.parquet", "rows": 1, "bytes": 5}]}
    assert ProcessedManifest.parse(document) == manifest
    assert manifest.deleted("fact_payment").rows == 1 and manifest.table("fact_payment").rows == 3


def test_reference_snapshots_keep_their_sha256_and_a_malformed_one_is_refused():
    sha256 = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="
    manifest = replace(version_2(), reference_sha256={"address": sha256})
    document = manifest.to_json()
    assert document["reference_sha256"] == {"address": sha256}
    assert ProcessedManifest.parse(document) == manifest
    assert "reference_sha256" not in version_2().to_json()  # none recorded: read unchecked
    with pytest.raises(ManifestError, match="not a base64 SHA-256"):
        ProcessedManifest.parse({**document, "reference_sha256": {"address": "forged"}})


def test_a_version_1_manifest_reads_with_no_deletions_and_no_capture_point():
    manifest = ProcessedManifest.parse(version_1())
    assert manifest.format == "totes.processed/1"
    assert manifest.table("dim_currency").files == (DataFile("a.parquet", 2, 10),)
    assert manifest.table("dim_date").files == () and manifest.deleted("fact_payment").files == ()
    assert manifest.capture == CapturePoint(None, None)
    assert manifest.started() == datetime(2024, 11, 15, 14, 20, 9, 123000, timezone.utc)
    assert manifest.reference["address"] == "_reference/address/x.parquet"
    assert manifest.to_json()["format"] == "totes.processed/2"


def test_a_start_without_a_zone_is_utc_and_an_offset_is_converted():
    assert ProcessedManifest.parse(version_1(ingest_started_at="2024-11-15T14:20:09")).started() \
        == datetime(2024, 11, 15, 14, 20, 9, tzinfo=timezone.utc)
    assert ProcessedManifest.parse(version_1(
        ingest_started_at="2024-11-15T15:20:09+01:00")).started().hour == 14


def test_the_database_time_is_a_utc_timestamp_without_zone():
    assert CapturePoint(None, "2024-11-15T14:20:09.500").database_moment() == datetime(
        2024, 11, 15, 14, 20, 9, 500000)
    assert CapturePoint(None, "2024-11-15T15:20:09.500+01:00").database_moment() == datetime(
        2024, 11, 15, 14, 20, 9, 500000)
    assert CapturePoint().database_moment() is None


@pytest.mark.parametrize("document, message", [
    ({"format": "totes.ingest/1"}, "not a totes.processed/2 or totes.processed/1 manifest"),
    (["not", "an", "object"], "not a totes.processed/2 or totes.processed/1 manifest"),
    (version_1(tables={"pg_shadow": {"files": []}}), "unknown warehouse tables pg_shadow"),
    ({**version_2().to_json(), "deletions": {"dim_staff": {"files": []}}},
     "unknown warehouse tables deletions of dim_staff"),
    (version_1(tables={"dim_date": {"files": [{"rows": 1}]}}), "malformed .*: KeyError"),
    (version_1(run_id=None), "malformed totes.processed/1 manifest: ValueError: run_id"),
    (version_1(ingest_started_at="yesterday"), "malformed .*: ValueError"),
    (version_1(tables={"dim_date": {"rows": 5, "files": [{"key": "d", "rows": 1}]}}),
     "rows 5 is not the sum of its files' 1"),
    ({**version_2().to_json(), "capture": {"snapshot": "9:3:", "database_time": None}},
     "malformed totes.processed/2 manifest: SnapshotFormatError"),
    ({**version_2().to_json(), "capture": {"snapshot": None, "database_time": "noon"}},
     "malformed totes.processed/2 manifest: ValueError"),
    (version_1(tables=["dim_date"]), "tables and deletions must be objects"),
])
def test_a_bad_manifest_is_refused_saying_why(document, message):
    with pytest.raises(ManifestError, match=message):
        ProcessedManifest.parse(document)


RUN = "20241115T142009123Z-3f9a1c2e"
OBJECT = f"fact_payment/2024/11/15/{RUN}-0a1b2c3d-00000.parquet"
DELETIONS_OBJECT = f"fact_payment/2024/11/15/{RUN}-0a1b2c3d-00000.deleted.parquet"
SNAPSHOT = "_reference/address/2024/11/14/20241114T090000000Z-1a2b3c4d-5e6f7a8b.parquet"


def stored(**changes) -> ProcessedManifest:
    """A manifest naming only objects its key allows, as transform writes it."""
    return replace(version_2(), **{
        "tables": {"fact_payment": TableOutput((DataFile(OBJECT, 3, 30),))},
        "deletions": {"fact_payment": TableOutput((DataFile(DELETIONS_OBJECT, 1, 5),))},
        "reference": {"address": SNAPSHOT, "department": None}, **changes})


@pytest.mark.parametrize("key", [KEY, "_revisions/0002/" + KEY])
def test_a_manifest_naming_its_own_runs_objects_reads_at_its_key_in_any_revision(key):
    manifest = stored()
    assert ProcessedManifest.read(manifest.to_json(), key) == manifest


def test_the_manifest_it_follows_round_trips_and_a_manifest_without_one_reads_as_before():
    earlier = "_manifests/2024/11/15/20241115T141009123Z-0a1b2c3d.json"
    manifest = stored(follows=earlier)
    assert manifest.to_json()["follows"] == earlier
    assert ProcessedManifest.read(manifest.to_json(), KEY) == manifest
    assert "follows" not in stored().to_json()
    assert ProcessedManifest.read(stored().to_json(), KEY).follows is None


@pytest.mark.parametrize("key, changes, message", [
    ("_manifests/2024/11/15/20241115T142009123Z-00000000.json", {}, "is not the run its key"),
    ("_revisions/x/" + KEY, {}, "is not the run its key"),
    ("_manifests/2024/11/16/" + RUN + ".json", {}, "is not the run its key"),
    (KEY, {"ingest_manifest": "_manifests/2024/11/15/20241115T000000000Z-aa.json"},
     "is not the ingest manifest of this run"),
    (KEY, {"tables": {"fact_payment": TableOutput((DataFile(
        OBJECT.replace("fact_payment", "dim_staff", 1), 3, 30),))}},
     "fact_payment names 'dim_staff/.*which is not an object of fact_payment"),
    (KEY, {"tables": {"fact_payment": TableOutput((DataFile(
        OBJECT.replace("3f9a1c2e", "3f9a1c2f"), 3, 30),))}}, "written for this run"),
    (KEY, {"tables": {"fact_payment": TableOutput((DataFile(DELETIONS_OBJECT, 3, 30),))}},
     "written for this run"),
    (KEY, {"deletions": {"fact_payment": TableOutput((DataFile(OBJECT, 1, 5),))}},
     "written for this run"),
    (KEY, {"tables": {"fact_payment": TableOutput((DataFile(
        "../_manifests/" + OBJECT, 3, 30),))}}, "written for this run"),
    (KEY, {"reference": {"address": SNAPSHOT.replace("address", "staff", 1)}},
     "reference snapshot of address"),
    (KEY, {"reference": {"address": "_reference/address/2024/11/16/"
                         "20241116T000000000Z-1a2b3c4d-5e6f7a8b.parquet"}},
     "by this run or an earlier one"),
    (KEY, {"reference": {"address": OBJECT}}, "reference snapshot of address"),
    (KEY, {"follows": KEY}, "follows .* not an ingest manifest key of an earlier run"),
    (KEY, {"follows": "_manifests/2024/11/16/20241116T000000000Z-1a2b3c4d.json"},
     "not an ingest manifest key of an earlier run"),
    (KEY, {"follows": OBJECT}, "not an ingest manifest key of an earlier run"),
])
def test_a_manifest_naming_anything_outside_its_run_and_tables_is_refused(key, changes, message):
    with pytest.raises(ManifestError, match=message):
        ProcessedManifest.read(stored(**changes).to_json(), key)


SHA256 = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="  # the SHA-256 of b"test"


def test_a_file_s_sha256_round_trips_and_files_listed_before_it_was_recorded_read_without():
    recorded = DataFile("p.parquet", 3, 30, SHA256)
    assert recorded.to_json() == {"key": "p.parquet", "rows": 3, "bytes": 30, "sha256": SHA256}
    assert DataFile.from_json(recorded.to_json()) == recorded
    older = DataFile.from_json({"key": "p.parquet", "rows": 3, "bytes": 30})
    assert older.sha256 is None and "sha256" not in older.to_json()
    manifest = replace(version_2(), tables={"fact_payment": TableOutput((recorded,))})
    assert ProcessedManifest.parse(manifest.to_json()).table("fact_payment").files == (recorded,)


@pytest.mark.parametrize("sha256", ["", "abc", 42, SHA256.rstrip("=") + "!"])
def test_a_file_whose_sha256_is_not_one_is_refused(sha256):
    document = version_1()
    document["tables"]["dim_currency"]["files"][0]["sha256"] = sha256
    with pytest.raises(ManifestError, match="sha256 of 'a.parquet' is not a base64 SHA-256"):
        ProcessedManifest.parse(document)
