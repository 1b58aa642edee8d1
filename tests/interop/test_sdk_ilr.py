"""Issue 16 through the unmodified Azure Python SDK: restore validation (`operation.validate`,
`validate_operation.begin_trigger` and its result) and item level recovery of a VM whose disk holds an
ext4 file system: `item_level_recovery_connections.provision` (a plain POST answering 202, followed as
the az CLI follows it: the vault's `backupOperations/{op}` from `Azure-AsyncOperation`),
`list_instant_item_recovery_operation_result` (the client script, base64), the script run to copy the
disk over NBD with TLS-PSK, one file read back with `debugfs` and compared; `revoke` ends the export.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from azure.mgmt.recoveryservices import RecoveryServicesClient
from azure.mgmt.recoveryservices import models as rsm
from azure.mgmt.recoveryservicesbackup import RecoveryServicesBackupClient
from azure.mgmt.recoveryservicesbackup import models as bm
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import GenericResource

from conftest import LOCATION

VM_API = "2024-07-01"
STORAGE_API = "2023-05-01"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def headers_of(call, *args, **kwargs) -> dict:
    """Calls an SDK method and returns the first response's headers (lower-cased)."""
    seen: dict = {}

    def hook(r):
        if not seen:
            seen.update({k.lower(): v for k, v in r.http_response.headers.items()})

    call(*args, raw_response_hook=hook, **kwargs)
    return seen


def wait_operation(bk, vault, group, op_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        op = bk.backup_operation_statuses.get(vault, group, op_id)
        if op.status != "InProgress":
            return op
        time.sleep(0.2)
    raise AssertionError(f"operation {op_id} still running after {timeout}s")


@pytest.fixture(scope="module")
def env(server, tmp_path_factory):
    rm = server.client(ResourceManagementClient)
    rs = server.client(RecoveryServicesClient)
    bk = server.client(RecoveryServicesBackupClient)
    group, vault, vm = unique("sdk-ilr-"), unique("vault-"), unique("vm")
    rm.resource_groups.create_or_update(group, {"location": LOCATION})
    rs.vaults.begin_create_or_update(group, vault, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"))).result()
    work = tmp_path_factory.mktemp("ilr")
    src = work / "src"
    (src / "etc").mkdir(parents=True)
    content = os.urandom(200 << 10)
    (src / "etc" / "app.conf").write_bytes(content)
    os_disk = work / "os.raw"
    subprocess.run(["/usr/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-d", str(src), str(os_disk), "16M"], check=True)
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm}"
    rm.resources.begin_create_or_update_by_id(
        vm_id,
        GenericResource(location=LOCATION, properties={"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": os_disk.as_uri()}}}}),
        api_version=VM_API,
    ).result()
    target = tmp_path_factory.mktemp("ilr-restores")
    acct = unique("sa")
    acct_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{acct}"
    rm.resources.begin_create_or_update_by_id(
        acct_id, GenericResource(location=LOCATION, kind="StorageV2", tags={"rsvault-path": str(target)}), api_version=STORAGE_API
    ).result()
    container = f"IaasVMContainer;iaasvmcontainerv2;{group};{vm}"
    item = f"VM;iaasvmcontainerv2;{group};{vm}"
    policy = bk.protection_policies.get(vault, group, "DefaultPolicy").id
    bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(source_resource_id=vm_id, policy_id=policy)),
    ).result()
    h = headers_of(bk.backups.trigger, vault, group, "Azure", container, item, bm.BackupRequestResource(properties=bm.IaasVMBackupRequest()))
    op_id = h["azure-asyncoperation"].split("/operationsStatus/")[1].split("?")[0]
    job_id = wait_operation(bk, vault, group, op_id).properties.job_id
    deadline = time.time() + 120
    while bk.job_details.get(vault, group, job_id).properties.status == "InProgress":
        assert time.time() < deadline
        time.sleep(0.2)
    assert bk.job_details.get(vault, group, job_id).properties.status == "Completed"
    rp = next(iter(bk.recovery_points.list(vault, group, "Azure", container, item)))
    return dict(bk=bk, group=group, vault=vault, vm_id=vm_id, container=container, item=item, rp=rp, acct_id=acct_id,
                target=target, content=content, work=work)


def restore_request(env, rp_name, **change):
    fields = dict(recovery_point_id=rp_name, recovery_type="RestoreDisks", source_resource_id=env["vm_id"],
                  storage_account_id=env["acct_id"], region=LOCATION, original_storage_account_option=False)
    fields.update(change)
    return bm.IaasVMRestoreRequest(**fields)


def test_restore_validation_with_the_sdk(env):
    bk, vault, group, rp = env["bk"], env["vault"], env["group"], env["rp"]

    def validate(rr):
        req = bm.ValidateOperationRequestResource(id=rp.id, properties=bm.ValidateIaasVMRestoreOperationRequest(restore_request=rr))
        return bk.operation.validate(vault, group, req).validate_operation_response.validation_results

    assert validate(restore_request(env, rp.name)) == []
    other = env["acct_id"].rsplit("/", 1)[0] + "/nosuchaccount"
    [finding] = validate(restore_request(env, rp.name, storage_account_id=other))
    assert finding.code == "UserErrorStorageAccountNotFound" and finding.message and finding.recommendations

    # The long-running form: 202, then the result at Location, the status at Azure-AsyncOperation.
    req = bm.ValidateOperationRequestResource(
        id="", properties=bm.ValidateIaasVMRestoreOperationRequest(restore_request=restore_request(env, "123456789012345")))
    seen: dict = {}
    poller = bk.validate_operation.begin_trigger(
        vault, group, req, raw_response_hook=lambda r: seen or seen.update({k.lower(): v for k, v in r.http_response.headers.items()}))
    poller.result()
    assert "/backupValidateOperationResults/" in seen["location"], seen
    op_id = seen["location"].split("/backupValidateOperationResults/")[1].split("?")[0]
    assert bk.validate_operation_statuses.get(vault, group, op_id).status == "Succeeded"
    result = bk.validate_operation_results.get(vault, group, op_id)
    assert [r.code for r in result.validate_operation_response.validation_results] == ["BMSUserErrorRecoveryPointNotFound"]


def run_script(script: str, work: Path, tag: str) -> subprocess.CompletedProcess:
    path = work / f"ilr-{tag}.sh"
    path.write_text(script)
    dest = work / f"copy-{tag}"
    dest.mkdir()
    return subprocess.run(["bash", str(path), "copy", str(dest)], capture_output=True, text=True)


def test_item_level_recovery_with_the_sdk(env):
    bk, vault, group, rp = env["bk"], env["vault"], env["group"], env["rp"]
    args = (vault, group, "Azure", env["container"], env["item"], rp.name)
    req = bm.ILRRequestResource(properties=bm.IaasVMILRRegistrationRequest(
        recovery_point_id=rp.name, virtual_machine_id=env["vm_id"], renew_existing_registration=False))
    h = headers_of(bk.item_level_recovery_connections.provision, *args, req)
    assert "/operationResults/" in h["location"]
    # As the az CLI: the last segment of Azure-AsyncOperation, polled at the vault's backupOperations.
    op_id = h["azure-asyncoperation"].split("?")[0].rsplit("/", 1)[1]
    assert wait_operation(bk, vault, group, op_id).status == "Succeeded"
    assert bk.recovery_points.get(*args).properties.is_instant_ilr_session_active is True

    target = bk.item_level_recovery_connections.list_instant_item_recovery_operation_result(
        resource_group_name=group, vault_name=vault, fabric_name="Azure", container_name=env["container"],
        protected_item_name=env["item"], recovery_point_id=rp.name,
        body=bm.InstantItemRecoveryOperationResultRequest(provision_instant_item_recovery_operation_id=op_id))
    [client] = target.client_scripts
    assert (client.os_type, client.script_extension) == ("Linux", ".sh")
    script = base64.b64decode(client.script_content).decode()
    work = env["work"]
    out = run_script(script, work, "sdk")
    assert out.returncode == 0, out.stderr
    [image] = out.stdout.split()
    got = work / "app.conf"
    subprocess.run(["/usr/sbin/debugfs", "-R", f"dump /etc/app.conf {got}", image], check=True, capture_output=True)
    assert got.read_bytes() == env["content"]

    h = headers_of(bk.item_level_recovery_connections.revoke, *args)
    rop = h["azure-asyncoperation"].split("?")[0].rsplit("/", 1)[1]
    assert wait_operation(bk, vault, group, rop).status == "Succeeded"
    assert bk.recovery_points.get(*args).properties.is_instant_ilr_session_active is False
    out = run_script(script, work, "revoked")
    assert out.returncode != 0 and "refused" in out.stderr.lower(), out.stderr
