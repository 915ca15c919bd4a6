"""Publish's /tmp holds the largest manifest ingest's row budget allows, with room to spare.

Publish downloads every object of a manifest before its first commit and holds them
in the temporary folder (Lambda's ``/tmp``, 512 MB unless ``EphemeralStorage`` says
more). The bound rests on a measurement (``benchmarks/bench_publish.py`` at
``--scale 40``, written down in docs/lake.md): if the template's /tmp, ingest's row
budget or publish's reserve change, this says whether the bound still holds.
"""
from pathlib import Path

from totes import config, publish
from totes_local import cfn

RESOURCES = cfn.load()["Resources"]
LAKE_MD = Path(__file__).resolve().parents[2] / "docs" / "lake.md"
MB = 1024 * 1024

#: the ×40 backfill's first manifest: its processed rows and the /tmp publish held for it.
MEASURED_ROWS, MEASURED_MB = 1_001_133, 24.7


def publish_tmp_mb() -> int:
    properties = RESOURCES["PublishFunction"]["Properties"]
    return int(properties.get("EphemeralStorage", {}).get("Size", 512))


def ingest_row_budget(monkeypatch) -> int:
    variables = RESOURCES["IngestFunction"]["Properties"]["Environment"]["Variables"]
    monkeypatch.delenv("INGEST_MAX_ROWS_PER_RUN", raising=False)
    return int(variables.get("INGEST_MAX_ROWS_PER_RUN", config.max_rows_per_run()))


def test_publishs_tmp_holds_the_largest_manifest_the_row_budget_allows_twice_over(monkeypatch):
    largest_mb = MEASURED_MB * ingest_row_budget(monkeypatch) / MEASURED_ROWS
    needed_mb = largest_mb + publish.SPOOL_RESERVE_BYTES / MB
    assert 2 * needed_mb <= publish_tmp_mb()


def test_the_measurement_the_bound_rests_on_is_the_one_lake_md_states():
    text = " ".join(LAKE_MD.read_text().split())
    assert f"{MEASURED_ROWS:,} processed rows" in text
    assert f"{MEASURED_MB} MB of /tmp" in text
    assert f"{publish_tmp_mb()} MB" in text
