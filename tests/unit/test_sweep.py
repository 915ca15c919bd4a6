"""Deletes found by a sorted merge of key streams: exact, once each, in flat memory."""
from datetime import datetime, timedelta

import pytest

from totes import sweep


def test_keys_known_before_and_absent_now_are_deleted_once_each_in_order():
    previous_sweep = [[1, 2, 3], [5, 8]]
    captured_since = [[[4, 9]], [[2], [9, 10]]]   # each run's key blocks; 9 captured twice
    present = [[1, 3], [4, 8, 11]]
    assert list(sweep.vanished([previous_sweep, *captured_since], present)) == [2, 5, 9, 10]


def test_a_row_created_captured_and_deleted_between_two_sweeps_is_found():
    assert list(sweep.vanished([[[1, 2]], [[3]]], [[1, 2]])) == [3]


def test_nothing_known_means_nothing_deleted_and_everything_gone_means_all_deleted():
    assert list(sweep.vanished([[]], [[1, 2, 3]])) == []
    assert list(sweep.vanished([[[1, 2]]], [[1, 2]])) == []
    assert list(sweep.vanished([[[1, 2], [7]]], [])) == [1, 2, 7]


def test_an_unsorted_stream_is_refused_rather_than_inventing_deletions():
    with pytest.raises(sweep.SweepOrderError, match="known key stream 0"):
        list(sweep.vanished([[[1, 3, 2]]], [[1, 2, 3]]))
    with pytest.raises(sweep.SweepOrderError, match="known key stream 1"):
        list(sweep.vanished([[[1]], [[5], [4]]], [[1, 2, 3]]))
    with pytest.raises(sweep.SweepOrderError, match="current key list"):
        list(sweep.vanished([[[1, 2, 3]]], [[2, 1, 3]]))


def blocks(keys, size=1000):
    """Cut an ascending key iterator into blocks of ``size``."""
    block = []
    for key in keys:
        block.append(key)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def test_the_merge_holds_one_block_per_stream_however_many_keys_stream_through():
    import tracemalloc
    known = blocks(range(0, 400_000, 2))
    present = blocks(key for key in range(0, 400_000, 2) if key % 1000)
    tracemalloc.start()
    found = sum(1 for _ in sweep.vanished([known], present))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert found == 400
    assert peak < 2_000_000  # 200,000 keys as a set would take over 13 MB


def test_block_lines_round_trip():
    assert sweep.render_block([1, 20, 300]) == b"1,20,300\n"
    assert sweep.render_block([b"4", b"5"]) == b"4,5\n"
    assert sweep.parse_block(b"1,20,300\n") == [1, 20, 300]
    assert sweep.parse_block(b"\n") == []


def test_a_sweep_is_due_first_and_then_once_per_interval():
    at = datetime(2026, 11, 27, 8, 0)
    assert sweep.is_due(None, at, timedelta(minutes=60))
    assert not sweep.is_due(at, at + timedelta(minutes=59), timedelta(minutes=60))
    assert sweep.is_due(at, at + timedelta(minutes=60), timedelta(minutes=60))
    assert sweep.is_due(at, at, timedelta(0))


def test_a_deletion_record_names_the_key_and_the_detection_time():
    line = sweep.deletion_line("payment_id", 7, datetime(2026, 11, 27, 8, 0, 0, 5000))
    assert line == b'{"payment_id": 7, "deleted_at": "2026-11-27T08:00:00.005"}\n'


def test_a_stored_key_list_is_read_within_its_bounds_or_refused_naming_it():
    import gzip
    import io

    from totes.errors import INPUT, kind_of

    def lines(data: bytes, **bounds):
        return list(sweep.key_lines(io.BytesIO(data), "s3://b/_sweeps/k.keys.gz", **bounds))

    assert lines(gzip.compress(b"1,2\n\n3\n")) == [b"1,2\n", b"3\n"]
    for data, bounds, problem in [
        (gzip.compress(b"1,2,3,4\n"), {"max_line": 4}, "a line longer than 4 bytes"),
        (gzip.compress(b"1,2\n" * 10), {"max_total": 20}, "more than 20 bytes"),
        (b"not gzip at all", {}, "not a gzip key list"),
        (gzip.compress(b"1,2\n")[:-6], {}, "not a gzip key list"),
    ]:
        with pytest.raises(sweep.KeyListError, match=problem) as caught:
            lines(data, **bounds)
        assert "_sweeps/k.keys.gz" in str(caught.value) and kind_of(caught.value) == INPUT
    with pytest.raises(sweep.KeyListError, match="not comma-separated keys"):
        list(sweep.parse_blocks([b"1,2\n", b"drop table\n"], "s3://b/k"))
    assert sweep.MAX_LINE_BYTES >= len(sweep.render_block([-2**63] * sweep.BLOCK_KEYS))


def test_a_spooled_key_list_is_gzip_at_the_fastest_level_and_reads_back_whole():
    spool = sweep.KeySpool()
    try:
        for block in ([1, 2, 3], [5, 8]):
            spool.write(sweep.render_block(block))
        spool.finish()
        spool.file.seek(0)
        header = spool.file.read(10)
        assert header[:2] == b"\x1f\x8b" and header[8] == 4   # XFL 4: the fastest level
        assert list(spool.blocks()) == [[1, 2, 3], [5, 8]] and spool.keys == 5
    finally:
        spool.close()


def test_keys_held_for_the_deletion_files_wait_on_disk_in_order_not_in_memory():
    import tracemalloc
    tracemalloc.start()
    held = sweep.held_on_disk(range(0, 1_000_000, 2))
    taken = tracemalloc.get_traced_memory()[1]
    assert next(held) == 0 and sum(1 for _ in held) == 499_999
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert taken < 2_000_000 and peak < 2_000_000   # the 500,000 keys in memory: 4 MB or more
    assert list(sweep.held_on_disk(iter([5, 7, 11]), block=2)) == [5, 7, 11]
    assert list(sweep.held_on_disk(iter([]))) == []
