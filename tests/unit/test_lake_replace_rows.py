"""A lake commit's copy-on-write removal holds one data file's rows at a time.

``lake.replace_rows`` rewrites every data file its filter touches without the removed
rows. A ``*_current`` table's or a dimension's changed keys are spread over all its
files, so if the kept rows of every file were held until the end, publish's memory
would grow with the table; written as each file is read, it is bounded by the largest
file. A rewind removes every row: its files are dropped from the metadata unread.
"""
import threading
from typing import Callable

import boto3
import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, In

from totes import lake

FILES, ROWS = 12, 50_000
SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("payload", pa.large_string())])


def one_file(number: int) -> pa.Table:
    ids = range(number * ROWS, (number + 1) * ROWS)
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "payload": pa.array(["x" * 40] * ROWS, pa.large_string())}, schema=SCHEMA)


def table_of_files(aws, name: str):
    """A lake table of :data:`FILES` data files, one append each."""
    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    catalog.create_namespace_if_not_exists(aws["LAKE_DATABASE"])
    table = catalog.create_table((aws["LAKE_DATABASE"], name), schema=SCHEMA)
    for number in range(FILES):
        table.append(one_file(number))
    return table


def peak_arrow_bytes(work: Callable[[], None]) -> int:
    """The most Arrow memory allocated at once while ``work`` runs, above the start."""
    pool = pa.default_memory_pool()
    pool.release_unused()
    start, peak = pool.bytes_allocated(), [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], pool.bytes_allocated() - start)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return peak[0]


def test_removing_a_row_from_every_file_holds_memory_to_a_few_files_not_all(aws):
    table = table_of_files(aws, "spread")
    victims = [number * ROWS for number in range(FILES)]  # one id in every file

    def remove() -> None:
        with table.transaction() as transaction:
            lake.replace_rows(transaction, In("id", victims), None, {"totes.test": "spread"})

    peak = peak_arrow_bytes(remove)
    table = table.refresh()
    assert table.scan().to_arrow().num_rows == FILES * ROWS - FILES
    assert len(table.metadata.snapshots) == FILES + 1  # the removal is one snapshot
    # Measured with one file's Arrow size 2.8 MB: holding every file's kept rows peaked at
    # 41.7 MB (15 files' worth); one file at a time, 13.6 MB (5).
    assert peak < 9 * one_file(0).nbytes, (peak, one_file(0).nbytes)


def test_a_rewind_drops_every_file_without_reading_it(aws):
    table = table_of_files(aws, "rewound")
    s3 = boto3.client("s3")
    for task in table.scan().plan_files():  # a read of any of them now fails
        bucket, key = task.file.file_path.removeprefix("s3://").split("/", 1)
        s3.delete_object(Bucket=bucket, Key=key)
    with table.transaction() as transaction:
        lake.replace_rows(transaction, AlwaysTrue(), one_file(FILES), {"totes.test": "rewind"})
    table = table.refresh()
    assert table.scan().to_arrow()["id"].to_pylist() == list(range(FILES * ROWS,
                                                                   (FILES + 1) * ROWS))
    assert len(table.metadata.snapshots) == FILES + 1
