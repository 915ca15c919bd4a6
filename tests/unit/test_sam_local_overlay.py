"""What ``make invoke`` gives SAM: the layers in the template's order, managed ones stood in for."""
import json
from pathlib import Path

import pytest

from totes_local import cfn, local_stack, sam_local

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = {"Ref": sam_local.PANDAS_STAND_IN}
SHARED = {"Ref": "SharedLayer"}
MANAGED_ARN = "arn:aws:lambda:eu-west-2:336392948345:layer:AWSSDKPandas-Python311:31"


def template(global_layers, **function_layers):
    """A template with the shared layer, ``global_layers`` and functions with their own layers."""
    resources = {"SharedLayer": {"Type": "AWS::Serverless::LayerVersion",
                                 "Properties": {"ContentUri": "SharedLayer"}}}
    for logical_id, layers in function_layers.items():
        properties = {"CodeUri": logical_id} | ({} if layers is None else {"Layers": layers})
        resources[logical_id] = {"Type": "AWS::Serverless::Function", "Properties": properties}
    function_globals = {} if global_layers is None else {"Layers": global_layers}
    return {"Globals": {"Function": function_globals}, "Resources": resources}


@pytest.mark.parametrize("managed", [
    {"Ref": "PandasLayerArn"},
    {"Fn::FindInMap": ["PandasLayer", {"Ref": "AWS::Region"}, "Arn"]},
    {"Fn::If": ["HasPandasLayerArn", {"Ref": "PandasLayerArn"},
                {"Fn::FindInMap": ["x", "y", "z"]}]},
    MANAGED_ARN,
])
def test_any_layer_not_the_templates_own_becomes_the_stand_in_in_its_place(managed):
    source = template([SHARED], Transform=[managed], Ingest=None)
    assert sam_local.local_layers(source, "Transform") == [SHARED, STAND_IN]
    assert sam_local.local_layers(source, "Ingest") == [SHARED]


def test_the_order_is_the_templates_globals_first_then_the_functions_own():
    pandas_last = template([SHARED], Transform=[{"Ref": "PandasLayerArn"}])
    shared_last = template(None, Transform=[{"Ref": "PandasLayerArn"}, SHARED])
    assert sam_local.local_layers(pandas_last, "Transform") == [SHARED, STAND_IN]
    assert sam_local.local_layers(shared_last, "Transform") == [STAND_IN, SHARED]


def test_two_managed_layers_become_one_stand_in():
    source = template([{"Ref": "PandasLayerArn"}], Load=[MANAGED_ARN, SHARED])
    assert sam_local.local_layers(source, "Load") == [STAND_IN, SHARED]


def test_the_overlay_gives_each_function_its_resolved_layers_and_the_stand_in_its_folder(
        tmp_path):
    source = template([SHARED], Transform=[{"Ref": "PandasLayerArn"}], Ingest=None)
    result = sam_local.overlay(source, tmp_path / "layer")
    assert "Layers" not in result["Globals"]["Function"]
    assert result["Resources"]["Transform"]["Properties"]["Layers"] == [SHARED, STAND_IN]
    assert result["Resources"]["Ingest"]["Properties"]["Layers"] == [SHARED]
    stand_in = result["Resources"][sam_local.PANDAS_STAND_IN]
    assert stand_in["Type"] == "AWS::Serverless::LayerVersion"
    assert stand_in["Properties"]["ContentUri"] == str((tmp_path / "layer").resolve())
    assert set(sam_local.SDK_VARIABLES) <= set(result["Globals"]["Function"]["Environment"]
                                               ["Variables"])
    assert source["Globals"]["Function"]["Layers"] == [SHARED]  # the input is left alone


def test_the_real_template_keeps_its_layer_order_in_the_overlay(tmp_path):
    real = cfn.load()
    result = sam_local.overlay(real, tmp_path)
    for logical_id in sam_local.FUNCTIONS.values():
        layers = result["Resources"][logical_id]["Properties"]["Layers"]
        assert layers == sam_local.local_layers(real, logical_id)
        assert SHARED in layers


def response(**body):
    """Return SAM's output for one invocation: logs, then the handler's response, last."""
    return "START RequestId: 1\n" + json.dumps(body) + "\n"


def test_a_handler_error_response_is_a_failure_although_sam_exits_zero():
    stdout = response(errorMessage="Could not connect", errorType="EndpointConnectionError")
    assert sam_local.failure("ingest", 0, stdout) == (
        "the handler failed: EndpointConnectionError: Could not connect")


def test_a_sam_exit_status_or_a_missing_response_is_a_failure():
    assert sam_local.failure("load", 1, response(manifests_loaded=1)) == (
        "sam local invoke exited with status 1")
    assert sam_local.failure("load", 0, "") == "no JSON response from the function"
    assert sam_local.failure("load", 0, "not json\n") == "no JSON response from the function"


def test_an_audit_that_finds_differences_is_a_failure_and_a_clean_one_is_not():
    assert sam_local.failure("audit", 0, response(ok=False)) == (
        "the audit found the warehouse different from the source")
    assert sam_local.failure("audit", 0, response(ok=True)) is None
    assert sam_local.failure("ingest", 0, response(total_rows=3)) is None


def test_the_stack_listens_on_each_address_given_and_the_commands_reach_sam(tmp_path):
    ports = sam_local.Ports(moto=1, postgres=2)
    command = sam_local.stack_command(["127.0.0.1", "172.17.0.1"], ports, ["--scale", "0.1"])
    assert command[command.index("local-stack") + 1:] == [
        "--bind", "127.0.0.1", "--bind", "172.17.0.1", "--moto-port", "1",
        "--postgres-port", "2", "--scale", "0.1"]
    invoke = sam_local.sam_command("load", tmp_path / "t.yaml", tmp_path / "e.json",
                                   tmp_path / "ev.json", ["--debug"])
    assert invoke[1:4] == ["local", "invoke", "LoadFunction"]
    assert "--skip-pull-image" in invoke
    assert invoke[invoke.index("--add-host") + 1] == "host.docker.internal:host-gateway"
    assert invoke[-1] == "--debug"


def test_loopback_always_and_the_bridge_only_when_it_is_an_address_of_this_machine(monkeypatch):
    monkeypatch.setattr(local_stack, "bridge_address", lambda: None)
    assert local_stack.bind_addresses() == ["127.0.0.1"]
    monkeypatch.setattr(local_stack, "bridge_address", lambda: "172.17.0.1")
    assert local_stack.bind_addresses() == ["127.0.0.1", "172.17.0.1"]


def test_an_address_of_no_interface_here_cannot_be_bound():
    assert local_stack.can_bind("127.0.0.1")
    assert not local_stack.can_bind("203.0.113.7")  # TEST-NET-3, documentation only
    assert local_stack.interface_address("lo") == "127.0.0.1"
    assert local_stack.interface_address("no-such-interface") is None
