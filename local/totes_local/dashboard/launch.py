"""Start the dashboard: `totes dashboard`, `make dashboard` or `python -m totes_local.dashboard`.

The page runs under ``streamlit run`` in a child process. The warehouse's URL
reaches it through the environment (``WAREHOUSE_DSN``), never on a command line,
where any local user's ``ps`` would show it for as long as the dashboard runs: a
URL with a password is taken from ``WAREHOUSE_DSN`` only, and ``--dsn`` refuses one
(it stays for URLs without a password, such as a Unix socket's). Streamlit listens
on loopback unless told otherwise: the page shows business data and has no login
of its own.
"""
import argparse
import os
import signal
# Starts our own page with a fixed argument list and no shell.
import subprocess  # nosec B404
import sys
from pathlib import Path
from typing import Mapping, Sequence

from totes_local import dsn as urls
from totes_local.arguments import DefaultsFormatter
from totes_local.dashboard import source

APP = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"
#: exit status of a setting the user can fix, as ``totes`` and argparse use.
USAGE_ERROR = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The dashboard's options (shared by ``totes dashboard`` and ``python -m``)."""
    parser.add_argument("--dsn", help="warehouse as postgresql://user@host:port/dbname, without "
                        f"a password (a URL with one goes in ${source.DSN_VARIABLE}; default: "
                        f"${source.DSN_VARIABLE}, then ${source.SECRET_VARIABLE}, "
                        f"then the demo warehouse in {source.DEFAULT_DEMO_DIR})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to serve on (default {DEFAULT_PORT})")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"address to listen on (default {DEFAULT_ADDRESS})")


def command(port: int, address: str = DEFAULT_ADDRESS) -> list[str]:
    """The ``streamlit run`` command line: headless, no telemetry, no file watching."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.headless", "true", "--server.port", str(port),
            "--server.address", address, "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]


def environment(dsn: str | None, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The page's environment: ``base``, with ``dsn`` (when given) as the warehouse to read."""
    env = dict(base)
    if dsn:
        env[source.DSN_VARIABLE] = dsn
    return env


def check_off_command_line(dsn: str | None) -> None:
    """Refuse a ``--dsn`` that carries a password: the process listing would show it."""
    if dsn and urls.holds_password(dsn):
        raise urls.DsnError(f"--dsn must not carry a password (every process listing shows a "
                            f"command line): set {source.DSN_VARIABLE} to the URL instead")


def run(args: argparse.Namespace) -> int:
    """Serve the page until interrupted; return Streamlit's exit status.

    Ctrl-C reaches Streamlit too (same terminal): this process waits for it to
    shut down by itself, so its exit hooks run and stop the demo's server, rather
    than killing it half-way as an interrupted ``subprocess.run`` would.
    """
    check_off_command_line(args.dsn)
    env = environment(args.dsn)
    source.check(source.resolve(env))
    print(f"Dashboard on http://{args.address}:{args.port} (Ctrl-C to stop)", flush=True)
    argv = command(args.port, args.address)
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # reset to default in the child
    try:
        return subprocess.run(argv, env=env, check=False).returncode  # nosec B603
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m totes_local.dashboard``."""
    parser = argparse.ArgumentParser(prog="python -m totes_local.dashboard",
                                     description="Serve the dashboard on the warehouse.",
                                     formatter_class=DefaultsFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except urls.DsnError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
