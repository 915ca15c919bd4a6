"""The lake's dimensions equal the warehouse's when a fact arrives before its dimension row.

The load gives such a fact an inferred member (a placeholder the real row replaces
later); publish does the same, so the lake's dimensions stay equal to the
warehouse's. Reproduced with an operator's load skip of the manifest that brought
the member, which both load and publish honour.
"""
import pytest
from lake_kit import lake_view, warehouse_view

from totes import supersede

pytestmark = pytest.mark.e2e


def test_a_member_inferred_by_the_load_is_inferred_by_publish_and_replaced_alike(e2e):
    e2e.pipeline.cycle()
    e2e.pipeline.publish()
    source = e2e.source.connect()
    try:
        design = source.run("SELECT max(design_id) + 1 FROM design")[0][0]
        source.run("INSERT INTO design (design_id, design_name, file_location, file_name, "
                   "created_at, last_updated) VALUES (:d, 'Late', '/late', 'late.json', now(), "
                   "now())", d=design)
        brought = e2e.pipeline.ingest()["manifest_key"]
        e2e.pipeline.deliver_manifest_events()
        supersede.write_skip(e2e.env["PROCESSED_BUCKET"], "load", brought, "test", "tester")
        e2e.pipeline.load()
        source.run("UPDATE sales_order SET design_id = :d, last_updated = now() "
                   "WHERE sales_order_id = 1", d=design)
    finally:
        source.close()
    e2e.pipeline.cycle()
    published = e2e.pipeline.publish()
    assert published["manifests_skipped"] == [brought]
    assert published["inferred_members"] == {"dim_design": 1}
    assert [row[1] for row in lake_view(e2e.env, "dim_design") if row[0] == design] == [
        "Unknown"]
    for name in ("dim_design", "fact_sales_order_current"):
        assert lake_view(e2e.env, name) == warehouse_view(e2e, name), name

    # The real row, when it changes again, replaces the placeholder in both.
    source = e2e.source.connect()
    try:
        source.run("UPDATE design SET design_name = 'Late again', last_updated = now() "
                   "WHERE design_id = :d", d=design)
    finally:
        source.close()
    e2e.pipeline.cycle()
    assert "inferred_members" not in e2e.pipeline.publish()
    assert lake_view(e2e.env, "dim_design") == warehouse_view(e2e, "dim_design")
    assert [row[1] for row in lake_view(e2e.env, "dim_design") if row[0] == design] == [
        "Late again"]
