"""Operator markers: which revision is in force where, and how stages find their manifests."""
import pytest
from ingest_fixtures import moto_buckets

from totes import storage, supersede
from totes.supersede import Markers, Revision, Segment, Skip

BUCKET = "processed-test"


def key(day: int, minute: int) -> str:
    """An ingest manifest key on 2024-11-<day> at 10:<minute>."""
    stamp = f"202411{day:02d}T10{minute:02d}00000Z"
    return f"_manifests/2024/11/{day:02d}/{stamp}-abcd{minute:04d}.json"


def revision(number: int, start: str) -> Revision:
    return Revision(number=number, from_manifest=start, reason="a transform bug",
                    created_at="2024-11-20T10:00:00.000Z", created_by="arn:ops")


@pytest.fixture
def bucket(monkeypatch):
    """A fresh in-process processed bucket, where markers live."""
    with moto_buckets(monkeypatch, "ingest-test", BUCKET):
        yield BUCKET


def put(bucket: str, *object_keys: str) -> None:
    for object_key in object_keys:
        storage.put_new_json(bucket, object_key, {})


def test_without_markers_every_manifest_is_revision_zero_at_its_own_key():
    markers = Markers()
    assert markers.revision_for(key(1, 0)) == 0
    assert markers.processed_key(key(1, 0)) == key(1, 0)
    assert markers.segments() == [Segment(None, None, 0)]


def test_the_newest_revision_starting_at_or_before_a_manifest_is_in_force():
    markers = Markers((revision(1, key(5, 0)), revision(2, key(10, 0)), revision(3, key(7, 0))))
    assert [markers.revision_for(key(day, 0)) for day in (4, 5, 6, 7, 9, 10, 12)] == [
        0, 1, 1, 3, 3, 3, 3]
    assert markers.processed_key(key(8, 0)) == f"_revisions/0003/{key(8, 0)}"
    assert markers.segments() == [Segment(None, key(5, 0), 0), Segment(key(5, 0), key(7, 0), 1),
                                  Segment(key(7, 0), None, 3)]


def test_an_earlier_start_supersedes_every_revision_after_it():
    markers = Markers((revision(1, key(5, 0)), revision(2, key(3, 0))))
    assert markers.segments() == [Segment(None, key(3, 0), 0), Segment(key(3, 0), None, 2)]


def test_a_skip_applies_to_its_stage_and_revision_only():
    skip = Skip(stage="transform", revision=0, manifest=key(2, 0), reason="unreadable file",
                created_at="t", created_by="arn:ops")
    markers = Markers(skips={("transform", 0, key(2, 0)): skip})
    assert markers.skip("transform", key(2, 0)) == skip
    assert markers.skip("load", key(2, 0)) is None
    assert markers.skip("transform", key(3, 0)) is None
    redone = Markers((revision(1, key(1, 0)),), markers.skips)
    assert redone.skip("transform", key(2, 0)) is None


def test_newest_key_descends_to_the_greatest_key_below_a_bound(bucket):
    put(bucket, key(1, 5), key(1, 7), key(2, 1), key(3, 0))
    assert storage.newest_key(bucket, "_manifests/") == key(3, 0)
    assert storage.newest_key(bucket, "_manifests/", below=key(3, 0)) == key(2, 1)
    assert storage.newest_key(bucket, "_manifests/", below=key(2, 1)) == key(1, 7)
    # the bound sits in a day whose keys are all above it: back up to the day before
    assert storage.newest_key(bucket, "_manifests/", below=key(2, 0)) == key(1, 7)
    assert storage.newest_key(bucket, "_manifests/", below=key(1, 5)) is None
    assert storage.latest_manifest_key(bucket) == key(3, 0)


def test_a_new_revision_continues_after_the_last_manifest_before_it_then_its_own(bucket):
    put(bucket, key(1, 0), key(2, 0), key(3, 0), key(4, 0))
    markers = Markers((revision(1, key(3, 0)),))
    assert markers.newest_processed(bucket) == key(2, 0)
    assert list(markers.processed_after(bucket, None)) == [key(1, 0), key(2, 0)]
    put(bucket, f"_revisions/0001/{key(3, 0)}")
    assert markers.newest_processed(bucket) == key(3, 0)
    assert list(markers.processed_after(bucket, key(1, 0))) == [key(2, 0), key(3, 0)]
    assert list(markers.processed_after(bucket, key(3, 0))) == []


def test_a_revision_in_the_middle_keeps_the_older_output_after_it(bucket):
    put(bucket, key(1, 0), key(2, 0), key(3, 0), f"_revisions/0001/{key(2, 0)}",
        f"_revisions/0002/{key(3, 0)}")
    markers = Markers((revision(1, key(2, 0)), revision(2, key(3, 0))))
    assert list(markers.processed_after(bucket, None)) == [key(1, 0), key(2, 0), key(3, 0)]
    assert markers.newest_processed(bucket) == key(3, 0)
    assert Markers().newest_processed(bucket) == key(3, 0)
    assert Markers((revision(1, key(1, 0)),)).newest_processed(bucket) == key(2, 0)
    assert Markers((revision(3, key(1, 0)),)).newest_processed(bucket) is None


def test_markers_are_written_once_read_back_and_numbered_in_order(bucket):
    first = supersede.declare_revision(bucket, key(2, 0), " bug 17 ", "arn:ops")
    second = supersede.declare_revision(bucket, key(1, 0), "bug 18", "arn:ops")
    skip = supersede.write_skip(bucket, "load", key(3, 0), "corrupt", "arn:ops")
    assert (first.number, second.number, skip.revision) == (1, 2, 2)
    assert first.key == "_supersede/revisions/0001.json" and first.reason == "bug 17"
    assert skip.key == f"_supersede/skips/load/0002/{key(3, 0)}"
    markers = supersede.read_markers(bucket)
    assert markers.revisions == (first, second)
    assert markers.skip("load", key(3, 0)) == skip


@pytest.mark.parametrize("stage, manifest, reason, message", [
    ("audit", key(1, 0), "why", "stage 'audit'"),
    ("load", "_manifests/2024/11/01/x.json", "why", "not an ingest manifest key"),
    ("load", key(1, 0), "  ", "needs a reason"),
])
def test_a_marker_that_means_nothing_is_refused_before_it_is_written(bucket, stage, manifest,
                                                                     reason, message):
    with pytest.raises(supersede.MarkerError, match=message):
        supersede.write_skip(bucket, stage, manifest, reason, "arn:ops")
    assert list(storage.list_keys(bucket, supersede.MARKER_PREFIX)) == []


@pytest.mark.parametrize("marker_key, document, message", [
    ("_supersede/revisions/0001.json", b"{", "not JSON"),
    ("_supersede/revisions/0001.json", {"format": "other"}, "not a totes.supersede/1 marker"),
    ("_supersede/revisions/0001.json", {"format": "totes.supersede/1", "kind": "revision"},
     "malformed marker: no field 'reason'"),
    ("_supersede/revisions/0001.json", {**revision(1, key(1, 0)).to_json(), "number": "1"},
     "revision '1' is not a whole number"),
    ("_supersede/revisions/0002.json", revision(1, key(1, 0)).to_json(), "belongs at"),
    ("_supersede/revisions/0001.json", {**revision(1, key(1, 0)).to_json(), "kind": "redo"},
     "unknown kind 'redo'"),
])
def test_a_malformed_marker_stops_the_stages_naming_its_key(bucket, marker_key, document,
                                                            message):
    if isinstance(document, bytes):
        storage.put_new_object(bucket, marker_key, document, "application/json")
    else:
        storage.put_new_json(bucket, marker_key, document)
    with pytest.raises(supersede.MarkerError, match=message) as raised:
        supersede.read_markers(bucket)
    assert marker_key in str(raised.value)


def test_revision_numbers_with_a_gap_are_refused(bucket):
    storage.put_new_json(bucket, "_supersede/revisions/0002.json",
                         revision(2, key(1, 0)).to_json())
    with pytest.raises(supersede.MarkerError, match=r"without gaps; found \[2\]"):
        supersede.read_markers(bucket)


def test_two_people_declaring_the_same_revision_at_once_cannot_both_win(bucket, monkeypatch):
    storage.put_new_json(bucket, "_supersede/revisions/0001.json",
                         revision(1, key(1, 0)).to_json())
    monkeypatch.setattr(supersede, "read_markers", lambda _bucket: Markers())
    with pytest.raises(storage.ObjectAlreadyExistsError):
        supersede.declare_revision(bucket, key(2, 0), "bug", "arn:other")


def test_the_release_command_names_stage_manifest_and_bucket():
    command = supersede.release_command("load", key(1, 0), "b")
    assert command.startswith(f"totes supersede skip --stage load --manifest {key(1, 0)} ")
    assert "--processed-bucket b" in command
