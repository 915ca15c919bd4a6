"""Drive the handlers the way AWS would, against whatever AWS the environment points at.

EventBridge Scheduler invokes ingest, load, publish and the audit with a scheduled event; S3 invokes
transform with one ObjectCreated event per ingest manifest. The runner does the
same, loading each ``functions/<name>/app.py`` by path exactly as Lambda would
load its handler, so nothing is called that AWS would not call.
"""
import importlib.util
import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping
from urllib.parse import quote_plus

from totes import storage

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("ingest", "transform", "load", "audit", "publish")


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that Powertools reads."""

    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_seconds: int = 900

    def __post_init__(self) -> None:
        """Derive the ARN and the deadline the way the Lambda runtime does."""
        self.invoked_function_arn = (
            f"arn:aws:lambda:eu-west-2:000000000000:function:{self.function_name}"
        )
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the (simulated) timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(function: str, root: Path = REPO_ROOT / "functions") -> Callable:
    """Import ``<root>/<function>/app.py`` under a unique module name and return its handler."""
    path = root / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"totes_function_{function}", path)
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def scheduled_event(function: str) -> dict[str, Any]:
    """An EventBridge Scheduler event like the one the template's schedule sends."""
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
        "source": "aws.scheduler", "account": "000000000000",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": "eu-west-2",
        "resources": [f"arn:aws:scheduler:eu-west-2:000000000000:schedule/default/{function}"],
        "detail": {},
    }


def s3_object_created_event(bucket: str, key: str) -> dict[str, Any]:
    """An S3 ObjectCreated notification for one object, key URL-encoded as S3 sends it."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-2",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "manifest-created",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key, safe="/"), "size": 0}},
    }]}


@dataclass(frozen=True)
class Outcome:
    """What one invocation returned, or the class and message of what it raised."""

    function: str
    result: Any = None
    error: str | None = None


def _invoke_in_own_process(function: str, event: dict[str, Any], environment: Mapping[str, str],
                           functions_root: Path, start: Any, outcomes: Any, index: int) -> None:
    """One Lambda container: its own process and environment, started with the others at once.

    The environment is exactly ``environment`` (the caller's, with the invocation's
    settings over it), whatever the process it was forked from had. The handler is
    imported before the barrier, as a warm container has it, so the invocations
    themselves (not their imports) overlap.
    """
    os.environ.clear()
    os.environ.update(environment)
    handler = load_handler(function, functions_root)
    start.wait(timeout=300)
    try:
        outcome = Outcome(function, result=handler(
            event, LambdaContext(function_name=f"totes-{function}")))
    except Exception as error:  # reported to the caller, which decides what is acceptable
        outcome = Outcome(function, error=f"{type(error).__name__}: {error}")
    outcomes.put((index, outcome))


#: the libraries the handlers import that take seconds to import (pandas and boto3 two to five
#: on a busy 2-core machine), none of which reads a setting of the pipeline's when imported
#: (pyiceberg does, its catalog's environment: not here): the processes of
#: :func:`invoke_concurrently` fork from a server that imported them once.
PRELOADED = ("boto3", "botocore.client", "numpy", "pandas", "pg8000.native", "pyarrow",
             "pyarrow.compute", "pyarrow.parquet")


def invoke_concurrently(invocations: list[tuple[str, dict[str, Any]]],
                        environment: Mapping[str, str],
                        functions_root: Path = REPO_ROOT / "functions",
                        timeout: float = 600) -> list[Outcome]:
    """Invoke several handlers at the same moment, each in a process of its own.

    Lambda runs concurrent invocations in separate containers, sharing nothing but
    AWS and the databases: so do these, released together by a barrier once each has
    imported its handler, each with this process's environment and ``environment``
    over it. They fork from a ``forkserver`` process that has imported only
    :data:`PRELOADED` (no client, connection or setting of the pipeline's): a fresh
    ``spawn`` process imported them again for each invocation, half the CPU of
    tests/e2e/test_concurrency.py's twenty. Returns the outcomes in the order of
    ``invocations``.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))
    start = context.Barrier(len(invocations))
    outcomes = context.Queue()
    processes = [context.Process(target=_invoke_in_own_process, args=(
        function, event, {**os.environ, **environment}, functions_root, start, outcomes, index))
        for index, (function, event) in enumerate(invocations)]
    for process in processes:
        process.start()
    try:
        results = dict(outcomes.get(timeout=timeout) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=60)
    return [results[index] for index in range(len(invocations))]


@dataclass
class CycleReport:
    """What one scheduled cycle did, for people and for tests."""

    ingest: dict[str, Any]
    transforms: list[dict[str, Any]]
    load: dict[str, Any]
    seconds: float


class LocalPipeline:
    """The deployed functions, invoked as their triggers would invoke them."""

    def __init__(self, ingest_bucket: str, functions_root: Path = REPO_ROOT / "functions"):
        """Load the handlers once, as a warm Lambda container would keep them."""
        self.ingest_bucket = ingest_bucket
        self.handlers = {name: load_handler(name, functions_root) for name in FUNCTIONS}
        self._last_manifest = storage.latest_manifest_key(ingest_bucket)

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        """Invoke one handler with a fresh context, as one Lambda invocation."""
        return self.handlers[function](event, LambdaContext(function_name=f"totes-{function}"))

    def ingest(self) -> dict[str, Any]:
        """Run ingest on its schedule."""
        return self.invoke("ingest", scheduled_event("ingest"))

    def deliver_manifest_events(self) -> list[dict[str, Any]]:
        """Send transform one S3 event per new ingest manifest, as the bucket notification does."""
        results = []
        for key in list(storage.manifest_keys_after(self.ingest_bucket, self._last_manifest)):
            event = s3_object_created_event(self.ingest_bucket, key)
            results.append(self.invoke("transform", event))
            self._last_manifest = key
        return results

    def load(self) -> dict[str, Any]:
        """Run load on its schedule."""
        return self.invoke("load", scheduled_event("load"))

    def publish(self) -> dict[str, Any]:
        """Run publish on its schedule: the lake brought up to date with the processed bucket."""
        return self.invoke("publish", scheduled_event("publish"))

    def audit(self) -> dict[str, Any]:
        """Run the audit on its schedule: the warehouse against the source."""
        return self.invoke("audit", scheduled_event("audit"))

    def cycle(self) -> CycleReport:
        """Ingest, transform each new manifest, load: one pass of the whole pipeline."""
        started = time.perf_counter()
        ingest = self.ingest()
        transforms = self.deliver_manifest_events()
        load = self.load()
        return CycleReport(ingest, transforms, load, time.perf_counter() - started)
