"""The local stand-in for AWS and RDS: embedded PostgreSQL and a moto server.

Used by ``make demo``, the integration and end-to-end tests, and the benchmarks,
so all of them exercise the handlers exactly the way AWS would drive them:
through environment variables, Secrets Manager and S3, nothing injected.
"""
import atexit
import contextlib
import json
import logging
import os
# pg_ctl, run by pgserver's own helper with a fixed argument list and no shell.
import subprocess  # nosec B404
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import boto3
import pg8000.native
import psutil

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
    #: the superuser's password: none, except where ``totes local-stack`` set one.
    password: str = NO_PASSWORD

    def secret(self, dbname: str) -> dict[str, Any]:
        """The RDS-shaped secret for ``dbname`` on this server."""
        return {"host": self.socket_dir, "port": self.port, "username": self.user,
                "password": self.password, "dbname": dbname, "engine": "postgres"}

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


#: pgserver's list of the processes using a server (it stops the server when the last exits).
HANDLE_LIST = ".handle_pids.json"
#: a clone's folders that hold embedded servers: the demo's, ``make invoke``'s, the benchmarks'.
LOCAL_FOLDERS = (".demo", ".invoke", ".bench")


def _server_lock() -> Any:
    """The inter-process lock pgserver takes around its list of users and every start and stop."""
    from pgserver.postgres_server import PostgresServer

    return PostgresServer._lock


def _prune_users(data_dir: Path) -> list[int]:
    """Drop the ids of processes no longer running from the server's list of users; return it.

    pgserver stops a server when the last process in that list exits, so an id left
    behind by a process that ended without its exit hook (killed, or replaced by
    ``exec``) would keep the server running for ever. Call it holding the lock.
    """
    listed = data_dir / HANDLE_LIST
    if not listed.exists():
        return []
    users = [pid for pid in json.loads(listed.read_text() or "[]") if psutil.pid_exists(pid)]
    listed.write_text(json.dumps(users))
    return users


def start_postgres(data_dir: Path) -> Postgres:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``.

    The server stops when the last process using it exits; users that are gone are
    forgotten first, so a stale id never keeps it running.
    """
    import pgserver

    data_dir = data_dir.resolve()  # the secret's host must be absolute to mean a socket directory
    data_dir.mkdir(parents=True, exist_ok=True)
    with _server_lock():
        _prune_users(data_dir)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    return Postgres(server=server, socket_dir=str(data_dir))


def is_running(data_dir: Path) -> bool:
    """Whether a PostgreSQL server is running on ``data_dir`` (its postmaster process is alive)."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir.resolve())
    return info is not None and info.is_running()


def stop_postgres(data_dir: Path) -> bool:
    """Stop the server on ``data_dir`` whichever process started it; True if one was running.

    Clients still connected are disconnected (``pg_ctl`` fast mode) and the list of
    users is emptied, so nothing else stops it twice; this process forgets its own
    handle on it, and the next :func:`start_postgres` starts it again.
    """
    from pgserver._commands import pg_ctl
    from pgserver.postgres_server import PostgresServer

    data_dir = data_dir.resolve()
    with _server_lock():
        instance = PostgresServer._instances.pop(data_dir, None)
        if instance is not None:
            atexit.unregister(instance._cleanup)
        running = is_running(data_dir)
        if running:
            user = instance.system_user if instance else _system_user(data_dir)
            try:
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
            except subprocess.CalledProcessError:
                if is_running(data_dir):
                    raise RuntimeError(f"the server in {data_dir} did not stop: see "
                                       f"{data_dir / 'log'}") from None
        if (data_dir / HANDLE_LIST).exists():
            (data_dir / HANDLE_LIST).write_text("[]")
    return running


def _system_user(data_dir: Path) -> str | None:
    """The system user pgserver runs ``data_dir``'s server as: the folder's owner, when root."""
    if os.geteuid() != 0:
        return None
    import pwd

    return pwd.getpwuid(data_dir.stat().st_uid).pw_name


def local_servers(root: Path) -> list[Path]:
    """The data folders of the embedded servers running under ``root`` (a clone)."""
    folders = [root / name for name in LOCAL_FOLDERS if (root / name).is_dir()]
    found = [folder for top in folders for folder in (top, *top.iterdir()) if folder.is_dir()]
    return [folder for folder in found if is_running(folder)]


def local_stack_processes(data_dir: Path) -> list[psutil.Process]:
    """The running ``totes local-stack`` commands that use the server on ``data_dir``."""
    with _server_lock():
        users = _prune_users(data_dir.resolve())
    found = []
    for pid in users:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if "local-stack" in process.cmdline() and pid != os.getpid():
                found.append(process)
    return found


def with_logical_decoding(postgres: Postgres) -> Postgres:
    """Return the server with ``wal_level = logical``, restarting it if it was not.

    The restart stops the server whoever else uses it (a dashboard, a prompt: their
    connections are closed), through pgserver's ``pg_ctl`` as the system user it
    runs the server as, then starts it again on the same data directory.
    """
    conn = postgres.connect("postgres")
    try:
        if conn.run("SHOW wal_level") == [["logical"]]:
            return postgres
        conn.run("ALTER SYSTEM SET wal_level = logical")
    finally:
        conn.close()
    data_dir = Path(postgres.socket_dir)
    stop_postgres(data_dir)
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
              glue_databases: Mapping[str, str] | None = None) -> None:
    """Create the buckets, Glue databases and secrets the template would.

    In whatever AWS the environment points at. Idempotent, so a second demo run
    against the same moto server is harmless. ``glue_databases`` maps each lake
    database to its bucket (by default the local lake's), whose root is the database's
    location as the template sets it: tables then live at ``<bucket>/<table>``, the
    layout the deployed lake has (not ``<database>.db/<table>``).
    """
    s3 = boto3.client("s3")
    for bucket in buckets:
        try:
            s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    glue = boto3.client("glue")
    for name, bucket in (glue_databases or {LAKE_DATABASE: LAKE_BUCKET}).items():
        try:
            glue.create_database(DatabaseInput={"Name": name, "LocationUri": f"s3://{bucket}/"})
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
