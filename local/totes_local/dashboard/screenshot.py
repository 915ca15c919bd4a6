"""A full-page screenshot of the running dashboard, taken with headless Chromium.

Chromium's one-shot ``--screenshot`` fires before Streamlit's websocket has
delivered the page, so this drives the browser over the DevTools protocol
instead: open the page, wait until the expected charts have drawn, size the
window to the whole page, capture. Used by the browser test and to refresh
``docs/dashboard.png``::

    python -m totes_local.dashboard.screenshot http://127.0.0.1:8501 docs/dashboard.png
"""
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess  # nosec B404
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")
WIDTH = 1400
#: the page is ready when this many charts have drawn and Streamlit has stopped running.
READY = """(() => {
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
    .filter(chart => chart.querySelector('canvas, svg')).length;
  const running = document.querySelector('[data-testid="stStatusWidget"]') !== null;
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  return {charts, running, height: main ? main.scrollHeight : 0};
})()"""


class BrowserError(RuntimeError):
    """Chromium could not be started or the page never finished drawing."""


def find_chromium() -> str | None:
    """The path of a Chromium-family browser on this machine, if there is one."""
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def _devtools_port(profile: Path, deadline: float) -> int:
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text().split()[0])
        time.sleep(0.1)
    raise BrowserError("chromium did not open its DevTools port")


class _Page:
    """One browser tab spoken to over the DevTools protocol (request, then matching reply)."""

    def __init__(self, websocket: Any):
        self.websocket = websocket
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.websocket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.websocket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


def _wait_until_drawn(page: _Page, charts: int, deadline: float) -> int:
    """Wait for ``charts`` drawn charts and an idle page; return the page's height."""
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = page.evaluate(READY) or {}
        if state.get("charts", 0) >= charts and not state.get("running"):
            time.sleep(1.0)  # let Vega finish its transitions before the capture
            return int(page.evaluate(READY)["height"])
        time.sleep(0.25)
    raise BrowserError(f"page did not finish drawing: {state}")


def capture(url: str, output: Path, charts: int = 1, timeout: float = 60.0,
            chromium: str | None = None) -> Path:
    """Open ``url`` in headless Chromium, wait for ``charts`` charts, save a full-page PNG."""
    browser = chromium or find_chromium()
    if browser is None:
        raise BrowserError(f"no browser found (looked for {', '.join(CHROMIUM_NAMES)})")
    deadline = time.monotonic() + timeout
    # Chromium's helper processes may still be writing the profile as it is removed.
    with tempfile.TemporaryDirectory(prefix="totes-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(  # nosec B603
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={WIDTH},1000", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(Path(profile), deadline)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as reply:  # nosec
                tab = next(target for target in json.load(reply) if target["type"] == "page")
            with connect(tab["webSocketDebuggerUrl"], max_size=None) as websocket:
                page = _Page(websocket)
                page.call("Page.navigate", url=url)
                height = _wait_until_drawn(page, charts, deadline)
                page.call("Emulation.setDeviceMetricsOverride", width=WIDTH,
                          height=height + 160, deviceScaleFactor=1, mobile=False)
                _wait_until_drawn(page, charts, deadline)
                shot = page.call("Page.captureScreenshot", format="png")
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the browser and the helpers it started
            process.wait(timeout=10)
    output.write_bytes(base64.b64decode(shot["data"]))
    return output


if __name__ == "__main__":
    print(capture(sys.argv[1], Path(sys.argv[2]), charts=int(sys.argv[3]) if len(sys.argv) > 3
                  else 1))
