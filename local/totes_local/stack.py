"""The local stand-in for AWS and RDS: embedded PostgreSQL and a moto server.

Used by ``make demo``, the integration and end-to-end tests, and the benchmarks,
so all of them exercise the handlers exactly the way AWS would drive them:
through environment variables, Secrets Manager and S3, nothing injected.
"""
import contextlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import boto3
import pg8000.native

from totes import config, db

REGION = "eu-west-2"
INGEST_BUCKET = "totes-local-ingestion"
PROCESSED_BUCKET = "totes-local-processed"
LAKE_BUCKET = "totes-local-lake"
LAKE_DATABASE = "totes_local_lake"
TOTESYS_SECRET = "totes/local/totesys"  # nosec B105
WAREHOUSE_SECRET = "totes/local/warehouse"  # nosec B105
#: the embedded server trusts local connections; moto accepts any credentials
NO_PASSWORD = ""  # nosec B105
MOTO_CREDENTIAL = "testing"


@dataclass
class Postgres:
    """A running embedded PostgreSQL reachable through its Unix socket directory."""

    server: Any
    socket_dir: str
    port: int = 5432
    user: str = "postgres"

    def secret(self, dbname: str) -> dict[str, Any]:
        """The RDS-shaped secret for ``dbname`` on this server."""
        return {"host": self.socket_dir, "port": self.port, "username": self.user,
                "password": NO_PASSWORD, "dbname": dbname, "engine": "postgres"}

    def connect(self, dbname: str) -> pg8000.native.Connection:
        """Open a direct connection (set-up, generation, assertions): no statement timeout."""
        return db.connect_with(self.secret(dbname), f"embedded server in {self.socket_dir}",
                               timeout=None)

    def recreate_database(self, dbname: str) -> None:
        """Drop and create ``dbname`` so each run starts from nothing."""
        recreate_database(self.connect("postgres"), dbname)


def recreate_database(admin: pg8000.native.Connection, dbname: str) -> None:
    """Drop and create ``dbname`` through ``admin`` (connected elsewhere), then close ``admin``."""
    try:
        quoted = db.quote_ident(dbname)
        admin.run(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {quoted}")
    finally:
        admin.close()


def start_postgres(data_dir: Path) -> Postgres:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``."""
    import pgserver

    data_dir = data_dir.resolve()  # the secret's host must be absolute to mean a socket directory
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    return Postgres(server=server, socket_dir=str(data_dir))


def with_logical_decoding(postgres: Postgres) -> Postgres:
    """Return the server with ``wal_level = logical``, restarting it if it was not.

    pgserver runs the server as its own system user when started as root, so the
    restart goes through pgserver's ``pg_ctl`` (its ``cleanup``: ``pg_ctl -w stop``
    as that user), then starts it again on the same data directory.
    """
    conn = postgres.connect("postgres")
    try:
        if conn.run("SHOW wal_level") == [["logical"]]:
            return postgres
        conn.run("ALTER SYSTEM SET wal_level = logical")
    finally:
        conn.close()
    data_dir = Path(postgres.socket_dir)
    postgres.server.cleanup()
    if (data_dir / "postmaster.pid").exists():
        raise RuntimeError(f"the server in {data_dir} did not stop cleanly")
    return start_postgres(data_dir)


def drop_slots(postgres: Postgres, dbname: str) -> None:
    """Drop the replication slots of ``dbname``, which would keep it from being dropped."""
    conn = postgres.connect("postgres")
    try:
        conn.run("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                 "WHERE database = :db AND NOT active", db=dbname)
    finally:
        conn.close()


def start_moto() -> tuple[Any, str]:
    """Start a moto server on a free loopback port; return it and its endpoint URL.

    moto keeps its state per process, so the state is reset: a second server in
    the same process (a second demo, a test) must not see the first one's buckets.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()  # nosec B310
    return server, endpoint


def aws_environment(endpoint: str) -> dict[str, str]:
    """The environment that points every boto3 client at ``endpoint`` with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": MOTO_CREDENTIAL,
        "AWS_SECRET_ACCESS_KEY": MOTO_CREDENTIAL,
        "AWS_SESSION_TOKEN": MOTO_CREDENTIAL,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def pipeline_environment() -> dict[str, str]:
    """The functions' environment, with the template's names and defaults."""
    return {
        "INGEST_BUCKET": INGEST_BUCKET,
        "INGEST_DELETE_SWEEP_MINUTES": "60",
        "CAPTURE_MODE": "snapshot",
        "PROCESSED_BUCKET": PROCESSED_BUCKET,
        "LAKE_BUCKET": LAKE_BUCKET,
        "LAKE_DATABASE": LAKE_DATABASE,
        "TOTESYS_SECRET_ID": TOTESYS_SECRET,
        "WAREHOUSE_SECRET_ID": WAREHOUSE_SECRET,
        # Empty, as the template's parameters default: the local secrets say where each is.
        **{database.variable(field): "" for database in config.DATABASES
           for field in config.CONNECTION_FIELDS},
        "POWERTOOLS_SERVICE_NAME": "totes",
        "POWERTOOLS_METRICS_NAMESPACE": "TotesPipeline",
    }


def isolated_environment(endpoint: str, suffix: str) -> dict[str, str]:
    """The full function environment with bucket names and secret ids unique to ``suffix``.

    Lets several pipelines (tests, fixtures) share one moto server without sharing state.
    """
    return {
        **aws_environment(endpoint),
        **pipeline_environment(),
        "INGEST_BUCKET": f"ingest-{suffix}",
        "PROCESSED_BUCKET": f"processed-{suffix}",
        "LAKE_BUCKET": f"lake-{suffix}",
        "LAKE_DATABASE": f"lake_{suffix}",
        "TOTESYS_SECRET_ID": f"totesys-{suffix}",
        "WAREHOUSE_SECRET_ID": f"warehouse-{suffix}",
    }


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore the previous ones."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def provision(secrets: Mapping[str, Mapping[str, Any]],
              buckets: tuple[str, ...] = (INGEST_BUCKET, PROCESSED_BUCKET, LAKE_BUCKET),
              glue_databases: tuple[str, ...] = (LAKE_DATABASE,)) -> None:
    """Create the buckets, Glue databases and secrets the template would.

    In whatever AWS the environment points at. Idempotent, so a second demo run
    against the same moto server is harmless.
    """
    s3 = boto3.client("s3")
    for bucket in buckets:
        try:
            s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    glue = boto3.client("glue")
    for name in glue_databases:
        try:
            glue.create_database(DatabaseInput={"Name": name})
        except glue.exceptions.AlreadyExistsException:
            pass
    manager = boto3.client("secretsmanager")
    for secret_id, value in secrets.items():
        try:
            manager.create_secret(Name=secret_id, SecretString=json.dumps(value))
        except manager.exceptions.ResourceExistsException:
            manager.put_secret_value(SecretId=secret_id, SecretString=json.dumps(value))


def psql_argv(postgres: Postgres, dbname: str) -> list[str]:
    """The command line of the psql bundled with pgserver, connected to ``dbname``."""
    from pgserver._commands import POSTGRES_BIN_PATH

    return [str(POSTGRES_BIN_PATH / "psql"), "-h", postgres.socket_dir, "-p", str(postgres.port),
            "-U", postgres.user, dbname]
