"""Which rows a run reads: 64-bit snapshots against 32-bit row xids, across wraparound."""
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from totes.capture import (XID_MODULUS, Snapshot, SnapshotFormatError, SourceIdentity,
                           TableCursor, full_xid, nearest_xid, resync_reason,
                           restarted_since_written, xmin_window)
from totes.extract import ReadPoint
from totes.manifest import IngestManifest
from totes.snapshot_capture import floor_held_since

EPOCH = XID_MODULUS


def test_a_snapshot_round_trips_in_postgres_notation():
    assert Snapshot.parse("744:750:744,747") == Snapshot(744, 750, (744, 747))
    assert str(Snapshot(744, 750, (744, 747))) == "744:750:744,747"
    assert str(Snapshot.parse("9:9:")) == "9:9:"


@pytest.mark.parametrize("text", ["", "1:2", "a:b:", "5:4:", "3:9:10", "0:0:"])
def test_a_malformed_snapshot_is_refused(text):
    with pytest.raises(SnapshotFormatError):
        Snapshot.parse(text)


def read(floor: Snapshot, current: Snapshot, xid64: int) -> bool:
    """Whether a row written by ``xid64`` is read, through its 32-bit xmin as the row has it."""
    return xmin_window(floor, current).contains(xid64 % XID_MODULUS)


def test_rows_written_after_the_previous_snapshot_are_read_and_older_ones_not():
    floor, current = Snapshot(100, 105, (100, 103)), Snapshot(120, 120)
    assert [xid for xid in range(90, 120) if read(floor, current, xid)] == list(range(100, 120))


def test_a_row_written_in_a_savepoint_of_a_transaction_open_at_the_snapshot_is_read():
    # Transaction 100 was open; its subtransaction 102 is not in the xip list, yet must be read.
    floor = Snapshot(100, 105, (100,))
    assert read(floor, Snapshot(130, 130), 102)


def test_the_window_is_exact_across_an_epoch_boundary():
    floor = Snapshot(EPOCH - 5, EPOCH - 2, (EPOCH - 5,))
    current = Snapshot(EPOCH + 10, EPOCH + 10)
    # PostgreSQL never assigns the special 32-bit xids 0, 1 and 2 of a new epoch.
    assigned = [xid for xid in range(EPOCH - 40, EPOCH + 10) if xid % EPOCH >= 3]
    read_xids = [xid for xid in assigned if read(floor, current, xid)]
    assert read_xids == [*range(EPOCH - 5, EPOCH), *range(EPOCH + 3, EPOCH + 10)]


def test_the_window_is_exact_in_a_later_epoch():
    floor, current = Snapshot(7 * EPOCH + 3, 7 * EPOCH + 3), Snapshot(7 * EPOCH + 9, 7 * EPOCH + 9)
    assert [x for x in range(7 * EPOCH - 5, 7 * EPOCH + 9) if read(floor, current, x)] == list(
        range(7 * EPOCH + 3, 7 * EPOCH + 9))


def test_frozen_and_bootstrap_xids_are_always_old():
    window = xmin_window(Snapshot(3, 3), Snapshot(EPOCH + 5, EPOCH + 5))
    assert not window.contains(1) and not window.contains(2)
    assert window.contains(3)


def test_a_frozen_row_whose_raw_xmin_aliases_a_recent_xid_is_read_again_never_skipped():
    # Written 2^32 + 2 transactions ago: its 32-bit xmin looks like xid current - 2.
    floor, current = Snapshot(EPOCH + 100, EPOCH + 100), Snapshot(EPOCH + 110, EPOCH + 110)
    assert read(floor, current, 108)  # xid 108 of epoch 0: same 32 bits as EPOCH + 108


def test_a_snapshot_from_the_future_is_refused():
    with pytest.raises(SnapshotFormatError, match="same database"):
        xmin_window(Snapshot(500, 500), Snapshot(100, 100))


def test_full_xid_rebuilds_the_epoch_of_a_visible_row():
    current = Snapshot(3 * EPOCH + 10, 3 * EPOCH + 10)
    assert full_xid(5, current) == 3 * EPOCH + 5
    assert full_xid(EPOCH - 1, current) == 3 * EPOCH - 1


def test_nearest_xid_places_a_transaction_begun_after_the_snapshot_ahead_of_it():
    current = Snapshot(3 * EPOCH + 10, 3 * EPOCH + 10)
    assert nearest_xid(12, current) == 3 * EPOCH + 12
    assert nearest_xid(5, current) == 3 * EPOCH + 5
    assert nearest_xid(EPOCH - 1, current) == 3 * EPOCH - 1
    assert full_xid(12, current) == 2 * EPOCH + 12   # full_xid reads it as 2^32 xids old


def test_a_snapshot_sees_exactly_the_transactions_ended_before_it():
    snapshot = Snapshot(100, 110, (103,))
    assert [xid for xid in range(98, 113) if snapshot.sees(xid)] == [
        98, 99, 100, 101, 102, 104, 105, 106, 107, 108, 109]


def test_a_complete_pass_moves_the_floor_to_the_snapshot_read():
    read_at = Snapshot(50, 52)
    assert TableCursor(since=Snapshot(10, 10)).after_pass(read_at, cut_at=None) == TableCursor(
        since=read_at)


def test_a_cut_pass_keeps_its_floor_and_remembers_where_and_when_it_stopped():
    floor = Snapshot(10, 10)
    cut = TableCursor(since=floor).after_pass(Snapshot(50, 52), cut_at=700)
    assert cut == TableCursor(since=floor, resume_after=700, resume_since=Snapshot(50, 52))
    again = cut.after_pass(Snapshot(80, 80), cut_at=900)
    assert again == TableCursor(since=floor, resume_after=900, resume_since=Snapshot(50, 52))
    # When the pass ends, the OLDER snapshot it had reached below the cut is the new floor.
    assert again.after_pass(Snapshot(99, 99), cut_at=None) == TableCursor(since=Snapshot(50, 52))


def test_a_cursor_round_trips_through_its_manifest_fields():
    from datetime import datetime
    cursor = TableCursor(since=None, since_last_updated=datetime(2024, 11, 15, 14, 0, 0, 120000),
                         resume_after=3, resume_since=Snapshot(5, 9, (6,)))
    assert TableCursor.from_json(cursor.to_json()) == cursor
    assert TableCursor.from_json({}) == TableCursor()


STARTED = "2026-11-27T08:00:00.123456Z"
PRIMARY = SourceIdentity("7441281470123456789", 1, STARTED)


@pytest.mark.parametrize("source, current, expected", [
    (PRIMARY, Snapshot(900, 905), None),
    (SourceIdentity(), Snapshot(900, 905), None),         # identity unreadable: xmax decides
    (PRIMARY, Snapshot(800, 800), "went back from 850 to 800"),
    (SourceIdentity(), Snapshot(800, 800), "went back from 850 to 800"),
    (SourceIdentity("7441281470123456789", 2), Snapshot(900, 905), "timeline changed from 1 to 2"),
    (SourceIdentity("7000000000000000001", 1), Snapshot(900, 905), "another cluster"),
    # A cold backup or storage snapshot restored keeps the identifier and the timeline; once
    # its counter has passed the previous run's, only the server's new start tells.
    (SourceIdentity("7441281470123456789", 1, "2026-11-27T09:00:00.000001Z"),
     Snapshot(900, 905), "restarted"),
    (SourceIdentity("7441281470123456789", 1, None), Snapshot(900, 905), None),
])
def test_a_source_with_another_identity_or_an_earlier_xmax_needs_a_resync(
        source, current, expected):
    reason = resync_reason(Snapshot(840, 850, (845,)), PRIMARY, current, source)
    assert reason is None if expected is None else expected in reason


def test_a_first_run_or_a_manifest_without_identity_never_resyncs_on_identity():
    assert resync_reason(None, None, Snapshot(5, 5), PRIMARY) is None
    assert resync_reason(Snapshot(840, 850), None, Snapshot(900, 905), PRIMARY) is None


RESTARTED = "2026-11-27T09:00:00.000001Z"
AT_RESTART = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("recorded, source, written, expected", [
    # A restore starts the server after the last manifest was written.
    (PRIMARY, replace(PRIMARY, started=RESTARTED), AT_RESTART - timedelta(minutes=5), True),
    # A forged or stray manifest recording another start, written after the server started.
    (PRIMARY, replace(PRIMARY, started=RESTARTED), AT_RESTART + timedelta(minutes=5), False),
    # Within the margin (the clocks' skew), a restart is believed: a restore is never missed.
    (PRIMARY, replace(PRIMARY, started=RESTARTED), AT_RESTART + timedelta(seconds=1), True),
    (PRIMARY, replace(PRIMARY, started=RESTARTED), AT_RESTART + timedelta(seconds=3), False),
    # A manifest from another cluster: no restore of this one explains it.
    (replace(PRIMARY, system_identifier="7000000000000000001"),
     replace(PRIMARY, started=RESTARTED), AT_RESTART - timedelta(minutes=5), False),
    (PRIMARY, PRIMARY, AT_RESTART - timedelta(days=5), False),   # the same start: no restart
    # A standby promoted without a restart: its start is older, its timeline later.
    (PRIMARY, SourceIdentity("7441281470123456789", 2, "2026-11-01T00:00:00.000000Z"),
     AT_RESTART, True),
    (replace(PRIMARY, timeline=2), replace(PRIMARY, started=RESTARTED),
     AT_RESTART + timedelta(minutes=5), False),   # an earlier timeline is no promotion
    (PRIMARY, replace(PRIMARY, started=None), AT_RESTART - timedelta(days=5), False),
    (None, replace(PRIMARY, started=RESTARTED), AT_RESTART - timedelta(days=5), False),
])
def test_a_restart_is_believed_only_on_a_start_after_s3_stored_the_manifest_or_a_later_timeline(
        recorded, source, written, expected):
    assert restarted_since_written(recorded, source, lambda: written) is expected


def test_s3_is_not_asked_when_the_manifest_records_the_servers_own_start():
    def unasked():
        raise AssertionError("S3 asked on a run with no restart recorded")

    assert restarted_since_written(PRIMARY, PRIMARY, unasked) is False


def _manifest(snapshot: Snapshot, at: str, held_since: datetime | None = None) -> IngestManifest:
    return IngestManifest(run_id="r", started_at="s", finished_at="f", previous_manifest=None,
                          tables={}, snapshot=snapshot, database_time=at,
                          floor_held_since=held_since)


def _point(snapshot: Snapshot, at: datetime) -> ReadPoint:
    return ReadPoint(snapshot, at)


def test_a_floor_found_again_is_held_since_the_earliest_manifest_that_saw_it():
    now = datetime(2026, 12, 6, 9, 0)
    earlier = _manifest(Snapshot(700, 720, (700,)), "2026-12-06T08:55:00.000")
    assert floor_held_since(earlier, _point(Snapshot(700, 790, (700,)), now)) == datetime(
        2026, 12, 6, 8, 55)
    carried = replace(earlier, floor_held_since=datetime(2026, 12, 6, 7, 0))
    assert floor_held_since(carried, _point(Snapshot(700, 790, (700,)), now)) == datetime(
        2026, 12, 6, 7, 0)


def test_a_moved_floor_or_one_that_named_no_running_transaction_proves_nothing():
    now = datetime(2026, 12, 6, 9, 0)
    assert floor_held_since(None, _point(Snapshot(700, 790, (700,)), now)) is None
    moved = _manifest(Snapshot(650, 720, (650,)), "2026-12-06T08:55:00.000")
    assert floor_held_since(moved, _point(Snapshot(700, 790, (700,)), now)) is None
    idle = _manifest(Snapshot(700, 700), "2026-12-06T08:55:00.000")  # xmin = xmax: no holder
    assert floor_held_since(idle, _point(Snapshot(700, 790, (700,)), now)) is None
