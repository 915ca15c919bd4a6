"""Which warehouse the dashboard reads, and a read-only connection to it.

In order of precedence: a PostgreSQL URL (``WAREHOUSE_DSN``, or ``--dsn`` which the
launcher passes on in that variable, never on a command line where ``ps`` shows
it), the pipeline's own warehouse secret (``WAREHOUSE_SECRET_ID``, read through
:func:`totes.db.connect` as the load function does), or the demo's embedded
PostgreSQL in ``.demo/pg``, started again if the demo has stopped it.
"""
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pg8000.native

from totes import db
from totes_local import dsn, stack

DSN_VARIABLE = "WAREHOUSE_DSN"
#: the name of the variable holding the secret's id (bandit mistakes it for a password).
SECRET_VARIABLE = "WAREHOUSE_SECRET_ID"  # nosec B105
DEMO_DIR_VARIABLE = "TOTES_DEMO_PG"
DEFAULT_DEMO_DIR = Path(".demo") / "pg"
DEMO_DATABASE = "warehouse"
#: a page is a handful of aggregates; anything slower is a problem to show, not to wait for.
STATEMENT_TIMEOUT = "60s"
SESSION_SETTINGS = (
    "SET default_transaction_read_only = on",
    f"SET statement_timeout = '{STATEMENT_TIMEOUT}'",
    "SET application_name = 'totes-dashboard'",
)


class WarehouseNotFoundError(RuntimeError):
    """No warehouse was named and the demo has not created one yet."""


@dataclass(frozen=True)
class WarehouseSource:
    """Where the warehouse is: ``kind`` (``dsn``, ``secret`` or ``demo``) and which one."""

    kind: str
    target: str

    def describe(self) -> str:
        """A line for the page naming the warehouse, with any password masked."""
        if self.kind == "dsn":
            return dsn.redact(self.target)
        if self.kind == "secret":
            return f"secret {self.target}"
        return f"demo warehouse in {self.target}"


def check(where: WarehouseSource) -> None:
    """Refuse a warehouse URL that is not one, in a line that never shows its password.

    Checked before the page starts, so a typo in ``WAREHOUSE_DSN`` is an error at
    once rather than a page that cannot connect.
    """
    if where.kind != "dsn":
        return
    try:
        dsn.parse_dsn(where.target, DEMO_DATABASE)
    except dsn.DsnError as error:
        userinfo = where.target.partition("//")[2].rpartition("@")[0]
        password = userinfo.partition(":")[2]
        reason = str(error).replace(password, "***") if password else str(error)
        raise dsn.DsnError(f"{DSN_VARIABLE} (or --dsn) is not a usable warehouse URL: "
                           f"{reason}") from None


def resolve(environ: Mapping[str, str] = os.environ) -> WarehouseSource:
    """Pick the warehouse from the environment, falling back to the demo's."""
    if environ.get(DSN_VARIABLE, "").strip():
        return WarehouseSource("dsn", environ[DSN_VARIABLE].strip())
    if environ.get(SECRET_VARIABLE, "").strip():
        return WarehouseSource("secret", environ[SECRET_VARIABLE].strip())
    return WarehouseSource("demo", environ.get(DEMO_DIR_VARIABLE) or str(DEFAULT_DEMO_DIR))


#: one start at a time: Streamlit runs sessions, and a page's queries, on threads of one process.
_START_LOCK = threading.Lock()
_SERVERS: dict[str, stack.Postgres] = {}


def demo_server(data_dir: str) -> stack.Postgres:
    """The demo's embedded PostgreSQL, started under a lock if it is not running.

    pgserver's own lock is between processes, not threads: two threads starting the
    same server at once fail (a communication error, or "Unable to release an
    unaquired lock"). A server stopped under the page (``make stop``) is started again.
    It stops when this process exits, unless something else still uses it.
    """
    path = Path(data_dir)
    if not (path / "PG_VERSION").exists():
        raise WarehouseNotFoundError(
            f"no demo warehouse in {path}: run `make demo` first, or pass --dsn")
    with _START_LOCK:
        server = _SERVERS.get(data_dir)
        if server is None or not stack.is_running(path):
            if server is not None:
                stack.stop_postgres(path)  # forget the handle on the server stopped under us
            server = _SERVERS[data_dir] = stack.start_postgres(path)
        return server


def prepare(where: WarehouseSource) -> None:
    """Start what the page reads from before its queries run in parallel (the demo's server)."""
    if where.kind == "demo":
        demo_server(where.target)


def _demo_secret(data_dir: str) -> dict[str, Any]:
    return demo_server(data_dir).secret(DEMO_DATABASE)


def connect(source: WarehouseSource) -> pg8000.native.Connection:
    """Open a read-only connection to ``source`` (statement timeout set), or fail saying why."""
    if source.kind == "dsn":
        connection = db.connect_with(dsn.parse_dsn(source.target, DEMO_DATABASE),
                                     source.describe())
    elif source.kind == "secret":
        connection = db.connect(source.target)
    else:
        connection = db.connect_with(_demo_secret(source.target), source.describe())
    for statement in SESSION_SETTINGS:
        connection.run(statement)
    return connection
