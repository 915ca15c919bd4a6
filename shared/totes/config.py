"""Settings from the environment, the contract between the template and the code.

Read at call time (not import time) so a misconfigured function fails with a
message naming the variable, and tests can change the environment freely.
"""
import os
import re
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


def totesys_secret_id() -> str:
    """Secrets Manager id of the source database credentials."""
    return require_env("TOTESYS_SECRET_ID")


def warehouse_secret_id() -> str:
    """Secrets Manager id of the warehouse credentials."""
    return require_env("WAREHOUSE_SECRET_ID")


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
