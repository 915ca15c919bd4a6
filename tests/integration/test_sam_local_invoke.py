"""``make invoke``: what SAM itself gives each function, and the local stack it talks to.

Without a container: the invoke itself runs in tests/e2e/test_invoke_all.py
where Docker does. SAM's own code (``InvokeContext`` -> ``LocalLambdaRunner._make_env_vars`` ->
``EnvironmentVariables.resolve``, what ``sam local invoke`` runs before it starts a
container) resolves each function's environment from the overlay template and the
env-vars file; each stage then reads its settings from exactly that environment.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import boto3
import pytest
from samcli.commands.local.cli_common.invoke_context import InvokeContext

from totes import audit, config, db, ingest, load, observability, publish, transform
from totes_local import local_stack, sam_local, stack

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"ingest": ingest.IngestSettings, "transform": transform.TransformSettings,
            "load": load.LoadSettings, "audit": audit.AuditSettings,
            "publish": publish.PublishSettings}
ENDPOINT = f"http://{local_stack.CONTAINER_HOST}:{local_stack.MOTO_PORT}"


class RecordingEnviron(dict):
    """An ``os.environ`` stand-in that remembers every name read from it."""

    def __init__(self, values):
        super().__init__(values)
        self.read = set()

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.read.add(name)
        return super().__contains__(name)


def resolved_environments(template: Path, env_file: Path,
                          functions: list[str]) -> dict[str, dict[str, str]]:
    """The environment ``sam local invoke`` would start each of ``functions``' containers with.

    One ``InvokeContext`` for them all: entering it parses the template, a second or two
    of CPU each time.
    """
    with mock.patch.object(InvokeContext, "_get_container_manager"), \
            mock.patch.object(InvokeContext, "lambda_runtime", new_callable=mock.PropertyMock), \
            InvokeContext(template_file=str(template), env_vars_file=str(env_file),
                          aws_region=stack.REGION) as context:
        runner = context.local_lambda_runner
        return {function: runner._make_env_vars(
            runner.provider.get(sam_local.FUNCTIONS[function])).resolve()
            for function in functions}


@pytest.fixture(scope="module")
def invoke_files(tmp_path_factory):
    """The overlay template and env-vars file, generated from template.yaml as make invoke does."""
    root = tmp_path_factory.mktemp("sam")
    template = root / "template.yaml"
    shutil.copy(REPO / "template.yaml", template)
    return sam_local.write_files(template, root / "out", sam_local.local_values())


def with_host_credentials(patch: pytest.MonkeyPatch) -> None:
    """The developer's own AWS credentials in the shell, which must not reach the container."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "POWERTOOLS_")) or name in sam_local.local_values():
            patch.delenv(name)
    patch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALHOSTKEY")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "real-host-secret")
    patch.setenv("AWS_SESSION_TOKEN", "real-host-token")


@pytest.fixture
def host_credentials(monkeypatch):
    """The developer's own AWS credentials in the shell while the test runs."""
    with_host_credentials(monkeypatch)


@pytest.fixture(scope="module")
def environments(invoke_files):
    """What SAM gives each function (with the developer's credentials in the shell)."""
    template, env_file = invoke_files
    with pytest.MonkeyPatch.context() as patch:
        with_host_credentials(patch)
        return resolved_environments(template, env_file, sorted(sam_local.FUNCTIONS))


@pytest.fixture(scope="module")
def deployed_template():
    """template.yaml as ``make invoke`` reads it, parsed once for the tests that only read it."""
    return sam_local._load_template(REPO / "template.yaml")


#: where each database is: read when connecting, and empty unless the template's parameters say
#: otherwise (the secret then says it), so set to nothing locally as deployed by default.
CONNECTION_VARIABLES = {database.variable(field) for database in config.DATABASES
                        for field in config.CONNECTION_FIELDS}


def read_settings(environment: dict[str, str], settings) -> set[str]:
    """Read a stage's settings (and the service name and namespace) from ``environment``.

    With them, the connection fields of each database whose secret the function is given,
    which ``db.connect`` reads.
    """
    recorder = RecordingEnviron(environment)
    with mock.patch.object(os, "environ", recorder):
        settings.from_environment()
        observability._service()
        observability._namespace()
        for database in config.DATABASES:
            if environment.get(database.secret_variable):
                config.connection_fields(database)
    return recorder.read


@pytest.mark.parametrize("function", sorted(sam_local.FUNCTIONS))
def test_sam_gives_each_function_every_variable_it_reads_pointing_at_the_local_stack(
        function, environments, deployed_template):
    environment = environments[function]

    read = read_settings(environment, SETTINGS[function])
    declared = set(sam_local.declared_variables(deployed_template, sam_local.FUNCTIONS[function]))
    unset = {name for name in read if not environment.get(name)} - CONNECTION_VARIABLES
    # What the function reads and SAM leaves unset is exactly what the deployed template leaves
    # to the code's defaults (CHUNK_ROWS, ...): locally as deployed. The connection variables
    # it reads are declared, so a deployment can set them.
    assert not unset & declared
    assert unset.isdisjoint(sam_local.local_values())
    assert read & CONNECTION_VARIABLES <= declared
    # Every declared variable has its local value (none left as an unresolved intrinsic).
    local = sam_local.local_values()
    assert ({name: environment[name] for name in declared}
            == {name: local[name] for name in declared})
    # The AWS SDK's: moto on the fixed port, through the container's name for the host; moto's
    # dummy credentials, never the host's; the stack's region.
    assert environment["AWS_ENDPOINT_URL"] == ENDPOINT
    assert environment["AWS_ACCESS_KEY_ID"] == stack.MOTO_CREDENTIAL
    assert environment["AWS_SECRET_ACCESS_KEY"] == stack.MOTO_CREDENTIAL
    assert environment["AWS_SESSION_TOKEN"] == stack.MOTO_CREDENTIAL
    assert environment["AWS_REGION"] == environment["AWS_DEFAULT_REGION"] == stack.REGION
    # Buckets, the lake's Glue database and secrets are the ones the local stack provisions.
    for name, value in environment.items():
        if name.endswith("_BUCKET"):
            assert value in (stack.INGEST_BUCKET, stack.PROCESSED_BUCKET, stack.LAKE_BUCKET)
        if name.endswith("_DATABASE"):
            assert value == stack.LAKE_DATABASE
        if name.endswith("_SECRET_ID"):
            assert value in (stack.TOTESYS_SECRET, stack.WAREHOUSE_SECRET)


def test_without_the_overlay_sam_drops_the_endpoint(invoke_files, host_credentials, tmp_path):
    """Why the overlay exists: SAM passes only declared names, so the SDK would reach AWS."""
    _, env_file = invoke_files
    template = tmp_path / "template.yaml"
    shutil.copy(REPO / "template.yaml", template)
    environment = resolved_environments(template, env_file, ["ingest"])["ingest"]
    assert "AWS_ENDPOINT_URL" not in environment
    assert environment["AWS_ACCESS_KEY_ID"] == "AKIAREALHOSTKEY"


def test_a_declared_variable_without_a_local_value_is_refused():
    template = sam_local._load_template(REPO / "template.yaml")
    template["Resources"]["LoadFunction"]["Properties"]["Environment"]["Variables"]["NEW"] = "x"
    with pytest.raises(sam_local.InvokeSetupError, match="LoadFunction declares NEW"):
        sam_local.env_vars(template, sam_local.local_values())


def test_every_function_has_an_event():
    for function, path in sam_local.EVENTS.items():
        assert json.loads((REPO / path).read_text()), function


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server_dir():
    """A folder for a stack's embedded server, outside pytest's temporary folders; removed after.

    pytest makes its folders' parent 0700 again whenever another worker asks for one, so
    the server's own system user (tests run as root) could lose its way to the data
    directory while it starts: "could not open pg_hba.conf: Permission denied".
    """
    root = Path(tempfile.mkdtemp(prefix="totes-test-stack-"))
    root.chmod(0o755)
    yield root / "pg"
    stack.stop_postgres(root / "pg")
    shutil.rmtree(root, ignore_errors=True)


def test_local_stack_serves_moto_and_postgres_on_tcp_on_each_address_until_interrupted(
        tmp_path, server_dir):
    moto_port, postgres_port = _free_port(), _free_port()
    log = tmp_path / "stack.log"
    # Two addresses, as make invoke gives it loopback and the Docker bridge's (both loopback
    # here: 127.0.0.0/8 is all this machine's).
    process = sam_local.start_stack(
        sam_local.stack_command(["127.0.0.1", "127.0.0.2"],
                                sam_local.Ports(moto_port, postgres_port),
                                ["--container-host", "127.0.0.1",
                                 "--data-dir", str(server_dir), "--scale", "0.01"]),
        log, timeout=90)
    try:
        manager = boto3.client("secretsmanager", endpoint_url=f"http://127.0.0.1:{moto_port}",
                               region_name=stack.REGION, aws_access_key_id="x",
                               aws_secret_access_key="x")
        secrets = {name: json.loads(manager.get_secret_value(SecretId=name)["SecretString"])
                   for name in (stack.TOTESYS_SECRET, stack.WAREHOUSE_SECRET)}
        for secret in secrets.values():
            # TCP to the address the secret names (here the host itself), TLS off explicitly.
            assert (secret["host"], secret["port"], secret["sslmode"]) == (
                "127.0.0.1", postgres_port, "disable")
        conn = db.connect_with(secrets[stack.TOTESYS_SECRET], "local stack")
        try:
            assert conn.run("SELECT count(*) FROM sales_order")[0][0] > 0
        finally:
            conn.close()
        # The relay serves a superuser: without the password shown once, nobody gets in.
        password = secrets[stack.TOTESYS_SECRET]["password"]
        assert len(password) >= 24 and log.read_text().count(password) == 1
        for wrong in ("postgres", password[:-1]):
            with pytest.raises(db.DatabaseUnavailableError):
                db.connect_with({**secrets[stack.TOTESYS_SECRET], "password": wrong}, "guess")
        assert server_dir.stat().st_mode & 0o077 == 0  # its socket: the owner's alone
        conn = db.connect_with(secrets[stack.WAREHOUSE_SECRET], "local stack")
        conn.close()
        for address in ("127.0.0.1", "127.0.0.2"):
            # One moto state behind both addresses: the buckets provisioned through the first.
            s3 = boto3.client("s3", endpoint_url=f"http://{address}:{moto_port}",
                              region_name=stack.REGION, aws_access_key_id="x",
                              aws_secret_access_key="x")
            buckets = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
            assert {stack.INGEST_BUCKET, stack.PROCESSED_BUCKET} <= buckets
            conn = db.connect_with({**secrets[stack.TOTESYS_SECRET], "host": address},
                                   "local stack")
            try:
                assert conn.run("SELECT count(*) FROM sales_order")[0][0] > 0
            finally:
                conn.close()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    assert "local stack stopped" in log.read_text()


def test_local_stack_refuses_to_listen_on_all_interfaces(tmp_path):
    """Never offer the stack to every network: moto takes any credentials."""
    refused = subprocess.run(
        [sys.executable, "-m", "totes_local.cli", "local-stack", "--bind", "127.0.0.1",
         "--bind", "0.0.0.0", "--data-dir", str(tmp_path / "pg")],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "refusing to listen on all interfaces" in refused.stderr
    assert not (tmp_path / "pg").exists()


def test_local_stack_with_docker_bridge_also_listens_where_containers_reach_the_host(
        tmp_path, server_dir):
    bridge = local_stack.bridge_address()
    if bridge is None:
        pytest.skip("no Docker bridge on this machine (no dockerd running)")
    moto_port, postgres_port = _free_port(), _free_port()
    log = tmp_path / "stack.log"
    process = sam_local.start_stack(
        sam_local.stack_command([], sam_local.Ports(moto_port, postgres_port),
                                ["--docker-bridge", "--data-dir", str(server_dir),
                                 "--scale", "0.01"]),
        log, timeout=90)
    try:
        assert f"listening on 127.0.0.1, {bridge}" in log.read_text()
        for address in ("127.0.0.1", bridge):
            with socket.create_connection((address, postgres_port), timeout=5):
                pass
            s3 = boto3.client("s3", endpoint_url=f"http://{address}:{moto_port}",
                              region_name=stack.REGION, aws_access_key_id="x",
                              aws_secret_access_key="x")
            assert stack.INGEST_BUCKET in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()


def test_each_start_of_the_local_stack_makes_a_new_password_and_keeps_no_copy(server_dir):
    data_dir = server_dir
    passwords = []
    for _ in range(2):  # the second start finds the first one's data directory
        with local_stack.serve(data_dir, moto_port=_free_port(), postgres_port=_free_port(),
                               container_host="127.0.0.1", scale=0.01) as served:
            secret = served.secrets[stack.WAREHOUSE_SECRET]
            db.connect_with(secret, "local stack").close()
            with pytest.raises(db.DatabaseUnavailableError):
                db.connect_with({**secret, "password": "postgres"}, "a guess")
            passwords.append(served.password)
    assert passwords[0] != passwords[1]
    stored = b"".join(path.read_bytes() for path in data_dir.rglob("*") if path.is_file()
                      and path.stat().st_size < 1 << 20 and "pg_wal" not in path.parts)
    assert passwords[1].encode() not in stored
