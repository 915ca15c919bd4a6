"""Sample events and deploy settings agree with what AWS and the template will really send.

``sam local invoke -e events/...`` is only a useful rehearsal if the sample events have
the shape the deployed triggers produce, and ``sam deploy --guided`` only asks for the
secrets if samconfig.toml does not answer for the user.
"""
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from cfnlint.decode import cfn_yaml

from totes import keys
from totes_local import runner

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
TEMPLATE = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
RESOURCES = TEMPLATE["Resources"]


def event(name: str) -> dict:
    """One sample event, parsed."""
    return json.loads((EVENTS / name).read_text())


def scheduler_input(function: str) -> dict:
    """The payload the template's EventBridge schedule sends, placeholders filled in."""
    (schedule,) = [entry["Properties"] for entry in
                   RESOURCES[function]["Properties"]["Events"].values()
                   if entry["Type"] == "ScheduleV2"]
    return json.loads(re.sub(r"\$\{AWS::\w+\}", "x", schedule["Input"]["Fn::Sub"]))


def test_every_sample_event_is_valid_json():
    names = sorted(path.name for path in EVENTS.glob("*.json"))
    assert names == ["audit_scheduled.json", "ingest_scheduled.json", "load_scheduled.json",
                     "publish_scheduled.json", "transform_s3_manifest.json"]
    for name in names:
        assert isinstance(event(name), dict)


@pytest.mark.parametrize("name, function", [
    ("ingest_scheduled.json", "IngestFunction"), ("load_scheduled.json", "LoadFunction"),
    ("publish_scheduled.json", "PublishFunction"),
])
def test_scheduled_samples_have_the_shape_the_schedule_sends(name, function):
    sample = event(name)
    assert sample["source"] == "aws.scheduler"
    assert sample["detail-type"] == "Scheduled Event"
    assert set(sample) == set(scheduler_input(function))
    assert set(sample) == set(runner.scheduled_event(function))


def test_transform_sample_is_an_s3_object_created_record_for_an_ingest_manifest():
    (record,) = event("transform_s3_manifest.json")["Records"]
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"].startswith("ObjectCreated:")
    key = unquote_plus(record["s3"]["object"]["key"])
    assert keys.parse_manifest_key(key) is not None
    (trigger,) = (RESOURCES["IngestBucket"]["Properties"]["NotificationConfiguration"]
                  ["LambdaConfigurations"])
    rules = {rule["Name"]: rule["Value"] for rule in trigger["Filter"]["S3Key"]["Rules"]}
    assert key.startswith(rules["prefix"]) and key.endswith(rules["suffix"])
    assert record["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{record['s3']['bucket']['name']}"


def test_transform_sample_matches_the_local_runner_record_shape():
    (sample,) = event("transform_s3_manifest.json")["Records"]
    (local,) = runner.s3_object_created_event("bucket", "_manifests/x.json")["Records"]
    assert set(local) <= set(sample)
    assert set(local["s3"]["object"]) <= set(sample["s3"]["object"])


def assert_default_environment_is_account_free(settings: dict) -> None:
    """The [default] environment: London, the project's deploy settings, no user answers."""
    default = settings["default"]
    assert default["global"]["parameters"] == {"stack_name": "totes-pipeline",
                                               "region": "eu-west-2"}
    deploy = default["deploy"]["parameters"]
    assert "CAPABILITY_IAM" in deploy["capabilities"]
    assert deploy["resolve_s3"] is True and deploy["confirm_changeset"] is True
    assert "parameter_overrides" not in deploy


def test_samconfig_deploys_to_london_and_leaves_the_secrets_to_the_guided_prompt():
    settings = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert_default_environment_is_account_free(settings)
    required = {name for name, parameter in TEMPLATE["Parameters"].items()
                if "Default" not in parameter}
    assert required == {"TotesysSecretArn", "WarehouseSecretArn"}


def test_the_user_environment_starts_as_the_default_one_without_answers():
    settings = tomllib.loads((ROOT / "samconfig.toml").read_text())
    user, default = settings["user"], settings["default"]
    assert user["global"] == default["global"]
    assert user["deploy"] == default["deploy"]


def test_saving_guided_answers_in_the_user_environment_leaves_default_untouched(tmp_path):
    # What `sam deploy --guided --config-env user` does when told to save, through SAM's own
    # config writer: the answers land in [user], and [default] still passes its checks.
    from samcli.lib.config.samconfig import SamConfig

    (tmp_path / "samconfig.toml").write_text((ROOT / "samconfig.toml").read_text())
    config = SamConfig(str(tmp_path))
    answers = ("TotesysSecretArn=arn:aws:secretsmanager:eu-west-2:123456789012:secret:t-AbCdEf "
               "AlertEmail=ops@example.com")
    config.put(["deploy"], "parameters", "parameter_overrides", answers, env="user")
    config.flush()
    saved = tomllib.loads((tmp_path / "samconfig.toml").read_text())
    assert saved["user"]["deploy"]["parameters"]["parameter_overrides"] == answers
    assert_default_environment_is_account_free(saved)
    assert saved["default"] == tomllib.loads((ROOT / "samconfig.toml").read_text())["default"]


def test_the_docs_deploy_with_the_user_environment():
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "sam deploy --guided --config-env user" in deploy_doc
    assert "sam deploy --config-env user" in deploy_doc
    assert "sam deploy --guided\n" not in deploy_doc


def test_the_deploy_guide_lists_every_parameter_with_its_default():
    # A parameter the guide's table leaves out, or a default it misstates, is one a deployer
    # meets only in the guided prompt (as BreakGlassRoleArn must be chosen before deploying).
    rows = {name: line for line in (ROOT / "docs" / "deploy.md").read_text().splitlines()
            if line.startswith("| `") for name in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert set(TEMPLATE["Parameters"]) <= set(rows)
    for name in ("ObjectLockRetentionDays", "IngestSchedule", "LoadSchedule", "LogRetentionDays"):
        default = str(TEMPLATE["Parameters"][name]["Default"])
        assert f"| `{default}` |" in rows[name] or f"| {default} |" in rows[name], name
