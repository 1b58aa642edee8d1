//! Integration tests of the metadata store on a real SQLite file.

use chrono::Utc;
use rsvault_store::*;
use serde_json::json;

fn vault(sub: &str, rg: &str, name: &str) -> ResourceRow {
    let now = Utc::now();
    ResourceRow {
        id: format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{name}"),
        subscription: sub.into(),
        resource_group: Some(rg.into()),
        type_key: "microsoft.recoveryservices/vaults".into(),
        name: name.into(),
        parent_key: None,
        body: json!({"name": name}),
        etag: "e".into(),
        created: now,
        updated: now,
    }
}

#[test]
fn reopening_keeps_data_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    {
        let s = Store::open(&path).unwrap();
        s.write(|db| db.set_meta("tenant", "t1")).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.read(|db| db.meta("tenant")).unwrap().as_deref(), Some("t1"));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    drop(Store::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 999).unwrap();
    drop(c);
    assert!(matches!(Store::open(&path), Err(StoreError::TooNew { found: 999, .. })));
}

#[test]
fn failed_write_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("m.db")).unwrap();
    let r: Result<(), StoreError> = s.write(|db| {
        db.put_resource(&vault("s", "rg", "v1"))?;
        Err(StoreError::Json(serde_json::from_str::<()>("x").unwrap_err()))
    });
    assert!(r.is_err());
    assert!(s.read(|db| db.resource(&vault("s", "rg", "v1").id)).unwrap().is_none());
}

#[test]
fn resources_are_case_insensitive_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("m.db")).unwrap();
    s.write(|db| {
        for i in 0..5 {
            assert!(db.put_resource(&vault("S", "RG", &format!("v{i}")))?);
        }
        assert!(!db.put_resource(&vault("s", "rg", "V0"))?, "replace is not a create");
        db.put_resource(&vault("S", "other", "w"))
    })
    .unwrap();
    let got = s
        .read(|db| db.resource("/SUBSCRIPTIONS/s/resourcegroups/rg/providers/microsoft.recoveryservices/vaults/V3"))
        .unwrap()
        .unwrap();
    assert_eq!(got.name, "v3");
    let p1 = s
        .read(|db| db.resources("s", Some("rg"), "Microsoft.RecoveryServices/vaults", None, 2))
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = s
        .read(|db| {
            db.resources(
                "s",
                Some("rg"),
                "microsoft.recoveryservices/vaults",
                p1.next.as_deref(),
                2,
            )
        })
        .unwrap();
    let p3 = s
        .read(|db| {
            db.resources(
                "s",
                Some("rg"),
                "microsoft.recoveryservices/vaults",
                p2.next.as_deref(),
                2,
            )
        })
        .unwrap();
    assert_eq!(p3.items.len(), 1);
    assert!(p3.next.is_none());
    let all = s
        .read(|db| db.resources("s", None, "microsoft.recoveryservices/vaults", None, 100))
        .unwrap();
    assert_eq!(all.items.len(), 6);
}

#[test]
fn deleting_a_group_deletes_its_resources_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("m.db")).unwrap();
    let now = Utc::now();
    s.write(|db| {
        for g in ["rg", "rg2"] {
            db.put_group(&GroupRow {
                subscription: "s".into(),
                name: g.into(),
                id: format!("/subscriptions/s/resourceGroups/{g}"),
                location: "westus".into(),
                tags: json!({}),
                managed_by: None,
                created: now,
            })?;
            db.put_resource(&vault("s", g, "v"))?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert!(s.write(|db| db.delete_group("s", "RG")).unwrap());
    assert!(!s.write(|db| db.delete_group("s", "rg")).unwrap());
    let left = s
        .read(|db| db.resources("s", None, "microsoft.recoveryservices/vaults", None, 10))
        .unwrap();
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].resource_group.as_deref(), Some("rg2"));
}

#[test]
fn a_schedule_slot_is_claimed_once_and_only_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("m.db")).unwrap();
    let item = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v/backupFabrics/Azure/protectionContainers/c/protectedItems/i";
    let t0: chrono::DateTime<Utc> = "2026-03-01T02:00:00Z".parse().unwrap();
    let t1 = t0 + chrono::Duration::days(1);
    assert_eq!(s.read(|db| db.schedule_slot(item)).unwrap(), None);
    assert!(s.write(|db| db.claim_slot(item, t0)).unwrap(), "first claim");
    assert!(!s.write(|db| db.claim_slot(item, t0)).unwrap(), "the same slot twice");
    assert!(
        !s.write(|db| db.claim_slot(&item.to_uppercase(), t0)).unwrap(),
        "ids are case-insensitive"
    );
    assert!(s.write(|db| db.claim_slot(item, t1)).unwrap(), "a later slot");
    assert!(
        !s.write(|db| db.claim_slot(item, t0)).unwrap(),
        "an earlier slot after a later one"
    );
    assert_eq!(s.read(|db| db.schedule_slot(item)).unwrap(), Some(t1));
    // Deleting the vault drops its items' claims.
    s.write(|db| {
        db.delete_resource("/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v")
    })
    .unwrap();
    assert_eq!(s.read(|db| db.schedule_slot(item)).unwrap(), None);
}

#[test]
fn leftovers_of_deleted_vaults_are_found_and_only_they() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("m.db")).unwrap();
    let now = Utc::now();
    let (kept, gone) = (vault("s", "rg", "kept"), vault("s", "rg", "gone"));
    s.write(|db| {
        for v in [&kept, &gone] {
            db.put_resource(v)?;
            db.insert_vault_secret(&VaultSecretRow {
                vault_key: v.id.to_ascii_lowercase(),
                sealed: "sealed".into(),
                repo: format!("/repos/{}", v.name),
                created: now,
            })?;
            db.put_recovery_point(&RecoveryPointRow {
                id: format!("{}/item/recoveryPoints/1", v.id),
                vault_key: v.id.to_ascii_lowercase(),
                item_key: format!("{}/item", v.id).to_ascii_lowercase(),
                name: "1".into(),
                time: now,
                expiry: None,
                body: json!({}),
                engine: json!({}),
            })?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert!(s.read(|db| db.orphaned_vault_secrets()).unwrap().is_empty());
    // What a group delete did before it went through each vault's delete: the rows only.
    s.write(|db| db.delete_group("s", "rg")).unwrap();
    s.write(|db| db.put_resource(&kept)).unwrap();
    let orphans = s.read(|db| db.orphaned_vault_secrets()).unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].repo, "/repos/gone");
    assert_eq!(s.write(|db| db.delete_orphaned_recovery_points()).unwrap(), 1);
    assert_eq!(s.read(|db| db.vault_recovery_points(&kept.id)).unwrap().len(), 1);
    assert!(s.read(|db| db.vault_recovery_points(&gone.id)).unwrap().is_empty());
}
