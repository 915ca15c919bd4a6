"""Which AWS SDK for pandas layer the stack uses in each region, what it ships, and the pins.

Transform, load and the audit import pandas, numpy and pyarrow from AWS's managed
layer, while the tests import them from the virtualenv (``requirements-dev.txt``).
The two must be the same release, or what is tested is not what runs. This module
is the one place that says which release the project runs, which layer ARN holds it
in each region, and what that release ships; ``template.yaml``'s ``PandasLayer``
mapping must equal :func:`mapping` and the pins must equal :data:`RELEASE`
(``tests/unit/test_pandas_layer.py`` fails on any difference).

The release: **awswrangler 3.16.0**, the last whose layer ships pyarrow 20.0.0, the
version the project tests (3.16.1 moved the layer to pyarrow 22.0.0, 3.17.0 to 24.0.0).
Sources, and how firm each fact is:

- Layer ARNs, per region: AWS's own table, ``docs/source/layers.rst`` in
  aws/aws-sdk-pandas as tagged 3.16.0 (published at
  https://aws-sdk-pandas.readthedocs.io/en/3.16.0/layers.html). The one row
  recorded, eu-west-2 ``:27``, is as the project's deployment review read that table
  (with ``:31`` for 3.16.1 and ``:33`` for 3.17.0); the table at 3.16.0 was not at
  hand when the mapping was written, so no other region's row could be copied from
  it, and every other region must set ``PandasLayerArn`` (the template's ``Rules``
  say so before anything is created). Numbers differ between regions for one release
  (the 3.16.1 table: af-south-1 ``:30``, ap-northeast-1 ``:31``), so a number is
  never carried from one region to another. Adding a region: copy its row from the
  3.16.0 table, here and in the template's mapping.
- pyarrow 20.0.0: the release's layer build script compiles Arrow itself with
  ``ARROW_VERSION=20.0.0`` (aws/aws-sdk-pandas ``building/lambda/build-lambda-layer.sh``,
  blob of commit 04733f229053c9fa027745354ab39623d76c224a), then installs awswrangler
  with ``--no-binary numpy,pandas`` and the ``redshift,mysql,postgres,gremlin,
  opensearch,openpyxl`` extras: the layer also carries pg8000, scramp and their
  dependencies, which is why the project's own layer is listed after it.
- pandas 3.0.2: that script installs the newest pandas the release allows (3.x on
  Python 3.11, "Support Pandas 3.x" in 3.16.0); the release's layer archives are
  dated 2026-04-08, between the wheels of pandas 3.0.2 (2026-03-31) and 3.0.3
  (2026-05-11). Inferred from dates, not read from the layer.
- numpy 2.2.6: not established for the layer itself (the script does not pin
  numpy); 2.2.6 is what awswrangler's own lock tests on Python 3.11 (numpy < 2.3
  there).

``python -m totes_local.pandas_layer REGION`` prints the ARN the stack uses in REGION.
"""
import argparse
import re
from dataclasses import dataclass
from typing import Any, Mapping

#: the packages the managed layer provides to our functions, and that requirements-dev.txt pins.
PACKAGES = ("pandas", "numpy", "pyarrow")
#: Lambda's limit on a function's unzipped code and layers together (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000
#: the AWS account that publishes the AWS SDK for pandas layers (commercial regions).
PUBLISHER = "336392948345"
LAYER_NAME = "AWSSDKPandas-Python311"
#: the template's mapping: ``Mappings.<MAPPING>.<region>.<MAPPING_KEY>`` is the layer's ARN.
MAPPING, MAPPING_KEY = "PandasLayer", "Arn"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    """One awswrangler release's layer: what it ships, and its layer version in each region."""

    awswrangler: str
    versions: Mapping[str, str]
    #: the layer's unzipped size, rounded up: what it leaves of Lambda's 250 MB for ours.
    unzipped_bytes: int
    #: AWSSDKPandas-Python311 (x86_64) layer version by region (sources: module docstring).
    layer_versions: Mapping[str, int]

    def arn(self, region: str) -> str:
        """The release's layer ARN in ``region``; LookupError where it is not recorded."""
        if region not in self.layer_versions:
            raise LookupError(f"no AWSSDKPandas-Python311 layer of awswrangler {self.awswrangler} "
                              f"is recorded for {region}: set PandasLayerArn")
        return (f"arn:aws:lambda:{region}:{PUBLISHER}:layer:{LAYER_NAME}:"
                f"{self.layer_versions[region]}")


#: the release the stack runs (sources: module docstring).
RELEASE = Release(
    awswrangler="3.16.0",
    versions={"pandas": "3.0.2", "numpy": "2.2.6", "pyarrow": "20.0.0"},
    # 167 MB measured for 3.16.0's Python 3.13 build (aws/aws-sdk-pandas#3331); the
    # Python 3.11 zip is 3.3 MB larger than the 3.13 one, so 180 MB is allowed.
    unzipped_bytes=180_000_000,
    layer_versions={"eu-west-2": 27},
)


def mapping(release: Release = RELEASE) -> dict[str, dict[str, str]]:
    """The template's ``PandasLayer`` mapping for ``release``: region -> {"Arn": its ARN}."""
    return {region: {MAPPING_KEY: release.arn(region)} for region in sorted(release.layer_versions)}


def template_mismatches(template: Mapping[str, Any], release: Release = RELEASE) -> list[str]:
    """Every way a template's ``PandasLayer`` mapping differs from ``release``'s table."""
    found = template.get("Mappings", {}).get(MAPPING, {})
    wanted = mapping(release)
    return [f"{region}: template maps {found.get(region)}, the table says {wanted.get(region)}"
            for region in sorted(set(found) | set(wanted))
            if found.get(region) != wanted.get(region)]


def pins(requirements: str) -> dict[str, str]:
    """The ``name==version`` pins of a requirements file's text, by lower-case name."""
    return {match["name"].lower(): match["version"] for match in _PIN.finditer(requirements)}


def mismatches(requirements: str, release: Release = RELEASE) -> list[str]:
    """Every way the pins in ``requirements`` differ from what ``release``'s layer ships."""
    pinned = pins(requirements)
    return [f"{name}: the layer of awswrangler {release.awswrangler} ships "
            f"{release.versions[name]}, requirements pin {pinned.get(name, 'nothing')}"
            for name in PACKAGES if pinned.get(name) != release.versions[name]]


def main(argv: list[str] | None = None) -> None:
    """Print the layer ARN a stack in the given region uses when PandasLayerArn is empty."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("region", help="an AWS region, such as eu-west-2")
    args = parser.parse_args(argv)
    try:
        print(RELEASE.arn(args.region))
    except LookupError as error:
        parser.exit(1, f"{error}\n")


if __name__ == "__main__":
    main()
