"""Resource groups and Recovery Services vaults through the unmodified Azure Python SDK.

azure-mgmt-resource (resource_groups) and azure-mgmt-recoveryservices (vaults, check_name_availability,
usages, vault_extended_info, operations) against the rsvault server started by conftest.py.
"""

from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.recoveryservices import RecoveryServicesClient
from azure.mgmt.recoveryservices import models as rsm
from azure.mgmt.resource.resources import ResourceManagementClient

from conftest import LOCATION


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def rm(server):
    return server.client(ResourceManagementClient)


@pytest.fixture(scope="module")
def rs(server):
    return server.client(RecoveryServicesClient)


@pytest.fixture(scope="module")
def group(rm):
    """A resource group for the vault tests."""
    name = unique("sdk-vaults")
    rm.resource_groups.create_or_update(name, {"location": LOCATION})
    return name


def new_vault(location: str = LOCATION, **tags) -> rsm.Vault:
    return rsm.Vault(
        location=location,
        sku=rsm.Sku(name="Standard"),
        properties=rsm.VaultProperties(public_network_access="Enabled"),
        tags=tags or None,
    )


def arm_code(err: HttpResponseError) -> str | None:
    return err.error.code if err.error is not None else None


# --- resource groups -------------------------------------------------------------------------


def test_resource_group_lifecycle(rm, server):
    name = unique("sdk-rg")
    created = rm.resource_groups.create_or_update(name, {"location": LOCATION, "tags": {"owner": "interop"}})
    assert created.name == name
    assert created.location == LOCATION
    assert created.id.lower() == f"/subscriptions/{server.subscription_id}/resourcegroups/{name}".lower()
    assert created.properties.provisioning_state == "Succeeded"

    got = rm.resource_groups.get(name)
    assert got.id == created.id
    assert got.tags == {"owner": "interop"}
    assert rm.resource_groups.check_existence(name) is True
    assert rm.resource_groups.check_existence(unique("missing")) is False

    updated = rm.resource_groups.update(name, {"tags": {"env": "test"}})
    assert updated.tags == {"env": "test"}
    assert rm.resource_groups.get(name).tags == {"env": "test"}

    assert name in [g.name for g in rm.resource_groups.list()]

    rm.resource_groups.begin_delete(name, polling_interval=0).result()
    assert rm.resource_groups.check_existence(name) is False
    assert name not in [g.name for g in rm.resource_groups.list()]


def test_get_missing_resource_group(rm):
    with pytest.raises(ResourceNotFoundError) as e:
        rm.resource_groups.get(unique("missing"))
    assert arm_code(e.value) == "ResourceGroupNotFound"


# --- vaults ----------------------------------------------------------------------------------


def test_vault_lifecycle(rs, group, server):
    name = unique("vault")
    statuses: list[int] = []
    vault = rs.vaults.begin_create_or_update(
        group, name, new_vault(purpose="interop"), polling_interval=0,
        raw_response_hook=lambda r: statuses.append(r.http_response.status_code),
    ).result()
    assert statuses[0] == 201, f"PUT new vault answered {statuses}"
    assert vault.name == name
    assert vault.type.lower() == "microsoft.recoveryservices/vaults"
    assert vault.location == LOCATION
    assert vault.sku.name == "Standard"
    assert vault.properties.provisioning_state == "Succeeded"
    expected_id = f"/subscriptions/{server.subscription_id}/resourceGroups/{group}/providers/Microsoft.RecoveryServices/vaults/{name}"
    assert vault.id.lower() == expected_id.lower()

    got = rs.vaults.get(group, name)
    assert got.id == vault.id
    assert got.tags == {"purpose": "interop"}

    updated = rs.vaults.begin_update(group, name, rsm.PatchVault(tags={"env": "test"}), polling_interval=0).result()
    assert updated.tags == {"env": "test"}
    assert rs.vaults.get(group, name).tags == {"env": "test"}

    assert name in [v.name for v in rs.vaults.list_by_resource_group(group)]
    assert vault.id.lower() in [v.id.lower() for v in rs.vaults.list_by_subscription_id()]

    rs.vaults.begin_delete(group, name, polling_interval=0).result()
    with pytest.raises(ResourceNotFoundError) as e:
        rs.vaults.get(group, name)
    assert arm_code(e.value) == "ResourceNotFound"
    assert name not in [v.name for v in rs.vaults.list_by_resource_group(group)]


def test_put_existing_vault_answers_200(rs, group):
    name = unique("vault")
    rs.vaults.begin_create_or_update(group, name, new_vault(), polling_interval=0).result()
    statuses: list[int] = []
    rs.vaults.begin_create_or_update(
        group, name, new_vault(v="2"), polling_interval=0,
        raw_response_hook=lambda r: statuses.append(r.http_response.status_code),
    ).result()
    assert statuses[0] == 200, f"PUT existing vault answered {statuses}"
    assert rs.vaults.get(group, name).tags == {"v": "2"}


def test_check_name_availability(rs, group):
    name = unique("vault")
    params = rsm.CheckNameAvailabilityParameters(type="Microsoft.RecoveryServices/Vaults", name=name)
    free = rs.recovery_services.check_name_availability(group, LOCATION, params)
    assert free.name_available is True

    rs.vaults.begin_create_or_update(group, name, new_vault(), polling_interval=0).result()
    taken = rs.recovery_services.check_name_availability(group, LOCATION, params)
    assert taken.name_available is False
    assert taken.reason == "AlreadyExists"


def test_usages(rs, group):
    name = unique("vault")
    rs.vaults.begin_create_or_update(group, name, new_vault(), polling_interval=0).result()
    usages = list(rs.usages.list_by_vaults(group, name))
    for u in usages:
        assert u.name.value
        assert u.current_value is not None and u.limit is not None


def test_vault_extended_info(rs, group):
    name = unique("vault")
    rs.vaults.begin_create_or_update(group, name, new_vault(), polling_interval=0).result()
    info = rs.vault_extended_info.create_or_update(
        group, name, rsm.VaultExtendedInfoResource(properties=rsm.VaultExtendedInfo(integrity_key="a2V5", algorithm="None"))
    )
    assert info.properties.integrity_key == "a2V5"
    got = rs.vault_extended_info.get(group, name)
    assert got.properties.integrity_key == "a2V5"
    assert got.properties.algorithm == "None"


def test_operations_list(rs):
    names = [op.name for op in rs.operations.list()]
    assert any(n.lower().startswith("microsoft.recoveryservices/vaults/") for n in names), names[:5]


# --- errors ----------------------------------------------------------------------------------


def test_get_missing_vault(rs, group):
    with pytest.raises(ResourceNotFoundError) as e:
        rs.vaults.get(group, unique("nosuch"))
    assert e.value.status_code == 404
    assert arm_code(e.value) == "ResourceNotFound"


def test_vault_in_missing_resource_group(rs):
    rg = unique("nosuch-rg")
    with pytest.raises(ResourceNotFoundError) as e:
        rs.vaults.get(rg, "v1")
    assert arm_code(e.value) == "ResourceGroupNotFound"
    with pytest.raises(HttpResponseError) as e:
        rs.vaults.begin_create_or_update(rg, "v1", new_vault(), polling_interval=0).result()
    assert e.value.status_code == 404
    assert arm_code(e.value) == "ResourceGroupNotFound"


@pytest.mark.parametrize("bad", ["bad_name", "1vault", "a", "x" * 51])
def test_invalid_vault_name(rs, group, bad):
    with pytest.raises(HttpResponseError) as e:
        rs.vaults.begin_create_or_update(group, bad, new_vault(), polling_interval=0).result()
    assert e.value.status_code == 400
    assert arm_code(e.value) == "InvalidResourceName"


# --- vault soft delete (issue 16) -------------------------------------------------------------


def test_deleted_vault_is_listed_and_undeleted_into_another_group(rs, rm, group):
    """A deleted vault (soft delete on, Azure's default) is kept: the SDK's deleted_vaults lists and
    gets it and begin_undelete puts it back, here into another group."""
    name = unique("vault")
    rs.vaults.begin_create_or_update(group, name, new_vault(), polling_interval=0).result()
    original = rs.vaults.get(group, name)
    rs.vaults.begin_delete(group, name, polling_interval=0).result()

    listed = {d.name: d for d in rs.deleted_vaults.list_by_subscription_id(LOCATION)}
    assert name in listed
    dv = rs.deleted_vaults.get(LOCATION, name)
    assert dv.properties.vault_id == original.id
    assert dv.properties.purge_at > dv.properties.vault_deletion_time
    assert (dv.properties.purge_at - dv.properties.vault_deletion_time).days == 14

    other = unique("sdk-undelete")
    target = rm.resource_groups.create_or_update(other, {"location": LOCATION})
    rs.deleted_vaults.begin_undelete(
        LOCATION,
        name,
        rsm.DeletedVaultUndeleteInput(properties=rsm.DeletedVaultUndeleteInputProperties(recovery_resource_group_id=target.id)),
        polling_interval=0,
    ).result()
    back = rs.vaults.get(other, name)
    assert back.id.lower() == original.id.lower().replace(f"/resourcegroups/{group.lower()}/", f"/resourcegroups/{other.lower()}/")
    assert name not in [d.name for d in rs.deleted_vaults.list_by_subscription_id(LOCATION)]
    with pytest.raises(ResourceNotFoundError):
        rs.deleted_vaults.get(LOCATION, name)
    rs.vaults.begin_delete(other, name, polling_interval=0).result()
