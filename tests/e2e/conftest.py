"""The whole pipeline on a generated totesys: all three handlers, PostgreSQL, moto server."""
from dataclasses import dataclass
from typing import Any

import pytest

from totes_local import stack
from totes_local.runner import LocalPipeline


@dataclass
class PipelineUnderTest:
    """A seeded source, an empty warehouse, the buckets, and the handlers wired as AWS would."""

    source: Any
    warehouse: str
    env: dict
    postgres: stack.Postgres
    pipeline: LocalPipeline

    def source_rows(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run a query on the source database."""
        conn = self.source.connect()
        try:
            return conn.run(sql, **params)
        finally:
            conn.close()

    def warehouse_rows(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run a query on the warehouse."""
        conn = self.postgres.connect(self.warehouse)
        try:
            return conn.run(sql, **params)
        finally:
            conn.close()


@pytest.fixture
def e2e(aws, postgres, database, totesys):
    """Return a pipeline ready for its first cycle."""
    warehouse = database("warehouse")
    stack.provision({aws["TOTESYS_SECRET_ID"]: totesys.secret,
                     aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
    return PipelineUnderTest(source=totesys, warehouse=warehouse, env=aws, postgres=postgres,
                             pipeline=LocalPipeline(aws["INGEST_BUCKET"]))
