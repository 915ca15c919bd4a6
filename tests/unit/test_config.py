from datetime import timedelta

import pytest

from totes import config


def test_required_setting_missing_names_the_variable(monkeypatch):
    monkeypatch.delenv("INGEST_BUCKET", raising=False)
    with pytest.raises(config.ConfigurationError, match="INGEST_BUCKET"):
        config.ingest_bucket()


def test_blank_required_setting_counts_as_missing(monkeypatch):
    monkeypatch.setenv("PROCESSED_BUCKET", "   ")
    with pytest.raises(config.ConfigurationError, match="PROCESSED_BUCKET"):
        config.processed_bucket()


def test_contract_variables_are_read(monkeypatch):
    monkeypatch.setenv("INGEST_BUCKET", "in")
    monkeypatch.setenv("PROCESSED_BUCKET", "out")
    monkeypatch.setenv("TOTESYS_SECRET_ID", "src")
    monkeypatch.setenv("WAREHOUSE_SECRET_ID", "dw")
    assert (config.ingest_bucket(), config.processed_bucket()) == ("in", "out")
    assert (config.totesys_secret_id(), config.warehouse_secret_id()) == ("src", "dw")


def test_optional_settings_default_when_unset(monkeypatch):
    monkeypatch.delenv("INGEST_DELETE_SWEEP_MINUTES", raising=False)
    monkeypatch.delenv("CHUNK_ROWS", raising=False)
    monkeypatch.delenv("INGEST_MAX_ROWS_PER_RUN", raising=False)
    assert config.delete_sweep_interval() == timedelta(minutes=60)
    assert config.chunk_rows() == 50_000
    assert config.max_rows_per_run() == 1_000_000


def test_row_budget_is_read_and_must_allow_at_least_one_row(monkeypatch):
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "1")
    assert config.max_rows_per_run() == 1
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "0")
    with pytest.raises(config.ConfigurationError,
                       match="INGEST_MAX_ROWS_PER_RUN must be at least 1"):
        config.max_rows_per_run()


def test_delete_sweep_may_be_zero_to_sweep_every_run_but_chunk_rows_may_not(monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    assert config.delete_sweep_interval() == timedelta(0)
    monkeypatch.setenv("CHUNK_ROWS", "0")
    with pytest.raises(config.ConfigurationError, match="CHUNK_ROWS must be at least 1"):
        config.chunk_rows()


def test_non_integer_setting_is_rejected_with_its_value(monkeypatch):
    monkeypatch.setenv("CHUNK_ROWS", "lots")
    with pytest.raises(config.ConfigurationError, match="'lots'"):
        config.chunk_rows()


def test_capture_mode_is_snapshot_unless_set_and_refuses_anything_else(monkeypatch):
    monkeypatch.delenv("CAPTURE_MODE", raising=False)
    assert config.capture_mode() == "snapshot"
    monkeypatch.setenv("CAPTURE_MODE", "logical")
    assert config.capture_mode() == "logical"
    monkeypatch.setenv("CAPTURE_MODE", "wal2json")
    with pytest.raises(config.ConfigurationError, match="CAPTURE_MODE must be one of"):
        config.capture_mode()


def test_slot_and_publication_names_default_and_must_be_plain_names(monkeypatch):
    monkeypatch.delenv("REPLICATION_SLOT", raising=False)
    monkeypatch.setenv("PUBLICATION", "totes_pub_2")
    assert (config.replication_slot(), config.publication()) == ("totes_ingest", "totes_pub_2")
    monkeypatch.setenv("REPLICATION_SLOT", "x'); DROP TABLE staff; --")
    with pytest.raises(config.ConfigurationError, match="REPLICATION_SLOT must be"):
        config.replication_slot()
