"""A small IAM policy evaluator: does this set of policies allow this request, and why.

moto can enforce IAM, but only partly: it ignores every condition operator but
``StringEquals`` (a ``StringLike`` on ``s3:prefix`` grants the whole bucket), a
failed condition turns an Allow into a Deny, and it checks Secrets Manager calls
against the resource ``*``, so a policy scoped to one secret refuses even that
secret. The least-privilege tests therefore also evaluate every recorded call here.

What is evaluated, as AWS documents it for one account: an explicit Deny in any
policy wins; otherwise any Allow (identity or resource policy) allows; otherwise
the request is implicitly denied. Statements may use ``Action``/``NotAction``,
``Resource``/``NotResource`` (``*`` and ``?`` wildcards; actions case-insensitive),
``Principal`` (resource policies: ``*`` or ``{"AWS": ...}`` ARNs), and conditions
with the ``String``, ``Arn``, ``Bool`` and ``Null`` operators, their negations and
``IfExists``, with AWS's rule for a key absent from the request: the condition is
false, except that a negated operator is true. Any other operator (numeric, date,
IP, the ``ForAnyValue``/``ForAllValues`` set qualifiers) or policy variable raises
:class:`UnsupportedPolicyError` rather than guessing.
"""
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Mapping

PolicyDocument = dict[str, Any]


class UnsupportedPolicyError(ValueError):
    """The policy uses something this evaluator does not model; refuse rather than guess."""


@dataclass(frozen=True)
class Request:
    """One authorisation request: an action on a resource ARN with its condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Grant:
    """The part of a statement that matched a request: which policy, statement and patterns."""

    policy: str
    sid: str
    action: str
    resource: str


@dataclass(frozen=True)
class Decision:
    """The verdict on one request, with the statements that allowed or denied it."""

    request: Request
    allowed_by: tuple[Grant, ...]
    denied_by: tuple[Grant, ...]

    @property
    def allowed(self) -> bool:
        """Allowed: some statement allows it and none denies it."""
        return bool(self.allowed_by) and not self.denied_by


@lru_cache(maxsize=1024)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    """An IAM wildcard (``*`` any run of characters, ``?`` one character) as a regex."""
    if "${" in glob:
        raise UnsupportedPolicyError(f"policy variables are not modelled: {glob!r}")
    body = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char)
                   for char in glob)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def wildcard_match(glob: str, value: str, *, ignore_case: bool = False) -> bool:
    """Whether ``value`` matches the IAM wildcard ``glob`` as a whole."""
    return _pattern(glob, ignore_case).fullmatch(value) is not None


def as_list(value: Any) -> list[Any]:
    """IAM accepts one value or a list wherever a list is allowed; normalise to a list."""
    return value if isinstance(value, list) else [value]


def _condition_text(value: Any) -> str:
    """A condition value as IAM compares it (JSON true is ``"true"``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _compare(operator: str, expected: str, actual: str) -> bool:
    """Whether one expected value matches the request's value, for a positive operator."""
    if operator in ("StringEquals", "ArnEquals"):
        return actual == expected
    if operator in ("StringLike", "ArnLike"):
        return wildcard_match(expected, actual)
    return actual.lower() == expected.lower()  # StringEqualsIgnoreCase, Bool


_NEGATIONS = {"StringNotEquals": "StringEquals", "StringNotEqualsIgnoreCase":
              "StringEqualsIgnoreCase", "StringNotLike": "StringLike",
              "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike"}
#: the operators modelled besides Null: the positive ones and their negations
_OPERATORS = {"StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike",
              "Bool", *_NEGATIONS}


def condition_holds(operator: str, key: str, expected: Any,
                    context: Mapping[str, str]) -> bool:
    """Evaluate one ``operator: {key: expected}`` entry of a Condition block."""
    values = [_condition_text(value) for value in as_list(expected)]
    if operator == "Null":
        absent = key not in context
        return any(absent == (value == "true") for value in values)
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    if base not in _OPERATORS:
        raise UnsupportedPolicyError(f"condition operator {operator} is not modelled")
    if key not in context:
        return if_exists or base in _NEGATIONS
    actual = context[key]
    if base in _NEGATIONS:
        return not any(_compare(_NEGATIONS[base], value, actual) for value in values)
    return any(_compare(base, value, actual) for value in values)


def conditions_hold(conditions: Mapping[str, Mapping[str, Any]],
                    context: Mapping[str, str]) -> bool:
    """Whether a whole Condition block holds: every operator, every key (values are ORed)."""
    return all(condition_holds(operator, key, expected, context)
               for operator, entries in conditions.items()
               for key, expected in entries.items())


def _principal_matches(statement: Mapping[str, Any], caller: str | None) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict) and set(principal) == {"AWS"}:
        return any(arn == "*" or arn == caller for arn in as_list(principal["AWS"]))
    raise UnsupportedPolicyError(f"principal {principal!r} is not modelled")


def statements(document: PolicyDocument) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each statement of a policy document with its Sid (``#<index>`` when it has none)."""
    for index, statement in enumerate(as_list(document["Statement"])):
        yield statement.get("Sid", f"#{index}"), statement


def _matching(statement: Mapping[str, Any], request: Request) -> tuple[str, str] | None:
    """The (action, resource) patterns of ``statement`` that cover ``request``, if any."""
    if "NotAction" in statement:
        if any(wildcard_match(glob, request.action, ignore_case=True)
               for glob in as_list(statement["NotAction"])):
            return None
        action = "NotAction"
    else:
        action = next((glob for glob in as_list(statement["Action"])
                       if wildcard_match(glob, request.action, ignore_case=True)), "")
        if not action:
            return None
    if "NotResource" in statement:
        if any(wildcard_match(glob, request.resource)
               for glob in as_list(statement["NotResource"])):
            return None
        resource = "NotResource"
    else:
        resource = next((glob for glob in as_list(statement["Resource"])
                         if wildcard_match(glob, request.resource)), "")
        if not resource:
            return None
    return action, resource


def evaluate(request: Request, identity: Mapping[str, PolicyDocument],
             resource_policies: Mapping[str, PolicyDocument] | None = None,
             principal: str | None = None) -> Decision:
    """Decide ``request`` for a caller with the ``identity`` policies (by name).

    ``resource_policies`` (by name, such as a bucket policy) apply to the caller
    ``principal`` (an ARN) where their ``Principal`` names it or everyone.
    """
    allowed: list[Grant] = []
    denied: list[Grant] = []
    policies = [(name, document, False) for name, document in identity.items()]
    policies += [(name, document, True) for name, document in (resource_policies or {}).items()]
    for name, document, is_resource_policy in policies:
        for sid, statement in statements(document):
            if is_resource_policy != ("Principal" in statement or "NotPrincipal" in statement):
                raise UnsupportedPolicyError(
                    f"{name} {sid}: Principal belongs in resource policies only")
            if is_resource_policy and not _principal_matches(statement, principal):
                continue
            patterns = _matching(statement, request)
            if patterns is None or not conditions_hold(statement.get("Condition", {}),
                                                       request.context):
                continue
            grant = Grant(name, sid, *patterns)
            (allowed if statement["Effect"] == "Allow" else denied).append(grant)
    return Decision(request, tuple(allowed), tuple(denied))
