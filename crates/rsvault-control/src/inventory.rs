//! The local workloads rsvault protects, as the Azure resources clients expect:
//! virtual machines (`Microsoft.Compute/virtualMachines`, disks = local raw or qcow2 images named by
//! `vhd.uri` = `file:///…`), storage accounts (`Microsoft.Storage/storageAccounts`, a local directory
//! named by the tag `rsvault-path`) and their file shares (`…/fileServices/default/shares/{share}` =
//! the directory `{rsvault-path}/{share}`).
//!
//! The same calls back the ARM routes and the `rsvault vm add` / `rsvault share add` commands. Every
//! host path (disk image, account directory, share directory) passes the operator's grants
//! ([`crate::hostaccess`]) and is used resolved; every disk is probed when a VM is written (format,
//! virtual size), so an image that cannot be used is a 400 at declaration time rather than a failed
//! backup later. Refusals are one generic error, whatever the reason.

use crate::disk::{self, DiskInfo};
use crate::hostaccess::{unavailable, HostGrants};
use crate::{body, resources::tags_or_empty, Control, Error, Result};
use rsvault_store::{Page, ResourceRow};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

pub const VM_TYPE: &str = "Microsoft.Compute/virtualMachines";
pub const ACCOUNT_TYPE: &str = "Microsoft.Storage/storageAccounts";
pub const SHARE_TYPE: &str = "Microsoft.Storage/storageAccounts/fileServices/shares";
/// The tag naming a storage account's local directory.
pub const PATH_TAG: &str = "rsvault-path";

/// A VM disk as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// `osDisk` or the data disk's name.
    pub name: String,
    pub lun: Option<i64>,
    pub info: DiskInfo,
}

/// A VM as stored, with its disks resolved.
#[derive(Debug, Clone)]
pub struct Vm {
    pub row: ResourceRow,
    pub disks: Vec<VmDisk>,
}

fn invalid(code: &'static str, target: &str, message: String) -> Error {
    Error::Invalid {
        code,
        message,
        target: Some(target.to_string()),
    }
}

/// Azure's VM name rule (Linux form): 1-64 characters, letters, digits, `-`, `_`, `.`; not ending in `.`.
fn check_vm_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidResourceName {
            name: name.to_string(),
            rule: "Virtual machine names are 1-64 letters, digits, '-', '_' or '.', and cannot end with '.'.".into(),
        })
    }
}

/// Storage account names: 3-24 lower-case letters and digits.
fn check_account_name(name: &str) -> Result<()> {
    if (3..=24).contains(&name.len()) && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::Invalid {
            code: "AccountNameInvalid",
            message: format!("{name} is not a valid storage account name. Storage account name must be between 3 and 24 characters in length and use numbers and lower-case letters only."),
            target: None,
        })
    }
}

/// Share names: 3-63 lower-case letters, digits and single hyphens, starting and ending alphanumeric.
fn check_share_name(name: &str) -> Result<()> {
    let ok = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            code: "InvalidResourceName",
            message: "The specifed resource name contains invalid characters.".into(),
            target: None,
        })
    }
}

/// Reads one `{name?, lun?, vhd: {uri}}` disk member, checks its path against the grants for the VM
/// `vm_id` and probes its image.
fn disk_of(
    grants: &HostGrants,
    vm_id: &str,
    m: &Map<String, Value>,
    path: &str,
    default_name: &str,
) -> Result<(Value, VmDisk)> {
    let vhd = body::opt_obj(m, "vhd", path)?;
    let uri = vhd
        .map(|v| body::opt_str(v, "uri", &format!("{path}vhd.")))
        .transpose()?
        .flatten()
        .ok_or_else(|| {
            invalid(
                "InvalidParameter",
                &format!("{path}vhd.uri"),
                format!("Required parameter '{path}vhd.uri' is missing (null): rsvault disks are local images named by file:///absolute/path URIs."),
            )
        })?;
    let target = format!("{path}vhd.uri");
    let local = disk::path_of_uri(uri, &target)?;
    let resolved = grants.check_named(&local, uri, vm_id, Some(&target))?;
    let info = disk::probe(&resolved, uri, &target)?;
    let name = body::opt_str(m, "name", path)?.unwrap_or(default_name).to_string();
    let lun = body::opt_int(m, "lun", path)?;
    let gib = info.virtual_size.div_ceil(1 << 30);
    let mut out = json!({
        "name": name,
        "createOption": "Attach",
        "caching": body::opt_str(m, "caching", path)?.unwrap_or("None"),
        "vhd": {"uri": uri},
        "diskSizeGB": gib,
    });
    if let Some(l) = lun {
        out["lun"] = json!(l);
    }
    if let Some(os) = body::opt_str(m, "osType", path)? {
        out["osType"] = json!(os);
    }
    Ok((out, VmDisk { name, lun, info }))
}

/// The storage profile of a VM body: every disk checked against the grants and probed.
fn storage_profile(grants: &HostGrants, vm_id: &str, props: &Map<String, Value>) -> Result<(Value, Vec<VmDisk>)> {
    let sp = body::opt_obj(props, "storageProfile", "properties.")?.ok_or_else(|| {
        invalid(
            "InvalidParameter",
            "properties.storageProfile.osDisk",
            "Required parameter 'properties.storageProfile.osDisk' is missing (null).".into(),
        )
    })?;
    let os = body::opt_obj(sp, "osDisk", "properties.storageProfile.")?.ok_or_else(|| {
        invalid(
            "InvalidParameter",
            "properties.storageProfile.osDisk",
            "Required parameter 'properties.storageProfile.osDisk' is missing (null).".into(),
        )
    })?;
    let (os_body, os_disk) = disk_of(grants, vm_id, os, "properties.storageProfile.osDisk.", "osDisk")?;
    let mut disks = vec![os_disk];
    let mut data = Vec::new();
    match sp.get("dataDisks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, d) in a.iter().enumerate() {
                let path = format!("properties.storageProfile.dataDisks[{i}].");
                let m = body::object(d)?;
                let (b, mut disk) = disk_of(grants, vm_id, m, &path, &format!("dataDisk{i}"))?;
                let lun = disk.lun.unwrap_or(i as i64);
                if disks.iter().any(|x| x.lun == Some(lun)) {
                    return Err(invalid(
                        "InvalidParameter",
                        &format!("{path}lun"),
                        format!("A disk at LUN {lun} already exists."),
                    ));
                }
                disk.lun = Some(lun);
                let mut b = b;
                b["lun"] = json!(lun);
                data.push(b);
                disks.push(disk);
            }
        }
        Some(_) => {
            return Err(Error::InvalidRequestContent(
                "Error converting value at path 'properties.storageProfile.dataDisks': expected an array.".into(),
            ))
        }
    }
    Ok((json!({"osDisk": os_body, "dataDisks": data}), disks))
}

impl Control {
    fn group_resource_id(&self, sub: &str, rg: &str, ty: &str, name: &str) -> String {
        format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{ty}/{name}")
    }

    /// A row for a resource directly below a group.
    fn group_resource_row(
        &self,
        sub: &str,
        rg: &str,
        ty: &str,
        name: &str,
        body: Value,
        existing: Option<&ResourceRow>,
    ) -> ResourceRow {
        let now = self.now();
        let id = existing
            .map(|e| e.id.clone())
            .unwrap_or_else(|| self.group_resource_id(sub, rg, ty, name));
        ResourceRow {
            id,
            subscription: sub.to_string(),
            resource_group: Some(rg.to_string()),
            type_key: ty.to_ascii_lowercase(),
            name: existing.map(|e| e.name.clone()).unwrap_or_else(|| name.to_string()),
            parent_key: None,
            body,
            etag: uuid::Uuid::new_v4().to_string(),
            created: existing.map(|e| e.created).unwrap_or(now),
            updated: now,
        }
    }

    fn not_found(ty: &str, name: &str, group: &str) -> Error {
        Error::ResourceNotFound {
            resource_type: ty.into(),
            name: name.to_string(),
            group: group.to_string(),
        }
    }

    // ---- virtual machines -------------------------------------------------------------------

    /// `PUT` a VM: every disk must be a readable raw or qcow2 image. 201 when new, 200 when replaced.
    pub fn put_vm(&self, sub: &str, rg: &str, name: &str, req: &Value) -> Result<(bool, Value)> {
        self.subscription_row(sub)?;
        let group = self.group_row(sub, rg)?;
        check_vm_name(name)?;
        let m = body::object(req)?;
        let location = body::location(m)?;
        let tags = tags_or_empty(m)?;
        let props = body::opt_obj(m, "properties", "")?.cloned().unwrap_or_default();
        let id = self.group_resource_id(sub, &group.name, VM_TYPE, name);
        // A running guest's disks are discovered over QMP (`livevm`), an image-file VM's declared.
        let libvirt = crate::livevm::libvirt_of(&self.grants, &id, &tags)?;
        let (profile, _) = match crate::livevm::source_of(&self.grants, &id, &tags)? {
            _ if libvirt.is_some() => {
                let (_, disks) = crate::livevm::libvirt_domain(libvirt.as_ref().expect("checked"))?;
                crate::livevm::profile(&disks)
            }
            Some(src) => {
                let shown = tags[crate::livevm::QMP_TAG].as_str().unwrap_or_default();
                crate::livevm::profile(&crate::livevm::discover(&src, shown)?)
            }
            None => storage_profile(&self.grants, &id, &props)?,
        };
        let existing = self.store.read(|db| db.resource(&id))?;
        let vm_id = existing
            .as_ref()
            .and_then(|e| e.body.pointer("/properties/vmId").cloned())
            .unwrap_or_else(|| json!(uuid::Uuid::new_v4().to_string()));
        let size = props
            .get("hardwareProfile")
            .and_then(|h| h.get("vmSize"))
            .and_then(Value::as_str)
            .unwrap_or("Standard_D2s_v3");
        let stored_id = existing.as_ref().map(|e| e.id.clone()).unwrap_or(id);
        let stored_name = existing
            .as_ref()
            .map(|e| e.name.clone())
            .unwrap_or_else(|| name.to_string());
        let v = json!({
            "id": stored_id,
            "name": stored_name,
            "type": VM_TYPE,
            "location": location,
            "tags": tags,
            "properties": {
                "vmId": vm_id,
                "hardwareProfile": {"vmSize": size},
                "storageProfile": profile,
                "provisioningState": "Succeeded",
                "timeCreated": rsvault_core::time::timestamp(existing.as_ref().map(|e| e.created).unwrap_or_else(|| self.now())),
            },
        });
        let mut v = v;
        // A zone-pinned VM (Compute's top-level `zones`): its recovery points name the zone.
        match m.get("zones") {
            None | Some(Value::Null) => {}
            Some(Value::Array(z)) if z.iter().all(Value::is_string) => {
                if !z.is_empty() {
                    v["zones"] = json!(z);
                }
            }
            Some(_) => {
                return Err(Error::InvalidRequestContent(
                    "Error converting value at path 'zones': expected an array of strings.".into(),
                ))
            }
        }
        let row = self.group_resource_row(sub, &group.name, VM_TYPE, name, v.clone(), existing.as_ref());
        let created = self.store.write(|db| db.put_resource(&row))?;
        Ok((created, v))
    }

    /// The stored VM row.
    pub fn vm_row(&self, sub: &str, rg: &str, name: &str) -> Result<ResourceRow> {
        self.subscription_row(sub)?;
        let group = self.group_row(sub, rg)?;
        self.store
            .read(|db| db.resource(&self.group_resource_id(sub, rg, VM_TYPE, name)))?
            .ok_or_else(|| Self::not_found(VM_TYPE, name, &group.name))
    }

    pub fn get_vm(&self, sub: &str, rg: &str, name: &str) -> Result<Value> {
        Ok(self.vm_row(sub, rg, name)?.body)
    }

    /// A VM with its disks checked against the grants and probed now: fails with a 400 naming the
    /// disk when an image cannot be used any more.
    pub fn vm_with_disks(&self, row: ResourceRow) -> Result<Vm> {
        if let Some(d) = self.libvirt_source(&row)? {
            let (_, disks) = crate::livevm::libvirt_domain(&d)?;
            let (_, disks) = crate::livevm::profile(&disks);
            return Ok(Vm { row, disks });
        }
        if let Some(src) = self.live_source(&row)? {
            let shown = src.qmp_socket.display().to_string();
            let (_, disks) = crate::livevm::profile(&crate::livevm::discover(&src, &shown)?);
            return Ok(Vm { row, disks });
        }
        let props = row
            .body
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let (_, disks) = storage_profile(&self.grants, &row.id, &props)?;
        Ok(Vm { row, disks })
    }

    /// Deletes a VM (its backups, if any, stay in their vaults). False when there was none.
    pub fn delete_vm(&self, sub: &str, rg: &str, name: &str) -> Result<bool> {
        self.subscription_row(sub)?;
        self.group_row(sub, rg)?;
        let id = self.group_resource_id(sub, rg, VM_TYPE, name);
        self.store.write(|db| db.delete_resource(&id)).map_err(Into::into)
    }

    /// A page of VMs in a subscription or group.
    pub fn list_vms(&self, sub: &str, rg: Option<&str>, after: Option<&str>) -> Result<Page<Value>> {
        self.list_group_resources(sub, rg, VM_TYPE, after)
    }

    fn list_group_resources(&self, sub: &str, rg: Option<&str>, ty: &str, after: Option<&str>) -> Result<Page<Value>> {
        self.subscription_row(sub)?;
        if let Some(rg) = rg {
            self.group_row(sub, rg)?;
        }
        let p = self
            .store
            .read(|db| db.resources(sub, rg, ty, after, self.settings.page_size))?;
        Ok(Page {
            items: p.items.into_iter().map(|r| r.body).collect(),
            next: p.next,
        })
    }

    // ---- storage accounts and file shares ---------------------------------------------------

    /// `PUT` a storage account; its tag `rsvault-path` must name an existing, granted local directory.
    pub fn put_storage_account(&self, sub: &str, rg: &str, name: &str, req: &Value) -> Result<(bool, Value)> {
        self.subscription_row(sub)?;
        let group = self.group_row(sub, rg)?;
        check_account_name(name)?;
        let m = body::object(req)?;
        let location = body::location(m)?;
        let tags = tags_or_empty(m)?;
        let dir = tags.get(PATH_TAG).and_then(Value::as_str).ok_or_else(|| {
            invalid(
                "InvalidParameter",
                "tags.rsvault-path",
                format!(
                    "A storage account in rsvault is a local directory: set the tag '{PATH_TAG}' to its absolute path."
                ),
            )
        })?;
        let id = self.group_resource_id(sub, &group.name, ACCOUNT_TYPE, name);
        let path = PathBuf::from(dir);
        let resolved = self.grants.check_named(&path, dir, &id, Some("tags.rsvault-path"))?;
        if !resolved.is_dir() {
            return Err(unavailable(dir, Some("tags.rsvault-path")));
        }
        let existing = self.store.read(|db| db.resource(&id))?;
        let kind = body::opt_str(m, "kind", "")?.unwrap_or("StorageV2");
        let sku = m
            .get("sku")
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("Standard_LRS");
        let stored_id = existing.as_ref().map(|e| e.id.clone()).unwrap_or(id);
        let created = existing.as_ref().map(|e| e.created).unwrap_or_else(|| self.now());
        let v = json!({
            "id": stored_id,
            "name": existing.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| name.to_string()),
            "type": ACCOUNT_TYPE,
            "location": location,
            "kind": kind,
            "sku": {"name": sku, "tier": "Standard"},
            "tags": tags,
            "properties": {
                "provisioningState": "Succeeded",
                "creationTime": rsvault_core::time::timestamp(created),
                "primaryLocation": location,
                "statusOfPrimary": "available",
                "primaryEndpoints": {"file": format!("file://{}/", path.display())},
            },
        });
        let row = self.group_resource_row(sub, &group.name, ACCOUNT_TYPE, name, v.clone(), existing.as_ref());
        let created = self.store.write(|db| db.put_resource(&row))?;
        Ok((created, v))
    }

    pub fn storage_account_row(&self, sub: &str, rg: &str, name: &str) -> Result<ResourceRow> {
        self.subscription_row(sub)?;
        let group = self.group_row(sub, rg)?;
        self.store
            .read(|db| db.resource(&self.group_resource_id(sub, rg, ACCOUNT_TYPE, name)))?
            .ok_or_else(|| Self::not_found(ACCOUNT_TYPE, name, &group.name))
    }

    pub fn get_storage_account(&self, sub: &str, rg: &str, name: &str) -> Result<Value> {
        Ok(self.storage_account_row(sub, rg, name)?.body)
    }

    pub fn delete_storage_account(&self, sub: &str, rg: &str, name: &str) -> Result<bool> {
        self.subscription_row(sub)?;
        self.group_row(sub, rg)?;
        let id = self.group_resource_id(sub, rg, ACCOUNT_TYPE, name);
        self.store.write(|db| db.delete_resource(&id)).map_err(Into::into)
    }

    pub fn list_storage_accounts(&self, sub: &str, rg: Option<&str>, after: Option<&str>) -> Result<Page<Value>> {
        self.list_group_resources(sub, rg, ACCOUNT_TYPE, after)
    }

    /// The local directory of a storage account row, checked against the grants now and resolved.
    pub fn account_dir(&self, row: &ResourceRow) -> Result<PathBuf> {
        let dir = row
            .body
            .pointer(&format!("/tags/{PATH_TAG}"))
            .and_then(Value::as_str)
            .ok_or_else(|| Error::internal(format!("storage account {} has no {PATH_TAG} tag", row.id)))?;
        let resolved = self.grants.check(Path::new(dir), &row.id)?;
        if !resolved.is_dir() {
            return Err(unavailable(dir, None));
        }
        Ok(resolved)
    }

    /// The directory of share `share` of an account: `{account dir}/{share}`, checked and resolved,
    /// and not a symlink (its resolved path is the account's resolved directory and the name).
    /// `create`: made when missing.
    pub fn share_dir(&self, acct: &ResourceRow, share: &str, create: bool) -> Result<PathBuf> {
        let want = self.account_dir(acct)?.join(share);
        let shown = want.display().to_string();
        if create && std::fs::symlink_metadata(&want).is_err() {
            std::fs::create_dir(&want).map_err(|e| {
                tracing::info!(path = %shown, error = %e, "share directory not created");
                unavailable(&shown, None)
            })?;
        }
        let got = self.grants.check(&want, &acct.id)?;
        if got != want || !got.is_dir() {
            return Err(unavailable(&shown, None));
        }
        Ok(got)
    }

    fn share_id(account: &ResourceRow, share: &str) -> String {
        format!("{}/fileServices/default/shares/{share}", account.id)
    }

    /// `PUT` a file share: the directory `{rsvault-path}/{share}` (granted, not a symlink), created
    /// when missing.
    pub fn put_share(&self, sub: &str, rg: &str, account: &str, share: &str, req: &Value) -> Result<(bool, Value)> {
        let acct = self.storage_account_row(sub, rg, account)?;
        check_share_name(share)?;
        let m = if req.is_null() {
            Map::new()
        } else {
            body::object(req)?.clone()
        };
        let props = body::opt_obj(&m, "properties", "")?.cloned().unwrap_or_default();
        let quota = body::opt_int(&props, "shareQuota", "properties.")?.unwrap_or(5120);
        if !(1..=102400).contains(&quota) {
            return Err(invalid(
                "InvalidHeaderValue",
                "properties.shareQuota",
                "The value for one of the HTTP headers is not in the correct format: shareQuota must be between 1 and 102400 GiB.".into(),
            ));
        }
        self.share_dir(&acct, share, true)?;
        let id = Self::share_id(&acct, share);
        let existing = self.store.read(|db| db.resource(&id))?;
        let now = self.now();
        let v = json!({
            "id": existing.as_ref().map(|e| e.id.clone()).unwrap_or_else(|| id.clone()),
            "name": existing.as_ref().map(|e| e.name.clone()).unwrap_or_else(|| share.to_string()),
            "type": SHARE_TYPE,
            "etag": format!("\"0x{:X}\"", now.timestamp_micros()),
            "properties": {
                "shareQuota": quota,
                "enabledProtocols": "SMB",
                "accessTier": "TransactionOptimized",
                "lastModifiedTime": rsvault_core::time::timestamp(now),
            },
        });
        let row = ResourceRow {
            id: v["id"].as_str().unwrap_or(&id).to_string(),
            subscription: sub.to_string(),
            resource_group: acct.resource_group.clone(),
            type_key: SHARE_TYPE.to_ascii_lowercase(),
            name: v["name"].as_str().unwrap_or(share).to_string(),
            parent_key: Some(acct.id.to_ascii_lowercase()),
            body: v.clone(),
            etag: uuid::Uuid::new_v4().to_string(),
            created: existing.as_ref().map(|e| e.created).unwrap_or(now),
            updated: now,
        };
        let created = self.store.write(|db| db.put_resource(&row))?;
        Ok((created, v))
    }

    pub fn share_row(&self, sub: &str, rg: &str, account: &str, share: &str) -> Result<ResourceRow> {
        let acct = self.storage_account_row(sub, rg, account)?;
        self.store
            .read(|db| db.resource(&Self::share_id(&acct, share)))?
            .ok_or_else(|| Error::NotFound {
                code: "ShareNotFound",
                message: "The specified share does not exist.".into(),
            })
    }

    pub fn get_share(&self, sub: &str, rg: &str, account: &str, share: &str) -> Result<Value> {
        Ok(self.share_row(sub, rg, account, share)?.body)
    }

    /// Forgets a share (its directory and its backups stay). False when there was none.
    pub fn delete_share(&self, sub: &str, rg: &str, account: &str, share: &str) -> Result<bool> {
        let acct = self.storage_account_row(sub, rg, account)?;
        let id = Self::share_id(&acct, share);
        self.store.write(|db| db.delete_resource(&id)).map_err(Into::into)
    }

    /// The shares of an account, as `{"value": [...]}` items.
    pub fn list_shares(&self, sub: &str, rg: &str, account: &str) -> Result<Vec<Value>> {
        let acct = self.storage_account_row(sub, rg, account)?;
        let rows = self
            .store
            .read(|db| db.children(&acct.id, Some(SHARE_TYPE), None, usize::MAX / 2))?;
        Ok(rows.items.into_iter().map(|r| r.body).collect())
    }
}

/// Declaring inventory without ARM (`rsvault vm add`, `rsvault share add`): the default subscription,
/// the group created when missing.
impl Control {
    /// The subscription created at first start.
    pub fn default_subscription(&self) -> Result<String> {
        self.store
            .read(|db| db.meta(crate::datadir::META_DEFAULT_SUBSCRIPTION))?
            .ok_or_else(|| Error::internal("the data dir has no default subscription"))
    }

    /// `PUT`s a VM `body` in group `rg`, made in `location` when missing.
    pub(crate) fn declare_vm_body(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        location: &str,
        body: &Value,
    ) -> Result<Value> {
        self.ensure_group(sub, rg, location)?;
        Ok(self.put_vm(sub, rg, name, body)?.1)
    }

    fn ensure_group(&self, sub: &str, rg: &str, location: &str) -> Result<()> {
        if self.group_row(sub, rg).is_err() {
            self.put_group(sub, rg, &json!({ "location": location }))?;
        }
        Ok(())
    }

    /// Declares (or replaces) a VM that is a running QEMU guest: its QMP socket, and optionally its
    /// guest agent's and its own NBD server's sockets (see [`crate::livevm`]); its disks are
    /// discovered.
    pub fn declare_live_vm(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
        location: &str,
        src: &rsvault_engine::LiveVmSource,
    ) -> Result<Value> {
        let abs = |p: &Path| -> Result<String> {
            Ok(std::path::absolute(p)
                .map_err(|e| Error::bad_request(format!("{}: {e}", p.display())))?
                .display()
                .to_string())
        };
        let mut tags = Map::new();
        tags.insert(crate::livevm::QMP_TAG.into(), json!(abs(&src.qmp_socket)?));
        if let Some(a) = &src.agent_socket {
            tags.insert(crate::livevm::AGENT_TAG.into(), json!(abs(a)?));
        }
        if let Some(n) = &src.nbd_socket {
            tags.insert(crate::livevm::NBD_TAG.into(), json!(abs(n)?));
        }
        self.ensure_group(sub, rg, location)?;
        Ok(self
            .put_vm(sub, rg, name, &json!({"location": location, "tags": tags}))?
            .1)
    }

    /// Declares (or replaces) a VM whose disks are the given image files, the first being the OS disk.
    pub fn declare_vm(&self, sub: &str, rg: &str, name: &str, location: &str, disks: &[PathBuf]) -> Result<Value> {
        let (os, data) = disks
            .split_first()
            .ok_or_else(|| Error::bad_request("A VM needs at least one disk image (its OS disk)."))?;
        let uri = |p: &PathBuf| -> Result<String> {
            let abs = std::path::absolute(p).map_err(|e| Error::bad_request(format!("{}: {e}", p.display())))?;
            Ok(format!("file://{}", abs.display()))
        };
        let data: Vec<Value> = data
            .iter()
            .enumerate()
            .map(|(i, d)| Ok(json!({"lun": i, "vhd": {"uri": uri(d)?}})))
            .collect::<Result<_>>()?;
        self.ensure_group(sub, rg, location)?;
        let body = json!({"location": location, "properties": {"storageProfile": {
            "osDisk": {"vhd": {"uri": uri(os)?}}, "dataDisks": data}}});
        Ok(self.put_vm(sub, rg, name, &body)?.1)
    }

    /// Declares a storage account at `dir` (created if missing, when granted) and a share
    /// `{dir}/{share}` in it.
    pub fn declare_share(
        &self,
        sub: &str,
        rg: &str,
        account: &str,
        dir: &std::path::Path,
        share: &str,
        location: &str,
    ) -> Result<Value> {
        let dir = std::path::absolute(dir).map_err(|e| Error::bad_request(format!("{}: {e}", dir.display())))?;
        let id = self.group_resource_id(sub, rg, ACCOUNT_TYPE, account);
        let resolved = self.grants.check(&dir, &id)?;
        std::fs::create_dir_all(&resolved).map_err(|_| unavailable(&dir.display().to_string(), None))?;
        self.ensure_group(sub, rg, location)?;
        self.put_storage_account(
            sub,
            rg,
            account,
            &json!({"location": location, "tags": {PATH_TAG: dir}}),
        )?;
        Ok(self.put_share(sub, rg, account, share, &json!({}))?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_azure_rules() {
        assert!(check_vm_name("web-01.a_b").is_ok());
        assert!(check_vm_name("bad.").is_err());
        assert!(check_vm_name("sp ace").is_err());
        assert!(check_account_name("acct01").is_ok());
        assert!(check_account_name("Acct").is_err());
        assert!(check_share_name("my-share").is_ok());
        for bad in ["ab", "-ab", "a--b", "Share"] {
            assert!(check_share_name(bad).is_err(), "{bad}");
        }
    }
}
