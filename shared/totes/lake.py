"""The lake's Iceberg tables in the Glue catalog, changed one processed manifest at a time.

Each processed manifest becomes at most one Iceberg commit per lake table (a
transaction: its deletes and its append commit together or not at all), and only
when it changes the table: nothing new, no snapshot. Every snapshot of such a
commit carries the manifest in its summary (:data:`MANIFEST_PROPERTY`,
:data:`PROCESSED_PROPERTY`), which is what makes a rerun add nothing twice: a
table whose current snapshot already names a manifest is past it.

The rules are the load's, so the lake equals the warehouse:

* a dimension keeps the last row of each key (the manifest's rows replace the
  ones with the same key: an Iceberg delete and an append);
* a fact history gains every version not already there (same business id and
  ``last_updated``), in capture order with new record ids; a version already there
  with other values is corrected (the old row deleted, the new one appended with a
  new record id, so it ranks latest), and so is one with the same values that is not
  its id's latest version (a deletion or a lost version came after it: the row is
  back as it was); then each deletion record adds one deletion
  version, a copy of the id's latest version stamped with the detection time,
  unless that version records a deletion already (a version already at that stamp
  becomes the deletion, with a new record id, unless it is a deletion itself);
* ``fact_*_current`` holds the latest version of each business id the manifest
  touched, unless it is a deletion.

A revision (:mod:`totes.supersede`) is applied with Iceberg's own history: a table
holding what a revision superseded is put back, in a new snapshot, to the state of
its newest snapshot still in force (nothing is physically deleted), and the
revision's manifests are published on top.
"""
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, TypeVar

import boto3

from totes.lake_schema import (MANIFEST_KEY, LakeTable, arrow_schema, iceberg_schema, iceberg_type,
                               time_text, to_lake)
from totes import storage
from totes.errors import InputError
from totes.supersede import Markers

if TYPE_CHECKING:  # the publish function's own dependencies (pyarrow from the pandas layer)
    import pyarrow as pa
    from pyiceberg.catalog.glue import GlueCatalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table as IcebergTable
    from pyiceberg.table import Transaction
    from pyiceberg.table.snapshots import Snapshot

#: rows :func:`with_defaults` fills: a whole table, or one record batch of a data file.
Rows = TypeVar("Rows", "pa.Table", "pa.RecordBatch")

#: the FileIO every lake table is read and written with: create-once, conditional writes.
FILE_IO = "totes.lake_io.CreateOnceFileIO"

#: snapshot summary property: the ingest manifest key whose rows the snapshot holds.
MANIFEST_PROPERTY = "totes.manifest"
#: snapshot summary property: the processed manifest (of the revision in force) it came from.
PROCESSED_PROPERTY = "totes.processed-manifest"
#: snapshot summary property of a history table: the next record id to assign.
NEXT_RECORD_ID_PROPERTY = "totes.next-record-id"
#: snapshot summary property of a rewind: the revision marker that superseded what it removed.
REWOUND_BY_PROPERTY = "totes.rewound-by"

#: table property, set once snapshots have been expired: history no longer reaches the start.
EXPIRED_PROPERTY = "totes.snapshots-expired"

#: the column numbering rows in capture order while a manifest is worked on.
ORDINAL = "_ordinal"


def io_properties() -> dict[str, str]:
    """The lake's FileIO (:mod:`totes.lake_io`), as the catalog's ``py-io-impl`` property.

    It reaches S3 through :mod:`totes.storage`'s client, created plainly like every
    client of the pipeline (``AWS_ENDPOINT_URL`` and the region honoured), so it needs
    no other property.
    """
    return {"py-io-impl": FILE_IO}


def glue_catalog(lake_bucket: str) -> "GlueCatalog":
    """The Glue catalog, its tables' data and metadata under ``s3://<lake_bucket>/``.

    The Glue client is created plainly (``AWS_ENDPOINT_URL`` honoured); files are
    read and written as :func:`io_properties` says.
    """
    from pyiceberg.catalog.glue import GlueCatalog

    return GlueCatalog("lake", client=boto3.client("glue"), warehouse=f"s3://{lake_bucket}",
                       **io_properties())


#: every lake table's Iceberg properties. No commit retries: a change is computed from the
#: state it read, so a commit that lost a race must fail (the next run computes it again),
#: not be replayed onto another writer's state. Parquet is named, not left to the spec's
#: default: it is the one data format every reader takes (Athena engine 2 reads no other),
#: and what Athena's own writes (``OPTIMIZE``, ``INSERT``) then write too.
TABLE_PROPERTIES = {"format-version": "2", "write.format.default": "parquet",
                    "write.parquet.compression-codec": "zstd", "commit.retry.num-retries": "0"}


def open_table(catalog: "GlueCatalog", database: str, table: LakeTable,
               uuid: str | None = None) -> "IcebergTable":
    """Return the lake table, creating it (Iceberg v2, the contract's schema) if it is missing.

    Looked up first: pyiceberg's ``create_table_if_not_exists`` writes a new metadata
    file before Glue refuses the name, which would leave one stray file per table per run.
    Two first runs at once may both find it missing: the one Glue refuses opens the
    other's (its own metadata file stays, unreferenced, the only cost of the race).
    Glue's entry must name the table's own metadata (:func:`check_own_metadata`; the
    table ``uuid`` when the newest publish record names one), checked before anything
    is committed to it.
    """
    from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

    try:
        found = check_own_metadata(catalog.load_table((database, table.name)), table.name, uuid)
        return with_new_columns(found, table)
    except NoSuchTableError:
        pass
    try:
        return catalog.create_table(
            (database, table.name), schema=iceberg_schema(table), properties=TABLE_PROPERTIES)
    except TableAlreadyExistsError:
        return check_own_metadata(catalog.load_table((database, table.name)), table.name, uuid)


class ForeignMetadataError(InputError):
    """A lake table's Glue entry names the metadata file of another table: a person must act.

    Every writer (pyiceberg, Athena, Spark) keeps a table's metadata beside it, and the
    metadata records the table's own location, which ends with its name. A Glue entry
    pointed by hand (or by a restore of the catalog) at another table's metadata file,
    ``fact_payment`` at ``fact_payment_current``'s say (the same columns, as many
    commits), passes the audit's rollback check and every schema check, and the next
    publish would build the history on the current state: every earlier version gone,
    record ids given from 1 again, with the lake audit (current state only) clean.
    """


def check_own_metadata(table: "IcebergTable", name: str,
                       recorded_uuid: str | None = None) -> "IcebergTable":
    """Return ``table``, the lake table Glue calls ``name``, if its metadata is its own.

    Its location (recorded in the metadata file itself) must end with ``/<name>``, or
    ``/<name>-<32 hex digits>`` (Trino's unique table locations), and its Iceberg table
    uuid must be ``recorded_uuid``, the one the newest publish record names (when it
    names one): another stack's or another database's table of the same name has the
    same location's end, not the same uuid. Otherwise :class:`ForeignMetadataError`.
    """
    location = table.location().rstrip("/")
    found_uuid = str(table.metadata.table_uuid)
    if recorded_uuid is not None and found_uuid != recorded_uuid:
        raise ForeignMetadataError(
            f"{name}: Glue names {table.metadata_location}, the metadata of table "
            f"{found_uuid} at {location}, but the newest publish record names table "
            f"{recorded_uuid}: its Glue entry was pointed at another table's metadata (another "
            "stack's or database's, a catalog restored from elsewhere), or the table was made "
            "again; point metadata_location back at the newest metadata file of the table the "
            "record names before publishing (docs/runbook.md, \"Publish errors\")")
    if not re.fullmatch(rf"{re.escape(name)}(-[0-9a-f]{{32}})?", location.rsplit("/", 1)[-1]):
        raise ForeignMetadataError(
            f"{name}: Glue names {table.metadata_location}, the metadata of the table at "
            f"{location}, not of {name}: its Glue entry was pointed at another table's "
            f"metadata file; point metadata_location back at the newest "
            f"NNNNN-….metadata.json under {name}'s own metadata/ folder before publishing "
            "(docs/runbook.md, \"Publish errors\")")
    return table


def with_new_columns(found: "IcebergTable", table: LakeTable) -> "IcebergTable":
    """Add to ``found`` the contract's columns it lacks (a release added them), in one commit.

    Without them every later append would be refused as not matching the table's schema.
    Each is added optional, whatever the contract says: the data files already written
    have no value for it, so every engine reads it as NULL in their rows (Iceberg
    refuses a required column that existing files lack, and v2 has no default for it).
    Each takes its place in the contract's order, as in a table created fresh (only its
    field id, the next free one, differs). The publish reads a NOT NULL column's default
    there (:func:`_scan`), and refuses, as the warehouse's migration does, one without a
    default. A required column the contract no longer has is made optional in the same
    change (the rows appended from then on lack it); none is dropped, so a table stays
    readable by each snapshot's schema. A writer that committed since ``found`` was read
    (another publish adding the same columns) makes the change be computed again from
    the table as it is now, once: adding what is missing is the same change from any
    state, never a replayed one.
    """
    from pyiceberg.exceptions import CommitFailedException

    try:
        _add_missing_columns(found, table)
    except CommitFailedException:
        found.refresh()
        _add_missing_columns(found, table)
    return found


class ColumnError(InputError):
    """A column the contract gained that the lake, like the warehouse, cannot add."""


def _add_missing_columns(found: "IcebergTable", table: LakeTable) -> None:
    schema = found.schema()
    missing = [column for column in table.columns if column.name not in schema.column_names]
    refused = [column.name for column in missing if not column.nullable and column.default is None]
    if refused:
        raise ColumnError(
            f"{table.name}: {', '.join(refused)} NOT NULL without a default cannot be added to a "
            "table that has rows (the warehouse's migration refuses it too): give the contract "
            "column a default or make it nullable")
    dropped = [field.name for field in schema.fields
               if field.required and field.name not in table.column_names]
    if missing or dropped:
        with found.update_schema() as update:
            for column in missing:
                update.add_column(column.name, iceberg_type(column))
                place = table.columns.index(column)
                if place == 0:
                    update.move_first(column.name)
                else:  # its place in a fresh table: after the column before it in the contract
                    update.move_after(column.name, table.columns[place - 1].name)
            for name in dropped:
                update.make_column_optional(name)


def summary_value(snapshot: "Snapshot | None", name: str) -> str | None:
    """A property of a snapshot's summary (None without a snapshot or the property)."""
    if snapshot is None or snapshot.summary is None:
        return None
    value = snapshot.summary[name]
    return None if value is None else str(value)


def newest_record(lake_bucket: str, markers: Markers) -> tuple[str, dict[str, Any]] | None:
    """The newest publish record in force: its ingest manifest's key and the record itself.

    None before the first publish. The record names the newest manifest each table
    held (``tables``) and each table's uuid (``table_uuids``), which publish and the
    lake audit check the tables against; records written before they were kept lack them.
    """
    newest = markers.newest_processed(lake_bucket)
    if newest is None:
        return None
    return newest, storage.read_json(lake_bucket, markers.processed_key(newest))


def published_snapshot(table: "IcebergTable",
                       start: "Snapshot | None" = None) -> "Snapshot | None":
    """The newest snapshot publish wrote (one naming a manifest, or a rewind) from ``start`` back.

    ``start`` is the current snapshot unless given. Another engine's commit (Athena's
    ``OPTIMIZE``, which docs/lake.md suggests monthly) carries none of publish's
    properties, so the snapshots before it are read, as far as they are kept: after it,
    the next record id, the manifest held and whether it is in force are still known.
    """
    snapshot = table.current_snapshot() if start is None else start
    while snapshot is not None:
        if summary_value(snapshot, MANIFEST_PROPERTY) or summary_value(snapshot,
                                                                       REWOUND_BY_PROPERTY):
            return snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = None if parent is None else table.snapshot_by_id(parent)
    return None


def last_manifest(table: "IcebergTable") -> str | None:
    """The newest ingest manifest the table holds rows of (none after a rewind emptied it)."""
    return summary_value(published_snapshot(table), MANIFEST_PROPERTY)


def _in_force(table: "IcebergTable", snapshot: "Snapshot", markers: Markers) -> bool:
    published = published_snapshot(table, snapshot)
    manifest = summary_value(published, MANIFEST_PROPERTY)
    processed = summary_value(published, PROCESSED_PROPERTY)
    return manifest is None or markers.processed_key(manifest) == processed


class RewindError(InputError):
    """A revision reaches back past the snapshots the lake keeps: a person must rebuild it."""


def expire_snapshots(table: "IcebergTable", older_than: datetime) -> int:
    """Forget the snapshots taken before ``older_than`` (never the current one); how many.

    Only the table's metadata changes: no file is deleted (the lake bucket refuses
    deletes), so what the expired snapshots alone referenced stays until a person
    with the break-glass role removes it.
    """
    current = table.current_snapshot()
    cutoff = older_than.timestamp() * 1000
    expired = [snapshot.snapshot_id for snapshot in table.snapshots()
               if snapshot.timestamp_ms < cutoff
               and (current is None or snapshot.snapshot_id != current.snapshot_id)]
    if expired:
        # Said first: expiring unlinks the kept snapshots from their expired parents, after
        # which a rewind could not tell the table's first snapshot from the oldest kept one.
        if EXPIRED_PROPERTY not in table.properties:
            with table.transaction() as transaction:
                transaction.set_properties({EXPIRED_PROPERTY: "true"})
        table.maintenance.expire_snapshots().by_ids(expired).commit()
    return len(expired)


def rewind(table: "IcebergTable", markers: Markers) -> bool:
    """Put ``table`` back to its newest snapshot still in force, if a revision superseded it.

    The state is restored in a new snapshot (an overwrite with the older
    snapshot's rows), so time travel still shows what was there. Returns whether
    the table was rewound.
    """
    from pyiceberg.expressions import AlwaysTrue

    current = table.current_snapshot()
    if current is None or _in_force(table, current, markers):
        return False
    kept: Snapshot | None = current
    while kept is not None and not _in_force(table, kept, markers):
        parent = kept.parent_snapshot_id
        kept = None if parent is None else table.snapshot_by_id(parent)
        # A parent named but gone was expired by another engine (Athena's VACUUM keeps the
        # link); one unlinked by the publish's own expiry is known by the table property.
        if kept is None and (parent is not None or EXPIRED_PROPERTY in table.properties):
            raise RewindError(
                f"{table.name()}: the state before the revision is older than the snapshots "
                "kept (LAKE_SNAPSHOT_RETENTION_DAYS); rebuild the lake (docs/lake.md)")
    manifest = last_manifest(table) or ""
    revision = next(r for r in markers.revisions
                    if r.number == markers.revision_for(manifest))
    properties = {REWOUND_BY_PROPERTY: revision.key}
    for name in (MANIFEST_PROPERTY, PROCESSED_PROPERTY):
        value = None if kept is None else summary_value(published_snapshot(table, kept), name)
        if value is not None:
            properties[name] = value
    next_id = summary_value(published_snapshot(table), NEXT_RECORD_ID_PROPERTY)
    if next_id is not None:  # record ids are never given twice, even after a rewind
        properties[NEXT_RECORD_ID_PROPERTY] = next_id
    rows = None if kept is None else table.scan(snapshot_id=kept.snapshot_id).to_arrow()
    with table.transaction() as transaction:
        replace_rows(transaction, AlwaysTrue(), rows, properties)
    return True


@dataclass
class TableChange:
    """What one manifest changes in one lake table: rows removed (by filter) and appended."""

    removed: int = 0
    appended: "pa.Table | None" = None
    remove_filter: "BooleanExpression | None" = None
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether the change changes nothing (then nothing is committed)."""
        return self.remove_filter is None and (self.appended is None
                                               or self.appended.num_rows == 0)

    def commit(self, transaction: "Transaction") -> None:
        """Stage the change in ``transaction`` as one snapshot, labelled with its properties."""
        if self.remove_filter is not None:
            replace_rows(transaction, self.remove_filter, self.appended, self.properties)
        elif self.appended is not None and self.appended.num_rows:
            transaction.append(self.appended, snapshot_properties=self.properties)


def replace_rows(transaction: "Transaction", remove_filter: "BooleanExpression",
                 appended: "pa.Table | None", properties: dict[str, str]) -> None:
    """Remove the rows ``remove_filter`` matches and add ``appended``, in one overwrite snapshot.

    pyiceberg's own ``delete`` and ``append`` make two or three snapshots of one
    transaction (a delete, an overwrite rewriting the files it cuts rows from, an
    append), and it logs each in the table's snapshot log. The transaction makes them
    visible together, but time travel by timestamp (Athena's, Spark's and Trino's
    ``FOR TIMESTAMP AS OF``) reads that log: a moment between them showed the table
    without the changed rows, or empty during a rewind. So the files the filter
    touches are rewritten without its rows (copy-on-write, as pyiceberg does: no
    delete files) and dropped, and the new rows added, by one snapshot producer.

    Each touched file's replacement is written as soon as the file is read, so memory
    holds one file's rows at a time, however many files the filter touches (a
    ``*_current`` table's or a dimension's changed keys are spread over all its files).
    A file whose statistics show every row matches (all of them, for a rewind's
    ``AlwaysTrue``) is dropped from the metadata without being read.
    """
    import itertools

    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.expressions.visitors import _StrictMetricsEvaluator, bind
    from pyiceberg.io.pyarrow import (ArrowScan, _check_pyarrow_schema_compatible,
                                      _dataframe_to_data_files,
                                      _expression_to_complementary_pyarrow)

    metadata = transaction.table_metadata
    schema, io = metadata.schema(), transaction._table.io
    keep = _expression_to_complementary_pyarrow(bind(schema, remove_filter, True), schema)
    all_removed = _StrictMetricsEvaluator(schema, remove_filter).eval
    added = [] if appended is None or appended.num_rows == 0 else [appended]
    for rows in added:
        _check_pyarrow_schema_compatible(schema, provided_schema=rows.schema,
                                         format_version=metadata.format_version)
    counter = itertools.count(0)  # one file name sequence for the snapshot's files
    with transaction.update_snapshot(snapshot_properties=properties).overwrite() as snapshot:

        def write(rows: "pa.Table") -> None:
            for data_file in _dataframe_to_data_files(
                    table_metadata=metadata, df=rows, io=io, write_uuid=snapshot.commit_uuid,
                    counter=counter):
                snapshot.append_data_file(data_file)

        for task in transaction._scan(row_filter=remove_filter).plan_files():
            if all_removed(task.file):
                snapshot.delete_data_file(task.file)
                continue
            rows = ArrowScan(table_metadata=metadata, io=io, projected_schema=schema,
                             row_filter=AlwaysTrue()).to_table(tasks=[task])
            kept = rows.filter(keep)
            if kept.num_rows == rows.num_rows:
                continue
            snapshot.delete_data_file(task.file)
            if kept.num_rows:
                write(kept)
        for rows in added:
            write(rows)


def conform(spec: LakeTable, rows: "pa.Table") -> "pa.Table":
    """``rows`` with exactly the lake table's columns and Arrow types, in order."""
    return rows.select(list(spec.column_names)).cast(arrow_schema(spec))


def _with_ordinal(rows: "pa.Table") -> "pa.Table":
    import pyarrow as pa

    return rows.append_column(ORDINAL, pa.array(range(rows.num_rows), pa.int64()))


def last_per_key(rows: "pa.Table", keys: list[str], *, first: bool = False) -> "pa.Table":
    """Keep one row per ``keys``: the last in capture order (the first with ``first``).

    ``rows`` carry :data:`ORDINAL`; the result is in capture order.
    """
    import pyarrow.compute as pc

    aggregate: Any = "min" if first else "max"
    chosen = rows.group_by(keys, use_threads=False).aggregate([(ORDINAL, aggregate)])
    kept = rows.filter(pc.is_in(rows[ORDINAL], value_set=chosen[f"{ORDINAL}_{aggregate}"]))
    return kept.sort_by(ORDINAL)


def _scan(table: "IcebergTable", spec: LakeTable, column: str, values: Iterable[object],
          selected: tuple[str, ...] = ()) -> "pa.Table":
    """The rows whose ``column`` is one of ``values``, in the lake's Arrow types.

    Only the ``selected`` columns (all without), and nothing read from an empty table.
    """
    import pyarrow as pa

    names = list(selected or spec.column_names)
    schema = pa.schema([arrow_schema(spec).field(name) for name in names])
    wanted = set(values)
    if table.current_snapshot() is None or not wanted:
        return schema.empty_table()
    rows = table.scan(row_filter=one_of(column, wanted), selected_fields=tuple(names)).to_arrow()
    return with_defaults(spec, rows.select(names)).cast(schema)


def with_defaults(spec: LakeTable, rows: Rows) -> Rows:
    """``rows`` (a table or a record batch) with each NOT NULL column's ``default`` where NULL.

    Such a column was added after data files were written without it (Iceberg v2 has
    no default for them: they read NULL); the warehouse's migration gave its older
    rows the default, so the lake's rules (and the lake audit) see what the load sees.
    """
    import pyarrow.compute as pc

    for column in spec.columns:
        if column.default is not None and not column.nullable and column.name in rows.column_names:
            index = rows.schema.get_field_index(column.name)
            values: Any = rows[column.name]
            filled: Any = pc.fill_null(values, column.default)
            rows = rows.set_column(index, rows.schema.field(index), filled)
    return rows


def one_of(column: str, values: Iterable[object]) -> "BooleanExpression":
    """The Iceberg filter ``column IN values``."""
    from pyiceberg.expressions import In

    # In is a pydantic model: mypy reads its fields as the constructor, not its __init__.
    expression: BooleanExpression = In(column, set(values))  # type: ignore[call-arg, arg-type]
    return expression


def _same_values(left: "pa.Table", right: "pa.Table", columns: Iterable[str]) -> Any:
    """Row by row, whether ``left`` and ``right`` hold the same values (NULL equals NULL)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    same: Any = pa.array([True] * left.num_rows, pa.bool_())
    for name in columns:
        a: Any = left[name]
        b: Any = right[name]
        equal = pc.fill_null(pc.equal(a, b), False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        same = pc.and_(same, pc.or_(equal, both_null))
    return same


def _match(incoming: "pa.Table", existing: "pa.Table", keys: list[str],
           compared: list[str], carried: str) -> "pa.Table":
    """Match ``incoming`` rows with ``existing`` ones by ``keys``, in capture order.

    Each row gains ``_found`` (an existing row has its keys), ``_same`` (and every
    ``compared`` value is the same) and ``_old_<carried>`` (that row's ``carried``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    renamed = {name: f"_old_{name}" for name in (*compared, carried) if name not in keys}
    old = existing.select([*keys, *renamed]).rename_columns([*keys, *renamed.values()])
    old = old.append_column("_found", pa.array([True] * old.num_rows, pa.bool_()))
    joined = incoming.join(old, keys=keys, join_type="left outer",
                           use_threads=False).sort_by(ORDINAL)
    flags: Any = joined["_found"]
    found: Any = pc.fill_null(flags, False)
    previous = joined.select([renamed.get(name, name) for name in compared])
    same = _same_values(joined.select(compared), previous.rename_columns(compared), compared)
    return (joined.drop_columns(["_found", *renamed.values()])
            .append_column("_found", found)
            .append_column("_same", pc.and_(found, same))
            .append_column(f"_old_{carried}", joined[renamed.get(carried, carried)]))


def dimension_change(table: "IcebergTable", spec: LakeTable,
                     rows: "pa.Table") -> TableChange:
    """The change that upserts a manifest's rows of a dimension: new and changed members only."""
    import pyarrow.compute as pc

    incoming = last_per_key(_with_ordinal(to_lake(spec, rows)), [spec.key])
    existing = _scan(table, spec, spec.key, incoming[spec.key].to_pylist())
    compared = [name for name in spec.column_names if name != spec.key]
    matched = _match(incoming, existing, [spec.key], compared, spec.key)
    changed = matched.filter(pc.invert(matched["_same"]))
    replaced = changed.filter(changed["_found"])[spec.key].to_pylist()
    return TableChange(
        removed=len(replaced),
        remove_filter=one_of(spec.key, replaced) if replaced else None,
        appended=conform(spec, changed))


def inferred_members(spec: LakeTable, keys: Iterable[object]) -> "pa.Table":
    """Placeholder rows for ``keys`` of a dimension, as the load infers the warehouse's.

    The warehouse's rule (:func:`totes.warehouse.inferred_member_values`): the key,
    :data:`totes.warehouse.UNKNOWN` for a NOT NULL text column, NULL for a nullable
    one. The dimension's upsert replaces a placeholder when the real row arrives.
    """
    import pyarrow as pa

    from totes.warehouse import UNKNOWN

    wanted = sorted(set(keys))  # type: ignore[type-var]
    columns: dict[str, list[object]] = {}
    for column in spec.columns:
        if column.name == spec.key:
            columns[column.name] = list(wanted)
        elif column.nullable:
            columns[column.name] = [None] * len(wanted)
        elif column.type == "text":
            columns[column.name] = [UNKNOWN] * len(wanted)
        else:
            raise ValueError(f"{spec.name}.{column.name} needs an inferred-member value")
    return pa.Table.from_pydict(columns, schema=arrow_schema(spec))


def missing_members(table: "IcebergTable", spec: LakeTable,
                    keys: Iterable[object]) -> TableChange:
    """The change adding a placeholder for each of ``keys`` the dimension does not hold."""
    wanted = {key for key in keys if key is not None}
    present = set(_scan(table, spec, spec.key, wanted, (spec.key,))[spec.key].to_pylist())
    return TableChange(appended=inferred_members(spec, wanted - present))


@dataclass
class FactChange:
    """What one manifest changes in a fact's history and current state."""

    history: TableChange
    current: TableChange
    #: versions corrected in place (same ``last_updated``, other values), as the load counts.
    corrected: int = 0
    #: deletion versions added.
    deletions: int = 0


def fact_change(history: "IcebergTable", current: "IcebergTable", spec: LakeTable,
                manifest_key: str, versions: "pa.Table", deleted: "pa.Table",
                next_record_id: int) -> FactChange:
    """The changes of a fact's history and current state for a manifest's versions and deletions.

    ``versions`` are the manifest's fact rows and ``deleted`` its deletion records
    (both in the contract's Arrow types, capture order); see the module's notes for
    the rules, which are the load's.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    record_id, business_id = spec.source.primary_key, spec.key
    unique = list(spec.source.unique_key)
    compared = [name for name in spec.column_names
                if name not in (*unique, record_id, MANIFEST_KEY.name)]
    with_lake_columns = _fill(versions, {record_id: 0, MANIFEST_KEY.name: manifest_key})
    incoming = last_per_key(_with_ordinal(to_lake(spec, with_lake_columns)), unique)
    ids = set(incoming[business_id].to_pylist()) | set(deleted[business_id].to_pylist())
    existing = _scan(history, spec, business_id, ids)
    matched = _match(incoming, existing, unique, compared, record_id)
    latest = existing.group_by(business_id).aggregate([(record_id, "max")])[f"{record_id}_max"]
    is_latest: Any = pc.is_in(matched[f"_old_{record_id}"], value_set=latest.combine_chunks())
    still_latest: Any = pc.fill_null(is_latest, False)
    unchanged: Any = pc.and_(matched["_same"], still_latest)
    kept = matched.filter(pc.invert(unchanged))
    corrected = kept.filter(kept["_found"])[f"_old_{record_id}"].to_pylist()
    kept = _renumber(conform(spec, kept), record_id, next_record_id)
    next_record_id += kept.num_rows

    remaining = existing.filter(pc.invert(pc.is_in(existing[record_id],
                                                   value_set=pa.array(corrected, pa.int64()))))
    pool = pa.concat_tables([conform(spec, remaining), kept])
    removals, replaced = _deletion_versions(spec, pool, deleted, manifest_key)
    removals = _renumber(removals, record_id, next_record_id)
    next_record_id += removals.num_rows
    # A version the deletion took the place of goes: appended now, or already in the history.
    taken = pa.array(replaced, pa.int64())
    kept = kept.filter(pc.invert(pc.is_in(kept[record_id], value_set=taken)))
    earlier = set(remaining[record_id].to_pylist())
    removed = [*corrected, *(version for version in replaced if version in earlier)]
    appended = pa.concat_tables([kept, removals])

    properties = {NEXT_RECORD_ID_PROPERTY: str(next_record_id)}
    history_change = TableChange(
        removed=len(removed), appended=appended, properties=properties,
        remove_filter=one_of(record_id, removed) if removed else None)
    current_change = _current_change(current, spec, pa.concat_tables([pool, removals]), appended)
    return FactChange(history_change, current_change,
                      corrected=len(corrected), deletions=removals.num_rows)


def _fill(rows: "pa.Table", values: dict[str, object]) -> "pa.Table":
    """``rows`` with a constant column for each of ``values`` (the lake's own columns)."""
    import pyarrow as pa

    for name, value in values.items():
        rows = rows.append_column(name, pa.array([value] * rows.num_rows))
    return rows


def _renumber(rows: "pa.Table", record_id: str, start: int) -> "pa.Table":
    """``rows`` with record ids ``start, start + 1, ...`` in their order."""
    import pyarrow as pa

    index = rows.schema.get_field_index(record_id)
    ids = pa.array(range(start, start + rows.num_rows), pa.int64())
    return rows.set_column(index, rows.schema.field(index), ids)


def _deletion_versions(spec: LakeTable, pool: "pa.Table", deleted: "pa.Table",
                       manifest_key: str) -> tuple["pa.Table", list[int]]:
    """One deletion version per deleted id whose latest version in ``pool`` is not one already.

    A copy of the latest version, stamped with the first detection time of the
    manifest, ``is_deleted`` true. When a version already has that stamp (a row
    written and deleted within one millisecond: log-based capture stamps a deletion
    with its commit time), the deletion takes its place, as the load makes it the
    deletion in place (:func:`totes.warehouse.add_deletion_versions`); a deletion
    there already stays. Returns the deletion versions and the record ids they replace.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    record_id, business_id = spec.source.primary_key, spec.key
    stamps = ["last_updated_date", "last_updated_time"]
    empty = pool.schema.empty_table()
    if deleted.num_rows == 0 or pool.num_rows == 0:
        return empty, []
    first = last_per_key(_with_ordinal(_lake_stamps(deleted)), [business_id], first=True)
    candidates = pool.filter(pc.is_in(pool[business_id], value_set=first[business_id]))
    newest = candidates.group_by([business_id], use_threads=False).aggregate([(record_id, "max")])
    latest = candidates.filter(pc.is_in(candidates[record_id],
                                        value_set=newest[f"{record_id}_max"]))
    latest = latest.filter(pc.invert(latest["is_deleted"]))
    if latest.num_rows == 0:
        return empty, []
    joined = latest.drop_columns(stamps).join(first, keys=[business_id],
                                              use_threads=False).sort_by(ORDINAL)
    taken = pool.select([business_id, *stamps, record_id, "is_deleted"]).rename_columns(
        [business_id, *stamps, "_taken_id", "_taken_deleted"])
    checked = joined.join(taken, keys=[business_id, *stamps], join_type="left outer",
                          use_threads=False).sort_by(ORDINAL)
    taken_deleted: Any = checked["_taken_deleted"]
    fresh = checked.filter(pc.invert(pc.fill_null(taken_deleted, False)))
    taken_ids: Any = pc.drop_null(fresh["_taken_id"])
    replaced: list[int] = taken_ids.to_pylist()
    fresh = fresh.set_column(fresh.schema.get_field_index("is_deleted"), "is_deleted",
                             pa.array([True] * fresh.num_rows, pa.bool_()))
    fresh = fresh.set_column(fresh.schema.get_field_index(MANIFEST_KEY.name), MANIFEST_KEY.name,
                             pa.array([manifest_key] * fresh.num_rows, pa.string()))
    return conform(spec, fresh), replaced


def _lake_stamps(deleted: "pa.Table") -> "pa.Table":
    """Deletion records with their time in the lake's type (``HH:MM:SS.fff``)."""
    import pyarrow as pa

    index = deleted.schema.get_field_index("last_updated_time")
    return deleted.set_column(index, pa.field("last_updated_time", pa.large_string()),
                              time_text(deleted["last_updated_time"]).cast(pa.large_string()))


def _current_change(current: "IcebergTable", spec: LakeTable, every: "pa.Table",
                    appended: "pa.Table") -> TableChange:
    """Replace, in ``fact_*_current``, every id the manifest touched by its latest version.

    ``every`` holds every version of the ids the manifest touched, old and new.
    """
    import pyarrow.compute as pc

    record_id, business_id = spec.source.primary_key, spec.key
    touched = pc.unique(appended[business_id])
    if len(touched) == 0:
        return TableChange()
    versions = every.filter(pc.is_in(every[business_id], value_set=touched))
    newest = versions.group_by([business_id], use_threads=False).aggregate([(record_id, "max")])
    latest = versions.filter(pc.is_in(versions[record_id], value_set=newest[f"{record_id}_max"]))
    present = _scan(current, spec, business_id, touched.to_pylist(), (business_id,))
    ids = present[business_id].to_pylist()
    return TableChange(removed=len(ids), remove_filter=one_of(business_id, ids) if ids else None,
                       appended=conform(spec, latest.filter(
                           pc.invert(latest["is_deleted"])).sort_by(business_id)))
