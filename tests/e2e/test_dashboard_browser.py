"""The dashboard served by ``streamlit run`` and drawn by a real (headless) Chromium."""
import os
import signal
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from cli_process import TOTES, stopped_demo
from dashboard_warehouse import build_warehouse
from PIL import Image

from totes_local import stack
from totes_local.dashboard import launch, screenshot, source

CHROMIUM = screenshot.find_chromium()
#: the charts of the page's ten question sections (the order history is a table).
CHARTS = 10
#: Streamlit's first category colour, which every chart on the page uses.
STREAMLIT_BLUE = (0, 104, 201)

pytestmark = [pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (CI installs it: apt-get install chromium)"),
    pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "streamlit exited before serving the page"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} never became healthy")


@pytest.fixture
def served(postgres, database):
    """The page served on a free loopback port, reading a warehouse of known content."""
    name = database("dash_browser")
    build_warehouse(postgres, name)
    dsn = (f"postgresql://{postgres.user}@/{name}?host={postgres.socket_dir}"
           f"&port={postgres.port}")
    port = free_port()
    server = subprocess.Popen(launch.command(port), env=launch.environment(dsn),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_browser_draws_every_chart_of_the_page(served, tmp_path):
    shot = screenshot.capture(served, tmp_path / "dashboard.png", charts=CHARTS, timeout=180)
    image = Image.open(shot).convert("RGB")
    width, height = image.size
    assert width == screenshot.WIDTH and height > 3000, "the whole page, not one screen"
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    painted = (pixels.min(axis=1) < 235).mean()
    blue = (np.abs(pixels - STREAMLIT_BLUE).max(axis=1) < 40).mean()
    assert painted > 0.05, f"page looks blank ({painted:.1%} painted)"
    assert blue > 0.005, f"no chart marks in Streamlit's chart colour ({blue:.2%})"
    assert len(np.unique(pixels, axis=0)) > 200, "too few colours for a page of charts"


@pytest.fixture
def stopped_demo_warehouse(blank_cluster):
    """A demo folder as ``make demo`` leaves it: a warehouse of known content, server stopped."""
    yield from stopped_demo(blank_cluster,
                            fill=lambda postgres: build_warehouse(postgres, "warehouse"))


def test_first_load_starts_the_stopped_demo_server_and_ctrl_c_stops_it(
        stopped_demo_warehouse, tmp_path):
    data_dir = stopped_demo_warehouse / "pg"
    env = {name: value for name, value in os.environ.items()
           if name not in (source.DSN_VARIABLE, source.SECRET_VARIABLE)}
    env[source.DEMO_DIR_VARIABLE] = str(data_dir)
    port = free_port()
    # `totes dashboard` as `make dashboard` runs it, in its own process group: Ctrl-C in a
    # terminal signals the whole group, Streamlit included.
    server = subprocess.Popen([TOTES, "dashboard", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server)
        assert not stack.is_running(data_dir)
        # The very first load, its queries in parallel, draws every chart: no error instead.
        screenshot.capture(url, tmp_path / "first.png", charts=CHARTS, timeout=180)
        assert stack.is_running(data_dir)
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)
        assert not stack.is_running(data_dir), "Ctrl-C left the demo's server running"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_a_page_that_never_draws_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(screenshot.BrowserError, match="did not finish drawing"):
        screenshot.capture("about:blank", tmp_path / "blank.png", charts=1, timeout=3)


def test_no_browser_on_the_machine_is_said_plainly(monkeypatch, tmp_path):
    monkeypatch.setattr(screenshot.shutil, "which", lambda name: None)
    with pytest.raises(screenshot.BrowserError, match="no browser found"):
        screenshot.capture("about:blank", tmp_path / "none.png")
