"""Settings from the environment, the contract between the template and the code.

Read at call time (not import time) so a misconfigured function fails with a
message naming the variable, and tests can change the environment freely.
"""
import os
import re
from dataclasses import dataclass
from datetime import timedelta

from totes.errors import InputError


class ConfigurationError(InputError):
    """A required setting is missing or unusable; the message says which and why."""


def require_env(name: str) -> str:
    """Return a required environment variable, or fail naming it."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is required but not set")
    return value


def int_env(name: str, default: int, minimum: int = 1) -> int:
    """Return an optional positive integer setting, rejecting nonsense early."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def ingest_bucket() -> str:
    """Name of the landing bucket for raw JSON Lines extracts."""
    return require_env("INGEST_BUCKET")


def processed_bucket() -> str:
    """Name of the bucket holding the Parquet star schema."""
    return require_env("PROCESSED_BUCKET")


def lake_bucket() -> str:
    """Name of the bucket holding the lake's Iceberg data and metadata."""
    return require_env("LAKE_BUCKET")


def lake_database() -> str:
    """Name of the Glue database holding the lake's Iceberg tables."""
    return require_env("LAKE_DATABASE")


def expected_bucket_owner() -> str | None:
    """The account that must own every bucket (``EXPECTED_BUCKET_OWNER``), None when unset.

    Unset in the deployed functions, which take their own account from the invocation
    (:func:`totes.storage.expected_owner`); set by tests and local runs whose buckets
    belong to another (moto's) account. Twelve digits, as AWS account ids are.
    """
    owner = os.environ.get("EXPECTED_BUCKET_OWNER", "").strip()
    if owner and not re.fullmatch(r"[0-9]{12}", owner):
        raise ConfigurationError(f"EXPECTED_BUCKET_OWNER must be a 12-digit account id, "
                                 f"got {owner!r}")
    return owner or None


def lake_configured() -> bool:
    """Whether a lake is deployed beside the warehouse (``LAKE_DATABASE`` set): the audit's test."""
    return bool(os.environ.get("LAKE_DATABASE", "").strip())


def lake_snapshot_retention() -> timedelta:
    """How long the lake keeps snapshots for time travel (``LAKE_SNAPSHOT_RETENTION_DAYS``)."""
    return timedelta(days=int_env("LAKE_SNAPSHOT_RETENTION_DAYS", 7))


@dataclass(frozen=True)
class Database:
    """One of the two databases: the names of its environment variables and template parameters.

    Its secret holds the credentials (``<PREFIX>_SECRET_ID``). Where the database is
    (host, port, database name) may come from the secret too, as in the JSON RDS writes
    for a secret it rotates, or from ``<PREFIX>_HOST``, ``<PREFIX>_PORT`` and
    ``<PREFIX>_DBNAME`` (the template's ``<Title>Host``, ``<Title>Port`` and
    ``<Title>Database`` parameters): an RDS-managed master secret holds only the
    username and password. A non-empty variable wins over the secret's field.
    """

    prefix: str
    title: str

    @property
    def secret_variable(self) -> str:
        """The variable naming the database's Secrets Manager secret."""
        return f"{self.prefix}_SECRET_ID"

    @property
    def secret_parameter(self) -> str:
        """The template parameter behind :attr:`secret_variable`: the secret's full ARN."""
        return f"{self.title}SecretArn"

    def variable(self, field: str) -> str:
        """The variable that may give the secret's connection ``field`` (host, port, dbname)."""
        return f"{self.prefix}_{CONNECTION_FIELDS[field][0]}"

    def parameter(self, field: str) -> str:
        """The template parameter behind :meth:`variable`."""
        return f"{self.title}{CONNECTION_FIELDS[field][1]}"


#: secret key -> (environment variable suffix, template parameter suffix)
CONNECTION_FIELDS = {"host": ("HOST", "Host"), "port": ("PORT", "Port"),
                     "dbname": ("DBNAME", "Database")}
TOTESYS = Database(prefix="TOTESYS", title="Totesys")
WAREHOUSE = Database(prefix="WAREHOUSE", title="Warehouse")
DATABASES = (TOTESYS, WAREHOUSE)


def totesys_secret_id() -> str:
    """Secrets Manager id of the source database credentials."""
    return require_env(TOTESYS.secret_variable)


def warehouse_secret_id() -> str:
    """Secrets Manager id of the warehouse credentials."""
    return require_env(WAREHOUSE.secret_variable)


def connection_fields(database: Database) -> dict[str, str]:
    """The connection fields the environment gives for ``database``: the non-empty ones only."""
    given = {field: os.environ.get(database.variable(field), "").strip()
             for field in CONNECTION_FIELDS}
    port = given["port"]
    if port and not port.isdigit():
        raise ConfigurationError(f"{database.variable('port')} must be a port number, got {port!r}")
    return {field: value for field, value in given.items() if value}


def delete_sweep_interval() -> timedelta:
    """Minutes between two key sweeps of a table (deletes found within it); 0 sweeps every run."""
    return timedelta(minutes=int_env("INGEST_DELETE_SWEEP_MINUTES", 60, minimum=0))


def chunk_rows() -> int:
    """Rows per fetched chunk and per written object: the bound on memory."""
    return int_env("CHUNK_ROWS", 50_000)


def max_rows_per_run() -> int:
    """Rows one ingest run writes at most: a backfill drains over runs that each fit the timeout."""
    return int_env("INGEST_MAX_ROWS_PER_RUN", 1_000_000)


#: how ingest finds changes: ``snapshot`` (by transaction visibility, needs only SELECT) or
#: ``logical`` (PostgreSQL's logical decoding: every version and every delete).
CAPTURE_MODES = ("snapshot", "logical")
_SLOT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def capture_mode() -> str:
    """The capture mode (``CAPTURE_MODE``), ``snapshot`` unless set."""
    mode = os.environ.get("CAPTURE_MODE", "").strip() or "snapshot"
    if mode not in CAPTURE_MODES:
        raise ConfigurationError(
            f"CAPTURE_MODE must be one of {', '.join(CAPTURE_MODES)}, got {mode!r}")
    return mode


def _object_name(variable: str, default: str) -> str:
    name = os.environ.get(variable, "").strip() or default
    if not _SLOT_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{variable} must be a lower-case PostgreSQL name (letters, digits, _), got {name!r}")
    return name


def replication_slot() -> str:
    """The logical replication slot log-based capture reads (``REPLICATION_SLOT``)."""
    return _object_name("REPLICATION_SLOT", "totes_ingest")


def publication() -> str:
    """The publication of the 11 tables the slot decodes (``PUBLICATION``)."""
    return _object_name("PUBLICATION", "totes_ingest")
