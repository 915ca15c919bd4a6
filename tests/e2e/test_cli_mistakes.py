"""A newcomer's mistakes end in one line saying what to do, never a traceback.

Each runs the ``totes`` console script in a child process, as a user (or ``make``)
runs it.
"""
import os
import signal
import subprocess
import time

import pytest
from cli_process import TOTES, stopped_demo, totes

from totes_local import stack


def one_line(text: str) -> str:
    """The only line of ``text``, failing if it has more (a traceback has many)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def empty_demo(blank_cluster):
    """A demo folder whose server exists (stopped) but holds no demo database yet."""
    yield from stopped_demo(blank_cluster, databases=())


def test_misspelt_capture_mode_is_refused_before_anything_starts(tmp_path):
    done = totes("demo", "--dir", str(tmp_path / "demo"), env={"CAPTURE_MODE": "logcal"})
    assert done.returncode == 2
    assert one_line(done.stderr) == ("totes demo: error: CAPTURE_MODE must be one of snapshot, "
                                     "logical, got 'logcal'")
    assert done.stdout == "" and not (tmp_path / "demo").exists()


def test_supersede_without_aws_credentials_says_what_it_needs(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(
        tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="eu-west-2")
    done = subprocess.run([TOTES, "supersede", "status", "--processed-bucket", "processed"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("totes supersede: error: no AWS credentials found")
    assert "deployed stack" in line and "AWS_PROFILE" in line


def test_supersede_on_a_bucket_that_does_not_exist_is_one_line(moto_endpoint):
    done = totes("supersede", "status", "--processed-bucket", "no-such-bucket",
                 env=stack.aws_environment(moto_endpoint))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("totes supersede: error:") and "NoSuchBucket" in line


def test_sql_before_any_demo_says_to_run_it_and_starts_nothing(tmp_path):
    done = totes("sql", "--dir", str(tmp_path))
    assert done.returncode == 2
    assert one_line(done.stderr) == (f"totes sql: error: no demo databases in {tmp_path / 'pg'}: "
                                     "run make demo first")
    assert not (tmp_path / "pg").exists()


def test_sql_on_a_demo_that_never_finished_stops_the_server_again(empty_demo):
    done = totes("sql", "totesys", "--dir", str(empty_demo))
    assert done.returncode == 2
    assert one_line(done.stderr).endswith("run make demo first")
    assert not stack.is_running(empty_demo / "pg")


def test_ctrl_c_during_the_demo_is_one_line_status_130_and_stops_the_server(empty_demo):
    # Ctrl-C in a terminal signals the whole foreground process group: so does this.
    demo = subprocess.Popen([TOTES, "demo", "--dir", str(empty_demo), "--scale", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert demo.stdout.readline().startswith("seeded totesys")
        time.sleep(1)  # inside the first cycle's handlers
        os.killpg(demo.pid, signal.SIGINT)
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert demo.returncode == 130
    assert one_line(err) == "totes demo: interrupted"
    assert not stack.is_running(empty_demo / "pg")


def test_a_demo_size_that_is_not_one_is_a_usage_error_before_anything_starts(tmp_path):
    done = totes("demo", "--dir", str(tmp_path / "demo"), "--scale", "0")
    assert done.returncode == 2
    assert one_line(done.stderr) == ("totes demo: error: argument --scale: must be a positive "
                                     "number, got 0")
    assert not (tmp_path / "demo").exists()
