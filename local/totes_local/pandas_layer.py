"""Which AWS SDK for pandas layer the stack uses in each region, what it ships, and the pins.

Transform, load, the audit and publish import pandas, numpy and pyarrow from AWS's
managed layer, while the tests import them from the virtualenv (``requirements-dev.txt``).
The two must be the same release, or what is tested is not what runs. This module is
the one place that says which release the project runs, how the template finds that
release's layer in any region, and what the release ships; every pandas function's
first layer in ``template.yaml`` must be :func:`layer_entry` and the pins must equal
:data:`RELEASE` (``tests/unit/test_pandas_layer.py`` fails on any difference).

The release: **awswrangler 3.16.0**, the last whose layer ships pyarrow 20.0.0, the
version the project tests (3.16.1 moved the layer to pyarrow 22.0.0, 3.17.0 to 24.0.0).
Sources, and how firm each fact is:

- The layer ARN, per region: AWS publishes every release's layer ARN in each region as
  an SSM public parameter, ``/aws/service/aws-sdk-pandas/<release>/<region>/py3.11/
  x86_64/layer-arn`` (aws/aws-sdk-pandas issue 2434, "Public parameters are now in
  place", and the format its install guide gave with 3.4.0). The template resolves
  that parameter for ``AWS::Region`` with an ``ssm`` dynamic reference, which
  CloudFormation resolves when it creates the change set: every region AWS publishes
  the release in gets its own layer with nothing to look up, and a region without one
  fails the change set ("parameter not found") before anything is created. Layer
  version numbers differ between regions for one release (3.16.1: af-south-1 ``:30``,
  ap-northeast-1 ``:31``), so a table copied by hand is a table that goes wrong; the
  parameter is AWS's own. ``PandasLayerArn``, when set, replaces it.
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

``python -m totes_local.pandas_layer REGION`` prints the SSM parameter whose value is
the layer ARN a stack in REGION uses (``aws ssm get-parameter`` reads it).
"""
import argparse
import re
from dataclasses import dataclass
from typing import Any, Mapping

from totes import observability

#: the packages the managed layer provides to our functions, and that requirements-dev.txt pins.
PACKAGES = ("pandas", "numpy", "pyarrow")
#: Lambda's limit on a function's unzipped code and layers together (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT_BYTES = 262_144_000
#: where AWS publishes a release's layer ARN for a region (Python 3.11, x86_64).
PARAMETER = "/aws/service/aws-sdk-pandas/{release}/{region}/py3.11/x86_64/layer-arn"
#: the template parameter that, when set, replaces the published layer.
OVERRIDE, OVERRIDE_CONDITION = "PandasLayerArn", "HasPandasLayerArn"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    """One awswrangler release's layer: what it ships, and how big it is."""

    awswrangler: str
    versions: Mapping[str, str]
    #: the layer's unzipped size, rounded up: what it leaves of Lambda's 250 MB for ours.
    unzipped_bytes: int

    def parameter(self, region: str) -> str:
        """The SSM public parameter holding the release's layer ARN in ``region``."""
        return PARAMETER.format(release=self.awswrangler, region=region)


#: the release the stack runs (sources: module docstring).
RELEASE = Release(
    awswrangler="3.16.0",
    versions=observability.TESTED_VERSIONS,
    # 167 MB measured for 3.16.0's Python 3.13 build (aws/aws-sdk-pandas#3331); the
    # Python 3.11 zip is 3.3 MB larger than the 3.13 one, so 180 MB is allowed.
    unzipped_bytes=180_000_000,
)


def layer_entry(release: Release = RELEASE) -> dict[str, Any]:
    """A pandas function's first layer: ``PandasLayerArn`` if set, else the region's published one.

    The dynamic reference sits in ``Fn::Sub`` so that ``${AWS::Region}`` picks the
    stack's own region; CloudFormation resolves it when it makes the change set.
    """
    published = "{{resolve:ssm:" + release.parameter("${AWS::Region}") + "}}"
    return {"Fn::If": [OVERRIDE_CONDITION, {"Ref": OVERRIDE}, {"Fn::Sub": published}]}


def template_mismatches(template: Mapping[str, Any], release: Release = RELEASE) -> list[str]:
    """Every function whose pandas layer is not ``release``'s published one (or the override)."""
    wanted = layer_entry(release)
    problems = []
    for logical_id, resource in sorted(template.get("Resources", {}).items()):
        layers = resource.get("Properties", {}).get("Layers", [])
        if resource.get("Type") != "AWS::Serverless::Function" or OVERRIDE not in str(layers):
            continue
        if layers[0] != wanted:
            problems.append(f"{logical_id}: first layer is {layers[0]}, wanted {wanted}")
    return problems


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
    """Print the SSM parameter holding the layer ARN a stack in a region uses by default."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("region", help="an AWS region, such as eu-west-2")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", args.region):
        parser.exit(2, f"{args.region!r} is not an AWS region name, such as eu-west-2\n")
    print(RELEASE.parameter(args.region))


if __name__ == "__main__":
    main()
