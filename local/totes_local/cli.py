"""The ``totes`` command: the local tools around the pipeline.

Subcommands live in one registry, :data:`COMMANDS` (name -> :class:`Command`), so a
new one is a function and one :func:`register` call. Every failure a user can cause
(bad DSN, unreachable server, nonsense arguments, a database already seeded, no AWS
credentials) is one line on stderr and exit status 2, never a traceback; Ctrl-C is
one line and exit status 130.
"""
import argparse
import contextlib
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Sequence

import botocore.exceptions
import pg8000.native
import psutil

from totes import config, db, storage, supersede
from totes_local import (audit_cli, demo, dsn, generator, lake_cli, local_stack, shape,
                         simulator, stack, supersede_cli)
from totes_local.arguments import DefaultsFormatter, positive_float, whole
from totes_local.dashboard import launch as dashboard

#: Where the embedded PostgreSQL keeps its data when no ``--dsn`` is given.
DEFAULT_DATA_DIR = Path(".demo") / "pg"
DEFAULT_DATABASE = "totesys"
#: Exit status for every error the user can fix (as argparse uses for usage errors).
USAGE_ERROR = 2
#: Exit status after Ctrl-C, as a shell reports a command ended by SIGINT (128 + 2).
INTERRUPTED = 130


class CommandError(Exception):
    """A failure to report as one line and exit status 2."""


#: Exceptions that are the user's to fix, reported without a traceback.
EXPECTED_ERRORS = (CommandError, audit_cli.AuditSetupError, demo.DemoNotFoundError,
                   dsn.DsnError,
                   db.DatabaseUnavailableError, db.SecretFormatError, generator.GeneratorError,
                   simulator.SimulationError, supersede.MarkerError, config.ConfigurationError,
                   lake_cli.LakeNotFoundError, lake_cli.LakeQueryError,
                   storage.ObjectAlreadyExistsError,
                   pg8000.exceptions.DatabaseError, pg8000.exceptions.InterfaceError)
#: What AWS says when the caller's buckets, region or network are wrong (credentials apart).
AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, how it declares its options, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add a subcommand to ``totes`` (the one place commands are declared)."""
    COMMANDS[name] = Command(help=help, add_arguments=add_arguments, run=run)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other ``totes`` error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


#: what ``totes --help`` says first (plain text: a terminal shows no markup).
DESCRIPTION = ("Local tools around the totes pipeline: run the whole pipeline on this machine "
               "(demo), make and change a generated totesys (seed, simulate), look at the "
               "demo's databases (sql, audit, dashboard) and its lake's Iceberg tables (lake), "
               "release a stuck stage of a deployed "
               "stack (supersede), serve AWS and PostgreSQL for sam local invoke (local-stack), "
               "stop what is left running (stop).")


def build_parser() -> argparse.ArgumentParser:
    """The ``totes`` parser with every registered subcommand."""
    parser = _Parser(prog="totes", description=DESCRIPTION, formatter_class=DefaultsFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help,
                                  formatter_class=DefaultsFormatter)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totes`` console script; returns the exit status."""
    # platformdirs (via pgserver) warns when a root shell has no XDG_RUNTIME_DIR: noise, not news.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EXPECTED_ERRORS as error:
        print(f"totes {args.command}: error: {_reason(error)}", file=sys.stderr)
        return USAGE_ERROR
    except botocore.exceptions.NoCredentialsError:
        print(f"totes {args.command}: error: no AWS credentials found: this command works on "
              "a deployed stack's buckets; set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
              "AWS_SECRET_ACCESS_KEY) and AWS_REGION for the account that holds it",
              file=sys.stderr)
        return USAGE_ERROR
    except AWS_ERRORS as error:
        print(f"totes {args.command}: error: {_reason(error)} (this command works on a deployed "
              "stack's buckets, with AWS credentials for its account)", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"\ntotes {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _reason(error: Exception) -> str:
    """One line from an exception, including pg8000's dict-shaped server errors."""
    reason = error.args[0] if error.args else type(error).__name__
    if isinstance(reason, dict):
        reason = reason.get("M", str(reason))
    return " ".join(str(reason).split())


# ---------------------------------------------------------------------- target database

def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Options choosing the database: a URL, or the embedded server (shared by commands)."""
    group = parser.add_argument_group("target database")
    group.add_argument("--dsn", help="postgresql://user:password@host:port/dbname "
                       "(default: the embedded server, database totesys)")
    group.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                       help=f"embedded server data directory (default {DEFAULT_DATA_DIR})")


@contextlib.contextmanager
def target_connection(args: argparse.Namespace,
                      recreate: bool = False) -> Iterator[pg8000.native.Connection]:
    """Connect to the chosen database, first dropping and creating it if ``recreate``."""
    if args.dsn:
        secret = dsn.parse_dsn(args.dsn, DEFAULT_DATABASE)
        if recreate:
            stack.recreate_database(dsn.connect(args.dsn, dbname="postgres"), secret["dbname"])
        conn = dsn.connect(args.dsn)
    else:
        postgres = stack.start_postgres(args.data_dir)
        if recreate:
            postgres.recreate_database(DEFAULT_DATABASE)
        conn = postgres.connect(DEFAULT_DATABASE)
    try:
        yield conn
    finally:
        conn.close()


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 instant such as 2024-11-15T18:00:00Z: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------- seed

def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="order volume; 1 is the real database's size "
                        f"({generator.size_text(1)})")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--end", type=_instant, default=shape.DEFAULT_END,
                        help="instant the history ends, ISO-8601, UTC if no zone "
                        f"(default {shape.DEFAULT_END:%Y-%m-%dT%H:%M:%SZ})")
    parser.add_argument("--recreate", action=argparse.BooleanOptionalAction, default=None,
                        help="drop and create the database first (default: yes for the "
                        "embedded server, no with --dsn)")
    add_target_arguments(parser)


def run_seed(args: argparse.Namespace) -> int:
    """Create the totesys schema and generate its history; print rows per table."""
    recreate = args.recreate if args.recreate is not None else not args.dsn
    started = time.perf_counter()
    with target_connection(args, recreate=recreate) as conn:
        counts = generator.seed_new(conn, scale=args.scale, seed=args.seed, end=args.end)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    print(f"seeded totesys ({_where(args)}): scale {args.scale:g}, seed {args.seed}, "
          f"history ending {args.end:%Y-%m-%dT%H:%M:%SZ}")
    for table, rows in counts.items():
        print(f"  {table:<16}{rows:>12,}")
    print(f"  {'total':<16}{total:>12,} rows in {elapsed:.1f} s "
          f"({total / max(elapsed, 1e-9):,.0f} rows/s)")
    return 0


# ----------------------------------------------------------------------------- simulate

def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=whole(0), default=10,
                        help="business steps to simulate (default 10)")
    parser.add_argument("--step-minutes", type=whole(1), default=20,
                        help="simulated minutes per step (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_target_arguments(parser)


def run_simulate(args: argparse.Namespace) -> int:
    """Advance the business and print what changed, kind by kind, with the ids touched."""
    started = time.perf_counter()
    with target_connection(args) as conn:
        summary = simulator.simulate(conn, steps=args.steps, seed=args.seed,
                                     step_minutes=args.step_minutes)
    elapsed = time.perf_counter() - started
    print(f"simulated {summary['steps']} steps on totesys ({_where(args)}): clock "
          f"{summary['clock_start']:%Y-%m-%d %H:%M:%S} -> {summary['clock_end']:%Y-%m-%d %H:%M:%S}"
          f" in {elapsed:.1f} s")
    for kind, ids in summary["ids"].items():
        if ids:
            shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
            print(f"  {kind:<24}{len(ids):>6}  ids {shown}")
    return 0


def _where(args: argparse.Namespace) -> str:
    return dsn.redact(args.dsn) if args.dsn else f"embedded server in {args.data_dir}"


# --------------------------------------------------------------------------------- stop

#: a local stack's shutdown ends with the server's checkpoint, seconds on a busy disk.
LOCAL_STACK_STOP_SECONDS = 120


def _stop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="the clone whose servers to stop (default: the current folder)")


def _wait_until_ended(process: psutil.Process, seconds: float) -> None:
    """Wait at most ``seconds`` for ``process`` to end.

    A process that has ended but whose parent (the shell or script that started it in
    the background) has not collected its exit status yet is a zombie: it has ended, but
    psutil's own wait, polling whether the id still exists, would wait the whole timeout.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
            process.wait(timeout=0.5)
            return
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            if time.monotonic() >= deadline:
                return


def run_stop(args: argparse.Namespace) -> int:
    """Stop every embedded server of the clone, and a ``totes local-stack`` serving one.

    Each normally stops when the last command using it exits; this is for the ones a
    killed process left behind, or a background local stack no longer wanted.
    """
    root = args.root.resolve()
    stopped = False
    for folder in stack.local_servers(root):
        for process in stack.local_stack_processes(folder):
            process.terminate()  # it stops moto and its server on SIGTERM
            _wait_until_ended(process, LOCAL_STACK_STOP_SECONDS)  # else its server is stopped below
            print(f"stopped totes local-stack (pid {process.pid})")
            stopped = True
        if stack.stop_postgres(folder):
            print(f"stopped the embedded PostgreSQL in {folder.relative_to(root)}")
            stopped = True
    if not stopped and not stack.local_servers(root):
        print(f"no local server running in {root}")
    return 0


register("seed", "create and fill the totesys source database", _seed_arguments, run_seed)
register("simulate", "advance the totesys business by N steps of simulated time",
         _simulate_arguments, run_simulate)
register("demo", "run the whole pipeline locally twice and summarise what happened",
         demo.add_arguments, demo.run)
register("audit", "compare the warehouse with the source, table by table, and print the result",
         audit_cli.add_arguments, audit_cli.run)
register("sql", "open a psql prompt on the demo's warehouse or totesys database",
         demo.add_sql_arguments, demo.open_sql_prompt)
register("lake", "open a DuckDB SQL prompt on the demo's lake (its Iceberg tables)",
         lake_cli.add_arguments, lake_cli.run)
register("dashboard", "serve the dashboard: business questions answered from the warehouse",
         dashboard.add_arguments, dashboard.run)
register("supersede", "release a stuck manifest or transform again, by marker (never deleting)",
         supersede_cli.add_arguments, supersede_cli.run)
register("local-stack", "serve moto and PostgreSQL on fixed TCP ports for sam local invoke",
         local_stack.add_arguments, local_stack.run)
register("stop", "stop every local server of this clone (demo, local stack, benchmarks)",
         _stop_arguments, run_stop)


if __name__ == "__main__":  # pragma: no cover - the totes console script is the usual way in
    sys.exit(main())
