"""Capture on a real server whose xid counter crosses 2^32 into the next epoch.

A throw-away embedded PostgreSQL cluster (never the session server) is moved with
``pg_resetwal -e 5 -x 4294966800`` to a few hundred xids below the 32-bit
boundary in epoch 5, the way ``pg_upgrade`` moves a new cluster's counter: every
connectable database is frozen first (rows written by initdb's own transactions,
such as the ``postgres`` database's row in ``pg_database``, would otherwise have
xmins "in the future" and vanish), the server is stopped cleanly, the counter is
reset, and the ``pg_xact`` segment holding the new xid is created zero-filled (the
only file the server asks for: ``pg_subtrans`` is zeroed by the server at start
and the multixact counter is left alone). Autovacuum is switched off so no
background transaction moves a snapshot's ``xmin``: the rows each run reads are
then exact. ``relfrozenxid`` and ``datfrozenxid`` keep initdb's values, as
nothing here vacuums after the reset.

Ingest then runs before the boundary, across it (a run whose snapshot's ``xmin``
is in epoch 5 and ``xmax`` in epoch 6) and after it, with rows whose 32-bit xmin
sits just below 2^32 and just above 0, and a transaction open across a run.
"""
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from totes import ingest
from totes.capture import XID_MODULUS, FIRST_NORMAL_XID, Snapshot, full_xid
from totes.source import SOURCE_TABLES
from totes_local import generator, stack

from test_ingest import T0, latest_manifest, sales_order, seed_one_of_each, table_rows

#: the epoch and 32-bit xid pg_resetwal gives the cluster: 496 xids below the boundary.
EPOCH = 5
START_XID = XID_MODULUS - 496
#: the first 64-bit xid of the next epoch (xids 0, 1 and 2 of an epoch are never assigned).
NEXT_EPOCH_FIRST = ((EPOCH + 1) << 32) + FIRST_NORMAL_XID
#: an SLRU segment (pg_xact) is 32 pages of 8192 bytes; pg_xact keeps 2 status bits per xid.
SLRU_SEGMENT_BYTES = 32 * 8192
XACT_XIDS_PER_SEGMENT = 4 * SLRU_SEGMENT_BYTES
DBNAME = "totesys"


@dataclass(frozen=True)
class WrappedCluster:
    """The throw-away server, where pg_resetwal left its counter, and its data directory."""

    postgres: stack.Postgres
    data_dir: Path
    first_xid: int
    checkpoint_next_xid: str


def xact_segment_name(xid32: int) -> str:
    """The pg_xact file holding ``xid32``'s status: its segment number, 4 upper-case hex digits."""
    return f"{xid32 // XACT_XIDS_PER_SEGMENT:04X}"


def create_zeroed_segment(path: Path, owner: str | None) -> None:
    """Create a zero-filled SLRU segment owned by the server's system user (if it has one)."""
    path.write_bytes(bytes(SLRU_SEGMENT_BYTES))
    path.chmod(0o600)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def current_xid(conn) -> int:
    """Return the 64-bit xid of a new transaction (autocommitted: each call uses one xid up)."""
    return int(conn.run("SELECT pg_current_xact_id()::text")[0][0])


def burn_to(conn, target: int) -> None:
    """Use xids up, one empty transaction each, until the next xid assigned is ``target``."""
    while current_xid(conn) < target - 1:
        pass


def xmins(conn, table: str, key: str) -> dict[int, int]:
    """Return the 32-bit xmin of every row of ``table`` by primary key."""
    return dict(conn.run(f"SELECT {key}, xmin::text::bigint FROM {table}"))  # nosec B608


def ids(bucket: str, manifest: dict, table: str) -> list[int]:
    """The primary keys a manifest lists for ``table``."""
    key = {"sales_order": "sales_order_id", "payment": "payment_id", "address": "address_id",
           "design": "design_id"}[table]
    return [row[key] for row in table_rows(bucket, manifest, table)]


def changed(result) -> dict[str, int]:
    """The tables a run read rows from, with their row counts."""
    return {table: rows for table, rows in result.rows.items() if rows}


def move_xid_counter(postgres: stack.Postgres, data_dir: Path) -> stack.Postgres:
    """Freeze, stop, pg_resetwal to ``EPOCH``/``START_XID``, add the pg_xact segment, restart."""
    from pgserver._commands import pg_resetwal

    for dbname in ("template1", "postgres"):
        conn = postgres.connect(dbname)
        try:
            conn.run("VACUUM FREEZE")
        finally:
            conn.close()
    conn = postgres.connect("postgres")
    try:
        conn.run("ALTER SYSTEM SET autovacuum = off")
    finally:
        conn.close()
    system_user = postgres.server.system_user  # pgserver's unprivileged user when run as root
    postgres.server.cleanup()  # pg_ctl -w stop, as that user
    assert not (data_dir / "postmaster.pid").exists(), "the server did not stop cleanly"
    pg_resetwal(["-e", str(EPOCH), "-x", str(START_XID)], pgdata=data_dir, user=system_user)
    create_zeroed_segment(data_dir / "pg_xact" / xact_segment_name(START_XID), system_user)
    return stack.start_postgres(data_dir)


@pytest.fixture(scope="module")
def wrapped_cluster():
    """A separate embedded cluster whose next xid is ``START_XID`` in ``EPOCH``, with totesys.

    Stopped and deleted at the end, whatever happened.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="totes-wrap-pg-"))
    data_dir.chmod(0o755)
    postgres = None
    try:
        postgres = stack.start_postgres(data_dir)
        postgres = move_xid_counter(postgres, data_dir)
        conn = postgres.connect("postgres")
        try:
            [[next_xid]] = conn.run("SELECT next_xid FROM pg_control_checkpoint()")
            first_xid = current_xid(conn)
        finally:
            conn.close()
        generator.recreate_empty_source(postgres, DBNAME)
        yield WrappedCluster(postgres, data_dir, first_xid, next_xid)
    finally:
        if postgres is not None:
            postgres.server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def wrapped_source(wrapped_cluster, aws):
    """The wrapped cluster's totesys as the pipeline's source secret; a connection to it."""
    stack.provision({aws["TOTESYS_SECRET_ID"]: wrapped_cluster.postgres.secret(DBNAME)},
                    buckets=())
    conn = wrapped_cluster.postgres.connect(DBNAME)
    yield conn
    conn.close()


def test_the_reset_cluster_counts_in_epoch_5_a_few_hundred_xids_below_the_boundary(
        wrapped_cluster):
    assert wrapped_cluster.checkpoint_next_xid == f"{EPOCH}:{START_XID}"
    assert wrapped_cluster.first_xid >> 32 == EPOCH
    assert START_XID <= wrapped_cluster.first_xid % XID_MODULUS < XID_MODULUS - 400
    assert xact_segment_name(START_XID) == "0FFF"
    conn = wrapped_cluster.postgres.connect(DBNAME)
    try:
        assert conn.run("SHOW autovacuum") == [["off"]]   # no background xid moves an xmin
    finally:
        conn.close()


def test_changes_on_both_sides_of_the_boundary_arrive_once_and_the_snapshot_moves_to_epoch_6(
        wrapped_cluster, wrapped_source, aws):
    conn, bucket = wrapped_source, aws["INGEST_BUCKET"]
    seed_one_of_each(conn)
    assert current_xid(conn) < (EPOCH << 32) + XID_MODULUS - 400   # room left to place rows

    first = ingest.run_ingest()
    first_snapshot = Snapshot.parse(latest_manifest(bucket)["snapshot"])

    # Just below the boundary: an insert and an update committed before the next run, and a
    # transaction that writes a row and stays open across that run.
    burn_to(conn, (EPOCH << 32) + XID_MODULUS - 10)
    sales_order(conn, 2, T0 + timedelta(minutes=1))
    conn.run("UPDATE design SET design_name = 'Steel' WHERE design_id = 1")
    slow = wrapped_cluster.postgres.connect(DBNAME)
    try:
        slow.run("START TRANSACTION")
        sales_order(slow, 3, T0 - timedelta(hours=1))
        slow_xid = int(slow.run("SELECT pg_current_xact_id()::text")[0][0])
        # Across the boundary: the 32-bit xids start again at 3 in epoch 6.
        burn_to(conn, NEXT_EPOCH_FIRST + 20)
        sales_order(conn, 4, T0 + timedelta(minutes=2))
        conn.run("UPDATE payment SET paid = true WHERE payment_id = 1")
        conn.run("UPDATE address SET city = 'York' WHERE address_id = 1")
        slow.run("SAVEPOINT inner_work")    # a subtransaction with an epoch-6 xid
        sales_order(slow, 5, T0 - timedelta(hours=1))
        slow.run("RELEASE SAVEPOINT inner_work")

        across = ingest.run_ingest()
        across_manifest = latest_manifest(bucket)
        slow.run("COMMIT")
    finally:
        slow.close()

    after = ingest.run_ingest()
    after_manifest = latest_manifest(bucket)
    idle = ingest.run_ingest()

    # The rows really straddle 2^32: 32-bit xmins just below it and just above 0.
    order_xmins = xmins(conn, "sales_order", "sales_order_id")
    assert all(XID_MODULUS - 500 < order_xmins[key] < XID_MODULUS for key in (1, 2, 3))
    assert all(FIRST_NORMAL_XID <= order_xmins[key] < 100 for key in (4, 5))
    assert slow_xid >> 32 == EPOCH and slow_xid % XID_MODULUS == order_xmins[3]
    # The first run is wholly in epoch 5, before the boundary.
    assert first.rows == {table: 1 for table in SOURCE_TABLES}
    assert first_snapshot.xmin >> 32 == first_snapshot.xmax >> 32 == EPOCH
    # The run across the boundary: its snapshot starts at the open transaction in epoch 5 and
    # ends in epoch 6; it reads every change on both sides and none of the seeded rows.
    across_snapshot = Snapshot.parse(across_manifest["snapshot"])
    assert across_snapshot.xmin == slow_xid and across_snapshot.xip == (slow_xid,)
    assert across_snapshot.xmax >> 32 == EPOCH + 1
    assert changed(across) == {"sales_order": 2, "design": 1, "payment": 1, "address": 1}
    assert ids(bucket, across_manifest, "sales_order") == [2, 4]
    [design] = table_rows(bucket, across_manifest, "design")
    [payment] = table_rows(bucket, across_manifest, "payment")
    [address] = table_rows(bucket, across_manifest, "address")
    assert (design["design_name"], payment["paid"], address["city"]) == ("Steel", True, "York")
    assert full_xid(order_xmins[2], across_snapshot) >> 32 == EPOCH
    assert full_xid(order_xmins[4], across_snapshot) >> 32 == EPOCH + 1
    # Once the long transaction commits, both its rows arrive: the one written before the
    # boundary and the savepoint's written after it. Only what was written since it began is
    # read again (orders 4, the payment, the address); nothing before it.
    after_snapshot = Snapshot.parse(after_manifest["snapshot"])
    assert after_snapshot.xmin >> 32 == after_snapshot.xmax >> 32 == EPOCH + 1
    assert changed(after) == {"sales_order": 3, "payment": 1, "address": 1}
    assert ids(bucket, after_manifest, "sales_order") == [3, 4, 5]
    assert all(entry["cursor"]["since"] == after_manifest["snapshot"]
               for entry in after_manifest["tables"].values())
    # Then nothing: the floor is in epoch 6 and every row is behind it.
    assert idle.total_rows == 0
    assert Snapshot.parse(latest_manifest(bucket)["snapshot"]).xmin >> 32 == EPOCH + 1
