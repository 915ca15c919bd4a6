"""A backfill bigger than one run's row budget drains over cycles into an exact warehouse."""
import pytest

from test_pipeline import (DIMENSION_FROM_SOURCE, FACT_FROM_SOURCE, observed_versions,
                           warehouse_table)

BUDGET = 300
MAX_CYCLES = 20


@pytest.fixture(scope="module")
def drained(module_e2e):
    """Cycle the pipeline with a small row budget until ingest reports it caught up.

    Once for the module: its tests only inspect the result.
    """
    e2e = module_e2e
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INGEST_MAX_ROWS_PER_RUN", str(BUDGET))
        e2e.reports = [e2e.pipeline.cycle()]
        while not e2e.reports[-1].ingest["complete"]:
            assert len(e2e.reports) < MAX_CYCLES, "the backfill does not drain"
            e2e.reports.append(e2e.pipeline.cycle())
        yield e2e


def test_each_cycle_ingests_at_most_the_budget_and_the_backfill_finishes(drained):
    totals = [report.ingest["total_rows"] for report in drained.reports]
    assert len(totals) > 2 and all(0 < total <= BUDGET for total in totals[:-1])
    assert sum(totals) == sum(drained.source.counts.values())


def test_every_source_version_is_exactly_one_fact_row(drained):
    for fact, (source_table, sql) in FACT_FROM_SOURCE.items():
        observed = observed_versions(drained, source_table)
        assert len(observed) == len(set(observed)) == drained.source.counts[source_table], fact
        assert warehouse_table(drained, fact) == drained.source_rows(sql), fact


def test_dimensions_equal_the_source(drained):
    for dimension, sql in DIMENSION_FROM_SOURCE.items():
        actual = warehouse_table(drained, dimension)
        if dimension == "dim_currency":
            actual = [row[:2] for row in actual]
        assert actual == drained.source_rows(sql), dimension
