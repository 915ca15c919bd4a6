"""The whole pipeline in ``CAPTURE_MODE=logical``: every version and every delete, downstream.

The source is a generated totesys on a separate ``wal_level = logical`` cluster;
the warehouse is on the session's server. Transform and load are unchanged: the
versions and deletion records ingest writes from the slot are the ones they
already read.
"""
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pipeline_kit import PipelineUnderTest, encoded_database

from totes import audit, pgoutput, storage
from totes_local import generator, stack
from totes_local.runner import LocalPipeline

from logical_cluster import logical_cluster  # noqa: F401  (the module's fixture)
from test_pipeline import DIMENSION_FROM_SOURCE, FACT_FROM_SOURCE, warehouse_table


class LogicalPipeline(PipelineUnderTest):
    """A generated source on the logical cluster (an open connection), a warehouse, the handlers."""

    def source_rows(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run a statement on the source database."""
        rows: list[list[Any]] = self.source.run(sql, **params)
        return rows


@pytest.fixture
def e2e(logical_cluster, aws, postgres, database, monkeypatch):  # noqa: F811
    """A pipeline in logical mode, ready for its first cycle (a snapshot backfill)."""
    yield from logical_pipeline(logical_cluster, aws, postgres, database, monkeypatch,
                                logical_cluster.fresh_source())


@pytest.fixture
def encoded_e2e(request, logical_cluster, aws, postgres, database, monkeypatch):  # noqa: F811
    """As ``e2e``, on a source database in the encoding the test is parametrized with."""
    name = encoded_database(logical_cluster.postgres, request.param)
    conn = logical_cluster.postgres.connect(name)
    try:
        generator.create_schema(conn)
    finally:
        conn.close()
    yield from logical_pipeline(logical_cluster, aws, postgres, database, monkeypatch, name)


def logical_pipeline(logical_cluster, aws, postgres, database, monkeypatch,  # noqa: F811
                     name: str):
    """Generate a source in the empty totesys ``name``, wire it in logical mode; drop the slot."""
    slot = f"totes_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CAPTURE_MODE", "logical")
    monkeypatch.setenv("REPLICATION_SLOT", slot)
    conn = logical_cluster.postgres.connect(name)
    generator.generate(conn, scale=0.02)
    warehouse = database("warehouse")
    stack.provision({aws["TOTESYS_SECRET_ID"]: logical_cluster.postgres.secret(name),
                     aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
    yield LogicalPipeline(source=conn, warehouse=warehouse, env=aws, postgres=postgres,
                          pipeline=LocalPipeline(aws["INGEST_BUCKET"]))
    conn.run("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
             "WHERE slot_name = :slot", slot=slot)
    conn.close()


def order_versions(e2e, order_id):
    """(units_sold, last updated time, is_deleted) of every version of an order, in order."""
    return [tuple(row) for row in e2e.warehouse_rows(
        'SELECT "units_sold", "last_updated_time", "is_deleted" FROM "fact_sales_order" '
        'WHERE "sales_order_id" = :o ORDER BY "sales_record_id"', o=order_id)]


def test_an_order_amended_three_times_between_cycles_has_four_versions_in_order(e2e):
    e2e.pipeline.cycle()
    [[order_id, stamp]] = e2e.source_rows(
        "SELECT sales_order_id, last_updated FROM sales_order ORDER BY 1 LIMIT 1")
    for step in (1, 2, 3):
        e2e.source_rows("UPDATE sales_order SET units_sold = :u, last_updated = :at "
                        "WHERE sales_order_id = :o", u=1000 + step,
                        at=stamp + timedelta(minutes=step), o=order_id)

    [[address_id]] = e2e.source_rows("SELECT min(address_id) FROM address")
    for city in ("Leeds", "York"):        # a dimension's source row changed twice
        e2e.source_rows("UPDATE address SET city = :c, last_updated = last_updated + "
                        "interval '1 minute' WHERE address_id = :a", c=city, a=address_id)

    e2e.pipeline.cycle()

    for dimension, sql in DIMENSION_FROM_SOURCE.items():   # dimensions take the last change
        actual = warehouse_table(e2e, dimension)
        if dimension == "dim_currency":                     # plus the ISO 4217 name
            actual = [row[:2] for row in actual]
        assert actual == e2e.source_rows(sql), dimension
    assert e2e.warehouse_rows('SELECT "city" FROM "dim_location" WHERE "location_id" = :a',
                              a=address_id) == [["York"]]
    versions = order_versions(e2e, order_id)
    assert len(versions) == 4 and not any(deleted for _, _, deleted in versions)
    assert [units for units, _, _ in versions[1:]] == [1001, 1002, 1003]
    assert [time for _, time, _ in versions] == sorted(time for _, time, _ in versions)
    for fact, (_, sql) in FACT_FROM_SOURCE.items():
        assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql), fact


@pytest.mark.parametrize("encoded_e2e", ["WIN1252"], indirect=True)
def test_a_win1252_source_s_characters_arrive_from_the_slot_unchanged(encoded_e2e):
    e2e = encoded_e2e
    e2e.pipeline.cycle()
    cities = ("Café", "CafÃ©")   # the second is the first's UTF-8 read as WIN1252
    for address_id, city in enumerate(cities, start=1):
        e2e.source_rows("UPDATE address SET city = :c, last_updated = last_updated + "
                        "interval '1 minute' WHERE address_id = :a", c=city, a=address_id)

    e2e.pipeline.cycle()

    assert e2e.warehouse_rows('SELECT "city" FROM "dim_location" WHERE "location_id" <= 2 '
                              'ORDER BY "location_id"') == [[city] for city in cities]
    assert warehouse_table(e2e, "dim_location") == e2e.source_rows(
        DIMENSION_FROM_SOURCE["dim_location"])


@pytest.mark.parametrize("encoded_e2e", ["SQL_ASCII"], indirect=True)
def test_a_sql_ascii_text_that_is_not_utf8_stops_the_slot_read_as_an_input_error(encoded_e2e):
    e2e = encoded_e2e
    e2e.pipeline.cycle()
    committed = storage.latest_manifest_key(e2e.env["INGEST_BUCKET"])
    e2e.source_rows("UPDATE address SET city = convert_from('\\x4361669f'::bytea, 'SQL_ASCII') "
                    "WHERE address_id = 1")   # b"Caf\x9f": no UTF-8

    with pytest.raises(pgoutput.DecodeError, match="holds a text value that is not UTF-8"):
        e2e.pipeline.ingest()

    assert storage.latest_manifest_key(e2e.env["INGEST_BUCKET"]) == committed


def test_deletes_arrive_from_the_log_as_deletion_versions_without_a_sweep(e2e, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "100000")   # no sweep would find them
    e2e.pipeline.cycle()
    [[order_id, transaction_id]] = e2e.source_rows(
        "SELECT sales_order_id, transaction_id FROM transaction "
        "WHERE sales_order_id IS NOT NULL ORDER BY 1 LIMIT 1")
    payment_id = e2e.source_rows("SELECT min(payment_id) FROM payment WHERE "
                                 "transaction_id <> :t", t=transaction_id)[0][0]
    e2e.source_rows("UPDATE sales_order SET units_sold = 77 WHERE sales_order_id = :o",
                    o=order_id)
    e2e.source_rows("START TRANSACTION")
    e2e.source_rows("DELETE FROM payment WHERE transaction_id = :t", t=transaction_id)
    e2e.source_rows("DELETE FROM transaction WHERE transaction_id = :t", t=transaction_id)
    e2e.source_rows("DELETE FROM sales_order WHERE sales_order_id = :o", o=order_id)
    e2e.source_rows("COMMIT")
    e2e.source_rows("DELETE FROM payment WHERE payment_id = :p", p=payment_id)

    e2e.pipeline.cycle()

    versions = order_versions(e2e, order_id)
    # The update left last_updated alone: it corrected the backfilled version in place.
    assert [deleted for _, _, deleted in versions] == [False, True]
    assert versions[0][0] == versions[1][0] == 77    # the deletion carries the last values
    assert e2e.warehouse_rows('SELECT count(*) FROM "fact_payment" WHERE "payment_id" = :p '
                              'AND "is_deleted"', p=payment_id) == [[1]]
    for fact, (_, sql) in FACT_FROM_SOURCE.items():
        assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql), fact


def test_versions_sharing_a_last_updated_collapse_to_the_last_one_committed(e2e):
    e2e.pipeline.cycle()
    [[order_id]] = e2e.source_rows("SELECT min(sales_order_id) FROM sales_order")
    before = order_versions(e2e, order_id)
    for units in (501, 502):                       # updates that do not bump last_updated
        e2e.source_rows("UPDATE sales_order SET units_sold = :u WHERE sales_order_id = :o",
                        u=units, o=order_id)

    e2e.pipeline.cycle()
    assert order_versions(e2e, order_id) == [(502, before[0][1], False)]   # within one run
    e2e.source_rows("UPDATE sales_order SET units_sold = 503 WHERE sales_order_id = :o",
                    o=order_id)
    e2e.pipeline.cycle()

    assert order_versions(e2e, order_id) == [(503, before[0][1], False)]  # across runs
    for fact, (_, sql) in FACT_FROM_SOURCE.items():
        assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql), fact


def test_dropping_the_slot_and_falling_back_to_snapshot_capture_re_syncs_without_duplicates(
        e2e, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "100000")
    e2e.pipeline.cycle()
    [[order_id, stamp]] = e2e.source_rows(
        "SELECT sales_order_id, last_updated FROM sales_order ORDER BY 1 LIMIT 1")
    e2e.source_rows("INSERT INTO address (address_id, address_line_1, city, postal_code, "
                    "country, phone, last_updated) VALUES (90001, 'new', 'York', 'Y1', 'UK', "
                    "'1', :at)", at=stamp)
    e2e.source_rows("UPDATE sales_order SET units_sold = 4242, last_updated = :at "
                    "WHERE sales_order_id = :o", at=stamp + timedelta(minutes=1), o=order_id)
    e2e.pipeline.cycle()
    facts = {fact: e2e.warehouse_rows(f'SELECT count(*) FROM "{fact}"')[0][0]  # nosec B608
             for fact in FACT_FROM_SOURCE}
    # The DBA drops the slot; the pipeline goes back to snapshot capture.
    slot = e2e.source_rows("SELECT slot_name FROM pg_replication_slots WHERE database = "
                           "current_database()")[0][0]
    e2e.source_rows("SELECT pg_drop_replication_slot(:s)", s=slot)
    monkeypatch.setenv("CAPTURE_MODE", "snapshot")
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.source_rows("DELETE FROM address WHERE address_id = 90001")   # created under the slot
    [[payment_id]] = e2e.source_rows("SELECT max(payment_id) FROM payment")
    e2e.source_rows("DELETE FROM payment WHERE payment_id = :p", p=payment_id)

    report = e2e.pipeline.cycle()

    assert report.ingest["total_rows"] == sum(
        e2e.source_rows(f'SELECT count(*) FROM "{table}"')[0][0]  # nosec B608
        for table in ("address", "counterparty", "currency", "department", "design",
                      "payment_type", "staff", "sales_order", "purchase_order", "transaction",
                      "payment"))
    assert report.ingest["deleted"]["address"] == 1 and report.ingest["deleted"]["payment"] == 1
    # Every row was read again, and nothing but the deleted payment's deletion was added.
    assert {fact: e2e.warehouse_rows(f'SELECT count(*) FROM "{fact}"')[0][0]  # nosec B608
            for fact in FACT_FROM_SOURCE} == {**facts, "fact_payment": facts["fact_payment"] + 1}
    for fact, (_, sql) in FACT_FROM_SOURCE.items():
        assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql), fact
    assert e2e.pipeline.cycle().ingest["total_rows"] == 0


def test_each_logical_run_publishes_the_wal_its_slot_still_holds(e2e, capsys):
    e2e.pipeline.cycle()
    e2e.pipeline.cycle()

    lags = [line["ReplicationSlotLagBytes"] for line in
            (json.loads(text) for text in capsys.readouterr().out.splitlines()
             if text.startswith('{"_aws"'))
            if "ReplicationSlotLagBytes" in line]
    values = [v for value in lags for v in (value if isinstance(value, list) else [value])]
    assert len(values) == 2 and all(value >= 0 for value in values)  # one per run


def audit_is_clean(e2e):
    """Audit the warehouse against the source as the audit handler does; return its mismatches."""
    warehouse = e2e.postgres.connect(e2e.warehouse)
    try:
        report = audit.audit_databases(e2e.source, warehouse,
                                       audit.BucketStore(e2e.env["INGEST_BUCKET"]))
    finally:
        warehouse.close()
    return {name: table.to_json() for name, table in report.tables.items() if table.mismatches}


def test_what_operators_do_to_the_source_ends_in_a_clean_audit_after_each(e2e):
    e2e.pipeline.cycle()
    e2e.pipeline.cycle()
    [[order_id]] = e2e.source_rows("SELECT min(sales_order_id) FROM sales_order")
    [[address_id]] = e2e.source_rows("SELECT min(address_id) FROM address")
    steps = {
        # 18.5: a table taken out of the publication, changed meanwhile
        "publication drift": [
            "ALTER PUBLICATION totes_ingest DROP TABLE sales_order",
            f"UPDATE sales_order SET units_sold = 4321, last_updated = last_updated + "
            f"interval '1 minute' WHERE sales_order_id = {order_id}"],
        # 18.9: a long value left unchanged by an update (not resent by the log)
        "unchanged TOAST": [
            "UPDATE address SET address_line_2 = (SELECT string_agg(md5(random()::text), '') "
            f"FROM generate_series(1, 200)) WHERE address_id = {address_id}",
            f"UPDATE address SET phone = '0000', last_updated = last_updated + "
            f"interval '1 minute' WHERE address_id = {address_id}"],
        # 18.6: a TRUNCATE
        "truncate": ["TRUNCATE payment"],
        # 18.8: the slot dropped, changes meanwhile
        "lost slot": [
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = current_database()",
            f"UPDATE sales_order SET units_sold = 1234, last_updated = last_updated + "
            f"interval '2 minutes' WHERE sales_order_id = {order_id}"],
        # DDL that changes every row without writing one; the update before it is decoded
        # with the old definition
        "enum label renamed": [
            "UPDATE transaction SET last_updated = last_updated + interval '3 minutes' "
            "WHERE transaction_type = 'SALE'",
            "ALTER TYPE \"TransactionType\" RENAME VALUE 'SALE' TO 'SALES'"],
        "column dropped and added again": [
            f"UPDATE address SET last_updated = last_updated + interval '3 minutes' "
            f"WHERE address_id = {address_id}",
            "ALTER TABLE address DROP COLUMN city",
            "ALTER TABLE address ADD COLUMN city text NOT NULL DEFAULT 'Leeds'"],
    }
    for step, statements in steps.items():
        for statement in statements:
            e2e.source_rows(statement)
        e2e.pipeline.cycle()
        assert audit_is_clean(e2e) == {}, step
        for fact, (_, sql) in FACT_FROM_SOURCE.items():
            assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql), (step, fact)
    assert e2e.warehouse_rows('SELECT count(*) FROM "fact_payment_current"') == [[0]]


def payment_versions(e2e, payment_id):
    """(payment amount, is_deleted) of every version of a payment, in load order."""
    return [tuple(row) for row in e2e.warehouse_rows(
        'SELECT "payment_amount", "is_deleted" FROM "fact_payment" WHERE "payment_id" = :p '
        'ORDER BY "payment_record_id"', p=payment_id)]


def test_a_key_deleted_or_moved_and_used_again_between_runs_ends_current_not_deleted(e2e):
    e2e.pipeline.cycle()
    [[first, second]] = e2e.source_rows("SELECT min(payment_id), max(payment_id) FROM payment")
    [[order_id, units]] = e2e.source_rows(
        "SELECT sales_order_id, units_sold FROM sales_order ORDER BY 1 LIMIT 1")
    amount, other = (e2e.source_rows("SELECT payment_amount FROM payment WHERE payment_id = :p",
                                     p=p)[0][0] for p in (first, second))
    e2e.source_rows("CREATE TEMP TABLE kept AS SELECT * FROM payment WHERE payment_id IN (:a, :b)",
                    a=first, b=second)
    e2e.source_rows("UPDATE kept SET payment_amount = payment_amount + 1, "
                    "last_updated = last_updated + interval '1 day'")
    # Deleted, then inserted again with the same id and other values: two transactions.
    e2e.source_rows("DELETE FROM payment WHERE payment_id = :p", p=first)
    e2e.source_rows("INSERT INTO payment SELECT * FROM kept WHERE payment_id = :p", p=first)
    # The same in one transaction (a "replace" by delete and insert).
    e2e.source_rows("START TRANSACTION")
    e2e.source_rows("DELETE FROM payment WHERE payment_id = :p", p=second)
    e2e.source_rows("INSERT INTO payment SELECT * FROM kept WHERE payment_id = :p", p=second)
    e2e.source_rows("COMMIT")
    # A primary key moved away and back: the old key is used again.
    e2e.source_rows("UPDATE sales_order SET sales_order_id = 900000 WHERE sales_order_id = :o",
                    o=order_id)
    e2e.source_rows("UPDATE sales_order SET sales_order_id = :o, units_sold = units_sold + 1, "
                    "last_updated = last_updated + interval '1 day' "
                    "WHERE sales_order_id = 900000", o=order_id)

    # An application "saving" six more payments by DELETE then INSERT, each autocommitted.
    saved = [p for [p] in e2e.source_rows(
        "SELECT payment_id FROM payment WHERE payment_id NOT IN (:a, :b) ORDER BY 1 LIMIT 6",
        a=first, b=second)]
    for payment_id in saved:
        e2e.source_rows("CREATE TEMP TABLE saving AS SELECT * FROM payment "
                        "WHERE payment_id = :p", p=payment_id)
        e2e.source_rows("UPDATE saving SET last_updated = last_updated + interval '1 day'")
        e2e.source_rows("DELETE FROM payment WHERE payment_id = :p", p=payment_id)
        e2e.source_rows("INSERT INTO payment SELECT * FROM saving")
        e2e.source_rows("DROP TABLE saving")

    # A key written again after a deletion an earlier transaction committed waits for a
    # further run, so its deletion is loaded first: the same invocation commits it.
    runs = [e2e.pipeline.cycle().ingest["complete"]]

    for fact, (_, sql) in FACT_FROM_SOURCE.items():
        assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql), fact
    assert runs == [True]
    assert [[deleted for _, deleted in payment_versions(e2e, p)] for p in saved] == [
        [False, True, False]] * 6
    assert payment_versions(e2e, first) == [(amount, False), (amount, True), (amount + 1, False)]
    # deleted and inserted in one transaction: never absent in a committed state
    assert payment_versions(e2e, second) == [(other, False), (other + 1, False)]
    assert [(u, deleted) for u, _, deleted in order_versions(e2e, order_id)] == [
        (units, False), (units, True), (units + 1, False)]
    assert [(u, deleted) for u, _, deleted in order_versions(e2e, 900000)] == [
        (units, False), (units, True)]
    assert audit_is_clean(e2e) == {}
