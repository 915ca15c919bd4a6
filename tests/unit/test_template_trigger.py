"""The S3 trigger of transform: only the ingestion bucket's manifests may invoke it.

SAM's own S3 event would generate an invoke permission with ``SourceAccount`` and
no ``SourceArn``, letting any bucket of the account invoke transform. The template
writes the notification and the permission itself; these tests check the
SAM-translated template (what CloudFormation receives) and evaluate the name
expressions for a concrete stack id, so "the same bucket" is checked by value.
"""
import re
from typing import Any

from test_template import RESOURCES, TRANSLATED, resources_of

STACK = {"AWS::StackId": "arn:aws:cloudformation:eu-west-2:123456789012:stack/totes-pipeline/"
                         "4c1f3a20-6b9e-11ef-9d7a-0a1b2c3d4e5f",
         "AWS::Partition": "aws", "AWS::AccountId": "123456789012", "AWS::Region": "eu-west-2"}
FUNCTION_ARNS = {"TransformFunction":
                 "arn:aws:lambda:eu-west-2:123456789012:function:totes-transform"}


def evaluate(value: Any, names: dict[str, str] = STACK) -> Any:
    """Resolve the intrinsic functions the ARNs and names use, for one concrete stack."""
    if isinstance(value, list):
        return [evaluate(item, names) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"}:
        return names[value["Ref"]]
    if set(value) == {"Fn::GetAtt"}:
        resource, attribute = value["Fn::GetAtt"]
        assert attribute == "Arn", value
        return FUNCTION_ARNS[resource]
    if set(value) == {"Fn::Select"}:
        index, items = value["Fn::Select"]
        return evaluate(items, names)[index]
    if set(value) == {"Fn::Split"}:
        separator, text = value["Fn::Split"]
        return evaluate(text, names).split(separator)
    if set(value) == {"Fn::Sub"}:
        text, local = (value["Fn::Sub"], {}) if isinstance(value["Fn::Sub"], str) \
            else value["Fn::Sub"]
        scope = {**names, **{key: evaluate(inner, names) for key, inner in local.items()}}
        return re.sub(r"\$\{([^}]+)\}", lambda match: scope[match[1]], text)
    return {key: evaluate(inner, names) for key, inner in value.items()}


def s3_permissions() -> dict[str, dict[str, Any]]:
    """Every Lambda permission granted to the S3 service, by logical id."""
    return {name: body["Properties"]
            for name, body in resources_of("AWS::Lambda::Permission", TRANSLATED).items()
            if body["Properties"]["Principal"] == "s3.amazonaws.com"}


def ingest_bucket_arn() -> str:
    """The ingestion bucket's ARN for the concrete stack."""
    return f"arn:aws:s3:::{evaluate(TRANSLATED['IngestBucket']['Properties']['BucketName'])}"


def test_the_only_s3_invoke_permission_is_for_the_ingestion_bucket_of_this_account():
    (permission,) = s3_permissions().values()
    assert evaluate(permission["FunctionName"]) == FUNCTION_ARNS["TransformFunction"]
    assert permission["Action"] == "lambda:InvokeFunction"
    assert evaluate(permission["SourceArn"]) == ingest_bucket_arn()
    assert ingest_bucket_arn() == "arn:aws:s3:::totes-ingest-0a1b2c3d4e5f"
    assert evaluate(permission["SourceAccount"]) == STACK["AWS::AccountId"]


def test_no_function_declares_a_sam_s3_event_which_would_drop_the_source_arn():
    for name, function in resources_of("AWS::Serverless::Function").items():
        events = function["Properties"].get("Events", {}).values()
        assert all(event["Type"] != "S3" for event in events), name


def test_the_ingestion_bucket_notifies_transform_of_new_manifests_only():
    bucket = TRANSLATED["IngestBucket"]
    (notification,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert evaluate(notification["Function"]) == FUNCTION_ARNS["TransformFunction"]
    assert notification["Event"] == "s3:ObjectCreated:*"
    rules = {rule["Name"]: rule["Value"] for rule in notification["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": "_manifests/", "suffix": ".json"}
    # S3 tests the destination when the notification is created: the permission comes first.
    (permission,) = s3_permissions()
    depends_on = bucket["DependsOn"]
    assert permission in (depends_on if isinstance(depends_on, list) else [depends_on])


def test_transform_is_told_the_same_bucket_its_permission_admits():
    variables = RESOURCES["TransformFunction"]["Properties"]["Environment"]["Variables"]
    (permission,) = s3_permissions().values()
    told = evaluate(variables["INGEST_BUCKET"])
    assert evaluate(permission["SourceArn"]) == f"arn:aws:s3:::{told}"
