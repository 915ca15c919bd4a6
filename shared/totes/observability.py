"""Structured logs and CloudWatch metrics, set up the same way for every function.

Service name and metrics namespace come from the Powertools variables
(``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_NAMESPACE``) that the template
sets in Globals; the defaults keep local runs and tests working without them.
Per-table metrics use ``single_metric`` so each carries its own ``table``
dimension instead of leaking it onto the run-level metrics.

Stray objects (keys under a prefix the pipeline lists that do not match its
layout, see :mod:`totes.storage`) are reported here: one WARNING per key per
invocation, however often the invocation lists it, and their number as the
``StrayObjects`` metric of the invocation, so an operator notices them without
the pipeline ever reading one.
"""
import functools
import os
import sys
from typing import Any, Callable, TypeVar

from aws_lambda_powertools import Logger, Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import errors

DEFAULT_SERVICE = "totes"
DEFAULT_NAMESPACE = "TotesPipeline"
#: the stray objects seen in this invocation, (bucket, key): each is logged once.
_strays: set[tuple[str, str]] = set()
#: the account of the function being invoked (from its ARN), None outside an invocation.
_account: list[str | None] = [None]

#: the versions of the packages the AWS SDK for pandas layer gives transform, load, the audit
#: and publish, as the project pins and tests them (``requirements-dev.txt``); the layer's
#: release is :data:`totes_local.pandas_layer.RELEASE`, which takes its versions from here.
TESTED_VERSIONS = {"pandas": "3.0.2", "numpy": "2.2.6", "pyarrow": "20.0.0"}
#: the packages of :data:`TESTED_VERSIONS` this process has compared already (each once).
_compared: set[str] = set()

R = TypeVar("R")
#: a Lambda handler: the event (decoded JSON) and the invocation's context, to its response.
Handler = Callable[[dict[str, Any], LambdaContext], R]


def _service() -> str:
    return os.environ.get("POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE)


def _namespace() -> str:
    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE)


def service_logger() -> Logger:
    """Return the service's Powertools logger (one per process, shared by every module)."""
    return Logger(service=_service())


def metrics_for() -> Metrics:
    """Return the run-level EMF metrics object (flushed by :func:`instrument`)."""
    return Metrics(namespace=_namespace(), service=_service())


def stray_object(bucket: str, key: str) -> None:
    """Report an object that a listing passed over because its key is not of the layout.

    The first sighting in an invocation logs a WARNING naming the key (a person
    should look at it: an upload to the wrong place, or someone forging keys);
    later ones are counted already. Nothing is ever read from it.
    """
    if (bucket, key) in _strays:
        return
    _strays.add((bucket, key))
    service_logger().warning("stray object ignored: its key is not of the layout listed here; "
                             "nothing reads it (docs/runbook.md, \"Stray objects\")",
                             extra={"bucket": bucket, "key": key})


def stray_objects() -> int:
    """The number of distinct stray objects reported since the invocation began."""
    return len(_strays)


def forget_strays() -> None:
    """Start a new invocation's count: a warm container logs each stray again, once."""
    _strays.clear()


def invocation_account() -> str | None:
    """The AWS account the invoked function runs in, from its context's ARN (no call made).

    None outside :func:`instrument`'s handlers (local tools) or when the context has
    no ARN. :func:`totes.storage.expected_owner` requires every bucket to belong to it.
    """
    return _account[0]


def warn_of_untested_versions(logger: Logger) -> None:
    """Log one WARNING if a package the pandas layer gave differs from the version tested.

    A stack deployed with ``PandasLayerArn`` naming another release of the AWS SDK for
    pandas layer runs pandas, numpy or pyarrow the tests never ran: a failure or a
    changed value may follow, and this line says why. Only packages already imported
    are compared (nothing is imported for it), each once per process; the functions
    import some lazily, so each invocation's end compares what it newly imported.
    """
    loaded = {name: getattr(sys.modules[name], "__version__", "unknown")
              for name in TESTED_VERSIONS.keys() - _compared if name in sys.modules}
    _compared.update(loaded)
    differ = {name: version for name, version in loaded.items()
              if version != TESTED_VERSIONS[name]}
    if differ:
        logger.warning(
            "the pandas layer's packages are not the versions this release was tested with: "
            + ", ".join(f"{name} {version} (tested {TESTED_VERSIONS[name]})"
                        for name, version in sorted(differ.items()))
            + "; deploy with template parameter PandasLayerArn empty for the tested layer "
            "(docs/deploy.md, \"The pandas layer version\")",
            extra={"untested_versions": differ})


def _remember_account(context: LambdaContext) -> None:
    """Keep the account of ``arn:aws:lambda:<region>:<account>:function:<name>``."""
    parts = str(getattr(context, "invoked_function_arn", "") or "").split(":")
    _account[0] = parts[4] if len(parts) > 4 and parts[4].isdigit() else None


def instrument(stage: str, logger: Logger,
               metrics: Metrics) -> Callable[[Handler[R]], Handler[R]]:
    """Wrap a Lambda handler the same way in every function.

    Each invocation starts from a clean log state carrying the Lambda context and
    its ``stage`` (and the function's account, :func:`invocation_account`), and flushes its
    metrics when it returns or raises, with the number
    of stray objects it passed over (``StrayObjects``) when there were any. The stage is
    set per invocation, not per logger: every Powertools logger of a service shares
    one formatter, so a key fixed at import time would be the first function's
    wherever functions share a process (the local runner, the tests). A failure
    is classified by :func:`totes.errors.kind_of` before it propagates.
    """
    def decorate(handler: Handler[R]) -> Handler[R]:
        @functools.wraps(handler)
        def with_stage(event: dict[str, Any], context: LambdaContext) -> R:
            logger.append_keys(stage=stage)
            forget_strays()
            _remember_account(context)
            try:
                return handler(event, context)
            except Exception as error:
                _report_failure(logger, metrics, error)
                raise
            finally:
                _account[0] = None
                warn_of_untested_versions(logger)
                if stray_objects():
                    metrics.add_metric(name="StrayObjects", unit=MetricUnit.Count,
                                       value=stray_objects())

        return logger.inject_lambda_context(clear_state=True)(metrics.log_metrics(with_stage))

    return decorate


def _report_failure(logger: Logger, metrics: Metrics, error: Exception) -> None:
    """Say, once per failed invocation, what kind of failure it is and who must act.

    The stage has already logged the failure (once, as an error) with its context;
    this warning adds the kind (see :mod:`totes.errors`) without counting the
    failure twice among error lines, and ``InputErrors`` counts the failures a
    retry cannot fix, which have their own alarm.
    """
    kind = errors.kind_of(error)
    logger.warning("invocation failed: %s", errors.ADVICE[kind],
                   extra={"error_kind": kind, "error_class": type(error).__name__,
                          "error": str(error)})
    if kind == errors.INPUT:
        metrics.add_metric(name="InputErrors", unit=MetricUnit.Count, value=1)


def emit_table_metric(name: str, table: str, value: float,
                      unit: MetricUnit = MetricUnit.Count) -> None:
    """Emit one metric dimensioned by table (e.g. ``RowsIngested`` for ``sales_order``)."""
    with single_metric(name=name, unit=unit, value=value, namespace=_namespace(),
                       default_dimensions={"service": _service()}) as metric:
        metric.add_dimension(name="table", value=table)
