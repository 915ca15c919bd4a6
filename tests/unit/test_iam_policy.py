"""The IAM policy evaluator decides as AWS documents: explicit Deny wins, conditions as written.

Each case is a rule of AWS's policy evaluation logic or condition operators that
the least-privilege tests rely on; several are ones moto gets wrong (a failed
condition turning an Allow into a Deny, a StringLike condition ignored).
"""
import pytest

from totes_local.iam_policy import (Grant, Request, UnsupportedPolicyError, condition_holds,
                                    evaluate, wildcard_match)

BUCKET = "arn:aws:s3:::totes-ingest-0123456789ab"
ROLE = "arn:aws:iam::123456789012:role/ingest"


def policy(*statements: dict) -> dict:
    """A policy document with these statements."""
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource, **extra) -> dict:
    """An Allow statement."""
    return {"Sid": "A", "Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action, resource, **extra) -> dict:
    """A Deny statement."""
    return {"Sid": "D", "Effect": "Deny", "Action": action, "Resource": resource, **extra}


LIST_MANIFESTS = policy(allow("s3:ListBucket", BUCKET,
                              Condition={"StringLike": {"s3:prefix": "_manifests/*"}}))


def test_nothing_is_allowed_without_an_allow_statement():
    decision = evaluate(Request("s3:GetObject", f"{BUCKET}/a"), {"p": policy()})
    assert not decision.allowed and decision.denied_by == ()


def test_an_allow_names_the_statement_and_patterns_that_granted_it():
    decision = evaluate(Request("s3:GetObject", f"{BUCKET}/_manifests/m.json"),
                        {"ingest": policy(allow(["s3:PutObject", "s3:GetObject"],
                                                [f"{BUCKET}/x/*", f"{BUCKET}/_manifests/*"]))})
    assert decision.allowed
    assert decision.allowed_by == (Grant("ingest", "A", "s3:GetObject", f"{BUCKET}/_manifests/*"),)


def test_an_explicit_deny_wins_over_any_allow():
    document = policy(allow("s3:*", "*"), deny("s3:DeleteObject", f"{BUCKET}/*"))
    assert not evaluate(Request("s3:DeleteObject", f"{BUCKET}/k"), {"p": document}).allowed
    assert evaluate(Request("s3:GetObject", f"{BUCKET}/k"), {"p": document}).allowed


def test_actions_match_case_insensitively_and_resources_case_sensitively():
    document = {"p": policy(allow("S3:getobject", f"{BUCKET}/Data/*"))}
    assert evaluate(Request("s3:GetObject", f"{BUCKET}/Data/k"), document).allowed
    assert not evaluate(Request("s3:GetObject", f"{BUCKET}/data/k"), document).allowed


@pytest.mark.parametrize("glob, value, matches", [
    ("_manifests/*", "_manifests/", True), ("_manifests/*", "_manifests/2026/x.json", True),
    ("_manifests/*", "sales_order/", False), ("a?c", "abc", True), ("a?c", "ac", False),
    ("a.c", "abc", False), ("*", "", True),
])
def test_wildcards_are_star_and_question_mark_only(glob, value, matches):
    assert wildcard_match(glob, value) is matches


def test_not_action_and_not_resource_cover_everything_else():
    document = {"p": policy({"Sid": "N", "Effect": "Allow", "NotAction": "s3:Delete*",
                             "NotResource": f"{BUCKET}/_sweeps/*"})}
    assert evaluate(Request("s3:GetObject", f"{BUCKET}/_manifests/m"), document).allowed
    assert not evaluate(Request("s3:DeleteObject", f"{BUCKET}/_manifests/m"), document).allowed
    assert not evaluate(Request("s3:GetObject", f"{BUCKET}/_sweeps/k"), document).allowed


def test_a_failed_condition_leaves_the_request_undecided_not_denied():
    # moto turns a failed condition into an explicit Deny; AWS only skips the statement.
    document = {"narrow": LIST_MANIFESTS, "wide": policy(allow("s3:ListBucket", BUCKET))}
    request = Request("s3:ListBucket", BUCKET, {"s3:prefix": "sales_order/"})
    assert evaluate(request, document).allowed
    assert not evaluate(request, {"narrow": LIST_MANIFESTS}).allowed


@pytest.mark.parametrize("prefix, allowed", [
    ("_manifests/", True), ("_manifests/2026/11/", True), ("sales_order/", False), (None, False),
])
def test_a_string_like_condition_on_the_prefix_limits_a_listing(prefix, allowed):
    context = {} if prefix is None else {"s3:prefix": prefix}
    request = Request("s3:ListBucket", BUCKET, context)
    assert evaluate(request, {"p": LIST_MANIFESTS}).allowed is allowed


@pytest.mark.parametrize("operator, expected, context, holds", [
    ("StringEquals", "a", {"k": "a"}, True), ("StringEquals", "a", {"k": "A"}, False),
    ("StringEquals", ["x", "a"], {"k": "a"}, True), ("StringEquals", "a", {}, False),
    ("StringNotEquals", "a", {"k": "b"}, True), ("StringNotEquals", ["a", "b"], {"k": "b"}, False),
    ("StringNotEquals", "a", {}, True),  # a negated operator holds when the key is absent
    ("StringEqualsIgnoreCase", "a", {"k": "A"}, True),
    ("StringNotLike", "_m/*", {"k": "_m/x"}, False), ("StringNotLike", "_m/*", {}, True),
    ("StringLikeIfExists", "_m/*", {}, True), ("StringLikeIfExists", "_m/*", {"k": "x"}, False),
    ("ArnLike", "arn:aws:iam::*:role/*", {"k": ROLE}, True),
    ("ArnNotEquals", ROLE, {"k": ROLE}, False),
    ("Bool", "false", {"k": "false"}, True), ("Bool", "false", {"k": "true"}, False),
    ("Bool", False, {"k": "false"}, True), ("Bool", "false", {}, False),
    ("Null", "true", {}, True), ("Null", "true", {"k": "*"}, False),
    ("Null", "false", {"k": "*"}, True), ("Null", False, {}, False),
])
def test_condition_operators_as_aws_documents_them(operator, expected, context, holds):
    assert condition_holds(operator, "k", expected, context) is holds


@pytest.mark.parametrize("operator", ["NumericLessThan", "DateGreaterThan", "IpAddress",
                                      "ForAnyValue:StringLike", "ForAllValues:StringEquals"])
@pytest.mark.parametrize("context", [{"k": "1"}, {}])
def test_an_operator_it_does_not_model_is_refused_not_guessed(operator, context):
    with pytest.raises(UnsupportedPolicyError):
        condition_holds(operator, "k", "1", context)


def test_a_policy_variable_is_refused_not_matched_literally():
    document = {"p": policy(allow("s3:GetObject", f"{BUCKET}/${{aws:username}}/*"))}
    with pytest.raises(UnsupportedPolicyError):
        evaluate(Request("s3:GetObject", f"{BUCKET}/ingest/k"), document)


# ---------------------------------------------------------------------- bucket policies

IF_NONE_MATCH_REQUIRED = policy(
    {"Sid": "DenyOverwrites", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
     "Resource": f"{BUCKET}/*", "Condition": {"Null": {"s3:if-none-match": "true"}}},
    {"Sid": "DenyDeletes", "Effect": "Deny", "Principal": {"AWS": "*"},
     "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"], "Resource": f"{BUCKET}/*"},
    {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
     "Resource": [BUCKET, f"{BUCKET}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}})
WRITER = {"ingest": policy(allow(["s3:PutObject", "s3:DeleteObject"], f"{BUCKET}/*"))}


@pytest.mark.parametrize("context, denied_by", [
    ({"aws:SecureTransport": "true", "s3:if-none-match": "*"}, ()),
    ({"aws:SecureTransport": "true"}, ("DenyOverwrites",)),
    ({"aws:SecureTransport": "false", "s3:if-none-match": "*"}, ("DenyInsecureTransport",)),
])
def test_a_bucket_policy_can_require_conditional_writes_and_tls(context, denied_by):
    decision = evaluate(Request("s3:PutObject", f"{BUCKET}/_manifests/m.json", context), WRITER,
                        {"bucket": IF_NONE_MATCH_REQUIRED}, principal=ROLE)
    assert tuple(grant.sid for grant in decision.denied_by) == denied_by
    assert decision.allowed is not denied_by


def test_a_bucket_policy_deny_stops_what_the_role_allows():
    request = Request("s3:DeleteObject", f"{BUCKET}/k", {"aws:SecureTransport": "true"})
    assert evaluate(request, WRITER).allowed
    assert not evaluate(request, WRITER, {"bucket": IF_NONE_MATCH_REQUIRED},
                        principal=ROLE).allowed


def test_a_resource_policy_statement_applies_only_to_the_principals_it_names():
    named = policy(deny("s3:GetObject", f"{BUCKET}/*", Principal={"AWS": [ROLE]}))
    others = policy(deny("s3:GetObject", f"{BUCKET}/*",
                         Principal={"AWS": "arn:aws:iam::123456789012:role/load"}))
    reader = {"r": policy(allow("s3:GetObject", f"{BUCKET}/*"))}
    request = Request("s3:GetObject", f"{BUCKET}/k")
    assert not evaluate(request, reader, {"b": named}, principal=ROLE).allowed
    assert evaluate(request, reader, {"b": others}, principal=ROLE).allowed


def test_a_service_principal_is_refused_not_guessed():
    service = policy(deny("s3:GetObject", f"{BUCKET}/*", Principal={"Service": "s3.amazonaws.com"}))
    with pytest.raises(UnsupportedPolicyError):
        evaluate(Request("s3:GetObject", f"{BUCKET}/k"), {}, {"b": service}, principal=ROLE)


def test_principal_belongs_in_resource_policies_only():
    with pytest.raises(UnsupportedPolicyError):
        evaluate(Request("s3:GetObject", f"{BUCKET}/k"),
                 {"p": policy(allow("s3:GetObject", "*", Principal="*"))})
    with pytest.raises(UnsupportedPolicyError):
        evaluate(Request("s3:GetObject", f"{BUCKET}/k"), {}, {"b": policy(allow("s3:*", "*"))})
