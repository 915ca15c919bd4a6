"""One shape for every stage: settings in, a typed report out, one way to publish it.

Each stage reads its settings once from the environment (``<Stage>Settings.
from_environment()``, variable names owned by :mod:`totes.config`), runs with a
:class:`Deadline` (the invocation's remaining time) and returns a report that
knows its metrics and the handler's response. Handlers are then three lines:
settings, run, :func:`publish`. A stage that fails after doing part of its work
publishes the partial report itself before the error propagates, so dashboards
show what happened either way.
"""
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, TypeVar

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import observability

S = TypeVar("S")

#: seconds any database wait may take outside Lambda: the longest a Lambda may run.
UNBOUNDED_SECONDS = 900.0


@dataclass(frozen=True)
class Metric:
    """One metric point a stage reports; with ``table`` it carries that dimension too."""

    name: str
    value: float
    unit: MetricUnit = MetricUnit.Count
    table: str | None = None


class StageReport(Protocol):
    """What every stage returns: its metrics, and the handler's JSON-ready response."""

    def metrics(self) -> Iterable[Metric]:
        """Every metric point of the run."""

    def response(self) -> Any:
        """The handler's return value."""


@dataclass(frozen=True)
class Deadline:
    """How long the invocation has left, in seconds, asked when needed."""

    remaining: Callable[[], float]

    @classmethod
    def from_context(cls, context: LambdaContext) -> "Deadline":
        """The Lambda invocation's own deadline."""
        return cls(lambda: context.get_remaining_time_in_millis() / 1000)

    @classmethod
    def unbounded(cls) -> "Deadline":
        """No invocation: as long as a Lambda could ever run (local tools, tests)."""
        return cls(lambda: UNBOUNDED_SECONDS)


def read_settings(factory: Callable[[], S], failure: str, **context: Any) -> S:
    """Read a stage's settings; a bad environment is logged once, as the stage's failure.

    ``failure`` is the stage's own failure message and ``context`` its fields (the
    manifest an event named, say), so a missing variable reads like any other failure.
    """
    try:
        return factory()
    except Exception:
        observability.service_logger().exception(failure, extra=context)
        raise


def publish(report: StageReport) -> Any:
    """Publish a report's metrics (flushed with the invocation's) and return its response."""
    run_metrics = observability.metrics_for()
    for metric in report.metrics():
        if metric.table is None:
            run_metrics.add_metric(name=metric.name, unit=metric.unit, value=metric.value)
        else:
            observability.emit_table_metric(metric.name, metric.table, metric.value, metric.unit)
    return report.response()
