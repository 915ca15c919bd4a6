"""The deployed shape of the pipeline, checked from template.yaml without an AWS account.

Alarms, least privilege, the 30-minute latency arithmetic, bucket hardening and the
environment contract are properties a reviewer would otherwise have to re-check by eye
on every change; these tests make them fail loudly instead. IAM is checked on the
SAM-translated template so the roles SAM generates (the schedulers') are covered too.
"""
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from cfnlint.decode import cfn_yaml

from totes import audit, config, ingest, observability
from totes_local import cfn, stack

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]
GLOBALS = TEMPLATE["Globals"]["Function"]
FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction", "load": "LoadFunction"}
#: every deployed function: the three stages, the audit and publish (the lake) beside them.
ALL_FUNCTIONS = {**FUNCTIONS, "audit": "AuditFunction", "publish": "PublishFunction"}
ROLES = {"IngestFunction": "IngestRole", "TransformFunction": "TransformRole",
         "AuditFunction": "AuditRole", "PublishFunction": "PublishRole",
         "LoadFunction": "LoadRole"}
BUCKETS = ("IngestBucket", "ProcessedBucket")
LATENCY_PROMISE_SECONDS = 30 * 60
# The stack's own metrics namespace (tests/unit/test_template_scoping.py checks its use).
STACK_NAMESPACE = {"Fn::Sub": f"{observability.DEFAULT_NAMESPACE}/${{AWS::StackName}}"}

# Actions whose APIs offer no resource-level permissions, so Resource "*" is the only option.
STAR_RESOURCE_ACTIONS = {
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


TRANSLATED = cfn.translate(TEMPLATE)["Resources"]  # what SAM deploys, CodeUri faked
#: the shared layer's logical id once SAM has translated it (SAM adds a content hash).
(TRANSLATED_SHARED_LAYER,) = [name for name, body in TRANSLATED.items()
                              if body["Type"] == "AWS::Lambda::LayerVersion"]


def resources_of(kind: str, resources: dict[str, Any] = RESOURCES) -> dict[str, Any]:
    """Resources of one CloudFormation or SAM type, by logical id."""
    return {name: body for name, body in resources.items() if body["Type"] == kind}


def assert_optional_arn(name: str, condition: str, accepted: tuple[str, ...],
                        refused: tuple[str, ...]) -> None:
    """``name`` is empty by default, ``condition`` says it is set, and its pattern sorts ARNs."""
    parameter = PARAMETERS[name]
    assert parameter["Default"] == ""
    assert TEMPLATE["Conditions"][condition] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": name}, ""]}]}
    pattern = re.compile(parameter["AllowedPattern"])
    for value in ("", *accepted):
        assert pattern.fullmatch(value), value
    for value in refused:
        assert not pattern.fullmatch(value), value


def references(value: Any) -> set[str]:
    """Logical ids and parameters a template value refers to (Ref, GetAtt, Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else inner.split(".")[0])
            elif key == "Fn::Sub":
                text, local = (inner, {}) if isinstance(inner, str) else inner
                found.update(name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)
                             if name not in local)
                found |= references(list(local.values()))
            else:
                found |= references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= references(inner)
    return found


def branches(value: Any) -> Iterator[Any]:
    """Both branches of a Fn::If (minus AWS::NoValue), or the value itself."""
    if isinstance(value, dict) and "Fn::If" in value:
        for branch in value["Fn::If"][1:]:
            if branch != {"Ref": "AWS::NoValue"}:
                yield from branches(branch)
    else:
        yield value


def as_list(value: Any) -> list[Any]:
    """IAM allows a single string or a list; normalise to a list."""
    return value if isinstance(value, list) else [value]


def policy_documents(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM policy document in the template with the role(s) it applies to."""
    for name, body in resources.items():
        properties = body.get("Properties", {})
        if body["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                yield name, policy["PolicyDocument"]
        elif body["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy",
                              "AWS::IAM::Policy"):
            owners = references(properties.get("Roles", properties.get("RoleName")))
            yield ",".join(sorted(owners)) or name, properties["PolicyDocument"]


def allow_statements(resources: dict[str, Any] = TRANSLATED) -> list[tuple[str, dict]]:
    """Every Allow statement, each with the role it belongs to."""
    found = []
    for owner, document in policy_documents(resources):
        for statement in as_list(document["Statement"]):
            for branch in branches(statement):
                if branch.get("Effect") == "Allow":
                    found.append((owner, branch))
    return found


def role_statements(role: str) -> list[dict[str, Any]]:
    """The Allow statements a function role gets, including attached managed policies."""
    attached = references(RESOURCES[role]["Properties"].get("ManagedPolicyArns", []))
    return [statement for owner, statement in allow_statements()
            if role in owner.split(",") or owner in attached]


def granted(role: str, action: str) -> list[Any]:
    """Resources (as template values) on which ``role`` may perform ``action``."""
    return [resource for statement in role_statements(role)
            if action in as_list(statement["Action"])
            for resource in as_list(statement["Resource"])]


def alarms() -> dict[str, dict[str, Any]]:
    """Alarm properties by logical id."""
    return {name: body["Properties"]
            for name, body in resources_of("AWS::CloudWatch::Alarm").items()}


def alarms_on(namespace: str, metric: str, dimension_ref: str | None = None) -> list[dict]:
    """Alarms watching one metric, optionally of one resource (by its dimension's reference)."""
    return [alarm for alarm in alarms().values()
            if alarm.get("Namespace") == namespace and alarm.get("MetricName") == metric
            and (dimension_ref is None
                 or dimension_ref in references(alarm.get("Dimensions", [])))]


def rate_seconds(expression: str) -> int:
    """Seconds between runs of an EventBridge ``rate(N minutes)`` schedule."""
    match = re.fullmatch(r"rate\((\d+) minutes?\)", expression)
    assert match, f"schedule {expression!r} is not rate(N minutes)"
    return int(match[1]) * 60


def schedule_of(function: str) -> dict[str, Any]:
    """The ScheduleV2 event properties of a scheduled function."""
    events = RESOURCES[function]["Properties"]["Events"]
    (schedule,) = [event["Properties"] for event in events.values()
                   if event["Type"] == "ScheduleV2"]
    return schedule


def interval_seconds(function: str) -> int:
    """Default schedule interval of a scheduled function, from its parameter."""
    parameter = schedule_of(function)["ScheduleExpression"]["Ref"]
    return rate_seconds(PARAMETERS[parameter]["Default"])


def timeout_seconds(function: str) -> int:
    """A function's timeout."""
    return RESOURCES[function]["Properties"]["Timeout"]


def worst_case_latency_seconds() -> int:
    """Longest time from a committed source change to the warehouse, with no failures.

    A change committed just after an ingest run read its table waits for the next
    run to start: one interval, or longer if a run is still going (reserved
    concurrency 1), then that run's time. The manifest's S3 event starts transform at
    once. The processed manifest then waits for the next load to start and for it
    to finish. Each run is bounded by its timeout. docs/deploy.md has the prose.
    """
    ingest, transform, load = FUNCTIONS.values()
    return (max(interval_seconds(ingest), timeout_seconds(ingest)) + timeout_seconds(ingest)
            + timeout_seconds(transform)
            + max(interval_seconds(load), timeout_seconds(load)) + timeout_seconds(load))


def function_environment(function: str) -> dict[str, Any]:
    """The environment variables a function sets itself (Globals excluded)."""
    return RESOURCES[function]["Properties"]["Environment"]["Variables"]


# ---------------------------------------------------------------- alarms


@pytest.mark.parametrize("function", ALL_FUNCTIONS.values())
@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_every_function_has_errors_and_throttles_alarms_notifying_the_topic(function, metric):
    (alarm,) = alarms_on("AWS/Lambda", metric, function)
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert {"Ref": "AlertTopic"} in alarm["AlarmActions"]


@pytest.mark.parametrize("function", ALL_FUNCTIONS.values())
def test_duration_alarm_fires_at_80_percent_of_the_timeout(function):
    (alarm,) = alarms_on("AWS/Lambda", "Duration", function)
    assert alarm["Statistic"] == "Maximum"
    assert alarm["Threshold"] == 0.8 * timeout_seconds(function) * 1000


def test_every_alarm_has_a_description_and_notifies_the_topic_on_alarm_and_recovery():
    for name, alarm in alarms().items():
        assert len(alarm.get("AlarmDescription", "")) > 80, name
        # PutMetricAlarm refuses a longer one, and only when the stack creates the alarm.
        assert len(alarm["AlarmDescription"]) <= 1024, name
        assert "docs/runbook.md" in alarm["AlarmDescription"], name
        assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}], name
        assert alarm["OKActions"] == [{"Ref": "AlertTopic"}], name


def test_every_queue_has_an_alarm_on_visible_messages():
    for queue in resources_of("AWS::SQS::Queue"):
        (alarm,) = alarms_on("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue)
        assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


@pytest.mark.parametrize("function", ALL_FUNCTIONS.values())
def test_error_log_lines_of_each_function_are_counted_and_alarmed(function):
    log_group = RESOURCES[function]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    assert RESOURCES[log_group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    (log_filter,) = [body["Properties"]
                     for body in resources_of("AWS::Logs::MetricFilter").values()
                     if body["Properties"]["LogGroupName"] == {"Ref": log_group}]
    assert '$.level = "ERROR"' in log_filter["FilterPattern"]
    (metric,) = log_filter["MetricTransformations"]
    assert alarms_on(metric["MetricNamespace"], metric["MetricName"])


def test_a_stray_object_in_a_bucket_alarms_on_the_first_one():
    # The pipeline's roles never write a key off the layout: one that appears was put there.
    (alarm,) = alarms_on(STACK_NAMESPACE, "StrayObjects")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 300
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert '"Stray objects"' in alarm["AlarmDescription"]


def test_rows_stamped_in_the_future_alarm_on_the_first_one():
    (alarm,) = alarms_on(STACK_NAMESPACE, "IngestRowsStampedInFuture")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_replication_slot_lag_alarms_above_its_parameter_and_capture_defaults_to_snapshot():
    (alarm,) = alarms_on(STACK_NAMESPACE, "ReplicationSlotLagBytes")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert references(alarm["Threshold"]) == {"ReplicationSlotLagAlarmBytes"}
    assert alarm["Statistic"] == "Maximum" and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert ingest.SLOT_LAG_METRIC == alarm["MetricName"]
    mode = TEMPLATE["Parameters"]["CaptureMode"]
    assert mode["Default"] == "snapshot" and mode["AllowedValues"] == list(config.CAPTURE_MODES)


def test_a_snapshot_floor_held_for_an_hour_alarms_in_seconds_not_xids():
    (alarm,) = alarms_on(STACK_NAMESPACE, ingest.FLOOR_SECONDS_METRIC)
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Statistic"] == "Maximum" and alarm["Threshold"] == 3600
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # Ingest not running has its own alarm; a holder whose start is hidden is not guessed.
    assert alarm["TreatMissingData"] == "notBreaching"
    assert '"Orphaned prepared transactions"' in alarm["AlarmDescription"]
    assert not alarms_on(STACK_NAMESPACE, ingest.FLOOR_AGE_METRIC)


def test_a_source_resync_alarms_on_the_first_one():
    (alarm,) = alarms_on(STACK_NAMESPACE, ingest.RESYNC_METRIC)
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Statistic"] == "Sum" and alarm["TreatMissingData"] == "notBreaching"


def test_freshness_alarm_fires_after_30_minutes_and_when_the_loader_goes_silent():
    (alarm,) = alarms_on(STACK_NAMESPACE, "FreshnessSeconds")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Threshold"] == LATENCY_PROMISE_SECONDS
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "breaching"
    # A period shorter than the load interval would see gaps (missing = breaching) every time.
    assert alarm["Period"] * alarm["EvaluationPeriods"] >= interval_seconds("LoadFunction") + 300


def test_powertools_service_and_namespace_are_the_ones_the_code_defaults_to():
    variables = GLOBALS["Environment"]["Variables"]
    assert variables["POWERTOOLS_SERVICE_NAME"] == observability.DEFAULT_SERVICE
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == STACK_NAMESPACE
    assert variables["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}


def test_alert_email_subscription_is_skipped_when_no_address_is_given():
    (subscription,) = resources_of("AWS::SNS::Subscription").values()
    assert subscription["Condition"] == "HasAlertEmail"
    assert TEMPLATE["Conditions"]["HasAlertEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]}
    assert subscription["Properties"]["Protocol"] == "email"


# ---------------------------------------------------------------- dashboard


def dashboard() -> tuple[dict[str, Any], set[str]]:
    """The dashboard body as JSON (substitutions blanked) and the names it substitutes."""
    (board,) = resources_of("AWS::CloudWatch::Dashboard").values()
    body = board["Properties"]["DashboardBody"]["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}!]+)\}", body))
    return json.loads(re.sub(r"\$\{[^}!]+\}", "x", body)), names


def test_dashboard_shows_rows_per_table_for_every_stage_and_freshness():
    body, _ = dashboard()
    text = json.dumps(body)
    for metric in ("RowsIngested", "RowsOut", "RowsLoaded"):
        assert (f'SEARCH(\'{{\\"TotesPipeline/x\\",service,table}} MetricName=\\"{metric}\\"'
                in text)
    assert '"FreshnessSeconds"' in text


def test_dashboard_charts_the_lake_lag_and_the_snapshot_floor_its_alarms_watch():
    body, _ = dashboard()
    charted = {line[1] for widget in body["widgets"] if widget["type"] == "metric"
               for line in widget["properties"]["metrics"] if isinstance(line[0], str)}
    assert {"LakeLagSeconds", "SnapshotFloorAgeSeconds"} <= charted


def test_dashboard_alarm_widget_lists_every_alarm():
    body, names = dashboard()
    (widget,) = [widget for widget in body["widgets"] if widget["type"] == "alarm"]
    assert len(widget["properties"]["alarms"]) == len(alarms())
    assert {f"{name}.Arn" for name in alarms()} <= names


# ---------------------------------------------------------------- IAM


def test_no_statement_grants_wildcard_actions():
    for owner, statement in allow_statements():
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{owner} grants {action}"


def test_resource_star_only_for_apis_without_resource_level_permissions():
    for owner, statement in allow_statements():
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= STAR_RESOURCE_ACTIONS, owner


def test_functions_run_under_their_own_roles():
    for function, role in ROLES.items():
        assert RESOURCES[function]["Properties"]["Role"] == {"Fn::GetAtt": [role, "Arn"]}


@pytest.mark.parametrize("role, secret", [
    ("IngestRole", "TotesysSecretArn"), ("TransformRole", None), ("LoadRole", "WarehouseSecretArn"),
])
def test_each_function_can_read_only_its_own_secret(role, secret):
    resources = granted(role, "secretsmanager:GetSecretValue")
    assert resources == ([{"Ref": secret}] if secret else [])
    actions = {action for statement in role_statements(role)
               for action in as_list(statement["Action"])}
    assert {action for action in actions if action.startswith("secretsmanager:")} <= {
        "secretsmanager:GetSecretValue"}


@pytest.mark.parametrize("role, buckets", [
    ("IngestRole", {"IngestBucket"}), ("TransformRole", {"ProcessedBucket"}), ("LoadRole", set()),
    ("AuditRole", set()),
])
def test_each_function_writes_only_to_its_own_bucket(role, buckets):
    assert references(granted(role, "s3:PutObject")) == buckets


#: the one role the stack creates to change or empty the buckets (without BreakGlassRoleArn).
BUCKET_ADMIN_ROLE = "BucketAdminRole"


def test_nothing_may_delete_or_reconfigure_the_buckets():
    # ... but the break-glass role (tests/unit/test_template_immutability.py checks it).
    for owner, statement in allow_statements():
        if owner == BUCKET_ADMIN_ROLE:
            continue
        for action in as_list(statement["Action"]):
            if action.startswith("s3:"):
                assert action in {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}, owner


@pytest.mark.parametrize("role, prefixes", [
    ("IngestRole", ("_manifests", "_claims", "_sweeps")), ("LoadRole", ("_manifests",)),
])
def test_ingest_and_load_read_no_extract_and_list_only_the_manifests(role, prefixes):
    # Ingest's key sweep reads the previous sweep's key lists, and a run that loses the
    # successor claim reads the winner's; neither reads row values.
    reads = [resource for resource in granted(role, "s3:GetObject")
             if "IngestBucket" in references(resource)]
    assert reads == [{"Fn::Sub": f"${{IngestBucket.Arn}}/{prefix}/*"} for prefix in prefixes]
    (listing,) = [statement for statement in role_statements(role)
                  if statement["Action"] == "s3:ListBucket"
                  and "IngestBucket" in references(statement["Resource"])]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "_manifests/*"}}


def test_transform_lists_only_the_manifests_of_the_ingestion_bucket():
    (listing,) = [statement for statement in role_statements("TransformRole")
                  if statement["Action"] == "s3:ListBucket"
                  and "totes-ingest-" in json.dumps(statement["Resource"])]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "_manifests/*"}}


def ingest_bucket_name() -> dict[str, Any]:
    """The ingestion bucket's name expression (derived from the stack id, not chosen by CFN)."""
    return RESOURCES["IngestBucket"]["Properties"]["BucketName"]


def test_transform_names_the_ingestion_bucket_exactly_as_the_bucket_is_named():
    # The bucket's notification refers to the transform function, so the function and its
    # role referring back to the bucket resource would be a cycle; they repeat its name instead.
    for name in ("TransformFunction", "TransformRole"):
        assert "IngestBucket" not in references(TRANSLATED[name]["Properties"]), name
    name_template, variables = ingest_bucket_name()["Fn::Sub"]
    assert references(variables) == {"AWS::StackId"}
    arn = f"arn:${{AWS::Partition}}:s3:::{name_template}"
    assert function_environment("TransformFunction")["INGEST_BUCKET"] == ingest_bucket_name()
    reads = granted("TransformRole", "s3:GetObject")
    assert reads == [{"Fn::Sub": "${ProcessedBucket.Arn}/*"}, {"Fn::Sub": [arn + "/*", variables]}]
    assert {"Fn::Sub": [arn, variables]} in granted("TransformRole", "s3:ListBucket")


@pytest.mark.parametrize("role, log_group", [
    ("IngestRole", "IngestLogGroup"), ("TransformRole", "TransformLogGroup"),
    ("LoadRole", "LoadLogGroup"), ("AuditRole", "AuditLogGroup"),
])
def test_each_function_writes_logs_only_to_its_own_log_group(role, log_group):
    assert granted(role, "logs:PutLogEvents") == [{"Fn::GetAtt": [log_group, "Arn"]}]


# ---------------------------------------------------------------- triggers and latency


def test_defaults_keep_every_change_within_30_minutes_of_the_warehouse():
    assert worst_case_latency_seconds() <= LATENCY_PROMISE_SECONDS


def test_schedules_are_eventbridge_scheduler_with_retries_and_a_dead_letter_queue():
    for function in ("IngestFunction", "LoadFunction"):
        schedule = schedule_of(function)
        assert schedule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
        queue = references(schedule["DeadLetterConfig"])
        assert queue and all(RESOURCES[name]["Type"] == "AWS::SQS::Queue" for name in queue)


def test_schedule_parameters_accept_only_rate_expressions_the_arithmetic_understands():
    for parameter in ("IngestSchedule", "LoadSchedule"):
        pattern = PARAMETERS[parameter]["AllowedPattern"]
        assert re.fullmatch(pattern, PARAMETERS[parameter]["Default"])
        assert not re.fullmatch(pattern, "cron(0 * * * ? *)")
        rate_seconds(PARAMETERS[parameter]["Default"])


def test_every_function_reserves_one_concurrent_execution_only_when_asked_to():
    parameter = PARAMETERS["ReserveConcurrency"]
    assert parameter["Default"] == "false" and parameter["AllowedValues"] == ["true", "false"]
    assert TEMPLATE["Conditions"]["ReservesConcurrency"] == {
        "Fn::Equals": [{"Ref": "ReserveConcurrency"}, "true"]}
    for function in ALL_FUNCTIONS.values():
        assert RESOURCES[function]["Properties"]["ReservedConcurrentExecutions"] == {
            "Fn::If": ["ReservesConcurrency", 1, {"Ref": "AWS::NoValue"}]}


def test_no_reserved_concurrency_is_left_unconditional_anywhere():
    reserved = [name for name, body in TRANSLATED.items()
                if "ReservedConcurrentExecutions" in body.get("Properties", {})]
    assert sorted(reserved) == sorted(ALL_FUNCTIONS.values())
    for name in reserved:
        assert "Fn::If" in TRANSLATED[name]["Properties"]["ReservedConcurrentExecutions"]


def test_throttled_transform_events_alarm_only_when_throttling_lasts_half_an_hour():
    (alarm,) = alarms_on("AWS/Lambda", "Throttles", "TransformFunction")
    assert alarm["Period"] * alarm["EvaluationPeriods"] == 1800
    assert alarm["DatapointsToAlarm"] == alarm["EvaluationPeriods"]


def test_transform_retries_and_then_sends_the_event_to_a_failure_queue():
    # Its trigger (the ingestion bucket's notification): tests/unit/test_template_trigger.py.
    properties = RESOURCES["TransformFunction"]["Properties"]
    invoke = properties["EventInvokeConfig"]
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS", "Destination": {"Fn::GetAtt": ["TransformFailureQueue", "Arn"]}}
    assert granted("TransformRole", "sqs:SendMessage") == [
        {"Fn::GetAtt": ["TransformFailureQueue", "Arn"]}]


# ---------------------------------------------------------------- storage


@pytest.mark.parametrize("bucket", BUCKETS)
def test_buckets_block_public_access_encrypt_and_keep_versions(bucket):
    properties = RESOURCES[bucket]["Properties"]
    assert references(properties.get("BucketName")) <= {"AWS::StackId"}, "hard-coded name"
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert RESOURCES[bucket]["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_policies_deny_requests_without_tls(bucket):
    (policy,) = [body["Properties"] for body in resources_of("AWS::S3::BucketPolicy").values()
                 if body["Properties"]["Bucket"] == {"Ref": bucket}]
    (deny,) = [statement for statement in policy["PolicyDocument"]["Statement"]
               if statement["Sid"] == "DenyInsecureTransport"]
    assert deny["Effect"] == "Deny"
    assert deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]},
                                {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]


# ---------------------------------------------------------------- code, layers, environment


@pytest.mark.parametrize("name, function", ALL_FUNCTIONS.items())
def test_functions_are_python_311_handlers_in_their_folders(name, function):
    properties = RESOURCES[function]["Properties"]
    assert properties["CodeUri"] == f"functions/{name}/"
    assert (ROOT / "functions" / name / "requirements.txt").is_file()
    assert GLOBALS["Runtime"] == "python3.11"
    assert GLOBALS["Handler"] == "app.lambda_handler"
    assert "Tracing" not in GLOBALS  # no tracer in the code: see the comment in Globals
    assert "Layers" not in GLOBALS  # SAM would put them first (see below)


def test_shared_layer_is_built_by_the_makefile_in_shared_so_the_package_lands_in_python():
    layer = RESOURCES["SharedLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "shared/"
    # SAM runs `make build-SharedLayer` in ContentUri's Makefile (its python3.11 builder
    # cannot leave out the files the functions never read).
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert re.search(r"^build-SharedLayer:", (ROOT / "shared" / "Makefile").read_text(),
                     re.MULTILINE)
    assert (ROOT / "shared" / "totes" / "__init__.py").is_file()


@pytest.mark.parametrize("function, has_pandas", [
    ("IngestFunction", False), ("TransformFunction", True), ("LoadFunction", True),
    # The audit applies the transform's own mapping (totes.star), which imports pandas;
    # publish reads the star schema with pyarrow and writes it with pyiceberg.
    ("AuditFunction", True), ("PublishFunction", True),
])
def test_the_shared_layer_is_the_last_layer_of_every_deployed_function(function, has_pandas):
    # Lambda extracts layers in order into /opt, a later one overwriting an earlier one's
    # files: the pandas layer's own pg8000, scramp, python-dateutil... must not replace ours.
    layers = TRANSLATED[function]["Properties"]["Layers"]
    assert layers[-1] == {"Ref": TRANSLATED_SHARED_LAYER}
    assert len(layers) == (2 if has_pandas else 1)


@pytest.mark.parametrize("function, has_pandas", [
    ("IngestFunction", False), ("TransformFunction", True), ("LoadFunction", True),
    ("AuditFunction", True), ("PublishFunction", True),
])
def test_only_the_functions_that_import_pyarrow_carry_the_pandas_layer(function, has_pandas):
    # tests/unit/test_pandas_layer.py checks which pandas layer that is, region by region.
    layers = json.dumps(RESOURCES[function]["Properties"]["Layers"])
    assert ('"PandasLayerArn"' in layers) is has_pandas
    assert ("aws-sdk-pandas" in layers) is has_pandas


#: each database's secret and where it is, as the template passes them to a function.
TOTESYS_ENVIRONMENT = {"TOTESYS_SECRET_ID": "TotesysSecretArn", "TOTESYS_HOST": "TotesysHost",
                       "TOTESYS_PORT": "TotesysPort", "TOTESYS_DBNAME": "TotesysDatabase"}
WAREHOUSE_ENVIRONMENT = {"WAREHOUSE_SECRET_ID": "WarehouseSecretArn",
                         "WAREHOUSE_HOST": "WarehouseHost", "WAREHOUSE_PORT": "WarehousePort",
                         "WAREHOUSE_DBNAME": "WarehouseDatabase"}


@pytest.mark.parametrize("function, expected", [
    ("IngestFunction", {"INGEST_BUCKET": "IngestBucket", **TOTESYS_ENVIRONMENT,
                        "INGEST_DELETE_SWEEP_MINUTES": "IngestDeleteSweepMinutes",
                        "CAPTURE_MODE": "CaptureMode"}),
    # The transform's INGEST_BUCKET is the bucket's stack-derived name (see the naming test).
    ("TransformFunction", {"INGEST_BUCKET": "AWS::StackId", "PROCESSED_BUCKET": "ProcessedBucket"}),
    ("LoadFunction", {"INGEST_BUCKET": "IngestBucket", "PROCESSED_BUCKET": "ProcessedBucket",
                      **WAREHOUSE_ENVIRONMENT}),
    ("AuditFunction", {"INGEST_BUCKET": "IngestBucket", **TOTESYS_ENVIRONMENT,
                       **WAREHOUSE_ENVIRONMENT, "PROCESSED_BUCKET": "ProcessedBucket",
                       "LAKE_BUCKET": "LakeBucket", "LAKE_DATABASE": "LakeDatabase"}),
])
def test_environment_follows_the_design_contract(function, expected):
    variables = function_environment(function)
    assert {name: "".join(references(value)) for name, value in variables.items()} == expected
    assert set(variables) <= set(stack.pipeline_environment())


@pytest.mark.parametrize("variable, reader", [
    ("INGEST_BUCKET", config.ingest_bucket), ("PROCESSED_BUCKET", config.processed_bucket),
    ("TOTESYS_SECRET_ID", config.totesys_secret_id),
    ("WAREHOUSE_SECRET_ID", config.warehouse_secret_id),
])
def test_the_code_reads_the_variables_the_template_sets(monkeypatch, variable, reader):
    monkeypatch.setenv(variable, "from-the-template")
    assert reader() == "from-the-template"


@pytest.mark.parametrize("database", config.DATABASES)
@pytest.mark.parametrize("field", config.CONNECTION_FIELDS)
def test_where_each_database_is_is_an_optional_parameter_the_code_reads(
        monkeypatch, database, field):
    parameter = PARAMETERS[database.parameter(field)]
    assert parameter["Type"] == "String" and parameter["Default"] == ""
    value = "6543" if field == "port" else "from-the-template"
    monkeypatch.setenv(database.variable(field), value)
    assert config.connection_fields(database)[field] == value


def test_vpc_is_optional_and_off_by_default():
    condition, vpc, _ = GLOBALS["VpcConfig"]["Fn::If"]
    assert condition == "HasVpc"
    assert vpc == {"SubnetIds": {"Ref": "SubnetIds"},
                   "SecurityGroupIds": {"Ref": "SecurityGroupIds"}}
    assert PARAMETERS["SubnetIds"]["Default"] == ""


@pytest.mark.parametrize("parameter, longest_minutes", [("IngestSchedule", 5),
                                                        ("LoadSchedule", 12)])
def test_schedule_parameters_refuse_intervals_that_break_the_30_minute_promise(
        parameter, longest_minutes):
    pattern = re.compile(PARAMETERS[parameter]["AllowedPattern"])
    assert pattern.match("rate(1 minute)")
    allowed = [n for n in range(2, 60) if pattern.match(f"rate({n} minutes)")]
    assert allowed == list(range(2, longest_minutes + 1))


def test_an_alarm_fires_when_ingest_stops_running_even_if_nothing_fails():
    (alarm,) = alarms_on(STACK_NAMESPACE, "IngestRuns")
    assert alarm["ComparisonOperator"] == "LessThanThreshold" and alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["Period"] * alarm["EvaluationPeriods"] >= 3 * interval_seconds("IngestFunction")


# ---------------------------------------------------------------- the audit


def test_the_audit_alarms_on_any_mismatch_it_publishes():
    alarm = alarms()["AuditMismatchAlarm"]
    assert alarm in alarms_on(STACK_NAMESPACE, "AuditMismatches")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # The last audit's verdict stands until the next one, however rarely the audit runs.
    assert alarm["Statistic"] == "Maximum" and alarm["TreatMissingData"] == "ignore"
    assert '"Audit mismatches"' in alarm["AlarmDescription"]
    # An audit that fails is alarmed too: a mismatch alarm that cannot fire must not look clean.
    (errors,) = alarms_on("AWS/Lambda", "Errors", "AuditFunction")
    assert '"Audit errors"' in errors["AlarmDescription"]


def resolve(value: Any, parameters: dict[str, str]) -> Any:
    """A value with its Ref, Join, Split, Select, Sub and If (Equals, Not) worked out as CFN does.

    An Fn::If decides its condition from the template's Conditions and ``parameters``.
    """
    if isinstance(value, dict) and len(value) == 1:
        (function, argument), = value.items()
        if function == "Ref":
            return parameters[argument]
        if function == "Fn::Select":
            return resolve(argument[1], parameters)[int(argument[0])]
        if function == "Fn::Equals":
            return resolve(argument[0], parameters) == resolve(argument[1], parameters)
        if function == "Fn::Not":
            return not resolve(argument[0], parameters)
        if function == "Fn::If":
            condition = resolve(TEMPLATE["Conditions"][argument[0]], parameters)
            return resolve(argument[1] if condition else argument[2], parameters)
        if function == "Fn::Join":
            return argument[0].join(resolve(argument[1], parameters))
        if function == "Fn::Split":
            return resolve(argument[1], parameters).split(argument[0])
        if function == "Fn::Sub":
            text, variables = argument
            for name, variable in variables.items():
                text = text.replace("${" + name + "}", resolve(variable, parameters))
            return text
    assert isinstance(value, (str, int)), value
    return value


@pytest.mark.parametrize("schedule, interval", [
    ("rate(1 hour)", 3600), ("rate(2 hours)", 7200), ("rate(24 hours)", 86400),
    ("rate(10 minutes)", 600), ("rate(45 minutes)", 2700), ("rate(99 minutes)", 5940)])
def test_the_lake_lag_alarm_fires_past_two_publish_intervals_and_30_minutes(schedule, interval):
    assert re.fullmatch(PARAMETERS["PublishSchedule"]["AllowedPattern"], schedule)
    alarm = alarms()["LakeLagAlarm"]
    lag, beyond = alarm["Metrics"]
    assert lag["MetricStat"]["Metric"] == {
        "Namespace": STACK_NAMESPACE, "MetricName": audit.LAKE_LAG_METRIC,
        "Dimensions": [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]}
    assert lag["MetricStat"]["Stat"] == "Maximum" and not lag["ReturnData"]
    expression = resolve(beyond["Expression"], {"PublishSchedule": schedule})
    count, seconds = re.fullmatch(r"lag - 2 \* \((\d+)\*(\d+)\)", expression).groups()
    assert int(count) * int(seconds) == interval and beyond["ReturnData"]
    assert alarm["Threshold"] == 1800 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # The last audit's measurement stands until the next one, however rarely the audit runs.
    assert alarm["TreatMissingData"] == "ignore"
    assert '"Lake lag"' in alarm["AlarmDescription"]


@pytest.mark.parametrize("schedule, interval", [
    ("rate(10 minutes)", 600), ("rate(59 minutes)", 3540), ("rate(1 hour)", 3600),
    ("rate(60 minutes)", 3600), ("rate(99 minutes)", 5940), ("rate(2 hours)", 7200),
    ("rate(24 hours)", 86400)])
def test_an_audit_that_stops_running_alarms_past_its_schedule_and_within_hours_at_hourly(
        schedule, interval):
    alarm = alarms()["AuditNotRunningAlarm"]
    # The run's AuditMismatches (no table dimension) is published by every completed audit.
    assert alarm in alarms_on(STACK_NAMESPACE, "AuditMismatches")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": observability.DEFAULT_SERVICE}]
    assert alarm["Statistic"] == "SampleCount" and alarm["TreatMissingData"] == "breaching"
    assert alarm["Threshold"] == 1 and alarm["ComparisonOperator"] == "LessThanThreshold"
    pattern = re.compile(PARAMETERS["AuditSchedule"]["AllowedPattern"])
    assert pattern.fullmatch(schedule) and not pattern.fullmatch("rate(25 hours)")
    periods = resolve(alarm["DatapointsToAlarm"], {"AuditSchedule": schedule})
    assert periods == resolve(alarm["EvaluationPeriods"], {"AuditSchedule": schedule})
    window = alarm["Period"] * periods
    # Every hour of the window empty takes a gap between audits longer than the schedule plus
    # a run at its timeout (600 s), a delivery at its latest (600 s) and the hour being filled,
    # so a slow audit never alarms; within what CloudWatch evaluates (seven days at 1 h).
    assert window >= interval + 600 + 600 + 3600 and window <= 7 * 86400
    assert alarm["Period"] == 3600 and (window <= 4 * 3600) == (interval < 7200)
    assert '"Audit not running"' in alarm["AlarmDescription"]


def test_the_audit_runs_on_its_own_schedule_hourly_by_default():
    schedule = schedule_of("AuditFunction")
    assert schedule["ScheduleExpression"] == {"Ref": "AuditSchedule"}
    parameter = PARAMETERS["AuditSchedule"]
    assert parameter["Default"] == "rate(1 hour)"
    pattern = re.compile(parameter["AllowedPattern"])
    assert all(pattern.fullmatch(text) for text in (
        "rate(1 hour)", "rate(6 hours)", "rate(24 hours)", "rate(30 minutes)"))
    assert not any(pattern.fullmatch(text) for text in (
        "rate(1 minute)", "rate(5 minutes)", "rate(25 hours)", "cron(0 * * * ? *)"))


def test_the_audit_reads_both_secrets_the_capture_points_and_the_lake_and_writes_nothing():
    assert granted("AuditRole", "secretsmanager:GetSecretValue") == [
        {"Ref": "TotesysSecretArn"}, {"Ref": "WarehouseSecretArn"}]
    reads = granted("AuditRole", "s3:GetObject")
    assert reads == [*({"Fn::Sub": f"${{IngestBucket.Arn}}/{prefix}/*"}
                       for prefix in ("_manifests", "_sweeps")),
                     {"Fn::Sub": "${ProcessedBucket.Arn}/_supersede/*"},
                     {"Fn::Sub": "${LakeBucket.Arn}/*"}]
    listings = [(statement["Resource"]["Fn::GetAtt"][0], statement["Condition"])
                for statement in role_statements("AuditRole")
                if "s3:ListBucket" in as_list(statement["Action"])]
    assert listings == [
        ("ProcessedBucket", {"StringLike": {"s3:prefix": "_supersede/*"}}),
        ("LakeBucket", {"StringLike": {"s3:prefix": ["_manifests/*", "_revisions/*"]}}),
        # each lake table's data files (tables at <bucket>/<table>: the database's LocationUri)
        ("LakeBucket", {"StringLike": {"s3:prefix": "*/data/*"}})]
    actions = {action for statement in role_statements("AuditRole")
               for action in as_list(statement["Action"]) if not action.startswith("ec2:")}
    assert actions == {"logs:CreateLogStream", "logs:PutLogEvents",
                       "secretsmanager:GetSecretValue", "s3:GetObject", "s3:ListBucket",
                       "glue:GetTable"}
    (tables,) = [statement["Resource"] for statement in role_statements("AuditRole")
                 if "glue:GetTable" in as_list(statement["Action"])]
    assert [resource["Fn::Sub"].rsplit(":", 1)[1] for resource in tables] == [
        "catalog", "database/${LakeDatabase}", "table/${LakeDatabase}/*"]


def test_the_audit_and_publish_are_built_with_the_lakes_pinned_dependencies():
    for function in ("AuditFunction", "PublishFunction"):
        assert RESOURCES[function]["Metadata"]["BuildMethod"] == "makefile"
    recipe = (ROOT / "functions" / "audit" / "Makefile").read_text()
    assert re.search(r"^build-AuditFunction:", recipe, re.MULTILINE)
    assert '"$(HERE)../publish/Makefile" lake-function' in recipe
    assert re.search(r"^build-PublishFunction: lake-function$",
                     (ROOT / "functions" / "publish" / "Makefile").read_text(), re.MULTILINE)


def test_the_dashboard_charts_audit_mismatches_per_table_and_rows_in_flight():
    body, _ = dashboard()
    text = json.dumps(body)
    assert 'MetricName=\\\"AuditMismatches\\\"' in text
    assert '"AuditInFlight"' in text


@pytest.mark.parametrize("name", ["TotesysPort", "WarehousePort"])
def test_a_port_parameter_takes_only_empty_or_1_to_65535(name):
    pattern = re.compile(PARAMETERS[name]["AllowedPattern"])
    accepted = {text for text in ["", *map(str, range(0, 100_000)), "05432", "-1", "5432 ", "x"]
                if pattern.fullmatch(text)}
    assert accepted == {"", *map(str, range(1, 65_536))}


# A fully qualified name's final dot and private DNS's underscores are what resolvers accept;
# an IPv4 address with a final dot is not one (getaddrinfo refuses it: it would fail every run).
HOSTS_ACCEPTED = ("", "totesys.abc123xyz.eu-west-2.rds.amazonaws.com", "localhost", "10.0.3.17",
                  "fd00:ec2::254", "::1", "db-1", "db.example.internal.", "my_db.internal",
                  "_pg.db.internal", "db.", "db-1.internal.")
HOSTS_REFUSED = ("postgres://etl:pw@db.example.com:5432/totesys", "db.example.com:5432",
                 "etl@db.example.com", " db.example.com", "db.example.com ", "db example.com",
                 "db.example.com/totesys", "-db", ".", "db..", "db.example.com.:5432",
                 "db.internal.\n", "10.0.1.5.", "127.0.0.1.", "-db.", "::1.", "fd00:ec2::23.",
                 "dead:5432")


@pytest.mark.parametrize("name", ["TotesysHost", "WarehouseHost"])
def test_a_host_parameter_takes_a_bare_host_name_or_address_not_a_url(name):
    pattern = re.compile(PARAMETERS[name]["AllowedPattern"])
    assert [host for host in HOSTS_ACCEPTED if not pattern.fullmatch(host)] == []
    assert [host for host in HOSTS_REFUSED if pattern.fullmatch(host)] == []


@pytest.mark.parametrize("name", ["TotesysDatabase", "WarehouseDatabase"])
def test_a_database_parameter_refuses_white_space_around_the_name(name):
    pattern = re.compile(PARAMETERS[name]["AllowedPattern"])
    assert all(pattern.fullmatch(value) for value in ("", "totesys", "x", "my db"))
    assert not any(pattern.fullmatch(value) for value in (" totesys", "totesys\n", " "))


def test_object_lock_retention_is_bounded_by_s3s_hundred_years():
    assert PARAMETERS["ObjectLockRetentionDays"]["MaxValue"] == 36_500
