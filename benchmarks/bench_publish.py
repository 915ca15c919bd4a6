"""Benchmark publish on the ×40 backfill: wall time, peak memory, snapshots, Lambda's limits.

A backfill is publish's worst case: the whole source arriving at once. This
generates a source at ``--scale`` (40 by default, about 1.9 million rows; the
same database ``bench_ingest`` makes, so ``--reuse`` shares it), ingests it with
ingest's own row budget (so the backfill arrives in several manifests, as it
would in AWS) and transforms each manifest with the pipeline's handlers (not
timed; the load is not needed: publish reads the processed bucket). Then the
publish handler runs in a freshly spawned interpreter (a cold Lambda, so the peak
RSS is publish's own, imports included) with the timeout template.yaml gives it,
invocation after invocation as its schedule would, until one publishes nothing.
Reported: each manifest's seconds, each invocation's, the peak RSS against the
function's ``MemorySize``, the peak bytes held in the temporary folder (Lambda's
``/tmp``: every object of a manifest is held there before its first commit)
against the function's ``EphemeralStorage``, and the snapshots and commits
(metadata files) each lake table gained.

    .venv/bin/python -m benchmarks.bench_publish --scale 40 --reuse
"""
import argparse
import contextlib
import inspect
import os
import sys
import time
from typing import Any

from benchmarks.bench_ingest import generate_source
from benchmarks.common import (MB, TempSpace, bench_environment, current_rss, local_stack,
                               options, parse, peak_rss, run_in_fresh_process)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    return parse(options("bench_publish", __doc__, scale=40.0, ingest=True), argv)


def publish_limits() -> tuple[int, int, int]:
    """The publish function's memory (MB), timeout (s) and /tmp (MB), as template.yaml says."""
    from totes_local import cfn

    properties = cfn.load()["Resources"]["PublishFunction"]["Properties"]
    tmp = int(properties.get("EphemeralStorage", {}).get("Size", 512))
    return int(properties["MemorySize"]), int(properties["Timeout"]), tmp


def backfill(postgres: Any, endpoint: str,
             args: argparse.Namespace) -> tuple[dict[str, str], int, list[str]]:
    """Generate, ingest and transform the backfill; return the environment, rows, manifests."""
    from totes_local import stack
    from totes_local.runner import LocalPipeline

    import logging

    name, source_rows = generate_source(postgres, args.scale, args.seed, args.reuse)
    env, _ = bench_environment(endpoint, "bench-publish", CHUNK_ROWS=str(args.chunk_rows))
    if args.max_rows_per_run:
        env["INGEST_MAX_ROWS_PER_RUN"] = str(args.max_rows_per_run)
    manifests: list[str] = []
    with stack.environment(env):
        stack.provision({env["TOTESYS_SECRET_ID"]: postgres.secret(name)},
                        buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"],
                                 env["LAKE_BUCKET"]),
                        glue_databases={env["LAKE_DATABASE"]: env["LAKE_BUCKET"]})
        pipeline = LocalPipeline(env["INGEST_BUCKET"])
        logging.disable(logging.WARNING)
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # EMF lines
                complete = False
                while not complete:
                    ingest = pipeline.ingest()
                    complete = bool(ingest["complete"])
                    for transformed in pipeline.deliver_manifest_events():
                        manifests.extend(transformed["transformed"])
        finally:
            logging.disable(logging.NOTSET)
    return env, source_rows, manifests


def _publish_child(env: dict[str, str], memory_mb: int, timeout: int) -> dict[str, Any]:
    """Invoke publish as its schedule would until a run publishes nothing; measure it all.

    Runs in a fresh process (a cold Lambda, then a warm one: the same process), so the
    peak RSS is publish's own. Each manifest's time is taken around
    :func:`totes.publish.publish_manifest`, the one call a manifest's work is in, and
    so is its peak of the temporary folder (:class:`benchmarks.common.TempSpace`, in
    a folder of the child's own, so no other process's files count).
    """
    import logging
    import tempfile

    os.environ.update(env)
    tempfile.tempdir = tempfile.mkdtemp(prefix="bench-publish-tmp-")
    from totes import lake, publish
    from totes.lake_schema import LAKE_TABLES
    from totes_local.runner import LambdaContext, load_handler, scheduled_event

    logging.disable(logging.WARNING)
    handler = load_handler("publish")
    baseline = current_rss()
    manifest_seconds: list[float] = []
    manifest_peaks: list[float] = []
    manifest_rss: list[float] = []
    manifest_start_rss: list[float] = []
    manifest_rows: list[int] = []
    manifest_bytes: list[int] = []
    manifest_largest: list[int] = []
    manifest_tmp: list[float] = []
    space = TempSpace()
    publish_manifest = publish.publish_manifest
    signature = inspect.signature(publish_manifest)

    def timed(*args: Any, **kwargs: Any) -> Any:
        manifest = signature.bind(*args, **kwargs).arguments["manifest"]
        manifest_rows.append(sum(table.rows for table in manifest.tables.values()))
        sizes = [file.bytes for outputs in (manifest.tables, manifest.deletions)
                 for output in outputs.values() for file in output.files]
        manifest_bytes.append(sum(sizes))
        manifest_largest.append(max(sizes, default=0))
        manifest_start_rss.append(current_rss() / MB)
        space.peak = space.held()
        started = time.perf_counter()
        try:
            return publish_manifest(*args, **kwargs)
        finally:
            manifest_tmp.append(space.peak / MB)
            manifest_seconds.append(time.perf_counter() - started)
            manifest_peaks.append(peak_rss() / MB)
            manifest_rss.append(current_rss() / MB)

    publish.publish_manifest = timed  # type: ignore[assignment]
    runs = []
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), space:  # EMF lines
        while True:
            started = time.perf_counter()
            response = handler(scheduled_event("publish"), LambdaContext(
                function_name="totes-publish", memory_limit_in_mb=memory_mb,
                timeout_seconds=timeout))
            runs.append({"seconds": time.perf_counter() - started,
                         "manifests": response["manifests_published"],
                         "rows": sum(response["rows_appended"].values())})
            if not response["manifests_published"]:
                break
    os.rmdir(tempfile.tempdir)  # every spool was deleted with its file
    catalog = lake.glue_catalog(env["LAKE_BUCKET"])
    tables = {}
    for name in LAKE_TABLES:
        table = catalog.load_table((env["LAKE_DATABASE"], name))
        # Every commit writes a metadata file and logs the one before it (the table's
        # creation wrote the first): the commits are the log's length, up to its cap of 100.
        sizes = [task.file.file_size_in_bytes for task in table.scan().plan_files()]
        tables[name] = {"snapshots": len(table.snapshots()),
                        "commits": len(table.metadata.metadata_log), "data_files": sizes}
    return {"runs": runs, "manifest_seconds": manifest_seconds, "manifest_peaks": manifest_peaks,
            "manifest_rss": manifest_rss, "manifest_start_rss": manifest_start_rss,
            "manifest_rows": manifest_rows, "manifest_mb": [size / MB for size in manifest_bytes],
            "manifest_largest_mb": [size / MB for size in manifest_largest],
            "manifest_tmp_mb": manifest_tmp,
            "tmp_peak_mb": max([space.peak / MB, *manifest_tmp]),
            "tables": tables, "baseline_mb": baseline / MB,
            "peak_mb": peak_rss() / MB, "final_rss_mb": current_rss() / MB}


def main(argv: list[str] | None = None) -> int:
    """Build the backfill, publish it in a child process, print the measurements.

    Fails when the peak memory is not under the function's ``MemorySize``, or a manifest
    takes longer than its timeout less the reserve publish keeps before it.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from totes import publish

    memory_mb, timeout, tmp_mb = publish_limits()
    with local_stack(args.data_dir) as (postgres, endpoint):
        started = time.perf_counter()
        env, source_rows, manifests = backfill(postgres, endpoint, args)
        print(f"scale {args.scale:g}: {source_rows:,} source rows ingested and transformed into "
              f"{len(manifests)} manifests in {time.perf_counter() - started:.0f} s", flush=True)
        result = run_in_fresh_process(_publish_child, env, memory_mb, timeout)
    published = sum(run["manifests"] for run in result["runs"])
    rows = sum(run["rows"] for run in result["runs"])
    seconds = sum(run["seconds"] for run in result["runs"])
    print(f"publish: {published} manifests, {rows:,} lake rows appended in {seconds:.1f} s over "
          f"{len(result['runs'])} invocations (the last one publishing nothing): "
          + ", ".join(f"{run['seconds']:.1f} s" for run in result["runs"]))
    print("per manifest (processed rows, seconds, RSS when it starts, peak RSS and RSS when "
          "done): " + ", ".join(
              f"{rows:,} rows {seconds:.1f} s {start:.0f} MB {peak:.0f} MB {rss:.0f} MB"
              for rows, seconds, start, peak, rss
              in zip(result["manifest_rows"], result["manifest_seconds"],
                     result["manifest_start_rss"], result["manifest_peaks"],
                     result["manifest_rss"])))
    print("per manifest (processed objects' bytes, the largest one's, peak /tmp held): "
          + ", ".join(f"{size:.1f} MB listed, largest {largest:.1f} MB, {tmp:.1f} MB held"
                      for size, largest, tmp in zip(result["manifest_mb"],
                                                    result["manifest_largest_mb"],
                                                    result["manifest_tmp_mb"])))
    print(f"peak /tmp {result['tmp_peak_mb']:.1f} MB of the function's {tmp_mb} MB")
    print(f"RSS after the last invocation: {result['final_rss_mb']:.0f} MB")
    snapshots = sum(table["snapshots"] for table in result["tables"].values())
    commits = sum(table["commits"] for table in result["tables"].values())
    widest = max(result["tables"].items(), key=lambda item: item[1]["snapshots"])
    print(f"lake: {snapshots} snapshots in {commits} commits over {len(result['tables'])} "
          f"tables (most: {widest[0]}, {widest[1]['snapshots']} snapshots in "
          f"{widest[1]['commits']} commits)")
    sizes = sorted(size for table in result["tables"].values() for size in table["data_files"])
    largest = max(result["tables"].items(), key=lambda item: sum(item[1]["data_files"]))
    print(f"data files in force: {len(sizes)}, {sum(sizes) / MB:.1f} MB, median "
          f"{sizes[len(sizes) // 2] / MB if sizes else 0:.2f} MB, largest "
          f"{sizes[-1] / MB if sizes else 0:.1f} MB ({largest[0]}: "
          f"{len(largest[1]['data_files'])} files, {sum(largest[1]['data_files']) / MB:.1f} MB)")
    longest = max(result["manifest_seconds"], default=0.0)
    budget = timeout - publish.RESERVE_SECONDS
    print(f"peak RSS {result['peak_mb']:.0f} MB (handler imported {result['baseline_mb']:.0f} "
          f"MB) of the function's {memory_mb} MB; longest manifest {longest:.1f} s of the "
          f"{budget:.0f} s a run may start one in ({timeout} s timeout)")
    fits = (result["peak_mb"] < memory_mb and longest < budget
            and result["tmp_peak_mb"] < tmp_mb)
    return 0 if fits and published == len(manifests) else 1


if __name__ == "__main__":
    sys.exit(main())
