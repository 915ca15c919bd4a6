"""The handlers as ``sam build`` packages them: built function folder + built layer, nothing else.

A packaging mistake (a module missing from the layer, a handler importing local
tooling, a dependency absent from shared/requirements.txt, a file shared/Makefile
strips that the code still reads) fails here, in CI, instead of in AWS. ``make
test`` runs ``sam build`` before the tests.
"""
import json
import os
import re
import subprocess  # nosec B404
import sys
import sysconfig
from importlib.metadata import Distribution
from pathlib import Path

import pytest

from totes_local import cfn, pandas_layer, stack

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"
#: test_invoke_all's ``sam build`` replaces .aws-sam/build, which these tests read: never both
#: at once when ``make test`` runs modules in parallel.
pytestmark = pytest.mark.usefixtures("aws_sam_build")
FUNCTIONS = ("IngestFunction", "TransformFunction", "LoadFunction", "AuditFunction",
             "PublishFunction")

#: What AWS provides besides our layer: the Lambda runtime's SDK (behind the layer's own pinned
#: copy on sys.path, as in Lambda), and for transform, load, the audit and publish the AWS SDK
#: for pandas layer. Nothing else of the development virtualenv is visible.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "urllib3")
PANDAS_LAYER_PACKAGES = ("pandas", "numpy", "numpy.libs", "pyarrow", "pytz", "tzdata")

#: Runs in a python started with -S (no site hooks, so the editable install of the repo is
#: invisible): the built layer and the built function first, then only the packages above.
#: The ingest function has no pandas layer, so pandas, numpy and pyarrow are refused while it
#: is imported and run.
DRIVER = r"""
import importlib.util, json, sys
layer, functions, provided, events = sys.argv[1:5]
sys.path[:0] = [layer]
sys.path.append(provided)

class NoPandasLayer:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pandas", "numpy", "pyarrow"}:
            raise ImportError(f"{name} is not available to the ingest function")
        return None

class Context:
    memory_limit_in_mb = 512
    aws_request_id = "built-artifact-test"
    def __init__(self, name):
        self.function_name = name
        self.invoked_function_arn = "arn:aws:lambda:eu-west-2:000000000000:function:" + name
    def get_remaining_time_in_millis(self):
        return 60_000

def handler(name):
    sys.path.insert(0, f"{functions}/{name}")
    spec = importlib.util.spec_from_file_location(f"built_{name}", f"{functions}/{name}/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path.pop(0)
    return module.lambda_handler

events = json.loads(events)
sys.meta_path.insert(0, NoPandasLayer())
results = {"ingest": handler("IngestFunction")(events["ingest"], Context("ingest"))}
sys.meta_path.pop(0)
manifest_created = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                 "s3": {"bucket": {"name": events["bucket"]},
                                        "object": {"key": results["ingest"]["manifest_key"]}}}]}
results["transform"] = handler("TransformFunction")(manifest_created, Context("transform"))
results["load"] = handler("LoadFunction")(events["load"], Context("load"))
publish = handler("PublishFunction")
sys.path.insert(0, f"{functions}/PublishFunction")  # its folder is /var/task: imported at run time
results["publish"] = publish(events["publish"], Context("publish"))
sys.path.pop(0)
# After publish, so the audit reads a lake (pyiceberg is imported already, from publish's
# folder: the audit's own folder is checked to hold the same pinned packages, below).
audit = handler("AuditFunction")
sys.path.insert(0, f"{functions}/AuditFunction")
results["audit"] = audit(events["audit"], Context("audit"))
sys.path.pop(0)
import boto3, botocore, totes
results["totes_from"] = totes.__file__
results["sdk"] = {"boto3": [boto3.__version__, boto3.__file__],
                  "botocore": [botocore.__version__, botocore.__file__]}
results["local_tooling_imported"] = any(m.startswith("totes_local") for m in sys.modules)
print(json.dumps(results, default=str))
"""


@pytest.fixture
def provided(tmp_path):
    """A site folder holding only what the Lambda runtime and the pandas layer provide."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    folder = tmp_path / "provided"
    folder.mkdir()
    for name in (*RUNTIME_PACKAGES, *PANDAS_LAYER_PACKAGES):
        (folder / name).symlink_to(site_packages / name)
    return folder


@pytest.fixture
def built():
    if not (BUILD / "SharedLayer" / "python" / "totes").is_dir():
        if os.environ.get("CI"):
            pytest.fail("no sam build output: make test runs `sam build` before the tests")
        pytest.skip("no sam build output (run `make build`)")
    return BUILD


def test_built_handlers_run_the_pipeline_with_only_the_layer_and_their_folder(
        built, provided, aws, postgres, database, totesys):
    from totes_local.runner import scheduled_event

    warehouse = database("warehouse")
    stack.provision({aws["TOTESYS_SECRET_ID"]: totesys.secret,
                     aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
    events = {"ingest": scheduled_event("ingest"), "load": scheduled_event("load"),
              "audit": scheduled_event("audit"), "publish": scheduled_event("publish"),
              "bucket": aws["INGEST_BUCKET"]}
    result = subprocess.run(  # nosec B603
        [sys.executable, "-S", "-c", DRIVER, str(built / "SharedLayer" / "python"), str(built),
         str(provided), json.dumps(events)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["totes_from"].startswith(str(built / "SharedLayer" / "python"))
    # The SDK the handlers ran with is the layer's pinned one, not the runtime's.
    pinned = pandas_layer.pins((ROOT / "shared" / "requirements.txt").read_text())
    for package, (version, location) in outcome["sdk"].items():
        assert version == pinned[package]
        assert location.startswith(str(built / "SharedLayer" / "python"))
    assert not outcome["local_tooling_imported"]
    assert outcome["ingest"]["rows"]["sales_order"] == totesys.counts["sales_order"]
    conn = postgres.connect(warehouse)
    try:
        loaded = conn.run("SELECT count(*) FROM fact_sales_order")[0][0]
    finally:
        conn.close()
    assert loaded == totesys.counts["sales_order"]
    # Publish, as built (its folder, the layer and the pandas layer), fills the lake.
    assert outcome["publish"]["rows_appended"]["fact_sales_order_current"] == loaded
    # The audit, as built (its folder, the layer and the pandas layer), finds what the built
    # pipeline loaded and published, the lake included.
    assert outcome["audit"]["ok"] is True
    assert outcome["audit"]["tables"]["fact_sales_order"]["source_rows"] == loaded
    assert outcome["audit"]["lake"]["status"] == "compared"
    assert outcome["audit"]["lake"]["tables"]["fact_sales_order_current"]["lake_rows"] == loaded


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_built_layer_holds_exactly_the_pinned_dependencies(built):
    site = built / "SharedLayer" / "python"
    installed = {distribution.metadata["Name"].lower().replace("_", "-"): distribution.version
                 for distribution in (Distribution.at(info) for info in site.glob("*.dist-info"))}
    pinned = pandas_layer.pins((ROOT / "shared" / "requirements.txt").read_text())
    assert installed == {name.replace("_", "-"): version for name, version in pinned.items()}


def test_built_layer_leaves_out_what_the_functions_never_read(built):
    site = built / "SharedLayer" / "python"
    assert (site / "pycountry" / "databases" / "iso4217.json").is_file()
    assert not (site / "pycountry" / "locales").exists()
    services = {path.name for path in (site / "botocore" / "data").iterdir() if path.is_dir()}
    assert services == {"s3", "secretsmanager", "sts", "glue"}
    assert not list(site.rglob("__pycache__"))


def test_each_function_fits_lambdas_size_limit_beside_the_pandas_layer(built):
    pandas = pandas_layer.RELEASE
    layer = _size(built / "SharedLayer")
    for function in FUNCTIONS:
        total = layer + _size(built / function) + pandas.unzipped_bytes
        assert total <= pandas_layer.LAMBDA_UNZIPPED_LIMIT_BYTES, (function, total)
    for function in ("PublishFunction", "AuditFunction"):  # the two that carry pyiceberg
        total = layer + _size(built / function) + pandas.unzipped_bytes
        print(f"{function} with its layers: {total / 1e6:.1f} MB unzipped "
              f"(limit {pandas_layer.LAMBDA_UNZIPPED_LIMIT_BYTES / 1e6:.1f} MB)")


def test_deploy_md_quotes_the_built_lake_functions_folder_size(built):
    # docs/deploy.md, "What Lambda runs": the table a user reads for Lambda's 250 MB limit.
    quoted = re.search(r"^\| function folder .* ([\d.]+) MB for publish and the audit \|$",
                       (ROOT / "docs" / "deploy.md").read_text(), re.MULTILINE)
    assert quoted, "deploy.md should say how large publish's and the audit's folders are"
    for function in ("PublishFunction", "AuditFunction"):
        assert abs(float(quoted[1]) - _size(built / function) / 1e6) < 1, function


@pytest.mark.parametrize("function", ["PublishFunction", "AuditFunction"])
def test_built_lake_functions_hold_exactly_the_pinned_lake_dependencies(built, function):
    folder = built / function
    installed = {distribution.metadata["Name"].lower().replace("_", "-"): distribution.version
                 for distribution in (Distribution.at(info) for info in folder.glob("*.dist-info"))}
    pinned = pandas_layer.pins((ROOT / "functions" / "publish" / "requirements.txt").read_text())
    assert installed == {name.replace("_", "-"): version for name, version in pinned.items()}


def test_the_built_template_puts_the_shared_layer_last_for_every_function(built):
    # What `sam deploy` uploads: Lambda unpacks each later layer over the earlier ones, so the
    # shared layer last means our pinned pg8000, scramp... win over the pandas layer's copies.
    resources = cfn.translate(cfn.load(built / "template.yaml"))["Resources"]
    (shared,) = [name for name, body in resources.items()
                 if body["Type"] == "AWS::Lambda::LayerVersion"]
    functions = {name: body["Properties"]["Layers"] for name, body in resources.items()
                 if body["Type"] == "AWS::Lambda::Function"}
    assert len(functions) == len(FUNCTIONS)
    assert all(layers[-1] == {"Ref": shared} for layers in functions.values()), functions
