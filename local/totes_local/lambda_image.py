"""``make lambda-image``: the Lambda base image and the pandas layer, from Debian and PyPI.

``sam local invoke`` runs a function in a container made from
``public.ecr.aws/lambda/python:3.11-x86_64`` plus SAM's runtime interface
emulator, and mounts the function's layers, downloading managed ones from AWS.
Where no image registry is reachable and there is no AWS account, neither exists.
This module builds both stand-ins:

* the base image: a Debian bookworm root filesystem (``debootstrap --variant=minbase``
  with Debian's ``python3.11``), the runtime interface client ``awslambdaric``
  from PyPI in ``/var/runtime`` and a ``/var/runtime/bootstrap`` that runs it,
  ``docker import``-ed under the official tag. SAM then adds its emulator on top
  (``samcli/local/docker/lambda_image.py``) exactly as it does to the real image.
  An image under that tag without this module's label is the official one (or the
  user's) and is left alone;
* the AWS SDK for pandas layer: the packages of the release the template uses
  (``local/lambda-image/pandas-layer-requirements.txt``), installed from PyPI
  into a folder that ``make invoke`` puts in place of ``PandasLayerArn``.

Both are cached under :func:`cache_dir`, keyed by what they are built from, so a
second build takes seconds; README, "Invoking a function with sam local invoke",
says what differs from Amazon Linux.
"""
import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess  # nosec B404
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator, Sequence, cast

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = REPO_ROOT / "local" / "lambda-image"
RUNTIME_REQUIREMENTS = HERE / "runtime-requirements.txt"
PANDAS_LAYER_REQUIREMENTS = HERE / "pandas-layer-requirements.txt"
#: the tag SAM looks for (``--skip-pull-image``) for ``Runtime: python3.11``, x86_64.
IMAGE = "public.ecr.aws/lambda/python:3.11-x86_64"
#: the label that marks the stand-in (its value: the recipe's digest), so the official image,
#: which has no such label, is never replaced.
LABEL = "org.totes.lambda-stand-in"
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3.11", "ca-certificates")
#: the Debian mirror debootstrap downloads from (Debian's own, as apt's sources name it).
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: what the Lambda Python runtime puts on sys.path, in its order: the function, then the layers
#: (/opt), then the runtime's own packages.
PYTHONPATH = "/var/task:/opt/python/lib/python3.11/site-packages:/opt/python:/var/runtime"
BOOTSTRAP = f"""#!/bin/sh
# The Lambda runtime's entry point: the runtime interface emulator (or Lambda) starts it with
# the function's handler in $_HANDLER; awslambdaric polls the Runtime API and calls it.
export PYTHONPATH={PYTHONPATH}
exec /usr/bin/python3.11 -m awslambdaric "$_HANDLER"
"""
#: the official image's configuration that a function can observe, as ``docker import --change``.
IMAGE_CHANGES = (
    "ENV LANG=C.UTF-8",
    "ENV TZ=:/etc/localtime",
    "ENV PATH=/usr/local/bin:/usr/bin:/bin:/opt/bin",
    "ENV LD_LIBRARY_PATH=/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
    "ENV LAMBDA_TASK_ROOT=/var/task",
    "ENV LAMBDA_RUNTIME_DIR=/var/runtime",
    "WORKDIR /var/task",
    'ENTRYPOINT ["/var/runtime/bootstrap"]',
)
#: pip options that fetch Lambda's binaries (Linux x86_64, CPython 3.11) whatever the host.
_LAMBDA_WHEELS = ("--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                  "--platform", "manylinux2014_x86_64", "--implementation", "cp",
                  "--python-version", "3.11")


class ImageBuildError(Exception):
    """A missing tool or a failed step; one line for the user, exit status 2."""


def cache_dir() -> Path:
    """Where the root filesystem, the runtime client and the pandas layer are kept between builds.

    Outside the checkout (``$TOTES_LAMBDA_CACHE``, else ``$XDG_CACHE_HOME/totes``), so every
    clone on the machine shares one debootstrap.
    """
    explicit = os.environ.get("TOTES_LAMBDA_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "totes" / "lambda-image"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def rootfs_key() -> str:
    """What the cached root filesystem is built from: the suite and the packages."""
    return _digest(SUITE, *DEBIAN_PACKAGES)


def recipe() -> str:
    """The digest of everything in the image: a stand-in with another label is rebuilt."""
    return _digest(rootfs_key(), RUNTIME_REQUIREMENTS.read_text(), BOOTSTRAP, *IMAGE_CHANGES)


def pandas_layer_dir(cache: Path | None = None) -> Path:
    """The pandas layer stand-in's folder (``python/`` inside), keyed by its requirements."""
    key = _digest(PANDAS_LAYER_REQUIREMENTS.read_text(), *_LAMBDA_WHEELS)
    return (cache or cache_dir()) / f"pandas-layer-{key}"


def _run(command: Sequence[str], **kwargs: object) -> None:
    try:
        subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload] # nosec
    except FileNotFoundError as error:
        raise ImageBuildError(f"{command[0]} is not installed ({error})") from error
    except subprocess.CalledProcessError as error:
        raise ImageBuildError(f"{' '.join(command[:3])} ... failed with status "
                              f"{error.returncode}") from error


def image_labels(tag: str = IMAGE) -> dict[str, str] | None:
    """The labels of the local image ``tag`` ({} when it has none); None when it is absent."""
    found = subprocess.run(  # nosec B603 B607
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        capture_output=True, text=True)
    if found.returncode:
        return None
    labels: dict[str, str] | None = json.loads(found.stdout)
    return labels or {}


def _pip_install(requirements: Path, target: Path) -> None:
    """Install ``requirements`` (pinned, no dependency resolution) for Lambda into ``target``."""
    partial = target.with_name(target.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *_LAMBDA_WHEELS, "--target", str(partial), "--requirement", str(requirements)])
    for cache in partial.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    partial.rename(target)


def build_rootfs(cache: Path, mirror: str) -> Path:
    """The Debian root filesystem as a tar file: debootstrapped once, then reused."""
    tar = cache / f"rootfs-{SUITE}-{rootfs_key()}.tar"
    if tar.exists():
        return tar
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (Debian: apt-get install debootstrap)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        root = Path(work) / "rootfs"
        print(f"debootstrap {SUITE} from {mirror} (a few minutes, once)", flush=True)
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
              SUITE, str(root), mirror], stdout=subprocess.DEVNULL)
        # The downloaded packages and indexes: apt never runs in a Lambda container.
        for leftover in [*(root / "var/cache/apt/archives").glob("*.deb"),
                         *(root / "var/lib/apt/lists").glob("*_*")]:
            leftover.unlink()
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", f"{tar}.part", "."])
    Path(f"{tar}.part").rename(tar)
    return tar


def runtime_dir(cache: Path) -> Path:
    """``/var/runtime``'s packages (awslambdaric and its dependencies), installed once."""
    target = cache / f"runtime-{_digest(RUNTIME_REQUIREMENTS.read_text(), *_LAMBDA_WHEELS)}"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        _pip_install(RUNTIME_REQUIREMENTS, target)
    return target


def write_image_tar(rootfs: Path, runtime: Path, out: IO[bytes]) -> None:
    """Stream the image's filesystem: the root filesystem, then /var/runtime and its bootstrap."""
    with tarfile.open(rootfs) as source, tarfile.open(fileobj=out, mode="w|") as image:
        for member in source:
            image.addfile(member, source.extractfile(member) if member.isfile() else None)
        directory = tarfile.TarInfo("./var/runtime")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        image.addfile(directory)
        for path in sorted(runtime.rglob("*")):
            image.add(path, f"./var/runtime/{path.relative_to(runtime)}", recursive=False)
        bootstrap = BOOTSTRAP.encode()
        entry = tarfile.TarInfo("./var/runtime/bootstrap")
        entry.size, entry.mode = len(bootstrap), 0o755
        image.addfile(entry, io.BytesIO(bootstrap))


def build_image(cache: Path, mirror: str, tag: str = IMAGE) -> None:
    """Build the stand-in base image and tag it ``tag``."""
    rootfs = build_rootfs(cache, mirror)
    runtime = runtime_dir(cache)
    command = ["docker", "import", *[f"--change={change}" for change in IMAGE_CHANGES],
               f"--change=LABEL {LABEL}={recipe()}", "-", tag]
    process = subprocess.Popen(command, stdin=subprocess.PIPE,  # nosec B603
                               stdout=subprocess.DEVNULL)
    stdin = cast(IO[bytes], process.stdin)
    try:
        write_image_tar(rootfs, runtime, stdin)
    finally:
        stdin.close()
    if process.wait():
        raise ImageBuildError(f"docker import failed with status {process.returncode}")


def ensure_image(cache: Path, mirror: str, tag: str = IMAGE, force: bool = False) -> str:
    """Make sure ``tag`` is a usable base image; say what was done."""
    labels = image_labels(tag)
    if labels is not None and LABEL not in labels:
        return f"{tag} is present and is not this stand-in (the official image?): kept"
    if labels is not None and labels[LABEL] == recipe() and not force:
        return f"{tag}: the stand-in is up to date"
    previous = _image_id(tag)
    build_image(cache, mirror, tag)
    if previous and previous != _image_id(tag):
        # The replaced stand-in, unless SAM's images still build on it (then Docker refuses).
        subprocess.run(["docker", "image", "rm", previous],  # nosec B603 B607
                       capture_output=True)
    return f"{tag}: stand-in built from Debian {SUITE} and PyPI"


def _image_id(tag: str) -> str | None:
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],  # nosec
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_pandas_layer(cache: Path) -> Path:
    """Install the pandas layer stand-in unless it is already there; return its folder."""
    layer = pandas_layer_dir(cache)
    if layer.exists():
        return layer
    partial = layer.with_name(layer.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _pip_install(PANDAS_LAYER_REQUIREMENTS, partial / "python")
    # As the managed layer's build does: no test suites (pandas' alone is tens of MB).
    for tests in [path for path in (partial / "python").rglob("tests") if path.is_dir()]:
        shutil.rmtree(tests, ignore_errors=True)
    partial.rename(layer)
    return layer


@contextlib.contextmanager
def build_lock(cache: Path) -> Iterator[None]:
    """One build at a time per cache: a second ``make lambda-image`` waits, then finds it done.

    (CI starts one in the background while the other checks run; the e2e test asks again.)
    """
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another make lambda-image is building; waiting for it", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m totes_local.lambda_image``: both stand-ins, built or found up to date."""
    parser = argparse.ArgumentParser(prog="make lambda-image", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true",
                        help="rebuild the image even when the stand-in is up to date")
    parser.add_argument("--mirror", default=os.environ.get("DEBIAN_MIRROR", DEFAULT_MIRROR),
                        help=f"Debian mirror for debootstrap (default {DEFAULT_MIRROR})")
    args = parser.parse_args(argv)
    cache = cache_dir()
    started = time.perf_counter()
    try:
        with build_lock(cache):
            print(ensure_image(cache, args.mirror, force=args.force), flush=True)
            layer = ensure_pandas_layer(cache)
    except ImageBuildError as error:
        print(f"make lambda-image: {error}", file=sys.stderr)
        return 2
    print(f"pandas layer stand-in: {layer} ({time.perf_counter() - started:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
