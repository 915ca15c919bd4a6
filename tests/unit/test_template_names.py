"""Every name the template chooses fits AWS's limits for any stack name; no two stacks share one.

CloudFormation accepts a stack name of up to 128 characters, upper case included, and a
resource whose name the template spells from it (a log group, the dashboard, the Athena
workgroup) fails only when AWS creates it: half way through the first deployment, after
the kept buckets exist (they stay when the stack rolls back). The names CloudFormation
generates itself (functions, roles, queues, schedules, alarms, the processed bucket) it
shortens to fit; so the template must leave those unnamed. Checked on the SAM-translated
template, with the longest stack and region names, and for two stacks in one account.
"""
import re
from typing import Any

import pytest

from test_template import TRANSLATED

#: the longest stack name the template takes: CloudFormation accepts 128 characters
#: ([a-zA-Z][-a-zA-Z0-9]*), the Athena workgroup's 128 take ``-lake`` after it (deploy.md).
LONGEST_STACK = "T" + "otes-Pipeline-" * 8 + "x" * 10
#: a region name as long as any (ap-southeast-5, eusc-de-east-1: 14 characters).
LONGEST_REGION = "ap-southeast-5"
STACK_ID = "arn:aws:cloudformation:{region}:123456789012:stack/{stack}/{uuid}"

#: resource type -> (path to the name, most characters, what AWS allows), from each service's
#: API reference.
LIMITS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "AWS::S3::Bucket": (("BucketName",), 63, r"[a-z0-9][a-z0-9.-]*[a-z0-9]"),
    "AWS::Logs::LogGroup": (("LogGroupName",), 512, r"[.\-_/#A-Za-z0-9]+"),
    "AWS::CloudWatch::Dashboard": (("DashboardName",), 255, r"[A-Za-z0-9_-]+"),
    "AWS::Athena::WorkGroup": (("Name",), 128, r"[a-zA-Z0-9._-]+"),
    "AWS::Athena::NamedQuery": (("Name",), 128, r".+"),
    # Athena reads Glue names in lower case only.
    "AWS::Glue::Database": (("DatabaseInput", "Name"), 255, r"[a-z0-9_]+"),
    "AWS::Lambda::LayerVersion": (("LayerName",), 140, r"[a-zA-Z0-9_-]+"),
    "AWS::CloudWatch::Alarm": (("Namespace",), 255, r"[^:].*"),
    "AWS::Logs::MetricFilter": (("MetricTransformations", "0", "MetricNamespace"), 255,
                                r"[^:].*"),
}
#: the name properties of the types whose names CloudFormation generates within AWS's limits.
GENERATED = {"AWS::Lambda::Function": "FunctionName", "AWS::IAM::Role": "RoleName",
             "AWS::SQS::Queue": "QueueName", "AWS::Scheduler::Schedule": "Name",
             "AWS::CloudWatch::Alarm": "AlarmName", "AWS::SNS::Topic": "TopicName",
             "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
             "AWS::Logs::MetricFilter": "FilterName"}


def resolve(value: Any, stack: str, region: str, uuid: str) -> Any:
    """A name as CloudFormation resolves it, for a stack called ``stack`` in ``region``."""
    pseudo = {"AWS::StackName": stack, "AWS::Region": region, "AWS::AccountId": "123456789012",
              "AWS::StackId": STACK_ID.format(region=region, stack=stack, uuid=uuid)}
    if isinstance(value, dict):
        ((function, argument),) = value.items()
        if function == "Ref":
            return pseudo[argument]
        if function == "Fn::Sub":
            text, local = (argument, {}) if isinstance(argument, str) else argument
            known = {**pseudo, **{name: resolve(inner, stack, region, uuid)
                                  for name, inner in local.items()}}
            return re.sub(r"\$\{([^}]+)\}", lambda match: known[match[1]], text)
        if function == "Fn::Select":
            index, items = argument
            return resolve(items, stack, region, uuid)[int(index)]
        if function == "Fn::Split":
            separator, text = argument
            return resolve(text, stack, region, uuid).split(separator)
        raise AssertionError(f"a name built with {function}: resolve it here")
    return value


def chosen_names(stack: str, region: str = "eu-west-2",
                 uuid: str = "1b2c3d4e-5f60-11f0-8a9b-0a1b2c3d4e5f") -> list[tuple[str, str, str]]:
    """(logical id, resource type, name) of every name the template spells for that stack."""
    found = []
    for name, body in TRANSLATED.items():
        if body["Type"] not in LIMITS:
            continue
        value: Any = body.get("Properties", {})
        for step in LIMITS[body["Type"]][0]:
            value = value[int(step)] if isinstance(value, list) else value.get(step)
            if value is None:
                break
        if value is not None:
            found.append((name, body["Type"], resolve(value, stack, region, uuid)))
    return found


def test_the_names_are_found_for_every_kind_the_template_names():
    kinds = {kind for _, kind, _ in chosen_names("totes-pipeline")}
    assert kinds == set(LIMITS)


@pytest.mark.parametrize("stack", ["a", "primary", "totes-pipeline", "Totes-Trial", LONGEST_STACK])
def test_every_name_the_template_chooses_fits_aws_limits_for_any_stack_name(stack):
    assert len(LONGEST_STACK) == 123 and re.fullmatch(r"[a-zA-Z][-a-zA-Z0-9]*", LONGEST_STACK)
    too_long = []
    for name, kind, chosen in chosen_names(stack, LONGEST_REGION):
        _, most, allowed = LIMITS[kind]
        if len(chosen) > most or not re.fullmatch(allowed, chosen):
            too_long.append((name, chosen, len(chosen), most))
    assert not too_long


def test_nothing_cloudformation_names_within_its_limits_is_named_by_the_template():
    named = [(name, body["Type"]) for name, body in TRANSLATED.items()
             if GENERATED.get(body["Type"]) in body.get("Properties", {})]
    assert not named


def test_two_stacks_in_one_account_and_region_choose_no_name_alike():
    # A saved query's name is the question it answers (Athena lets names repeat); AWS/Lambda
    # and AWS/SQS are AWS's own namespaces, the alarms telling stacks apart by dimension.
    first = {chosen for _, kind, chosen in chosen_names("totes-pipeline")
             if kind != "AWS::Athena::NamedQuery" and not chosen.startswith("AWS/")}
    second = {chosen for _, _, chosen in chosen_names(
        "totes-trial", uuid="9f8e7d6c-5b4a-11f0-9c8d-0e1f2a3b4c5d")}
    assert not first & second


def test_a_stack_one_character_longer_than_the_docs_allow_overruns_the_workgroup():
    # The limit deploy.md states is the real one: a 124-character stack name breaks the workgroup.
    names = {kind: chosen for _, kind, chosen in chosen_names(LONGEST_STACK + "y", LONGEST_REGION)}
    assert len(names["AWS::Athena::WorkGroup"]) == 129


def test_no_stack_name_chooses_a_workgroup_athena_has_already():
    # Every account has Athena's own "primary" workgroup; CloudFormation accepts it as a stack name.
    assert {chosen for _, kind, chosen in chosen_names("primary")
            if kind == "AWS::Athena::WorkGroup"} == {"primary-lake"}
