"""The template security scan: what it scans, how it is pinned, and every suppression's reason.

``make scan`` (part of ``make test``) runs checkov on the CloudFormation that SAM
deploys, written by :mod:`totes_local.cfn`; a finding fails the build. Here: the
suppressions are each on their resource, with a reason a reviewer can judge, and
survive SAM's translation (so checkov sees them); the scanner is fully pinned.
"""
import json
import re
from pathlib import Path

import pytest

from totes_local import cfn

ROOT = Path(__file__).resolve().parents[2]
SOURCE = cfn.load()
TRANSLATED = cfn.translate(SOURCE)


def skips(template: dict) -> dict[str, list[dict]]:
    """The checkov suppressions of each resource, by logical id."""
    return {name: body["Metadata"]["checkov"]["skip"]
            for name, body in template["Resources"].items()
            if "checkov" in body.get("Metadata", {})}


def test_every_suppression_names_a_check_and_says_why():
    found = skips(SOURCE)
    assert found
    for name, entries in found.items():
        for entry in entries:
            assert re.fullmatch(r"CKV_AWS_\d+", entry["id"]), (name, entry)
            assert len(entry["comment"].split()) >= 15, (name, entry["id"])


def test_no_check_is_suppressed_globally():
    # Only in place, on a resource: no skip list in the make target, no config file.
    makefile = (ROOT / "Makefile").read_text()
    scan_recipe = makefile[makefile.index("\nscan:"):].split("\n\n")[0]
    assert "checkov" in scan_recipe and "--skip-check" not in scan_recipe
    assert not list(ROOT.glob(".checkov.y*ml"))


def test_suppressions_survive_the_sam_translation_the_scan_reads():
    translated = skips(TRANSLATED)
    for name, entries in skips(SOURCE).items():
        assert translated[name] == entries, name


def test_the_scan_is_part_of_make_test():
    # make test runs the checks it lists in CHECKS at once, before the tests.
    makefile = (ROOT / "Makefile").read_text()
    (checks,) = re.findall(r"^CHECKS := (.*)$", makefile, re.M)
    test_recipe = makefile[makefile.index("\ntest:"):].split("\n\n")[0]
    assert "scan" in checks.split() and "$(CHECKS)" in test_recipe


def test_the_scanner_and_everything_it_imports_are_pinned():
    lines = [line for line in (ROOT / "requirements-scan.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert "checkov==3.3.30" in lines
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line) for line in lines), lines


def test_translation_is_written_as_json_for_the_scanner(tmp_path):
    out = tmp_path / "nested" / "template.json"
    cfn.main([str(out)])
    assert json.loads(out.read_text()) == TRANSLATED
    with pytest.raises(SystemExit):
        cfn.main([])
