"""Fixtures shared by every test layer: a real PostgreSQL, a moto server, a clean environment."""
import functools
import io
import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import botocore.loaders
import botocore.session
import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.utilities import parameters
import scratch_postgres

from totes import db, observability, storage
from totes_local import stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules that hold a ``slow`` test first; otherwise keep the collected order.

    ``make test`` hands whole modules to its workers (pytest-xdist ``--dist loadfile``)
    in this order (``--no-loadscope-reorder`` in pyproject.toml: xdist's default would
    start the modules with the most tests first, and so leave a few minutes-long modules
    of few tests, a demo, two pipelines racing each other, to start last while the other workers
    sit idle). The modules that take the ``.aws-sam`` lock (``aws_sam_build``) start
    first too: together, the quick one does not wait minutes for ``make invoke-all``'s
    to end. The collected order already puts the end-to-end modules before the
    integration ones and the quick unit modules last, where they fill the gaps. The sort
    is stable: each module's tests keep their order.
    """
    first = {item.path for item in items
             if item.get_closest_marker("slow") or "aws_sam_build" in item.fixturenames}
    items.sort(key=lambda item: item.path not in first)


@pytest.fixture(scope="session", autouse=True)
def parsed_sdk_models_once():
    """One botocore loader for every SDK session of a worker: each model file parsed once.

    moto's ``mock_aws`` drops boto3's default session when it starts, and some tests drop
    it to give each invocation its own credentials, as Lambda containers have: each new
    session read and parsed the S3 model and its endpoint rules again, one to three seconds
    on the busy 2-core machine, in some 180 tests. The loader keeps what it parsed; the
    sessions only read it, as the clients of one session always share it.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader",
                      functools.cache(botocore.loaders.create_loader))
        yield


@pytest.fixture(autouse=True)
def fresh_clients():
    """Drop cached boto3 clients and secrets so each test sees its own AWS and credentials.

    The stray objects seen are forgotten too, as at the start of every invocation, and
    the database connections the functions kept are closed after each test.
    """
    storage.s3_client.cache_clear()
    parameters.clear_caches()
    observability.forget_strays()
    yield
    storage.s3_client.cache_clear()
    parameters.clear_caches()
    db.forget_kept_connections()


@pytest.fixture(scope="session")
def postgres():
    """One embedded PostgreSQL server for the whole session (starts in about a second).

    Its data lives outside pytest's temporary folders, which pytest prunes to the
    last three runs: a concurrent pytest run must not delete a running server.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="totes-test-pg-"))
    data_dir.chmod(0o755)
    server = scratch_postgres.start(data_dir)
    yield server
    server.server.cleanup()
    scratch_postgres.delete_in_background(data_dir)


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server for the whole session, as the local stand-in for AWS."""
    server, endpoint = stack.start_moto()
    yield endpoint
    server.stop()


def database_factory(postgres: stack.Postgres) -> Callable[[str], str]:
    """Return a factory of fresh, empty databases on ``postgres``, named ``<prefix>_<random>``."""
    def make(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        postgres.recreate_database(name)
        return name
    return make


@pytest.fixture
def database(postgres):
    """Return a factory of fresh, empty databases on the session server."""
    return database_factory(postgres)


@pytest.fixture(scope="module")
def module_database(postgres):
    """The ``database`` factory, for fixtures a whole module shares."""
    return database_factory(postgres)


def isolated_aws(patch: pytest.MonkeyPatch, moto_endpoint: str) -> dict[str, str]:
    """Point boto3 at the moto server with unique buckets and secret ids, until ``patch`` undoes it.

    Returns the pipeline environment (bucket names and secret ids) as a dict.
    """
    env = stack.isolated_environment(moto_endpoint, uuid.uuid4().hex[:8])
    for name, value in env.items():
        patch.setenv(name, value)
    stack.provision({}, buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"], env["LAKE_BUCKET"]),
                    glue_databases={env["LAKE_DATABASE"]: env["LAKE_BUCKET"]})
    return env


@pytest.fixture
def aws(monkeypatch, moto_endpoint):
    """Point boto3 at the moto server with unique buckets and secret ids for this test.

    Returns the pipeline environment (bucket names and secret ids) as a dict.
    """
    return isolated_aws(monkeypatch, moto_endpoint)


@pytest.fixture(scope="module")
def module_aws(moto_endpoint):
    """As ``aws``, for the whole module: for fixtures its tests share and only read.

    A test that also asks for ``aws`` points boto3 at its own buckets while it runs;
    the module's environment is back for the next test.
    """
    with pytest.MonkeyPatch.context() as patch:
        yield isolated_aws(patch, moto_endpoint)


@pytest.fixture
def source_db(postgres, database, aws):
    """An empty totesys schema in a fresh database, its secret in the test's Secrets Manager.

    Yields a direct connection for inserting controlled rows and for assertions.
    """
    from totes_local import generator

    name = database("totesys")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(name)}, buckets=())
    conn = postgres.connect(name)
    generator.create_schema(conn)
    yield conn
    conn.close()


@pytest.fixture
def captured_logs():
    """Capture the pipeline's Powertools log lines (structured JSON) during a test.

    Powertools binds its stream handler to stdout at import, before pytest can
    capture it, so this adds a second handler to the service's logger, sharing
    the Powertools formatter (and so the Lambda context keys) once a pipeline
    module has set it up. Returns a function giving the parsed lines so far.
    """
    service_logger = logging.getLogger(observability.DEFAULT_SERVICE)
    powertools = getattr(service_logger, "powertools_handler", None)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(powertools.formatter if powertools else LambdaPowertoolsFormatter())
    service_logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    service_logger.removeHandler(handler)


@dataclass(frozen=True)
class SourceDatabase:
    """A generated totesys on the session server: its name, secret and a connection factory."""

    name: str
    secret: dict
    counts: dict
    connect: Callable[[], Any]


@pytest.fixture(scope="session")
def generated_template(postgres: stack.Postgres) -> SourceDatabase:
    """The small generated totesys, made once per worker: every test's source is a copy of it.

    The history is deterministic (a fixed seed and end), so a copy is the database a new
    generation would make; ``CREATE DATABASE ... TEMPLATE`` takes about a tenth of a second
    where generating took one to two on the busy 2-core machine, for each of some ninety
    tests. Nothing connects to it after it is made (a template must have no sessions).
    """
    from totes_local import generator

    name = f"totesys_template_{uuid.uuid4().hex[:8]}"
    postgres.recreate_database(name)
    conn = postgres.connect(name)
    try:
        counts = generator.seed_new(conn, scale=0.02)
    finally:
        conn.close()
    return SourceDatabase(name=name, secret=postgres.secret(name), counts=counts,
                          connect=lambda: postgres.connect(name))


def generated_source(postgres: stack.Postgres, template: SourceDatabase) -> SourceDatabase:
    """A new database holding a copy of ``template``'s generated totesys history."""
    name = f"totesys_{uuid.uuid4().hex[:8]}"
    admin = postgres.connect("postgres")
    try:
        admin.run(f"CREATE DATABASE {db.quote_ident(name)} "
                  f"TEMPLATE {db.quote_ident(template.name)}")
    finally:
        admin.close()
    return SourceDatabase(name=name, secret=postgres.secret(name), counts=dict(template.counts),
                          connect=lambda: postgres.connect(name))


@pytest.fixture
def totesys(postgres, generated_template):
    """A fresh totesys source database with the schema and a small generated history.

    Scale 0.02 (about 700 rows): every table populated, payments both paid and open,
    copied from the worker's ``generated_template``. ``connect()`` opens a new pg8000
    native connection (close it); ``secret`` is the RDS-style secret for Secrets Manager;
    ``counts`` rows per table.
    """
    return generated_source(postgres, generated_template)


@pytest.fixture(scope="module")
def module_totesys(postgres, generated_template):
    """As ``totesys``, for fixtures a whole module shares and only reads."""
    return generated_source(postgres, generated_template)
