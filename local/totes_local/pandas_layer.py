"""What the AWS SDK for pandas layer in template.yaml ships, and whether the local pins agree.

Transform, load and the audit import pandas, numpy and pyarrow from AWS's managed
layer (``PandasLayerArn``), while the tests import them from the virtualenv
(``requirements-dev.txt``). The two must be the same release, or what is tested is
not what runs. This table is the one place that says which layer version holds
which versions; :func:`mismatches` compares it with the template's default ARN and
the pins (``tests/unit/test_pandas_layer.py`` fails on any difference).

Sources, for the one row (docs/deploy.md, "The pandas layer version", has the detail):

- layer ``AWSSDKPandas-Python311:31`` in eu-west-2 is awswrangler 3.16.0: a
  public Terraform configuration notes ``:33`` as 3.17.0, and AWS publishes one layer version per
  release (3.16.1 in between). Inferred, not read from AWS's own table.
- pyarrow 20.0.0: the release's layer build script compiles Arrow
  ``ARROW_VERSION=20.0.0`` (aws/aws-sdk-pandas ``building/lambda/build-lambda-layer.sh``;
  3.16.1 moved to 22.0.0, aws/aws-sdk-pandas#3331 and #3342, and 3.17.0 to 24.0.0).
- pandas 3.0.2: the build installs the newest pandas the release allows (3.x on
  Python 3.11, "Support Pandas 3.x" in 3.16.0); the layer files are dated
  2026-04-08, between the wheels of pandas 3.0.2 (2026-03-31) and 3.0.3 (2026-05-11).
- numpy 2.2.6: not established for the layer itself (its build does not pin numpy);
  2.2.6 is what awswrangler's own lock tests on Python 3.11 (numpy < 2.3 below 3.14).
"""
import re
from dataclasses import dataclass
from typing import Mapping

#: the packages the managed layer provides to our functions, and that requirements-dev.txt pins.
PACKAGES = ("pandas", "numpy", "pyarrow")
#: Lambda's limit on a function's unzipped code and layers together (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000
_ARN = re.compile(r"arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):\d{12}:layer:"
                  r"AWSSDKPandas-Python311:(?P<version>\d+)")
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    """One version of the managed layer: its awswrangler release and what it ships."""

    awswrangler: str
    versions: Mapping[str, str]
    #: the layer's unzipped size, rounded up: what it leaves of Lambda's 250 MB for ours.
    unzipped_bytes: int


#: AWSSDKPandas-Python311 (x86_64) in eu-west-2, by layer version (sources: module docstring).
EU_WEST_2_PYTHON311 = {
    31: Release(awswrangler="3.16.0",
                versions={"pandas": "3.0.2", "numpy": "2.2.6", "pyarrow": "20.0.0"},
                # 167 MB measured for 3.16.0's Python 3.13 build (aws/aws-sdk-pandas#3331);
                # the Python 3.11 zip is 3.3 MB larger than the 3.13 one, so 180 MB is allowed.
                unzipped_bytes=180_000_000),
}


def layer_version(arn: str) -> int:
    """The version of an eu-west-2 AWSSDKPandas-Python311 ARN; ValueError for any other ARN."""
    match = _ARN.fullmatch(arn)
    if match is None or match["region"] != "eu-west-2":
        raise ValueError(f"{arn} is not an eu-west-2 AWSSDKPandas-Python311 layer ARN")
    return int(match["version"])


def release(arn: str) -> Release:
    """The release a layer ARN holds; LookupError when the table does not know that version."""
    version = layer_version(arn)
    if version not in EU_WEST_2_PYTHON311:
        raise LookupError(f"layer version {version} is not in totes_local.pandas_layer: add its "
                          "awswrangler release and pandas, numpy and pyarrow versions")
    return EU_WEST_2_PYTHON311[version]


def pins(requirements: str) -> dict[str, str]:
    """The ``name==version`` pins of a requirements file's text, by lower-case name."""
    return {match["name"].lower(): match["version"] for match in _PIN.finditer(requirements)}


def mismatches(arn: str, requirements: str) -> list[str]:
    """Every way the pins in ``requirements`` differ from what the layer ``arn`` ships."""
    shipped = release(arn)
    pinned = pins(requirements)
    return [f"{name}: layer {arn} (awswrangler {shipped.awswrangler}) ships "
            f"{shipped.versions[name]}, requirements pin {pinned.get(name, 'nothing')}"
            for name in PACKAGES if pinned.get(name) != shipped.versions[name]]
