from datetime import datetime, timezone

import pytest

from totes import keys

MOMENT = datetime(2024, 11, 15, 14, 20, 9, 123456, tzinfo=timezone.utc)


def test_stamp_is_compact_utc_with_milliseconds():
    assert keys.stamp(MOMENT) == "20241115T142009123Z"


def test_stamp_round_trips_to_the_millisecond():
    assert keys.parse_stamp(keys.stamp(MOMENT)) == MOMENT.replace(microsecond=123000)


def test_stamp_converts_other_zones_to_utc():
    from datetime import timedelta

    local = MOMENT.astimezone(timezone(timedelta(hours=5)))
    assert keys.stamp(local) == "20241115T142009123Z"


def test_data_key_is_browsable_by_table_and_date():
    run = keys.RunId("20241115T142009123Z", "3f9a1c2e")
    assert keys.data_key("sales_order", run, 7, "jsonl") == (
        "sales_order/2024/11/15/20241115T142009123Z-3f9a1c2e-00007.jsonl"
    )


def test_manifest_key_round_trips():
    run = keys.RunId("20241115T142009123Z", "3f9a1c2e")
    key = keys.manifest_key(run)
    assert key == "_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json"
    assert keys.parse_manifest_key(key) == run
    assert run.started_at == MOMENT.replace(microsecond=123000)
    assert str(run) == "20241115T142009123Z-3f9a1c2e"


def test_non_manifest_keys_are_not_mistaken_for_manifests():
    for key in ("sales_order/2024/11/15/20241115T142009123Z-3f9a1c2e-00000.jsonl",
                "_manifests/2024/11/15/notes.txt", "_manifests/", "other/_manifests/x.json"):
        assert keys.parse_manifest_key(key) is None


def test_key_order_is_time_order():
    earlier = keys.manifest_key(keys.RunId("20241115T142009123Z", "ffffffff"))
    later = keys.manifest_key(keys.RunId("20241115T142009124Z", "00000000"))
    assert earlier < later


def test_only_an_exact_ascii_manifest_key_is_a_manifest():
    good = "_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json"
    assert keys.is_manifest_key(good)
    arabic_indic = good.replace("2024/11/15", "\u0662\u0660\u0662\u0664/11/15")
    for key in (good + "\n", arabic_indic, good.replace("T142009", "T14200\u0669"),
                "_manifests/2099/01/01/20241115T142009123Z-3f9a1c2e.json",  # date is not the run's
                "_manifests/notes.json", good.upper()):
        assert not keys.is_manifest_key(key), key
        assert keys.parse_manifest_key(key) is None


def test_a_run_id_is_ascii_and_whole():
    assert keys.parse_run_id("20241115T142009123Z-3f9a1c2e") == keys.RunId(
        "20241115T142009123Z", "3f9a1c2e")
    for text in ("20241115T142009123Z-3f9a1c2e\n", "\u0662" + "0241115T142009123Z-3f9a1c2e",
                 "20241115T142009123Z-", "20241115T142009123Z-3F9A"):
        with pytest.raises(ValueError):
            keys.parse_run_id(text)


def test_sweep_keys_are_told_apart_from_captured_keys_and_strays():
    run = keys.RunId("20241115T142009123Z", "3f9a1c2e")
    sweep, captured = keys.sweep_key("payment", run), keys.captured_keys_key("payment", run)
    assert keys.parse_sweep_key(sweep) == ("payment", run)
    assert keys.parse_sweep_key(captured, captured=True) == ("payment", run)
    assert keys.parse_sweep_key(captured) is None
    assert keys.parse_sweep_key(sweep, captured=True) is None
    for key in (sweep + "\n", "_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json",
                "../" + sweep, sweep.replace("2024/11/15", "2024/11/16")):
        assert keys.parse_sweep_key(key) is None


def test_each_manifest_has_one_successor_claim_key_outside_the_manifest_prefix():
    run = keys.RunId("20241115T142009123Z", "0a1b2c3d")
    assert keys.successor_claim_key(keys.manifest_key(run)) == (
        "_claims/2024/11/15/20241115T142009123Z-0a1b2c3d.json")
    assert keys.successor_claim_key(None) == "_claims/first.json"
    assert not keys.successor_claim_key(None).startswith(keys.MANIFEST_PREFIX)


def test_a_key_that_is_not_a_manifest_has_no_successor_claim():
    with pytest.raises(ValueError, match="is not a manifest key"):
        keys.successor_claim_key("sales_order/2024/11/15/x.jsonl")
