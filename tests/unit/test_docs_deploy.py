"""The first-deploy docs say what the template and SAM really do.

docs/deploy.md lists `sam deploy --guided`'s prompts in order (SAM's own questions and every
template parameter), and its cost section counts what the template creates; samconfig.toml's
comments list every parameter with its default. A parameter added to the template, an alarm
added or removed, a memory size or a schedule changed without the docs fails here. The prompts
come from SAM's own guided-deploy code, run with its questions answered by their defaults.
"""
import functools
import json
import re
import tomllib
from pathlib import Path

import pytest

from totes import config, db
from totes_local import cfn

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = cfn.load()
PARAMETERS = TEMPLATE["Parameters"]
RESOURCES = TEMPLATE["Resources"]
GUIDE = (ROOT / "docs" / "deploy.md").read_text()
SAMCONFIG = (ROOT / "samconfig.toml").read_text()
FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction",
             "load": "LoadFunction", "audit": "AuditFunction", "publish": "PublishFunction"}
MINUTES_A_MONTH = 30 * 24 * 60
#: distinct EMF metrics (name and dimensions) the functions publish, as bench_usage measures
EMF_METRICS = 120


def section(title: str, level: int = 2) -> str:
    """The text of one section of deploy.md, up to the next heading of the same level or above."""
    heading = "#" * level + " " + title + "\n"
    assert GUIDE.count(heading) == 1, title
    rest = GUIDE.split(heading, 1)[1]
    return re.split(rf"^#{{1,{level}}} ", rest, maxsplit=1, flags=re.MULTILINE)[0]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, as lists of stripped cells."""
    rows = [line.strip().strip("|").split("|") for line in text.splitlines()
            if line.startswith("|") and not re.match(r"^\|[-:| ]+\|$", line.strip())]
    return [[cell.strip() for cell in row] for row in rows]


def sams_guided_prompts(monkeypatch) -> list[tuple[str, object]]:
    """Every (question, default) SAM's guided deploy asks, in order, for the [user] settings."""
    from samcli.commands._utils.template import get_template_parameters
    from samcli.commands.deploy import guided_context

    asked: list[tuple[str, object]] = []

    def answer(text, default=None, **_):
        asked.append((re.sub(r"\033\[\d+m", "", text).strip(), default))
        return default

    monkeypatch.setattr(guided_context, "prompt", answer)
    monkeypatch.setattr(guided_context, "confirm", answer)
    monkeypatch.setattr(guided_context, "manage_stack", lambda **_: "artefacts-bucket")
    monkeypatch.setattr(guided_context, "print_managed_s3_bucket_info", lambda *_: None)
    # SAM asks for image repositories only for image functions, and the template has none;
    # its check would call AWS (the companion stack), so it is answered here.
    assert not [name for name, body in RESOURCES.items()
                if body.get("Properties", {}).get("PackageType") == "Image"]
    monkeypatch.setattr(guided_context.GuidedContext, "prompt_image_repository",
                        lambda *_, **__: {})
    user = tomllib.loads(SAMCONFIG)["user"]
    deploy = user["deploy"]["parameters"]
    template = str(ROOT / "template.yaml")
    context = guided_context.GuidedContext(
        template_file=template, stack_name=user["global"]["parameters"]["stack_name"],
        s3_bucket=None, image_repository=None, image_repositories=None,
        s3_prefix=deploy["s3_prefix"], resolve_s3=True,
        region=user["global"]["parameters"]["region"],
        confirm_changeset=deploy["confirm_changeset"], capabilities=[deploy["capabilities"]],
        parameter_overrides={}, config_section="parameters", config_env="user",
        config_file="samconfig.toml", disable_rollback=False)
    context.guided_prompts(get_template_parameters(template))
    return asked


def documented_prompts() -> list[list[str]]:
    """The rows of deploy.md's prompt table: number, prompt, default, trial, production."""
    rows = table_rows(section("The guided deploy, prompt by prompt", level=3))
    assert rows[0][:3] == ["#", "prompt", "default offered"]
    return rows[1:]


def offered(default: object) -> str:
    """How the table writes the default SAM offers."""
    if isinstance(default, bool):
        return "`Y`" if default else "`N`"
    return f"`{default}`" if default else "empty"


def test_the_prompt_table_is_every_question_sam_asks_in_its_order(monkeypatch):
    asked = sams_guided_prompts(monkeypatch)
    rows = documented_prompts()
    assert [row[0] for row in rows] == [str(number) for number in range(1, len(rows) + 1)]
    assert [row[1].strip("`") for row in rows] == [question for question, _ in asked]
    parameters = [question.removeprefix("Parameter ") for question, _ in asked
                  if question.startswith("Parameter ")]
    assert parameters == list(PARAMETERS)


def test_the_prompt_table_shows_the_default_sam_offers(monkeypatch):
    for row, (question, default) in zip(documented_prompts(), sams_guided_prompts(monkeypatch)):
        assert row[2].startswith(offered(default)), (question, row[2])
        assert row[3] and row[4], f"{question}: say what a trial and a production stack answer"


def test_samconfig_comments_list_every_parameter_with_its_default():
    comments = {match[1]: match[2] for match in
                re.finditer(r"^#\s+(\w+)\s+(.*)$", SAMCONFIG, re.MULTILINE)}
    for name, parameter in PARAMETERS.items():
        assert name in comments, f"samconfig.toml's comments leave out {name}"
        if "Default" in parameter:
            default = str(parameter["Default"]) or '""'
            assert comments[name].startswith(f"[{default}]"), (name, comments[name])
        else:
            assert not comments[name].startswith("["), f"{name} has no default"


def count(kind: str) -> int:
    """How many resources of one CloudFormation type the template declares."""
    return sum(body["Type"] == kind for body in RESOURCES.values())


#: the cost section, its line breaks as spaces
COSTS = " ".join(section("What it costs per month").split())


@pytest.mark.parametrize("wording, kind", [
    ("alarms", "AWS::CloudWatch::Alarm"), ("dashboard", "AWS::CloudWatch::Dashboard"),
    ("log groups", "AWS::Logs::LogGroup"), ("metric filters", "AWS::Logs::MetricFilter"),
])
def test_the_cost_section_counts_what_the_template_creates(wording, kind):
    quoted = re.search(rf"\*\*(\d+) {wording}\*\*", COSTS)
    assert quoted, f"the cost section should say how many {wording} the template creates"
    assert int(quoted[1]) == count(kind), wording


def test_the_cost_section_prices_the_templates_alarms_and_metric_filters():
    alarms = count("AWS::CloudWatch::Alarm")
    assert f"alarms: {alarms} × $0.10 = **${alarms * 0.10:.2f}**" in COSTS
    filters = count("AWS::Logs::MetricFilter")
    # EMF metrics: what benchmarks/bench_usage.py counts (120 with ingest's SourceResyncs,
    # SnapshotFloorAge and SnapshotFloorAgeSeconds, the audit's LakeLagSeconds and publish's
    # RowsPublished per lake table); re-run it when a metric or a dimension is added or removed.
    assert f"**{EMF_METRICS}** distinct metrics" in COSTS
    assert f"({EMF_METRICS} + {filters}) × $0.30" in COSTS


def test_the_cost_section_prices_two_secrets_and_three_schedules():
    secrets = [name for name in PARAMETERS if name.endswith("SecretArn")]
    assert f"{len(secrets)} secrets × $0.40" in COSTS
    schedules = sum(event["Type"] == "ScheduleV2" for body in RESOURCES.values()
                    for event in body.get("Properties", {}).get("Events", {}).values())
    assert f"{schedules} schedules:" in COSTS


def schedule_minutes(parameter: str) -> int:
    """The default schedule of ``parameter`` in minutes."""
    number, unit = re.fullmatch(r"rate\((\d+) (minute|hour)s?\)",
                                PARAMETERS[parameter]["Default"]).groups()
    return int(number) * (60 if unit == "hour" else 1)


def test_the_lambda_cost_table_uses_the_templates_memory_and_schedules():
    rows = {row[0]: row for row in table_rows(section("Lambda", level=3))}
    runs = {"ingest": MINUTES_A_MONTH // schedule_minutes("IngestSchedule"),
            "load": MINUTES_A_MONTH // schedule_minutes("LoadSchedule"),
            "audit": MINUTES_A_MONTH // schedule_minutes("AuditSchedule"),
            "publish": MINUTES_A_MONTH // schedule_minutes("PublishSchedule")}
    runs["transform"] = runs["ingest"]  # one manifest, so one S3 event, per ingest run
    total = 0.0
    for function, resource in FUNCTIONS.items():
        _, invocations, duration, memory, gb_seconds = rows[function]
        megabytes = RESOURCES[resource]["Properties"]["MemorySize"]
        assert int(invocations.replace(",", "")) == runs[function], function
        assert memory.startswith(f"{megabytes} MB"), function
        seconds = int(duration.removesuffix(" s"))
        expected = runs[function] * seconds * megabytes / 1024
        assert int(gb_seconds.replace(",", "")) == round(expected), function
        total += expected
    assert rows["total"][1] == f"{sum(runs.values()):,}"
    assert rows["total"][4] == f"{round(total):,}"


def scheduled_runs() -> dict[str, int]:
    """How many times a month (30 days) each scheduled function runs at the default schedules."""
    return {function: MINUTES_A_MONTH // schedule_minutes(f"{function.title()}Schedule")
            for function in FUNCTIONS if f"{function.title()}Schedule" in PARAMETERS}


def test_the_sizing_section_counts_every_scheduled_invocation():
    sizing = " ".join(section("Sizing").split())
    quoted = re.search(r"makes ([\d,]+) scheduled invocations a month \(in 30 days: ([^)]*)\)",
                       sizing)
    assert quoted, "the sizing section should say how many scheduled invocations a month"
    runs = scheduled_runs()
    listed = {name: int(number.replace(",", ""))
              for number, name in re.findall(r"(\d[\d,]*) (\w+)", quoted[2])}
    assert listed == runs
    assert int(quoted[1].replace(",", "")) == sum(runs.values())


def test_the_first_run_section_names_every_functions_log_group():
    first_run = " ".join(section("4. The dashboard and the first run").split())
    quoted = re.search(r"The log groups are (.*?)\.(?: |$)", first_run)
    assert quoted, "the first-run section should name the functions' log groups"
    named = set(re.findall(r"`(?:/aws/lambda/<stack name>|…)/(\w+)`", quoted[1]))
    groups = {body["Properties"]["LogGroupName"]["Fn::Sub"].rsplit("/", 1)[1]
              for body in RESOURCES.values() if body["Type"] == "AWS::Logs::LogGroup"}
    assert named == groups


@pytest.mark.parametrize("title", ["3. Alerts", "4. The dashboard and the first run"])
def test_the_first_hour_commands_take_the_stack_name_the_user_chose(title):
    # The trial values name the stack totes-trial: a command copied as written must find it.
    default = tomllib.loads(SAMCONFIG)["user"]["global"]["parameters"]["stack_name"]
    blocks = re.findall(r"^```bash\n(.*?)^```", section(title), re.MULTILINE | re.DOTALL)
    assert blocks, title
    for block in blocks:
        commands = [line.split("#")[0] for line in block.splitlines()
                    if not line.startswith("STACK=")]
        assert not [line for line in commands if default in line], (title, block)


def bash_blocks(text: str) -> list[str]:
    """The ```bash code blocks of ``text``, in order."""
    return re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_every_command_using_the_venv_comes_after_the_make_setup_that_creates_it():
    # A new user types the blocks in the order written, on a fresh clone: no .venv/ yet.
    blocks = bash_blocks(GUIDE)
    first_setup = next(i for i, block in enumerate(blocks) if "make setup" in block)
    first_venv = next(i for i, block in enumerate(blocks) if ".venv/" in block)
    assert first_setup <= first_venv, blocks[first_venv]


def documented_secret_files() -> dict[str, dict[str, object]]:
    """The secret files the credentials step writes, by name, as JSON."""
    commands = "".join(bash_blocks(section("1. Store the database credentials")))
    written = re.findall(r"^cat > (\S+\.json) <<'EOF'\n(.*?)^EOF$", commands,
                         re.MULTILINE | re.DOTALL)
    uploaded = re.findall(r"--secret-string file://(\S+\.json)", commands)
    assert uploaded and sorted(name for name, _ in written) == sorted(uploaded), commands
    return {name: json.loads(body) for name, body in written}


@pytest.mark.parametrize("database, file, login", [
    (config.TOTESYS, "totesys-secret.json", "The totesys login"),
    (config.WAREHOUSE, "warehouse-secret.json", "The warehouse database and its login")])
def test_the_secret_the_guide_writes_passes_the_functions_check_for_the_login_it_creates(
        monkeypatch, database, file, login):
    for field in config.CONNECTION_FIELDS:  # nothing from the template's parameters
        monkeypatch.delenv(database.variable(field), raising=False)
    secret = documented_secret_files()[file]
    arn = ("arn:aws:secretsmanager:eu-west-2:123456789012:secret:totes/"
           f"{database.prefix.lower()}-AbC123")
    kwargs = db.connection_kwargs(db.with_connection_fields(secret, database, arn))
    sql = section(login, level=3)
    assert re.search(rf"^CREATE ROLE {kwargs['user']} LOGIN", sql, re.MULTILINE), kwargs["user"]
    assert re.search(rf"\b(DATABASE|database) {kwargs['database']}\b", sql), kwargs["database"]
    assert kwargs["ssl_context"].check_hostname  # verify-full: the default a deployment keeps


def test_a_failed_first_deploy_says_what_the_rollback_keeps_and_how_to_deploy_again():
    # A first deployment that fails rolls back, but what the template retains stays (empty)
    # and the stack stays in ROLLBACK_COMPLETE, which no `sam deploy` can update.
    failed = section("If the first deployment fails", level=3)
    kept = {name for name, body in RESOURCES.items() if body.get("DeletionPolicy") == "Retain"}
    named = set(re.findall(r"`(\w+)`", failed))
    assert kept and kept <= named, kept - named
    assert "ROLLBACK_COMPLETE" in failed and "sam delete" in failed
    assert "DELETE_SKIPPED" in "".join(bash_blocks(failed))


def test_the_prerequisites_name_the_python_and_sam_cli_the_project_pins_and_lambda_runs():
    # What a new user installs by hand (Python) and what the prompt table was read from (SAM).
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "requirements-dev.txt").read_text(),
                           re.MULTILINE))
    guided = " ".join(section("The guided deploy, prompt by prompt", level=3).split())
    assert re.search(rf"SAM CLI {re.escape(pins['aws-sam-cli'])}, the version `make setup`",
                     guided)
    runtime = TEMPLATE["Globals"]["Function"]["Runtime"]  # python3.11
    python = runtime.removeprefix("python")
    assert f"Python {python}" in section("Prerequisites")
    assert f'requires-python = ">={python},' in (ROOT / "pyproject.toml").read_text()
    assert f"PYTHON ?= python{python}" in (ROOT / "Makefile").read_text()


def accepted(name: str, value: str) -> bool:
    """Whether CloudFormation takes ``value`` for the template parameter ``name``."""
    parameter = PARAMETERS[name]
    if "AllowedPattern" in parameter and not re.fullmatch(parameter["AllowedPattern"], value):
        return False
    if "AllowedValues" in parameter and value not in map(str, parameter["AllowedValues"]):
        return False
    if parameter["Type"] == "Number":
        number = float(value)
        return (parameter.get("MinValue", number) <= number <= parameter.get("MaxValue", number))
    return True


def test_every_default_the_guided_deploy_offers_is_one_the_template_accepts():
    refused = [name for name, parameter in PARAMETERS.items()
               if "Default" in parameter and parameter["Type"] != "CommaDelimitedList"
               and not accepted(name, str(parameter["Default"]))]
    assert not refused


def test_every_answer_the_prompt_table_spells_out_is_one_the_template_accepts():
    answers = []
    for row in documented_prompts():
        prompt = row[1].strip("`")
        for cell in row[3:5]:
            value = re.fullmatch(r"`([^`]*)`", cell)
            if value is None:
                continue
            if prompt == "Stack Name":  # CloudFormation's own rule for stack names
                assert re.fullmatch(r"[a-zA-Z][-a-zA-Z0-9]{0,127}", value[1]), cell
            elif prompt.startswith("Parameter "):
                answers.append((prompt, value[1]))
                assert accepted(prompt.removeprefix("Parameter "), value[1]), (prompt, cell)
    assert answers  # the table's trial answers (7 days of logs, Object Lock off) were found


def test_every_stack_output_the_docs_read_is_one_the_template_has():
    # The first hour's commands read names from the stack's outputs; a renamed output would
    # make them print nothing and pass an empty name on.
    docs = "\n".join(path.read_text() for path in [ROOT / "README.md",
                                                   *sorted((ROOT / "docs").glob("*.md"))])
    read = set(re.findall(r"OutputKey=='(\w+)'|\bout (\w+)\)|\boutputs? `(\w+)`", docs))
    named = {name for group in read for name in group if name}
    assert len(named) > 10 and named <= set(TEMPLATE["Outputs"]), named - set(TEMPLATE["Outputs"])


@functools.cache
def headings(path: Path) -> frozenset[str]:
    """The anchors GitHub gives the headings of a markdown file (repeats numbered -1, -2...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text().splitlines():
        in_code ^= line.startswith("```")
        heading = None if in_code else re.match(r"^#{1,6} (.*)$", line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            found.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
            seen[anchor] = seen.get(anchor, 0) + 1
    return frozenset(found)


def test_every_link_to_a_section_lands_on_a_heading():
    # A new user follows the guide's links (Before you deploy, If the first deployment fails...).
    broken, followed = [], 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
            linked = (page.parent / target).resolve() if target else page.resolve()
            followed += 1
            if not linked.is_file() or anchor not in headings(linked):
                broken.append((page.name, target, anchor))
    assert followed > 100 and not broken
