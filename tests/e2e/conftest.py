"""The whole pipeline on a generated totesys: all three handlers, PostgreSQL, moto server."""
import pytest
from pipeline_kit import PipelineUnderTest

from totes_local import stack
from totes_local.runner import LocalPipeline


@pytest.fixture
def e2e(aws, postgres, database, totesys):
    """Return a pipeline ready for its first cycle."""
    warehouse = database("warehouse")
    stack.provision({aws["TOTESYS_SECRET_ID"]: totesys.secret,
                     aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
    return PipelineUnderTest(source=totesys, warehouse=warehouse, env=aws, postgres=postgres,
                             pipeline=LocalPipeline(aws["INGEST_BUCKET"]))
