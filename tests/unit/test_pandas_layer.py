"""What Lambda runs is what the tests run: the template's pandas layers match the pins."""
import json
import re
from pathlib import Path

import pytest

from totes_local import cfn, pandas_layer

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = cfn.load()
REQUIREMENTS = (ROOT / "requirements-dev.txt").read_text()
PANDAS_FUNCTIONS = ("TransformFunction", "LoadFunction", "AuditFunction", "PublishFunction")


def test_the_pinned_pandas_numpy_and_pyarrow_are_exactly_what_the_layer_ships():
    assert pandas_layer.mismatches(REQUIREMENTS) == []


@pytest.mark.parametrize("package", pandas_layer.PACKAGES)
def test_a_pin_that_differs_from_the_layer_is_caught(package):
    shipped = pandas_layer.RELEASE.versions[package]
    drifted = re.sub(rf"^{package}=={re.escape(shipped)}$", f"{package}==0.0.1", REQUIREMENTS,
                     flags=re.MULTILINE)
    assert drifted != REQUIREMENTS
    (problem,) = pandas_layer.mismatches(drifted)
    assert problem.startswith(f"{package}: ") and "pin 0.0.1" in problem


def test_a_missing_pin_is_caught():
    without = re.sub(r"^pyarrow==.*$", "", REQUIREMENTS, flags=re.MULTILINE)
    assert pandas_layer.mismatches(without) == [
        f"pyarrow: the layer of awswrangler {pandas_layer.RELEASE.awswrangler} ships "
        f"{pandas_layer.RELEASE.versions['pyarrow']}, requirements pin nothing"]


def test_every_pandas_function_takes_the_regions_published_layer_unless_the_parameter_is_set():
    assert pandas_layer.template_mismatches(TEMPLATE) == []
    assert TEMPLATE["Parameters"]["PandasLayerArn"]["Default"] == ""
    assert TEMPLATE["Conditions"]["HasPandasLayerArn"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "PandasLayerArn"}, ""]}]}
    for function in PANDAS_FUNCTIONS:
        assert TEMPLATE["Resources"][function]["Properties"]["Layers"][0] == {"Fn::If": [
            "HasPandasLayerArn", {"Ref": "PandasLayerArn"}, {"Fn::Sub": (
                "{{resolve:ssm:/aws/service/aws-sdk-pandas/3.16.0/${AWS::Region}"
                "/py3.11/x86_64/layer-arn}}")}]}


def test_a_function_whose_pandas_layer_is_another_release_or_a_fixed_arn_is_caught():
    resources = json.loads(json.dumps(TEMPLATE["Resources"]))
    other = pandas_layer.Release(awswrangler="3.16.1", versions={}, unzipped_bytes=0)
    resources["LoadFunction"]["Properties"]["Layers"][0] = pandas_layer.layer_entry(other)
    resources["AuditFunction"]["Properties"]["Layers"][0] = {"Fn::If": [
        "HasPandasLayerArn", {"Ref": "PandasLayerArn"},
        "arn:aws:lambda:eu-west-2:336392948345:layer:AWSSDKPandas-Python311:27"]}
    assert [problem.split(":")[0] for problem in pandas_layer.template_mismatches(
        {"Resources": resources})] == ["AuditFunction", "LoadFunction"]


def test_the_published_parameter_names_the_release_the_region_python_and_architecture():
    assert pandas_layer.RELEASE.parameter("ap-southeast-2") == (
        "/aws/service/aws-sdk-pandas/3.16.0/ap-southeast-2/py3.11/x86_64/layer-arn")


def test_the_command_prints_the_parameter_of_a_region_and_refuses_what_is_not_one(capsys):
    pandas_layer.main(["us-gov-west-1"])
    assert capsys.readouterr().out == pandas_layer.RELEASE.parameter("us-gov-west-1") + "\n"
    with pytest.raises(SystemExit) as exit_:
        pandas_layer.main(["eu-west-2; rm -rf /"])
    assert exit_.value.code == 2
    assert "is not an AWS region name" in capsys.readouterr().err


def test_the_deployment_guide_names_the_release_and_its_published_parameter():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    release = pandas_layer.RELEASE
    assert f"awswrangler {release.awswrangler}" in guide
    for package, version in release.versions.items():
        assert f"{package} {version}" in guide
    assert pandas_layer.PARAMETER.format(release=release.awswrangler, region="REGION") in guide


def test_a_region_without_the_published_layer_is_told_how_to_publish_the_same_release():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    other = guide.split("## Other regions\n", 1)[1].split("\n## ", 1)[0]
    release = pandas_layer.RELEASE.awswrangler
    assert f"awswrangler-layer-{release}-py3.11.zip" in other  # the x86_64 Python 3.11 asset
    assert "publish-layer-version" in other and "PandasLayerArn" in other


def test_the_shared_layer_shadows_nothing_pandas_numpy_and_pyarrow_need_at_another_version():
    # The shared layer comes last, so a package it ships replaces the pandas layer's copy for
    # every import: none may be pandas, numpy or pyarrow themselves, and every requirement
    # of theirs that the shared layer answers (python-dateutil, six...) must accept its pin.
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    shared = {name.lower().replace("_", "-"): version for name, version in pandas_layer.pins(
        (ROOT / "shared" / "requirements.txt").read_text()).items()}
    assert not {package.lower() for package in pandas_layer.PACKAGES} & set(shared)
    lambda_python = {"sys_platform": "linux", "platform_system": "Linux",
                     "python_version": "3.11", "extra": ""}
    refused = []
    for package in pandas_layer.PACKAGES:
        for text in requires(package) or []:
            needed = Requirement(text)
            if needed.marker and not needed.marker.evaluate(lambda_python):
                continue
            pinned = shared.get(needed.name.lower().replace("_", "-"))
            if pinned is not None and not needed.specifier.contains(pinned, prereleases=True):
                refused.append((package, str(needed), pinned))
    assert not refused
