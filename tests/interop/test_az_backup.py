"""Issue 6 through the unmodified az CLI, with real data: `az backup protection backup-now`, `az backup job
show/list`, `az backup recoverypoint list/show`, `az backup restore restore-disks` (bytes compared), and for a
file share `az backup protection enable-for-azurefileshare`, `backup-now` and
`az backup restore restore-azurefileshare`. These are the commands the README's quickstart shows; and
`az backup restore files mount-rp` / `unmount-rp` (item level recovery, issue 16). Marked `az`.
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

from conftest import LOCATION
from test_az_cli import login

pytestmark = pytest.mark.az


@pytest.fixture(scope="module")
def az(server, tmp_path_factory):
    return login(server, tmp_path_factory, server.client_id, server.client_secret)


def wait(az, rg, vault, job_name, timeout=180):
    """`az backup job wait` sleeps 30 s between polls; a script that cares polls `job show` itself."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = az("backup", "job", "show", "-g", rg, "-v", vault, "-n", job_name)
        if job["properties"]["status"] not in ("InProgress", "Cancelling"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_name} did not finish")


@pytest.fixture(scope="module")
def setup(az, server, tmp_path_factory):
    rg = f"az-bk-{uuid.uuid4().hex[:6]}"
    vault = f"az-vault-{uuid.uuid4().hex[:6]}"
    az("group", "create", "-n", rg, "-l", LOCATION)
    az("backup", "vault", "create", "-g", rg, "-n", vault, "-l", LOCATION)
    disks = tmp_path_factory.mktemp("az-bk-disks")
    os_disk = disks / "os.raw"
    os_disk.write_bytes(os.urandom(5 << 20))
    vm = f"azvm{uuid.uuid4().hex[:6]}"
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
    full = {"location": LOCATION, "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": os_disk.as_uri()}}}}}
    az("resource", "create", "--id", vm_id, "--api-version", "2024-07-01", "--is-full-object", "--properties", json.dumps(full))
    files = tmp_path_factory.mktemp("az-bk-files")
    acct = f"azsa{uuid.uuid4().hex[:6]}"
    acct_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/{acct}"
    acct_body = {"location": LOCATION, "kind": "StorageV2", "sku": {"name": "Standard_LRS"}, "tags": {"rsvault-path": str(files)}, "properties": {}}
    az("resource", "create", "--id", acct_id, "--api-version", "2023-05-01", "--is-full-object", "--properties", json.dumps(acct_body))
    az("resource", "create", "--id", f"{acct_id}/fileServices/default/shares/docs", "--api-version", "2023-05-01", "--properties", "{}")
    az("backup", "protection", "enable-for-vm", "-g", rg, "-v", vault, "--vm", vm_id, "--policy-name", "DefaultPolicy")
    return dict(rg=rg, vault=vault, vm=vm, vm_id=vm_id, os_disk=os_disk, acct=acct, files=files)


def test_backup_now_job_recoverypoint_and_restore_disks(az, setup):
    rg, vault, vm = setup["rg"], setup["vault"], setup["vm"]
    container = f"IaasVMContainer;iaasvmcontainerv2;{rg};{vm}"
    retain = (dt.date.today() + dt.timedelta(days=20)).strftime("%d-%m-%Y")
    job = az("backup", "protection", "backup-now", "-g", rg, "-v", vault, "-c", container, "-i", vm,
             "--backup-management-type", "AzureIaasVM", "--retain-until", retain)
    assert job["properties"]["operation"] == "Backup"
    assert job["properties"]["status"] in ("InProgress", "Completed")
    done = wait(az, rg, vault, job["name"])
    assert done["properties"]["status"] == "Completed", done
    assert [t["taskId"] for t in done["properties"]["extendedInfo"]["tasksList"]] == ["Take Snapshot", "Transfer data to vault"]
    assert done["properties"]["extendedInfo"]["propertyBag"]["Backup Size"] == "5 MB"
    listed = az("backup", "job", "list", "-g", rg, "-v", vault, "--operation", "Backup", "--status", "Completed")
    assert [j["name"] for j in listed] == [job["name"]]

    rps = az("backup", "recoverypoint", "list", "-g", rg, "-v", vault, "-c", container, "-i", vm, "--backup-management-type", "AzureIaasVM")
    assert len(rps) == 1
    rp = rps[0]["name"]
    shown = az("backup", "recoverypoint", "show", "-g", rg, "-v", vault, "-c", container, "-i", vm, "-n", rp,
               "--backup-management-type", "AzureIaasVM")
    assert shown["properties"]["objectType"] == "IaasVMRecoveryPoint"

    rjob = az("backup", "restore", "restore-disks", "-g", rg, "-v", vault, "-c", container, "-i", vm, "-r", rp,
              "--storage-account", setup["acct"])
    assert rjob["properties"]["operation"] == "Restore"
    rdone = wait(az, rg, vault, rjob["name"])
    assert rdone["properties"]["status"] == "Completed", rdone
    images = [p for p in Path(setup["files"]).rglob("*") if p.is_file() and "docs" not in p.parts and p.suffix != ".json"]
    assert len(images) == 1, images
    assert images[0].read_bytes() == setup["os_disk"].read_bytes()


def test_files_mount_rp_and_unmount_rp(az, setup, tmp_path):
    """`az backup restore files mount-rp` writes the answer's client script into its working directory;
    the script copies the recovery point's disk over NBD with TLS-PSK; `unmount-rp` ends the export."""
    rg, vault, vm = setup["rg"], setup["vault"], setup["vm"]
    container = f"IaasVMContainer;iaasvmcontainerv2;{rg};{vm}"
    ids = ("-g", rg, "-v", vault, "-c", container, "-i", vm)
    rps = az("backup", "recoverypoint", "list", *ids, "--backup-management-type", "AzureIaasVM")
    rp = rps[0]["name"]
    az("backup", "restore", "files", "mount-rp", *ids, "-r", rp, cwd=tmp_path)
    [script] = list(tmp_path.glob("*.sh"))
    assert az("backup", "recoverypoint", "show", *ids, "-n", rp)["properties"]["isInstantIlrSessionActive"] is True

    def copy(tag):
        dest = tmp_path / tag
        dest.mkdir()
        return subprocess.run(["bash", str(script), "copy", str(dest)], capture_output=True, text=True)

    out = copy("mounted")
    assert out.returncode == 0, out.stderr
    [image] = out.stdout.split()
    assert Path(image).read_bytes() == setup["os_disk"].read_bytes()
    az("backup", "restore", "files", "unmount-rp", *ids, "-r", rp, cwd=tmp_path)
    assert az("backup", "recoverypoint", "show", *ids, "-n", rp)["properties"]["isInstantIlrSessionActive"] is False
    out = copy("unmounted")
    assert out.returncode != 0 and "refused" in out.stderr.lower(), out.stderr


def test_file_share_backup_now_and_restore(az, setup, tmp_path):
    rg, vault, acct = setup["rg"], setup["vault"], setup["acct"]
    share = Path(setup["files"]) / "docs"
    (share / "notes.txt").write_text("version one")
    doc = {"properties": {
        "backupManagementType": "AzureStorage", "workLoadType": "AzureFileShare",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily",
                           "scheduleRunTimes": ["2026-01-01T02:00:00Z"]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {
            "retentionTimes": ["2026-01-01T02:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}},
        "timeZone": "UTC"}}
    f = tmp_path / "afs.json"
    f.write_text(json.dumps(doc))
    az("backup", "policy", "create", "-g", rg, "-v", vault, "-n", "afsdaily", "--policy", str(f), "--backup-management-type", "AzureStorage")
    az("backup", "protection", "enable-for-azurefileshare", "-g", rg, "-v", vault, "--storage-account", acct,
       "--azure-file-share", "docs", "--policy-name", "afsdaily")
    container = f"StorageContainer;Storage;{rg};{acct}"
    job = az("backup", "protection", "backup-now", "-g", rg, "-v", vault, "-c", container, "-i", "docs",
             "--backup-management-type", "AzureStorage")
    done = wait(az, rg, vault, job["name"])
    assert done["properties"]["status"] == "Completed", done
    assert done["properties"]["jobType"] == "AzureStorageJob"
    rps = az("backup", "recoverypoint", "list", "-g", rg, "-v", vault, "-c", container, "-i", "docs", "--backup-management-type", "AzureStorage")
    assert len(rps) == 1 and rps[0]["properties"]["objectType"] == "AzureFileShareRecoveryPoint"

    (share / "notes.txt").write_text("version two")
    rjob = az("backup", "restore", "restore-azurefileshare", "-g", rg, "-v", vault, "-c", container, "-i", "docs",
              "-r", rps[0]["name"], "--resolve-conflict", "Overwrite", "--restore-mode", "OriginalLocation")
    rdone = wait(az, rg, vault, rjob["name"])
    assert rdone["properties"]["status"] == "Completed", rdone
    assert (share / "notes.txt").read_text() == "version one"
