"""Publish Lambda: on its schedule, bring the lake (Iceberg tables in Glue) up to date.

Thin on purpose, like every stage's handler: settings from the environment,
:func:`totes.publish.run_publish` until the invocation's deadline, the report
published (metrics flushed by Powertools when the handler returns or raises).
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import publish, stage
from totes.observability import instrument, metrics_for, service_logger
from totes.publish import PublishSummary

logger = service_logger()
metrics = metrics_for()


@instrument("publish", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PublishSummary:
    """Publish every pending processed manifest; return manifests and rows per lake table."""
    settings = stage.read_settings(publish.PublishSettings.from_environment,
                                   "publish failed reading its settings; nothing published")
    report = publish.run_publish(settings, stage.Deadline.from_context(context))
    summary: PublishSummary = stage.publish(report)
    return summary
