"""Every memory size, timeout, schedule and count the docs quote is the template's.

The docs repeat numbers from template.yaml (a function's MemorySize and Timeout, the
schedules' defaults, the 30-minute arithmetic, how many alarms there are). Each
statement of that kind is found by its wording and compared with the template, so a
change to one without the other fails here. The function a number belongs to is the
first cell of its table row, else the stage a stage's own doc is about, else the
function named last before it in the sentence.
"""
import re
from pathlib import Path

import pytest

from totes_local import cfn

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = cfn.load()
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]
FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction",
             "load": "LoadFunction", "audit": "AuditFunction", "publish": "PublishFunction"}
SCHEDULES = {"ingest": "IngestSchedule", "load": "LoadSchedule"}
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FUNCTION_WORD = re.compile(r"\b(ingest|transform|load|audit|publish)\b", re.IGNORECASE)
NAMED = r"(?P<function>ingest|transform|load|audit|publish)"
#: wordings that state a function's memory (MB) or timeout (s, or min), in any doc.
MEMORY = [re.compile(pattern) for pattern in (
    r"(?P<mb>[\d,]+) MB Lambda\b", r"Lambda's (?P<mb>[\d,]+) MB", r"\bits (?P<mb>[\d,]+) MB\b",
    r"function's (?P<mb>[\d,]+) MB")]
TIMEOUT = [re.compile(pattern) for pattern in (
    r"(?P<s>\d+) s timeout", rf"(?P<s>\d+) s {NAMED} timeout", r"run's (?P<s>\d+) s\b",
    rf"\b{NAMED} (?:`Timeout`|timeout),? \(?(?P<min>\d+) min\b", rf"\b{NAMED} \d+ s of (?P<s>\d+)")]
INTERVAL = re.compile(r"\bevery (?P<min>\d+) min(?:utes)?\b")
SIZING_ROW = re.compile(rf"^\| {NAMED} \| (?P<mb>\d+) MB \| (?P<s>\d+) s \|", re.MULTILINE)
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def properties(function: str) -> dict:
    return RESOURCES[FUNCTIONS[function]]["Properties"]


def interval_minutes(function: str) -> int:
    match = re.fullmatch(r"rate\((\d+) minutes?\)", PARAMETERS[SCHEDULES[function]]["Default"])
    assert match, SCHEDULES[function]
    return int(match[1])


def statements(doc: Path):
    """(text, function or None) for each table row and each paragraph of a doc, flattened."""
    text = doc.read_text()
    for row in re.findall(r"^\|.*$", text, re.MULTILINE):
        first = row.strip("|").split("|")[0].strip().lower()
        yield row, first if first in FUNCTIONS else None
    for paragraph in re.split(r"\n\s*\n", re.sub(r"^\|.*$", "", text, flags=re.MULTILINE)):
        yield " ".join(paragraph.split()), None


def owner(doc: Path, text: str, start: int, row_function: str | None) -> str | None:
    """Which function a number at ``start`` in ``text`` belongs to (see the module docstring)."""
    if row_function:
        return row_function
    if doc.stem in FUNCTIONS:
        return doc.stem
    named = FUNCTION_WORD.findall(re.split(r"(?<=\.) ", text[:start])[-1])
    return named[-1].lower() if named else None


def quoted_numbers():
    """Every (doc, kind, function, value, context) the wordings above find."""
    found = []
    for doc in DOCS:
        for text, row_function in statements(doc):
            for pattern in MEMORY:
                for match in pattern.finditer(text):
                    function = owner(doc, text, match.start(), row_function)
                    found.append((doc.name, "MemorySize", function,
                                  int(match["mb"].replace(",", "")), match[0]))
            for pattern in TIMEOUT:
                for match in pattern.finditer(text):
                    function = (match.groupdict().get("function")
                                or owner(doc, text, match.start(), row_function))
                    seconds = int(match["s"]) if match.groupdict().get("s") else (
                        int(match["min"]) * 60)
                    found.append((doc.name, "Timeout", function, seconds, match[0]))
            for match in INTERVAL.finditer(text):
                function = owner(doc, text, match.start(), row_function)
                found.append((doc.name, "interval", function, int(match["min"]), match[0]))
    return found


QUOTED = quoted_numbers()


def test_the_wordings_find_the_statements_they_guard():
    found = {(doc, kind, function) for doc, kind, function, _, _ in QUOTED}
    assert {("load.md", "MemorySize", "load"), ("transform.md", "MemorySize", "transform"),
            ("README.md", "MemorySize", "transform"), ("audit.md", "Timeout", "audit"),
            ("deploy.md", "Timeout", "ingest"), ("ingest.md", "interval", "ingest"),
            ("README.md", "interval", "load")} <= found


@pytest.mark.parametrize("doc, kind, function, value, wording", QUOTED,
                         ids=[f"{q[0]}:{q[4]}" for q in QUOTED])
def test_each_quoted_memory_timeout_and_interval_is_the_templates(
        doc, kind, function, value, wording):
    assert function, f"{doc}: say which function {wording!r} is about"
    function = function.lower()
    if kind == "interval":
        assert value == interval_minutes(function), (doc, wording)
    else:
        assert value == properties(function)[kind], (doc, wording)


def test_the_sizing_table_lists_every_function_as_the_template_sizes_it():
    rows = {match["function"]: (int(match["mb"]), int(match["s"]))
            for match in SIZING_ROW.finditer((ROOT / "docs" / "deploy.md").read_text())}
    assert rows == {function: (properties(function)["MemorySize"], properties(function)["Timeout"])
                    for function in FUNCTIONS}


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_the_30_minute_arithmetic_uses_the_templates_defaults(doc):
    text = " ".join((ROOT / doc).read_text().split())
    expected = [interval_minutes("ingest"), properties("ingest")["Timeout"] // 60,
                properties("transform")["Timeout"] // 60, interval_minutes("load"),
                properties("load")["Timeout"] // 60]
    match = re.search(r"(\d+) \+ (?:ingest timeout )?(\d+) \+ (?:transform timeout )?(\d+) \+ "
                      r"(?:load interval )?(\d+) \+ (?:load timeout )?(\d+) = \**(\d+) minutes",
                      text.replace("ingest interval ", ""))
    assert match, doc
    assert [int(number) for number in match.groups()] == [*expected, sum(expected)]


def test_the_deployment_guide_counts_what_the_template_creates():
    text = " ".join((ROOT / "docs" / "deploy.md").read_text().split()[:80])
    counts = {"Lambda functions": "AWS::Serverless::Function",
              "S3 buckets": "AWS::S3::Bucket", "failure queues": "AWS::SQS::Queue",
              "CloudWatch alarms": "AWS::CloudWatch::Alarm"}
    for wording, kind in counts.items():
        match = re.search(rf"(\w+) {wording}", text)
        assert match, wording
        quoted = WORDS.get(match[1]) or int(match[1])
        assert quoted == sum(body["Type"] == kind for body in RESOURCES.values()), wording
    schedules = re.search(r"(\w+) EventBridge Scheduler schedules", text)
    assert schedules and int(schedules[1]) == sum(
        event["Type"] == "ScheduleV2" for body in RESOURCES.values()
        for event in body.get("Properties", {}).get("Events", {}).values())


def test_the_parameter_table_quotes_the_templates_defaults():
    table = re.findall(r"^\| `(\w+)`[^|]*\| ([^|]+) \|", (ROOT / "docs" / "deploy.md").read_text(),
                       re.MULTILINE)
    quoted = {name: cell.strip() for name, cell in table if name in PARAMETERS}
    assert set(quoted) >= {"IngestSchedule", "LoadSchedule", "AuditSchedule", "PandasLayerArn"}
    for name, cell in quoted.items():
        default = PARAMETERS[name].get("Default")
        if cell == "(required)":
            assert default is None, name
        elif cell == "empty":
            assert default == "", name
        elif cell.endswith("GiB"):
            assert default == int(cell.split()[0]) * 2 ** 30, name
        else:
            assert re.match(r"`([^`]*)`", cell)[1] == str(default), name
