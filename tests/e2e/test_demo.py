"""``totes demo`` from the command line, as ``make demo`` runs it (small scale for speed)."""
import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from totes_local import cli, stack


def demo_folder() -> Iterator[Path]:
    """A demo directory the embedded server's own user can reach, then stopped and removed.

    Outside pytest's temporary folders: their parents are 0700, and the server runs as
    its own system user (when tests run as root), who must reach the data directory.
    """
    path = Path(tempfile.mkdtemp(prefix="totes-demo-test-"))
    path.chmod(0o755)
    yield path
    if (path / "pg").exists():
        with contextlib.suppress(Exception):
            stack.stop_postgres(path / "pg")  # whatever left it running; never starts it again
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def demo_dir():
    """A demo directory of this test's own."""
    yield from demo_folder()


@dataclass
class Demo:
    """One ``totes demo`` run: its folder and what it printed."""

    path: Path
    out: str


@pytest.fixture(scope="module")
def demo():
    """One ``totes demo --steps 2`` the module's tests read, as ``make demo`` runs it.

    The ``--dir`` is relative (the demo runs from its parent), so the logs and bucket
    copy must land in that folder. A demo takes a minute or more: the tests that only
    read its output, folder, warehouse and lake share it (the one that damages the
    warehouse repairs it).
    """
    for path in demo_folder():
        with pytest.MonkeyPatch.context() as patch, \
                contextlib.redirect_stdout(io.StringIO()) as out:
            patch.chdir(path.parent)
            status = cli.main(["demo", "--dir", path.name, "--scale", "0.02", "--steps", "2"])
        assert status == 0, out.getvalue()
        yield Demo(path, out.getvalue())


@pytest.mark.slow
def test_demo_runs_two_cycles_and_prints_a_readable_summary(demo, capsys):
    out = demo.out
    assert "cycle 1 (first run: everything)" in out and "cycle 2 (incremental)" in out
    assert "fact_sales_order" in out and "after cycle 2" in out
    history = out.split("history of amended sales order")[1].split("history of cancelled")[0]
    versions = [line for line in history.splitlines()[2:] if line.strip()]
    assert len(versions) == 2
    cancelled = out.split("history of cancelled sales order")[1].split("files written")[0]
    versions = [line for line in cancelled.splitlines()[2:] if line.strip()]
    assert len(versions) == 2 and versions[-1].endswith("(deleted)")
    assert "totes sql warehouse" in out
    files = out.split("files written")[1].split("where to look")[0]
    # cycle 2 adds a sales order file and the file of its deletion
    assert "_manifests 2" in files and "fact_sales_order 3" in files

    # The lake, published after each cycle, holds what the warehouse holds; `totes lake` asks it.
    lake = out.split("the lake (Iceberg tables in Glue")[1].split("audit:")[0]
    assert "fact_sales_order_current" in lake and "totes lake" in out
    current = int(lake.split("fact_sales_order_current")[1].split()[0].replace(",", ""))
    assert cli.main(["lake", "--dir", str(demo.path), "-c",
                     "SELECT count(*) AS n FROM fact_sales_order_current"]) == 0
    assert str(current) in capsys.readouterr().out


@pytest.mark.slow
def test_demo_in_a_relative_folder_keeps_logs_and_bucket_files_to_browse(demo):
    log_lines = (demo.path / "pipeline.log").read_text().splitlines()
    messages = {json.loads(line).get("message") for line in log_lines if line.startswith("{")}
    assert "ingest run committed" in messages
    manifests = list((demo.path / "s3").glob("*/_manifests/*/*/*/*.json"))
    assert len(manifests) == 4  # two ingest runs, each transformed once
    assert list((demo.path / "s3").glob("*/fact_sales_order/**/*.parquet"))


@pytest.mark.slow
def test_demo_ends_with_the_audit_and_totes_audit_prints_it_table_by_table(demo, capsys):
    assert "audit: clean - all 11 warehouse tables match the source (0 row(s) in flight" in demo.out
    assert "totes audit" in demo.out.split("where to look")[1]

    # The same audit from the command line, on the demo's databases and bucket copy.
    assert cli.main(["audit", "--dir", str(demo.path)]) == 0
    table = capsys.readouterr().out
    assert "capture point (newest loaded manifest): _manifests/" in table
    (row,) = [line for line in table.splitlines() if line.strip().startswith("dim_staff ")]
    assert row.split()[1:] == ["20", "20", "0", "0", "0", "0", "0"]
    assert table.rstrip().endswith("s)") and "audit: clean" in table

    # Damage is a non-zero exit and names the table; repaired, the audit is clean again.
    conn = stack.start_postgres(demo.path / "pg").connect("warehouse")
    try:
        [[last_name]] = conn.run("SELECT last_name FROM dim_staff WHERE staff_id = 7")
        conn.run("UPDATE dim_staff SET last_name = 'X' WHERE staff_id = 7")
        assert cli.main(["audit", "--dir", str(demo.path)]) == 1
        out = capsys.readouterr().out
        assert "audit: 1 MISMATCH(ES) in dim_staff (0 missing, 0 extra, 1 different; e.g. 7)" in out
    finally:
        conn.run("UPDATE dim_staff SET last_name = :name WHERE staff_id = 7", name=last_name)
        conn.close()
    assert cli.main(["audit", "--dir", str(demo.path)]) == 0


def test_audit_without_a_demo_says_what_to_do(demo_dir, capsys):
    assert cli.main(["audit", "--dir", str(demo_dir)]) == 2
    assert "run make demo first" in capsys.readouterr().err
