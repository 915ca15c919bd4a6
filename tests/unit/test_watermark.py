from datetime import datetime, timedelta, timezone

import pytest

from totes import keys
from totes.ingest import TableExtract, WrittenFile, build_manifest, utc_text
from totes.source import SOURCE_TABLES
from totes.watermark import (ManifestFormatError, TableWatermark, WatermarkAdvance,
                             states_from_manifest)

OVERLAP = timedelta(minutes=15)
T0 = datetime(2024, 11, 15, 14, 0, 0, 120000)


def minutes(n):
    return T0 + timedelta(minutes=n)


def test_first_run_reads_everything_and_writes_every_version():
    state = TableWatermark()
    assert state.since(OVERLAP) is None
    assert state.is_new(1, T0)


def test_later_runs_reread_the_overlap_window_behind_the_watermark():
    assert TableWatermark(minutes(30)).since(OVERLAP) == minutes(15)
    assert TableWatermark(minutes(30)).since(timedelta(0)) == minutes(30)


def test_versions_already_written_are_skipped_but_new_versions_of_the_same_row_are_not():
    state = TableWatermark(minutes(30), frozenset({(7, minutes(30))}))
    assert not state.is_new(7, minutes(30))
    assert state.is_new(7, minutes(31))
    assert state.is_new(8, minutes(30))


def test_advance_keeps_only_versions_inside_the_window_of_the_new_watermark():
    previous = TableWatermark(minutes(10), frozenset({(1, minutes(0)), (2, minutes(10))}))
    advance = WatermarkAdvance(previous, OVERLAP)
    advance.add([(3, minutes(12)), (4, minutes(20))])
    advance.add([(5, minutes(26))])

    state = advance.result()

    assert state.watermark == minutes(26)
    assert state.recent_versions == {(3, minutes(12)), (4, minutes(20)), (5, minutes(26))}


def test_a_late_commit_older_than_the_watermark_keeps_the_watermark_and_is_remembered():
    previous = TableWatermark(minutes(30), frozenset({(1, minutes(30))}))
    advance = WatermarkAdvance(previous, OVERLAP)
    advance.add([(2, minutes(25))])

    assert advance.result() == TableWatermark(
        minutes(30), frozenset({(1, minutes(30)), (2, minutes(25))}))


def test_window_memory_is_bounded_by_the_overlap_not_the_rows_written():
    advance = WatermarkAdvance(TableWatermark(), timedelta(seconds=10))
    advance.add((key, T0 + timedelta(seconds=key)) for key in range(100_000))

    assert len(advance._window) == 11
    assert advance.result().recent_versions == {
        (key, T0 + timedelta(seconds=key)) for key in range(99_989, 100_000)}


def test_the_window_includes_both_ends_so_the_next_read_sees_nothing_unremembered():
    advance = WatermarkAdvance(TableWatermark(), OVERLAP)
    advance.add([(1, minutes(0)), (2, minutes(1)), (3, minutes(16))])

    state = advance.result()

    assert state.since(OVERLAP) == minutes(1)
    assert state.recent_versions == {(2, minutes(1)), (3, minutes(16))}


def test_without_overlap_the_versions_at_the_watermark_are_still_remembered():
    advance = WatermarkAdvance(TableWatermark(), timedelta(0))
    advance.add([(1, minutes(0)), (2, minutes(5)), (3, minutes(5))])

    assert advance.result() == TableWatermark(minutes(5), frozenset({(2, minutes(5)),
                                                                     (3, minutes(5))}))


def test_a_run_that_writes_nothing_keeps_the_previous_state():
    previous = TableWatermark(minutes(30), frozenset({(1, minutes(30))}))
    assert WatermarkAdvance(previous, OVERLAP).result() == previous
    assert WatermarkAdvance(TableWatermark(), OVERLAP).result() == TableWatermark()


def test_state_survives_the_manifest_json_round_trip_with_milliseconds():
    state = TableWatermark(minutes(30), frozenset({(2, minutes(30)), (1, minutes(29))}))
    fields = state.to_json()
    assert fields == {"watermark": "2024-11-15T14:30:00.120",
                      "recent_versions": [[1, "2024-11-15T14:29:00.120"],
                                          [2, "2024-11-15T14:30:00.120"]]}
    assert TableWatermark.from_json(fields) == state
    assert TableWatermark.from_json({"watermark": None, "recent_versions": []}) == (
        TableWatermark())


def test_no_manifest_means_every_table_starts_from_nothing():
    assert states_from_manifest(None) == {table: TableWatermark() for table in SOURCE_TABLES}


def test_a_table_missing_from_the_manifest_is_extracted_in_full():
    manifest = {"format": "totes.ingest/1", "tables": {
        "staff": {"watermark": "2024-11-15T14:30:00.120", "recent_versions": []}}}
    states = states_from_manifest(manifest)
    assert states["staff"].watermark == minutes(30)
    assert states["payment"] == TableWatermark()


def test_a_manifest_of_another_format_is_refused():
    with pytest.raises(ManifestFormatError, match="totes.ingest/2"):
        states_from_manifest({"format": "totes.ingest/2", "run_id": "x", "tables": {}})


def test_a_built_manifest_lists_every_table_and_carries_the_state_forward():
    run = keys.RunId("20241115T142009123Z", "3f9a1c2e")
    state = TableWatermark(minutes(19), frozenset({(11188, minutes(19))}))
    extracts = [TableExtract(table, (), TableWatermark(), 0) for table in SOURCE_TABLES
                if table != "sales_order"]
    extracts.append(TableExtract("sales_order", (
        WrittenFile("sales_order/2024/11/15/20241115T142009123Z-3f9a1c2e-00000.jsonl", 2, 812),
    ), state, 1))
    finished = datetime(2024, 11, 15, 14, 20, 11, 456789, tzinfo=timezone.utc)

    manifest = build_manifest(run, "_manifests/prev.json", OVERLAP, extracts, finished)

    assert manifest["started_at"] == "2024-11-15T14:20:09.123Z"
    assert manifest["finished_at"] == "2024-11-15T14:20:11.456Z"
    assert manifest["overlap_minutes"] == 15 and manifest["previous_manifest"] == (
        "_manifests/prev.json")
    assert set(manifest["tables"]) == set(SOURCE_TABLES)
    assert manifest["tables"]["sales_order"]["rows"] == 2
    assert manifest["tables"]["staff"] == {
        "rows": 0, "files": [], "truncated": False, "watermark": None, "recent_versions": []}
    assert manifest["complete"] is True
    assert states_from_manifest(manifest)["sales_order"] == state


def test_a_table_a_truncated_run_did_not_reach_keeps_its_state_and_marks_the_run_incomplete():
    run = keys.RunId("20241115T142009123Z", "3f9a1c2e")
    state = TableWatermark(minutes(19), frozenset({(7, minutes(19))}))
    waiting = TableExtract.not_reached("payment", state)

    manifest = build_manifest(run, None, OVERLAP, [waiting], datetime.now(timezone.utc))

    assert manifest["complete"] is False
    assert manifest["tables"]["payment"] == {
        "rows": 0, "files": [], "truncated": True, "watermark": "2024-11-15T14:19:00.120",
        "recent_versions": [[7, "2024-11-15T14:19:00.120"]]}
    assert states_from_manifest(manifest)["payment"] == state


def test_manifest_times_are_utc_whatever_the_zone_of_the_clock():
    plus_one = timezone(timedelta(hours=1))
    assert utc_text(datetime(2024, 11, 15, 15, 0, 0, 5000, tzinfo=plus_one)) == (
        "2024-11-15T14:00:00.005Z")
