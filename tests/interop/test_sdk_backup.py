"""Issue 6 through the unmodified Azure Python SDK (azure-mgmt-recoveryservicesbackup 11.2.0), with real
data: enable protection → trigger a backup (a plain POST answering 202) → follow `Azure-AsyncOperation` to
the job id → poll the job to `Completed` → list and read the recovery point → restore the disks into a
storage account (the SDK's long-running `restores.begin_trigger`) → the restored images equal the guest
content; and a file share backed up and restored item by item. The vault is then read with stock
`restic`, through `rsvault restic-env`. Each runs three times: a vault in the data dir, one in S3 (Garage)
and one in Azure Blob (Azurite) (issue 15).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.recoveryservices import RecoveryServicesClient
from azure.mgmt.recoveryservices import models as rsm
from azure.mgmt.recoveryservicesbackup import RecoveryServicesBackupClient
from azure.mgmt.recoveryservicesbackup import models as bm
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import GenericResource

from conftest import LOCATION, _bin_path

VM_API = "2024-07-01"
STORAGE_API = "2023-05-01"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def trigger(bk, *args):
    """`backups.trigger` (a plain POST answering 202): returns the response headers a script follows."""
    seen = {}
    bk.backups.trigger(*args, raw_response_hook=lambda r: seen.update({k.lower(): v for k, v in r.http_response.headers.items()}))
    return seen


def wait_job(bk, vault, group, job_id, timeout=180):
    """Polls a job as a script would; returns every status seen and the final job."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = bk.job_details.get(vault, group, job_id)
        seen.append(job.properties.status)
        if job.properties.status not in ("InProgress", "Cancelling"):
            return seen, job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {seen[-1]} after {timeout}s")


def protect_vm(bk, vault, group, vm, vm_id):
    """Enables protection of a VM with the DefaultPolicy; returns its container and item names."""
    container = f"IaasVMContainer;iaasvmcontainerv2;{group};{vm}"
    item = f"VM;iaasvmcontainerv2;{group};{vm}"
    policy = bk.protection_policies.get(vault, group, "DefaultPolicy").id
    bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(source_resource_id=vm_id, policy_id=policy)),
    ).result()
    return container, item


@pytest.fixture(scope="module", params=["local", "s3", "blob"])
def env(request, tmp_path_factory):
    storage = request.param
    server = request.getfixturevalue("server" if storage == "local" else "object_server")
    rm = server.client(ResourceManagementClient)
    rs = server.client(RecoveryServicesClient)
    bk = server.client(RecoveryServicesBackupClient)
    group = unique("sdk-bk-")
    rm.resource_groups.create_or_update(group, {"location": LOCATION})
    vault = unique("vault-")
    # The object server's default target is S3; a vault's tag sends it to Azure Blob.
    tags = {"rsvault-storage-target": "blob"} if storage == "blob" else None
    rs.vaults.begin_create_or_update(group, vault, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"), tags=tags)).result()
    disks = tmp_path_factory.mktemp("bk-disks")
    os_disk = disks / "os.raw"
    os_disk.write_bytes(os.urandom(6 << 20))
    data_src = disks / "data-src.raw"
    data_src.write_bytes(os.urandom(3 << 20) + b"\0" * (5 << 20) + (b"log line\n" * 120_000)[: 1 << 20])
    data_disk = disks / "data.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(data_src), str(data_disk)], check=True)
    vm = unique("vm")
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm}"
    rm.resources.begin_create_or_update_by_id(
        vm_id,
        GenericResource(location=LOCATION, properties={"storageProfile": {
            "osDisk": {"osType": "Linux", "vhd": {"uri": os_disk.as_uri()}},
            "dataDisks": [{"lun": 0, "name": "data", "vhd": {"uri": data_disk.as_uri()}}],
        }}),
        api_version=VM_API,
    ).result()
    target = tmp_path_factory.mktemp("bk-restores")
    acct = unique("sa")
    acct_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{acct}"
    rm.resources.begin_create_or_update_by_id(
        acct_id, GenericResource(location=LOCATION, kind="StorageV2", tags={"rsvault-path": str(target)}), api_version=STORAGE_API
    ).result()
    container, item = protect_vm(bk, vault, group, vm, vm_id)
    return dict(storage=storage, server=server, bk=bk, rm=rm, group=group, vault=vault, vm=vm, vm_id=vm_id, container=container, item=item,
                os_disk=os_disk, data_src=data_src, acct=acct, acct_id=acct_id, target=target)


def test_vm_backup_is_tracked_to_a_recovery_point_and_restored_byte_for_byte(env):
    bk, vault, group, container, item = env["bk"], env["vault"], env["group"], env["container"], env["item"]
    expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10)).replace(microsecond=0)

    # Backups - Trigger: a plain POST; the 202's headers are what a script follows (seed 003).
    headers = trigger(
        bk, vault, group, "Azure", container, item,
        bm.BackupRequestResource(properties=bm.IaasVMBackupRequest(recovery_point_expiry_time_in_utc=expiry)),
    )
    assert headers["location"].startswith("https://") and "/operationResults/" in headers["location"]
    assert "/operationsStatus/" in headers["azure-asyncoperation"]
    assert int(headers["retry-after"]) >= 0
    op_id = headers["azure-asyncoperation"].split("/operationsStatus/")[1].split("?")[0]

    # Seeds 001/002: the operation's final answer carries the job id; the job is followed to Completed.
    op = bk.protected_item_operation_statuses.get(vault, group, "Azure", container, item, op_id)
    assert op.status == "Succeeded"
    assert isinstance(op.properties, bm.OperationStatusJobExtendedInfo)
    assert bk.backup_operation_statuses.get(vault, group, op_id).properties.job_id == op.properties.job_id
    seen, job = wait_job(bk, vault, group, op.properties.job_id)
    p = job.properties
    assert isinstance(p, bm.AzureIaaSVMJob)
    assert (p.operation, p.status, p.entity_friendly_name) == ("Backup", "Completed", env["vm"])
    assert isinstance(p.duration, dt.timedelta), "duration parses as an ISO-8601 duration"
    assert p.end_time >= p.start_time
    assert [t.task_id for t in p.extended_info.tasks_list] == ["Take Snapshot", "Transfer data to vault"]
    assert all(t.status == "Completed" and isinstance(t.duration, dt.timedelta) for t in p.extended_info.tasks_list)
    assert p.extended_info.property_bag["VM Name"] == env["vm"]
    assert p.extended_info.property_bag["Backup Size"] == "15 MB"
    assert p.extended_info.progress_percentage == 100
    assert p.is_user_triggered is True

    # The recovery point, listed with Azure's date filter, and read by name.
    window = "startDate eq '{}' and endDate eq '{}'".format(
        (dt.datetime.utcnow() - dt.timedelta(hours=1)).strftime("%Y-%m-%d %I:%M:%S %p"),
        (dt.datetime.utcnow() + dt.timedelta(hours=1)).strftime("%Y-%m-%d %I:%M:%S %p"),
    )
    rps = list(bk.recovery_points.list(vault, group, "Azure", container, item, filter=window))
    assert len(rps) == 1
    rp = rps[0]
    assert isinstance(rp.properties, bm.IaasVMRecoveryPoint)
    assert rp.properties.recovery_point_type == "CrashConsistent"
    assert rp.properties.recovery_point_properties.expiry_time == expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert bk.recovery_points.get(vault, group, "Azure", container, item, rp.name).properties.recovery_point_time == rp.properties.recovery_point_time
    # The point's extended info (the SDK's LRO, answered at once): its disks, the OS disk at lun -1.
    ext = bk.recovery_points.begin_get_rp_extended_info(
        group, vault, "Azure",
        bm.GetRPExtendedInfoRequestResource(properties=bm.GetRPExtendedInfoRequest(recovery_point_ids=[rp.id])),
        polling_interval=0,
    ).result()
    assert isinstance(ext.value[0].properties, bm.IaasVMRPExtendedInfo)
    assert ext.value[0].properties.os_disk.lun == -1
    assert len(ext.value[0].properties.data_disks) == 1
    got = bk.protected_items.get(vault, group, "Azure", container, item)
    assert got.properties["lastBackupStatus"] == "Completed"  # base model: read by wire name
    assert got.properties["protectionState"] == "Protected"

    # Restore the disks into the storage account: the SDK's LRO poller runs to the end.
    bk.restores.begin_trigger(
        vault, group, "Azure", container, item, rp.name,
        bm.RestoreRequestResource(properties=bm.IaasVMRestoreRequest(
            recovery_point_id=rp.name, recovery_type="RestoreDisks", source_resource_id=env["vm_id"],
            storage_account_id=env["acct_id"], region=LOCATION, create_new_cloud_service=False,
            original_storage_account_option=False)),
    ).result()
    restores = list(bk.backup_jobs.list(vault, group, filter="operation eq 'Restore'"))
    assert len(restores) == 1
    _, rjob = wait_job(bk, vault, group, restores[0].name)
    assert rjob.properties.status == "Completed", rjob.properties.error_details
    assert rjob.properties.extended_info.property_bag["Job Type"] == "Recover disks"
    images = sorted(p for p in Path(env["target"]).rglob("*") if p.is_file() and p.suffix != ".json")
    assert len(images) == 2
    bag = rjob.properties.extended_info.property_bag
    config = json.loads(Path(bag["Config Blob Uri"].removeprefix("file://")).read_text())
    assert config["type"] == "Microsoft.Compute/virtualMachines"
    template = json.loads(Path(bag["Template Blob Uri"].removeprefix("file://")).read_text())
    assert template["resources"][0]["properties"]["storageProfile"]["osDisk"]["vhd"]["uri"].startswith("file://")
    by_size = sorted(images, key=lambda p: p.stat().st_size)
    assert by_size[0].read_bytes() == env["os_disk"].read_bytes()
    assert by_size[1].read_bytes() == env["data_src"].read_bytes(), "the qcow2 disk comes back as its guest content"

    # Job list filters and export see the jobs; a finished job cannot be cancelled.
    backups = list(bk.backup_jobs.list(vault, group, filter="operation eq 'Backup' and status eq 'Completed'"))
    assert [j.name for j in backups] == [op.properties.job_id]
    with pytest.raises(HttpResponseError) as err:
        bk.job_cancellations.trigger(vault, group, op.properties.job_id)
    assert err.value.status_code == 400 and err.value.error.code == "BMSUserErrorJobNotCancellable"

    # Jobs export: the SDK follows Location to ExportJobsOperationResultInfo, and the export is a file
    # at a time-limited signed URL that a plain GET (no token) reads.
    headers = bk.jobs.export(vault, group, filter="operation eq 'Backup'", cls=lambda resp, body, h: resp.http_response.headers)
    export_op = headers["location"].split("/operationResults/")[1].split("?")[0]
    info = bk.export_jobs_operation_results.get(vault, group, export_op).operation
    assert info.object_type == "ExportJobsOperationResultInfo"
    exported = requests.get(info.blob_url + info.blob_sas_key, verify=env["server"].ca_file, timeout=30)
    assert exported.status_code == 200
    assert [j["name"] for j in exported.json()] == [op.properties.job_id]
    assert requests.get(info.blob_url, verify=env["server"].ca_file, timeout=30).status_code == 404

    # Stock restic reads the vault with what `rsvault restic-env` prints (restic reaches Azure Blob only
    # at Azure's public endpoints, so not Azurite).
    if env["storage"] == "blob":
        return
    vault_id = f"/subscriptions/{env['server'].subscription_id}/resourceGroups/{group}/providers/Microsoft.RecoveryServices/vaults/{vault}"
    storage_args = ["--storage", str(env["server"].storage_file)] if env["server"].storage_file else []
    out = subprocess.run([str(_bin_path()), "restic-env", "--data-dir", str(env["server"].data_dir), "--vault", vault_id, *storage_args],
                         check=True, capture_output=True, text=True).stdout
    if env["storage"] == "s3":
        assert out.startswith("RESTIC_REPOSITORY='s3:http://127.0.0.1:"), out.splitlines()[0]
    renv = dict(os.environ)
    for line in out.splitlines():
        k, v = line.split("=", 1)
        renv[k] = v.strip("'")
    snaps = subprocess.run(["restic", "snapshots", "--json", "--no-lock", "--no-cache"], env=renv, check=True, capture_output=True, text=True).stdout
    assert rp.name in snaps and op.properties.job_id in snaps, "the recovery point is a tagged restic snapshot"


def test_share_backup_and_item_level_restore(env, tmp_path_factory):
    bk, rm, vault, group = env["bk"], env["rm"], env["vault"], env["group"]
    files = tmp_path_factory.mktemp("bk-files")
    acct = unique("files")
    acct_id = f"/subscriptions/{env['server'].subscription_id}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{acct}"
    rm.resources.begin_create_or_update_by_id(
        acct_id, GenericResource(location=LOCATION, kind="StorageV2", tags={"rsvault-path": str(files)}), api_version=STORAGE_API
    ).result()
    rm.resources.begin_create_or_update_by_id(f"{acct_id}/fileServices/default/shares/docs", GenericResource(), api_version=STORAGE_API).result()
    share = files / "docs"
    (share / "reports").mkdir(parents=True, exist_ok=True)
    (share / "reports" / "q1.txt").write_text("first quarter")
    (share / "readme.md").write_text("hello")
    container = f"StorageContainer;Storage;{group};{acct}"
    bk.protection_containers.begin_register(
        vault, group, "Azure", container,
        bm.ProtectionContainerResource(properties=bm.AzureStorageContainer(source_resource_id=acct_id, backup_management_type="AzureStorage")),
    ).result()
    policy = bm.ProtectionPolicyResource(properties=bm.AzureFileShareProtectionPolicy(
        work_load_type="AzureFileShare",
        schedule_policy=bm.SimpleSchedulePolicy(schedule_run_frequency="Daily", schedule_run_times=[dt.datetime(2026, 1, 1, 3, tzinfo=dt.timezone.utc)]),
        retention_policy=bm.LongTermRetentionPolicy(daily_schedule=bm.DailyRetentionSchedule(
            retention_times=[dt.datetime(2026, 1, 1, 3, tzinfo=dt.timezone.utc)],
            retention_duration=bm.RetentionDuration(count=30, duration_type="Days"))),
        time_zone="UTC"))
    pol = bk.protection_policies.create_or_update(vault, group, "afs-daily", policy)
    item = "AzureFileShare;docs"
    bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureFileshareProtectedItem(source_resource_id=acct_id, policy_id=pol.id)),
    ).result()
    headers = trigger(bk, vault, group, "Azure", container, item,
                      bm.BackupRequestResource(properties=bm.AzureFileShareBackupRequest()))
    op_id = headers["azure-asyncoperation"].split("/operationsStatus/")[1].split("?")[0]
    job_id = bk.backup_operation_statuses.get(vault, group, op_id).properties.job_id
    _, job = wait_job(bk, vault, group, job_id)
    assert isinstance(job.properties, bm.AzureStorageJob)
    assert job.properties.status == "Completed"
    assert job.properties.extended_info.property_bag["File Share Name"] == "docs"
    rp = list(bk.recovery_points.list(vault, group, "Azure", container, item))[0]
    assert isinstance(rp.properties, bm.AzureFileShareRecoveryPoint)

    (share / "reports" / "q1.txt").write_text("overwritten")
    (share / "readme.md").write_text("changed too")
    bk.restores.begin_trigger(
        vault, group, "Azure", container, item, rp.name,
        bm.RestoreRequestResource(properties=bm.AzureFileShareRestoreRequest(
            recovery_type="OriginalLocation", source_resource_id=acct_id, copy_options="Overwrite",
            restore_request_type="ItemLevelRestore",
            restore_file_specs=[bm.RestoreFileSpecs(path="reports/q1.txt", file_spec_type="File")])),
    ).result()
    restore = list(bk.backup_jobs.list(vault, group, filter="operation eq 'Restore' and backupManagementType eq 'AzureStorage'"))[0]
    _, rjob = wait_job(bk, vault, group, restore.name)
    assert rjob.properties.status == "Completed"
    assert (share / "reports" / "q1.txt").read_text() == "first quarter"
    assert (share / "readme.md").read_text() == "changed too", "item-level restore touches only what it names"
