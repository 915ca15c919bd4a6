"""``make invoke FN=<function>`` and ``make invoke-all``: the functions under ``sam local invoke``.

SAM gives a local function only the environment variables its template declares:
a value in the ``--env-vars`` file for any other name is dropped, and so would be
``AWS_ENDPOINT_URL`` (samcli ``EnvironmentVariables.resolve``). So the function is
invoked from an overlay of the built template (``.aws-sam/build/local-invoke.yaml``,
next to the built one so its code paths still resolve) that also declares the AWS
SDK's variables, and an env-vars file (git-ignored, generated) giving each function
every variable it declares, pointing at ``totes local-stack``. The credentials in
it are moto's dummies: whatever credentials the host has never reach the container.

The overlay also puts the local stand-in of the AWS SDK for pandas layer
(:mod:`totes_local.lambda_image`) in place of every layer that is not the
template's own, keeping the order the template gives (``Globals`` layers first,
as SAM and Lambda merge them), since SAM cannot download a managed layer without
an AWS account.

SAM starts each container on Docker's bridge network, where 127.0.0.1 is the
container itself. The local stack therefore listens on the host's loopback and on
the bridge's host address (docker0's, read from ``docker network inspect bridge``),
never on all interfaces, and the container reaches it as ``host.docker.internal``,
which ``--add-host host.docker.internal:host-gateway`` maps to that address.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess  # nosec B404
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from totes import config
from totes_local import lambda_image, local_stack, stack

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction",
             "load": "LoadFunction", "audit": "AuditFunction", "publish": "PublishFunction"}
EVENTS = {"ingest": "events/ingest_scheduled.json",
          "transform": "events/transform_s3_manifest.json",
          "load": "events/load_scheduled.json", "audit": "events/audit_scheduled.json",
          "publish": "events/publish_scheduled.json"}
#: the pipeline in the order AWS runs it: what ``make invoke-all`` invokes (publish last, on
#: the processed manifest the transform wrote, as its own schedule would find it).
PIPELINE = ("ingest", "transform", "load", "audit", "publish")
BUILT_TEMPLATE = Path(".aws-sam") / "build" / "template.yaml"
OVERLAY_NAME = "local-invoke.yaml"
OUT_DIR = Path(".aws-sam") / "local-invoke"
LOG = Path(".invoke") / "local-stack.log"
#: the AWS SDK's variables, which the template leaves to Lambda (so SAM must be told of them).
SDK_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")
#: resource types of the template's own layers (every other layer is a managed one).
PROJECT_LAYER_TYPES = ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion")
#: the overlay's resource for the pandas layer stand-in.
PANDAS_STAND_IN = "PandasLayerStandIn"
#: SAM's options for every local invoke: the base image is local (no registry to pull from),
#: and the container's name for its host is the bridge's host address.
SAM_OPTIONS = ("--skip-pull-image", "--add-host", f"{local_stack.CONTAINER_HOST}:host-gateway")
NO_DOCKER = (
    "no `docker` command here. sam local invoke runs the function in a Lambda "
    "container, so it needs Docker (Docker Desktop, or Docker Engine on Linux) installed and "
    "running. Without it, `make demo` runs every handler against the same local stack, in "
    "process. See README, \"Invoking a function with sam local invoke\".")
DOCKER_DOWN = ("`docker info` failed: the Docker daemon is not running or not "
               "reachable. Start it and run the command again.")
NO_IMAGE = (f"no {lambda_image.IMAGE} image and no pandas layer stand-in: run make lambda-image "
            "first (it builds both from Debian and PyPI)")


class InvokeSetupError(Exception):
    """Something the user must fix before a local invoke can run; one line, exit status 2."""


@dataclass(frozen=True)
class Ports:
    """The local stack's TCP ports: moto's and the PostgreSQL relay's."""

    moto: int = local_stack.MOTO_PORT
    postgres: int = local_stack.POSTGRES_PORT


def local_values(container_host: str = local_stack.CONTAINER_HOST,
                 moto_port: int = local_stack.MOTO_PORT) -> dict[str, str]:
    """Every variable a function may declare, with its value against the local stack."""
    return {
        **stack.aws_environment(f"http://{container_host}:{moto_port}"),
        "INGEST_BUCKET": stack.INGEST_BUCKET,
        "PROCESSED_BUCKET": stack.PROCESSED_BUCKET,
        "LAKE_BUCKET": stack.LAKE_BUCKET,
        "LAKE_DATABASE": stack.LAKE_DATABASE,
        "TOTESYS_SECRET_ID": stack.TOTESYS_SECRET,
        "WAREHOUSE_SECRET_ID": stack.WAREHOUSE_SECRET,
        # Where each database is: empty, so from the local stack's secrets (as deployed by default).
        **{database.variable(field): "" for database in config.DATABASES
           for field in config.CONNECTION_FIELDS},
        "INGEST_DELETE_SWEEP_MINUTES": "60",
        "CAPTURE_MODE": "snapshot",
        "POWERTOOLS_SERVICE_NAME": "totes",
        "POWERTOOLS_METRICS_NAMESPACE": "TotesPipeline/local",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }


def _load_template(path: Path) -> dict[str, Any]:
    from samcli.yamlhelper import yaml_parse

    template: dict[str, Any] = yaml_parse(path.read_text())
    return template


def declared_variables(template: Mapping[str, Any], logical_id: str) -> list[str]:
    """The variables the template declares for one function (its own and the Globals')."""
    def names(properties: Mapping[str, Any]) -> list[str]:
        return list(properties.get("Environment", {}).get("Variables", {}))
    shared = names(template.get("Globals", {}).get("Function", {}))
    own = names(template["Resources"][logical_id]["Properties"])
    return shared + [name for name in own if name not in shared]


def env_vars(template: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The ``--env-vars`` file: per function, every declared variable and the SDK's, set."""
    result = {}
    for logical_id in FUNCTIONS.values():
        wanted = declared_variables(template, logical_id) + list(SDK_VARIABLES)
        missing = [name for name in wanted if name not in values]
        if missing:
            raise InvokeSetupError(f"{logical_id} declares {', '.join(missing)}, which has no "
                                   "local value: add it to totes_local.sam_local.local_values")
        result[logical_id] = {name: values[name] for name in wanted}
    return result


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def function_layers(template: Mapping[str, Any], logical_id: str) -> list[Any]:
    """A function's layers in the order Lambda merges them: the Globals' first, then its own."""
    shared = template.get("Globals", {}).get("Function", {}).get("Layers", [])
    own = template["Resources"][logical_id]["Properties"].get("Layers", [])
    return _as_list(shared) + _as_list(own)


def project_layers(template: Mapping[str, Any]) -> set[str]:
    """The logical ids of the layers the template builds itself (the shared layer)."""
    return {logical_id for logical_id, resource in template["Resources"].items()
            if resource.get("Type") in PROJECT_LAYER_TYPES}


def local_layers(template: Mapping[str, Any], logical_id: str) -> list[Any]:
    """A function's layers with every one that is not the template's own as the stand-in.

    Whatever names the managed layer (a parameter, a dynamic reference, a condition, an ARN)
    becomes ``{"Ref": PANDAS_STAND_IN}`` in the same place; the order is kept, so what
    overrides what in ``/opt`` is as the template deploys it.
    """
    ours = project_layers(template)
    result: list[Any] = []
    for layer in function_layers(template, logical_id):
        is_ours = isinstance(layer, dict) and layer.get("Ref") in ours
        entry = layer if is_ours else {"Ref": PANDAS_STAND_IN}
        if entry not in result:
            result.append(entry)
    return result


def overlay(template: Mapping[str, Any], pandas_layer: Path | None = None) -> dict[str, Any]:
    """The template as local invoke needs it.

    Every function declares the SDK's variables (their values: the env-vars file) and,
    given ``pandas_layer``, has its layers resolved by :func:`local_layers`, with that
    folder as the stand-in's content.
    """
    result: dict[str, Any] = json.loads(json.dumps(template))
    function_globals = result.setdefault("Globals", {}).setdefault("Function", {})
    variables = function_globals.setdefault("Environment", {}).setdefault("Variables", {})
    for name in SDK_VARIABLES:
        variables.setdefault(name, "")
    if pandas_layer is None:
        return result
    functions = [logical_id for logical_id, resource in result["Resources"].items()
                 if resource.get("Type") == "AWS::Serverless::Function"]
    resolved = {logical_id: local_layers(result, logical_id) for logical_id in functions}
    function_globals.pop("Layers", None)
    for logical_id, layers in resolved.items():
        properties = result["Resources"][logical_id]["Properties"]
        properties.pop("Layers", None)
        if layers:
            properties["Layers"] = layers
    result["Resources"][PANDAS_STAND_IN] = {
        "Type": "AWS::Serverless::LayerVersion",
        "Properties": {"ContentUri": str(pandas_layer.resolve()),
                       "CompatibleRuntimes": ["python3.11"]}}
    return result


def write_files(built_template: Path, out_dir: Path, values: Mapping[str, str],
                pandas_layer: Path | None = None) -> tuple[Path, Path]:
    """Write the overlay template beside ``built_template`` and the env-vars file in ``out_dir``."""
    from samcli.yamlhelper import yaml_dump

    template = _load_template(built_template)
    out_dir.mkdir(parents=True, exist_ok=True)
    env_file = out_dir / "env-vars.json"
    env_file.write_text(json.dumps(env_vars(template, values), indent=2) + "\n")
    overlay_file = built_template.with_name(OVERLAY_NAME)
    overlay_file.write_text(yaml_dump(overlay(template, pandas_layer)))
    return overlay_file, env_file


def check_docker() -> None:
    """Refuse early, in one line, when Docker cannot run a container here."""
    if shutil.which("docker") is None:
        raise InvokeSetupError(NO_DOCKER)
    if subprocess.run(["docker", "info"], capture_output=True).returncode:  # nosec
        raise InvokeSetupError(DOCKER_DOWN)
    if lambda_image.image_labels() is None or not lambda_image.pandas_layer_dir().exists():
        raise InvokeSetupError(NO_IMAGE)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stack_command(binds: Sequence[str], ports: Ports, extra: Sequence[str] = ()) -> list[str]:
    """The ``totes local-stack`` command line serving ``ports`` on each of ``binds``."""
    return [sys.executable, "-m", "totes_local.cli", "local-stack",
            *[option for address in binds for option in ("--bind", address)],
            "--moto-port", str(ports.moto), "--postgres-port", str(ports.postgres), *extra]


def start_stack(command: Sequence[str], log: Path,
                timeout: float = 180.0) -> subprocess.Popen[bytes]:
    """Run the local stack in the background (its output in ``log``) until it is ready."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # Yours only: the stack prints its PostgreSQL password there.
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        log.chmod(0o600)
        process = subprocess.Popen(  # nosec B603
            list(command), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while local_stack.READY not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise InvokeSetupError(f"the local stack did not start; see {log}:\n"
                                   + log.read_text()[-2000:])
        time.sleep(0.5)
    return process


def stop_stack(process: subprocess.Popen[bytes]) -> None:
    """Stop a stack started by :func:`start_stack` as Ctrl-C would, and wait for it."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def ensure_stack(stack_args: Sequence[str]) -> None:
    """Start ``totes local-stack`` in the background unless it already serves its ports."""
    ports = Ports()
    if _listening(ports.moto) and _listening(ports.postgres):
        print(f"local stack already running (moto :{ports.moto}, PostgreSQL :{ports.postgres})")
        return
    binds = [] if "--bind" in stack_args else local_stack.bind_addresses()
    process = start_stack(stack_command(binds, ports, stack_args), LOG)
    print(f"local stack started in the background on {', '.join(binds) or 'your --bind'} "
          f"(pid {process.pid}, log {LOG}); stop it with: make stop")


def local_event(function: str, out_dir: Path, moto_endpoint: str) -> Path:
    """The event file to send: the shipped one, for transform re-aimed at the local bucket."""
    shipped = REPO_ROOT / EVENTS[function]
    if function != "transform":
        return shipped
    event = json.loads(shipped.read_text())
    record = event["Records"][0]["s3"]
    record["bucket"].update(name=stack.INGEST_BUCKET, arn=f"arn:aws:s3:::{stack.INGEST_BUCKET}")
    from totes import storage

    with stack.environment(stack.aws_environment(moto_endpoint)):
        storage.s3_client.cache_clear()
        latest = storage.latest_manifest_key(stack.INGEST_BUCKET)
        storage.s3_client.cache_clear()
    if latest is None:
        raise InvokeSetupError("no ingest manifest in the local ingestion bucket yet: "
                               "run make invoke FN=ingest first")
    record["object"]["key"] = latest
    path = out_dir / "transform.json"
    path.write_text(json.dumps(event, indent=2) + "\n")
    return path


def _sam() -> str:
    return str(Path(sys.executable).with_name("sam"))


def prepare(ports: Ports) -> tuple[Path, Path]:
    """Build, and write the overlay template and env-vars file for a stack on ``ports``."""
    subprocess.run([_sam(), "build", "--cached"], check=True)  # nosec B603
    return write_files(BUILT_TEMPLATE, OUT_DIR, local_values(moto_port=ports.moto),
                       lambda_image.pandas_layer_dir())


def sam_command(function: str, overlay_file: Path, env_file: Path, event: Path,
                sam_args: Sequence[str] = ()) -> list[str]:
    """The ``sam local invoke`` command line for one function."""
    return [_sam(), "local", "invoke", FUNCTIONS[function], "--template", str(overlay_file),
            "--env-vars", str(env_file), "--event", str(event), "--region", stack.REGION,
            *SAM_OPTIONS, *sam_args]


def failure(function: str, returncode: int, stdout: str) -> str | None:
    """Why one invocation failed (None when it did not): an exit status, an error response.

    SAM prints the handler's response as the last line of its output and exits 0 even
    when the handler raised (the response is then Lambda's ``errorMessage`` and
    ``errorType``); an audit that found differences (``"ok": false``) fails too.
    """
    if returncode:
        return f"sam local invoke exited with status {returncode}"
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        response = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        response = None
    if not isinstance(response, dict):
        return "no JSON response from the function"
    if "errorType" in response or "errorMessage" in response:
        return f"the handler failed: {response.get('errorType')}: {response.get('errorMessage')}"
    if function == "audit" and response.get("ok") is not True:
        return "the audit found the warehouse different from the source"
    return None


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def invoke_all(work_dir: Path, sam_args: Sequence[str] = ()) -> int:
    """Start a fresh local stack and run the pipeline through ``sam local invoke``, in order.

    Each response is printed; the first failure ends the run with status 1.
    """
    ports = Ports(moto=free_port(), postgres=free_port())
    overlay_file, env_file = prepare(ports)
    log = work_dir / "local-stack.log"
    process = start_stack(stack_command(local_stack.bind_addresses(), ports,
                                        ["--data-dir", str(work_dir / "pg"), "--scale", "0.02"]),
                          log)
    try:
        for function in PIPELINE:
            event = local_event(function, OUT_DIR, f"http://127.0.0.1:{ports.moto}")
            command = sam_command(function, overlay_file, env_file, event, sam_args)
            print("+ " + " ".join(command), flush=True)
            started = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # nosec B603
            print(f"== {function} ({time.perf_counter() - started:.1f} s): "
                  f"{done.stdout.strip()}", flush=True)
            problem = failure(function, done.returncode, done.stdout)
            if problem:
                print(f"make invoke-all: {function} failed: {problem}", file=sys.stderr)
                return 1
    finally:
        stop_stack(process)
    print(f"make invoke-all: {', '.join(PIPELINE[:-1])} and {PIPELINE[-1]} all succeeded")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m totes_local.sam_local FN|all [SAM options...]``: set up, then run sam."""
    parser = argparse.ArgumentParser(prog="make invoke", description=__doc__.splitlines()[0])
    parser.add_argument("function", choices=[*sorted(FUNCTIONS), "all"])
    parser.add_argument("--stack-args", default="",
                        help="options for totes local-stack when it has to be started")
    parser.add_argument("--work-dir", type=Path, default=Path(".invoke") / "all",
                        help="make invoke-all's stack data and log (default .invoke/all)")
    args, sam_args = parser.parse_known_args(argv)
    os.environ.setdefault("SAM_CLI_TELEMETRY", "0")
    try:
        check_docker()
        if args.function == "all":
            shutil.rmtree(args.work_dir, ignore_errors=True)
            return invoke_all(args.work_dir, sam_args)
        ports = Ports()
        overlay_file, env_file = prepare(ports)
        ensure_stack(args.stack_args.split())
        event = local_event(args.function, OUT_DIR, f"http://127.0.0.1:{ports.moto}")
    except (InvokeSetupError, subprocess.CalledProcessError) as error:
        print(f"make invoke: {error}", file=sys.stderr)
        return 2
    command = sam_command(args.function, overlay_file, env_file, event, sam_args)
    print("+ " + " ".join(command), flush=True)
    os.execv(command[0], command)  # nosec B606
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
