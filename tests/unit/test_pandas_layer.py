"""What Lambda runs is what the tests run: the pandas layer in the template matches the pins."""
import re
from pathlib import Path

import pytest

from totes_local import cfn, pandas_layer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARN = cfn.load()["Parameters"]["PandasLayerArn"]["Default"]
REQUIREMENTS = (ROOT / "requirements-dev.txt").read_text()


def test_the_default_pandas_layer_ships_exactly_the_pinned_pandas_numpy_and_pyarrow():
    assert pandas_layer.mismatches(DEFAULT_ARN, REQUIREMENTS) == []


@pytest.mark.parametrize("package", pandas_layer.PACKAGES)
def test_a_pin_that_differs_from_the_layer_is_caught(package):
    shipped = pandas_layer.release(DEFAULT_ARN).versions[package]
    drifted = re.sub(rf"^{package}=={re.escape(shipped)}$", f"{package}==0.0.1", REQUIREMENTS,
                     flags=re.MULTILINE)
    assert drifted != REQUIREMENTS
    (problem,) = pandas_layer.mismatches(DEFAULT_ARN, drifted)
    assert problem.startswith(f"{package}: ") and "pin 0.0.1" in problem


def test_a_missing_pin_is_caught():
    without = re.sub(r"^pyarrow==.*$", "", REQUIREMENTS, flags=re.MULTILINE)
    assert pandas_layer.mismatches(DEFAULT_ARN, without) == [
        f"pyarrow: layer {DEFAULT_ARN} (awswrangler "
        f"{pandas_layer.release(DEFAULT_ARN).awswrangler}) ships "
        f"{pandas_layer.release(DEFAULT_ARN).versions['pyarrow']}, requirements pin nothing"]


def test_a_layer_version_the_table_does_not_know_fails_instead_of_passing():
    unknown = re.sub(r":\d+$", ":9999", DEFAULT_ARN)
    with pytest.raises(LookupError, match="layer version 9999 is not in"):
        pandas_layer.mismatches(unknown, REQUIREMENTS)


@pytest.mark.parametrize("arn", [
    "arn:aws:lambda:eu-west-1:336392948345:layer:AWSSDKPandas-Python311:31",
    "arn:aws:lambda:eu-west-2:336392948345:layer:AWSSDKPandas-Python312:31",
    "arn:aws:lambda:eu-west-2:336392948345:layer:AWSSDKPandas-Python311-Arm64:31",
])
def test_only_the_eu_west_2_python_311_x86_layer_is_described(arn):
    with pytest.raises(ValueError, match="not an eu-west-2 AWSSDKPandas-Python311"):
        pandas_layer.layer_version(arn)


def test_the_deployment_guide_names_the_release_of_the_default_layer():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    shipped = pandas_layer.release(DEFAULT_ARN)
    assert DEFAULT_ARN in guide
    assert f"awswrangler {shipped.awswrangler}" in guide
    for package, version in shipped.versions.items():
        assert f"{package} {version}" in guide
