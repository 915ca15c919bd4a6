"""What Lambda runs is what the tests run: the template's pandas layers match the pins."""
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


def test_the_templates_mapping_is_the_tables_every_region_with_its_own_arn():
    assert pandas_layer.template_mismatches(TEMPLATE) == []
    for region, row in TEMPLATE["Mappings"]["PandasLayer"].items():
        assert re.fullmatch(rf"arn:aws:lambda:{region}:336392948345:layer:"
                            r"AWSSDKPandas-Python311:\d+", row["Arn"])


def test_a_mapping_row_that_differs_from_the_table_is_caught():
    drifted = {"Mappings": {"PandasLayer": {
        **pandas_layer.mapping(), "eu-west-2": {"Arn": "arn:aws:lambda:eu-west-2:1:layer:x:1"},
        "xx-east-9": {"Arn": "arn:aws:lambda:xx-east-9:1:layer:x:1"}}}}
    assert [problem.split(":")[0] for problem in pandas_layer.template_mismatches(drifted)] == [
        "eu-west-2", "xx-east-9"]


def test_every_pandas_function_uses_the_mapped_layer_unless_the_parameter_is_set():
    assert TEMPLATE["Parameters"]["PandasLayerArn"]["Default"] == ""
    assert TEMPLATE["Conditions"]["HasPandasLayerArn"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "PandasLayerArn"}, ""]}]}
    for function in PANDAS_FUNCTIONS:
        assert TEMPLATE["Resources"][function]["Properties"]["Layers"][0] == {"Fn::If": [
            "HasPandasLayerArn", {"Ref": "PandasLayerArn"},
            {"Fn::FindInMap": ["PandasLayer", {"Ref": "AWS::Region"}, "Arn"]}]}


def test_a_region_without_a_mapped_layer_is_refused_before_anything_is_created():
    rule = TEMPLATE["Rules"]["PandasLayerKnownInTheRegion"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "PandasLayerArn"}, ""]}
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Contains": [
        sorted(pandas_layer.RELEASE.layer_versions), {"Ref": "AWS::Region"}]}
    assert "set PandasLayerArn" in " ".join(assertion["AssertDescription"].split())


def test_a_region_the_table_lacks_has_no_arn_and_says_what_to_do():
    with pytest.raises(LookupError, match="recorded for xx-east-9: set PandasLayerArn"):
        pandas_layer.RELEASE.arn("xx-east-9")


def test_the_command_prints_the_arn_of_a_region(capsys):
    pandas_layer.main(["eu-west-2"])
    assert capsys.readouterr().out == pandas_layer.RELEASE.arn("eu-west-2") + "\n"
    with pytest.raises(SystemExit) as exit_:
        pandas_layer.main(["xx-east-9"])
    assert exit_.value.code == 1


def test_the_deployment_guide_names_the_release_and_every_mapped_arn():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    release = pandas_layer.RELEASE
    assert f"awswrangler {release.awswrangler}" in guide
    for package, version in release.versions.items():
        assert f"{package} {version}" in guide
    for row in pandas_layer.mapping().values():
        assert row["Arn"] in guide
