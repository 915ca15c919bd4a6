"""Load Lambda: on its schedule, bring the warehouse up to date with the processed bucket.

Thin on purpose, like every stage's handler: settings from the environment,
:func:`totes.load.run_load` until the invocation's deadline, the report published
(metrics flushed by Powertools when the handler returns or raises).
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import load, stage
from totes.load import LoadSummary
from totes.observability import instrument, metrics_for, service_logger

logger = service_logger()
metrics = metrics_for()


@instrument("load", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> LoadSummary:
    """Load every pending processed manifest; return manifests, rows per table, freshness."""
    settings = stage.read_settings(load.LoadSettings.from_environment,
                                   "load failed reading its settings; nothing loaded")
    report = load.run_load(settings, stage.Deadline.from_context(context))
    summary: LoadSummary = stage.publish(report)
    return summary
