//! Host access is the operator's grant.
//!
//! rsvault runs as root; every host path a request names (a VM disk's `vhd.uri`, a storage account's
//! `rsvault-path`, a share's directory, every restore target) is checked here before it is used, at
//! request time and again when the job runs. The operator names the roots rsvault may use
//! (`rsvault serve --allow-path DIR`, repeatable), each optionally bound to an ARM scope
//! (`DIR=/subscriptions/S` or `DIR=/subscriptions/S/resourceGroups/G`): a scoped grant serves only
//! resources whose id that scope contains. **No grant, no host path.**
//!
//! A path is checked after canonicalisation: it must be absolute and free of `..`; the deepest part
//! of it that exists is resolved with `realpath` (symlinks included) and the rest appended (only
//! plain names remain). The resolved path must lie below a grant's root (compared component by
//! component), outside every excluded directory (the data dir), and the grant's scope must contain
//! the resource's id. Callers then use the *resolved* path; the engine opens it without following
//! any symlink, so a component swapped for a symlink after the check is refused, not followed.
//!
//! Every refusal is the same [`unavailable`] error (400 `UserErrorHostPathNotAvailable`), whatever
//! the reason — missing, outside the grants, a symlink leading out, unreadable — so answers never
//! tell whether a path exists. The reason goes to the server log, for the operator.
//!
//! **libvirt connections** are granted the same way ([`LibvirtGrant`]: `rsvault serve
//! --allow-libvirt URI=/subscriptions/S/resourceGroups/G`, repeatable, or `RSVAULT_ALLOW_LIBVIRT`,
//! comma-separated): rsvault may use that connection (`virsh -c URI`) for VMs of that resource
//! group, and a container refresh declares the connection's domains there as VMs. A domain's disks
//! are the ones its definition names: the grant of the connection covers reading them (an operator
//! who lets libvirt run a guest lets rsvault read its disks); writing over them (an OriginalLocation
//! restore of a shut-off domain) needs them granted as paths, like every restore target.

use crate::{Error, Result};
use rsvault_core::ids::scope_contains;
use std::path::{Component, Path, PathBuf};

/// The error code of every unusable host path.
pub const UNAVAILABLE_CODE: &str = "UserErrorHostPathNotAvailable";

/// The one error for an unusable host path. `shown` is the path as the request named it (never the
/// resolved one, which could reveal a symlink's target); `target` the request member.
pub fn unavailable(shown: &str, target: Option<&str>) -> Error {
    Error::Invalid {
        code: UNAVAILABLE_CODE,
        message: unavailable_message(shown),
        target: target.map(str::to_string),
    }
}

/// The message of [`unavailable`] (also used in failed jobs).
pub fn unavailable_message(shown: &str) -> String {
    format!("The path '{shown}' is not available to rsvault: the operator has not granted it, or it cannot be used.")
}

/// One root the operator granted, optionally bound to a subscription or resource-group scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    root: PathBuf,
    scope: Option<String>,
}

impl Grant {
    /// Parses the operator's `DIR` or `DIR=/subscriptions/S[/resourceGroups/G]` (the last
    /// `=/subscriptions/` splits). `DIR` must be an existing directory; a relative one is taken from
    /// the current directory; it is resolved now (a grant of a symlink grants its target).
    pub fn parse(spec: &str) -> std::result::Result<Grant, String> {
        let lower = spec.to_ascii_lowercase();
        let (dir, scope) = match lower.rfind("=/subscriptions/") {
            Some(i) => (&spec[..i], Some(&spec[i + 1..])),
            None => (spec, None),
        };
        if dir.is_empty() {
            return Err(format!("'{spec}' names no directory"));
        }
        let dir = std::path::absolute(dir).map_err(|e| format!("'{dir}': {e}"))?;
        Grant::new(&dir, scope)
    }

    /// A grant of `root` (absolute, an existing directory) at `scope` (`None`: every resource).
    pub fn new(root: &Path, scope: Option<&str>) -> std::result::Result<Grant, String> {
        if !root.is_absolute() {
            return Err(format!("'{}' is not an absolute path", root.display()));
        }
        let canon = std::fs::canonicalize(root).map_err(|e| format!("'{}': {e}", root.display()))?;
        if !canon.is_dir() {
            return Err(format!("'{}' is not a directory", root.display()));
        }
        let scope = scope.map(parse_scope).transpose()?;
        Ok(Grant { root: canon, scope })
    }

    /// The resolved root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ARM scope it is bound to, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    fn serves(&self, path: &Path, resource_id: &str) -> bool {
        path.starts_with(&self.root) && self.scope.as_deref().is_none_or(|s| scope_contains(s, resource_id))
    }
}

/// `/subscriptions/S` or `/subscriptions/S/resourceGroups/G`, without a trailing slash.
fn parse_scope(s: &str) -> std::result::Result<String, String> {
    let segs: Vec<&str> = s.trim_end_matches('/').split('/').collect();
    let ok = match segs.as_slice() {
        ["", sub, id] => sub.eq_ignore_ascii_case("subscriptions") && !id.is_empty(),
        ["", sub, id, rgs, g] => {
            sub.eq_ignore_ascii_case("subscriptions")
                && !id.is_empty()
                && rgs.eq_ignore_ascii_case("resourceGroups")
                && !g.is_empty()
        }
        _ => false,
    };
    if ok {
        Ok(segs.join("/"))
    } else {
        Err(format!(
            "'{s}' is not a grant scope: use /subscriptions/SUB or /subscriptions/SUB/resourceGroups/GROUP"
        ))
    }
}

/// A libvirt connection the operator granted, bound to the resource group its domains are
/// declared in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtGrant {
    uri: String,
    scope: String,
}

impl LibvirtGrant {
    /// Parses `URI=/subscriptions/S/resourceGroups/G` (the last `=/subscriptions/` splits).
    pub fn parse(spec: &str) -> std::result::Result<LibvirtGrant, String> {
        let lower = spec.to_ascii_lowercase();
        let Some(i) = lower.rfind("=/subscriptions/") else {
            return Err(format!(
                "'{spec}' names no resource group: use URI=/subscriptions/SUB/resourceGroups/GROUP"
            ));
        };
        let (uri, scope) = (&spec[..i], parse_scope(&spec[i + 1..])?);
        if uri.is_empty() || !uri.contains(':') {
            return Err(format!("'{uri}' is not a libvirt connection URI"));
        }
        if scope.split('/').count() != 5 {
            return Err(format!("'{scope}' is not a resource group: a libvirt grant needs one"));
        }
        Ok(LibvirtGrant {
            uri: uri.to_string(),
            scope,
        })
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The subscription and resource group its domains are declared in.
    pub fn group(&self) -> (&str, &str) {
        let segs: Vec<&str> = self.scope.split('/').collect();
        (segs[2], segs[4])
    }
}

/// The operator's grants, and the directories no grant reaches (the data dir).
#[derive(Debug, Clone, Default)]
pub struct HostGrants {
    grants: Vec<Grant>,
    excluded: Vec<PathBuf>,
    libvirt: Vec<LibvirtGrant>,
}

impl HostGrants {
    pub fn new(grants: Vec<Grant>) -> HostGrants {
        HostGrants {
            grants,
            excluded: Vec::new(),
            libvirt: Vec::new(),
        }
    }

    /// These libvirt connections granted too.
    pub fn with_libvirt(mut self, libvirt: Vec<LibvirtGrant>) -> HostGrants {
        self.libvirt = libvirt;
        self
    }

    /// The granted libvirt connections.
    pub fn libvirt(&self) -> &[LibvirtGrant] {
        &self.libvirt
    }

    /// Whether the connection `uri` is granted for the resource `resource_id`; refused with the
    /// one generic [`unavailable`] error naming the URI.
    pub fn check_libvirt(&self, uri: &str, resource_id: &str, target: Option<&str>) -> Result<()> {
        if self
            .libvirt
            .iter()
            .any(|g| g.uri == uri && scope_contains(&g.scope, resource_id))
        {
            return Ok(());
        }
        tracing::info!(
            uri,
            resource = resource_id,
            "libvirt connection refused: no --allow-libvirt grant for it"
        );
        Err(unavailable(uri, target))
    }

    /// No path below `dir` is ever granted (rsvault's own data dir: store, keys, vaults).
    pub fn excluding(mut self, dir: &Path) -> HostGrants {
        let d = std::fs::canonicalize(dir).unwrap_or_else(|_| std::path::absolute(dir).unwrap_or(dir.to_path_buf()));
        self.excluded.push(d);
        self
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Checks a host path for the resource `resource_id` and returns it resolved (see the module
    /// doc). Any refusal is [`unavailable`] naming `path` as given.
    pub fn check(&self, path: &Path, resource_id: &str) -> Result<PathBuf> {
        self.check_named(path, &path.display().to_string(), resource_id, None)
    }

    /// [`HostGrants::check`], the error naming the path as `shown` and the request member `target`.
    pub fn check_named(&self, path: &Path, shown: &str, resource_id: &str, target: Option<&str>) -> Result<PathBuf> {
        self.resolve(path, resource_id).map_err(|why| {
            tracing::info!(path = %path.display(), resource = resource_id, reason = %why, "host path refused");
            unavailable(shown, target)
        })
    }

    /// Whether `path` is already resolved and granted: [`HostGrants::check`] returns it unchanged.
    /// Jobs use this on the paths their request resolved.
    pub fn recheck(&self, path: &Path, resource_id: &str) -> Result<()> {
        let got = self.check(path, resource_id)?;
        if got == path {
            Ok(())
        } else {
            tracing::info!(path = %path.display(), now = %got.display(), resource = resource_id, "host path refused: it resolves differently now");
            Err(unavailable(&path.display().to_string(), None))
        }
    }

    fn resolve(&self, path: &Path, resource_id: &str) -> std::result::Result<PathBuf, String> {
        if self.grants.is_empty() {
            return Err("no --allow-path grant".into());
        }
        if !path.is_absolute() {
            return Err("not absolute".into());
        }
        if path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err("contains NUL".into());
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err("contains '..'".into());
        }
        // The deepest existing prefix (a dangling symlink counts as existing, and fails to resolve).
        let mut existing = path.to_path_buf();
        let mut rest: Vec<std::ffi::OsString> = Vec::new();
        while std::fs::symlink_metadata(&existing).is_err() {
            match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => return Err("no part of it exists".into()),
            }
        }
        let mut resolved = std::fs::canonicalize(&existing).map_err(|e| format!("cannot resolve: {e}"))?;
        if !rest.is_empty() && !resolved.is_dir() {
            return Err("a parent is not a directory".into());
        }
        for name in rest.iter().rev() {
            resolved.push(name);
        }
        if self.excluded.iter().any(|x| resolved.starts_with(x)) {
            return Err(format!("{} is inside rsvault's data dir", resolved.display()));
        }
        if self.grants.iter().any(|g| g.serves(&resolved, resource_id)) {
            Ok(resolved)
        } else {
            Err(format!("{} is not below a grant for this resource", resolved.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM_G: &str = "/subscriptions/s1/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/v";
    const VM_H: &str = "/subscriptions/s1/resourceGroups/H/providers/Microsoft.Compute/virtualMachines/v";

    #[test]
    fn grants_parse_dir_and_optional_scope() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let g = Grant::parse(&d.path().display().to_string()).unwrap();
        assert_eq!((g.root(), g.scope()), (root.as_path(), None));
        let g = Grant::parse(&format!("{}=/subscriptions/s1/resourceGroups/G/", d.path().display())).unwrap();
        assert_eq!(g.scope(), Some("/subscriptions/s1/resourceGroups/G"));
        for bad in [
            "no/such/relative/dir".to_string(),
            "=/subscriptions/s1".to_string(),
            "/no/such/dir/anywhere".to_string(),
            format!("{}=/subscriptions/", d.path().display()),
            format!("{}=/subscriptions/s/vaults/x", d.path().display()),
        ] {
            assert!(Grant::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_resolves_and_refuses_everything_outside() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("in")).unwrap();
        std::fs::write(root.join("in/disk.img"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("in/out-link")).unwrap();
        std::os::unix::fs::symlink(root.join("in/disk.img"), root.join("in/in-link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("in/dangling")).unwrap();
        let data = root.join("in/data");
        std::fs::create_dir(&data).unwrap();
        let grants = HostGrants::new(vec![Grant::new(&root, None).unwrap()]).excluding(&data);
        assert_eq!(
            grants.check(&root.join("in/disk.img"), VM_G).unwrap(),
            root.join("in/disk.img")
        );
        assert_eq!(
            grants.check(&root.join("in/in-link"), VM_G).unwrap(),
            root.join("in/disk.img")
        );
        assert_eq!(
            grants.check(&root.join("in/new/sub"), VM_G).unwrap(),
            root.join("in/new/sub")
        );
        assert_eq!(grants.check(&root, VM_G).unwrap(), root);
        for bad in [
            root.join("in/out-link"),
            root.join("in/../../etc/hostname"),
            root.join("in/dangling"),
            root.join("in/dangling/below"),
            root.join("in/disk.img/below"),
            root.join("in/data/engine.key"),
            PathBuf::from("in/disk.img"),
            PathBuf::from("/etc/shadow"),
            PathBuf::from("/"),
        ] {
            let e = grants.check(&bad, VM_G).unwrap_err();
            assert_eq!(e.code(), UNAVAILABLE_CODE, "{}", bad.display());
            assert_eq!(e.to_string(), unavailable_message(&bad.display().to_string()));
        }
        let none = HostGrants::default();
        assert!(none.check(&root.join("in/disk.img"), VM_G).is_err());
        assert!(grants.recheck(&root.join("in/disk.img"), VM_G).is_ok());
        assert!(grants.recheck(&root.join("in/in-link"), VM_G).is_err());
    }

    #[test]
    fn a_scoped_grant_serves_only_its_scope() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let g = HostGrants::new(vec![
            Grant::new(&root, Some("/subscriptions/S1/resourcegroups/g")).unwrap()
        ]);
        assert!(g.check(&root, VM_G).is_ok());
        assert!(g.check(&root, VM_H).is_err());
        assert!(g
            .check(
                &root,
                "/subscriptions/s1/resourceGroups/Gx/providers/Microsoft.Compute/virtualMachines/v"
            )
            .is_err());
    }
}
