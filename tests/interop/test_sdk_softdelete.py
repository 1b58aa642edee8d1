"""Issue 7 through the unmodified Azure Python SDK, on a server started with `--test-clock`: soft delete
keeps a deleted item and its recovery points for 14 days, undelete (`isRehydrate`) brings it back with
protection stopped, and after the period (moved with `POST /rsvault/admin/clock/advance`) the item is purged.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.recoveryservices import RecoveryServicesClient
from azure.mgmt.recoveryservices import models as rsm
from azure.mgmt.recoveryservicesbackup import RecoveryServicesBackupClient
from azure.mgmt.recoveryservicesbackup import models as bm
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import GenericResource

from conftest import ARM_SCOPE, LOCATION

VM_API = "2024-07-01"


def advance(server, seconds: int) -> dict:
    token = server.credential().get_token(ARM_SCOPE).token
    r = requests.post(
        f"{server.url}/rsvault/admin/clock/advance",
        json={"seconds": seconds},
        headers={"Authorization": f"Bearer {token}"},
        verify=server.ca_file,
        timeout=600,
    )
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(bk, vault, group, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = bk.job_details.get(vault, group, job_id)
        if job.properties.status not in ("InProgress", "Cancelling"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def raw_item(bk, vault, group, container, item) -> dict:
    """The item's wire properties (the SDK reads a VM item as its base model, without protectionState)."""
    return bk.protected_items.get(vault, group, "Azure", container, item,
                                  cls=lambda resp, _obj, _h: resp.http_response.json())["properties"]


def test_soft_delete_undelete_and_purge_through_the_sdk(clock_server, tmp_path):
    server = clock_server
    rm = server.client(ResourceManagementClient)
    rs = server.client(RecoveryServicesClient)
    bk = server.client(RecoveryServicesBackupClient)
    group, vault, vm = "sd-rg", "sd-vault", "sdvm"
    rm.resource_groups.create_or_update(group, {"location": LOCATION})
    rs.vaults.begin_create_or_update(group, vault, rsm.Vault(location=LOCATION, sku=rsm.Sku(name="Standard"))).result()
    disk = tmp_path / "os.raw"
    disk.write_bytes(os.urandom(1 << 20))
    vm_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{vm}"
    rm.resources.begin_create_or_update_by_id(
        vm_id,
        GenericResource(location=LOCATION, properties={"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": disk.as_uri()}}}}),
        api_version=VM_API,
    ).result()
    container = f"IaasVMContainer;iaasvmcontainerv2;{group};{vm}"
    item = f"VM;iaasvmcontainerv2;{group};{vm}"
    policy = bk.protection_policies.get(vault, group, "DefaultPolicy").id
    bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(source_resource_id=vm_id, policy_id=policy)),
    ).result()

    # One recovery point, kept 2 days.
    seen = {}
    expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).replace(microsecond=0)
    bk.backups.trigger(
        vault, group, "Azure", container, item,
        bm.BackupRequestResource(properties=bm.IaasVMBackupRequest(recovery_point_expiry_time_in_utc=expiry)),
        raw_response_hook=lambda r: seen.update({k.lower(): v for k, v in r.http_response.headers.items()}),
    )
    op_id = seen["azure-asyncoperation"].split("/operationsStatus/")[1].split("?")[0]
    job_id = bk.protected_item_operation_statuses.get(vault, group, "Azure", container, item, op_id).properties.job_id
    assert wait_job(bk, vault, group, job_id).properties.status == "Completed"
    assert len(list(bk.recovery_points.list(vault, group, "Azure", container, item))) == 1

    # Delete with soft delete on (the vault's default): the item stays, scheduled for deletion in 14 days.
    bk.protected_items.delete(vault, group, "Azure", container, item)
    got = bk.protected_items.get(vault, group, "Azure", container, item).properties
    assert got.is_scheduled_for_deferred_delete is True
    assert got.deferred_delete_time_remaining == "14.00:00:00"
    assert raw_item(bk, vault, group, container, item)["protectionState"] == "ProtectionStopped"
    # Three days later the point is past its expiry, and soft delete still keeps it.
    advance(server, 3 * 86_400)
    assert len(list(bk.recovery_points.list(vault, group, "Azure", container, item))) == 1

    # Undelete: the item is back, protection stopped, its point kept.
    bk.protected_items.begin_create_or_update(
        vault, group, "Azure", container, item,
        bm.ProtectedItemResource(properties=bm.AzureIaaSComputeVMProtectedItem(
            source_resource_id=vm_id, protection_state="ProtectionStopped", is_rehydrate=True)),
    ).result()
    got = bk.protected_items.get(vault, group, "Azure", container, item).properties
    assert got.is_scheduled_for_deferred_delete in (False, None)
    assert raw_item(bk, vault, group, container, item)["protectionState"] == "ProtectionStopped"
    assert len(list(bk.recovery_points.list(vault, group, "Azure", container, item))) == 1

    # Delete again, and let the 14 days pass: the item and its data are purged.
    bk.protected_items.delete(vault, group, "Azure", container, item)
    r = advance(server, 13 * 86_400)
    assert r["purgedItems"] == 0, r
    assert bk.protected_items.get(vault, group, "Azure", container, item).properties.is_scheduled_for_deferred_delete
    r = advance(server, 2 * 86_400)
    assert r["purgedItems"] == 1, r
    with pytest.raises(HttpResponseError) as e:
        bk.protected_items.get(vault, group, "Azure", container, item)
    assert e.value.status_code == 404
    assert "BMSUserErrorProtectedItemNotFound" in str(e.value)
