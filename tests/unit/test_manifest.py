"""Ingest manifests: one owner, both directions, every format still in a bucket."""
from dataclasses import replace
from datetime import datetime

import pytest

from totes.capture import Snapshot, SourceIdentity, TableCursor
from totes.manifest import (INGEST_FORMAT, DataFile, IngestManifest, LogicalPosition,
                            ManifestError, SweepState, TableEntry)

V1 = {
    "format": "totes.ingest/1", "run_id": "20241115T142009123Z-3f9a1c2e",
    "started_at": "2024-11-15T14:20:09.123Z", "finished_at": "2024-11-15T14:20:11.456Z",
    "previous_manifest": None, "overlap_minutes": 15, "complete": True,
    "tables": {
        "sales_order": {"rows": 1, "files": [{"key": "sales_order/a.jsonl", "rows": 1,
                                              "bytes": 9}],
                        "truncated": False, "watermark": "2024-11-15T14:19:58.120",
                        "recent_versions": [[11188, "2024-11-15T14:19:58.120"]]},
        "staff": {"rows": 0, "files": [], "watermark": None, "recent_versions": []},
    },
}


def test_a_manifest_round_trips_through_its_document():
    manifest = IngestManifest(
        run_id="20261127T080000000Z-aa", started_at="2026-11-27T08:00:00.000Z",
        finished_at="2026-11-27T08:00:01.000Z", previous_manifest=None,
        snapshot=Snapshot(740, 745, (741,)), database_time="2026-11-27T08:00:00.001",
        complete=False,
        tables={"payment": TableEntry(
            files=(DataFile("payment/x.jsonl", 3, 300),),
            cursor=TableCursor(since=Snapshot(700, 700), resume_after=9,
                               resume_since=Snapshot(740, 745, (741,))),
            truncated=True, stamped_in_future=1,
            deleted=(DataFile("payment/x-deleted.jsonl", 2, 90),),
            sweep=SweepState("_sweeps/payment/k.keys.gz", 40, "20261127T080000000Z-aa",
                             datetime(2026, 11, 27, 8, 0, 0, 1000)))})
    document = manifest.to_json()
    assert document["format"] == INGEST_FORMAT
    assert document["tables"]["payment"]["rows"] == 3
    assert document["tables"]["payment"]["deleted_rows"] == 2
    assert IngestManifest.parse(document) == manifest


def test_key_lists_keep_their_sha256_and_an_older_entry_without_it_still_reads():
    from totes.storage import checksum

    sha256 = checksum(b"1,2,3\n")
    entry = TableEntry(sweep=SweepState("_sweeps/payment/k.keys.gz", 3, "20261127T080000000Z-aa",
                                        datetime(2026, 11, 27, 8), sha256),
                       captured_keys="_sweeps/payment/c-captured.keys.gz",
                       captured_keys_sha256=sha256)
    document = entry.to_json()
    assert document["sweep"]["sha256"] == document["captured_keys_sha256"] == sha256
    assert TableEntry.from_json(document) == entry
    older = {**document, "sweep": {name: value for name, value in document["sweep"].items()
                                   if name != "sha256"}}
    del older["captured_keys_sha256"]
    assert TableEntry.from_json(older) == replace(
        entry, sweep=replace(entry.sweep, sha256=None), captured_keys_sha256=None)
    with pytest.raises(ValueError, match="not a base64 SHA-256"):
        SweepState.from_json({**document["sweep"], "sha256": "forged"})


def test_a_log_based_position_round_trips_and_is_absent_from_snapshot_manifests():
    position = LogicalPosition("totes_ingest", "totes_pub", "16/B374D848",
                               partial_commit_lsn="16/B3800000", partial_changes=30000,
                               backfilled=True)
    manifest = IngestManifest(run_id="20261127T080000000Z-aa", started_at="s", finished_at="f",
                              previous_manifest=None, tables={}, logical=position)
    document = manifest.to_json()
    assert document["logical"] == {
        "slot": "totes_ingest", "publication": "totes_pub", "lsn": "16/B374D848",
        "partial_commit_lsn": "16/B3800000", "partial_changes": 30000, "backfilled": True,
        "publication_oid": None, "resync": []}
    assert IngestManifest.parse(document) == manifest
    resyncing = replace(position, publication_oid=16400, resync=("payment", "staff"))
    assert LogicalPosition.from_json(resyncing.to_json()) == resyncing
    with pytest.raises(ValueError, match="outside the contract"):
        LogicalPosition.from_json({**resyncing.to_json(), "resync": ["pg_authid"]})
    plain = IngestManifest.parse({**document, "logical": None})
    assert plain.logical is None and "logical" not in plain.to_json()
    assert IngestManifest.parse(V1).logical is None


def test_the_source_identity_and_a_resync_round_trip_and_older_manifests_have_neither():
    manifest = IngestManifest(run_id="20261127T080000000Z-aa", started_at="s", finished_at="f",
                              previous_manifest=None, tables={}, snapshot=Snapshot(740, 745),
                              source=SourceIdentity("7441281470123456789", 3,
                                                    "2026-11-27T07:59:00.000001Z"),
                              resync="the source's timeline changed from 2 to 3")
    document = manifest.to_json()
    assert document["source"] == {"system_identifier": "7441281470123456789", "timeline": 3,
                                  "started": "2026-11-27T07:59:00.000001Z"}
    assert IngestManifest.parse(document) == manifest
    unreadable = IngestManifest.parse({**document, "source": {"system_identifier": None,
                                                              "timeline": None}})
    assert unreadable.source == SourceIdentity()
    older = {key: value for key, value in document.items() if key not in ("source", "resync")}
    parsed = IngestManifest.parse(older)
    assert parsed.source is None and parsed.resync is None
    assert "source" not in parsed.to_json() and "resync" not in parsed.to_json()
    assert IngestManifest.parse(V1).source is None


def test_a_log_based_position_with_a_malformed_lsn_is_refused():
    document = IngestManifest(run_id="20261127T080000000Z-aa", started_at="s", finished_at="f",
                              previous_manifest=None, tables={}).to_json()
    with pytest.raises(ManifestError, match="not an LSN"):
        IngestManifest.parse({**document, "logical": {"slot": "s", "publication": "p",
                                                      "lsn": "16:B374D848"}})


def test_a_watermark_manifest_becomes_a_one_off_bridge_by_last_updated():
    manifest = IngestManifest.parse(V1)
    assert manifest.format == "totes.ingest/1" and manifest.snapshot is None
    order = manifest.table("sales_order")
    assert order.files == (DataFile("sales_order/a.jsonl", 1, 9),)
    assert order.cursor == TableCursor(since_last_updated=datetime(2024, 11, 15, 14, 4, 58, 120000))
    assert manifest.table("staff").cursor == TableCursor()  # never read: read everything
    assert manifest.table("payment") == TableEntry()


@pytest.mark.parametrize("document, message", [
    ([], "no tables"),
    ({"format": "totes.ingest/9", "tables": {}}, "'totes.ingest/9' is not one"),
    ({**V1, "tables": {"pg_authid": {}}}, "unknown table"),
    ({**V1, "run_id": None, "started_at": None, "tables": {"staff": {"files": [{}]}}},
     "malformed totes.ingest/1"),
    ({**V1, "format": INGEST_FORMAT, "tables": {"staff": {"cursor": {"since": "9:1:"}}}},
     "malformed totes.ingest/2"),
])
def test_anything_else_is_refused_with_a_clear_reason(document, message):
    with pytest.raises(ManifestError, match=message):
        IngestManifest.parse(document)


RUN = "20261127T080000123Z-3f9a1c2e"
KEY = f"_manifests/2026/11/27/{RUN}.json"
EARLIER = "20261127T075500031Z-aa11bb22"


def stored(**payment) -> dict:
    """A manifest as ingest writes it at KEY, its payment entry's fields replaced."""
    entry = TableEntry(
        files=(DataFile(f"payment/2026/11/27/{RUN}-00000.jsonl", 2, 512),),
        deleted=(DataFile(f"payment/2026/11/27/{RUN}-deleted-00000.jsonl", 1, 59),),
        sweep=SweepState(f"_sweeps/payment/2026/11/27/{EARLIER}.keys.gz", 9, EARLIER,
                         datetime(2026, 11, 27, 7, 55)),
        captured_keys=f"_sweeps/payment/2026/11/27/{RUN}-captured.keys.gz").to_json()
    return IngestManifest(run_id=RUN, started_at="s", finished_at="f",
                          previous_manifest=f"_manifests/2026/11/27/{EARLIER}.json",
                          tables={"payment": TableEntry()}).to_json() | {
        "tables": {"payment": {**entry, **payment}}}


def test_a_stored_manifest_naming_only_its_own_run_s_objects_is_read():
    manifest = IngestManifest.read(stored(), KEY)
    assert manifest.table("payment").sweep.run_id == EARLIER


FORGED_SWEEP = {"key": "_manifests/2026/11/27/20261127T075500031Z-aa11bb22.json", "keys": 9,
                "run_id": EARLIER, "swept_at": "2026-11-27T07:55:00.000"}


@pytest.mark.parametrize("change, message", [
    ({"previous_manifest": KEY}, "previous_manifest"),
    ({"previous_manifest": "_manifests/2026/11/28/20261128T000000000Z-ff.json"},
     "previous_manifest"),
    ({"previous_manifest": f"_manifests/2026/11/27/{EARLIER}.json\n"}, "previous_manifest"),
    ({"run_id": EARLIER}, "is not the run its key names"),
    ({"payment": {"sweep": FORGED_SWEEP}}, "key sweep of payment"),
    ({"payment": {"sweep": {**FORGED_SWEEP,
                            "key": f"_sweeps/staff/2026/11/27/{EARLIER}.keys.gz"}}},
     "key sweep of payment"),
    ({"payment": {"sweep": {**FORGED_SWEEP, "run_id": "20261127T090000000Z-ff",
                            "key": "_sweeps/payment/2026/11/27/20261127T090000000Z-ff.keys.gz"}}},
     "at or before this one"),
    ({"payment": {"captured_keys": f"_sweeps/payment/2026/11/27/{EARLIER}-captured.keys.gz"}},
     "written by this run"),
    ({"payment": {"captured_keys": f"_sweeps/payment/2026/11/27/{RUN}.keys.gz"}},
     "written by this run"),
    ({"payment": {"files": [{"key": f"staff/2026/11/27/{RUN}-00000.jsonl", "rows": 1}]}},
     "written by this run"),
    ({"payment": {"deleted_files": [{"key": "../etc/passwd", "rows": 1}]}},
     "written by this run"),
])
def test_a_stored_manifest_naming_anything_else_is_refused_naming_it(change, message):
    document = stored(**change.pop("payment", {}))
    document.update(change)
    with pytest.raises(ManifestError, match=message) as caught:
        IngestManifest.read(document, KEY)
    assert KEY in str(caught.value)


def test_the_time_the_floor_is_held_since_round_trips_and_older_manifests_read_without_it():
    manifest = IngestManifest(
        run_id="20261127T080000000Z-aa", started_at="s", finished_at="f", previous_manifest=None,
        tables={}, snapshot=Snapshot(740, 745, (740,)), database_time="2026-11-27T08:00:00.001",
        floor_held_since=datetime(2026, 11, 27, 7, 10, 0, 5000))
    document = manifest.to_json()
    assert document["floor_held_since"] == "2026-11-27T07:10:00.005"
    assert IngestManifest.parse(document) == manifest
    del document["floor_held_since"]
    assert IngestManifest.parse(document).floor_held_since is None
    assert "floor_held_since" not in replace(manifest, floor_held_since=None).to_json()


def test_table_definitions_round_trip_and_older_manifests_read_without_them():
    manifest = IngestManifest(
        run_id="20261127T080000000Z-aa", started_at="s", finished_at="f", previous_manifest=None,
        tables={}, snapshot=Snapshot(740, 745), database_time="2026-11-27T08:00:00.001",
        definitions={"address": "0123456789abcdef", "payment": "fedcba9876543210"})
    document = manifest.to_json()
    assert document["definitions"] == {"address": "0123456789abcdef",
                                       "payment": "fedcba9876543210"}
    assert IngestManifest.parse(document) == manifest
    del document["definitions"]
    assert IngestManifest.parse(document).definitions is None
    assert "definitions" not in replace(manifest, definitions=None).to_json()


@pytest.mark.parametrize("definitions, message", [
    ({"pg_authid": "0123456789abcdef"}, "outside the contract"),
    ({"address": "0123456789ABCDEF"}, "not fingerprints"),
    ({"address": None}, "not fingerprints"),
    (["address"], "must be an object"),
])
def test_table_definitions_that_are_not_fingerprints_of_our_tables_are_refused(
        definitions, message):
    document = {**V1, "format": INGEST_FORMAT, "tables": {}, "definitions": definitions}
    with pytest.raises(ManifestError, match=message):
        IngestManifest.parse(document)


@pytest.mark.parametrize("damage, message", [
    (lambda document: document.pop("run_id"), "malformed totes.ingest/2 manifest: KeyError"),
    (lambda document: document.update(format="other/1"), "format 'other/1' is not one"),
    (lambda document: document["tables"]["payment"].update(rows="x", files="x"), "malformed"),
])
def test_a_stored_manifest_that_does_not_parse_is_refused_naming_its_key(damage, message):
    document = stored()
    damage(document)
    with pytest.raises(ManifestError, match=message) as caught:
        IngestManifest.read(document, KEY)
    assert str(caught.value).startswith(f"{KEY}: ")
