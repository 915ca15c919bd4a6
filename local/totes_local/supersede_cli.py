"""``totes supersede``: the operator's way past a wedged stage, and to transform again.

The buckets are immutable, so recovery never deletes: it writes a marker that the
stages obey (see :mod:`totes.supersede`). Three actions:

* ``status`` shows the markers in force and where transform (and, given the
  warehouse, load) stands: the first manifest each is waiting on.
* ``skip`` releases a stage stuck at one manifest: it passes over it, and that
  run's data is not carried (the audit shows what is missing).
* ``retransform`` makes transform redo its output from a manifest on (after a
  transform bug), and prints the warehouse statements that make the load take
  the new output.

Markers are written with the caller's own AWS credentials (the functions' roles
cannot), and each records who wrote it, from STS.
"""
import argparse
from datetime import datetime, timedelta, timezone
from typing import Iterator

import boto3

from totes import keys, storage, supersede, timestamps, warehouse
from totes.load import BATCH_ROWS, table_batches
from totes.manifest import ProcessedManifest
from totes.warehouse_schema import DELETIONS, ETL_SCHEMA, FACTS, quote_ident
from totes_local import dsn

#: reloading starts this much before the manifest's start: the clocks of the database and of
#: Lambda differ by less (the runbook's "reload from a point in time" uses the same margin).
CLOCK_MARGIN = timedelta(minutes=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes supersede`` and its three actions."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    shown = {"formatter_class": parser.formatter_class}
    status = actions.add_parser("status", help="markers in force and where each stage stands",
                                **shown)
    skip = actions.add_parser("skip", help="let a stage pass over one manifest (its data is lost)",
                              **shown)
    again = actions.add_parser("retransform", help="transform again from a manifest on", **shown)
    for sub in (status, skip, again):
        sub.add_argument("--processed-bucket", required=True,
                         help="the stack's ProcessedBucketName output")
    status.add_argument("--ingest-bucket", help="the stack's IngestBucketName output: also show "
                        "the manifest transform waits on")
    status.add_argument("--dsn-warehouse", help="postgresql://… of the warehouse: also show the "
                        "manifest load waits on")
    skip.add_argument("--stage", required=True, choices=supersede.STAGES)
    skip.add_argument("--manifest", required=True, help="the stuck manifest's key, as logged")
    again.add_argument("--from", dest="start", required=True, metavar="MANIFEST",
                       help="the first ingest manifest to transform again")
    for sub in (skip, again):
        sub.add_argument("--reason", required=True, help="why: kept in the marker for auditors")


def caller() -> str:
    """Who is writing the marker: the caller's ARN, as STS sees the credentials in use."""
    arn: str = boto3.client("sts").get_caller_identity()["Arn"]
    return arn


def _stamps_in_force(bucket: str, markers: supersede.Markers,
                     run: keys.RunId) -> Iterator[datetime]:
    """The earliest ``last_updated`` of each fact output from ``run`` on, as ``markers`` say.

    Fact versions and deletion records of every processed manifest in force from
    ``run`` on, read and checked as the load reads them; none for a table without rows.
    """
    import pyarrow.compute as pc

    before = f"{keys.MANIFEST_PREFIX}{run.date_path}/{run.stamp}"  # sorts just before the run
    for key in markers.processed_after(bucket, before):
        processed_key = markers.processed_key(key)
        manifest = ProcessedManifest.read(storage.read_json(bucket, processed_key), processed_key)
        for fact in FACTS:
            for output, contract in ((manifest.table(fact.name), fact),
                                     (manifest.deleted(fact.name), DELETIONS[fact.name])):
                for batch in table_batches(bucket, output, contract, BATCH_ROWS, manifest):
                    if batch.num_rows == 0:
                        continue
                    day = pc.min(batch["last_updated_date"])
                    at = pc.min(pc.filter(batch["last_updated_time"],
                                          pc.equal(batch["last_updated_date"], day)))
                    yield datetime.combine(day.as_py(), at.as_py(), timezone.utc)


def earliest_superseded_stamp(bucket: str, start: str) -> datetime | None:
    """The earliest ``last_updated`` the warehouse may hold from the output a revision supersedes.

    Read before the revision is declared: the output in force from ``start`` on is
    what the load took. A transform bug can stamp versions before their manifest's
    start (a clock or time-zone bug; ingest's overlap re-reads the minutes before
    it): the warehouse keeps such a version, or the correction or new rank it gave
    an older one, unless the reload reaches back to its stamp. The lake needs none
    of this: it puts each table back to its snapshot before ``start``.
    """
    run = keys.parse_manifest_key(start)
    if run is None:
        raise supersede.MarkerError(f"{start!r} is not an ingest manifest key")
    return min(_stamps_in_force(bucket, supersede.read_markers(bucket), run), default=None)


def reload_sql(start: str, earliest: datetime | None = None) -> list[str]:
    """The warehouse statements that make the load take everything from ``start`` on again.

    Fact versions stamped from the manifest's start, or from ``earliest`` when that
    is before it (:func:`earliest_superseded_stamp`), less the clock margin, and the
    bookkeeping of the manifests from then are removed in one transaction; the load
    then reloads every manifest from then on, each from the revision in force, so
    every version stamped after it comes back exactly once and nothing of the
    superseded output stays. Dimensions are upserted again in order, so they need nothing.
    """
    run = keys.parse_manifest_key(start)
    if run is None:
        raise supersede.MarkerError(f"{start!r} is not an ingest manifest key")
    since = min(run.started_at, earliest or run.started_at) - CLOCK_MARGIN
    # Text for a person to paste, so its values are literals: both are rendered from a
    # datetime (digits, '-', ':', 'T', '.', '/'), the table names from the contract.
    moment = timestamps.database_text(since.replace(tzinfo=None))
    since_run = keys.RunId(keys.stamp(since), "")  # manifest keys sort by their run's stamp
    bound = f"{keys.MANIFEST_PREFIX}{since_run.date_path}/{since_run.stamp}"
    return ["BEGIN;",
            *(f"DELETE FROM {quote_ident(fact.name)} WHERE \"last_updated_date\" + "  # nosec B608
              f"\"last_updated_time\" >= '{moment}';" for fact in FACTS),
            f"DELETE FROM {quote_ident(ETL_SCHEMA)}.\"loaded_manifest\" "  # nosec B608
            f"WHERE \"manifest_key\" >= '{bound}';",
            "COMMIT;"]


def _describe(marker: supersede.Revision | supersede.Skip) -> str:
    if isinstance(marker, supersede.Revision):
        what = f"revision {marker.number}: transform again from {marker.from_manifest}"
    else:
        what = f"skip by {marker.stage} at revision {marker.revision}: {marker.manifest}"
    return f"  {what}\n    {marker.created_at} by {marker.created_by}: {marker.reason}"


def _status(args: argparse.Namespace) -> list[str]:
    markers = supersede.read_markers(args.processed_bucket)
    listed: list[supersede.Revision | supersede.Skip] = [*markers.revisions,
                                                         *markers.skips.values()]
    lines = ["markers:", *(map(_describe, listed) if listed else ["  none"])]
    newest = markers.newest_processed(args.processed_bucket)
    lines.append(f"transform: newest manifest done {newest or 'none'}")
    if args.ingest_bucket:
        waiting = next(storage.manifest_keys_after(args.ingest_bucket, newest), None)
        lines.append(f"transform: next manifest {waiting or 'none (nothing pending)'}")
    if args.dsn_warehouse:
        conn = dsn.connect(args.dsn_warehouse)
        try:
            loaded = warehouse.last_loaded_key(conn)
        finally:
            conn.close()
        waiting = next(markers.processed_after(args.processed_bucket, loaded), None)
        lines.append(f"load: newest manifest loaded {loaded or 'none'}; next ready "
                     f"{waiting or 'none (waiting for transform)'}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Carry out one action of ``totes supersede`` and print what it did and what comes next."""
    lines: list[str]
    if args.action == "status":
        lines = _status(args)
    elif args.action == "skip":
        skip = supersede.write_skip(args.processed_bucket, args.stage, args.manifest,
                                    args.reason, caller())
        lines = [f"wrote s3://{args.processed_bucket}/{skip.key}",
                 f"{skip.stage} passes over {skip.manifest} at its next run (revision "
                 f"{skip.revision}); that run's data is not carried: run the audit afterwards "
                 "to see what is missing (docs/runbook.md, \"A stuck manifest\")."]
    else:
        earliest = earliest_superseded_stamp(args.processed_bucket, args.start)
        revision = supersede.declare_revision(args.processed_bucket, args.start, args.reason,
                                              caller())
        lines = [f"wrote s3://{args.processed_bucket}/{revision.key}",
                 f"transform writes revision {revision.number} from {revision.from_manifest} on "
                 "at its next event. Load refuses to run until the warehouse forgets what it "
                 "loaded from then on. Run this in the warehouse (docs/runbook.md, "
                 "\"Transform again from a manifest\"):"]
        run_start = keys.parse_manifest_key(revision.from_manifest)
        if earliest is not None and run_start is not None and earliest < run_start.started_at:
            lines.append("The output it supersedes has versions stamped from "
                         f"{earliest:%Y-%m-%d %H:%M:%S}, before that manifest started: the "
                         "reload starts there.")
        lines += ["", *reload_sql(revision.from_manifest, earliest)]
    print("\n".join(lines))
    return 0
