"""``make invoke FN=<function>``: one function under ``sam local invoke``, against the local stack.

SAM gives a local function only the environment variables its template declares:
a value in the ``--env-vars`` file for any other name is dropped, and so would be
``AWS_ENDPOINT_URL`` (samcli ``EnvironmentVariables.resolve``). So the function is
invoked from an overlay of the built template (``.aws-sam/build/local-invoke.yaml``,
next to the built one so its code paths still resolve) that also declares the AWS
SDK's variables, and an env-vars file (git-ignored, generated) giving each function
every variable it declares, pointing at ``totes local-stack``. The credentials in
it are moto's dummies: whatever credentials the host has (SAM uses them to fetch
the AWS SDK for pandas layer) never reach the container.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess  # nosec B404
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from totes import config
from totes_local import local_stack, stack

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = {"ingest": "IngestFunction", "transform": "TransformFunction",
             "load": "LoadFunction", "audit": "AuditFunction"}
EVENTS = {"ingest": "events/ingest_scheduled.json",
          "transform": "events/transform_s3_manifest.json",
          "load": "events/load_scheduled.json", "audit": "events/audit_scheduled.json"}
BUILT_TEMPLATE = Path(".aws-sam") / "build" / "template.yaml"
OVERLAY_NAME = "local-invoke.yaml"
OUT_DIR = Path(".aws-sam") / "local-invoke"
LOG = Path(".invoke") / "local-stack.log"
#: the AWS SDK's variables, which the template leaves to Lambda (so SAM must be told of them).
SDK_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")
NO_DOCKER = (
    "make invoke: no `docker` command here. sam local invoke runs the function in a Lambda "
    "container, so it needs Docker (Docker Desktop, or Docker Engine on Linux) installed and "
    "running. Without it, `make demo` runs every handler against the same local stack, in "
    "process. See README, \"Invoking a function with sam local invoke\".")
DOCKER_DOWN = ("make invoke: `docker info` failed: the Docker daemon is not running or not "
               "reachable. Start it and run make invoke again.")


class InvokeSetupError(Exception):
    """Something the user must fix before a local invoke can run; one line, exit status 2."""


def local_values(container_host: str = local_stack.CONTAINER_HOST,
                 moto_port: int = local_stack.MOTO_PORT) -> dict[str, str]:
    """Every variable a function may declare, with its value against the local stack."""
    return {
        **stack.aws_environment(f"http://{container_host}:{moto_port}"),
        "INGEST_BUCKET": stack.INGEST_BUCKET,
        "PROCESSED_BUCKET": stack.PROCESSED_BUCKET,
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


def overlay(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template with the SDK's variables declared for every function (values: env-vars)."""
    result = json.loads(json.dumps(template))
    variables = (result.setdefault("Globals", {}).setdefault("Function", {})
                 .setdefault("Environment", {}).setdefault("Variables", {}))
    for name in SDK_VARIABLES:
        variables.setdefault(name, "")
    return result


def write_files(built_template: Path, out_dir: Path,
                values: Mapping[str, str]) -> tuple[Path, Path]:
    """Write the overlay template beside ``built_template`` and the env-vars file in ``out_dir``."""
    from samcli.yamlhelper import yaml_dump

    template = _load_template(built_template)
    out_dir.mkdir(parents=True, exist_ok=True)
    env_file = out_dir / "env-vars.json"
    env_file.write_text(json.dumps(env_vars(template, values), indent=2) + "\n")
    overlay_file = built_template.with_name(OVERLAY_NAME)
    overlay_file.write_text(yaml_dump(overlay(template)))
    return overlay_file, env_file


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def ensure_stack(stack_args: Sequence[str], timeout: float = 180.0) -> None:
    """Start ``totes local-stack`` in the background unless it already serves its ports."""
    moto_port, postgres_port = local_stack.MOTO_PORT, local_stack.POSTGRES_PORT
    if _listening(moto_port) and _listening(postgres_port):
        print(f"local stack already running (moto :{moto_port}, PostgreSQL :{postgres_port})")
        return
    LOG.parent.mkdir(parents=True, exist_ok=True)
    # Yours only: the stack prints its PostgreSQL password there.
    with os.fdopen(os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as log:
        LOG.chmod(0o600)
        process = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", "totes_local.cli", "local-stack", *stack_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while local_stack.READY not in LOG.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise InvokeSetupError(f"the local stack did not start; see {LOG}:\n"
                                   + LOG.read_text()[-2000:])
        time.sleep(0.5)
    print(f"local stack started in the background (pid {process.pid}, log {LOG}); "
          f"stop it with: kill {process.pid}")


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m totes_local.sam_local FN [SAM options...]``: set up, then run sam."""
    parser = argparse.ArgumentParser(prog="make invoke", description=__doc__.splitlines()[0])
    parser.add_argument("function", choices=sorted(FUNCTIONS))
    parser.add_argument("--stack-args", default="",
                        help="options for totes local-stack when it has to be started")
    args, sam_args = parser.parse_known_args(argv)
    try:
        if shutil.which("docker") is None:
            raise InvokeSetupError(NO_DOCKER)
        if subprocess.run(["docker", "info"], capture_output=True).returncode:  # nosec
            raise InvokeSetupError(DOCKER_DOWN)
        sam = str(Path(sys.executable).with_name("sam"))
        subprocess.run([sam, "build", "--cached"], check=True)  # nosec B603
        ensure_stack(args.stack_args.split())
        overlay_file, env_file = write_files(BUILT_TEMPLATE, OUT_DIR, local_values())
        event = local_event(args.function, OUT_DIR,
                            f"http://127.0.0.1:{local_stack.MOTO_PORT}")
    except (InvokeSetupError, subprocess.CalledProcessError) as error:
        print(error, file=sys.stderr)
        return 2
    command = [sam, "local", "invoke", FUNCTIONS[args.function], "--template", str(overlay_file),
               "--env-vars", str(env_file), "--event", str(event),
               "--region", stack.REGION, *sam_args]
    print("+ " + " ".join(command), flush=True)
    os.execv(sam, command)  # nosec B606
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
