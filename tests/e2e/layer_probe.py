"""Run inside a function's Lambda image: which copy of each pinned package Python imports.

Lambda merges a function's layers into ``/opt`` in order, a later layer's files
replacing an earlier one's. Given, per distribution of the project's layer, the
content its files must have (``expected.json``: ``{name: {"modules": [...],
"files": {path: sha256}}}``, paths relative to ``/opt/python``), this prints one
JSON object: per distribution, the files whose content differs in ``/opt/python``
and where each of its top-level modules was imported from. Standard library only:
it runs on the image's own Python, with the runtime's ``PYTHONPATH``.
"""
import hashlib
import importlib
import json
import sys
from pathlib import Path

OPT_PYTHON = Path("/opt/python")


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def main(expected_file: str) -> None:
    """Print the report for the expectations in ``expected_file``."""
    expected = json.loads(Path(expected_file).read_text())
    report = {}
    for name, spec in expected.items():
        differing = sorted(path for path, digest in spec["files"].items()
                           if _digest(OPT_PYTHON / path) != digest)
        imported = {module: getattr(importlib.import_module(module), "__file__", None)
                    for module in spec["modules"]}
        report[name] = {"differing": differing, "imported": imported}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
