"""A locked-down account: every role the stack creates can carry the account's boundary."""
import pytest
from test_template import TRANSLATED, assert_optional_arn

BOUNDED = {"Fn::If": ["HasPermissionsBoundary", {"Ref": "PermissionsBoundaryArn"},
                      {"Ref": "AWS::NoValue"}]}
#: every role in what SAM deploys, its generated schedule roles included.
ROLES = sorted(name for name, resource in TRANSLATED.items()
               if resource["Type"] == "AWS::IAM::Role")


def test_the_boundary_is_optional_and_must_be_a_managed_policy_arn():
    assert_optional_arn(
        "PermissionsBoundaryArn", "HasPermissionsBoundary",
        accepted=("arn:aws:iam::123456789012:policy/org/DeveloperBoundary",
                  "arn:aws:iam::aws:policy/PowerUserAccess",
                  "arn:aws-us-gov:iam::123456789012:policy/Boundary"),
        refused=("DeveloperBoundary", "arn:aws:iam::123456789012:role/Boundary",
                 "arn:aws:iam::123456789012:policy/"))


def test_the_stack_creates_the_function_schedule_and_bucket_admin_roles():
    assert len(ROLES) == 10
    assert {"IngestRole", "TransformRole", "LoadRole", "AuditRole", "PublishRole",
            "BucketAdminRole"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_the_stack_deploys_carries_the_boundary_when_one_is_given(role):
    assert TRANSLATED[role]["Properties"]["PermissionsBoundary"] == BOUNDED
