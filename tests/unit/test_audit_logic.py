"""The audit's pure parts: the mapping from both contracts, in-flight predicates, the report."""
import gzip
import json
from datetime import date, datetime

import pytest

from totes import audit, audit_sql, storage
from totes.capture import Snapshot, TableCursor
from totes.manifest import IngestManifest
from totes.warehouse_schema import TABLES, Column
from totes_local import audit_cli

CURRENT = Snapshot(1000, 1010, (1003,))


@pytest.mark.parametrize("name", audit_sql.SEGMENTED)
def test_every_compared_column_of_every_table_has_a_source_rendering(name):
    source, target = audit_sql.source_relation(name), audit_sql.warehouse_relation(name)
    columns = audit_sql.compared_columns(TABLES[name])
    assert source.text_sql.count("quote_nullable(") == len(columns)
    assert target.text_sql.count("quote_nullable(") == len(columns)
    assert "serial" not in {column.type for column in columns}


def test_the_mapping_follows_the_transform():
    sales = audit_sql.source_relation("fact_sales_order").text_sql
    assert "to_char(s.\"last_updated\", 'HH24:MI:SS.MS')" in sales
    assert "to_char(s.\"created_at\", 'YYYY-MM-DD')" in sales
    assert "trim_scale(s.\"unit_price\")::text" in sales
    assert "(s.\"agreed_payment_date\")::text" in sales  # TEXT dates compare as their text
    assert "(s.\"staff_id\")::text" in sales  # sales_staff_id
    counterparty = audit_sql.source_relation("dim_counterparty")
    assert 'JOIN "address" AS a ON a."address_id" = s."legal_address_id"' in counterparty.from_sql
    assert '(a."phone")::text' in counterparty.text_sql
    staff = audit_sql.source_relation("dim_staff")
    assert '(d."department_name")::text' in staff.text_sql
    assert audit_sql.warehouse_relation("fact_payment").from_sql == '"fact_payment_current" AS w'
    assert audit_sql.warehouse_relation("fact_payment").key_sql == 'w."payment_id"'


def test_currency_names_are_the_transforms_iso_names():
    relation = audit_sql.source_relation("dim_currency")
    names = dict(zip(relation.params["iso_codes"], relation.params["iso_names"]))
    assert names["GBP"] == "Pound Sterling" and names["EUR"] == "Euro"


def test_a_warehouse_column_without_a_source_is_refused():
    with pytest.raises(audit_sql.AuditContractError, match="dim_design.colour"):
        audit_sql._source_value("dim_design", Column("colour", "text"))


def test_a_table_never_captured_is_entirely_in_flight():
    assert audit_sql.in_flight_sql("s", "staff", None, CURRENT, {}) == "true"
    assert audit_sql.in_flight_sql("s", "staff", TableCursor(), CURRENT, {}) == "true"


def test_rows_after_the_cursor_snapshot_are_in_flight():
    params = {}
    predicate = audit_sql.in_flight_sql("s", "staff", TableCursor(since=Snapshot(990, 995)),
                                        CURRENT, params)
    assert params == {"xmax32_s": 1010, "width_s": 20}
    assert "s.xmin::text::bigint >= 3" in predicate and ":width_s" in predicate


def test_a_cut_pass_reads_below_its_resume_key_from_the_older_snapshot():
    params = {}
    cursor = TableCursor(since=Snapshot(900, 905), resume_after=42,
                         resume_since=Snapshot(990, 995))
    predicate = audit_sql.in_flight_sql("a", "address", cursor, CURRENT, params)
    assert predicate.startswith('(CASE WHEN a."address_id" <= CAST(:after_a AS bigint)')
    assert params == {"xmax32_a": 1010, "width_a": 110, "after_a": 42,
                      "xmax32_ar": 1010, "width_ar": 20}
    params = {}
    audit_sql.in_flight_sql("s", "staff", TableCursor(resume_after=7), CURRENT, params)
    assert params == {"after_s": 7}


def test_a_watermark_cursor_puts_rows_from_its_stamp_in_flight():
    params = {}
    cursor = TableCursor(since_last_updated=datetime(2024, 11, 15, 14, 0))
    predicate = audit_sql.in_flight_sql("s", "staff", cursor, CURRENT, params)
    assert predicate == 's."last_updated" >= CAST(:lu_s AS timestamp)'
    assert params == {"lu_s": "2024-11-15T14:00:00"}


def test_report_keeps_keys_only_and_knows_when_it_is_clean():
    clean = audit.TableAudit(source_rows=3, warehouse_rows=3, in_flight=2, retained=1)
    wrong = audit.TableAudit(source_rows=3, warehouse_rows=2, missing=1,
                             examples=[date(2024, 11, 15)])
    report = audit.AuditReport("2026-11-27T08:00:00.000Z", "_manifests/x.json",
                               {"dim_staff": clean, "dim_date": wrong})
    assert not report.ok and report.mismatches == 1 and report.in_flight == 2
    summary = report.to_json()
    assert summary["tables"]["dim_date"]["examples"] == ["2024-11-15"]
    assert set(summary["tables"]["dim_staff"]) >= {
        "source_rows", "warehouse_rows", "missing", "extra", "different", "in_flight",
        "examples"}
    assert audit.AuditReport("t", None, {"dim_staff": clean}).ok


def test_examples_are_bounded_and_say_missing_then_extra_then_different():
    assert audit._examples([1, 2], [3], [4, 5, 6]) == [1, 2, 3, 4, 5]


def test_the_local_copy_of_the_bucket_reads_json_and_gzip_lines(tmp_path):
    (tmp_path / "_sweeps").mkdir()
    (tmp_path / "_sweeps" / "k.keys.gz").write_bytes(gzip.compress(b"1\n2\n\n3\n"))
    (tmp_path / "m.json").write_text('{"a": 1}')
    store = audit.DirectoryStore(tmp_path)
    assert [int(line) for line in store.lines("_sweeps/k.keys.gz")] == [1, 2, 3]
    assert store.read_json("m.json") == {"a": 1}


def test_the_local_copy_of_the_bucket_checks_a_document_s_seal(tmp_path):
    sealed = {"a": 1, storage.SEAL_FIELD: storage.checksum(b'{"a":1}')}
    (tmp_path / "m.json").write_text(json.dumps(sealed))
    (tmp_path / "edited.json").write_text(json.dumps({**sealed, "a": 2}))
    (tmp_path / "cut.json").write_text(json.dumps(sealed)[:9])
    store = audit.DirectoryStore(tmp_path)
    assert store.read_json("m.json") == {"a": 1}
    with pytest.raises(storage.DamagedObjectError, match=f"{tmp_path / 'edited.json'} is not "
                                                         "the document the pipeline wrote"):
        store.read_json("edited.json")
    with pytest.raises(storage.DamagedObjectError, match=f"{tmp_path / 'cut.json'} is not JSON"):
        store.read_json("cut.json")


def manifest(run: str, previous: str | None) -> dict:
    """A minimal ingest manifest document for walking the chain of runs."""
    return {"format": "totes.ingest/2", "run_id": run, "started_at": "x",
            "previous_manifest": previous, "snapshot": "5:5:", "tables": {}}


def test_runs_after_a_sweep_are_walked_back_to_it_and_no_further(tmp_path):
    keys = {run: f"_manifests/2026/11/27/{run}.json" for run in (
        "20261127T080000000Z-aa", "20261127T080500000Z-bb", "20261127T081000000Z-cc")}
    runs = list(keys)
    for number, run in enumerate(runs):
        path = tmp_path / keys[run]
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = keys[runs[number - 1]] if number else None
        path.write_text(json.dumps(manifest(run, previous)))
    store = audit.DirectoryStore(tmp_path)
    newest = keys[runs[2]]
    point = audit.CapturePoint(newest, IngestManifest.parse(store.read_json(newest)))
    walked = [m.run_id for m in audit._runs_after_sweep(store, point, runs[0])]
    assert walked == [runs[2], runs[1]]
    assert list(audit._runs_after_sweep(store, point, runs[2])) == []


def test_the_command_line_table_and_summary_line():
    table = audit.TableAudit(source_rows=1200, warehouse_rows=1199, missing=1, examples=[17])
    report = audit.AuditReport("2026-11-27T08:00:00.000Z", None,
                               {"dim_staff": table,
                                "dim_date": audit.TableAudit(compared=False)}).to_json()
    lines = audit_cli.render(report)
    assert "none yet" in lines[1]
    (row,) = [line for line in lines if line.strip().startswith("dim_staff")]
    assert row.split() == ["dim_staff", "1,200", "1,199", "1", "0", "0", "0", "0"]
    assert "not compared" in [line for line in lines if "dim_date" in line][0]
    assert lines[-1] == ("audit: 1 MISMATCH(ES) in dim_staff (1 missing, 0 extra, 0 different; "
                         "e.g. 17)")


def test_the_command_line_table_names_the_current_views_and_explains_each_count():
    report = audit.AuditReport("2026-11-27T08:00:00.000Z", None,
                               {"fact_payment": audit.TableAudit(source_rows=3, warehouse_rows=3),
                                "dim_staff": audit.TableAudit(source_rows=2, warehouse_rows=2)}
                               ).to_json()
    lines = audit_cli.render(report)
    rows = [line.split()[0] for line in lines if line.strip().startswith(("fact_", "dim_"))]
    assert rows[:2] == ["fact_payment_current", "dim_staff"]
    notes = " ".join(lines)
    assert "the fact tables themselves keep every version" in notes
    assert "retained: dimension rows whose source row is gone" in notes
    assert "in flight: changed at the source after" in notes


def write_chain(tmp_path, documents: dict) -> audit.DirectoryStore:
    """Write manifest documents (key -> document) into a local copy of the bucket."""
    for key, document in documents.items():
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
    return audit.DirectoryStore(tmp_path)


class CountingStore(audit.DirectoryStore):
    """A local copy of the bucket that counts the objects read."""

    reads = 0

    def read_json(self, key):
        self.reads += 1
        return super().read_json(key)


@pytest.mark.parametrize("previous", ["self", "later", "_sweeps/payment/2026/11/27/x.keys.gz"])
def test_a_manifest_naming_itself_or_a_later_one_as_previous_is_refused_in_one_read(
        tmp_path, previous):
    sweep_run, run = "20261127T080000000Z-aa", "20261127T081000000Z-cc"
    key = f"_manifests/2026/11/27/{run}.json"
    later = "_manifests/2026/11/27/20261127T090000000Z-dd.json"
    named = {"self": key, "later": later}.get(previous, previous)
    write_chain(tmp_path, {key: manifest(run, named), later: manifest(later[22:-5], key)})
    store = CountingStore(tmp_path)
    with pytest.raises(audit.errors.InputError, match="previous_manifest") as caught:
        point = audit.CapturePoint(key, IngestManifest.read(store.read_json(key), key))
        list(audit._runs_after_sweep(store, point, sweep_run))
    assert key in str(caught.value) and store.reads == 1


def test_a_chain_longer_than_the_walk_allows_is_an_input_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "MAX_WALK", 3)
    runs = [f"20261127T08{minute:02d}00000Z-aa" for minute in range(6)]
    chain = {f"_manifests/2026/11/27/{run}.json": manifest(
        run, f"_manifests/2026/11/27/{runs[number - 1]}.json" if number else None)
        for number, run in enumerate(runs)}
    store = CountingStore(tmp_path)
    write_chain(tmp_path, chain)
    newest = list(chain)[-1]
    point = audit.CapturePoint(newest, IngestManifest.read(store.read_json(newest), newest))
    with pytest.raises(audit.ManifestWalkError, match="more than 3 manifests") as caught:
        list(audit._runs_after_sweep(store, point, runs[0]))
    assert newest in str(caught.value) and store.reads == 3
    assert audit.errors.kind_of(caught.value) == audit.errors.INPUT


def test_a_gzip_bomb_of_one_endless_line_is_refused_after_a_bounded_read(tmp_path):
    import tracemalloc

    (tmp_path / "_sweeps").mkdir()
    bomb = gzip.compress(b"1" * (256 << 20), compresslevel=9)  # 256 MB of one line, ~250 KB
    (tmp_path / "_sweeps" / "bomb.keys.gz").write_bytes(bomb)
    store = audit.DirectoryStore(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(audit.sweep.KeyListError, match="bomb.keys.gz: a line longer"):
            list(audit._stored_keys(store, "_sweeps/bomb.keys.gz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(bomb) < 1 << 20 and peak < 16 << 20


def test_a_key_list_replaced_in_the_bucket_is_refused_by_the_audit(monkeypatch):
    import boto3
    from ingest_fixtures import moto_buckets

    from totes import storage

    key = "_sweeps/payment/k.keys.gz"
    with moto_buckets(monkeypatch, "ingest-audit", "processed-audit"):
        sha256 = storage.put_new_object_on(None, "ingest-audit", key, gzip.compress(b"1,2,3\n"),
                                           "application/gzip")
        boto3.client("s3").put_object(  # a later version without key 3: its delete hidden
            Bucket="ingest-audit", Key=key, Body=gzip.compress(b"1,2\n"))
        store = audit.BucketStore("ingest-audit")
        assert list(audit._stored_keys(store, key)) == [1, 2]  # no hash recorded: unchecked
        with pytest.raises(storage.ObjectChangedError, match=f"{key} is not the object"):
            list(audit._stored_keys(store, key, sha256))


def test_a_key_list_replaced_in_a_local_copy_is_refused_by_the_audit_as_in_the_bucket(tmp_path):
    from totes import storage

    key = "_sweeps/payment/k.keys.gz"
    (tmp_path / "_sweeps" / "payment").mkdir(parents=True)
    recorded = storage.checksum(gzip.compress(b"1,2,3\n", mtime=0))
    (tmp_path / key).write_bytes(gzip.compress(b"1,2\n", mtime=0))   # its delete hidden
    store = audit.DirectoryStore(tmp_path)
    assert list(audit._stored_keys(store, key)) == [1, 2]   # no hash recorded: unchecked
    with pytest.raises(storage.ObjectChangedError,
                       match=f"^{tmp_path / key} is not the object its manifest lists"):
        list(audit._stored_keys(store, key, recorded))
    (tmp_path / key).write_bytes(gzip.compress(b"1,2,3\n", mtime=0))   # the one recorded
    assert list(audit._stored_keys(store, key, recorded)) == [1, 2, 3]
