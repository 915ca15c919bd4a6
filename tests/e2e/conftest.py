"""The whole pipeline on a generated totesys: all three handlers, PostgreSQL, moto server."""
import fcntl
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import scratch_postgres
from pipeline_kit import PipelineUnderTest

from totes_local import stack
from totes_local.runner import LocalPipeline


def pipeline_under_test(aws: dict[str, str], postgres: stack.Postgres,
                        database: Callable[[str], str], totesys: Any) -> PipelineUnderTest:
    """Wire ``totesys`` and a new empty warehouse to the handlers, ready for a first cycle."""
    warehouse = database("warehouse")
    stack.provision({aws["TOTESYS_SECRET_ID"]: totesys.secret,
                     aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
    return PipelineUnderTest(source=totesys, warehouse=warehouse, env=aws, postgres=postgres,
                             pipeline=LocalPipeline(aws["INGEST_BUCKET"]))


@pytest.fixture
def e2e(aws, postgres, database, totesys):
    """Return a pipeline ready for its first cycle."""
    return pipeline_under_test(aws, postgres, database, totesys)


@pytest.fixture(scope="module")
def module_e2e(module_aws, postgres, module_database, module_totesys):
    """As ``e2e``, one for the whole module: for runs its tests share and only inspect."""
    return pipeline_under_test(module_aws, postgres, module_database, module_totesys)


@pytest.fixture(scope="session")
def blank_cluster() -> Iterator[Path]:
    """A new cluster's files, stopped, made once per worker: each test starts a copy of its own.

    It never syncs to disk (``fsync = off``; every copy is deleted after its test), so
    its checkpoints (a stop's, a base backup's) cost no flush, and nothing a privilege
    depends on changes.
    """
    root = Path(tempfile.mkdtemp(prefix="totes-blank-pg-"))
    root.chmod(0o755)
    try:
        scratch_postgres.blank(root / "data")
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def aws_sam_build():
    """The checkout's ``.aws-sam`` to this test module alone while it runs.

    ``make test`` runs test modules in parallel (pytest-xdist); test_invoke_all runs
    ``sam build``, which replaces the ``.aws-sam/build`` test_built_artifacts reads, so
    each of them holds this lock (an flock, freed if the process dies) for its whole module.
    """
    folder = Path(__file__).resolve().parents[2] / ".aws-sam"
    folder.mkdir(exist_ok=True)
    with open(folder / "tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
