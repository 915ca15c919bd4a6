"""The one way the pipeline reaches PostgreSQL: a Secrets Manager secret, and where it is.

The secret holds ``username`` and ``password`` (extra keys ignored), and may hold
``host``, ``port`` and ``dbname``, as Secrets Manager's JSON for RDS credentials
does. An RDS-managed master secret holds only the username and password, so the
function's environment may give those three instead (:func:`totes.config.
connection_fields`, from the template's parameters): a field given there wins over
the secret's, and a field neither gives fails naming both places. As in libpq, a
host starting with ``/`` is a Unix-socket directory (no TLS: the socket never leaves
the machine). Over TCP the default ``sslmode`` is ``verify-full``: a man in the
middle must not get the password, and pg8000 sends it in clear text to any server
that asks. The certificate is checked
against ``sslrootcert`` (a CA file inside the function) when the secret names one,
otherwise against the system trust store plus the RDS bundle ``make ca-bundle``
ships in the layer (:data:`LAYER_CA_BUNDLE`). Credentials are never logged: errors
name the secret id and the missing keys, never values.
"""
import json
import os
import re
import socket
import ssl
import time
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import boto3
import botocore.config
import botocore.exceptions
import pg8000.core
import pg8000.native
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

from totes import config, observability
from totes.errors import InputError, TransientError

logger = observability.service_logger()

REQUIRED_KEYS = ("host", "username", "dbname")
SSL_MODES = ("disable", "require", "verify-ca", "verify-full")
DEFAULT_SSLMODE = "verify-full"
# Fetched by `make ca-bundle` on the deploying machine (git-ignored, never committed) and
# shipped in the shared layer: /opt/python/totes/rds-ca-bundle.pem inside Lambda.
LAYER_CA_BUNDLE = Path(__file__).with_name("rds-ca-bundle.pem")
CONNECT_TIMEOUT_SECONDS = 15
#: the encoding every connection talks in, whatever the role's, the database's or the server's
#: default: ingest's COPY hands the server's bytes on as JSON Lines, and load's COPY sends
#: Arrow's CSV, both UTF-8 that no one decodes on the way.
CLIENT_ENCODING = "UTF8"
#: fields of a server error that name things (severity, SQLSTATE, message, schema, table,
#: column, data type, constraint); the rest (detail "Failing row contains (...)", the COPY
#: line in "where", hints, the internal query) may quote row values and are dropped.
_NAMING_FIELDS = ("S", "C", "M", "s", "t", "c", "d", "n")
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
#: the longest a kept connection may take to answer its liveness check (seconds) before a
#: new one is opened instead: a connection the network silently dropped while the container
#: was frozen must not hold the invocation until its deadline.
LIVENESS_TIMEOUT_SECONDS = 5.0
#: the longest a kept connection is lent again after it was opened (seconds): then it is closed
#: and a new one opened, so a host name moved to another server (a cut-over to a restored or
#: migrated database, the old one left running) is followed within this time, not never.
KEPT_MAX_AGE_SECONDS = 900.0
#: distinct statement texts whose parse pg8000 keeps (the pipeline's are a fixed set of
#: templates over allow-listed names, values always bound, so a few hundred at most).
PARSED_STATEMENTS = 512
#: per secret and database, the connection a warm container kept from its last invocation
#: (idle, outside any transaction: :func:`kept_connection`) and the login, server and
#: database it reaches.
_KEPT: dict[tuple[str, str], tuple[tuple[Any, ...], pg8000.native.Connection, float]] = {}


if not hasattr(pg8000.native.to_statement, "cache_info"):
    # pg8000 finds a statement's :name placeholders by walking its text character by character
    # in Python on every run: about 1 ms for the longest statements here, 13 ms of a warm
    # one-order cycle. The result is a pure function of the text, so it is kept per text.
    pg8000.native.to_statement = lru_cache(maxsize=PARSED_STATEMENTS)(
        pg8000.native.to_statement)


class Connection(pg8000.native.Connection):  # type: ignore[misc]  # pg8000 is untyped (Any)
    """pg8000's native connection, sending a statement with values in one round trip, not three.

    pg8000 runs a statement with bound values as three exchanges, each closed by a Sync
    and a wait for the server: Parse, then Describe, then Bind and Execute. The
    protocol lets them travel together (libpq's ``PQexecParams`` does): the values are
    bound as text, so nothing sent depends on an earlier answer, and a failing Parse
    makes the server skip the rest up to the one Sync and report the error once. A
    one-order cycle runs about 40 such statements (ingest's COPY and its settings per
    table, load's staging and merges); the server does the same work, with two fewer
    waits for each. Everything else (simple queries, named prepared statements, COPY
    streams, errors) is pg8000's own.
    """

    #: whether a read on this connection's socket has timed out (see :meth:`handle_messages`).
    timed_out = False

    def handle_messages(self, context: Any) -> None:
        """Read the server's replies to one request, keeping its reason when it ends the session.

        A server that ends a session (an administrator, a shutdown, a standby's recovery
        conflict, ``idle_in_transaction_session_timeout``) sends its error report, then
        closes the socket; pg8000 records the report, reads on for the end of the reply,
        and raises a bare ``network error`` at the close, dropping the report. Here the
        report is raised instead, from that error, so its SQLSTATE and message reach
        :func:`interruption` and the logs.

        pg8000 wraps a failed socket read in its ``network error`` except the first read
        of a message, whose ``OSError`` (a socket timeout, a reset) escaped bare; it is
        wrapped here too, from the ``OSError`` (only a socket's: an ``OSError`` of the
        request's own COPY stream, a full disk, stays as it is). A socket that timed out
        mid-reply is out of step with the server, and Python refuses every later read of
        it with a bare ``OSError("cannot read from timed out object")``: such a connection
        is marked and every later request on it fails at once, from a ``TimeoutError``
        that says so, as the timeout it is (never an interruption); the caller closes it.
        """
        if self.timed_out:
            raise pg8000.native.InterfaceError("network error") from TimeoutError(
                "this connection's socket timed out earlier, mid-reply: it cannot be used again")
        try:
            super().handle_messages(context)
        except pg8000.native.InterfaceError as lost:
            self.timed_out = isinstance(lost.__cause__, TimeoutError)
            if context.error is None:
                raise
            raise context.error from lost
        except OSError as error:
            if not _raised_by_socket(error):
                raise   # the COPY stream's own (a full /tmp, a file limit): not the network
            self.timed_out = isinstance(error, TimeoutError)
            raise pg8000.native.InterfaceError("network error") from error

    def _flush_or_last_words(self, context: Any) -> None:
        """Send what is buffered; if the server has closed, raise the report it left first.

        A session ended while idle (between two statements: a recovery conflict while
        the run writes to S3) is closed before the next request goes out, so writing
        that request fails (a broken pipe), and the server's report waits unread in the
        socket. Reading it cannot block: the peer has closed. Without a report, the
        write's own error stands.
        """
        try:
            pg8000.core._flush(self._sock)
        except pg8000.native.InterfaceError as lost:
            if not isinstance(lost.__cause__, (BrokenPipeError, ConnectionResetError)):
                raise
            with suppress(pg8000.native.InterfaceError):
                self.handle_messages(context)   # raises the report, if one was left
            raise

    def execute_simple(self, statement: str) -> Any:
        """Run a statement without values (simple query), keeping a closed server's report."""
        context = pg8000.core.Context(statement)
        self.send_QUERY(statement)
        self._flush_or_last_words(context)
        self.handle_messages(context)
        return context

    def execute_unnamed(self, statement: str, vals: Any = (), oids: Any = (),
                        stream: Any = None) -> Any:
        """Parse, describe, bind and execute ``statement`` under one Sync; return its context.

        The values are rendered and encoded before anything is written, so a value
        pg8000 cannot send (no text form, a character the client encoding cannot hold,
        more values than the protocol counts) fails with the connection as it was:
        nothing of the statement left buffered to precede the next one.
        """
        params = pg8000.core.make_params(self.py_types, vals)
        pg8000.core.H_pack(len(params))
        for value in params:
            if value is not None:
                value.encode(self._client_encoding)
        context = pg8000.core.Context(statement, stream=stream)
        self.send_PARSE(pg8000.core.NULL_BYTE, statement, oids)
        self.send_DESCRIBE_STATEMENT(pg8000.core.NULL_BYTE)
        self.send_BIND(pg8000.core.NULL_BYTE, params)
        self.send_EXECUTE()
        pg8000.core._write(self._sock, pg8000.core.SYNC_MSG)
        self._flush_or_last_words(context)
        self.handle_messages(context)
        return context


def _raised_by_socket(error: OSError) -> bool:
    """Tell whether ``error`` came from reading the server's socket, not from a COPY stream.

    pg8000 reads the socket and calls the request's stream (a spool file, an S3 body)
    from the same loop; only the first is the network. The innermost Python frame of
    a socket read is the socket (or ssl) module's.
    """
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).name in _SOCKET_MODULES


#: the modules whose code reads a connection's socket (plain and TLS).
_SOCKET_MODULES = frozenset({"socket.py", "ssl.py"})


class SessionInterruptedError(TransientError):
    """The server ended a statement or the session for a reason outside the request: retry later.

    A standby's recovery conflict, a statement cancelled or timed out, a session ended by
    an administrator, a shutdown or a failover, a connection lost. The message carries
    the server's SQLSTATE and reason when it sent one (:func:`interruption`).
    """


class SecretFormatError(InputError, ValueError):
    """The secret is not the JSON object the contract describes."""


class SecretUnavailableError(InputError, LookupError):
    """Secrets Manager will not give the function its secret: missing, deleted or refused."""


class SecretsManagerUnreachableError(TransientError, ConnectionError):
    """Secrets Manager did not answer: a network blip, or (in a VPC) no route to it at all."""


class SecretsManagerBusyError(TransientError):
    """Secrets Manager answered, but throttled the call or failed itself: the next run retries."""


class DatabaseUnavailableError(TransientError, ConnectionError):
    """The database could not be reached or refused the credentials."""


class ServerNotTrustedError(InputError, DatabaseUnavailableError):
    """TLS refused the server (its certificate, or no TLS at all): the next run would too.

    A person acts: ship the CA bundle, use the certificate's host name, or turn TLS on;
    the password was never sent. Still a :class:`DatabaseUnavailableError` to callers
    that open a connection and go on without it.
    """


class LoginRefusedError(InputError, DatabaseUnavailableError):
    """The server refused the login itself: a wrong password, no such role or database.

    Every run fails alike until a person corrects the secret (or the server). Raised
    only after the secret was read anew (:func:`connect`), so a password rotated since
    the function cached it is not taken for a wrong one. Still a
    :class:`DatabaseUnavailableError` to callers that go on without a connection.
    """


class UnsupportedServerError(InputError, DatabaseUnavailableError):
    """The server runs a PostgreSQL older than the pipeline reads and writes: upgrade it."""


#: the oldest PostgreSQL major version either database may run: snapshot capture reads
#: ``pg_current_snapshot()`` and ``xid8`` (13), the warehouse check ``attgenerated`` (12).
MINIMUM_SERVER_MAJOR = 13


#: what a connection that no server answered adds: from Lambda, the usual first-deploy cause.
_NO_ANSWER = ("no answer within {seconds} s: a database reachable only inside its VPC needs the "
              "functions in that VPC (template parameters SubnetIds and SecurityGroupIds), and "
              "its security group must let them in on its port (docs/deploy.md, \"Running inside "
              "a VPC\")")


#: SQLSTATEs of a server refusing the login itself, each with what to correct.
_LOGIN_REFUSALS = {
    "28P01": 'correct "password" in the secret, or set the role\'s password to it '
             "(ALTER ROLE ... PASSWORD)",
    "28000": 'correct "username" in the secret, or let that role in: CREATE ROLE ... LOGIN '
             "PASSWORD ..., ALTER ROLE ... LOGIN, or a pg_hba.conf rule for it (a rule "
             'requiring TLS needs an sslmode other than "disable")',
    "3D000": 'correct "dbname" (in the secret, or the TotesysDatabase/WarehouseDatabase '
             "parameter that gives it), or CREATE DATABASE on that server",
}


#: Secrets Manager's answers that no retry changes, each with what it means for a deployed
#: stack and what to do. A stack deployed before its secrets exist, with an ARN copied
#: without its suffix, or left naming a secret deleted and created again (a new suffix)
#: meets the first on its first run; a secret under the account's own KMS key the last.
_SECRET_REFUSALS = {
    "ResourceNotFoundException": (
        "no such secret in this account and region, or it has no value yet",
        "create it (docs/deploy.md, \"1. Store the database credentials\"), or deploy with "
        "the full ARN Secrets Manager printed for it, its six-character suffix included, as "
        "{parameter}"),
    "InvalidRequestException": (
        "it is scheduled for deletion",
        "restore it (aws secretsmanager restore-secret), or deploy another secret's full "
        "ARN as {parameter}"),
    "AccessDeniedException": (
        "the function's role may not read it",
        "deploy with the secret's full ARN as {parameter}: the role may read that ARN only"),
    "DecryptionFailure": (
        "its KMS key refused the function's role",
        "give the role kms:Decrypt on the secret's own key (docs/deploy.md, \"1. Store the "
        "database credentials\")"),
}


#: what a malformed secret's error says the secret must be instead.
_WHAT_TO_STORE = ('store {"username": ..., "password": ...} with "host", "port" and "dbname" '
                  "unless the template's parameters give them (docs/deploy.md, \"1. Store the "
                  'database credentials\")')


#: how long one call to Secrets Manager may wait to connect, and then for its answer (seconds),
#: and how many attempts it makes. botocore's own (60 s each, five attempts) outlast the
#: functions' timeouts: in a VPC without a route to Secrets Manager (no interface endpoint, no
#: NAT), a run would end "Task timed out" and say nothing else.
SECRETS_CONNECT_TIMEOUT_SECONDS = 5.0
SECRETS_READ_TIMEOUT_SECONDS = 10.0
SECRETS_ATTEMPTS = 3


def _secrets_provider() -> None:
    """Make Powertools read secrets through a client with the bounded waits above.

    Its own default provider is made on first use with botocore's defaults; this one
    takes its place in the same registry, so ``parameters.clear_caches`` still clears it.
    """
    if "secrets" not in DEFAULT_PROVIDERS:
        DEFAULT_PROVIDERS["secrets"] = parameters.SecretsProvider(
            boto_config=botocore.config.Config(
                connect_timeout=SECRETS_CONNECT_TIMEOUT_SECONDS,
                read_timeout=SECRETS_READ_TIMEOUT_SECONDS,
                retries={"mode": "standard", "max_attempts": SECRETS_ATTEMPTS}))


#: Secrets Manager's answers that say "not now" rather than "no": throttling (the account's
#: rate, shared with every other caller) and its own transient failures, as botocore's
#: standard retry mode counts them; any 5xx status is one too. They are what is left
#: after :data:`SECRETS_ATTEMPTS` attempts.
_SECRET_NOT_NOW = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "LimitExceededException", "RequestTimeout", "RequestTimeoutException",
    "InternalServiceError", "ServiceUnavailable"})


def _busy(cause: BaseException | None, secret_id: str) -> SecretsManagerBusyError | None:
    """The error for a Secrets Manager that throttled or failed the call (``cause``); else None."""
    response = getattr(cause, "response", None)
    if not isinstance(response, Mapping):
        return None
    said = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    if said.get("Code") not in _SECRET_NOT_NOW and not 500 <= status <= 599:
        return None
    return SecretsManagerBusyError(
        f"cannot read secret {secret_id} for now: Secrets Manager answered "
        f"{said.get('Code')} ({said.get('Message', '')}; {SECRETS_ATTEMPTS} attempts); "
        "the next run retries. Throttling that repeats means other callers in the account "
        "and region use up Secrets Manager's request rate")


def _unreachable(cause: BaseException | None,
                 secret_id: str) -> SecretsManagerUnreachableError | None:
    """The error for a Secrets Manager that did not answer (``cause``), saying where to look."""
    # A connection refused, reset or closed before an answer, or an answer that never came
    # (ReadTimeoutError is an HTTPClientError): what botocore's retries count as transient.
    if not isinstance(cause, (botocore.exceptions.ConnectionError,
                              botocore.exceptions.HTTPClientError)):
        return None
    return SecretsManagerUnreachableError(
        f"cannot read secret {secret_id}: Secrets Manager did not answer ({cause}; "
        f"{SECRETS_ATTEMPTS} attempts). In VPC mode (template parameter SubnetIds) the subnets "
        "need an interface endpoint for Secrets Manager with private DNS, or a NAT gateway "
        "(docs/deploy.md, \"Running inside a VPC\")")


def _arn_region(secret_id: str) -> str | None:
    """The region a secret's ARN names, None for a secret named without its ARN."""
    parts = secret_id.split(":")
    return parts[3] if len(parts) >= 7 and parts[0] == "arn" else None


def _refusal(error: BaseException, secret_id: str,
             database: config.Database | None) -> SecretUnavailableError | None:
    """The :class:`SecretUnavailableError` for a refusal no retry changes, else None."""
    # Powertools raises its GetParameterError inside its handler of boto3's error, unchained.
    response = getattr(error.__cause__ or error.__context__, "response", None)
    said = response.get("Error", {}) if isinstance(response, Mapping) else {}
    code = said.get("Code")
    if code not in _SECRET_REFUSALS:
        return None
    meaning, action = _SECRET_REFUSALS[code]
    named, running = _arn_region(secret_id), boto3.session.Session().region_name
    if code == "ResourceNotFoundException" and named and running and named != running:
        meaning = (f"the ARN is in {named}, the function in {running}: a function reads "
                   "secrets of its own region only")
        action = ("create the secret in the stack's region and deploy with its full ARN as "
                  "{parameter}")
    where = (f"template parameter {database.secret_parameter}, variable "
             f"{database.secret_variable}" if database else "the secret's id")
    return SecretUnavailableError(
        f"cannot read secret {secret_id}: {meaning} ({code}: {said.get('Message', '')}); "
        f"{action.format(parameter=where)}")


def fetch_secret(secret_id: str, database: config.Database | None = None, *,
                 renew: bool = False) -> Mapping[str, Any]:
    """Read and parse a database secret, cached for five minutes across warm invocations.

    ``renew`` reads it from Secrets Manager even when cached (a login refused may mean
    the secret was rotated since).

    A secret Secrets Manager will not give (missing, being deleted, refused by the
    role or its key) fails as an input error that says what to do, naming ``database``'s
    template parameter when the caller says which database it is; a Secrets Manager
    that does not answer fails within seconds (:data:`SECRETS_CONNECT_TIMEOUT_SECONDS`),
    naming the route a VPC needs; one that throttles or fails the call is transient too
    (:class:`SecretsManagerBusyError`): the next run retries.
    """
    _secrets_provider()
    try:
        secret = parameters.get_secret(secret_id, transform="json", max_age=300,
                                       force_fetch=renew)
    except parameters.exceptions.TransformParameterError:
        raise SecretFormatError(f"secret {secret_id} is not valid JSON; {_WHAT_TO_STORE}") from None
    except parameters.exceptions.GetParameterError as error:
        cause = error.__cause__ or error.__context__  # boto3's error (see _refusal)
        classified = (_refusal(error, secret_id, database) or _busy(cause, secret_id)
                      or _unreachable(cause, secret_id))
        if classified is None:
            raise
        raise classified from error
    if not isinstance(secret, Mapping):
        raise SecretFormatError(f"secret {secret_id} must be a JSON object; {_WHAT_TO_STORE}")
    return secret


def sslmode(secret: Mapping[str, Any]) -> str:
    """The secret's ``sslmode``, ``verify-full`` when absent, refused when libpq would refuse it."""
    mode = str(secret.get("sslmode") or DEFAULT_SSLMODE)
    if mode not in SSL_MODES:
        raise SecretFormatError(f"sslmode must be one of {', '.join(SSL_MODES)}, got {mode!r}")
    return mode


class _ServerNameContext(ssl.SSLContext):
    """A verifying client context that checks a fully qualified host name without its final dot.

    ``db.example.internal.`` (absolute, as DNS writes it, and as a host may be given so no
    search domain is tried) and ``db.example.internal`` are one name, and a certificate
    names the second; Python compares the text as given, so ``verify-full`` would refuse
    the server. The connection itself still resolves the name as given.
    """

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        """Wrap ``sock`` as SSLContext does, for ``server_hostname`` without a final dot."""
        if isinstance(server_hostname, str) and server_hostname.endswith("."):
            server_hostname = server_hostname[:-1]
        return super().wrap_socket(sock, server_side, do_handshake_on_connect,
                                   suppress_ragged_eofs, server_hostname, session)


def _ssl_context(secret: Mapping[str, Any]) -> ssl.SSLContext | bool:
    """The pg8000 ``ssl_context`` for the secret's ``sslmode``.

    ``False`` (not ``None``) for ``disable``: pg8000 reads ``None`` as "TLS if the
    server offers it", which is libpq's ``prefer``. A context, even an unverified
    one, makes pg8000 refuse a server that declines TLS instead of continuing in
    clear text, which is what ``require`` promises.
    """
    mode = sslmode(secret)
    if mode == "disable":
        return False
    if mode == "require":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    rootcert = secret.get("sslrootcert")
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)  # as create_default_context's
    try:
        if rootcert:
            context.load_verify_locations(cafile=str(rootcert))
        else:
            context.load_default_certs()
            if LAYER_CA_BUNDLE.is_file():
                context.load_verify_locations(cafile=str(LAYER_CA_BUNDLE))
    except (OSError, ssl.SSLError) as error:
        where = f"sslrootcert {rootcert}" if rootcert else f"CA bundle {LAYER_CA_BUNDLE}"
        raise SecretFormatError(
            f"{where} cannot be read as PEM certificates: {error.strerror or error}") from None
    context.check_hostname = mode == "verify-full"
    return context


def _trust_source(secret: Mapping[str, Any]) -> str:
    """Where the certificates a verified connection trusts come from, for error messages."""
    if secret.get("sslrootcert"):
        return f"sslrootcert {secret['sslrootcert']}"
    if LAYER_CA_BUNDLE.is_file():
        return f"system trust store and {LAYER_CA_BUNDLE.name}"
    return ("system trust store (no CA bundle in the layer: build with make deploy-build, "
            "then deploy)")


def _tls_reason(error: BaseException,
                secret: Mapping[str, Any]) -> tuple[str, type[DatabaseUnavailableError]] | None:
    """A one-line reason for a TLS failure and the error to raise, or None when not about TLS.

    A certificate rejected or a server without TLS fails every run alike
    (:class:`ServerNotTrustedError`); a handshake cut short may not.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"server certificate rejected ({error.verify_message}; "
                f"sslmode {sslmode(secret)}, trusting {_trust_source(secret)}); "
                "the password was not sent"), ServerNotTrustedError
    if isinstance(error, ssl.SSLError):
        return (f"TLS handshake failed ({error.reason or error}); the password was not sent",
                DatabaseUnavailableError)
    if (isinstance(error, pg8000.exceptions.InterfaceError)
            and error.args == ("Server refuses SSL",)):
        return (f"the server does not accept TLS (sslmode {sslmode(secret)}); "
                "the password was not sent"), ServerNotTrustedError
    return None


#: the port a secret or the environment may leave out, as in libpq.
DEFAULT_PORT = 5432
#: keys (lower-cased) under which people store a required field by another name: libpq's,
#: JDBC's and ORMs' habits. A missing field's error names the one found, to be renamed.
_OTHER_NAMES = {"host": ("hostname", "host_name", "endpoint", "address", "server"),
                "username": ("user", "user_name", "login", "role"),
                "dbname": ("database", "db", "db_name", "database_name")}
#: what a host that is not a bare host name must become.
_BARE_HOST = ('store the host name alone (an RDS endpoint such as '
              'mydb.abc123xyz.eu-west-2.rds.amazonaws.com), the port in "port" and the '
              'database name in "dbname"')


def _misnamed(secret: Mapping[str, Any], field: str) -> str:
    """Say which key of ``secret`` holds the missing ``field`` under another name, if one does."""
    others = sorted(str(key) for key in secret if str(key) != field and (
        str(key).lower() == field or str(key).lower() in _OTHER_NAMES.get(field, ())))
    return f' (the secret has "{others[0]}": the key must be "{field}")' if others else ""


def _port(value: Any) -> int | None:
    """The port ``value`` gives (a number, or its digits as text), None when absent or not one.

    A JSON number without a fraction is a port whichever way it is written: some tools
    write ``5432.0``. Text is digits only, as libpq reads a port (``"5432.0"`` is not one).
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(
        value, bool) else ""
    return int(text) if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535 else None


def _text(secret: Mapping[str, Any], field: str) -> str:
    """The secret's ``field`` as text: a JSON integer (``"password": 12345678``) as its digits.

    Anything else that is not a string (a fraction, a list, true) has no one text form
    and is refused, naming the field and never the value.
    """
    value = secret.get(field)
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise SecretFormatError(f'the database secret\'s "{field}" is a JSON {type(value).__name__}, '
                            f'not a string: store it in quotes ("{field}": "...")')


def where_problems(secret: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with the secret's ``host`` and ``port``, by field, never quoting a value.

    A host pasted as a URL or a libpq/JDBC connection string (``postgres://etl:pw@host/db``)
    would reach DNS, fail as if the server were down on every run, and be logged with
    the password in it; a port out of range would fail inside the socket as a bug. Both
    are caught here, naming the field. White space around a host is dropped, not refused.
    """
    problems: dict[str, str] = {}
    host = str(secret.get("host") or "").strip()
    if not host.startswith("/"):
        if any(mark in host for mark in ("://", "@", "/", "?", "=")):
            problems["host"] = f"is a URL or a connection string, not a host name: {_BARE_HOST}"
        elif any(character.isspace() for character in host):
            problems["host"] = f"contains white space: {_BARE_HOST}"
        elif host.count(":") == 1 and host.rpartition(":")[2].isdigit():
            problems["host"] = f"ends in a port (:{host.rpartition(':')[2]}): {_BARE_HOST}"
        elif host.endswith(".") and (":" in host or host[:-1].rpartition(".")[2].isdigit()):
            problems["host"] = ("is an IP address with a final dot, which no resolver accepts "
                                f"(a final dot is for names): {_BARE_HOST}")
    if secret.get("port") not in (None, "") and _port(secret["port"]) is None:
        problems["port"] = ("is not a port number from 1 to 65535: store it as 5432 or \"5432\", "
                            "or leave it out for 5432")
    return problems


def _login_refusal(error: BaseException) -> tuple[str, type[LoginRefusedError]] | None:
    """The reason and error for a server that refused the login itself, None for anything else.

    The server sends its report and closes; pg8000 then says goodbye on the closed socket,
    and that write's ``network error`` may replace the report, which it keeps as context.
    """
    seen: BaseException | None = error
    while seen is not None and not server_fields(seen):
        seen = seen.__context__ if seen.__context__ is not error else None
    fields = server_fields(seen) if seen is not None else {}
    fix = _LOGIN_REFUSALS.get(fields.get("C", ""))
    if fix is None:
        return None
    return f"{fields.get('M', 'refused')} (SQLSTATE {fields['C']}): {fix}", LoginRefusedError


def connection_kwargs(secret: Mapping[str, Any], *,
                      timeout: float | None = CONNECT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Translate a secret into pg8000 arguments, following libpq's host and sslmode rules.

    pg8000 applies ``timeout`` to every socket wait, the connect and each statement's
    reply alike: a caller whose statements may run longer (a bulk load) passes more.
    """
    missing = [key for key in REQUIRED_KEYS if not secret.get(key)]
    if missing:
        raise SecretFormatError("database secret lacks " + ", ".join(
            key + _misnamed(secret, key) for key in missing))
    problems = where_problems(secret)
    if problems:
        raise SecretFormatError("; ".join(f'the database secret\'s "{field}" {problem}'
                                          for field, problem in problems.items()))
    port = _port(secret.get("port")) or DEFAULT_PORT
    kwargs: dict[str, Any] = {
        "user": _text(secret, "username"),
        "password": _text(secret, "password") or None,
        "database": secret["dbname"],
        "timeout": timeout,
        "application_name": "totes-pipeline",
        # Sent at startup, so it outranks a client_encoding an operator set for the role or
        # the database (ALTER ROLE/DATABASE ... SET): COPY's bytes are written and read as
        # UTF-8 unseen by pg8000, so in any other encoding they would arrive changed.
        "startup_params": {"client_encoding": CLIENT_ENCODING},
    }
    host = str(secret["host"]).strip()
    if host.startswith("/"):
        kwargs["unix_sock"] = os.path.join(host, f".s.PGSQL.{port}")
        kwargs["ssl_context"] = False
    else:
        kwargs.update(host=host, port=port, ssl_context=_ssl_context(secret))
    return kwargs


def with_connection_fields(secret: Mapping[str, Any], database: config.Database,
                           secret_id: str) -> dict[str, Any]:
    """The secret with the environment's connection fields over its own ones.

    Fails naming every field that neither gives, and both places it may come from.
    """
    given = config.connection_fields(database)
    merged = {**secret, **given}
    problems = []
    for field in REQUIRED_KEYS:
        if not merged.get(field):
            where = f'put "{field}" in secret {secret_id}'
            if field in config.CONNECTION_FIELDS:
                where += (f" or set {database.variable(field)} "
                          f"(template parameter {database.parameter(field)})")
            problems.append(f"no {field} for the {database.title.lower()} database: {where}"
                            f"{_misnamed(secret, field)}")
    for field, problem in where_problems(merged).items():
        place = (f"{database.variable(field)} (template parameter {database.parameter(field)})"
                 if field in given else f'"{field}" in secret {secret_id}')
        problems.append(f"the {database.title.lower()} database's {field} from {place} {problem}")
    if problems:
        raise SecretFormatError("; ".join(problems))
    return merged


def connect(secret_id: str, *, timeout: float | None = CONNECT_TIMEOUT_SECONDS,
            database: config.Database | None = None) -> pg8000.native.Connection:
    """Open a connection with the credentials in ``secret_id``, or fail saying why.

    ``database`` says which one it is, so its connection fields in the environment
    apply (the functions always say; local tools may use the secret alone).
    ``timeout`` bounds every wait on the server, statements included (see
    :func:`connection_kwargs`).
    """
    cached = fetch_secret(secret_id, database)
    try:
        return _connect_through(cached, secret_id, database, timeout)
    except LoginRefusedError as refused:
        # The secret may have been rotated since this container cached it: read it anew, once.
        try:
            renewed = fetch_secret(secret_id, database, renew=True)
        except InputError as unread:  # the refusal is what happened (a transient error is retried)
            raise LoginRefusedError(f"{refused} (whether the secret was rotated since could not "
                                    f"be checked: reading it again failed: {unread})") from unread
        if renewed != cached:
            return _connect_through(renewed, secret_id, database, timeout)
        pending = _pending_secret(secret_id)
        if pending is None or pending == cached:
            raise
        try:
            connection = _connect_through(pending, secret_id, database, timeout)
        except LoginRefusedError:
            raise refused from None
        except InputError as unusable:  # a malformed pending version (an unreachable one: retried)
            raise LoginRefusedError(f"{refused} (the secret's AWSPENDING version could not be "
                                    f"tried: {unusable})") from unusable
    logger.info("connected with the secret's AWSPENDING version: a rotation is between "
                "setting the new password and making it current", extra={"secret": secret_id})
    return connection


def _pending_secret(secret_id: str) -> Mapping[str, Any] | None:
    """The secret's ``AWSPENDING`` version, if a rotation has one; None otherwise, or unreadable.

    A single-user rotation sets the database's password to the pending version, then,
    moments later, makes that version current: a run between the two is refused with
    the current one. Not cached (a rotation is rare and brief). None when there is no
    such version, or it is refused or not a JSON object: the refusal then stands. A
    Secrets Manager that throttles, fails or does not answer raises the transient error
    the current version's read would: whether a rotation is under way is not known yet,
    and the next run asks again.
    """
    client = DEFAULT_PROVIDERS["secrets"].client
    try:
        pending = json.loads(client.get_secret_value(SecretId=secret_id,
                                                     VersionStage="AWSPENDING")["SecretString"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        not_now = _busy(error, secret_id) or _unreachable(error, secret_id)
        if not_now is None:
            return None
        raise not_now from error
    except (KeyError, ValueError):
        return None
    return pending if isinstance(pending, Mapping) else None


def _connect_through(secret: Mapping[str, Any], secret_id: str, database: config.Database | None,
                     timeout: float | None) -> pg8000.native.Connection:
    """Connect with ``secret`` read from ``secret_id``, the environment's fields over its own."""
    if database is not None:
        secret = with_connection_fields(secret, database, secret_id)
    return connect_with(secret, f"secret {secret_id}", timeout=timeout)


def _alive(conn: pg8000.native.Connection, timeout: float | None) -> bool:
    """Tell whether a kept connection still answers, outside any transaction; set its timeout.

    One round trip (an empty simple query), bounded by :data:`LIVENESS_TIMEOUT_SECONDS`;
    then every later wait is bounded by ``timeout``, as for a new connection. pg8000
    sets the socket's timeout only when it connects, so it is set here on its socket.
    """
    try:
        conn._usock.settimeout(LIVENESS_TIMEOUT_SECONDS)
        conn.run("SELECT 1")
        conn._usock.settimeout(timeout)
    except Exception:  # whatever went wrong, a new connection is the answer, never a leak
        return False
    idle: bool = conn._transaction_status == b"I"  # ReadyForQuery's status: no transaction
    return idle


@contextmanager
def kept_connection(secret_id: str, *, timeout: float | None,
                    database: config.Database) -> Iterator[pg8000.native.Connection]:
    """Lend the connection this container kept from its last invocation, or open a new one.

    A warm Lambda container runs its handler again and again; keeping its connection
    saves the connect (TCP, TLS, authentication: several round trips) each time. What
    is lent has answered a liveness check and holds no transaction, so no snapshot,
    lock or setting of an earlier invocation carries over; one that fails the check
    (the server restarted, a failover, an idle timeout) is closed and replaced. After
    a block that raised, the connection is closed, never kept: it may be broken or
    mid-transaction. When the secret (or the environment) now names another login,
    server or database, or the connection is older than :data:`KEPT_MAX_AGE_SECONDS`
    (its host name may now lead elsewhere), it is closed and a new one opened.
    """
    secret = with_connection_fields(fetch_secret(secret_id, database), database, secret_id)
    kwargs = connection_kwargs(secret, timeout=timeout)
    target = tuple(kwargs.get(name) for name in ("user", "database", "host", "port", "unix_sock"))
    kept = _KEPT.pop((secret_id, database.prefix), None)
    conn = None
    if kept is not None:
        kept_target, kept_conn, opened = kept
        if (kept_target == target and time.monotonic() - opened < KEPT_MAX_AGE_SECONDS
                and _alive(kept_conn, timeout)):
            conn = kept_conn
        else:
            close_quietly(kept_conn)
    if conn is None:
        conn, opened = connect(secret_id, timeout=timeout, database=database), time.monotonic()
    try:
        yield conn
    except BaseException:
        close_quietly(conn)
        raise
    _KEPT[(secret_id, database.prefix)] = (target, conn, opened)


def forget_kept_connections() -> None:
    """Close every kept connection (a test that starts as a cold container does this)."""
    while _KEPT:
        close_quietly(_KEPT.popitem()[1][1])


def connect_with(secret: Mapping[str, Any], source: str, *,
                 timeout: float | None = CONNECT_TIMEOUT_SECONDS) -> pg8000.native.Connection:
    """Open a connection from an RDS-shaped mapping; ``source`` names it in errors.

    Shared by :func:`connect` and local tools that take credentials another way
    (a DSN on the command line), so every caller gets the same one-line errors. A
    server older than :data:`MINIMUM_SERVER_MAJOR` is refused here, from the version
    it announced at startup (no query), before any statement fails on a missing function.
    """
    kwargs = connection_kwargs(secret, timeout=timeout)
    where = kwargs.get("unix_sock") or f"{kwargs['host']}:{kwargs['port']}"
    try:
        conn = Connection(**kwargs)
    except (pg8000.exceptions.InterfaceError, pg8000.exceptions.DatabaseError, OSError,
            UnicodeError) as error:
        reason, refusal = _tls_reason(error, secret) or _login_refusal(error) or (
            error.args[0] if error.args else type(error).__name__, DatabaseUnavailableError)
        if isinstance(reason, dict):
            reason = reason.get("M", "refused")
        if isinstance(error.__cause__ or error.__context__, TimeoutError):
            reason = f"{reason}; {_NO_ANSWER.format(seconds=timeout)}"
        raise refusal(
            f"cannot connect to database {kwargs['database']} at {where} "
            f"({source}): {reason}"
        ) from None
    version = str(conn.parameter_statuses.get("server_version", ""))
    major = re.match(r"[0-9]+", version)
    if major and int(major[0]) < MINIMUM_SERVER_MAJOR:
        close_quietly(conn)
        raise UnsupportedServerError(
            f"cannot use database {kwargs['database']} at {where} ({source}): the server runs "
            f"PostgreSQL {version}, and the pipeline needs {MINIMUM_SERVER_MAJOR} or later: "
            "upgrade it (on RDS: modify the DB instance's engine version; docs/deploy.md, "
            "\"Preparing the databases\")")
    return conn


def server_fields(error: BaseException) -> dict[str, str]:
    """The fields of the server's error report (``C``: the SQLSTATE, ``M``: the message).

    pg8000 puts them in a dict as the error's first argument, and nothing when the
    error came from the client (a broken socket); every caller that tells one SQLSTATE
    from another reads them here, so an error without a report reads as empty, never
    as a crash inside an ``except``.
    """
    fields = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    return {str(name): str(value) for name, value in fields.items()}


#: SQLSTATEs by which a server ends a statement or a session whatever the statement was:
#: retrying later is the answer. Class 08 (connection exceptions) is matched by its prefix.
INTERRUPTIONS = {
    "40001": "a standby's recovery conflict (or a serialization failure)",
    "40P01": "a deadlock",
    "57014": "a statement cancelled (statement_timeout, pg_cancel_backend)",
    "57P01": "the session ended by an administrator, a shutdown or a failover",
    "57P02": "the server's crash shutdown",
    "57P03": "the server not accepting connections yet",
    "57P05": "idle_session_timeout",
    "25P03": "idle_in_transaction_session_timeout",
}
_CONNECTION_EXCEPTION_CLASS = "08"
#: pg8000's message for a socket that failed or closed (its only marker: no class of its own).
_NETWORK_ERROR = ("network error",)


def interruption(error: BaseException, database: str) -> SessionInterruptedError | None:
    """The transient error ``error`` is when the server ended its statement or session, else None.

    ``database`` names the database in the message. Such a failure says nothing about
    the request: the same run succeeds once the server is back, the standby has replayed,
    or the administrator is done, so it must not read as a bug. A socket timeout is the
    caller's own deadline, not an interruption: it stays as it is. The message keeps the
    server's SQLSTATE and reason (and, for a recovery conflict, its detail: which kind).
    """
    if not isinstance(error, (pg8000.native.DatabaseError, pg8000.native.InterfaceError)):
        return None
    fields = server_fields(error)
    code = fields.get("C", "")
    if code in INTERRUPTIONS or code.startswith(_CONNECTION_EXCEPTION_CLASS):
        cause = INTERRUPTIONS.get(code, "a connection failure")
        detail = f" ({fields['D']})" if code == "40001" and fields.get("D") else ""
        return SessionInterruptedError(
            f"the {database} server ended the run's statement or session: {cause}; "
            f"SQLSTATE {code}: {fields.get('M', '')}{detail}. Nothing was committed; the next "
            "run retries (docs/runbook.md, \"Transient errors\")")
    if (isinstance(error, pg8000.native.InterfaceError) and error.args == _NETWORK_ERROR
            and not isinstance(error.__cause__, TimeoutError)):
        return SessionInterruptedError(
            f"the connection to the {database} server was lost with no reason from the server "
            "(a failover, a restart, a network break). Nothing was committed; the next run "
            "retries (docs/runbook.md, \"Transient errors\")")
    return None


@contextmanager
def interruptions_are_transient(database: str) -> Iterator[None]:
    """Raise an error the server's ending the session caused as :class:`SessionInterruptedError`.

    Wraps a stage's database work at its edge (ingest's capture, the load, the
    audit), so a server that terminated the session, conflicted with recovery or
    timed the statement out reads as transient, not as a bug that pages. The
    driver's error is looked for along the chain of causes (the load wraps it in
    an error naming the manifest); it stays the new error's cause. ``database``
    names the server in the message (:func:`interruption`).
    """
    try:
        yield
    except Exception as error:
        seen: BaseException | None = error
        while seen is not None:
            interrupted = interruption(seen, database)
            if interrupted is not None:
                raise interrupted from error
            seen = seen.__cause__
        raise


def drop_row_values(error: BaseException | None) -> None:
    """Strip the row values a server error (and every error it was raised from) may quote.

    pg8000 carries the server's whole error report, whose detail is "Failing row
    contains (...)" for a constraint violation and whose message quotes a value it
    cannot parse; logged, both put personal data in CloudWatch. What remains names
    the table, column and constraint, which is what a person needs to act. In place,
    so the traceback and the kind of the error stay as they were.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, pg8000.native.DatabaseError) and error.args and isinstance(
                error.args[0], dict):
            fields = error.args[0]
            names = {fields.get(name) for name in ("s", "t", "c", "d", "n")}
            kept = {name: fields[name] for name in _NAMING_FIELDS if name in fields}
            if "M" in kept:
                kept["M"] = _QUOTED.sub(
                    lambda quoted: quoted[0] if quoted[1] in names else '"…"', str(kept["M"]))
            error.args = (kept, *error.args[1:])
        error = error.__cause__ or error.__context__


def quote_ident(name: str) -> str:
    """Quote an identifier that already passed an allow-list, for use in SQL text."""
    quoted: str = pg8000.native.identifier(name)
    return quoted


def close_quietly(conn: pg8000.native.Connection) -> None:
    """Close a connection whose socket may already have failed, without raising.

    Closing a broken connection can only report the break again; the error worth
    raising is the one that broke it, which the caller is propagating.
    """
    with suppress(pg8000.native.InterfaceError, OSError):
        conn.close()
