"""Immutability enforced by AWS: the buckets' policies, Object Lock and the supersede prefix.

The pipeline only ever creates objects (tests/unit/test_storage.py pins what its one
writer sends). These tests check that S3 itself refuses everything else, to every
principal: an overwrite, a delete, an Object Lock override, a change of versioning,
lifecycle, Object Lock or the policy. Only the optional break-glass role is exempt,
and no role of the pipeline may write a supersede marker (an operator's decision).
"""
import json
import re
from fnmatch import fnmatchcase
from typing import Any

import pytest

from totes_local import iam
from totes_local.iam_policy import Request, evaluate
from test_template import (BUCKETS, PARAMETERS, RESOURCES, ROLES, TEMPLATE, TRANSLATED,
                           allow_statements, as_list, assert_optional_arn, branches,
                           policy_documents, resources_of, role_statements)

#: What the bucket policies refuse to everyone but the break-glass role, and why.
PROTECTED_ACTIONS = {
    "s3:DeleteObject": "hides an object behind a delete marker, which Object Lock allows",
    "s3:DeleteObjectVersion": "removes a version for good (once retention ends, or bypassed)",
    "s3:BypassGovernanceRetention": "is the governance-mode override itself",
    "s3:PutObjectRetention": "with the bypass, shortens or removes an object's retention",
    "s3:PutObjectLegalHold": "lifts a legal hold",
    "s3:PutBucketVersioning": "suspends versioning, after which deletes are final",
    "s3:PutLifecycleConfiguration": "an expiration rule deletes objects, bucket policy or not",
    "s3:PutBucketObjectLockConfiguration": "shortens or removes the default retention",
    "s3:PutBucketPolicy": "would rewrite these denies",
    "s3:DeleteBucketPolicy": "would remove these denies",
    "s3:DeleteBucket": "ends the bucket (possible only once it is empty)",
}
#: what a replication rule of another bucket does in this one, refused to every principal.
REPLICATION_ACTIONS = ["s3:ReplicateDelete", "s3:ReplicateObject", "s3:ReplicateTags"]
#: every bucket whose objects are written once and kept: the pipeline's two and the lake.
IMMUTABLE = (*BUCKETS, "LakeBucket")
NO_VALUE = {"Ref": "AWS::NoValue"}
#: concrete names for the evaluator below (any distinct values do).
PROCESSED_ARN = "arn:aws:s3:::processed"
SUPERSEDE_MARKER = f"{PROCESSED_ARN}/_supersede/2024/01/02/marker.json"
REVISED_MANIFEST = f"{PROCESSED_ARN}/_revisions/0001/_manifests/2024/01/02/m.json"
STAR_OBJECT = f"{PROCESSED_ARN}/fact_sales_order/2024/01/02/part.parquet"


def statements(bucket: str) -> dict[str, dict[str, Any]]:
    """The statements of a bucket's policy, by Sid."""
    (policy,) = [body["Properties"] for body in resources_of("AWS::S3::BucketPolicy").values()
                 if body["Properties"]["Bucket"] == {"Ref": bucket}]
    return {statement["Sid"]: statement for statement in policy["PolicyDocument"]["Statement"]}


def resolve_conditions(value: Any, true: set[str]) -> Any:
    """A template value with each Fn::If decided (``true`` names the conditions that hold)."""
    if isinstance(value, dict) and "Fn::If" in value:
        condition, yes, no = value["Fn::If"]
        return resolve_conditions(yes if condition in true else no, true)
    if isinstance(value, dict):
        resolved = {key: resolve_conditions(inner, true) for key, inner in value.items()}
        return {key: inner for key, inner in resolved.items() if inner != NO_VALUE}
    if isinstance(value, list):
        return [resolve_conditions(inner, true) for inner in value]
    return value


# ---------------------------------------------------------------- parameters and Object Lock


def test_object_lock_is_on_by_default_and_zero_days_turns_it_off():
    parameter = PARAMETERS["ObjectLockRetentionDays"]
    assert parameter["Default"] == 30 and parameter["MinValue"] == 0
    assert TEMPLATE["Conditions"]["HasObjectLock"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ObjectLockRetentionDays"}, 0]}]}


@pytest.mark.parametrize("bucket", IMMUTABLE)
def test_every_kept_bucket_locks_new_versions_in_governance_mode_for_the_retention_days(bucket):
    properties = RESOURCES[bucket]["Properties"]
    assert properties["ObjectLockEnabled"] == {"Fn::If": ["HasObjectLock", True, NO_VALUE]}
    assert properties["ObjectLockConfiguration"] == {"Fn::If": ["HasObjectLock", {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE",
                                      "Days": {"Ref": "ObjectLockRetentionDays"}}}},
        NO_VALUE]}
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}  # Object Lock needs it


def test_the_break_glass_role_is_optional_and_must_be_a_role_arn():
    assert_optional_arn(
        "BreakGlassRoleArn", "HasBreakGlassRole",
        accepted=("arn:aws:iam::123456789012:role/totes-break-glass",
                  "arn:aws:iam::123456789012:role/ops/totes-break-glass"),
        refused=("totes-break-glass", "arn:aws:iam::123456789012:user/alice",
                 "arn:aws:iam::123456789012:root",
                 "arn:aws:sts::123456789012:assumed-role/totes-break-glass/alice"))


# ---------------------------------------------------------------- bucket policies


@pytest.mark.parametrize("bucket", IMMUTABLE)
def test_a_put_without_if_none_match_is_refused_to_everyone(bucket):
    deny = statements(bucket)["DenyWritesWithoutIfNoneMatch"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Action"] == "s3:PutObject"
    assert deny["Resource"] == {"Fn::Sub": f"${{{bucket}.Arn}}/*"}
    # "Null": true matches a request that lacks the key: one without the If-None-Match header.
    assert deny["Condition"] == {"Null": {"s3:if-none-match": "true"}}


@pytest.mark.parametrize("bucket", IMMUTABLE)
def test_replication_into_a_kept_bucket_is_refused_to_everyone(bucket):
    # A replication rule on another bucket writes here with these actions, not s3:PutObject or
    # s3:DeleteObject: new versions of existing keys, new manifests, delete markers.
    deny = statements(bucket)["DenyReplicationIn"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and "Condition" not in deny
    assert sorted(deny["Action"]) == REPLICATION_ACTIONS
    assert deny["Resource"] == {"Fn::Sub": f"${{{bucket}.Arn}}/*"}


@pytest.mark.parametrize("bucket", IMMUTABLE)
def test_deletes_and_protection_changes_are_refused_to_all_but_the_break_glass_role(bucket):
    deny = statements(bucket)["DenyDeletesAndProtectionChanges"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert sorted(deny["Action"]) == sorted(PROTECTED_ACTIONS)
    assert deny["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]},
                                {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]
    with_role = resolve_conditions(deny, {"HasBreakGlassRole"})
    assert with_role["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": {"Ref": "BreakGlassRoleArn"}}}
    # Without a break-glass role given, the role the stack creates is the exception: some
    # documented principal can always change the buckets (the root user only their policy).
    assert resolve_conditions(deny, set())["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["BucketAdminRole", "Arn"]}}}


@pytest.mark.parametrize("bucket", IMMUTABLE)
def test_no_deploy_path_or_service_is_exempt_from_the_denies(bucket):
    # An aws:CalledVia (or aws:ViaAWSService) exemption for CloudFormation would let anyone who
    # may deploy any stack rewrite the policy; the only exception is the break-glass role.
    keys = {key for statement in statements(bucket).values()
            for branch in branches(statement.get("Condition", {}))
            for operator in resolve_conditions(branch, {"HasBreakGlassRole"}).values()
            for key in operator}
    assert keys == {"aws:SecureTransport", "s3:if-none-match", "aws:PrincipalArn"}


#: the statements saying who may write where, which differ by bucket (tested below).
WRITERS = {"IngestBucket": {"DenyWritesButIngest"},
           "ProcessedBucket": {"DenyWritesButTransform", "DenyMarkersButOperators"},
           "LakeBucket": {"DenyWritesButPublish"}}


@pytest.mark.parametrize("bucket", IMMUTABLE[1:])
def test_every_kept_bucket_has_the_same_policy_but_for_who_may_write(bucket):
    ingest, other = (json.dumps({sid: statement for sid, statement in statements(
        name).items() if sid not in WRITERS[name]}, sort_keys=True)
        for name in (IMMUTABLE[0], bucket))
    assert ingest.replace(IMMUTABLE[0], bucket) == other
    assert set(statements(bucket)) >= WRITERS[bucket]


def test_the_bucket_policies_stay_with_the_buckets_when_the_stack_is_deleted():
    policies = resources_of("AWS::S3::BucketPolicy")
    protected = {body["Properties"]["Bucket"]["Ref"]: body for body in policies.values()}
    # Athena's query results are scratch (expired after a week) but kept too, with their
    # policy, since the bucket is never empty when the stack goes (test_lake_template.py).
    assert set(protected) == {*IMMUTABLE, "AthenaResultsBucket"}
    for bucket in protected:
        body = protected[bucket]
        assert body["DeletionPolicy"] == "Retain" == body["UpdateReplacePolicy"], bucket


def test_no_role_but_the_bucket_admin_is_granted_an_action_the_bucket_policies_deny():
    for owner, statement in allow_statements():
        if owner != "BucketAdminRole":
            assert not set(as_list(statement["Action"])) & set(PROTECTED_ACTIONS), owner


# ---------------------------------------------------------------- who can change the buckets

EVERYTHING = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
#: the refused actions that apply to objects (the others to the bucket itself).
OBJECT_ACTIONS = {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
                  "s3:PutObjectRetention", "s3:PutObjectLegalHold"}
GIVEN_ROLE = "arn:aws:iam::123456789012:role/ops/totes-break-glass"
ADMIN = "arn:aws:iam::123456789012:role/Administrator"
STACK_SECRETS = {
    "TotesysSecretArn": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:t-AbCdEf",
    "WarehouseSecretArn": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:w-AbCdEf"}


def protected_requests(stack: iam.StackTemplate, principal: str) -> list[Request]:
    """Every refused action on every kept bucket (and an object in each), as ``principal``."""
    context = {"aws:PrincipalArn": principal, **iam.DEPLOYED_CONTEXT}
    found = []
    for bucket in IMMUTABLE:
        arn = stack.get_att(bucket, "Arn")
        for action in PROTECTED_ACTIONS:
            on_object = action in OBJECT_ACTIONS
            found.append(Request(action, f"{arn}/t/x.json" if on_object else arn, context))
    return found


def decisions(parameters: dict[str, str], principal: str,
              identity: dict[str, Any]) -> list[bool]:
    """Whether each refused action is allowed to ``principal`` by its policies and the buckets'."""
    stack = iam.StackTemplate(iam.Stack(name="totes", uuid="0a1b2c3d-0000-4000-8000-00000000abcd",
                                        parameters={**STACK_SECRETS, **parameters}))
    return [evaluate(request, identity, stack.bucket_policies(), principal=principal).allowed
            for request in protected_requests(stack, principal)]


def test_without_a_break_glass_role_the_role_the_stack_creates_can_change_the_buckets():
    stack = iam.StackTemplate(iam.Stack(name="totes", uuid="0a1b2c3d-0000-4000-8000-00000000abcd",
                                        parameters=STACK_SECRETS))
    assert stack.condition("CreatesBucketAdminRole")
    created = stack.get_att("BucketAdminRole", "Arn")
    assert all(decisions({}, created, stack.role_policies("BucketAdminRole")))
    # ... and nobody else, however much their own policies allow.
    assert not any(decisions({}, ADMIN, {"admin": EVERYTHING}))


def test_with_a_break_glass_role_that_role_and_nobody_else_can_change_the_buckets():
    given = {"BreakGlassRoleArn": GIVEN_ROLE}
    stack = iam.StackTemplate(iam.Stack(name="totes", uuid="0a1b2c3d-0000-4000-8000-00000000abcd",
                                        parameters={**STACK_SECRETS, **given}))
    assert not stack.condition("CreatesBucketAdminRole")
    assert all(decisions(given, GIVEN_ROLE, {"admin": EVERYTHING}))
    assert not any(decisions(given, ADMIN, {"admin": EVERYTHING}))


def test_the_bucket_admin_role_is_assumable_in_the_account_with_mfa_only_and_kept():
    role = RESOURCES["BucketAdminRole"]
    assert role["Condition"] == "CreatesBucketAdminRole"
    assert role["DeletionPolicy"] == "Retain" == role["UpdateReplacePolicy"]
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    assert trust["Condition"] == {"Bool": {"aws:MultiFactorAuthPresent": "true"}}
    granted = {action for statement in role["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"] for action in as_list(statement["Action"])}
    assert granted == set(PROTECTED_ACTIONS) | {"s3:GetBucketPolicy", "s3:PutObject"}
    assert TEMPLATE["Outputs"]["BucketAdminRoleArn"]["Value"] == {"Fn::If": [
        "HasBreakGlassRole", {"Ref": "BreakGlassRoleArn"},
        {"Fn::GetAtt": ["BucketAdminRole", "Arn"]}]}


# ---------------------------------------------------------------- supersede markers and revisions


def concrete(value: Any) -> str:
    """A role statement's resource as an ARN pattern, each bucket named by its logical id."""
    if isinstance(value, str):
        return value
    if "Fn::GetAtt" in value:
        return f"arn:aws:s3:::{value['Fn::GetAtt'][0].removesuffix('Bucket').lower()}"
    if "Ref" in value:
        return f"ref:{value['Ref']}"
    text, variables = (value["Fn::Sub"], {}) if isinstance(value["Fn::Sub"], str) \
        else value["Fn::Sub"]
    text = re.sub(r"\$\{(\w+)Bucket\.Arn\}", lambda m: f"arn:aws:s3:::{m[1].lower()}", text)
    text = text.replace("${AWS::Partition}", "aws")
    for name in variables:
        text = text.replace(f"${{{name}}}", name.lower())
    return text


def matching(statements_: list[dict[str, Any]], action: str, arn: str,
             prefix: str | None) -> bool:
    """Whether one of the statements covers ``action`` on ``arn`` (and a listing's prefix).

    Only the conditions the template's S3 statements use are understood (a listing's
    ``s3:prefix``); a statement with any other condition is reported as not matching.
    """
    for statement in statements_:
        if action not in as_list(statement["Action"]):
            continue
        if not any(fnmatchcase(arn, concrete(resource)) for resource in
                   as_list(statement["Resource"])):
            continue
        condition = statement.get("Condition")
        if condition is None:
            return True
        patterns = as_list(condition.get("StringLike", {}).get("s3:prefix", []))
        if len(condition) == 1 and prefix is not None and any(
                fnmatchcase(prefix, concrete(pattern)) for pattern in patterns):
            return True
    return False


def deny_statements(role: str) -> list[dict[str, Any]]:
    """The Deny statements of a function role's inline policies."""
    return [branch for owner, document in policy_documents(TRANSLATED)
            if role in owner.split(",")
            for statement in as_list(document["Statement"])
            for branch in branches(statement) if branch.get("Effect") == "Deny"]


def may(role: str, action: str, arn: str, prefix: str | None = None) -> bool:
    """Whether ``role``'s own policies allow ``action`` on ``arn`` and do not deny it."""
    return (matching(role_statements(role), action, arn, prefix)
            and not matching(deny_statements(role), action, arn, prefix))


def test_transform_writes_the_star_schema_and_revisions_but_never_a_supersede_marker():
    assert may("TransformRole", "s3:PutObject", STAR_OBJECT)
    assert may("TransformRole", "s3:PutObject", REVISED_MANIFEST)
    assert not may("TransformRole", "s3:PutObject", SUPERSEDE_MARKER)
    assert {"Sid": "NeverWriteSupersedeMarkers", "Effect": "Deny", "Action": "s3:PutObject",
            "Resource": {"Fn::Sub": "${ProcessedBucket.Arn}/_supersede/*"}} in deny_statements(
        "TransformRole")


@pytest.mark.parametrize("role", ROLES.values())
def test_no_pipeline_role_may_write_a_supersede_marker(role):
    assert not may(role, "s3:PutObject", SUPERSEDE_MARKER)


def test_only_the_ingest_transform_and_publish_roles_may_put_objects_but_markers():
    # SAM's generated roles (the schedules') included: none may write anywhere. The bucket
    # admin role the stack creates writes operators' markers, and only those.
    writers = {owner: statement for owner, statement in allow_statements()
               if "s3:PutObject" in as_list(statement["Action"])}
    assert set(writers) == {"IngestRole", "TransformRole", "PublishRole", "BucketAdminRole"}
    assert writers["BucketAdminRole"]["Resource"] == {
        "Fn::Sub": "${ProcessedBucket.Arn}/_supersede/*"}
    # Publish writes the lake only, never the pipeline's buckets.
    assert [statement["Resource"] for statement in role_statements("PublishRole")
            if "s3:PutObject" in as_list(statement["Action"])] == [
        {"Fn::Sub": "${LakeBucket.Arn}/*"}]


# ---------------------------------------------------------------- who may write where

OPERATOR = "arn:aws:iam::123456789012:role/ops/totes-operator"
#: an object of every kind each bucket holds, by the prefix that names its writer.
OBJECTS = {
    "IngestBucket": ["_manifests/2024/01/02/20240102T000000000Z-aa.json",
                     "sales_order/2024/01/02/20240102T000000000Z-aa-00000.jsonl",
                     "_sweeps/payment/2024/01/02/20240102T000000000Z-aa.keys.gz",
                     "_claims/first.json", "notes.txt"],
    "ProcessedBucket": ["_manifests/2024/01/02/20240102T000000000Z-aa.json",
                        "_revisions/0001/_manifests/2024/01/02/20240102T000000000Z-aa.json",
                        "dim_staff/2024/01/02/20240102T000000000Z-aa-bb-00000.parquet",
                        "_reference/staff/2024/01/02/20240102T000000000Z-aa-bb.parquet",
                        "_supersede/revisions/0001.json",
                        "_supersede/skips/load/0000/_manifests/2024/01/02/x.json"],
    # Iceberg's data and metadata files, and a publish record (at its processed manifest's key).
    "LakeBucket": ["fact_sales_order/data/00000-0-6f1c2a4e.parquet",
                   "dim_staff/metadata/00001-6f1c2a4e.metadata.json",
                   "dim_staff/metadata/snap-1-0-6f1c2a4e.avro",
                   "_manifests/2024/01/02/20240102T000000000Z-aa.json", "notes.txt"],
}


def writes(parameters: dict[str, str],
           action: str = "s3:PutObject") -> dict[str, set[tuple[str, str]]]:
    """Per principal (by name), the (bucket, key) of OBJECTS the bucket policies let it create.

    Every principal's own policies allow everything, so what is refused is the bucket
    policies' doing; each write (``action``) carries If-None-Match, as the pipeline's do.
    A request is judged by its own bucket's policy only, as S3 does.
    """
    stack = iam.StackTemplate(iam.Stack(name="totes", uuid="0a1b2c3d-0000-4000-8000-00000000abcd",
                                        parameters={**STACK_SECRETS, **parameters}))
    principals = {role: stack.get_att(role, "Arn") for role in ROLES.values()}
    principals.update(admin=ADMIN, operator=OPERATOR, break_glass=GIVEN_ROLE)
    if stack.condition("CreatesBucketAdminRole"):
        principals["BucketAdminRole"] = stack.get_att("BucketAdminRole", "Arn")
    policies = stack.bucket_policies()
    allowed: dict[str, set[tuple[str, str]]] = {name: set() for name in principals}
    for name, arn in principals.items():
        context = {"aws:PrincipalArn": arn, "s3:if-none-match": "*", **iam.DEPLOYED_CONTEXT}
        for bucket, objects in OBJECTS.items():
            for key in objects:
                request = Request(action, f"{stack.get_att(bucket, 'Arn')}/{key}", context)
                physical = stack.physical_name(bucket)
                if evaluate(request, {"own": EVERYTHING}, {physical: policies[physical]},
                            principal=arn).allowed:
                    allowed[name].add((bucket, key))
    return allowed


def expected_writes(*names: str) -> dict[str, set[tuple[str, str]]]:
    """Who should write what: each writing role its prefixes, ``names`` the markers only.

    The ingest role all of the ingestion bucket; the transform role all of the processed
    bucket but _supersede/; the publish role all of the lake bucket; the operators
    ``names`` _supersede/ only; nobody anything else.
    """
    markers = {("ProcessedBucket", key) for key in OBJECTS["ProcessedBucket"]
               if key.startswith("_supersede/")}
    return {"IngestRole": {("IngestBucket", key) for key in OBJECTS["IngestBucket"]},
            "TransformRole": {("ProcessedBucket", key) for key in OBJECTS["ProcessedBucket"]
                              } - markers,
            "PublishRole": {("LakeBucket", key) for key in OBJECTS["LakeBucket"]},
            **{name: markers for name in names}}


def test_only_the_writing_role_may_write_each_prefix_and_markers_only_the_bucket_admin():
    found = writes({})
    assert {name: keys for name, keys in found.items() if keys} == expected_writes(
        "BucketAdminRole")
    assert found["admin"] == found["LoadRole"] == found["AuditRole"] == set()


def test_a_named_operator_role_and_the_break_glass_role_may_write_markers_and_nothing_else():
    found = writes({"OperatorRoleArn": OPERATOR, "BreakGlassRoleArn": GIVEN_ROLE})
    assert {name: keys for name, keys in found.items() if keys} == expected_writes(
        "operator", "break_glass")


@pytest.mark.parametrize("action", REPLICATION_ACTIONS)
def test_nobody_may_replicate_an_object_or_a_delete_marker_into_a_kept_bucket(action):
    for parameters in ({}, {"OperatorRoleArn": OPERATOR, "BreakGlassRoleArn": GIVEN_ROLE}):
        found = writes(parameters, action)
        assert {name: keys for name, keys in found.items() if keys} == {}, parameters


def test_the_operator_role_is_optional_and_must_be_a_role_arn():
    assert_optional_arn(
        "OperatorRoleArn", "HasOperatorRole",
        accepted=("arn:aws:iam::123456789012:role/totes-operator", OPERATOR),
        refused=("totes-operator", "arn:aws:iam::123456789012:user/alice",
                 "arn:aws:sts::123456789012:assumed-role/totes-operator/alice"))


@pytest.mark.parametrize("role", ["TransformRole", "LoadRole"])
def test_transform_and_load_read_and_list_supersede_markers_and_revisions(role):
    for arn in (SUPERSEDE_MARKER, REVISED_MANIFEST, STAR_OBJECT):
        assert may(role, "s3:GetObject", arn), arn
    for prefix in ("_supersede/", "_revisions/0001/_manifests/", "_manifests/"):
        assert may(role, "s3:ListBucket", PROCESSED_ARN, prefix), prefix


def test_the_audit_reads_only_the_supersede_markers_of_the_processed_bucket():
    # Which revision is in force decides the lake's capture point; the star schema's rows
    # (values) and the processed manifests are not the audit's to read.
    assert may("AuditRole", "s3:GetObject", SUPERSEDE_MARKER)
    assert may("AuditRole", "s3:ListBucket", PROCESSED_ARN, "_supersede/")
    for arn in (STAR_OBJECT, REVISED_MANIFEST):
        assert not may("AuditRole", "s3:GetObject", arn), arn
    for prefix in ("_manifests/", "_revisions/0001/_manifests/", "fact_sales_order/", ""):
        assert not may("AuditRole", "s3:ListBucket", PROCESSED_ARN, prefix), prefix


def test_the_audit_reads_the_lake_and_lists_only_its_publish_records():
    lake = "arn:aws:s3:::lake"
    for key in ("_manifests/2024/01/02/m.json", "dim_staff/metadata/00001-x.metadata.json",
                "fact_payment/data/00000-0-x.parquet"):
        assert may("AuditRole", "s3:GetObject", f"{lake}/{key}"), key
        assert not may("AuditRole", "s3:PutObject", f"{lake}/{key}"), key
    for prefix in ("_manifests/", "_revisions/0001/_manifests/"):
        assert may("AuditRole", "s3:ListBucket", lake, prefix), prefix
    # each table's data files, listed to check those its snapshot lists (not its metadata)
    # (the deployed layout, <bucket>/<table>: LakeDatabase's LocationUri is the bucket's root)
    assert may("AuditRole", "s3:ListBucket", lake, "fact_payment/data/")
    for prefix in ("dim_staff/", "", "dim_staff/metadata/", "_supersede/"):
        assert not may("AuditRole", "s3:ListBucket", lake, prefix), prefix
