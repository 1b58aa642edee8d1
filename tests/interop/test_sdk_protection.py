"""Issue 4 through the unmodified Azure Python SDK: local VMs and file shares declared as ARM resources
(azure-mgmt-resource's generic `resources` client), discovered, protected, listed, stopped, deleted with
soft delete, undeleted — with `backupStatus` before and after (azure-mgmt-recoveryservicesbackup 11.2.0).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
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


@pytest.fixture(scope="module")
def env(server, tmp_path_factory):
    """A group, a vault, a VM with a raw and a qcow2 disk, and a storage account with one share."""
    rm = server.client(ResourceManagementClient)
    rs = server.client(RecoveryServicesClient)
    bk = server.client(RecoveryServicesBackupClient)
    group = unique("sdk-prot-")
    rm.resource_groups.create_or_update(group, {"location": LOCATION})
    vault = unique("vault-")
    rs.vaults.begin_create_or_update(group, vault, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"))).result()
    disks = tmp_path_factory.mktemp("disks")
    os_disk = disks / "os.raw"
    os_disk.write_bytes(b"\x01" * (1 << 20))
    data_disk = disks / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data_disk), "1G"], check=True)
    vm = unique("vm")
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm}"
    created = rm.resources.begin_create_or_update_by_id(
        vm_id,
        GenericResource(
            location=LOCATION,
            properties={"storageProfile": {
                "osDisk": {"osType": "Linux", "vhd": {"uri": os_disk.as_uri()}},
                "dataDisks": [{"lun": 0, "vhd": {"uri": data_disk.as_uri()}}],
            }},
        ),
        api_version=VM_API,
    ).result()
    assert created.properties["provisioningState"] == "Succeeded"
    files = tmp_path_factory.mktemp("files")
    acct = unique("acct")
    acct_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{acct}"
    rm.resources.begin_create_or_update_by_id(
        acct_id, GenericResource(location=LOCATION, kind="StorageV2", tags={"rsvault-path": str(files)}), api_version=STORAGE_API
    ).result()
    rm.resources.begin_create_or_update_by_id(
        f"{acct_id}/fileServices/default/shares/docs", GenericResource(), api_version=STORAGE_API
    ).result()
    return dict(bk=bk, rs=rs, rm=rm, group=group, vault=vault, vm=vm, vm_id=vm_id, acct=acct, acct_id=acct_id, files=files)


def policy_id(env, name: str) -> str:
    return env["bk"].protection_policies.get(env["vault"], env["group"], name).id


def status_of(env, resource_id: str, resource_type: str = "VM", logical: str | None = None) -> bm.BackupStatusResponse:
    return env["bk"].backup_status.get(
        LOCATION, bm.BackupStatusRequest(resource_type=resource_type, resource_id=resource_id, po_logical_name=logical)
    )


def test_vm_is_discovered_protected_stopped_soft_deleted_and_undeleted(env):
    bk, vault, group, vm, vm_id = env["bk"], env["vault"], env["group"], env["vm"], env["vm_id"]
    assert status_of(env, vm_id).protection_status == "NotProtected"

    bk.protection_containers.refresh(vault, group, "Azure")
    protectable = list(bk.backup_protectable_items.list(vault, group, filter="backupManagementType eq 'AzureIaasVM'"))
    # SDK 11.2.0 resolves one level of discriminator only: a VM ("Microsoft.Compute/virtualMachines", a
    # grandchild type) arrives as the base model, as it does from Azure; its fields read by wire name.
    mine = [p for p in protectable if p.properties["virtualMachineId"].lower() == vm_id.lower()]
    assert len(mine) == 1, [p.id for p in protectable]
    assert mine[0].properties.protectable_item_type == "Microsoft.Compute/virtualMachines"
    container = f"IaasVMContainer;iaasvmcontainerv2;{group};{vm}"
    item = f"VM;iaasvmcontainerv2;{group};{vm}"

    # Enable protection: a long-running PUT the SDK polls to the end, then reads the item.
    ops = []

    def hook(resp):
        if resp.http_response.headers.get("Azure-AsyncOperation"):
            ops.append(resp.http_response.headers["Azure-AsyncOperation"])

    result = bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(
            source_resource_id=vm_id, policy_id=policy_id(env, "DefaultPolicy"))),
        raw_response_hook=hook,
    ).result()
    assert result.properties.protected_item_type == "Microsoft.Compute/virtualMachines"
    assert result.properties["protectionState"] == "IRPending"
    assert result.properties.policy_id.lower().endswith("/backuppolicies/defaultpolicy")
    op_id = ops[0].split("/operationsStatus/")[1].split("?")[0]
    op = bk.backup_operation_statuses.get(vault, group, op_id)
    assert op.status == "Succeeded"
    job = bk.job_details.get(vault, group, op.properties.job_id)
    assert isinstance(job.properties, bm.AzureIaaSVMJob)
    assert (job.properties.operation, job.properties.status) == ("ConfigureBackup", "Completed")
    assert job.properties.entity_friendly_name == vm

    listed = list(bk.backup_protected_items.list(vault, group, filter="backupManagementType eq 'AzureIaasVM' and itemType eq 'VM'"))
    assert [i.name for i in listed] == [item]
    assert bk.protection_policies.get(vault, group, "DefaultPolicy").properties.protected_items_count == 1
    containers = list(bk.backup_protection_containers.list(vault, group, filter="backupManagementType eq 'AzureIaasVM' and status eq 'Registered'"))
    assert [c.name for c in containers] == [container]

    st = status_of(env, vm_id)
    assert st.protection_status == "Protected"
    assert st.vault_id.lower().endswith(f"/vaults/{vault}".lower())
    assert st.fabric_name == "Azure"
    assert st.policy_name == "DefaultPolicy"
    assert st.container_name == f"iaasvmcontainer;iaasvmcontainerv2;{group};{vm}"
    assert st.protected_item_name == f"vm;iaasvmcontainerv2;{group};{vm}"

    # A second vault may not protect the same VM.
    other = unique("vault-")
    env["rs"].vaults.begin_create_or_update(group, other, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"))).result()
    with pytest.raises(HttpResponseError) as err:
        bk.protected_items.begin_create_or_update(
            other, group, "Azure", container, item,
            bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(
                source_resource_id=vm_id,
                policy_id=bk.protection_policies.get(other, group, "DefaultPolicy").id)),
        ).result()
    assert err.value.status_code == 400 and err.value.error.code == "BMSUserErrorAlreadyProtected"

    # Stop protection, keeping the data.
    stopped = bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(
            source_resource_id=vm_id, policy_id="", protection_state="ProtectionStopped")),
    ).result()
    assert stopped.properties["protectionState"] == "ProtectionStopped"

    # Delete the data: soft delete (the vault default) keeps the item, scheduled for deletion.
    bk.protected_items.delete(vault, group, "Azure", container, item)
    soft = bk.protected_items.get(vault, group, "Azure", container, item)
    assert soft.properties.is_scheduled_for_deferred_delete is True
    assert soft.properties.deferred_delete_time_in_utc is not None
    assert soft.properties.deferred_delete_time_remaining.startswith(("13.", "14."))

    # Undelete.
    back = bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(is_rehydrate=True)),
    ).result()
    assert back.properties.is_scheduled_for_deferred_delete is False
    assert back.properties["protectionState"] == "ProtectionStopped"

    # With soft delete off, delete removes the item; the VM is no longer protected anywhere.
    cfg = bk.backup_resource_vault_configs.update(
        vault, group, bm.BackupResourceVaultConfigResource(properties=bm.BackupResourceVaultConfig(soft_delete_feature_state="Disabled"))
    )
    assert cfg.properties.soft_delete_feature_state == "Disabled"
    bk.protected_items.delete(vault, group, "Azure", container, item)
    assert list(bk.backup_protected_items.list(vault, group)) == []
    assert status_of(env, vm_id).protection_status == "NotProtected"


def test_policies_are_created_listed_validated_and_deleted(env):
    bk, vault, group = env["bk"], env["vault"], env["group"]
    names = sorted(p.name for p in bk.backup_policies.list(vault, group))
    assert {"DefaultPolicy", "EnhancedPolicy", "HourlyLogBackup"} <= set(names)
    t = "2026-01-01T02:30:00Z"
    policy = bm.ProtectionPolicyResource(properties=bm.AzureIaaSVMProtectionPolicy(
        time_zone="UTC",
        schedule_policy=bm.SimpleSchedulePolicy(schedule_run_frequency="Daily", schedule_run_times=[t]),
        retention_policy=bm.LongTermRetentionPolicy(
            daily_schedule=bm.DailyRetentionSchedule(retention_times=[t], retention_duration=bm.RetentionDuration(count=7, duration_type="Days")),
            monthly_schedule=bm.MonthlyRetentionSchedule(
                retention_schedule_format_type="Weekly",
                retention_schedule_weekly=bm.WeeklyRetentionFormat(days_of_the_week=["Sunday"], weeks_of_the_month=["First"]),
                retention_times=[t],
                retention_duration=bm.RetentionDuration(count=12, duration_type="Months"),
            ),
        ),
    ))
    made = bk.protection_policies.create_or_update(vault, group, "daily7", policy)
    assert isinstance(made.properties, bm.AzureIaaSVMProtectionPolicy)
    assert made.properties.protected_items_count == 0
    assert made.properties.retention_policy.monthly_schedule.retention_duration.count == 12
    policy.properties.retention_policy.daily_schedule.retention_duration.count = 3
    with pytest.raises(HttpResponseError) as err:
        bk.protection_policies.create_or_update(vault, group, "daily3", policy)
    assert err.value.status_code == 400 and err.value.error.code == "BMSUserErrorInvalidPolicyInput"
    bk.protection_policies.begin_delete(vault, group, "daily7").result()
    assert "daily7" not in [p.name for p in bk.backup_policies.list(vault, group)]


def test_file_share_is_registered_and_protected(env):
    bk, vault, group, acct, acct_id = env["bk"], env["vault"], env["group"], env["acct"], env["acct_id"]
    protectable = list(bk.protectable_containers.list(vault, group, "Azure", filter="backupManagementType eq 'AzureStorage'"))
    # Other tests' storage accounts in the subscription are protectable too; this one is there once.
    assert [c.properties.friendly_name for c in protectable].count(acct) == 1
    container = f"StorageContainer;Storage;{group};{acct}"
    reg = bk.protection_containers.begin_register(
        vault, group, "Azure", container,
        bm.ProtectionContainerResource(properties=bm.AzureStorageContainer(
            source_resource_id=acct_id, friendly_name=acct, backup_management_type="AzureStorage")),
    ).result()
    assert reg.properties.registration_status == "Registered"
    bk.protection_containers.inquire(vault, group, "Azure", container)
    shares = list(bk.backup_protectable_items.list(vault, group, filter="backupManagementType eq 'AzureStorage' and workloadType eq 'AzureFileShare'"))
    assert [s.properties.friendly_name for s in shares] == ["docs"]
    t = "2026-01-01T04:00:00Z"
    bk.protection_policies.create_or_update(vault, group, "afsdaily", bm.ProtectionPolicyResource(properties=bm.AzureFileShareProtectionPolicy(
        work_load_type="AzureFileShare",
        schedule_policy=bm.SimpleSchedulePolicy(schedule_run_frequency="Daily", schedule_run_times=[t]),
        retention_policy=bm.LongTermRetentionPolicy(daily_schedule=bm.DailyRetentionSchedule(
            retention_times=[t], retention_duration=bm.RetentionDuration(count=10, duration_type="Days"))),
    )))
    item = bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, "AzureFileShare;docs",
        bm.ProtectedItemResource(properties=bm.AzureFileshareProtectedItem(source_resource_id=acct_id, policy_id=policy_id(env, "afsdaily"))),
    ).result()
    assert isinstance(item.properties, bm.AzureFileshareProtectedItem)
    assert item.properties.friendly_name == "docs"
    st = status_of(env, acct_id, "AzureFileShare", "docs")
    assert (st.protection_status, st.registration_status, st.protected_items_count) == ("Protected", "Registered", 1)
    with pytest.raises(HttpResponseError) as err:
        bk.protection_containers.unregister(vault, group, "Azure", container)
    assert err.value.error.code == "BMSUserErrorContainerHasDatasources"

    # Its share soft-deleted, the account can be unregistered: the container is soft-deleted with it
    # (the SDK's deleted_protection_containers) until the share is purged or it is registered again.
    bk.backup_resource_vault_configs.update(
        vault, group, bm.BackupResourceVaultConfigResource(properties=bm.BackupResourceVaultConfig(soft_delete_feature_state="Enabled"))
    )
    bk.protected_items.delete(vault, group, "Azure", container, "AzureFileShare;docs")
    gone = bk.protected_items.get(vault, group, "Azure", container, "AzureFileShare;docs")
    assert gone.properties.is_scheduled_for_deferred_delete
    bk.protection_containers.unregister(vault, group, "Azure", container)
    assert container.lower() not in [c.name.lower() for c in bk.backup_protection_containers.list(vault, group)]
    deleted = list(bk.deleted_protection_containers.list(group, vault))
    assert [(c.name.lower(), c.properties.registration_status) for c in deleted] == [(container.lower(), "SoftDeleted")]
    bk.protection_containers.begin_register(
        vault, group, "Azure", container,
        bm.ProtectionContainerResource(properties=bm.AzureStorageContainer(
            source_resource_id=acct_id, friendly_name=acct, backup_management_type="AzureStorage")),
    ).result()
    assert list(bk.deleted_protection_containers.list(group, vault)) == []
