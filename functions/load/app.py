"""Load Lambda: on its schedule, bring the warehouse up to date with the processed bucket.

Thin on purpose: connect with the warehouse secret, let :mod:`totes.load` do the
work, return its summary. Metrics are flushed by Powertools when the handler returns
or raises.
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import config, db, load
from totes.load import LoadSummary
from totes.observability import instrument, metrics_for, service_logger

logger = service_logger()
metrics = metrics_for()


@instrument("load", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> LoadSummary:
    """Load every pending processed manifest; return manifests, rows per table, freshness."""
    try:
        # A bulk statement may legitimately run for minutes: no wait outlives the invocation.
        conn = db.connect(config.warehouse_secret_id(),
                          timeout=context.get_remaining_time_in_millis() / 1000)
    except Exception:
        # Configuration, secret or network: load.run logs every failure after this point.
        logger.exception("load failed connecting to the warehouse; nothing loaded")
        raise
    try:
        report = load.run(
            conn, metrics, time_left=lambda: context.get_remaining_time_in_millis() / 1000)
    finally:
        db.close_quietly(conn)
    return report.as_dict()
