"""Benchmark the audit: time and peak memory comparing a pipeline-built warehouse with its source.

For each scale a fresh ``totesys`` is generated and the warehouse built by the
pipeline's own handlers (ingest, transform, load against a moto server, then
publish into the lake in moto's Glue and S3; not timed). Then the audit (the
warehouse and the lake) runs in a freshly spawned interpreter (a cold Lambda, so
the peak RSS is the audit's own, pandas and pyarrow imports included), twice:
on the clean warehouse, and after one fact row was changed by hand, which it
must find by descending into one segment per level. The claim checked: time
grows with the rows (one scan of each table in each database), memory and the
rows fetched do not.

At scale 100 (4.8 million source rows) building the warehouse takes minutes (about
400 s on the 2-core development machine); ``--reuse`` keeps the generated source.

Usage: ``python -m benchmarks.bench_audit [--scale 1 --scale 100] [--reuse]``.
"""
import argparse
import contextlib
import os
import sys
import time
from typing import Any

from benchmarks.bench_ingest import generate_source
from benchmarks.common import (MB, bench_environment, current_rss, local_stack, options, parse,
                               peak_rss, run_in_fresh_process)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    return parse(options("bench_audit", __doc__, scales=(1.0, 100.0)), argv)


def build_warehouse(postgres: Any, endpoint: str,
                    source: str) -> tuple[dict[str, str], str, float]:
    """Run the pipeline once over ``source`` into a fresh warehouse: env, database, seconds."""
    from totes_local import stack
    from totes_local.runner import LocalPipeline

    env, warehouse = bench_environment(endpoint, "bench-audit",
                                       INGEST_MAX_ROWS_PER_RUN=str(10 ** 9))
    postgres.recreate_database(warehouse)
    started = time.perf_counter()
    with stack.environment(env):
        stack.provision({env["TOTESYS_SECRET_ID"]: postgres.secret(source),
                         env["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)},
                        buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"],
                                 env["LAKE_BUCKET"]),
                        glue_databases={env["LAKE_DATABASE"]: env["LAKE_BUCKET"]})
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            pipeline = LocalPipeline(env["INGEST_BUCKET"])
            pipeline.cycle()
            pipeline.publish()
    return env, warehouse, time.perf_counter() - started


def measure_audit(env: dict[str, str]) -> dict[str, Any]:
    """Run one audit in this (fresh) process, as the handler does; return its cost."""
    os.environ.update(env)
    from totes import audit, stage

    baseline = current_rss()
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the verdict's log
        report = audit.run_audit(audit.AuditSettings.from_environment(), stage.Deadline.unbounded())
    seconds = time.perf_counter() - started
    tables = [*report.tables.values(), *report.lake.tables.values()]
    mismatched = {**{name: table.mismatches for name, table in report.tables.items()},
                  **{f"lake.{audit.lake_table_name(name)}": table.mismatches
                     for name, table in report.lake.tables.items()}}
    return {"seconds": seconds, "baseline": baseline, "peak": peak_rss(),
            "compared": sum(table.source_rows for table in tables),
            "lake_rows": sum(table.warehouse_rows for table in report.lake.tables.values()),
            "mismatches": report.mismatches,
            "queries": sum(table.queries for table in tables),
            "rows_fetched": sum(table.rows_fetched for table in tables),
            "summary": {name: count for name, count in mismatched.items() if count}}


def damage_one_fact(postgres: Any, warehouse: str) -> None:
    """Change one value of one current sales order in the warehouse, by hand."""
    conn = postgres.connect(warehouse)
    try:
        conn.run("UPDATE fact_sales_order SET units_sold = units_sold + 1 WHERE sales_record_id "
                 "= (SELECT max(sales_record_id) FROM fact_sales_order)")
    finally:
        conn.close()


def report_line(scale: float, rows: int, case: str, result: dict[str, Any]) -> str:
    """Format one audit's measurements as a table row."""
    return (f"{scale:>7g} {rows:>10,} {case:<14} {result['seconds']:>9.1f} "
            f"{result['peak'] / MB:>9.1f} {(result['peak'] - result['baseline']) / MB:>9.1f} "
            f"{result['queries']:>8,} {result['rows_fetched']:>9,} {result['mismatches']:>10,} "
            f"{result['lake_rows']:>10,}")


def main(argv: list[str] | None = None) -> int:
    """Build a warehouse per scale, audit it clean and damaged; fail if the audit is wrong."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    failed = False
    with local_stack(args.data_dir) as (postgres, endpoint):
        print("audit benchmark: a pipeline-built warehouse and lake audited clean, then with "
              "one warehouse fact changed (each audit in a fresh process)", flush=True)
        print(f"{'scale':>7} {'rows':>10} {'case':<14} {'seconds':>9} {'peak MB':>9} "
              f"{'growth':>9} {'queries':>8} {'fetched':>9} {'mismatches':>10} "
              f"{'lake rows':>10}", flush=True)
        for scale in args.scales:
            name, rows = generate_source(postgres, scale, args.seed, args.reuse, "bench_audit")
            env, warehouse, built = build_warehouse(postgres, endpoint, name)
            clean = run_in_fresh_process(measure_audit, env)
            print(report_line(scale, rows, "clean", clean), flush=True)
            damage_one_fact(postgres, warehouse)
            damaged = run_in_fresh_process(measure_audit, env)
            print(report_line(scale, rows, "one fact wrong", damaged), flush=True)
            print(f"{'':>7} (warehouse built by the pipeline in {built:.0f} s)", flush=True)
            if clean["mismatches"] or damaged["summary"] != {"fact_sales_order": 1}:
                print(f"audit was wrong: clean {clean['summary']}, damaged {damaged['summary']}",
                      flush=True)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
