"""The template's Rules refuse, before anything is created, settings a deployment would fail on."""
import pytest

from totes_local import cfn

TEMPLATE = cfn.load()
SECRETS = {"TotesysSecretArn": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:t-AbCdEf",
           "WarehouseSecretArn": "arn:aws:secretsmanager:eu-west-2:123456789012:secret:w-AbCdEf"}


def failures(region="eu-west-2", **parameters):
    """What the template's Rules say about a deployment with these parameters."""
    return cfn.rule_failures(TEMPLATE, {**SECRETS, **parameters}, region)


def test_the_defaults_pass_every_rule():
    assert failures() == []


@pytest.mark.parametrize("subnets, groups", [
    ("", ""), ("subnet-a,subnet-b", "sg-1"), ("subnet-a", "sg-1,sg-2"),
])
def test_a_vpc_given_with_both_lists_or_neither_passes(subnets, groups):
    assert failures(SubnetIds=subnets, SecurityGroupIds=groups) == []


def test_subnets_without_security_groups_are_refused_with_what_to_do():
    (problem,) = failures(SubnetIds="subnet-a,subnet-b")
    assert problem.startswith("SubnetIds is set but SecurityGroupIds is empty: give both")
    assert "443" in problem and "5432" in problem


def test_security_groups_without_subnets_are_refused_rather_than_ignored():
    (problem,) = failures(SecurityGroupIds="sg-1")
    assert problem.startswith("SecurityGroupIds is set but SubnetIds is empty")


def test_no_region_is_refused_for_want_of_a_pandas_layer():
    # The layer is AWS's published one for whatever region the stack is in (test_pandas_layer.py).
    assert failures(region="ap-southeast-2") == []
    assert failures(region="xx-east-9") == []


ONE_SECRET = SECRETS["TotesysSecretArn"]


def test_one_secret_for_both_databases_without_parameters_to_tell_them_apart_is_refused():
    (problem,) = failures(WarehouseSecretArn=ONE_SECRET)
    assert problem.startswith("TotesysSecretArn and WarehouseSecretArn are the same secret")
    assert "set WarehouseDatabase" in problem
    (problem,) = failures(WarehouseSecretArn=ONE_SECRET, TotesysDatabase="totesys",
                          WarehouseDatabase="totesys")
    assert "star schema inside totesys" in problem


@pytest.mark.parametrize("where", [
    {"TotesysDatabase": "totesys", "WarehouseDatabase": "warehouse"},
    {"WarehouseDatabase": "warehouse"},
    {"WarehouseHost": "warehouse.abc123xyz.eu-west-2.rds.amazonaws.com"},
    {"WarehousePort": "5433"},
])
def test_one_master_secret_for_both_passes_when_the_parameters_tell_them_apart(where):
    assert failures(WarehouseSecretArn=ONE_SECRET, **where) == []
