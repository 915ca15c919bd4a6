"""Every failure the pipeline raises says, by its class, whether a person must act."""
import pytest

from totes import capture, config, db, errors, extract, ingest, load, manifest, source, star
from totes import storage, sweep, transform, warehouse


@pytest.mark.parametrize("error_class", [
    config.ConfigurationError, db.SecretFormatError, db.SecretUnavailableError,
    db.ServerNotTrustedError, capture.SnapshotFormatError,
    source.UnknownTableError, source.SourceSchemaError, star.SourceDataError,
    manifest.ManifestError, sweep.SweepOrderError, transform.TransformInputError,
    warehouse.SchemaMismatchError, warehouse.WarehouseAccessError, extract.SourceAccessError,
])
def test_bad_input_or_configuration_is_an_input_error(error_class):
    assert issubclass(error_class, errors.InputError)
    assert errors.kind_of(error_class("x")) == errors.INPUT


@pytest.mark.parametrize("error_class", [
    db.DatabaseUnavailableError, db.SecretsManagerUnreachableError, db.SecretsManagerBusyError,
    ingest.ConcurrentRunError, storage.ObjectAlreadyExistsError,
    warehouse.MigrationLockTimeoutError,
])
def test_a_world_not_ready_is_transient(error_class):
    assert errors.kind_of(error_class("x")) == errors.TRANSIENT


def test_a_wrapper_takes_the_kind_of_the_error_it_wraps():
    for cause, kind in ((manifest.ManifestError("bad"), errors.INPUT),
                        (db.DatabaseUnavailableError("down"), errors.TRANSIENT),
                        (KeyError("bug"), errors.UNEXPECTED)):
        try:
            raise load.LoadError("manifest m: loading failed", "m") from cause
        except load.LoadError as wrapped:
            assert errors.kind_of(wrapped) == kind


def test_historical_bases_still_catch_them():
    assert issubclass(manifest.ManifestError, ValueError)
    assert issubclass(db.DatabaseUnavailableError, ConnectionError)
    assert errors.kind_of(AttributeError("a bug")) == errors.UNEXPECTED
