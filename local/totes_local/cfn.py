"""The CloudFormation that SAM would deploy, from template.yaml, without an AWS account.

The security scan (``make scan``) and the template tests check this translated
template rather than the SAM source, so the resources SAM generates (the
schedules' roles, invoke permissions, event invoke configs) are checked too.
Code locations are faked as S3 URIs, as ``sam validate`` does: nothing is built.
"""
import argparse
import copy
import json
from pathlib import Path
from typing import Any, Mapping

import boto3
from cfnlint.decode import cfn_yaml
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """Read a SAM template (short-form intrinsics included) as plain JSON data."""
    return json.loads(json.dumps(cfn_yaml.load(str(path))))


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """Translate a SAM template to CloudFormation, with fake S3 code locations."""
    template = copy.deepcopy(template)
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in properties:
                properties[key] = f"s3://bucket/{properties[key]}"
    translator = Translator({}, Parser(), boto_session=boto3.Session(region_name="eu-west-2"))
    return translator.translate(template, parameter_values={})


def _rule_value(node: Any, values: Mapping[str, Any]) -> Any:
    """Evaluate one expression of a template's ``Rules`` section, as CloudFormation would."""
    if not isinstance(node, dict):
        return [_rule_value(item, values) for item in node] if isinstance(node, list) else node
    (function, argument), = node.items()
    if function == "Ref":
        return values[argument]
    arguments = [_rule_value(item, values) for item in argument]
    if function == "Fn::Not":
        return not arguments[0]
    if function == "Fn::And":
        return all(arguments)
    if function == "Fn::Or":
        return any(arguments)
    if function == "Fn::Equals":
        return arguments[0] == arguments[1]
    if function == "Fn::Contains":
        return arguments[1] in arguments[0]
    if function == "Fn::EachMemberEquals":
        return all(member == arguments[1] for member in arguments[0])
    raise ValueError(f"rule function {function} is not evaluated here")


def rule_failures(template: Mapping[str, Any], parameters: Mapping[str, str],
                  region: str = "eu-west-2") -> list[str]:
    """The ``AssertDescription`` of every rule assertion that refuses these parameter values.

    CloudFormation checks ``Rules`` before it creates or changes anything; this runs the
    same check without an account. Parameters not given take their defaults, and a
    ``CommaDelimitedList`` is split on commas (so an empty one is ``[""]``, as in AWS).
    """
    values: dict[str, Any] = {"AWS::Region": region}
    for name, parameter in template.get("Parameters", {}).items():
        value = parameters.get(name, parameter.get("Default"))
        values[name] = (str(value).split(",") if parameter["Type"] == "CommaDelimitedList"
                        else value)
    failures = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not _rule_value(rule["RuleCondition"], values):
            continue
        failures += [" ".join(assertion["AssertDescription"].split())
                     for assertion in rule["Assertions"]
                     if not _rule_value(assertion["Assert"], values)]
    return failures


def main(argv: list[str] | None = None) -> None:
    """Write the translated template as JSON (``python -m totes_local.cfn OUT``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the CloudFormation JSON")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(translate(load(args.template)), indent=1) + "\n")


if __name__ == "__main__":  # pragma: no cover - exercised through make scan
    main()
