"""Audit Lambda: on its schedule, prove the warehouse and the lake hold what the source says.

Thin on purpose, like every stage's handler: settings from the environment,
:func:`totes.audit.run_audit` (both databases and the lake, read-only), the report published:
``AuditMismatches`` (alarmed) and ``AuditInFlight``, and the summary returned
(counts and example keys, never row values). A failure propagates after the
library logged it, so Lambda's ``Errors`` metric and its alarm see an audit that
could not run: silence must never read as "clean".
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import audit, observability, stage

logger = observability.service_logger()
metrics = observability.metrics_for()


@observability.instrument("audit", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Compare the warehouse (and the lake) with the source; return ok, counts and examples."""
    settings = stage.read_settings(audit.AuditSettings.from_environment, audit.NOTHING_COMPARED)
    report = audit.run_audit(settings, stage.Deadline.from_context(context))
    summary: dict[str, Any] = stage.publish(report)
    return summary
