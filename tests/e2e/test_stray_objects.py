"""Objects dropped under ``_manifests/`` by hand neither stop nor steer any stage.

Before, ``_manifests/notes.json`` in the ingestion bucket failed every ingest run, and in
the processed bucket stopped the load at it for good; a key dated in other Unicode digits
or ending in a newline passed as a manifest. Now every listing keeps exactly the manifest
layout, and each stray is one WARNING naming it and one count in ``StrayObjects``.
"""
import json

import pytest

from totes import keys, storage
from totes_local.runner import s3_object_created_event

pytestmark = pytest.mark.e2e


def stray_keys() -> list[str]:
    """Keys an operator or a forger might put under the manifest prefix, newest-looking first.

    (A key ending in a newline is in the unit tests: the moto server cannot store one.)
    """
    real = keys.manifest_key(keys.RunId("20991231T235959999Z", "ffffffff"))
    return ["_manifests/notes.json", real + " ",
            real.replace("20991231T", "2099123\u0661T"), "_manifests/2099/12/31/readme.txt"]


def emitted(stdout: str, metric: str) -> list[float]:
    """The values of ``metric`` in the EMF lines the handlers printed."""
    values = []
    for line in stdout.splitlines():
        if line.startswith('{"_aws"') and metric in json.loads(line):
            value = json.loads(line)[metric]
            values += value if isinstance(value, list) else [value]
    return values


def test_stray_objects_in_both_buckets_are_warned_about_counted_and_never_read(
        e2e, capsys, captured_logs):
    loaded = e2e.pipeline.cycle().ingest["manifest_key"]
    strays = stray_keys()
    # Just after the loaded manifest: the next one the load would look for in the listing.
    beside = loaded.replace(".json", ".json ")
    for bucket, extra in ((e2e.env["INGEST_BUCKET"], []), (e2e.env["PROCESSED_BUCKET"], [beside])):
        for key in strays + extra:
            storage.put_new_json(bucket, key, {"format": "totes.ingest/2", "note": "not ours"})
    conn = e2e.source.connect()
    try:
        conn.run("UPDATE sales_order SET units_sold = units_sold + 1, last_updated = now() "
                 "WHERE sales_order_id = 1")
    finally:
        conn.close()
    capsys.readouterr()

    cycle = e2e.pipeline.cycle()
    assert cycle.ingest["rows"]["sales_order"] == 1
    assert [len(result["transformed"]) for result in cycle.transforms] == [1]
    assert cycle.load["manifests_loaded"] == 1
    # The S3 event of a stray is acknowledged like any key transform does not handle.
    e2e.pipeline.invoke("transform", s3_object_created_event(e2e.env["INGEST_BUCKET"],
                                                             strays[0]))
    assert e2e.pipeline.audit()["ok"]

    warned = [(line["stage"], line["bucket"], line["key"]) for line in captured_logs()
              if line.get("message", "").startswith("stray object")]
    for stage, bucket, expected in (
            ("ingest", "INGEST_BUCKET", set(strays)), ("transform", "INGEST_BUCKET", set(strays)),
            ("transform", "PROCESSED_BUCKET", set(strays)),
            ("load", "INGEST_BUCKET", set(strays)), ("load", "PROCESSED_BUCKET", {beside})):
        seen = {key for where, name, key in warned if where == stage and name == e2e.env[bucket]}
        assert seen >= expected, (stage, bucket)
    # Per invocation: ingest; transform (both buckets); load (the ingest bucket's strays and
    # the processed one it met); the stray's own event.
    counts = emitted(capsys.readouterr().out, "StrayObjects")
    assert counts == [len(strays), 2 * len(strays) + 1, len(strays) + 1, 1]
