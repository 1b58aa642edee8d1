"""Session fixtures for the interop tests: a real rsvault server driven by real Azure clients.

The `server` fixture starts `$RSVAULT_BIN` (default target/debug/rsvault) with a temporary data dir and
traffic dir, waits for its ready line, and reads bootstrap.json. Both servers grant (`--allow-path`) the
session's pytest base temp dir, where every `tmp_path_factory.mktemp` directory the tests put disk images,
shares and restores in lives (rsvault never grants its own data dir, even below a grant). At the end of the session it stops the
server (SIGTERM) and validates every recorded ARM request/response against Azure's 2026-11-01 specs with
`node tools/oav/validate.js`; violations fail the session. Set RSVAULT_SKIP_OAV=1 to skip that step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(r"rsvault listening on (https://\S+)")
READY_TIMEOUT_S = 60
ARM_SCOPE = "https://management.azure.com/.default"
LOCATION = "westus"
OAV_SUMMARY = pytest.StashKey[str]()
SERVER_FILES = pytest.StashKey[str]()


@dataclass
class Server:
    """What a client needs to talk to the running server."""

    url: str
    tenant_id: str
    subscription_id: str
    client_id: str
    client_secret: str
    ca_file: str
    data_dir: Path
    traffic_dir: Path
    log_file: Path
    storage_file: Path | None = None

    def credential(self):
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(
            self.tenant_id,
            self.client_id,
            self.client_secret,
            authority=self.url,
            disable_instance_discovery=True,
            connection_verify=self.ca_file,
        )

    def client(self, cls, **kwargs):
        """An ARM management client of class `cls` pointed at this server."""
        return cls(
            self.credential(),
            self.subscription_id,
            base_url=self.url,
            connection_verify=self.ca_file,
            credential_scopes=[ARM_SCOPE],
            **kwargs,
        )


def _bin_path() -> Path:
    p = Path(os.environ.get("RSVAULT_BIN", "target/debug/rsvault"))
    return p if p.is_absolute() else REPO_ROOT / p


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("rsvault did not stop within 20 s of SIGTERM")


def _grants(tmp_path_factory) -> list[str]:
    """The host roots the test servers grant: the session's base temp dir."""
    return ["--allow-path", str(tmp_path_factory.getbasetemp().resolve())]


def _start(base: Path, extra: list[str]) -> tuple[subprocess.Popen, Server, object]:
    """Starts `rsvault serve` with a data dir under `base`; returns the process, the server and its log."""
    binary = _bin_path()
    if not binary.exists():
        pytest.fail(f"rsvault binary not found: {binary} (build it or set RSVAULT_BIN)")
    data_dir, traffic_dir, log_file = base / "data", base / "traffic", base / "server.log"
    data_dir.mkdir()
    traffic_dir.mkdir()
    log = open(log_file, "wb")
    proc = subprocess.Popen(
        [str(binary), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=base,
    )
    # Read stdout on a thread (and keep draining it so the server never blocks on a full pipe).
    ready = threading.Event()
    found: dict[str, str] = {}

    def pump():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            log.write(b"[stdout] " + raw)
            log.flush()
            m = READY_RE.search(line)
            if m and not ready.is_set():
                found["url"] = m.group(1)
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(
                f"rsvault did not print its ready line within {READY_TIMEOUT_S} s "
                f"(exit {proc.returncode}); log {log_file}:\n{log_file.read_text(errors='replace')[-4000:]}"
            )
    boot_file = data_dir / "bootstrap.json"
    for _ in range(50):  # normally written before the ready line; allow a moment
        if boot_file.exists():
            break
        time.sleep(0.1)
    boot = json.loads(boot_file.read_text())
    srv = Server(
        url=boot.get("resourceManager", found["url"]).rstrip("/"),
        tenant_id=boot["tenantId"],
        subscription_id=boot["subscriptionId"],
        client_id=boot["clientId"],
        client_secret=boot["clientSecret"],
        ca_file=str(data_dir / boot.get("caFile", "ca.pem")),  # an absolute caFile stays as it is
        data_dir=data_dir,
        traffic_dir=traffic_dir,
        log_file=log_file,
    )
    return proc, srv, log


@pytest.fixture(scope="session")
def server(tmp_path_factory, pytestconfig):
    base = tmp_path_factory.mktemp("rsvault")
    proc, srv, log = _start(base, ["--traffic-dir", str(base / "traffic"), *_grants(tmp_path_factory)])
    log_file, traffic_dir = srv.log_file, srv.traffic_dir
    pytestconfig.stash[SERVER_FILES] = f"rsvault log: {log_file}  traffic: {traffic_dir}"
    try:
        yield srv
    finally:
        _stop(proc)
        log.close()
    if os.environ.get("RSVAULT_SKIP_OAV") == "1":
        return
    report = base / "oav-report.txt"
    res = subprocess.run(
        ["node", str(REPO_ROOT / "tools/oav/validate.js"), str(traffic_dir),
         str(REPO_ROOT / "tests/interop/oav-allowlist.json"), "--require-validated"],
        capture_output=True,
        text=True,
    )
    report.write_text(res.stdout + res.stderr)
    summary = [l for l in res.stdout.splitlines() if l.startswith("oav summary")]
    pytestconfig.stash[OAV_SUMMARY] = f"{summary[-1] if summary else 'oav: no summary'} (report: {report})"
    if res.returncode != 0:
        failures = "\n".join(l for l in (res.stdout + res.stderr).splitlines() if not l.startswith(("ok ", "skip ")))
        pytest.fail(f"oav validation of the recorded traffic failed ({report}):\n{failures}", pytrace=False)



@pytest.fixture(scope="session")
def clock_server(tmp_path_factory):
    """A second server on a test clock (`--test-clock`): time moves only through `advance`."""
    base = tmp_path_factory.mktemp("rsvault-clock")
    proc, srv, log = _start(base, ["--test-clock", *_grants(tmp_path_factory)])
    try:
        yield srv
    finally:
        _stop(proc)
        log.close()


def _storage_file(base: Path) -> Path:
    """A storage file declaring the object stores the test command started (`s3`, the default, and
    `blob`); see scripts/object-test-servers."""
    env = os.environ
    if not env.get("RSVAULT_TEST_S3_ENDPOINT") or not env.get("RSVAULT_TEST_AZBLOB_ENDPOINT"):
        if env.get("RSVAULT_REQUIRE_OBJECT_STORES") == "1":
            pytest.fail("no object stores in the environment: run the tests through scripts/test")
        pytest.skip("no object stores in the environment (scripts/test starts them)")
    f = base / "storage.toml"
    f.write_text(
        'default = "s3"\n'
        "[targets.s3]\n"
        'kind = "s3"\n'
        f'endpoint = "{env["RSVAULT_TEST_S3_ENDPOINT"]}"\n'
        f'bucket = "{env["RSVAULT_TEST_S3_BUCKET"]}"\n'
        f'region = "{env.get("RSVAULT_TEST_S3_REGION", "us-east-1")}"\n'
        'prefix = "interop"\n'
        f'access_key_id = "{env["RSVAULT_TEST_S3_ACCESS_KEY_ID"]}"\n'
        f'secret_access_key = "{env["RSVAULT_TEST_S3_SECRET_ACCESS_KEY"]}"\n'
        "[targets.blob]\n"
        'kind = "azblob"\n'
        f'endpoint = "{env["RSVAULT_TEST_AZBLOB_ENDPOINT"]}"\n'
        f'account = "{env["RSVAULT_TEST_AZBLOB_ACCOUNT"]}"\n'
        f'container = "{env["RSVAULT_TEST_AZBLOB_CONTAINER"]}"\n'
        'prefix = "interop"\n'
        f'account_key = "{env["RSVAULT_TEST_AZBLOB_KEY"]}"\n'
    )
    f.chmod(0o600)
    return f


@pytest.fixture(scope="session")
def object_server(tmp_path_factory):
    """A server whose vaults live in object storage (`--storage`): Garage (S3) by default, Azurite
    (Azure Blob) for a vault tagged `rsvault-storage-target: blob`."""
    base = tmp_path_factory.mktemp("rsvault-objects")
    storage = _storage_file(base)
    proc, srv, log = _start(base, ["--storage", str(storage), *_grants(tmp_path_factory)])
    srv.storage_file = storage
    try:
        yield srv
    finally:
        _stop(proc)
        log.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for key in (SERVER_FILES, OAV_SUMMARY):
        if key in config.stash:
            terminalreporter.write_line(config.stash[key])


def pytest_configure(config):
    config.addinivalue_line("markers", "az: drives the az CLI (needs .venv/az); select with -m az, skip with -m 'not az'")
