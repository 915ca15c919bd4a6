"""PostgreSQL URLs (``postgresql://user:pass@host:port/db``) for local tools.

A URL is turned into the same RDS-shaped mapping the pipeline reads from Secrets
Manager, so connecting, TLS and Unix sockets follow one set of rules
(:mod:`totes.db`). As in libpq, the host may be a socket directory, written
percent-encoded (``postgresql://postgres@%2Ftmp%2Fpg/totesys``) or as a ``host``
query parameter; ``sslmode`` and ``sslrootcert`` may be given as query parameters.

A URL holds a password, so nothing here ever repeats one: errors say what is
wrong without quoting the text (``urlsplit``'s own messages quote parts of it:
``postgresql://u:se#cret9@h`` gives "Port could not be cast to integer value as
'se'"), and :func:`redact` masks the whole user-information part, whatever
characters the password holds, before a URL is shown anywhere.
"""
import getpass
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.native

from totes import db

SCHEMES = ("postgresql", "postgres")
QUERY_KEYS = ("host", "port", "sslmode", "sslrootcert", "user", "dbname")
#: what :func:`redact` puts in place of a secret.
MASK = "***"
#: how a password must be written in a URL for ``urlsplit`` to find it.
ENCODING_HINT = ("postgresql://user:password@host:port/dbname, with any of : / ? # @ % in the "
                 "password percent-encoded")
_PASSWORD_PARAMETER = re.compile(r"(?i)(password\s*=\s*)('[^']*'?|[^&\s]*)")


class DsnError(ValueError):
    """The text is not a PostgreSQL URL this tool understands."""


def parse_dsn(dsn: str, default_dbname: str = "totesys") -> dict[str, Any]:
    """Translate a PostgreSQL URL into the RDS-shaped secret mapping :mod:`totes.db` reads."""
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port
    except ValueError:  # its message quotes the URL: a part of the password, often
        raise DsnError(f"not a valid PostgreSQL URL (expected {ENCODING_HINT})") from None
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
        raise DsnError(f"DSN port must be a number (expected {ENCODING_HINT})")
    secret["port"] = int(secret["port"])
    return secret


def connect(dsn: str, dbname: str | None = None) -> pg8000.native.Connection:
    """Connect to the URL's database (or ``dbname`` on the same server), failing in one line."""
    secret = parse_dsn(dsn)
    if dbname:
        secret["dbname"] = dbname
    return db.connect_with(secret, "from --dsn", timeout=None)  # bulk loads outlast any bound


def redact(dsn: str) -> str:
    """The URL with everything that may be a password masked, for messages and logs.

    Not parsed, so no password a parser misreads (one holding ``#``, ``/`` or
    ``?``) slips through: everything between ``://`` and the last ``@`` (user
    and password) becomes ``***``, and so does the value of any ``password``
    parameter (in a libpq ``key=value`` string too).
    """
    scheme, separator, rest = dsn.strip().partition("://")
    if separator and "@" in rest:
        rest = MASK + rest[rest.rindex("@"):]
    return _PASSWORD_PARAMETER.sub(rf"\g<1>{MASK}", scheme + separator + rest)


def holds_password(dsn: str) -> bool:
    """Tell whether a URL carries a password (in its user information or as a parameter)."""
    _, _, rest = dsn.strip().partition("://")
    user_information = rest[:rest.rindex("@")] if "@" in rest else ""
    return ":" in user_information or bool(_PASSWORD_PARAMETER.search(dsn))
