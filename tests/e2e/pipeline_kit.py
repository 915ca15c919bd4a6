"""The pipeline under test, as the end-to-end tests drive and inspect it."""
from dataclasses import dataclass
from typing import Any

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
