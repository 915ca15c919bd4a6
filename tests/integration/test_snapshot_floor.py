"""How long the snapshot floor has been held, in seconds: measured where the holder is visible.

The floor is the oldest transaction running when a run's snapshot is taken; every run
reads again what was written since it. Its age in xids grows with the write rate, so
ingest also measures how long its holder has been open (``SnapshotFloorAgeSeconds``,
alarmed). Where the holder's start is hidden (another role's session, a login without
``pg_read_all_stats``), the manifests prove how long the same floor has been held.
A prepared transaction's holder is checked in tests/e2e/test_operator_source.py
(prepared transactions need a server of their own).
"""
import time
import uuid

from totes import ingest, storage
from totes.manifest import IngestManifest
from totes_local import stack

from test_ingest import seed_one_of_each


def floor_seconds(report: ingest.IngestReport) -> list[float]:
    """The values of the floor's age in seconds a run reported (none, or one)."""
    return [metric.value for metric in report.metrics()
            if metric.name == ingest.FLOOR_SECONDS_METRIC]


def hold_the_floor(postgres, dbname: str):
    """A session with a transaction that wrote (so it has an xid), left open."""
    holder = postgres.connect(dbname)
    holder.run("START TRANSACTION")
    holder.run("SELECT pg_current_xact_id()")
    return holder


def test_a_transaction_left_open_is_measured_in_seconds_and_a_free_floor_is_zero(
        source_db, aws, postgres):
    seed_one_of_each(source_db)
    [[dbname]] = source_db.run("SELECT current_database()")
    holder = hold_the_floor(postgres, dbname)
    opened = time.monotonic()
    try:
        time.sleep(2)
        held = ingest.run_ingest()
        elapsed = time.monotonic() - opened
    finally:
        holder.run("COMMIT")
        holder.close()
    freed = ingest.run_ingest()

    [seconds] = floor_seconds(held)
    assert 2 <= seconds <= elapsed + 1
    assert held.floor_age_xids is not None  # the distance in xids, 0 until others write
    assert floor_seconds(freed) == [0.0]


def log_in_without_stats_grant(source_db, aws, postgres) -> str:
    """Point ingest at a new login that may read the tables but not other roles' sessions."""
    [[dbname]] = source_db.run("SELECT current_database()")
    role = f"ingest_{uuid.uuid4().hex[:8]}"
    source_db.run(f'CREATE ROLE "{role}" LOGIN')
    source_db.run(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**postgres.secret(dbname), "username": role}},
                    buckets=())
    return role


def newest_manifest(aws) -> IngestManifest:
    """The manifest the last ingest run committed."""
    bucket = aws["INGEST_BUCKET"]
    key = storage.latest_manifest_key(bucket)
    return IngestManifest.read(storage.read_json(bucket, key), key)


def test_a_holder_the_login_may_not_see_the_start_of_is_not_guessed(source_db, aws, postgres):
    seed_one_of_each(source_db)
    [[dbname]] = source_db.run("SELECT current_database()")
    role = log_in_without_stats_grant(source_db, aws, postgres)
    holder = hold_the_floor(postgres, dbname)  # another role's session: its start is hidden
    try:
        hidden = ingest.run_ingest()
    finally:
        holder.run("COMMIT")
        holder.close()
    source_db.run(f'GRANT pg_read_all_stats TO "{role}"')
    holder = hold_the_floor(postgres, dbname)
    try:
        time.sleep(1)
        granted = ingest.run_ingest()
    finally:
        holder.run("COMMIT")
        holder.close()

    assert floor_seconds(hidden) == [] and hidden.floor_age_xids is not None
    [seconds] = floor_seconds(granted)
    assert seconds >= 1


def test_a_hidden_holder_is_measured_from_the_manifests_growing_run_after_run_until_it_ends(
        source_db, aws, postgres):
    seed_one_of_each(source_db)
    [[dbname]] = source_db.run("SELECT current_database()")
    log_in_without_stats_grant(source_db, aws, postgres)
    holder = hold_the_floor(postgres, dbname)  # another role's session: its start is hidden
    runs, held_since = [], []
    try:
        for _ in range(3):
            source_db.run("UPDATE staff SET last_updated = now()")  # the business goes on
            runs.append(ingest.run_ingest())
            held_since.append(newest_manifest(aws).floor_held_since)
            time.sleep(1.2)
    finally:
        holder.run("COMMIT")
        holder.close()
    source_db.run("UPDATE staff SET last_updated = now()")
    freed = ingest.run_ingest()

    first, second, third = (floor_seconds(run) for run in runs)
    assert first == []  # one sighting proves no age, and the start is hidden
    assert 1 <= second[0] < third[0] and third[0] - second[0] >= 1
    assert held_since[0] is not None and held_since == [held_since[0]] * 3
    assert floor_seconds(freed) == [0.0] and newest_manifest(aws).floor_held_since is None
