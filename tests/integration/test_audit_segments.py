"""Hashed-segment comparison on a real PostgreSQL: it finds one bad row and reads little else."""
import pytest

from totes import audit, audit_sql
from totes.warehouse_schema import TABLES, create_table_sql
from totes_local import generator

pytestmark = pytest.mark.integration

ROWS = 200_000


@pytest.fixture
def designs(postgres, database):
    """A source ``design`` and a warehouse ``dim_design`` holding the same 200,000 rows."""
    source = postgres.connect(database("totesys"))
    target = postgres.connect(database("warehouse"))
    generator.create_schema(source)
    source.run("INSERT INTO design (design_id, design_name, file_location, file_name, "
               "created_at, last_updated) SELECT n, 'design ' || n, '/d/' || (n % 7), "
               "CASE WHEN n % 3 = 0 THEN '' ELSE n || '.json' END, now(), now() "
               "FROM generate_series(1, :n) AS n", n=ROWS)
    target.run(create_table_sql(TABLES["dim_design"]))
    target.run("INSERT INTO dim_design SELECT n, 'design ' || n, '/d/' || (n % 7), "
               "CASE WHEN n % 3 = 0 THEN '' ELSE n || '.json' END "
               "FROM generate_series(1, :n) AS n", n=ROWS)
    yield source, target
    source.close()
    target.close()


def sides(source, target, skip=()):
    """The two sides of the dim_design comparison."""
    return (audit.Side(source, audit_sql.source_relation("dim_design"), list(skip)),
            audit.Side(target, audit_sql.warehouse_relation("dim_design"), list(skip)))


def test_equal_tables_cost_one_segment_query_per_side(designs):
    source, target = sides(*designs)
    found = audit.compare(source, target)
    assert (found.source_rows, found.warehouse_rows) == (ROWS, ROWS)
    assert (found.missing, found.different, found.extra_keys) == (0, 0, [])
    for side in (source, target):
        assert side.queries == 2  # bounds, then the top level: nothing differs
        assert side.rows_fetched == 1 + audit.FANOUT


def test_one_changed_row_is_found_by_descending_only_into_its_segments(designs):
    designs[1].run("UPDATE dim_design SET file_name = '' WHERE design_id = 123457")
    source, target = sides(*designs)
    found = audit.compare(source, target)
    assert (found.different, found.different_keys, found.missing) == (1, [123457], 0)
    # bounds, 200,000 keys in 64 segments of 3,125, one of them in 64 of 49, then one leaf.
    for side in (source, target):
        assert side.queries == 4
        assert side.rows_fetched == 1 + audit.FANOUT + audit.FANOUT + 49


def test_a_missing_range_is_counted_without_reading_its_rows(designs):
    designs[1].run("DELETE FROM dim_design WHERE design_id BETWEEN 3126 AND 6250")
    source, target = sides(*designs)
    found = audit.compare(source, target)
    assert found.missing == 3125 and found.missing_keys == [3126, 3127, 3128, 3129, 3130]
    assert source.rows_fetched + target.rows_fetched < 4 * audit.FANOUT + 10


def test_rows_in_flight_are_left_out_on_both_sides(designs):
    designs[0].run("UPDATE design SET design_name = 'renamed' WHERE design_id = 99")
    designs[1].run("DELETE FROM dim_design WHERE design_id = 77")
    found = audit.compare(*sides(*designs, skip=[77, 99]))
    assert (found.missing, found.different, found.extra_keys) == (0, 0, [])
    assert found.source_rows == found.warehouse_rows == ROWS - 2


def test_extra_rows_are_listed_and_a_spent_budget_counts_instead_of_listing(designs):
    designs[1].run("INSERT INTO dim_design VALUES (200001, 'x', 'y', 'z'), (200002, 'x', 'y', 'z')")
    found = audit.compare(*sides(*designs))
    assert found.extra_keys == [200001, 200002] and not found.approximate
    designs[1].run("UPDATE dim_design SET design_name = 'changed' WHERE design_id <= 1000")
    found = audit.compare(*sides(*designs), max_leaf_rows=100)
    # Segments beyond the budget count each row present on both sides as (possibly) different.
    assert found.approximate
    assert 1000 <= found.different <= 1000 + audit.LEAF_ROWS
    assert found.extra_unresolved + len(found.extra_keys) == 2
