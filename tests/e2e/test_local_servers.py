"""The embedded server stops when the last command using it ends, whichever command that was.

Every command runs as a user runs it: the ``totes`` console script in a child
process, on a demo folder of its own (never the clone's ``.demo``).
"""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scratch_postgres
from cli_process import TOTES, free_ports, stopped_demo, totes

from totes_local import stack

#: a process that starts the server on a folder, says so, and keeps using it until killed.
HOLDER = ("import sys, time; from pathlib import Path; from totes_local import stack; "
          "stack.start_postgres(Path(sys.argv[1])); print('up', flush=True); time.sleep(600)")


def hold(data_dir: Path) -> subprocess.Popen:
    """A process using the server on ``data_dir`` (it started it), as a dashboard would."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "up"
    return holder


@pytest.fixture
def demo_dir(blank_cluster):
    """A demo folder with a warehouse database and its server stopped, as after ``make demo``."""
    yield from stopped_demo(blank_cluster)


def test_sql_prompt_runs_psql_and_stops_the_server_when_psql_ends(demo_dir):
    assert not stack.is_running(demo_dir / "pg")
    done = totes("sql", "--dir", str(demo_dir), stdin="select 40 + 2 as answer;\n")
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    assert not stack.is_running(demo_dir / "pg"), "totes sql left the server running"


def test_psql_exit_status_is_the_commands(demo_dir):
    done = totes("sql", "--dir", str(demo_dir), stdin="\\set ON_ERROR_STOP on\nselect nope;\n")
    assert done.returncode == 3 and "nope" in done.stderr
    assert not stack.is_running(demo_dir / "pg")


def test_a_user_killed_without_its_exit_hook_no_longer_keeps_the_server_running(demo_dir):
    holder = hold(demo_dir / "pg")
    holder.kill()  # SIGKILL: its id stays in pgserver's list of users
    holder.wait()
    assert stack.is_running(demo_dir / "pg")
    done = totes("seed", "--data-dir", str(demo_dir / "pg"), "--scale", "0.01")
    assert done.returncode == 0, done.stderr
    assert not stack.is_running(demo_dir / "pg"), "a dead user's id kept the server running"


@pytest.mark.slow
def test_logical_demo_restarts_a_server_another_process_is_using_and_keeps_every_version(
        demo_dir):
    holder = hold(demo_dir / "pg")
    try:
        done = totes("demo", "--dir", str(demo_dir), "--scale", "0.02", "--steps", "1",
                     env={"CAPTURE_MODE": "logical"})
        assert done.returncode == 0, done.stderr
        assert "capture mode logical" in done.stdout
    finally:
        holder.kill()
        holder.wait()
    # Log-based capture keeps both amendments of the order, and its cancellation.
    history = done.stdout.split("history of amended sales order")[1].split(
        "history of cancelled")[0]
    versions = [line for line in history.splitlines()[2:] if line.strip()]
    assert len(versions) == 3
    cancelled = done.stdout.split("history of cancelled sales order")[1].split("files written")[0]
    assert cancelled.strip().splitlines()[-1].endswith("(deleted)")


def test_stop_stops_every_server_of_the_clone_and_says_so(demo_dir, blank_cluster):
    clone = demo_dir / "clone"
    folders = [clone / ".demo" / "pg", clone / ".invoke" / "pg"]
    holders = []
    for folder in folders:
        folder.parent.mkdir(parents=True)
        scratch_postgres.copy(blank_cluster, folder)    # a server's files, made in a second
        holders.append(hold(folder))
    try:
        done = totes("stop", "--root", str(clone))
        assert done.returncode == 0, done.stderr
        assert not any(map(stack.is_running, folders))
        assert "stopped the embedded PostgreSQL in .demo/pg" in done.stdout
        assert "stopped the embedded PostgreSQL in .invoke/pg" in done.stdout
        assert "no local server running" not in done.stdout    # it stopped two
        assert totes("stop", "--root", str(clone)).stdout.startswith("no local server running")
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_stop_ends_a_background_local_stack(demo_dir):
    clone = demo_dir / "clone"
    clone.mkdir()
    moto_port, postgres_port = free_ports(2)
    server = subprocess.Popen(
        [TOTES, "local-stack", "--moto-port", str(moto_port), "--postgres-port",
         str(postgres_port), "--scale", "0.01"], cwd=clone, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # the local stack starts in 20-160 s on a busy machine
        lines = [""]
        while "local stack ready" not in lines[-1]:
            lines.append(server.stdout.readline())
            assert time.monotonic() < deadline and server.poll() is None
        started = "".join(lines)
        # It names everything it serves: publish's lake bucket and Glue database too.
        assert "moto (S3, Secrets Manager, Glue)" in started
        assert f"buckets {stack.INGEST_BUCKET}, {stack.PROCESSED_BUCKET}, {stack.LAKE_BUCKET}; " \
            f"Glue database {stack.LAKE_DATABASE}; " in started
        done = totes("stop", "--root", str(clone))
        assert done.returncode == 0, done.stderr
        assert f"stopped totes local-stack (pid {server.pid})" in done.stdout
        assert "no local server running" not in done.stdout    # not after "stopped ..."
        assert server.wait(timeout=120) == 0
        assert not stack.is_running(clone / ".invoke" / "pg")
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
