"""Embedded PostgreSQL servers that only tests use: their data is thrown away, so never fsynced.

A test server's data is deleted when its tests end; it must survive a server that
stops or crashes (the kernel keeps what was written), never a machine that loses
power. ``fsync = off`` keeps every commit, checkpoint and ``CREATE DATABASE`` from
waiting on the disk, which on a busy 2-core machine is most of a clean stop (seconds
for a server holding a few hundred test databases). Commits stay synchronous: what
a test's commit returned for is in the WAL the server replays after a crash.
"""
import shutil
import subprocess  # nosec B404: cp -a of a stopped test cluster's files
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from totes_local import stack


def start(data_dir: Path) -> stack.Postgres:
    """Start (or reuse) the embedded server on ``data_dir`` with fsync off from now on.

    ``ALTER SYSTEM`` keeps the setting in the data directory, so the server's later
    restarts, and copies of its files, run without fsync too.
    """
    postgres = stack.start_postgres(data_dir)
    conn = postgres.connect("postgres")
    try:
        conn.run("ALTER SYSTEM SET fsync = off")
        conn.run("SELECT pg_reload_conf()")
    finally:
        conn.close()
    return postgres


def blank(data_dir: Path) -> None:
    """Make a new cluster's files in ``data_dir`` (fsync off) and stop it: a template to copy.

    A new cluster (initdb) takes seconds on a busy 2-core machine; a copy of its
    stopped files (:func:`copy`) starts in about one.
    """
    start(data_dir)
    stack.stop_postgres(data_dir)


def copy(template: Path, data_dir: Path) -> None:
    """Copy a stopped cluster's files to ``data_dir`` (not yet there), owners and modes kept."""
    subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)  # nosec B603 B607


@contextmanager
def own_cluster(prefix: str) -> Iterator[tuple[stack.Postgres, Path]]:
    """A server of a module's own (settings unlike the session's): stopped and deleted after.

    Outside pytest's temporary folders, which pytest prunes while other runs may use them.
    """
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir.chmod(0o755)
    postgres = None
    try:
        postgres = start(data_dir)
        yield postgres, data_dir
    finally:
        if postgres is not None:
            postgres.server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
