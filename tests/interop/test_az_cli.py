"""Resource groups and Recovery Services vaults through the unmodified az CLI (azure-cli in .venv/az).

The CLI gets its own AZURE_CONFIG_DIR, trusts the server's CA through REQUESTS_CA_BUNDLE, and is pointed
at the server by registering a custom cloud (see shared/design/CLIENTS.md). Marked `az`: select with
`-m az`, leave out with `-m 'not az'`. Set AZ_BIN to use another az executable.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import LOCATION, REPO_ROOT

pytestmark = pytest.mark.az

AZ_BIN = Path(os.environ.get("AZ_BIN", REPO_ROOT / ".venv/az/bin/az"))
AZ_TIMEOUT_S = 180


class AzFailed(Exception):
    def __init__(self, args, proc):
        super().__init__(f"az {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        self.proc = proc


@pytest.fixture(scope="module")
def az(server, tmp_path_factory):
    """A function running `az ARGS... -o json` logged in to the server as its bootstrap principal."""
    return login(server, tmp_path_factory, server.client_id, server.client_secret)


def login(server, tmp_path_factory, client_id: str, client_secret: str):
    """Registers the server as a cloud in a fresh AZURE_CONFIG_DIR and logs in as a service principal."""
    if not AZ_BIN.exists():
        pytest.skip(f"az CLI not installed at {AZ_BIN} (scripts/setup-test-env installs it)")
    env = dict(os.environ)
    env.update(
        AZURE_CONFIG_DIR=str(tmp_path_factory.mktemp("azure-config")),
        REQUESTS_CA_BUNDLE=server.ca_file,
        AZURE_CORE_COLLECT_TELEMETRY="false",
        AZURE_CORE_NO_COLOR="true",
        AZURE_CORE_SURVEY_MESSAGE="false",
    )

    def run(*args: str, check: bool = True, cwd=None):
        full = [*args, "-o", "json", "--only-show-errors"]
        proc = subprocess.run([str(AZ_BIN), *full], env=env, capture_output=True, text=True, timeout=AZ_TIMEOUT_S, cwd=cwd)
        if check and proc.returncode != 0:
            raise AzFailed(full, proc)
        if proc.returncode != 0:
            return proc
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    run(
        "cloud", "register", "-n", "RsvaultLocal",
        "--endpoint-resource-manager", server.url,
        "--endpoint-active-directory", server.url,
        "--endpoint-active-directory-resource-id", "https://management.azure.com/",
    )
    run("cloud", "set", "-n", "RsvaultLocal")
    run("config", "set", "core.instance_discovery=false")
    # --password=SECRET: a secret may start with "-", which az would read as an option.
    run("login", "--service-principal", "-u", client_id, f"--password={client_secret}", "--tenant", server.tenant_id)
    return run


def test_account_list(az, server):
    accounts = az("account", "list")
    mine = [a for a in accounts if a["id"] == server.subscription_id]
    assert mine, accounts
    assert mine[0]["tenantId"] == server.tenant_id
    assert mine[0]["state"] == "Enabled"
    assert mine[0]["isDefault"] is True
    assert az("account", "show")["id"] == server.subscription_id


def test_group_and_vault(az, server):
    rg = f"az-rg-{uuid.uuid4().hex[:8]}"
    vault = f"az-vault-{uuid.uuid4().hex[:8]}"
    group = az("group", "create", "-n", rg, "-l", LOCATION)
    assert group["name"] == rg
    assert group["properties"]["provisioningState"] == "Succeeded"

    created = az("backup", "vault", "create", "-g", rg, "-n", vault, "-l", LOCATION)
    assert created["name"] == vault
    assert created["location"] == LOCATION
    assert created["properties"]["provisioningState"] == "Succeeded"

    listed = az("backup", "vault", "list", "-g", rg)
    assert [v["name"] for v in listed] == [vault]
    shown = az("backup", "vault", "show", "-g", rg, "-n", vault)
    assert shown["id"].lower() == created["id"].lower()

    az("backup", "vault", "delete", "-g", rg, "-n", vault, "--yes")
    gone = az("backup", "vault", "show", "-g", rg, "-n", vault, check=False)
    assert gone.returncode != 0
    assert "ResourceNotFound" in gone.stderr or "not found" in gone.stderr.lower(), gone.stderr
    assert az("backup", "vault", "list", "-g", rg) == []


def test_role_assignment_makes_a_backup_reader(az, server, tmp_path_factory):
    """`az role assignment create` grants Backup Reader at a group; that principal reads but cannot write."""
    from conftest import _bin_path

    rg = f"az-rbac-{uuid.uuid4().hex[:8]}"
    vault = f"az-vault-{uuid.uuid4().hex[:8]}"
    az("group", "create", "-n", rg, "-l", LOCATION)
    az("backup", "vault", "create", "-g", rg, "-n", vault, "-l", LOCATION)
    made = subprocess.run(
        [str(_bin_path()), "principal", "create", "--name", "az-reader", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, check=True,
    )
    p = json.loads(made.stdout)
    scope = f"/subscriptions/{server.subscription_id}/resourceGroups/{rg}"
    ra = az("role", "assignment", "create", "--assignee-object-id", p["objectId"],
            "--assignee-principal-type", "ServicePrincipal", "--role", "Backup Reader", "--scope", scope)
    assert ra["scope"] == scope
    assert ra["principalId"] == p["objectId"]
    listed = az("role", "assignment", "list", "--scope", scope, "--fill-principal-name", "false")
    assert any(a["principalId"] == p["objectId"] for a in listed), listed

    reader = login(server, tmp_path_factory, p["clientId"], p["clientSecret"])
    assert reader("backup", "vault", "show", "-g", rg, "-n", vault)["name"] == vault
    denied = reader("backup", "vault", "create", "-g", rg, "-n", vault + "x", "-l", LOCATION, check=False)
    assert denied.returncode != 0
    assert "AuthorizationFailed" in denied.stderr, denied.stderr
