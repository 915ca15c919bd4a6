"""Embedded PostgreSQL servers that only tests use: their data is thrown away, so never fsynced.

A test server's data is deleted when its tests end; it must survive a server that
stops or crashes (the kernel keeps what was written), never a machine that loses
power. ``fsync = off`` keeps every commit, checkpoint and ``CREATE DATABASE`` from
waiting on the disk, which on a busy 2-core machine is most of a clean stop (seconds
for a server holding a few hundred test databases). Commits stay synchronous: what
a test's commit returned for is in the WAL the server replays after a crash.
"""
import subprocess  # nosec B404: cp -a of a stopped test cluster's files, rm -rf of a used one
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
    Whatever server runs on the folder at the end is stopped, so one restarted in between
    (:func:`totes_local.stack.with_logical_decoding`) is stopped too, not left running.
    """
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir.chmod(0o755)
    try:
        yield start(data_dir), data_dir
    finally:
        stack.stop_postgres(data_dir)
        delete_in_background(data_dir)


def delete_in_background(folder: Path) -> None:
    """Delete ``folder`` in a detached ``rm -rf`` and return at once, not waiting for it.

    After a worker's few hundred test databases the session server's files are gigabytes
    in tens of thousands of files: deleting them was each worker's last teardown, one to
    three minutes on the busy 2-core machine (150 databases: 1.7 GB, 48,000 files, 39 s),
    which the last worker to finish added to the whole run; a module's own server
    (:func:`own_cluster`) is deleted the same way. Nothing reads the folder again.
    """
    subprocess.run(["sh", "-c", 'rm -rf -- "$1" >/dev/null 2>&1 &', "sh", str(folder)],
                   check=True)
