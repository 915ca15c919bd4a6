"""template.yaml's roles resolve to concrete policies for a stack; calls map to IAM requests.

The least-privilege end-to-end test gives principals exactly these documents and
evaluates the handlers' calls as these requests, so both must be what AWS would see.
"""
import pytest

from totes_local import iam, pandas_layer
from totes_local.iam_policy import Request, as_list, evaluate

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
TOTESYS = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:totes/totesys-AbCdEf"
WAREHOUSE = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:totes/warehouse-GhIjKl"
STACK = iam.Stack(name="totes-pipeline", uuid=UUID,
                  parameters={"TotesysSecretArn": TOTESYS, "WarehouseSecretArn": WAREHOUSE})
TEMPLATE = iam.StackTemplate(STACK)
INGEST_BUCKET = "arn:aws:s3:::totes-ingest-a5b4c3d2e1f0"
PROCESSED_BUCKET = "arn:aws:s3:::totes-pipeline-processedbucket-a5b4c3d2e1f0"


def statement(role: str, sid: str) -> dict:
    """One statement of a role's inline policy, resolved."""
    (document,) = TEMPLATE.role_policies(role).values()
    return next(found for found in document["Statement"] if found["Sid"] == sid)


def test_the_ingestion_bucket_is_named_from_the_stack_id_as_the_bucket_spells_it():
    assert STACK.stack_id == (
        f"arn:aws:cloudformation:eu-west-2:123456789012:stack/totes-pipeline/{UUID}")
    assert TEMPLATE.physical_name("IngestBucket") == "totes-ingest-a5b4c3d2e1f0"
    # transform's role spells the name itself (a GetAtt would be a cycle): same bucket
    assert statement("TransformRole", "ReadExtracts")["Resource"] == f"{INGEST_BUCKET}/*"
    assert statement("IngestRole", "WriteExtractsAndManifests")["Resource"] == (
        f"{INGEST_BUCKET}/*")


def test_references_resolve_to_arns_names_and_parameter_values():
    assert statement("IngestRole", "TotesysSecret")["Resource"] == TOTESYS
    assert statement("AuditRole", "BothSecrets")["Resource"] == [TOTESYS, WAREHOUSE]
    assert statement("LoadRole", "ListProcessed")["Resource"] == PROCESSED_BUCKET
    assert statement("IngestRole", "OwnLogGroup")["Resource"] == (
        "arn:aws:logs:eu-west-2:123456789012:log-group:/aws/lambda/totes-pipeline/ingest:*")
    assert statement("TransformRole", "FailedEventsToQueue")["Resource"] == (
        "arn:aws:sqs:eu-west-2:123456789012:totes-pipeline-TransformFailureQueue-a5b4c3d2e1f0")


def test_a_physical_name_the_stack_gives_is_used_for_a_resource_the_template_leaves_unnamed():
    named = iam.StackTemplate(iam.Stack(
        name="s", uuid=UUID, parameters=STACK.parameters,
        physical_names={"ProcessedBucket": "my-processed"}))
    assert named.get_att("ProcessedBucket", "Arn") == "arn:aws:s3:::my-processed"
    assert named.ref("ProcessedBucket") == "my-processed"


def test_the_vpc_policy_is_attached_only_when_the_stack_has_subnets():
    assert list(TEMPLATE.role_policies("IngestRole")) == ["ingest"]
    with_vpc = iam.StackTemplate(iam.Stack(name="s", uuid=UUID, parameters={
        **STACK.parameters, "SubnetIds": "subnet-1,subnet-2", "SecurityGroupIds": "sg-1"}))
    policies = with_vpc.role_policies("IngestRole")
    assert list(policies) == ["ingest", "FunctionVpcPolicy"]
    assert policies["FunctionVpcPolicy"]["Statement"][0]["Resource"] == "*"


def test_a_managed_policy_the_template_does_not_define_is_refused():
    template = TEMPLATE.template
    role = template["Resources"]["IngestRole"]
    changed = {**template, "Resources": {**template["Resources"], "IngestRole": {
        **role, "Properties": {**role["Properties"], "ManagedPolicyArns": [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]}}}}
    with pytest.raises(ValueError, match="does not define"):
        iam.StackTemplate(STACK, changed).role_policies("IngestRole")


def test_a_required_parameter_must_be_given_and_an_unknown_one_is_refused():
    with pytest.raises(ValueError, match="TotesysSecretArn"):
        iam.StackTemplate(iam.Stack(name="s", uuid=UUID)).role_policies("IngestRole")
    with pytest.raises(ValueError, match="NoSuchParameter"):
        iam.StackTemplate(iam.Stack(name="s", uuid=UUID, parameters={"NoSuchParameter": "x"}))


def test_a_function_gets_the_globals_environment_and_its_own():
    environment = TEMPLATE.function_environment("LoadFunction")
    assert environment == {
        "POWERTOOLS_SERVICE_NAME": "totes",
        "POWERTOOLS_METRICS_NAMESPACE": "TotesPipeline/totes-pipeline",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "INGEST_BUCKET": "totes-ingest-a5b4c3d2e1f0",
        "PROCESSED_BUCKET": "totes-pipeline-processedbucket-a5b4c3d2e1f0",
        "WAREHOUSE_SECRET_ID": WAREHOUSE,
        # where the warehouse is, beside the secret: empty parameters leave it to the secret
        "WAREHOUSE_HOST": "", "WAREHOUSE_PORT": "", "WAREHOUSE_DBNAME": "",
    }
    assert TEMPLATE.function_role("LoadFunction") == "LoadRole"


def test_bucket_policies_are_keyed_by_the_bucket_they_protect():
    policies = TEMPLATE.bucket_policies()
    assert set(policies) == {"totes-ingest-a5b4c3d2e1f0",
                             "totes-pipeline-processedbucket-a5b4c3d2e1f0",
                             "totes-pipeline-lakebucket-a5b4c3d2e1f0",
                             "totes-pipeline-athenaresultsbucket-a5b4c3d2e1f0"}
    for bucket, document in policies.items():
        resources = [resource for found in document["Statement"]
                     for resource in as_list(found.get("Resource", found.get("NotResource")))]
        assert f"arn:aws:s3:::{bucket}/*" in resources


@pytest.mark.parametrize("node, value", [
    ({"Fn::Join": ["-", ["a", {"Ref": "AWS::Region"}]]}, "a-eu-west-2"),
    ({"Fn::Select": [1, {"Fn::Split": [",", "x,y,z"]}]}, "y"),
    ({"Fn::Sub": "${AWS::AccountId}:${!Literal}"}, "123456789012:${Literal}"),
    ({"Fn::Sub": ["${A}/${IngestBucket.Arn}", {"A": {"Ref": "AWS::Partition"}}]},
     f"aws/{INGEST_BUCKET}"),
    ({"Fn::If": ["HasVpc", "vpc", "none"]}, "none"),
    ({"Fn::And": [{"Condition": "HasObjectLock"}, True]}, True),
    ({"Fn::And": [{"Condition": "HasVpc"}, True]}, False),
    ({"Fn::Or": [{"Fn::Equals": [{"Ref": "LogRetentionDays"}, 90]}, False]}, True),
    ({"Fn::GetAtt": "TransformFailureQueue.QueueName"},
     "totes-pipeline-TransformFailureQueue-a5b4c3d2e1f0"),
    (["kept", {"Ref": "AWS::NoValue"}], ["kept"]),
    ({"Kept": 1, "Gone": {"Ref": "AWS::NoValue"}}, {"Kept": 1}),
])
def test_intrinsic_functions_resolve_as_cloudformation_does(node, value):
    assert TEMPLATE.value(node) == value


@pytest.mark.parametrize("node", [{"Fn::GetAZs": ""}, {"Fn::GetAtt": ["IngestBucket", "Nope"]}])
def test_an_intrinsic_it_does_not_model_is_refused(node):
    with pytest.raises(ValueError):
        TEMPLATE.value(node)


# ---------------------------------------------------------------------- calls -> requests

SECURE = {"aws:SecureTransport": "true"}


@pytest.mark.parametrize("service, operation, params, requests", [
    ("s3", "PutObject", {"Bucket": "b", "Key": "t/k", "IfNoneMatch": "*"},
     [Request("s3:PutObject", "arn:aws:s3:::b/t/k", {**SECURE, "s3:if-none-match": "*"})]),
    ("s3", "PutObject", {"Bucket": "b", "Key": "k"},
     [Request("s3:PutObject", "arn:aws:s3:::b/k", SECURE)]),
    ("s3", "GetObject", {"Bucket": "b", "Key": "k"},
     [Request("s3:GetObject", "arn:aws:s3:::b/k", SECURE)]),
    ("s3", "HeadObject", {"Bucket": "b", "Key": "k"},
     [Request("s3:GetObject", "arn:aws:s3:::b/k", SECURE)]),
    ("s3", "ListObjectsV2", {"Bucket": "b", "Prefix": "_manifests/", "Delimiter": "/"},
     [Request("s3:ListBucket", "arn:aws:s3:::b",
              {**SECURE, "s3:prefix": "_manifests/", "s3:delimiter": "/"})]),
    ("s3", "HeadBucket", {"Bucket": "b"}, [Request("s3:ListBucket", "arn:aws:s3:::b", SECURE)]),
    ("s3", "DeleteObject", {"Bucket": "b", "Key": "k"},
     [Request("s3:DeleteObject", "arn:aws:s3:::b/k", SECURE)]),
    ("s3", "DeleteObjects", {"Bucket": "b", "Delete": {"Objects": [{"Key": "x"}, {"Key": "y"}]}},
     [Request("s3:DeleteObject", f"arn:aws:s3:::b/{key}", SECURE) for key in "xy"]),
    ("secretsmanager", "GetSecretValue", {"SecretId": TOTESYS},
     [Request("secretsmanager:GetSecretValue", TOTESYS, SECURE)]),
    ("sqs", "SendMessage", {"QueueUrl": "https://sqs.eu-west-2.amazonaws.com/123456789012/q",
                            "MessageBody": "{}"},
     [Request("sqs:SendMessage", "arn:aws:sqs:eu-west-2:123456789012:q", SECURE)]),
    ("logs", "PutLogEvents", {"logGroupName": "/g", "logStreamName": "s"},
     [Request("logs:PutLogEvents",
              "arn:aws:logs:eu-west-2:123456789012:log-group:/g:log-stream:s", SECURE)]),
])
def test_a_call_maps_to_the_iam_requests_aws_authorises_it_as(service, operation, params,
                                                              requests):
    assert iam.requests_for_call(service, operation, params, stack=STACK) == requests


@pytest.mark.parametrize("service, operation, params", [
    ("s3", "CopyObject", {"Bucket": "b", "Key": "k"}),
    ("secretsmanager", "PutSecretValue", {"SecretId": TOTESYS}),
    ("secretsmanager", "GetSecretValue", {"SecretId": "totes/totesys"}),
    ("sts", "GetCallerIdentity", {}),
])
def test_a_call_without_a_mapping_is_refused_so_a_new_kind_of_call_fails_the_checks(
        service, operation, params):
    with pytest.raises(ValueError):
        iam.requests_for_call(service, operation, params, stack=STACK)


def test_a_log_stream_of_the_functions_own_group_is_allowed_and_another_groups_is_not():
    policies = TEMPLATE.role_policies("IngestRole")
    own, other = (
        iam.requests_for_call("logs", "CreateLogStream",
                              {"logGroupName": f"/aws/lambda/totes-pipeline/{name}",
                               "logStreamName": "2026/11/27/[$LATEST]abc"}, stack=STACK)[0]
        for name in ("ingest", "load"))
    assert evaluate(own, policies).allowed
    assert not evaluate(other, policies).allowed


def test_a_pandas_function_resolves_the_regions_published_layer_unless_the_parameter_is_set():
    layers = TEMPLATE.properties("TransformFunction")["Layers"]
    assert layers[0] == "{{resolve:ssm:" + pandas_layer.RELEASE.parameter("eu-west-2") + "}}"
    given = "arn:aws:lambda:eu-west-2:123456789012:layer:mine:1"
    overridden = iam.StackTemplate(iam.Stack(
        name="totes-pipeline", uuid=UUID, parameters={**STACK.parameters,
                                                      "PandasLayerArn": given}))
    assert overridden.properties("LoadFunction")["Layers"][0] == given
