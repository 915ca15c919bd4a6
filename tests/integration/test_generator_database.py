import pytest

from totes.source import SOURCE_TABLES
from totes_local import generator


def _fingerprint(conn):
    """A digest of every row of every table, to compare two databases."""
    digests = {}
    for table, key in SOURCE_TABLES.items():
        digests[table] = conn.run(
            f'SELECT md5(string_agg(t::text, \'|\' ORDER BY "{key}")) FROM "{table}" t')[0][0]
    return digests


@pytest.fixture
def empty(postgres, database):
    conn = postgres.connect(database("gen"))
    yield conn
    conn.close()


def test_create_schema_makes_every_table_and_is_idempotent(empty):
    assert generator.create_schema(empty) is True
    assert generator.create_schema(empty) is False
    tables = {row[0] for row in empty.run(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert tables == set(SOURCE_TABLES) | {"_prisma_migrations"}


def test_create_schema_refuses_a_partial_schema(empty):
    empty.run('CREATE TABLE "address" (address_id int)')
    with pytest.raises(generator.GeneratorError, match="some totesys tables .*address"):
        generator.create_schema(empty)


def test_generate_needs_the_schema_first(empty):
    with pytest.raises(generator.GeneratorError, match="run create_schema first"):
        generator.generate(empty, scale=0.01)


def test_generated_data_is_consistent(totesys):
    conn = totesys.connect()
    try:
        counts = {table: conn.run(f'SELECT count(*) FROM "{table}"')[0][0]
                  for table in SOURCE_TABLES}
        assert counts == totesys.counts
        assert counts["sales_order"] > 100 and counts["purchase_order"] > 40
        assert counts["transaction"] == counts["payment"] == (
            counts["sales_order"] + counts["purchase_order"])
        # every order has exactly one transaction and one payment, same created_at and amount
        mismatched = conn.run("""
            SELECT count(*) FROM transaction t
            JOIN payment p USING (transaction_id)
            LEFT JOIN sales_order s ON s.sales_order_id = t.sales_order_id
            LEFT JOIN purchase_order o ON o.purchase_order_id = t.purchase_order_id
            WHERE p.created_at <> t.created_at
               OR t.created_at <> coalesce(s.created_at, o.created_at)
               OR p.payment_amount <> coalesce(s.units_sold * s.unit_price,
                                               o.item_quantity * o.item_unit_price)
               OR p.currency_id <> coalesce(s.currency_id, o.currency_id)
               OR p.payment_date <> coalesce(s.agreed_payment_date, o.agreed_payment_date)""")
        assert mismatched == [[0]]
        outside_hours = conn.run("""
            SELECT count(*) FROM sales_order
            WHERE extract(isodow FROM created_at) > 5
               OR created_at::time NOT BETWEEN '08:00' AND '19:00'""")
        assert outside_hours == [[0]]
        assert conn.run("SELECT count(*) FROM payment WHERE paid "
                        "AND (last_updated::date::text <> payment_date "
                        "OR last_updated <= created_at)") == [[0]]
        assert conn.run("SELECT count(*) FROM _prisma_migrations") == [[2]]
    finally:
        conn.close()


def test_foreign_keys_dropped_for_the_bulk_load_are_back(totesys):
    conn = totesys.connect()
    try:
        count = conn.run("SELECT count(*) FROM information_schema.table_constraints "
                         "WHERE constraint_type = 'FOREIGN KEY'")[0][0]
        with pytest.raises(Exception, match="violates foreign key constraint"):
            conn.run("INSERT INTO payment (last_updated, transaction_id, counterparty_id, "
                     "payment_amount, currency_id, payment_type_id, paid, payment_date, "
                     "company_ac_number, counterparty_ac_number) "
                     "VALUES (now(), 999999, 1, 1, 99, 1, false, '2024-01-01', 1, 1)")
    finally:
        conn.close()
    assert count == 17


def test_sequences_continue_after_generated_ids(totesys):
    conn = totesys.connect()
    try:
        new_id = conn.run("INSERT INTO currency (currency_code, last_updated) "
                          "VALUES ('JPY', now()) RETURNING currency_id")[0][0]
        assert new_id == 4
        next_order = conn.run("SELECT nextval(pg_get_serial_sequence('sales_order', "
                              "'sales_order_id'))")[0][0]
        assert next_order == totesys.counts["sales_order"] + 1
    finally:
        conn.close()


def test_generate_refuses_a_database_that_holds_data(totesys):
    conn = totesys.connect()
    try:
        with pytest.raises(generator.GeneratorError, match="already holds data"):
            generator.generate(conn, scale=0.01)
    finally:
        conn.close()


def test_same_seed_gives_the_same_database(postgres, database):
    digests = []
    for _ in range(2):
        conn = postgres.connect(database("same"))
        try:
            generator.seed_new(conn, scale=0.02, seed=5)
            digests.append(_fingerprint(conn))
        finally:
            conn.close()
    assert digests[0] == digests[1]


def test_a_failed_generation_leaves_the_tables_empty(empty, monkeypatch):
    generator.create_schema(empty)

    def broken(*args, **kwargs):
        yield {"sales_order": [["not-a-number"]] * 12}

    monkeypatch.setattr(generator, "order_chunks", broken)
    with pytest.raises(Exception):
        generator.generate(empty, scale=0.01)
    assert empty.run("SELECT count(*) FROM address") == [[0]]


def test_a_failing_schema_creation_creates_nothing(empty, monkeypatch):
    statements = generator.ddl_statements()
    monkeypatch.setattr(generator, "ddl_statements", lambda: [*statements[:5], "CREATE NONSENSE"])
    with pytest.raises(Exception, match="syntax error"):
        generator.create_schema(empty)
    assert empty.run("SELECT count(*) FROM information_schema.tables "
                     "WHERE table_schema = 'public'") == [[0]]


def test_the_size_help_texts_give_is_what_generate_writes(postgres, database):
    name = database("sized")
    conn = postgres.connect(name)
    try:
        written = sum(generator.seed_new(conn, scale=0.2, seed=42).values())
    finally:
        conn.close()
    assert abs(written - generator.expected_rows(0.2)) < 0.03 * written
    assert generator.size_text(1) == "about 48,000 rows"
