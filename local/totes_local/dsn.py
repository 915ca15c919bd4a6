"""PostgreSQL URLs (``postgresql://user:pass@host:port/db``) for local tools.

A URL is turned into the same RDS-shaped mapping the pipeline reads from Secrets
Manager, so connecting, TLS and Unix sockets follow one set of rules
(:mod:`totes.db`). As in libpq, the host may be a socket directory, written
percent-encoded (``postgresql://postgres@%2Ftmp%2Fpg/totesys``) or as a ``host``
query parameter; ``sslmode`` and ``sslrootcert`` may be given as query parameters.
"""
import getpass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.native

from totes import db

SCHEMES = ("postgresql", "postgres")
QUERY_KEYS = ("host", "port", "sslmode", "sslrootcert", "user", "dbname")


class DsnError(ValueError):
    """The text is not a PostgreSQL URL this tool understands."""


def parse_dsn(dsn: str, default_dbname: str = "totesys") -> dict[str, Any]:
    """Translate a PostgreSQL URL into the RDS-shaped secret mapping :mod:`totes.db` reads."""
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port
    except ValueError as error:
        raise DsnError(f"not a valid PostgreSQL URL: {error}") from None
    if parts.scheme not in SCHEMES:
        raise DsnError("a DSN must look like postgresql://user:password@host:port/dbname")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(QUERY_KEYS))
    if unknown:
        raise DsnError(f"unsupported DSN parameter(s): {', '.join(unknown)}")
    secret: dict[str, Any] = {
        "host": query.get("host") or unquote(parts.hostname or "") or "localhost",
        "port": query.get("port") or port or 5432,
        "username": query.get("user") or unquote(parts.username or "") or getpass.getuser(),
        "password": unquote(parts.password or ""),
        "dbname": query.get("dbname") or unquote(parts.path.lstrip("/")) or default_dbname,
    }
    secret.update({key: query[key] for key in ("sslmode", "sslrootcert") if key in query})
    if not str(secret["port"]).isdigit():
        raise DsnError(f"DSN port must be a number, got {secret['port']!r}")
    secret["port"] = int(secret["port"])
    return secret


def connect(dsn: str, dbname: str | None = None) -> pg8000.native.Connection:
    """Connect to the URL's database (or ``dbname`` on the same server), failing in one line."""
    secret = parse_dsn(dsn)
    if dbname:
        secret["dbname"] = dbname
    return db.connect_with(secret, "from --dsn", timeout=None)  # bulk loads outlast any bound


def redact(dsn: str) -> str:
    """The URL with its password masked, for messages and logs."""
    parts = urlsplit(dsn)
    if not parts.password:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
