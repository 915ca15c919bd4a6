import pytest

from totes import extract, keys
from totes.source import UnknownTableError


def test_full_read_orders_by_version_then_key_with_quoted_identifiers():
    assert extract.select_sql("sales_order", incremental=False) == (
        'SELECT * FROM "sales_order" ORDER BY "last_updated", "sales_order_id"')


def test_incremental_read_binds_the_lower_bound_instead_of_formatting_it():
    assert extract.select_sql("transaction", incremental=True) == (
        'SELECT * FROM "transaction" WHERE "last_updated" >= :since '
        'ORDER BY "last_updated", "transaction_id"')


@pytest.mark.parametrize("table", [
    "_prisma_migrations", "pg_authid", 'staff"; DROP TABLE staff; --', "Staff"])
def test_only_allow_listed_tables_ever_reach_sql(table):
    with pytest.raises(UnknownTableError):
        extract.select_sql(table, incremental=False)


def test_a_batch_size_below_one_is_refused_before_touching_the_database():
    with pytest.raises(ValueError, match="batch_rows"):
        next(extract.stream_rows(None, "staff", None, 0))


def test_new_run_ids_are_unique_and_sort_by_start_time():
    first, second = keys.new_run_id(), keys.new_run_id()
    assert first != second and len(first.suffix) == 8
    assert keys.parse_manifest_key(keys.manifest_key(first)) == first
