r"""A first deploy's database set-up, run from the docs themselves, then the whole pipeline on it.

A new user creates the logins with the SQL blocks of docs/deploy.md ("The warehouse
database and its login", "The totesys login") and docs/ingest.md (the optional
``pg_read_all_stats`` grant, the ``pg_control_*`` EXECUTE grant, the logical-capture
set-up). These tests read those blocks from the docs as they are, run them as the
administrator of a fresh cluster (only the password placeholder is filled in, and psql's
``\connect`` becomes a new connection), then run ingest, transform, load, publish and the
audit as the handlers do, with secrets naming exactly those two logins: two cycles, with
inserts, an update and a delete between. A statement removed from the docs (or a privilege
the code starts to need) fails them. The embedded server trusts local connections, so the
password is not checked; the role is what each connection runs as.
"""
import re
import secrets
import subprocess  # nosec B404: rm -rf of the test's own throw-away cluster
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from pipeline_kit import PipelineUnderTest
from test_operator_source import DBNAME, Cluster, copy_of, emitted

from totes import storage
from totes.manifest import IngestManifest
from totes_local import generator, simulator, stack
from totes_local.runner import LocalPipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: the docs' placeholder for the password a user chooses.
PASSWORD_PLACEHOLDER = "'…'"
#: psql's meta-command that the warehouse block uses to move into the new database.
CONNECT = re.compile(r"^\\connect\s+(\w+)\s*$")
INGEST_LOGIN, LOAD_LOGIN = "totes_ingest", "totes_load"


def sql_block(doc: str, heading: str, after: str = "") -> str:
    """The first ```sql block under the line ``heading`` (and after the text ``after``)."""
    text = (DOCS / doc).read_text()
    start = text.index(f"\n{heading}\n")
    if after:
        start = text.index(after, start)
    match = re.compile(r"```sql\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no sql block under {heading!r} in {doc}"
    return match.group(1)


def inline_sql(doc: str, starts: str) -> str:
    """The inline code span of ``doc`` that starts with ``starts`` (one statement)."""
    [statement] = re.findall(rf"`({re.escape(starts)}[^`]*)`", (DOCS / doc).read_text())
    return statement


def privileges_block() -> str:
    """ingest.md's EXECUTE grant on the functions that read the source's identity and WAL."""
    return sql_block("ingest.md", "## Restores, failovers and replicas: re-syncs",
                     after="**Privileges.**")


def statements(block: str) -> list[str]:
    r"""Split a doc's block into its statements and psql ``\connect`` lines, comments dropped."""
    found, pending = [], []
    for line in block.splitlines():
        code = line.split("--", 1)[0].rstrip()
        if CONNECT.match(code):
            found.append(code)
            continue
        if code:
            pending.append(code)
        if code.endswith(";"):
            found.append("\n".join(pending))
            pending = []
    assert not pending, f"a statement without its semicolon: {pending}"
    return found


class Administrator:
    """The server's administrator running the docs' statements, as a user would in psql."""

    def __init__(self, cluster: Cluster, password: str) -> None:
        """Run as the cluster's superuser; fill the docs' placeholder with ``password``."""
        self.cluster, self.password = cluster, password

    def run(self, block: str, database: str = "postgres") -> None:
        """Run every statement of ``block`` in order, connected to ``database`` to begin with."""
        conn = self.cluster.postgres.connect(database)
        try:
            for statement in statements(block):
                connect = CONNECT.match(statement)
                if connect:
                    conn.close()
                    conn = self.cluster.postgres.connect(connect.group(1))
                    continue
                assert statement.count(PASSWORD_PLACEHOLDER) <= 1
                conn.run(statement.replace(PASSWORD_PLACEHOLDER, f"'{self.password}'"))
        finally:
            conn.close()


def harden(made: Cluster) -> None:
    """Take from PUBLIC what stock PostgreSQL gives every login, as hardening guides do.

    Each database's ``CONNECT`` and ``TEMPORARY``, its schema ``public``, and the
    ``pg_control_*`` and WAL functions ingest reads the source's identity with. A
    login then has exactly what the docs' statements granted it, so the pipeline
    fails if one of them is missing, including those stock defaults would cover.
    """
    for database in (DBNAME, "warehouse"):
        conn = made.postgres.connect(database)
        try:
            conn.run(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
            conn.run("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        finally:
            conn.close()
    with made.session() as conn:
        conn.run("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system(), "
                 "pg_catalog.pg_control_checkpoint(), pg_catalog.pg_walfile_name(pg_lsn), "
                 "pg_catalog.pg_current_wal_lsn() FROM PUBLIC")


@pytest.fixture
def first_deploy(aws, blank_cluster) -> Iterator[tuple[Administrator, Cluster, PipelineUnderTest]]:
    """A fresh cluster with a generated totesys and the docs' warehouse and totesys logins.

    The secrets name the two logins, as step 1 of deploy.md stores them. Stopped and
    deleted at the end, whatever happened.
    """
    root = Path(tempfile.mkdtemp(prefix="totes-first-deploy-"))
    root.chmod(0o755)
    try:
        made = copy_of(blank_cluster, root / "data")
        admin = Administrator(made, secrets.token_urlsafe(16))
        admin.run(sql_block("deploy.md", "### The warehouse database and its login"))
        generator.recreate_empty_source(made.postgres, DBNAME)
        with made.session() as conn:
            generator.generate(conn, scale=0.02)
        admin.run(sql_block("deploy.md", "### The totesys login"), DBNAME)
        harden(made)

        def login(role: str, database: str) -> dict[str, Any]:
            return {**made.postgres.secret(database), "username": role,
                    "password": admin.password}

        stack.provision({aws["TOTESYS_SECRET_ID"]: login(INGEST_LOGIN, DBNAME),
                         aws["WAREHOUSE_SECRET_ID"]: login(LOAD_LOGIN, "warehouse")}, buckets=())
        source = type("Source", (), {"connect": staticmethod(made.connect)})()
        yield admin, made, PipelineUnderTest(
            source=source, warehouse="warehouse", env=aws, postgres=made.postgres,
            pipeline=LocalPipeline(aws["INGEST_BUCKET"]))
    finally:
        stack.stop_postgres(root / "data")   # fast: the handlers' kept connections end too
        subprocess.run(["rm", "-rf", str(root)], check=False)  # nosec B603 B607


def change_the_source(e2e: PipelineUnderTest) -> int:
    """Trade a little, update a staff member and delete a payment; return the payment's id."""
    with_admin = e2e.source.connect()
    try:
        simulator.simulate(with_admin, steps=2, seed=7)
        with_admin.run("UPDATE staff SET email_address = 'moved@terrifictotes.com', "
                       "last_updated = last_updated + interval '1 minute' WHERE staff_id = 3")
        [[payment_id]] = with_admin.run("SELECT min(payment_id) FROM payment")
        with_admin.run("DELETE FROM payment WHERE payment_id = :id", id=payment_id)
    finally:
        with_admin.close()
    return payment_id


def run_every_stage(e2e: PipelineUnderTest, *, publish: bool) -> dict[str, Any]:
    """Two cycles with the source changed between, the lake published; then the audit's summary.

    Publish reads and writes only S3 and the catalog (no login, whatever the capture
    mode), so it runs once, after both cycles, where ``publish`` asks for it; the audit
    then compares the lake too.
    """
    first = e2e.pipeline.cycle()
    payment_id = change_the_source(e2e)
    second = e2e.pipeline.cycle()
    for cycle in (first, second):
        assert cycle.ingest["complete"], cycle.ingest
        assert cycle.transforms and cycle.load["manifests_loaded"] >= 1, cycle
    if publish:
        assert e2e.pipeline.publish()["manifests_published"] == 2
    assert e2e.warehouse_rows("SELECT is_deleted FROM fact_payment WHERE payment_id = :id "
                              "ORDER BY payment_record_id", id=payment_id) == [[False], [True]]
    assert e2e.warehouse_rows("SELECT email_address FROM dim_staff WHERE staff_id = 3") == [
        ["moved@terrifictotes.com"]]
    # The load login created the star schema: it owns it, as deploy.md says it must.
    assert e2e.warehouse_rows("SELECT DISTINCT tableowner FROM pg_catalog.pg_tables "
                              "WHERE schemaname IN ('public', 'etl')") == [[LOAD_LOGIN]]
    summary: dict[str, Any] = e2e.pipeline.audit()
    return summary


def assert_clean(summary: dict[str, Any]) -> None:
    """The audit compared every table and found nothing missing, extra or different."""
    assert summary["ok"] and summary["mismatches"] == 0 and summary["in_flight"] == 0, summary
    assert all(table["compared"] for table in summary["tables"].values()), summary


def latest_source_identity(e2e: PipelineUnderTest) -> dict[str, Any]:
    """The source identity the last ingest manifest recorded."""
    key = storage.latest_manifest_key(e2e.env["INGEST_BUCKET"])
    manifest = IngestManifest.read(storage.read_json(e2e.env["INGEST_BUCKET"], key), key)
    assert manifest.source is not None
    identity: dict[str, Any] = manifest.source.to_json()
    return identity


def test_the_docs_logins_run_every_stage_and_audit_clean_in_snapshot_capture(
        first_deploy, monkeypatch, capsys):
    admin, made, e2e = first_deploy
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    admin.run(privileges_block(), DBNAME)
    admin.run(inline_sql("ingest.md", "GRANT pg_read_all_stats"), DBNAME)
    # A new stack's schedules start in no order (deploy.md, "The first minutes of a new
    # stack"): load, publish and the audit may run before the first ingest, on empty buckets
    # and a warehouse the load login has not built yet. Each finds nothing and succeeds.
    before_ingest = {"load": e2e.pipeline.load(), "publish": e2e.pipeline.publish(),
                     "audit": e2e.pipeline.audit()}
    assert before_ingest["load"]["manifests_loaded"] == 0, before_ingest
    assert before_ingest["publish"]["manifests_published"] == 0, before_ingest
    assert before_ingest["audit"]["ok"] and before_ingest["audit"]["mismatches"] == 0, before_ingest

    assert_clean(run_every_stage(e2e, publish=True))

    identity = latest_source_identity(e2e)
    assert identity["system_identifier"] and identity["timeline"] == 1, identity
    # pg_read_all_stats: a floor held by another role's session is measured on first sight.
    holder = made.connect()
    try:
        holder.run("START TRANSACTION")
        holder.run("UPDATE currency SET currency_code = currency_code WHERE currency_id = 1")
        capsys.readouterr()
        e2e.pipeline.ingest()
        [held] = emitted(capsys.readouterr().out, "SnapshotFloorAgeSeconds")
        holder.run("ROLLBACK")
    finally:
        holder.close()
    assert held > 0


def test_the_docs_logins_and_logical_set_up_run_every_stage_and_audit_clean_in_log_capture(
        first_deploy, monkeypatch):
    admin, made, e2e = first_deploy
    monkeypatch.setenv("CAPTURE_MODE", "logical")
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    admin.run(privileges_block(), DBNAME)   # required in logical mode where PUBLIC lost them
    set_up = statements(sql_block("ingest.md", "### What it needs from the source database"))
    assert set_up[0] == "ALTER SYSTEM SET wal_level = logical;"
    admin.run(set_up[0], DBNAME)
    made.stop()                                   # "then a restart"
    made.start()
    e2e.postgres = made.postgres
    admin.run("\n".join(set_up[1:]), DBNAME)

    assert_clean(run_every_stage(e2e, publish=False))
    assert e2e.source_rows("SELECT count(*) FROM pg_catalog.pg_replication_slots "
                           "WHERE slot_name = 'totes_ingest' AND NOT active") == [[1]]


def test_the_totesys_login_is_the_same_in_deploy_md_and_ingest_md():
    assert sql_block("ingest.md", "## What it needs from the source database") == sql_block(
        "deploy.md", "### The totesys login")
