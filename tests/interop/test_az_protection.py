"""Issue 4 through the unmodified az CLI: a local VM declared with `az resource create`, then
`az backup protection check-vm` / `enable-for-vm`, `az backup container list`, `az backup item list/show`,
`az backup policy list/show/create/set`, `az backup protection disable`. Marked `az`.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from conftest import LOCATION
from test_az_cli import login

pytestmark = pytest.mark.az


@pytest.fixture(scope="module")
def az(server, tmp_path_factory):
    return login(server, tmp_path_factory, server.client_id, server.client_secret)


@pytest.fixture(scope="module")
def setup(az, server, tmp_path_factory):
    rg = f"az-prot-{uuid.uuid4().hex[:6]}"
    vault = f"az-vault-{uuid.uuid4().hex[:6]}"
    az("group", "create", "-n", rg, "-l", LOCATION)
    az("backup", "vault", "create", "-g", rg, "-n", vault, "-l", LOCATION)
    disks = tmp_path_factory.mktemp("az-disks")
    os_disk = disks / "os.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(os_disk), "2G"], check=True)
    vm = f"azvm{uuid.uuid4().hex[:6]}"
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
    full = {"location": LOCATION, "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": os_disk.as_uri()}}}}}
    made = az("resource", "create", "--id", vm_id, "--api-version", "2024-07-01", "--is-full-object", "--properties", json.dumps(full))
    assert made["properties"]["provisioningState"] == "Succeeded"
    return dict(rg=rg, vault=vault, vm=vm, vm_id=vm_id)


def test_check_vm_enable_for_vm_and_list(az, setup, server):
    rg, vault, vm, vm_id = setup["rg"], setup["vault"], setup["vm"], setup["vm_id"]
    assert az("backup", "protection", "check-vm", "--vm", vm_id) is None, "not protected yet"

    job = az("backup", "protection", "enable-for-vm", "-g", rg, "-v", vault, "--vm", vm_id, "--policy-name", "DefaultPolicy")
    assert job["properties"]["operation"] == "ConfigureBackup"
    assert job["properties"]["status"] == "Completed"
    assert job["properties"]["entityFriendlyName"] == vm

    protected_by = az("backup", "protection", "check-vm", "--vm", vm_id)
    assert protected_by.lower().endswith(f"/vaults/{vault}".lower()), protected_by

    containers = az("backup", "container", "list", "-g", rg, "-v", vault, "--backup-management-type", "AzureIaasVM")
    assert [c["properties"]["friendlyName"] for c in containers] == [vm]
    items = az("backup", "item", "list", "-g", rg, "-v", vault)
    assert [i["properties"]["friendlyName"] for i in items] == [vm]
    container_name = containers[0]["name"]
    shown = az("backup", "item", "show", "-g", rg, "-v", vault, "-c", container_name, "-n", vm, "--backup-management-type", "AzureIaasVM")
    assert shown["properties"]["policyName"] == "DefaultPolicy"
    assert shown["properties"]["protectionState"] == "IRPending"

    stopped = az("backup", "protection", "disable", "-g", rg, "-v", vault, "-c", container_name, "-i", vm,
                 "--backup-management-type", "AzureIaasVM", "--yes")
    assert stopped["properties"]["operation"] == "DisableBackup", stopped
    again = az("backup", "item", "show", "-g", rg, "-v", vault, "-c", container_name, "-n", vm, "--backup-management-type", "AzureIaasVM")
    assert again["properties"]["protectionState"] == "ProtectionStopped"


def test_policy_list_show_create_set(az, setup, tmp_path):
    rg, vault = setup["rg"], setup["vault"]
    names = {p["name"] for p in az("backup", "policy", "list", "-g", rg, "-v", vault)}
    assert {"DefaultPolicy", "EnhancedPolicy", "HourlyLogBackup"} <= names
    default = az("backup", "policy", "show", "-g", rg, "-v", vault, "-n", "DefaultPolicy")
    assert default["properties"]["backupManagementType"] == "AzureIaasVM"
    doc = dict(default)
    doc["name"] = "azdaily"
    doc["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = 14
    f = tmp_path / "policy.json"
    f.write_text(json.dumps(doc))
    made = az("backup", "policy", "create", "-g", rg, "-v", vault, "-n", "azdaily", "--policy", str(f),
              "--backup-management-type", "AzureIaasVM")
    assert made["name"] == "azdaily"
    assert made["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] == 14
    doc["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = 21
    f.write_text(json.dumps(doc))
    az("backup", "policy", "set", "-g", rg, "-v", vault, "-n", "azdaily", "--policy", str(f))
    shown = az("backup", "policy", "show", "-g", rg, "-v", vault, "-n", "azdaily")
    assert shown["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] == 21
    doc["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = 2
    f.write_text(json.dumps(doc))
    bad = az("backup", "policy", "set", "-g", rg, "-v", vault, "-n", "azdaily", "--policy", str(f), check=False)
    assert bad.returncode != 0
    assert "BMSUserErrorInvalidPolicyInput" in bad.stderr or "retention range" in bad.stderr, bad.stderr
