"""``totes local-stack``: the local stand-in for AWS and RDS, reachable from a Lambda container.

``sam local invoke`` runs a function in a container, where 127.0.0.1 is the
container itself. This command serves what the function needs on fixed TCP
ports of the host, for as long as it runs (Ctrl-C stops it):

* moto (S3 and Secrets Manager) on :data:`MOTO_PORT`;
* the embedded PostgreSQL on :data:`POSTGRES_PORT`. pgserver always starts the
  server with ``-h ""`` (no TCP, Unix socket only) and the command line wins over
  ``listen_addresses`` in any configuration file, so a small relay here accepts
  TCP connections and forwards each one, byte for byte, to the server's socket;
* the buckets, and secrets whose ``host`` is :data:`CONTAINER_HOST` (the name
  under which a container reaches its host), with ``"sslmode": "disable"``:
  neither moto nor this PostgreSQL has TLS. Acceptable only here, on the
  developer's machine; every deployed secret keeps the ``verify-full`` default;
* totesys, seeded, and an empty warehouse, both recreated on every start.

Both servers bind to ``--bind`` (127.0.0.1 by default). The relay turns every TCP
connection into a connection on the server's socket, which pgserver trusts: so
before the relay listens, the superuser gets a password generated for this start
(:func:`require_password`) and the socket asks for it. The password is printed
once and is in the secrets the functions read; no other copy is kept, and the
next start makes a new one. moto accepts any credentials, so bind a wider address
only on a network you trust (README, "Invoking a function with ``sam local
invoke``").
"""
import argparse
import contextlib
import dataclasses
import json
import logging
import os
import secrets as tokens
import selectors
import signal
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pg8000.native

from totes import db
from totes_local import generator, stack

MOTO_PORT = 5055
POSTGRES_PORT = 5433
#: how a Lambda container started by SAM reaches its host (Docker Desktop's name; on Linux,
#: ``--add-host host.docker.internal:host-gateway``).
CONTAINER_HOST = "host.docker.internal"
DEFAULT_DATA_DIR = Path(".invoke") / "pg"
DATABASES = ("totesys", "warehouse")
#: the line printed once everything is served (``make invoke`` and the tests wait for it).
READY = "local stack ready"


class _Relay(socketserver.ThreadingTCPServer):
    """Accept TCP connections and pipe each one to a Unix socket."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], unix_socket: str):
        """Listen on ``address``; forward to ``unix_socket``."""
        self.unix_socket = unix_socket
        super().__init__(address, _RelayHandler)


class _RelayHandler(socketserver.BaseRequestHandler):
    """One relayed connection: copy bytes both ways until either side closes."""

    server: _Relay

    def handle(self) -> None:
        """Pump bytes between the TCP client and the PostgreSQL socket."""
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.server.unix_socket)
        except OSError:
            upstream.close()
            return
        peers = {self.request: upstream, upstream: self.request}
        with upstream, selectors.DefaultSelector() as selector:
            for side in peers:
                selector.register(side, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    peers[source].sendall(data)


@dataclass
class LocalStack:
    """What :func:`serve` started: the endpoints and the secrets it provisioned."""

    moto_endpoint: str
    postgres_address: tuple[str, int]
    secrets: dict[str, dict[str, Any]]
    #: the superuser's password for this start (shown once; in the secrets too).
    password: str


#: pg_hba.conf while the stack sets its password: the socket, reachable only by the data
#: directory's owner (PostgreSQL keeps it mode 0700), trusts its owner; nothing else listens yet.
_HBA_OWNER_TRUSTED = "local all all trust\n"
#: pg_hba.conf while the relay serves: every connection, relayed or not, gives the password.
_HBA_SCRAM = "local all all scram-sha-256\n"
#: seconds to wait for the server to apply a changed pg_hba.conf (it does so asynchronously).
HBA_APPLIED_WITHIN = 10.0


def _hba_applied(postgres: stack.Postgres, password_required: bool) -> bool:
    """Tell whether the server is as asked: a wrong password refused, or let in on trust."""
    guess = dataclasses.replace(postgres, password="not the password")  # nosec B106
    try:
        guess.connect("postgres").close()
    except (db.DatabaseUnavailableError, pg8000.native.DatabaseError,
            pg8000.native.InterfaceError):
        return password_required
    return not password_required


def _apply_hba(postgres: stack.Postgres, rules: str, password_required: bool) -> None:
    """Write ``rules`` as the server's pg_hba.conf, have it reload, wait until they hold."""
    Path(postgres.socket_dir, "pg_hba.conf").write_text(rules)
    os.kill(postgres.server.get_pid(), signal.SIGHUP)  # what pg_ctl reload does
    deadline = time.monotonic() + HBA_APPLIED_WITHIN
    while not _hba_applied(postgres, password_required):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server in {postgres.socket_dir} did not apply pg_hba.conf")
        time.sleep(0.1)


def require_password(postgres: stack.Postgres, password: str) -> stack.Postgres:
    """Give the superuser ``password`` and make the server ask every connection for it.

    A data directory an earlier start left asking for a password it no longer
    knows is first opened to its owner only (the socket's directory is theirs alone),
    so no password is ever stored. Returns the server as seen with the password.
    """
    _apply_hba(postgres, _HBA_OWNER_TRUSTED, password_required=False)
    conn = postgres.connect("postgres")
    try:
        conn.run(f"ALTER ROLE {db.quote_ident(postgres.user)} "
                 f"PASSWORD {pg8000.native.literal(password)}")
    finally:
        conn.close()
    _apply_hba(postgres, _HBA_SCRAM, password_required=True)
    return dataclasses.replace(postgres, password=password)


def container_secret(dbname: str, host: str, port: int, password: str) -> dict[str, Any]:
    """The secret of ``dbname`` as a container reaches it: TCP, the stack's password, no TLS."""
    return {"host": host, "port": port, "username": "postgres", "password": password,
            "dbname": dbname, "engine": "postgres",
            # No TLS on the local stack's PostgreSQL (pgserver is built without OpenSSL); the
            # deployed default, verify-full, would refuse it. Local only.
            "sslmode": "disable"}


@contextlib.contextmanager
def serve(data_dir: Path, *, bind: str = "127.0.0.1", moto_port: int = MOTO_PORT,
          postgres_port: int = POSTGRES_PORT, container_host: str = CONTAINER_HOST,
          scale: float = 0.1, seed: int = 42) -> Iterator[LocalStack]:
    """Start PostgreSQL (relayed to TCP) and moto, provision and seed; stop both on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    postgres = require_password(stack.start_postgres(data_dir), tokens.token_urlsafe(24))
    relay = _Relay((bind, postgres_port), f"{postgres.socket_dir}/.s.PGSQL.{postgres.port}")
    relay_thread = threading.Thread(target=relay.serve_forever, name="pg-relay", daemon=True)
    relay_thread.start()
    moto = ThreadedMotoServer(ip_address=bind, port=moto_port, verbose=False)
    moto.start()
    try:
        local_host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind  # nosec B104: a comparison
        endpoint = f"http://{local_host}:{moto_port}"
        secrets = {name: container_secret(dbname, container_host, postgres_port,
                                          postgres.password)
                   for name, dbname in ((stack.TOTESYS_SECRET, "totesys"),
                                        (stack.WAREHOUSE_SECRET, "warehouse"))}
        for name in DATABASES:
            postgres.recreate_database(name)
        with stack.environment(stack.aws_environment(endpoint)):
            stack.provision(secrets)
        conn = postgres.connect("totesys")
        try:
            generator.create_schema(conn)
            generator.generate(conn, scale=scale, seed=seed)
        finally:
            conn.close()
        yield LocalStack(endpoint, (bind, postgres_port), secrets, postgres.password)
    finally:
        moto.stop()
        relay.shutdown()
        relay.server_close()
        postgres.server.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes local-stack``."""
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address both servers listen on (default 127.0.0.1; see README "
                        "for Linux, where a bridge-network container needs the bridge's address)")
    parser.add_argument("--moto-port", type=int, default=MOTO_PORT,
                        help=f"moto's TCP port (default {MOTO_PORT})")
    parser.add_argument("--postgres-port", type=int, default=POSTGRES_PORT,
                        help=f"PostgreSQL's TCP port (default {POSTGRES_PORT})")
    parser.add_argument("--container-host", default=CONTAINER_HOST,
                        help=f"host name the secrets give a container (default {CONTAINER_HOST})")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"embedded server data directory (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--scale", type=float, default=0.1,
                        help="totesys order volume to seed (default 0.1)")


def run(args: argparse.Namespace) -> int:
    """Serve the local stack until Ctrl-C (or SIGTERM)."""
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    started = time.perf_counter()
    with serve(args.data_dir, bind=args.bind, moto_port=args.moto_port,
               postgres_port=args.postgres_port, container_host=args.container_host,
               scale=args.scale) as served:
        host, port = served.postgres_address
        print(f"moto (S3, Secrets Manager): {served.moto_endpoint}\n"
              f"PostgreSQL (totesys seeded, warehouse empty): {host}:{port}, relayed to the "
              f"embedded server in {args.data_dir}\n"
              f"PostgreSQL user postgres, password {served.password} (shown once: made for "
              "this start, kept only in the secrets below)\n"
              f"buckets {stack.INGEST_BUCKET}, {stack.PROCESSED_BUCKET}; secrets "
              + json.dumps(sorted(served.secrets)) + f" (host {args.container_host})\n"
              f"{READY} in {time.perf_counter() - started:.1f} s; Ctrl-C stops it", flush=True)
        while not stopped.wait(1):
            pass
    print("local stack stopped", flush=True)
    return 0
