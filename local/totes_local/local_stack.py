"""``totes local-stack``: the local stand-in for AWS and RDS, reachable from a Lambda container.

``sam local invoke`` runs a function in a container, where 127.0.0.1 is the
container itself. This command serves what the function needs on fixed TCP
ports of the host, for as long as it runs (Ctrl-C stops it):

* moto (S3, Secrets Manager and Glue, the lake's catalog) on :data:`MOTO_PORT`;
* the embedded PostgreSQL on :data:`POSTGRES_PORT`. pgserver always starts the
  server with ``-h ""`` (no TCP, Unix socket only) and the command line wins over
  ``listen_addresses`` in any configuration file, so a small relay here accepts
  TCP connections and forwards each one, byte for byte, to the server's socket;
* the three buckets and the lake's Glue database, and secrets whose ``host`` is
  :data:`CONTAINER_HOST` (the name under which a container reaches its host), with
  ``"sslmode": "disable"``:
  neither moto nor this PostgreSQL has TLS. Acceptable only here, on the
  developer's machine; every deployed secret keeps the ``verify-full`` default;
* totesys, seeded, and an empty warehouse, both recreated on every start.

Both servers listen on each ``--bind`` address (127.0.0.1 by default; ``make
invoke`` adds the Docker bridge's host address, where a container on the bridge
reaches its host). The relay turns every TCP connection into a connection on the
server's socket, which pgserver trusts: so before the relay listens, the superuser
gets a password generated for this start (:func:`require_password`) and the socket
asks for it. The password is printed once and is in the secrets the functions
read; no other copy is kept, and the next start makes a new one. moto accepts any
credentials, so never bind all interfaces or a network you do not trust (README,
"Invoking a function with ``sam local invoke``").
"""
import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import secrets as tokens
import selectors
import shutil
import signal
import socket
import socketserver
import subprocess  # nosec B404
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

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
def serve(data_dir: Path, *, binds: Sequence[str] = ("127.0.0.1",), moto_port: int = MOTO_PORT,
          postgres_port: int = POSTGRES_PORT, container_host: str = CONTAINER_HOST,
          scale: float = 0.1, seed: int = 42) -> Iterator[LocalStack]:
    """Start PostgreSQL (relayed to TCP) and moto on each of ``binds``; seed; stop on exit.

    moto keeps its state in the process, so its servers on the different addresses
    share one S3 and one Secrets Manager.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    postgres = require_password(stack.start_postgres(data_dir), tokens.token_urlsafe(24))
    relays: list[_Relay] = []
    motos: list[ThreadedMotoServer] = []
    try:
        for address in binds:
            relay = _Relay((address, postgres_port),
                           f"{postgres.socket_dir}/.s.PGSQL.{postgres.port}")
            relays.append(relay)
            threading.Thread(target=relay.serve_forever, name=f"pg-relay-{address}",
                             daemon=True).start()
            moto = ThreadedMotoServer(ip_address=address, port=moto_port, verbose=False)
            moto.start()
            motos.append(moto)
        endpoint = f"http://{binds[0]}:{moto_port}"
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
            generator.seed_new(conn, scale=scale, seed=seed)
        finally:
            conn.close()
        yield LocalStack(endpoint, (binds[0], postgres_port), secrets, postgres.password)
    finally:
        for moto in motos:
            moto.stop()
        for relay in relays:
            relay.shutdown()
            relay.server_close()
        postgres.server.cleanup()


def can_bind(address: str) -> bool:
    """Whether ``address`` is one of this machine's (binding it sends nothing anywhere)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def interface_address(name: str) -> str | None:
    """The IPv4 address of the network interface ``name`` on this machine, if it has one."""
    import fcntl
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(probe.fileno(), siocgifaddr,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


def bridge_address() -> str | None:
    """The host's address on Docker's default bridge, when it is this machine's (Linux).

    The bridge network's gateway, or else the address of its interface (docker0; Debian's
    Docker leaves the gateway out of ``docker network inspect``). None on Docker Desktop,
    whose bridge lives in a VM: there ``host.docker.internal`` reaches the host's loopback.
    """
    if shutil.which("docker") is None:
        return None
    inspected = subprocess.run(  # nosec B603 B607
        ["docker", "network", "inspect", "bridge", "--format",
         "{{json .IPAM.Config}} {{json .Options}}"], capture_output=True, text=True)
    if inspected.returncode:
        return None
    ipam, options = inspected.stdout.split(" ", 1)
    configs = json.loads(ipam) or []
    candidates = [config["Gateway"] for config in configs if config.get("Gateway")]
    candidates.append(interface_address(
        json.loads(options).get("com.docker.network.bridge.name", "docker0")) or "")
    subnets = [ipaddress.ip_network(config["Subnet"]) for config in configs
               if config.get("Subnet")]
    for candidate in filter(None, candidates):
        address = ipaddress.ip_address(candidate)
        if any(address in subnet for subnet in subnets) and can_bind(candidate):
            return candidate
    return None


def bind_addresses() -> list[str]:
    """Where ``make invoke``'s stack listens: loopback, and the bridge's host address if any."""
    bridge = bridge_address()
    return ["127.0.0.1"] + ([bridge] if bridge else [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes local-stack``."""
    parser.add_argument("--bind", action="append", metavar="ADDRESS",
                        help="an address both servers listen on; repeat for several (default "
                        "127.0.0.1)")
    parser.add_argument("--docker-bridge", action="store_true",
                        help="also listen on the Docker bridge's host address, where a "
                        "container (sam local invoke) reaches this machine")
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
    binds = args.bind or ["127.0.0.1"]
    bridge = bridge_address() if args.docker_bridge else None
    if bridge:
        binds = list(dict.fromkeys([*binds, bridge]))
    elif args.docker_bridge:
        # Docker Desktop: the bridge is in its VM, and host.docker.internal reaches loopback.
        print("no Docker bridge address on this machine: listening on loopback only",
              file=sys.stderr, flush=True)
    if any(address in ("0.0.0.0", "::", "") for address in binds):  # nosec B104: a refusal
        raise SystemExit("totes local-stack: refusing to listen on all interfaces (moto "
                         "accepts any credentials); give each address with --bind")
    with serve(args.data_dir, binds=binds, moto_port=args.moto_port,
               postgres_port=args.postgres_port, container_host=args.container_host,
               scale=args.scale) as served:
        port = served.postgres_address[1]
        print(f"moto (S3, Secrets Manager, Glue): {served.moto_endpoint} (listening on "
              f"{', '.join(binds)})\n"
              f"PostgreSQL (totesys seeded, warehouse empty): port {port} on the same "
              f"addresses, relayed to the "
              f"embedded server in {args.data_dir}\n"
              f"PostgreSQL user postgres, password {served.password} (shown once: made for "
              "this start, kept only in the secrets below)\n"
              f"buckets {stack.INGEST_BUCKET}, {stack.PROCESSED_BUCKET}, {stack.LAKE_BUCKET}; "
              f"Glue database {stack.LAKE_DATABASE}; secrets "
              + json.dumps(sorted(served.secrets)) + f" (host {args.container_host})\n"
              f"{READY} in {time.perf_counter() - started:.1f} s; Ctrl-C stops it", flush=True)
        while not stopped.wait(1):
            pass
    print("local stack stopped", flush=True)
    return 0
