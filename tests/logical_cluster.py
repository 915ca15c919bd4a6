"""A throw-away embedded PostgreSQL cluster with ``wal_level = logical``, for log-based capture.

The session's server keeps ``wal_level = replica``; switching it would need a
restart under every other test. This cluster is separate: started, switched with
``ALTER SYSTEM SET wal_level = logical``, stopped through pgserver's ``pg_ctl`` as
the system user pgserver runs it as (when started as root), and started again
(:func:`totes_local.stack.with_logical_decoding`).
Import :func:`logical_cluster` into a test module to use it there (module scope).
"""
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import scratch_postgres
from totes_local import generator, stack


@dataclass
class LogicalCluster:
    """The running cluster and its data directory."""

    postgres: stack.Postgres
    data_dir: Path

    def fresh_source(self) -> str:
        """Create a new database with the empty totesys schema; return its name."""
        name = f"totesys_{uuid.uuid4().hex[:8]}"
        generator.recreate_empty_source(self.postgres, name)
        return name


@pytest.fixture(scope="module")
def logical_cluster():
    """The module's wal_level=logical cluster; stopped and deleted at the end, whatever happened."""
    with scratch_postgres.own_cluster("totes-logical-pg-") as (postgres, data_dir):
        yield LogicalCluster(stack.with_logical_decoding(postgres), data_dir)
