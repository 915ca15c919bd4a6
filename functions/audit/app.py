"""Audit Lambda: on its schedule, prove the warehouse holds what the source says it should.

Thin on purpose: connect to both databases with their secrets, let
:func:`totes.audit.run` compare them, publish ``AuditMismatches`` (alarmed) and
``AuditInFlight``, and return the summary (counts and example keys, never row
values). A failure is logged once and raised, so Lambda's ``Errors`` metric and
its alarm see an audit that could not run: silence must never read as "clean".
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import audit, config, db
from totes.observability import instrument, metrics_for, service_logger

logger = service_logger()
metrics = metrics_for()


@instrument("audit", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Compare every warehouse table with the source; return ok, per-table counts and examples."""
    # Each segment query scans a whole table on a large source: no wait outlives the invocation.
    timeout = context.get_remaining_time_in_millis() / 1000
    source = warehouse = None
    try:
        source = db.connect(config.totesys_secret_id(), timeout=timeout)
        warehouse = db.connect(config.warehouse_secret_id(), timeout=timeout)
        report = audit.run(source, warehouse, audit.BucketStore(config.ingest_bucket()))
    except Exception:
        logger.exception("audit failed; nothing compared")
        raise
    finally:
        for conn in (source, warehouse):
            if conn is not None:
                db.close_quietly(conn)
    audit.publish(report, metrics, logger)
    return report.to_json()
