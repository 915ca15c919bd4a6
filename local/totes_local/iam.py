"""What template.yaml grants, as concrete IAM documents for one stack, and what a call needs.

The template's policies are written with intrinsic functions (``!GetAtt
IngestBucket.Arn``, ``!Ref TotesysSecretArn``, the ingestion bucket's name spelled
from the stack's id). Reading them as text can only say what they look like;
resolving them for a given stack says what they grant, so a test can give a
principal exactly those policies, run a handler with its credentials, and evaluate
each AWS call the handler made against them (:mod:`totes_local.iam_policy`).

:class:`Stack` is what CloudFormation would know at deployment: the stack's
name, id, region, account and parameter values, and the physical names of the
resources the template leaves CloudFormation to name. :class:`StackTemplate`
resolves any template value for it (``Ref``, ``Fn::GetAtt``, ``Fn::Sub``,
``Fn::Select``, ``Fn::Split``, ``Fn::Join``, ``Fn::If`` and the conditions,
``AWS::NoValue``) and gives each role's policies, each bucket's policy, and each
function's environment. :func:`requests_for_call` turns one botocore call into the
IAM requests (action, resource ARN, condition keys) AWS authorises it as.

Lives beside :mod:`totes_local.cfn` (which translates the same template for the
security scan) because it is a tool over the template, not test data: a test
or a person can ask what a role may do in a concrete stack.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

from totes_local import cfn
from totes_local.iam_policy import PolicyDocument, Request

#: the name property of each resource type whose name the template may set; without it,
#: the physical name is the stack's (``Stack.physical_names``) or CloudFormation-style.
NAME_PROPERTIES = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
}
#: what ``Ref`` returns for types whose Ref is not their name (ARN or URL templates).
_REF_FORMATS = {
    "AWS::SQS::Queue": "https://sqs.{region}.amazonaws.com/{account}/{name}",
    "AWS::IAM::ManagedPolicy": "arn:{partition}:iam::{account}:policy/{name}",
    "AWS::SNS::Topic": "arn:{partition}:sns:{region}:{account}:{name}",
}
_ARN_FORMATS = {
    "AWS::S3::Bucket": "arn:{partition}:s3:::{name}",
    # A log group's GetAtt Arn ends in ":*" (it covers the group's streams).
    "AWS::Logs::LogGroup": "arn:{partition}:logs:{region}:{account}:log-group:{name}:*",
    "AWS::SQS::Queue": "arn:{partition}:sqs:{region}:{account}:{name}",
    "AWS::IAM::Role": "arn:{partition}:iam::{account}:role/{name}",
    "AWS::Serverless::Function": "arn:{partition}:lambda:{region}:{account}:function:{name}",
    "AWS::Lambda::Function": "arn:{partition}:lambda:{region}:{account}:function:{name}",
}
#: condition keys every call of a deployed function carries: boto3 reaches AWS over HTTPS
#: (the local moto endpoint is plain HTTP, which is not what is being evaluated).
DEPLOYED_CONTEXT = {"aws:SecureTransport": "true"}
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class _NoValue:
    """``AWS::NoValue``: the property or list item disappears."""


NO_VALUE = _NoValue()


@dataclass(frozen=True)
class Stack:
    """What CloudFormation knows about one deployment of the template."""

    name: str
    #: the stack id's UUID; its last group names the ingestion bucket
    uuid: str
    region: str = "eu-west-2"
    account: str = "123456789012"
    partition: str = "aws"
    parameters: Mapping[str, str] = field(default_factory=dict)
    #: physical names of resources the template does not name (CloudFormation would)
    physical_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def stack_id(self) -> str:
        """The stack's ARN, as ``AWS::StackId`` gives it."""
        return (f"arn:{self.partition}:cloudformation:{self.region}:{self.account}:"
                f"stack/{self.name}/{self.uuid}")

    def pseudo_parameters(self) -> dict[str, str]:
        """The ``AWS::`` pseudo parameters of this stack."""
        return {"AWS::StackName": self.name, "AWS::StackId": self.stack_id,
                "AWS::Region": self.region, "AWS::AccountId": self.account,
                "AWS::Partition": self.partition, "AWS::URLSuffix": "amazonaws.com"}


class StackTemplate:
    """A SAM template resolved for one :class:`Stack`: every value concrete."""

    def __init__(self, stack: Stack, template: Mapping[str, Any] | None = None):
        """Resolve ``template`` (template.yaml by default) for ``stack``."""
        self.stack = stack
        self.template = template if template is not None else cfn.load()
        self.resources: Mapping[str, Any] = self.template["Resources"]
        declared = self.template.get("Parameters", {})
        unknown = set(stack.parameters) - set(declared)
        if unknown:
            raise ValueError(f"parameters not in the template: {sorted(unknown)}")
        self.parameters: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in stack.parameters:
                value: Any = stack.parameters[name]
            elif "Default" in spec:
                value = str(spec["Default"])
            else:
                continue
            if spec["Type"] == "CommaDelimitedList":
                value = value.split(",")
            self.parameters[name] = value

    # ------------------------------------------------------------------ values

    def value(self, node: Any) -> Any:
        """Resolve a template value: intrinsic functions evaluated, ``AWS::NoValue`` removed."""
        if isinstance(node, list):
            items = [self.value(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, argument),) = node.items()
            if key == "Ref":
                return self.ref(argument)
            if key.startswith("Fn::") or key == "Condition":
                return self._function(key, argument)
        resolved = {key: self.value(inner) for key, inner in node.items()}
        return {key: inner for key, inner in resolved.items() if inner is not NO_VALUE}

    def _function(self, key: str, argument: Any) -> Any:
        if key == "Fn::GetAtt":
            logical, attribute = (argument if isinstance(argument, list)
                                  else argument.split(".", 1))
            return self.get_att(logical, attribute)
        if key == "Fn::Sub":
            return self._sub(argument)
        if key == "Fn::If":
            name, when_true, when_false = argument
            return self.value(when_true if self.condition(name) else when_false)
        if key == "Condition":
            return self.condition(argument)
        resolved = self.value(argument)
        if key == "Fn::Select":
            index, items = resolved
            return items[int(index)]
        if key == "Fn::Split":
            delimiter, text = resolved
            return text.split(delimiter)
        if key == "Fn::Join":
            delimiter, items = resolved
            return delimiter.join(str(item) for item in items)
        if key == "Fn::FindInMap":
            mapping, top, second = resolved
            return self.template["Mappings"][mapping][top][second]
        if key == "Fn::Equals":
            left, right = resolved
            return str(left) == str(right)
        if key == "Fn::Not":
            return not resolved[0]
        if key == "Fn::And":
            return all(resolved)
        if key == "Fn::Or":
            return any(resolved)
        raise ValueError(f"{key} is not supported")

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {name: self.value(inner) for name, inner in variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match[1]
            if name in values:
                return str(values[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return str(self.get_att(logical, attribute))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(substitute, text).replace("${!", "${")

    def condition(self, name: str) -> bool:
        """Evaluate one of the template's named conditions for this stack."""
        return bool(self.value(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        """``Ref``: a pseudo parameter, a parameter's value, or a resource's physical id."""
        if name == "AWS::NoValue":
            return NO_VALUE
        pseudo = self.stack.pseudo_parameters()
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template.get("Parameters", {}):
            raise ValueError(f"parameter {name} has no default: the stack must give it")
        kind = self.resources[name]["Type"]
        return _REF_FORMATS.get(kind, "{name}").format(**self._names(name))

    def get_att(self, logical: str, attribute: str) -> str:
        """``Fn::GetAtt``: a resource's ``Arn`` (the attribute the policies use) or name."""
        kind = self.resources[logical]["Type"]
        if attribute == "Arn" and kind in _ARN_FORMATS:
            return _ARN_FORMATS[kind].format(**self._names(logical))
        if attribute == NAME_PROPERTIES.get(kind):
            return self.physical_name(logical)
        raise ValueError(f"{logical}.{attribute} ({kind}) is not supported")

    def physical_name(self, logical: str) -> str:
        """A resource's name: the template's, the stack's, or one in CloudFormation's style."""
        resource = self.resources[logical]
        name_property = NAME_PROPERTIES.get(resource["Type"])
        if name_property and name_property in resource.get("Properties", {}):
            return str(self.value(resource["Properties"][name_property]))
        if logical in self.stack.physical_names:
            return self.stack.physical_names[logical]
        generated = f"{self.stack.name}-{logical}-{self.stack.uuid.split('-')[-1]}"
        return generated.lower() if resource["Type"] == "AWS::S3::Bucket" else generated

    def _names(self, logical: str) -> dict[str, str]:
        return {"name": self.physical_name(logical), "partition": self.stack.partition,
                "region": self.stack.region, "account": self.stack.account}

    # ------------------------------------------------------------------ what it grants

    def properties(self, logical: str) -> dict[str, Any]:
        """A resource's properties, resolved."""
        properties: dict[str, Any] = self.value(self.resources[logical].get("Properties", {}))
        return properties

    def role_policies(self, role: str) -> dict[str, PolicyDocument]:
        """Every policy a role has, by name: its inline policies and the template's managed ones.

        A managed policy the template does not define (an AWS managed policy ARN)
        cannot be resolved and is refused rather than silently left out.
        """
        properties = self.properties(role)
        policies = {policy["PolicyName"]: policy["PolicyDocument"]
                    for policy in properties.get("Policies", [])}
        by_arn = {self.ref(logical): logical for logical, resource in self.resources.items()
                  if resource["Type"] == "AWS::IAM::ManagedPolicy"}
        for arn in properties.get("ManagedPolicyArns", []):
            if arn not in by_arn:
                raise ValueError(f"{role} attaches {arn}, which the template does not define")
            policies[by_arn[arn]] = self.properties(by_arn[arn])["PolicyDocument"]
        return policies

    def bucket_policies(self) -> dict[str, PolicyDocument]:
        """Each bucket policy's document, by the name of the bucket it is attached to."""
        return {properties["Bucket"]: properties["PolicyDocument"]
                for properties in (self.properties(logical)
                                   for logical, resource in self.resources.items()
                                   if resource["Type"] == "AWS::S3::BucketPolicy")}

    def function_role(self, function: str) -> str:
        """The logical id of the role a function runs as (``Role: !GetAtt XRole.Arn``)."""
        role = self.resources[function]["Properties"]["Role"]["Fn::GetAtt"]
        return str(role[0] if isinstance(role, list) else role.split(".")[0])

    def function_environment(self, function: str) -> dict[str, str]:
        """A function's environment variables: the SAM globals', then its own."""
        merged: dict[str, str] = {}
        globals_ = self.template.get("Globals", {}).get("Function", {})
        for source in (globals_, self.resources[function].get("Properties", {})):
            variables = self.value(source.get("Environment", {}).get("Variables", {}))
            merged.update({name: str(value) for name, value in variables.items()})
        return merged


# ---------------------------------------------------------------------- calls -> requests

def _s3_requests(operation: str, params: Mapping[str, Any],
                 partition: str) -> list[Request]:
    bucket = f"arn:{partition}:s3:::{params['Bucket']}"
    if operation in ("ListObjectsV2", "ListObjects"):
        context = {key: str(params[name]) for key, name in (
            ("s3:prefix", "Prefix"), ("s3:delimiter", "Delimiter"), ("s3:max-keys", "MaxKeys"))
            if name in params}
        return [Request("s3:ListBucket", bucket, context)]
    if operation == "HeadBucket":
        return [Request("s3:ListBucket", bucket)]
    if operation in ("GetObject", "HeadObject"):
        return [Request("s3:GetObject", f"{bucket}/{params['Key']}")]
    if operation == "PutObject":
        context = ({"s3:if-none-match": str(params["IfNoneMatch"])}
                   if "IfNoneMatch" in params else {})
        return [Request("s3:PutObject", f"{bucket}/{params['Key']}", context)]
    if operation == "DeleteObject":
        return [Request("s3:DeleteObject", f"{bucket}/{params['Key']}")]
    if operation == "DeleteObjects":
        return [Request("s3:DeleteObject", f"{bucket}/{item['Key']}")
                for item in params["Delete"]["Objects"]]
    raise ValueError(f"s3 {operation} has no IAM mapping here; add one")


def _secret_requests(operation: str, params: Mapping[str, Any]) -> list[Request]:
    if operation != "GetSecretValue":
        raise ValueError(f"secretsmanager {operation} has no IAM mapping here; add one")
    secret = str(params["SecretId"])
    if not secret.startswith("arn:"):
        raise ValueError(f"secret {secret!r} is a name: the template passes full ARNs")
    return [Request("secretsmanager:GetSecretValue", secret)]


#: the Glue Data Catalog calls the lake makes (pyiceberg's Glue catalog) and the one it must
#: never make, each authorised on the catalog, the database and, but for GetDatabase, the table
#: (AWS's Glue IAM reference).
_GLUE_OPERATIONS = ("GetDatabase", "GetTable", "CreateTable", "UpdateTable", "DeleteTable")


def _glue_requests(operation: str, params: Mapping[str, Any], stack: Stack) -> list[Request]:
    if operation not in _GLUE_OPERATIONS:
        raise ValueError(f"glue {operation} has no IAM mapping here; add one")
    prefix = (f"arn:{stack.partition}:glue:{stack.region}:"
              f"{params.get('CatalogId', stack.account)}")
    database = str(params["Name"] if operation == "GetDatabase" else params["DatabaseName"])
    resources = [f"{prefix}:catalog", f"{prefix}:database/{database}"]
    if operation != "GetDatabase":
        table = (params["TableInput"]["Name"] if "TableInput" in params else params["Name"])
        resources.append(f"{prefix}:table/{database}/{table}")
    return [Request(f"glue:{operation}", resource) for resource in resources]


def requests_for_call(service: str, operation: str, params: Mapping[str, Any], *,
                      stack: Stack) -> list[Request]:
    """The IAM requests one API call is authorised as, with its condition keys.

    ``service`` and ``operation`` are botocore's names (``s3``, ``PutObject``) and
    ``params`` the call's parameters as the caller passed them. A call this does not
    know raises, so a handler that starts calling something new fails the checks
    until its permission model is written down here.
    """
    if service == "s3":
        requests = _s3_requests(operation, params, stack.partition)
    elif service == "secretsmanager":
        requests = _secret_requests(operation, params)
    elif service == "glue":
        requests = _glue_requests(operation, params, stack)
    elif service == "sqs" and operation == "SendMessage":
        url = urlparse(str(params["QueueUrl"]))
        account, name = url.path.strip("/").split("/")
        requests = [Request("sqs:SendMessage",
                            f"arn:{stack.partition}:sqs:{stack.region}:{account}:{name}")]
    elif service == "logs" and operation in ("CreateLogStream", "PutLogEvents"):
        requests = [Request(f"logs:{operation}",
                            f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:"
                            f"log-group:{params['logGroupName']}:"
                            f"log-stream:{params['logStreamName']}")]
    else:
        raise ValueError(f"{service} {operation} has no IAM mapping here; add one")
    return [Request(request.action, request.resource, {**DEPLOYED_CONTEXT, **request.context})
            for request in requests]
