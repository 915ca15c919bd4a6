"""Least privilege, proven by running: each function works with its role's policies and no more.

Every role's policies are resolved from template.yaml for a concrete stack
(:mod:`totes_local.iam`: bucket names, secret ARNs, log groups). Each function
then runs end to end (two cycles of ingest, transform per manifest, load and
publish, with deletes at the source; then the audit) as an IAM user of a moto server
with IAM enforcement on, whose only policies are its role's, with the
environment the template gives the function. Every AWS call the handlers make
is recorded by a botocore event hook and evaluated against the same policies
with :mod:`totes_local.iam_policy`. The tests then require that the run
succeeded, that every call was allowed (by the role, and by the bucket policies'
Deny statements), that every permission a role grants was used, and that the
calls each function must not make (deletes, writes to the other bucket, reading
extracts, the other function's secret) are denied.

Which way each service is checked:

* S3, enforced by moto and evaluated. moto authorises every S3 call against the
  user's policies (actions and object/bucket ARNs): a delete, a write to the other
  bucket, a read outside the granted prefixes are AccessDenied. moto ignores every
  condition operator but StringEquals and applies no bucket policy, so the
  ``s3:prefix`` condition on ListBucket, the ``s3:if-none-match`` key and the
  bucket policies' Deny statements are checked by the evaluation only.
* Secrets Manager, evaluated only. moto checks secretsmanager actions against the
  resource ``*``, so a policy scoped to one secret ARN (all of ours) refuses even
  that secret. The handlers' Secrets Manager calls go to the session's moto server
  without enforcement (``AWS_ENDPOINT_URL_SECRETS_MANAGER``), and every
  GetSecretValue is evaluated against the role, the other function's secret too.
* Glue (the lake's catalog), evaluated only, the same way: publish's Glue calls go
  to the session's moto server (``AWS_ENDPOINT_URL_GLUE``), and each is evaluated
  on the catalog, the database and the table it names. The lake's files are read
  and written through botocore (``totes.lake_io``), so they are S3 calls like any.
* CloudWatch Logs and SQS, evaluated as the service calls them. The handlers call
  neither: Lambda writes each function's log stream to the log group its
  LoggingConfig names, and transform's on-failure destination sends to its queue,
  both as the function's role. Those calls are modelled from the template and
  evaluated.
* CloudWatch metrics: Powertools writes EMF to stdout; no API call, no permission.

The VPC managed policy (FunctionVpcPolicy) is attached only with SubnetIds; the
stack here has none, and Lambda, not the handler, makes its EC2 calls.
"""
import json
import os
import socket
import subprocess  # nosec B404
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import boto3
import botocore.session
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore import xform_name
from botocore.exceptions import ClientError

from totes import ingest, keys, storage, supersede
from totes.manifest import IngestManifest
from totes.keys import MANIFEST_PREFIX
from totes_local import generator, iam, runner, simulator, stack
from totes_local.iam_policy import Decision, Grant, Request, as_list, evaluate, statements

pytestmark = pytest.mark.e2e

FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction",
             "load": "LoadFunction", "audit": "AuditFunction", "publish": "PublishFunction"}
#: moto's default account, which the session moto server gives the secrets' ARNs
MOTO_ACCOUNT = "123456789012"
#: an operator's skip of a run long gone: every transform and load reads it, none acts on it.
OLD_SKIP = supersede.Skip(
    stage="load", revision=0, manifest="_manifests/2000/01/01/20000101T000000000Z-00000000.json",
    reason="a marker for the run to read", created_at="2000-01-01T00:00:00.000Z",
    created_by="arn:ops")
#: unauthenticated calls the enforcing server allows: create the admin, its policy, its key
BOOTSTRAP_CALLS = 3
ALLOW_ALL = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
#: credentials and endpoints a handler must not inherit from the test process
AWS_VARIABLES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_GLUE")


@dataclass(frozen=True)
class Credentials:
    """An IAM user's access key on the enforcing moto server."""

    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Call:
    """One AWS API call a handler made, as botocore was asked to make it."""

    function: str
    service: str
    operation: str
    params: dict[str, Any]


@dataclass
class CallRecorder:
    """Record every API call made while a function runs (botocore ``provide-client-params``)."""

    calls: list[Call] = field(default_factory=list)
    function: str | None = None

    def record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        """Keep the call's service, operation and parameters (not its body)."""
        if self.function is not None:
            self.calls.append(Call(self.function, model.service_model.service_name, model.name,
                                   {name: value for name, value in params.items()
                                    if name != "Body"}))

    def installed(self, patch: pytest.MonkeyPatch) -> None:
        """Hook every botocore client created from now on, whichever session creates it.

        Powertools builds its Secrets Manager client from a session of its own, so
        hooking boto3's default session would miss those calls.
        """
        create_client = botocore.session.Session.create_client

        def recording(session: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
            client = create_client(session, *args, **kwargs)
            client.meta.events.register("provide-client-params", self.record)
            return client

        patch.setattr(botocore.session.Session, "create_client", recording)


@dataclass
class EnforcingMoto:
    """A moto server in its own process that enforces IAM after its bootstrap calls."""

    endpoint: str
    admin: Credentials

    def client(self, service: str, credentials: Credentials) -> Any:
        """A client of this server acting as ``credentials``."""
        return boto3.client(service, endpoint_url=self.endpoint, region_name=stack.REGION,
                            aws_access_key_id=credentials.access_key,
                            aws_secret_access_key=credentials.secret_key)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def enforcing_moto() -> Iterator[EnforcingMoto]:
    """Start moto with IAM enforcement (a process of its own: moto's auth switch is global).

    ``INITIAL_NO_AUTH_ACTION_COUNT`` lets the first calls through unauthenticated:
    they create an administrator, whose key then sets up everything else.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(  # nosec B603
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_CALLS)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        bootstrap = boto3.client("iam", endpoint_url=endpoint, region_name=stack.REGION,
                                 aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        bootstrap.create_user(UserName="admin")
        bootstrap.put_user_policy(UserName="admin", PolicyName="admin",
                                  PolicyDocument=json.dumps(ALLOW_ALL))
        key = bootstrap.create_access_key(UserName="admin")["AccessKey"]
        yield EnforcingMoto(endpoint, Credentials(key["AccessKeyId"], key["SecretAccessKey"]))
    finally:
        # Killed, not terminated: on SIGTERM it waits for the clients' keep-alive connections.
        server.kill()
        server.wait(timeout=10)


@dataclass
class LeastPrivilegeRun:
    """The stack, each function's credentials, and what the run did and called."""

    template: iam.StackTemplate
    moto: EnforcingMoto
    users: dict[str, Credentials]
    calls: list[Call]
    summaries: dict[str, list[Any]]

    @property
    def ingest_bucket(self) -> str:
        """The ingestion bucket's name, derived by the template from the stack id."""
        return self.template.physical_name("IngestBucket")

    @property
    def processed_bucket(self) -> str:
        """The processed bucket's name."""
        return self.template.physical_name("ProcessedBucket")

    @property
    def lake_bucket(self) -> str:
        """The lake bucket's name."""
        return self.template.physical_name("LakeBucket")

    def role(self, function: str) -> str:
        """The logical id of the function's role."""
        return self.template.function_role(FUNCTIONS[function])

    def policies(self, function: str) -> dict[str, Any]:
        """The resolved policies of the function's role."""
        return self.template.role_policies(self.role(function))

    def secret(self, parameter: str) -> str:
        """A secret's ARN, as the stack's parameter gives it."""
        return str(self.template.ref(parameter))

    def s3(self, function: str | None = None) -> Any:
        """An S3 client acting as the function's user (as the administrator when None)."""
        return self.moto.client("s3", self.users[function] if function else self.moto.admin)

    def first_key(self, bucket: str, *, under_table: bool = False, prefix: str = "") -> str:
        """The first key under ``prefix`` (or a table's), as the administrator lists it."""
        listed = self.s3().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return next(item["Key"] for item in listed["Contents"]
                    if not under_table or not item["Key"].startswith("_"))

    def requests(self, function: str) -> list[Request]:
        """The IAM requests of every call the function's handler made."""
        return [request for call in self.calls if call.function == function
                for request in iam.requests_for_call(call.service, call.operation, call.params,
                                                     stack=self.template.stack)]

    def service_requests(self, function: str) -> list[Request]:
        """What AWS does as the function's role, outside the handler, from the template.

        Lambda creates a log stream and puts log events in the log group the
        function's LoggingConfig names; transform's on-failure destination sends
        the failed event to its queue.
        """
        properties = self.template.properties(FUNCTIONS[function])
        logs = [request for operation in ("CreateLogStream", "PutLogEvents")
                for request in iam.requests_for_call(
                    "logs", operation, {"logGroupName": properties["LoggingConfig"]["LogGroup"],
                                        "logStreamName": "2026/11/27/[$LATEST]0123456789abcdef"},
                    stack=self.template.stack)]
        destinations = properties.get("EventInvokeConfig", {}).get("DestinationConfig", {})
        return logs + [Request("sqs:SendMessage", destination["Destination"],
                               iam.DEPLOYED_CONTEXT)
                       for destination in destinations.values()]


def run_pipeline(template: iam.StackTemplate, moto: EnforcingMoto, users: dict[str, Credentials],
                 secrets_endpoint: str,
                 source: Callable[[], Any]) -> tuple[list[Call], dict[str, list[Any]]]:
    """Run every function as its own user, each call recorded; return the calls and summaries.

    Two cycles with an order cancelled at the source between them, so the second
    ingest compares its key sweep with the first (and transform and load carry a
    deletion). Before the second, a run that claimed the commit after the first
    manifest died before writing its manifest (an empty run, planted here): the
    next ingest finds the claim taken, commits the dead run's manifest and stops,
    and the one after it captures the second cycle. In the second, load also runs
    before transform, as its schedule may, and finds the ingest manifest waiting,
    whose age it reports. Publish runs after each load (the first creates the lake's
    tables). Then another
    cancellation the audit finds still in flight, which makes it read the key lists.
    ``source`` opens a connection to totesys; ``secrets_endpoint`` is the session's
    moto server without enforcement (Secrets Manager and Glue).
    """
    recorder = CallRecorder()
    summaries: dict[str, list[Any]] = {function: [] for function in FUNCTIONS}
    region = template.stack.region
    admin_s3 = moto.client("s3", moto.admin)
    ingest_bucket = template.physical_name("IngestBucket")

    def invoke(function: str, event: dict[str, Any]) -> None:
        with pytest.MonkeyPatch.context() as env:
            for name in (*AWS_VARIABLES, *stack.pipeline_environment()):
                env.delenv(name, raising=False)
            values = {**template.function_environment(FUNCTIONS[function]),
                      "AWS_ENDPOINT_URL": moto.endpoint,
                      "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_endpoint,
                      "AWS_ENDPOINT_URL_GLUE": secrets_endpoint,
                      "AWS_ACCESS_KEY_ID": users[function].access_key,
                      "AWS_SECRET_ACCESS_KEY": users[function].secret_key,
                      "AWS_DEFAULT_REGION": region, "AWS_REGION": region}
            for name, value in values.items():
                env.setenv(name, value)
            # boto3's default session keeps the first credentials it resolved: a new one
            # per invocation, as each function has its own Lambda container.
            env.setattr(boto3, "DEFAULT_SESSION", None)
            storage.s3_client.cache_clear()
            parameters.clear_caches()
            handler = runner.load_handler(function)
            recorder.function = function
            try:
                summaries[function].append(
                    handler(event, runner.LambdaContext(function_name=f"totes-{function}")))
            finally:
                recorder.function = None
                storage.s3_client.cache_clear()
                parameters.clear_caches()

    def cancel_an_order() -> None:
        conn = source()
        try:
            order = conn.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
            simulator.cancel_order(conn, simulator.SALES, order)
        finally:
            conn.close()

    def plant_a_dead_runs_claim() -> None:
        newest = max(item["Key"] for item in admin_s3.list_objects_v2(
            Bucket=ingest_bucket, Prefix=MANIFEST_PREFIX)["Contents"])
        previous = IngestManifest.parse(json.loads(
            admin_s3.get_object(Bucket=ingest_bucket, Key=newest)["Body"].read()))
        run = keys.new_run_id()
        dead = replace(previous.with_tables({
            table: replace(entry, files=(), deleted=(), captured_keys=None, stamped_in_future=0)
            for table, entry in previous.tables.items()}),
            run_id=str(run), previous_manifest=newest)
        claim = {"manifest_key": keys.manifest_key(run), "manifest": dead.to_json()}
        admin_s3.put_object(Bucket=ingest_bucket, Key=keys.successor_claim_key(newest),
                            Body=json.dumps(claim).encode(), IfNoneMatch="*")
        summaries["claimed"].append(claim["manifest_key"])

    # An operator's marker that matches no run, so every transform and load reads one.
    admin_s3.put_object(Bucket=template.physical_name("ProcessedBucket"), Key=OLD_SKIP.key,
                        Body=json.dumps(OLD_SKIP.to_json()).encode(), IfNoneMatch="*")
    delivered: set[str] = set()
    summaries["claimed"] = []
    with pytest.MonkeyPatch.context() as patch:
        recorder.installed(patch)
        for cycle in range(2):
            if cycle:
                cancel_an_order()
                plant_a_dead_runs_claim()
                with pytest.raises(ingest.ConcurrentRunError, match="claimed the commit"):
                    invoke("ingest", runner.scheduled_event("ingest"))
            invoke("ingest", runner.scheduled_event("ingest"))
            if cycle:  # load fires before transform is done: it reads the waiting manifest
                invoke("load", runner.scheduled_event("load"))
            listed = admin_s3.list_objects_v2(Bucket=ingest_bucket, Prefix=MANIFEST_PREFIX)
            for key in sorted(item["Key"] for item in listed.get("Contents", ())):
                if key not in delivered:
                    invoke("transform", runner.s3_object_created_event(ingest_bucket, key))
                    delivered.add(key)
            invoke("load", runner.scheduled_event("load"))
            invoke("publish", runner.scheduled_event("publish"))
        cancel_an_order()
        invoke("audit", runner.scheduled_event("audit"))
    return recorder.calls, summaries


@pytest.fixture(scope="module")
def least_privilege(postgres, moto_endpoint, enforcing_moto) -> LeastPrivilegeRun:
    """A stack on the enforcing server, one IAM user per function, and the pipeline run.

    The stack sweeps on every ingest run (``IngestDeleteSweepMinutes`` 0), so two
    runs exercise the sweep's comparison with the previous key lists.
    """
    suffix = uuid.uuid4().hex[:8]
    source, warehouse = f"totesys_lp_{suffix}", f"warehouse_lp_{suffix}"
    for name in (source, warehouse):
        postgres.recreate_database(name)
    conn = postgres.connect(source)
    try:
        generator.seed_new(conn, scale=0.02)
    finally:
        conn.close()
    manager = boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name=stack.REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    arns = {}
    for parameter, database in (("TotesysSecretArn", source), ("WarehouseSecretArn", warehouse)):
        created = manager.create_secret(Name=f"{database}-{suffix}",
                                        SecretString=json.dumps(postgres.secret(database)))
        arns[parameter] = created["ARN"]
    template = iam.StackTemplate(iam.Stack(
        name=f"totes-lp-{suffix}", uuid=str(uuid.uuid4()), account=MOTO_ACCOUNT,
        parameters={**arns, "IngestDeleteSweepMinutes": "0"},
        physical_names={"LakeDatabase": f"totes_lake_lp_{suffix}"}))
    admin = enforcing_moto.client("s3", enforcing_moto.admin)
    for bucket in (template.physical_name("IngestBucket"),
                   template.physical_name("ProcessedBucket"),
                   template.physical_name("LakeBucket")):
        admin.create_bucket(Bucket=bucket,
                            CreateBucketConfiguration={"LocationConstraint": stack.REGION})
    boto3.client("glue", endpoint_url=moto_endpoint, region_name=stack.REGION,
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_database(
        DatabaseInput={"Name": template.physical_name("LakeDatabase")})
    admin_iam = enforcing_moto.client("iam", enforcing_moto.admin)
    users = {}
    for function, logical in FUNCTIONS.items():
        user = f"{function}-{suffix}"
        admin_iam.create_user(UserName=user)
        for name, document in template.role_policies(template.function_role(logical)).items():
            admin_iam.put_user_policy(UserName=user, PolicyName=name,
                                      PolicyDocument=json.dumps(document))
        key = admin_iam.create_access_key(UserName=user)["AccessKey"]
        users[function] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    calls, summaries = run_pipeline(template, enforcing_moto, users, moto_endpoint,
                                    lambda: postgres.connect(source))
    return LeastPrivilegeRun(template, enforcing_moto, users, calls, summaries)


# ---------------------------------------------------------------------- it works with them


@pytest.mark.slow
def test_every_function_runs_end_to_end_with_only_its_roles_policies(least_privilege):
    summaries = least_privilege.summaries
    first, second = summaries["ingest"]
    (dead,) = summaries["claimed"]  # committed by the ingest that found its claim taken
    assert first["complete"] and first["total_rows"] > 0 and second["complete"]
    assert second["deleted"]["sales_order"] == 1  # the second sweep compared with the first
    assert [summary["transformed"] for summary in summaries["transform"]] == [
        [first["manifest_key"]], [dead], [second["manifest_key"]]]
    loads = summaries["load"]
    assert [summary["last_loaded_manifest"] for summary in loads] == [
        first["manifest_key"], first["manifest_key"], second["manifest_key"]]
    assert loads[1]["manifests_loaded"] == 0 and loads[1]["freshness_seconds"] > 0
    assert loads[2]["deletions_loaded"]["fact_sales_order"] == 1
    (audit,) = summaries["audit"]
    assert audit["ok"] and audit["mismatches"] == 0
    assert audit["in_flight"] > 0  # the order cancelled after the last load: read in key lists
    # The lake too, read with the audit role's policies only: markers, publish records, tables.
    assert audit["lake"]["status"] == "compared" and audit["lake"]["mismatches"] == 0
    assert audit["lake"]["capture_point"] == audit["capture_point"]
    assert audit["lake"]["tables"]["fact_sales_order_current"]["lake_rows"] > 0
    publishes = summaries["publish"]
    assert [summary["last_published_manifest"] for summary in publishes] == [
        first["manifest_key"], second["manifest_key"]]
    assert [summary["manifests_published"] for summary in publishes] == [1, 2]
    assert publishes[1]["deletions_published"]["fact_sales_order"] == 1


def test_every_call_the_handlers_made_is_allowed_by_their_roles_policies(least_privilege):
    assert {call.service for call in least_privilege.calls} == {"s3", "secretsmanager", "glue"}
    for function in FUNCTIONS:
        requests = least_privilege.requests(function)
        assert requests, function
        denied = [request for request in requests
                  if not evaluate(request, least_privilege.policies(function)).allowed]
        assert denied == [], function


def test_what_aws_does_as_each_role_is_allowed_by_its_policies(least_privilege):
    for function in FUNCTIONS:
        for request in least_privilege.service_requests(function):
            assert evaluate(request, least_privilege.policies(function)).allowed, request


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_permission_a_role_grants_is_used_by_its_function(least_privilege, function):
    policies = least_privilege.policies(function)
    granted = {Grant(name, sid, action, resource)
               for name, document in policies.items()
               for sid, statement in statements(document) if statement["Effect"] == "Allow"
               for action in as_list(statement["Action"])
               for resource in as_list(statement["Resource"])}
    used = {grant for request in (least_privilege.requests(function)
                                  + least_privilege.service_requests(function))
            for grant in evaluate(request, policies).allowed_by}
    assert granted - used == set()


# ---------------------------------------------------------------------- the bucket policies


def bucket_decisions(run: LeastPrivilegeRun, context: dict[str, str] | None = None,
                     caller: Callable[[str], tuple[str, dict[str, Any]]] | None = None,
                     ) -> Iterator[Decision]:
    """Every recorded S3 request evaluated with its role's and its bucket's policies.

    ``caller`` (function -> principal ARN and its policies) makes the same requests as
    another principal instead; AWS sets ``aws:PrincipalArn`` on every request.
    """
    buckets = run.template.bucket_policies()
    for function in FUNCTIONS:
        principal, policies = (caller(function) if caller else (
            run.template.get_att(run.role(function), "Arn"), run.policies(function)))
        for request in run.requests(function):
            if request.action.startswith("s3:"):
                bucket = request.resource.split(":::")[1].split("/")[0]
                request = Request(request.action, request.resource, {
                    **request.context, "aws:PrincipalArn": principal, **(context or {})})
                yield evaluate(request, policies, {bucket: buckets[bucket]},
                               principal=principal)


def test_no_bucket_policy_denies_a_call_the_handlers_made(least_privilege):
    decisions = list(bucket_decisions(least_privilege))
    assert decisions
    assert [decision for decision in decisions if not decision.allowed] == []


#: what may put objects where, by the bucket policies: each writer's statement names it.
WRITER_STATEMENTS = {"DenyWritesButIngest", "DenyWritesButTransform", "DenyMarkersButOperators",
                     "DenyWritesButPublish"}


@pytest.mark.parametrize("other", ["another function's role", "an administrator"])
def test_every_write_the_handlers_made_is_denied_to_any_other_principal(least_privilege, other):
    everything = {"admin": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"}]}}
    others = dict(zip(FUNCTIONS, [*list(FUNCTIONS)[1:], list(FUNCTIONS)[0]]))

    def caller(function: str) -> tuple[str, dict[str, Any]]:
        if other == "an administrator":
            return f"arn:aws:iam::{MOTO_ACCOUNT}:role/Administrator", everything
        return least_privilege.template.get_att(least_privilege.role(others[function]),
                                                "Arn"), everything

    writes = [decision for decision in bucket_decisions(least_privilege, caller=caller)
              if decision.request.action == "s3:PutObject"]
    assert len({decision.request.resource.split("/")[0] for decision in writes}) == 3
    for decision in writes:
        assert {grant.sid for grant in decision.denied_by} & WRITER_STATEMENTS, decision


def test_the_same_calls_over_plain_http_are_denied_by_the_bucket_policies(least_privilege):
    decisions = list(bucket_decisions(least_privilege, {"aws:SecureTransport": "false"}))
    assert decisions
    for decision in decisions:
        assert "DenyInsecureTransport" in {grant.sid for grant in decision.denied_by}, decision


# ---------------------------------------------------------------------- and fails without them


@dataclass(frozen=True)
class Forbidden:
    """A call a function must not be able to make, built from the run's stack and objects."""

    function: str
    service: str
    operation: str
    params: Callable[[LeastPrivilegeRun], dict[str, Any]]


def extract(run: LeastPrivilegeRun) -> dict[str, str]:
    """An extract object in the ingestion bucket (row values: only transform reads them)."""
    return {"Bucket": run.ingest_bucket,
            "Key": run.first_key(run.ingest_bucket, under_table=True)}


def manifest(run: LeastPrivilegeRun) -> dict[str, str]:
    """An ingest manifest."""
    return {"Bucket": run.ingest_bucket,
            "Key": run.first_key(run.ingest_bucket, prefix=MANIFEST_PREFIX)}


def processed(run: LeastPrivilegeRun) -> dict[str, str]:
    """A Parquet object in the processed bucket."""
    return {"Bucket": run.processed_bucket,
            "Key": run.first_key(run.processed_bucket, under_table=True)}


def new_object(bucket: str) -> Callable[[LeastPrivilegeRun], dict[str, Any]]:
    """Parameters writing a new object into one of the stack's buckets."""
    return lambda run: {"Bucket": getattr(run, bucket), "Key": f"forbidden/{uuid.uuid4().hex}",
                        "Body": b"x", "IfNoneMatch": "*"}


def marker(run: LeastPrivilegeRun) -> dict[str, Any]:
    """Parameters writing an operator's marker: a person's decision, never a function's."""
    return {"Bucket": run.processed_bucket, "Key": f"{supersede.SKIP_MARKERS}load/{uuid.uuid4()}",
            "Body": b"{}", "IfNoneMatch": "*"}


def lake_object(run: LeastPrivilegeRun) -> dict[str, str]:
    """An object of the lake (a data or metadata file, or a publish record)."""
    return {"Bucket": run.lake_bucket, "Key": run.first_key(run.lake_bucket)}


def secret(parameter: str) -> Callable[[LeastPrivilegeRun], dict[str, Any]]:
    """Parameters reading the secret a stack parameter names."""
    return lambda run: {"SecretId": run.secret(parameter)}


def listing(prefix: str) -> Callable[[LeastPrivilegeRun], dict[str, Any]]:
    """Parameters listing the ingestion bucket under ``prefix``."""
    return lambda run: {"Bucket": run.ingest_bucket, "Prefix": prefix}


FORBIDDEN = {
    "ingest deletes an extract": Forbidden("ingest", "s3", "DeleteObject", extract),
    "ingest writes to the processed bucket": Forbidden("ingest", "s3", "PutObject",
                                                       new_object("processed_bucket")),
    "ingest reads an extract back": Forbidden("ingest", "s3", "GetObject", extract),
    "ingest lists a table's extracts": Forbidden("ingest", "s3", "ListObjectsV2",
                                                 listing("sales_order/")),
    "ingest reads the warehouse secret": Forbidden("ingest", "secretsmanager", "GetSecretValue",
                                                   secret("WarehouseSecretArn")),
    "transform deletes a processed object": Forbidden("transform", "s3", "DeleteObject",
                                                      processed),
    "transform writes a supersede marker": Forbidden("transform", "s3", "PutObject", marker),
    "load writes a supersede marker": Forbidden("load", "s3", "PutObject", marker),
    "transform writes to the ingestion bucket": Forbidden("transform", "s3", "PutObject",
                                                          new_object("ingest_bucket")),
    "transform lists a table's extracts": Forbidden("transform", "s3", "ListObjectsV2",
                                                    listing("sales_order/")),
    "transform reads the totesys secret": Forbidden("transform", "secretsmanager",
                                                    "GetSecretValue", secret("TotesysSecretArn")),
    "transform reads the warehouse secret": Forbidden("transform", "secretsmanager",
                                                      "GetSecretValue",
                                                      secret("WarehouseSecretArn")),
    "load writes to the processed bucket": Forbidden("load", "s3", "PutObject",
                                                     new_object("processed_bucket")),
    "load writes to the ingestion bucket": Forbidden("load", "s3", "PutObject",
                                                     new_object("ingest_bucket")),
    "load deletes a processed object": Forbidden("load", "s3", "DeleteObject", processed),
    "load reads an extract": Forbidden("load", "s3", "GetObject", extract),
    "load reads the totesys secret": Forbidden("load", "secretsmanager", "GetSecretValue",
                                               secret("TotesysSecretArn")),
    "audit reads an extract": Forbidden("audit", "s3", "GetObject", extract),
    "audit writes a manifest": Forbidden("audit", "s3", "PutObject", new_object("ingest_bucket")),
    "audit deletes a manifest": Forbidden("audit", "s3", "DeleteObject", manifest),
    "audit lists the manifests": Forbidden("audit", "s3", "ListObjectsV2",
                                           listing(MANIFEST_PREFIX)),
    "audit reads the processed bucket": Forbidden("audit", "s3", "GetObject", processed),
    "audit lists the processed bucket": Forbidden("audit", "s3", "ListObjectsV2", lambda run: {
        "Bucket": run.processed_bucket, "Prefix": MANIFEST_PREFIX}),
    "audit writes to the lake bucket": Forbidden("audit", "s3", "PutObject",
                                                 new_object("lake_bucket")),
    "audit deletes a lake object": Forbidden("audit", "s3", "DeleteObject", lake_object),
    "audit changes a lake table": Forbidden("audit", "glue", "UpdateTable", lambda run: {
        "DatabaseName": run.template.physical_name("LakeDatabase"),
        "TableInput": {"Name": "dim_staff"}}),
    "audit drops a lake table": Forbidden("audit", "glue", "DeleteTable", lambda run: {
        "DatabaseName": run.template.physical_name("LakeDatabase"), "Name": "dim_staff"}),
    "publish deletes a lake object": Forbidden("publish", "s3", "DeleteObject", lake_object),
    "publish writes to the processed bucket": Forbidden("publish", "s3", "PutObject",
                                                        new_object("processed_bucket")),
    "publish reads an extract": Forbidden("publish", "s3", "GetObject", extract),
    "publish reads the warehouse secret": Forbidden("publish", "secretsmanager",
                                                    "GetSecretValue", secret("WarehouseSecretArn")),
    "load writes to the lake bucket": Forbidden("load", "s3", "PutObject",
                                                new_object("lake_bucket")),
    "publish drops a lake table": Forbidden("publish", "glue", "DeleteTable", lambda run: {
        "DatabaseName": run.template.physical_name("LakeDatabase"), "Name": "dim_staff"}),
}


def moto_can_judge(request: Request, policies: dict[str, Any]) -> bool:
    """Whether moto refuses ``request`` too: it does when no statement allows it, conditions aside.

    moto ignores the conditions it cannot evaluate (all but StringEquals), so a call
    that only a condition forbids (a listing outside ``s3:prefix``) it would allow.
    """
    unconditional = {name: {**document, "Statement": [
        {key: value for key, value in statement.items() if key != "Condition"}
        for _, statement in statements(document)]} for name, document in policies.items()}
    return not evaluate(request, unconditional).allowed


@pytest.mark.parametrize("name", FORBIDDEN)
def test_a_forbidden_call_is_denied(least_privilege, name):
    forbidden = FORBIDDEN[name]
    params = forbidden.params(least_privilege)
    policies = least_privilege.policies(forbidden.function)
    requests = iam.requests_for_call(forbidden.service, forbidden.operation, params,
                                     stack=least_privilege.template.stack)
    assert not any(evaluate(request, policies).allowed for request in requests)
    if forbidden.service == "s3" and all(moto_can_judge(request, policies)
                                         for request in requests):
        client = least_privilege.s3(forbidden.function)
        with pytest.raises(ClientError) as refused:
            getattr(client, xform_name(forbidden.operation))(**params)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
