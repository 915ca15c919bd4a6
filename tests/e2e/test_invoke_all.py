"""``make invoke-all`` for real: every function in a Lambda container, under ``sam local invoke``.

A fresh local stack (free ports, loopback and the Docker bridge), the base image
and the pandas layer built by ``make lambda-image`` (cached: seconds after the
first build), then ingest, transform, load, audit and publish, each through SAM into a
container whose layers are merged in the template's order. The same images then
show which copy of each pinned package the functions import.

Skipped, saying why, only where no Docker daemon runs; under CI (``CI=true``) a
missing daemon fails instead, since ``.ci/run`` installs and starts one.
"""
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from samcli.local.docker.lambda_image import LambdaImage

from totes_local import lambda_image, pandas_layer, sam_local

REPO = Path(__file__).resolve().parents[2]
BUILT_LAYER = REPO / ".aws-sam" / "build" / "SharedLayer" / "python"
PROBE = Path(__file__).with_name("layer_probe.py")
#: SAM's tag of the runtime's base image: the images it builds add the layers' digest to it.
RUNTIME_TAG = "python:3.11-x86_64"
#: its ``sam build`` replaces the checkout's .aws-sam/build, which test_built_artifacts reads:
#: never both at once when ``make test`` runs modules in parallel.
pytestmark = [pytest.mark.usefixtures("aws_sam_build"), pytest.mark.slow]


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return f"docker info failed: {info.stderr.strip()[-300:]}" if info.returncode else None


@pytest.fixture(scope="module")
def docker():
    """A running Docker daemon and the stand-in image and layer (built, or found up to date)."""
    problem = _docker_problem()
    if problem:
        message = f"no Docker daemon runs here ({problem}), so sam local invoke cannot"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; in CI it must (.ci/run installs docker.io, starts dockerd)")
        pytest.skip(message)
    assert lambda_image.main([]) == 0


@pytest.fixture(scope="module")
def invoke_all(docker):
    """Run ``make invoke-all``'s pipeline once; its exit status and each stage's response.

    The stack's data lives under the checkout's ``.invoke/``, not pytest's temporary root:
    pgserver runs PostgreSQL as its own user, which loses its way into that root whenever
    another pytest session on the machine resets the root's permissions.
    """
    printed = io.StringIO()
    (REPO / ".invoke").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="e2e-invoke-all-", dir=REPO / ".invoke"))
    try:
        with contextlib.chdir(REPO), contextlib.redirect_stdout(printed):
            status = sam_local.invoke_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    responses = {match["function"]: json.loads(match["response"]) for match in re.finditer(
        r"^== (?P<function>\w+) \([\d.]+ s\): (?P<response>\{.*\})$", printed.getvalue(),
        re.MULTILINE)}
    return status, responses, printed.getvalue()


def test_invoke_all_runs_every_stage_in_a_container_and_the_audit_finds_the_warehouse_whole(
        invoke_all):
    status, responses, printed = invoke_all
    assert status == 0, printed
    assert list(responses) == list(sam_local.PIPELINE) == [
        "ingest", "transform", "load", "audit", "publish"]
    ingest, transform, load, audit, publish = (responses[name] for name in sam_local.PIPELINE)
    assert ingest["complete"] and ingest["total_rows"] > 0
    assert transform["transformed"] == [ingest["manifest_key"]]
    assert load["manifests_loaded"] == 1
    assert load["last_loaded_manifest"] == ingest["manifest_key"]
    assert audit["ok"] is True and audit["mismatches"] == 0
    # publish, in its container, committed the same manifest into the stack's Glue and lake
    # bucket: every fact row the load loaded, each lake table written once.
    assert publish["manifests_published"] == 1
    assert publish["last_published_manifest"] == ingest["manifest_key"]
    assert publish["rows_appended"]["fact_sales_order"] == load["rows_loaded"][
        "fact_sales_order"] > 0
    assert "all succeeded" in printed


def _pins() -> dict[str, str]:
    return pandas_layer.pins((REPO / "shared" / "requirements.txt").read_text())


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_info(site: Path, name: str) -> dict[str, Path]:
    """Every ``*.dist-info`` of distribution ``name`` in ``site``, by its version."""
    found = {}
    for info in site.glob("*.dist-info"):
        metadata = (info / "METADATA").read_text(errors="replace")
        fields = dict(re.findall(r"^(Name|Version): (\S+)$", metadata, re.MULTILINE))
        if _normal(fields["Name"]) == _normal(name):
            found[fields["Version"]] = info
    return found


def expected_files(site: Path) -> dict[str, dict]:
    """Per pinned distribution: its top-level modules and its files' digests as built."""
    expected = {}
    for name, version in _pins().items():
        info = _dist_info(site, name)[version]
        with (info / "RECORD").open(newline="") as record:
            paths = [row[0] for row in csv.reader(record) if row]
        files = {path: hashlib.sha256((site / path).read_bytes()).hexdigest() for path in paths
                 if (site / path).is_file() and ".dist-info/" not in path
                 and not path.startswith(("../", "bin/")) and not path.endswith(".pyc")}
        top_level = info / "top_level.txt"
        modules = (top_level.read_text().split() if top_level.exists() else
                   sorted({path.split("/")[0].removesuffix(".py") for path in files}))
        expected[name] = {"modules": [module for module in modules if module.isidentifier()],
                          "files": files}
    return expected


def test_the_pandas_layer_stand_in_ships_other_versions_of_some_of_our_pinned_packages():
    """Without an overlap the next test could not tell which layer wins: keep one."""
    site = lambda_image.pandas_layer_dir() / "python"
    if not site.exists():
        pytest.skip("no pandas layer stand-in built here (make lambda-image)")
    overlapping = {name: sorted(_dist_info(site, name)) for name, version in _pins().items()
                   if _dist_info(site, name) and version not in _dist_info(site, name)}
    assert {"pg8000", "scramp", "typing_extensions"} <= set(overlapping), overlapping


@pytest.mark.parametrize("function", sorted(sam_local.FUNCTIONS))
def test_each_function_imports_exactly_the_project_layers_pinned_packages(
        function, invoke_all, tmp_path):
    """Point 3 of the layer contract: whatever the pandas layer ships, ours win in /opt/python.

    The image is the one SAM built for the function's last invoke: its layers merged into
    /opt in the order the template gives (a later layer's files replace an earlier one's).
    """
    template = sam_local._load_template(REPO / ".aws-sam" / "build" / sam_local.OVERLAY_NAME)
    layers = [SimpleNamespace(name=layer["Ref"]) for layer in
              template["Resources"][sam_local.FUNCTIONS[function]]["Properties"]["Layers"]]
    image = (f"{LambdaImage._SAM_CLI_REPO_NAME}-"
             f"{LambdaImage._generate_docker_image_version(layers, RUNTIME_TAG)}")
    (tmp_path / "expected.json").write_text(json.dumps(expected_files(BUILT_LAYER)))
    shutil.copy(PROBE, tmp_path / PROBE.name)
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--volume", f"{tmp_path}:/probe:ro",
         "--env", f"PYTHONPATH={lambda_image.PYTHONPATH}", "--entrypoint", "/usr/bin/python3.11",
         image, f"/probe/{PROBE.name}", "/probe/expected.json"],
        capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    order = " then ".join(layer.name for layer in layers)
    replaced = {name: f"{len(result['differing'])} files differ, e.g. {result['differing'][0]}"
                for name, result in report.items() if result["differing"]}
    assert not replaced, (f"{function} (layers {order}, the last one wins) does not import "
                          f"the pinned {sorted(replaced)}: {replaced}")
    for name, result in report.items():
        for module, path in result["imported"].items():
            assert path and path.startswith("/opt/python/"), (name, module, path)
