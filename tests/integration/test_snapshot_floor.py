"""How long the snapshot floor has been held, in seconds: measured where the holder is visible.

The floor is the oldest transaction running when a run's snapshot is taken; every run
reads again what was written since it. Its age in xids grows with the write rate, so
ingest also measures how long its holder has been open (``SnapshotFloorAgeSeconds``,
alarmed). A prepared transaction's holder is checked in tests/e2e/test_operator_source.py
(prepared transactions need a server of their own).
"""
import time
import uuid

from totes import ingest
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


def test_a_holder_the_login_may_not_see_the_start_of_is_not_guessed(source_db, aws, postgres):
    seed_one_of_each(source_db)
    [[dbname]] = source_db.run("SELECT current_database()")
    role = f"ingest_{uuid.uuid4().hex[:8]}"
    source_db.run(f'CREATE ROLE "{role}" LOGIN')
    source_db.run(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**postgres.secret(dbname), "username": role}},
                    buckets=())
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
