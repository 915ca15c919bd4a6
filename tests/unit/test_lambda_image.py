"""``make lambda-image``: stand-ins pinned, agreeing with the layer table, and built right."""
import io
import re
import tarfile
from pathlib import Path

import pytest

from totes_local import cfn, lambda_image, pandas_layer

ROOT = Path(__file__).resolve().parents[2]


def requirement_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("path", [lambda_image.RUNTIME_REQUIREMENTS,
                                  lambda_image.PANDAS_LAYER_REQUIREMENTS])
def test_every_package_of_both_stand_ins_is_pinned_exactly(path):
    lines = requirement_lines(path)
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9.]+", line) for line in lines)


def test_the_pandas_layer_stand_in_is_the_release_the_template_uses_and_the_tests_pin():
    shipped = pandas_layer.RELEASE
    assert not pandas_layer.template_mismatches(cfn.load())
    stand_in = pandas_layer.pins(lambda_image.PANDAS_LAYER_REQUIREMENTS.read_text())
    dev = pandas_layer.pins((ROOT / "requirements-dev.txt").read_text())
    assert stand_in["awswrangler"] == shipped.awswrangler
    for package in pandas_layer.PACKAGES:
        assert stand_in[package] == shipped.versions[package] == dev[package]


def test_the_pandas_layer_stand_in_leaves_out_what_the_managed_layers_build_deletes():
    stand_in = pandas_layer.pins(lambda_image.PANDAS_LAYER_REQUIREMENTS.read_text())
    assert not {"boto3", "botocore", "s3transfer", "urllib3"} & set(stand_in)


def test_the_cache_is_outside_the_checkout_and_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.delenv("TOTES_LAMBDA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lambda_image.cache_dir() == tmp_path / "totes" / "lambda-image"
    monkeypatch.setenv("TOTES_LAMBDA_CACHE", str(tmp_path / "elsewhere"))
    assert lambda_image.cache_dir() == tmp_path / "elsewhere"
    assert lambda_image.pandas_layer_dir().parent == tmp_path / "elsewhere"


def test_the_image_is_the_root_filesystem_then_the_runtime_client_and_its_bootstrap(tmp_path):
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        python = tarfile.TarInfo("./usr/bin/python3.11")
        python.size, python.mode = 4, 0o755
        tar.addfile(python, io.BytesIO(b"\x7fELF"))
        link = tarfile.TarInfo("./usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
        tar.addfile(link)
    runtime = tmp_path / "runtime"
    (runtime / "awslambdaric").mkdir(parents=True)
    (runtime / "awslambdaric" / "__main__.py").write_text("print('ric')\n")
    out = io.BytesIO()
    lambda_image.write_image_tar(rootfs, runtime, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as image:
        members = {member.name: member for member in image}
        assert list(members) == ["./usr/bin/python3.11", "./usr/bin/python3", "./var/runtime",
                                 "./var/runtime/awslambdaric",
                                 "./var/runtime/awslambdaric/__main__.py",
                                 "./var/runtime/bootstrap"]
        assert members["./usr/bin/python3"].linkname == "python3.11"
        bootstrap = members["./var/runtime/bootstrap"]
        assert bootstrap.mode == 0o755
        script = image.extractfile(bootstrap).read().decode()
    assert script.startswith("#!/bin/sh\n")
    assert 'exec /usr/bin/python3.11 -m awslambdaric "$_HANDLER"' in script
    assert f"PYTHONPATH={lambda_image.PYTHONPATH}" in script


@pytest.mark.parametrize("labels, built, said", [
    (None, True, "stand-in built"),
    ({"maintainer": "AWS"}, False, "not this stand-in (the official image?): kept"),
    ({lambda_image.LABEL: "an older recipe"}, True, "stand-in built"),
    ("current", False, "up to date"),
])
def test_the_official_image_is_kept_and_a_stand_in_is_rebuilt_only_when_its_recipe_changed(
        monkeypatch, tmp_path, labels, built, said):
    if labels == "current":
        labels = {lambda_image.LABEL: lambda_image.recipe()}
    builds = []
    monkeypatch.setattr(lambda_image, "image_labels", lambda tag=lambda_image.IMAGE: labels)
    monkeypatch.setattr(lambda_image, "build_image", lambda *args: builds.append(args))
    monkeypatch.setattr(lambda_image, "_image_id", lambda tag: None)
    assert said in lambda_image.ensure_image(tmp_path, lambda_image.DEFAULT_MIRROR)
    assert bool(builds) is built


def test_a_missing_debootstrap_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(lambda_image.shutil, "which", lambda name: None)
    with pytest.raises(lambda_image.ImageBuildError, match="debootstrap is not installed"):
        lambda_image.build_rootfs(tmp_path, lambda_image.DEFAULT_MIRROR)
