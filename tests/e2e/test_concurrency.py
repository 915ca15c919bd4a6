"""Exactly-once without reserved concurrency: every stage run twice at once ends as run once.

The template reserves no concurrency by default, so two invocations of one function
may overlap (a duplicate schedule delivery, an S3 event delivered twice, a person's
invoke during a scheduled run). Two pipelines start from identical sources (same
generator seed and end): the reference runs each stage once, in order; the other
runs two ingests at once, then two transforms of the same manifest event at once,
two loads at once, two audits at once and two publishes at once, each pair in
separate processes released together, as Lambda would run them in separate
containers. After two cycles (the second after the same business activity and
cancellation on both sources) both must hold the same committed rows in their
buckets and the same warehouse. A publish that loses the race to a lake table's
commit fails (a transient error, nothing of it committed twice); one more
scheduled publish then catches up, and the lake must equal the warehouse with
as many snapshots per table as the reference's.
"""
import json
import uuid
from collections import Counter
from datetime import datetime

import pytest

from lake_kit import assert_lake_equals_warehouse, snapshot_ids

from totes import jsonl, keys, storage
from totes.manifest import IngestManifest, ProcessedManifest
from totes.warehouse_schema import TABLES
from totes_local import generator, runner, simulator, stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: the history's end, fixed so that both sources are generated identical.
END = datetime(2026, 11, 2, 18, 0)
#: columns of a deletion version that are the time the sweep found it, per pipeline.
DETECTION_COLUMNS = ("last_updated_date", "last_updated_time")
#: how a publish that lost a race ends: a lake table's commit (the Glue catalog's optimistic
#: check) or a publish record (a conditional write) was the other run's first.
PUBLISH_RACE_LOST = ("PublishConflictError", "ObjectAlreadyExistsError")


class Twin:
    """One pipeline: its source and warehouse databases, buckets and secrets."""

    def __init__(self, postgres, moto_endpoint, database):
        """Generate the source and provision the buckets and secrets of a fresh pipeline."""
        self.postgres = postgres
        self.source, self.warehouse = database("totesys"), database("warehouse")
        conn = postgres.connect(self.source)
        try:
            generator.seed_new(conn, scale=0.02, end=END)
        finally:
            conn.close()
        self.env = {**stack.isolated_environment(moto_endpoint, uuid.uuid4().hex[:8]),
                    "INGEST_DELETE_SWEEP_MINUTES": "0"}
        with stack.environment(self.env):
            stack.provision({self.env["TOTESYS_SECRET_ID"]: postgres.secret(self.source),
                             self.env["WAREHOUSE_SECRET_ID"]: postgres.secret(self.warehouse)},
                            buckets=(self.env["INGEST_BUCKET"], self.env["PROCESSED_BUCKET"],
                                     self.env["LAKE_BUCKET"]),
                            glue_databases={self.env["LAKE_DATABASE"]: self.env["LAKE_BUCKET"]})

    def change_the_source(self):
        """The same business activity and one cancelled order, whichever twin it is."""
        conn = self.postgres.connect(self.source)
        try:
            simulator.simulate(conn, steps=3, seed=7)
            order = conn.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
            simulator.cancel_order(conn, simulator.SALES, order)
        finally:
            conn.close()

    def manifests(self) -> list[str]:
        """The committed ingest manifests, oldest first."""
        with stack.environment(self.env):
            storage.s3_client.cache_clear()
            return [key for key in storage.manifest_keys_after(self.env["INGEST_BUCKET"], None)
                    if keys.parse_manifest_key(key)]

    def committed_rows(self) -> dict[str, Counter]:
        """Every row version the committed manifests list, per table (deletions apart)."""
        bucket, rows = self.env["INGEST_BUCKET"], {}
        with stack.environment(self.env):
            storage.s3_client.cache_clear()
            for key in self.manifests():
                manifest = IngestManifest.parse(storage.read_json(bucket, key))
                for table, entry in manifest.tables.items():
                    found = rows.setdefault(table, Counter())
                    for file in entry.files:
                        body = storage.read_bytes(bucket, file.key)
                        found.update(json.dumps(row, sort_keys=True, default=str)
                                     for row in jsonl.decode_lines(body.splitlines()))
                    found.update(f"deleted {table}" for _ in range(entry.deleted_rows))
        return rows

    def processed_rows(self) -> tuple[list[str], Counter]:
        """The processed manifests' ingest manifests, and the rows they list per table."""
        bucket, rows, sources = self.env["PROCESSED_BUCKET"], Counter(), []
        with stack.environment(self.env):
            storage.s3_client.cache_clear()
            for key in self.manifests():
                processed = ProcessedManifest.parse(storage.read_json(bucket, key))
                sources.append(processed.ingest_manifest)
                for table, output in processed.tables.items():
                    rows[table] += sum(file.rows for file in output.files)
        return sources, rows

    def warehouse_rows(self, sql: str) -> list:
        """The rows of one query of the warehouse (what lake_kit compares the lake with)."""
        conn = self.postgres.connect(self.warehouse)
        try:
            return conn.run(sql)
        finally:
            conn.close()

    def warehouse_tables(self) -> dict[str, list]:
        """Every warehouse table without surrogate keys, deletion versions without their time."""
        conn = self.postgres.connect(self.warehouse)
        try:
            tables = {}
            for table in TABLES:
                names = [name for [name] in conn.run(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
                    "AND column_name NOT LIKE '%%record_id' ORDER BY ordinal_position", t=table)]
                listed = ", ".join(f'"{name}"' for name in names)
                rows = conn.run(f'SELECT {listed} FROM "{table}"')  # nosec B608
                if "is_deleted" in names:
                    hidden = [names.index(column) for column in DETECTION_COLUMNS]
                    deleted = names.index("is_deleted")
                    rows = [[None if row[deleted] and i in hidden else value
                             for i, value in enumerate(row)] for row in rows]
                tables[table] = sorted(rows, key=repr)
            return tables
        finally:
            conn.close()


def run_once(twin: Twin) -> dict:
    """One cycle, every stage invoked once, in order; return the audit's summary."""
    with stack.environment(twin.env):
        storage.s3_client.cache_clear()
        pipeline = runner.LocalPipeline(twin.env["INGEST_BUCKET"])
        pipeline.ingest()
        pipeline.deliver_manifest_events()
        pipeline.load()
        audit = pipeline.audit()
        pipeline.publish()
        return audit


def twice_at_once(twin: Twin, function: str, event: dict) -> list[runner.Outcome]:
    """Invoke ``function`` twice at the same moment with the same event."""
    return runner.invoke_concurrently([(function, event), (function, event)], twin.env)


def run_twice_at_once(twin: Twin, delivered: set[str]) -> dict[str, list[runner.Outcome]]:
    """One cycle, every stage invoked twice at once; return the outcomes per stage."""
    outcomes = {"ingest": twice_at_once(twin, "ingest", runner.scheduled_event("ingest"))}
    outcomes["transform"] = []
    for key in twin.manifests():
        if key not in delivered:
            event = runner.s3_object_created_event(twin.env["INGEST_BUCKET"], key)
            outcomes["transform"] += twice_at_once(twin, "transform", event)
            delivered.add(key)
    outcomes["load"] = twice_at_once(twin, "load", runner.scheduled_event("load"))
    outcomes["audit"] = twice_at_once(twin, "audit", runner.scheduled_event("audit"))
    outcomes["publish"] = twice_at_once(twin, "publish", runner.scheduled_event("publish"))
    return outcomes


def publish_once(twin: Twin) -> dict:
    """The next scheduled publish, alone."""
    with stack.environment(twin.env):
        storage.s3_client.cache_clear()
        return runner.LocalPipeline(twin.env["INGEST_BUCKET"]).publish()


@pytest.fixture
def twins(postgres, moto_endpoint, database):
    """The reference pipeline and the concurrent one, from identical sources."""
    return Twin(postgres, moto_endpoint, database), Twin(postgres, moto_endpoint, database)


def test_every_stage_invoked_twice_at_once_ends_exactly_as_invoked_once(twins):
    reference, concurrent = twins
    delivered: set[str] = set()
    for cycle in range(2):
        if cycle:
            reference.change_the_source()
            concurrent.change_the_source()
        expected_audit = run_once(reference)
        outcomes = run_twice_at_once(concurrent, delivered)

        ingests = outcomes["ingest"]
        assert any(outcome.error is None for outcome in ingests), ingests
        assert all(outcome.error is None or outcome.error.startswith("ConcurrentRunError")
                   for outcome in ingests), ingests
        for stage in ("transform", "load", "audit"):
            assert [outcome.error for outcome in outcomes[stage]] == [None] * len(
                outcomes[stage]), outcomes[stage]
        assert expected_audit["ok"]
        assert [outcome.result["ok"] for outcome in outcomes["audit"]] == [True, True]

        assert concurrent.committed_rows() == reference.committed_rows()
        sources, rows = concurrent.processed_rows()
        assert sources == concurrent.manifests()
        assert rows == reference.processed_rows()[1]
        assert concurrent.warehouse_tables() == reference.warehouse_tables()

        publishes = outcomes["publish"]
        assert any(outcome.error is None for outcome in publishes), publishes
        assert all(outcome.error is None or outcome.error.startswith(PUBLISH_RACE_LOST)
                   for outcome in publishes), publishes
        publish_once(concurrent)  # the next scheduled run publishes what a loser left
        with stack.environment(concurrent.env):
            storage.s3_client.cache_clear()
            assert_lake_equals_warehouse(concurrent)
            concurrent_snapshots = snapshot_ids(concurrent.env)
        with stack.environment(reference.env):
            storage.s3_client.cache_clear()
            reference_snapshots = snapshot_ids(reference.env)
        # One commit per table and manifest, whichever run made it: nothing committed twice.
        assert {name: len(ids) for name, ids in concurrent_snapshots.items()} == {
            name: len(ids) for name, ids in reference_snapshots.items()}
