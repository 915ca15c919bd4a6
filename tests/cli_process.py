"""The ``totes`` command run as a user runs it: the console script, in a child process."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import scratch_postgres
from totes_local import stack

TOTES = str(Path(sys.executable).with_name("totes"))


def totes(*args: str, stdin: str = "", env: dict | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``totes args`` with ``env`` added to this environment; capture its output."""
    return subprocess.run([TOTES, *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (held open together, so they differ)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def stopped_demo(blank: Path, databases: tuple[str, ...] = ("warehouse",),
                 fill: Callable[[stack.Postgres], object] | None = None) -> Iterator[Path]:
    """A demo folder whose server holds ``databases`` and is stopped; removed afterwards.

    Its server is a copy of the ``blank`` cluster's files (the ``blank_cluster`` fixture).

    ``fill``, when given, is called with the server once the databases exist.

    Outside pytest's temporary folders (their parents are 0700; the server's own
    system user must reach the data directory when tests run as root).
    """
    path = Path(tempfile.mkdtemp(prefix="totes-cli-test-"))
    path.chmod(0o755)
    scratch_postgres.copy(blank, path / "pg")
    postgres = stack.start_postgres(path / "pg")
    for name in databases:
        postgres.recreate_database(name)
    if fill:
        fill(postgres)
    stack.stop_postgres(path / "pg")
    yield path
    stack.stop_postgres(path / "pg")
    shutil.rmtree(path, ignore_errors=True)
