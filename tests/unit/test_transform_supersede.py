"""Transform under an operator's markers: a stuck manifest released, output redone."""
import json

import pytest
from ingest_fixtures import full_batch, moto_buckets, row, write_run

from totes import load, stage, storage, supersede, transform
from totes.manifest import ManifestError

INGEST, PROCESSED = "ingest-test", "processed-test"
SETTINGS = transform.TransformSettings(ingest_bucket=INGEST, processed_bucket=PROCESSED)
STAMPS = ("20241115T142009123Z", "20241115T142509001Z", "20241115T143010500Z")


@pytest.fixture(autouse=True)
def buckets(monkeypatch):
    """Fresh in-process S3 buckets for every test."""
    with moto_buckets(monkeypatch, INGEST, PROCESSED):
        yield


def run(key: str) -> transform.TransformReport:
    return transform.run_transform(SETTINGS, [key], stage.Deadline.unbounded())


def every_object(bucket: str) -> dict[str, bytes]:
    return {key: storage.read_bytes(bucket, key) for key in storage.list_keys(bucket, "")}


def wedged_sequence():
    """Three runs; the middle one holds a payment no release of transform accepts."""
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run(INGEST, {"payment": [row("payment", payment_date="tomorrow")]},
                       stamp=STAMPS[1])
    third = write_run(INGEST, {"address": [row("address", city="Leeds")]}, stamp=STAMPS[2])
    return first, second, third


def test_a_rejected_manifest_reports_itself_stuck_with_the_command_that_releases_it(caplog):
    first, second, third = wedged_sequence()
    report = transform.TransformReport()
    with pytest.raises(transform.TransformInputError):
        transform.transform_through(SETTINGS, third, report)
    assert report.transformed == [first] and report.stuck == second
    assert ("TransformStuck", 1) in [(m.name, m.value) for m in report.metrics()]
    rejected = next(r for r in caplog.records if r.getMessage().startswith("ingest input"))
    assert rejected.release == supersede.release_command("transform", second, PROCESSED)


def test_a_skip_marker_releases_the_stuck_manifest_and_the_rest_follows(caplog):
    first, second, third = wedged_sequence()
    with pytest.raises(transform.TransformInputError):
        run(third)
    skip = supersede.write_skip(PROCESSED, "transform", second, "bad export, ticket 12", "arn:me")
    report = run(third)
    assert report.response() == {"transformed": [third], "ignored": [], "skipped": [second]}
    assert ("ManifestsSkipped", 1) in [(m.name, m.value) for m in report.metrics()]
    skipped = storage.read_json(PROCESSED, second)
    assert skipped["skipped_by"] == skip.key and skipped["tables"] == {}
    assert skipped["reference"] == storage.read_json(PROCESSED, first)["reference"]
    assert skipped["reference_sha256"] == storage.read_json(PROCESSED, first)["reference_sha256"]
    assert storage.read_json(PROCESSED, third)["tables"]["dim_location"]["rows"] == 1
    assert any(r.getMessage().startswith("manifest skipped by an operator") and
               r.marker == skip.key for r in caplog.records)


def test_a_skip_releases_even_an_ingest_manifest_that_cannot_be_read():
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    broken = "_manifests/2024/11/15/20241115T142509001Z-0badf00d.json"
    storage.put_new_object(INGEST, broken, b"{not json", "application/json")
    with pytest.raises(transform.TransformInputError, match=f"s3://{INGEST}/{broken} is not JSON"):
        run(broken)
    supersede.write_skip(PROCESSED, "transform", broken, "truncated upload", "arn:me")
    assert run(broken).skipped == [broken]
    document = storage.read_json(PROCESSED, broken)
    assert document["ingest_started_at"] == "2024-11-15T14:25:09.001Z"
    assert document["capture"] == {"snapshot": None, "database_time": None}
    assert storage.read_json(PROCESSED, first)["run_id"] != document["run_id"]


def test_transforming_again_writes_a_new_revision_beside_the_old_output_untouched():
    first, second, third = (write_run(INGEST, full_batch(), stamp=stamp) for stamp in STAMPS)
    run(third)
    before = every_object(PROCESSED)
    revision = supersede.declare_revision(PROCESSED, second, "fixed bug 31", "arn:me")
    report = run(third)
    assert report.transformed == [second, third]
    after = every_object(PROCESSED)
    assert {key: after[key] for key in before} == before  # nothing replaced, nothing removed
    redone = storage.read_json(PROCESSED, f"_revisions/0001/{second}")
    assert redone["ingest_manifest"] == second
    assert redone["reference"] != {} and storage.read_json(
        PROCESSED, f"_revisions/0001/{third}")["ingest_manifest"] == third
    assert revision.number == 1
    assert run(third).transformed == []  # done: the revision's newest is the event's


def test_a_skip_at_one_revision_gives_the_manifest_another_chance_in_the_next():
    first, second, third = wedged_sequence()
    supersede.write_skip(PROCESSED, "transform", second, "bad export", "arn:me")
    assert run(third).skipped == [second]
    supersede.declare_revision(PROCESSED, second, "transform now reads it", "arn:me")
    with pytest.raises(transform.TransformInputError, match="payment_date 'tomorrow'"):
        run(third)
    assert json.loads(storage.read_bytes(PROCESSED, second))["skipped_by"]


def chained_with_a_gap():
    """Three runs each naming the one before it, the middle manifest gone from the bucket."""
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run(INGEST, {"address": [row("address", city="York")]}, stamp=STAMPS[1],
                       previous=first)
    third = write_run(INGEST, {"address": [row("address", city="Leeds")]}, stamp=STAMPS[2],
                      previous=second)
    storage.s3_client().delete_object(Bucket=INGEST, Key=second)
    return first, second, third


def test_a_broken_chain_is_stuck_and_the_release_it_logs_names_the_missing_manifest(caplog):
    first, second, third = chained_with_a_gap()
    report = transform.TransformReport()
    with pytest.raises(transform.BrokenChainError, match=f"{third}: its previous manifest "
                                                         f"{second} is not in the bucket"):
        transform.transform_through(SETTINGS, third, report)
    assert report.transformed == [first] and report.stuck == third
    rejected = next(r for r in caplog.records if r.getMessage().startswith("ingest input"))
    assert rejected.release == supersede.release_command("transform", second, PROCESSED)


def test_a_skip_of_a_manifest_gone_for_good_lets_the_chain_pass_over_it():
    first, second, third = chained_with_a_gap()
    with pytest.raises(transform.BrokenChainError):
        run(third)
    supersede.write_skip(PROCESSED, "transform", second, "deleted, no version left", "arn:me")
    assert run(third).response() == {"transformed": [third], "ignored": []}
    # Nothing stands for the missing run in the processed bucket: the load's walk of the
    # ingest manifests does not meet it either.
    assert not list(storage.list_keys(PROCESSED, second))
    assert storage.read_json(PROCESSED, third)["tables"]["dim_location"]["rows"] == 1


def test_a_manifest_of_another_revision_copied_over_a_revisions_key_is_refused_by_readers():
    first, second, third = (write_run(INGEST, full_batch(), stamp=stamp) for stamp in STAMPS)
    run(third)
    supersede.declare_revision(PROCESSED, second, "fixed bug 31", "arn:me")
    run(third)
    redone = f"_revisions/0001/{third}"
    assert storage.read_json(PROCESSED, redone)["revision"] == 1
    assert storage.read_json(PROCESSED, third)["revision"] == 0
    # Revision 0's manifest put back over revision 1's key (a restore, a sync of the
    # prefixes, a hand copy): sealed, and naming only this run's files, but the bug's output.
    old = storage.read_bytes(PROCESSED, third)
    storage.s3_client().put_object(Bucket=PROCESSED, Key=redone, Body=old)  # break-glass
    refused = f"{redone}: written for revision 0, but its key is revision 1's"
    with pytest.raises(load.LoadError, match=refused):
        load._read_manifest(PROCESSED, redone)
    fourth = write_run(INGEST, {}, stamp="20241115T143510000Z")
    transform._COMMITTED.clear()  # a cold container: it reads the newest processed manifest
    with pytest.raises(ManifestError, match=refused):
        run(fourth)  # it would have continued from revision 0's reference snapshots


def test_ingest_capturing_again_after_a_restore_lost_transformed_manifests_is_not_a_broken_chain(
        caplog):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run(INGEST, {}, stamp=STAMPS[1], previous=first)
    run(second)
    storage.s3_client().delete_object(Bucket=INGEST, Key=second)  # a restore to before it
    third = write_run(INGEST, {"address": [row("address", city="Leeds")]}, stamp=STAMPS[2],
                      previous=first)
    assert run(third).transformed == [third]
    assert any(r.getMessage().startswith("ingest captured again") for r in caplog.records)


def test_a_skip_of_a_missing_manifest_still_releases_it_after_a_later_revision(caplog):
    first, second, third = chained_with_a_gap()
    supersede.write_skip(PROCESSED, "transform", second, "deleted, no version left", "arn:me")
    assert run(third).transformed == [first, third]
    # A transform bug fixed later: transform again from the first run, across the gap.
    supersede.declare_revision(PROCESSED, first, "fixed bug 32", "arn:me")
    assert run(third).transformed == [first, third]
    assert any(r.getMessage().startswith("passing over a manifest an operator skipped")
               for r in caplog.records)


def test_a_processed_manifest_of_another_pipeline_ahead_of_the_chain_is_a_broken_chain(caplog):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    run(first)
    # Another stack's processed manifest of a later run, copied in with its key (made here
    # by transforming a run that then leaves the ingestion bucket).
    planted = write_run(INGEST, {}, stamp=STAMPS[2])
    run(planted)
    storage.s3_client().delete_object(Bucket=INGEST, Key=planted)
    second = write_run(INGEST, {}, stamp=STAMPS[1], previous=first)
    third = write_run(INGEST, {"address": [row("address", city="Leeds")]},
                      stamp="20241115T143510000Z", previous=second)
    report = transform.TransformReport()
    with pytest.raises(transform.BrokenChainError, match=f"{second} was never transformed"):
        transform.transform_through(SETTINGS, third, report)
    rejected = next(r for r in caplog.records if r.getMessage().startswith("ingest input"))
    assert rejected.release == "none: see the runbook"  # no skip releases another's manifest
