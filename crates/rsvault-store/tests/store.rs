//! The metadata store's contract, run against both backends: every test below runs once on a real
//! SQLite file (`sqlite::…`) and once on a real PostgreSQL database (`postgres::…`), each in a fresh store.
//!
//! PostgreSQL comes from `RSVAULT_TEST_PG_URL` (a database the role may create schemas in; each test gets
//! a schema of its own). `scripts/test` starts a private cluster and sets it, with
//! `RSVAULT_TEST_PG_REQUIRED=1`, so there the PostgreSQL half fails loudly when the URL is missing. A plain
//! `cargo test` without the URL prints that the PostgreSQL half was skipped.

use chrono::Utc;
use rsvault_store::*;
use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

const PG_URL: &str = "RSVAULT_TEST_PG_URL";
const PG_REQUIRED: &str = "RSVAULT_TEST_PG_REQUIRED";

/// A fresh, empty store location of one backend, removed when dropped.
struct Fixture {
    location: StoreLocation,
    kind: Kind,
}

enum Kind {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, schema: String },
}

impl Fixture {
    fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            location: StoreLocation::Sqlite(dir.path().join("meta.db")),
            kind: Kind::Sqlite(dir),
        }
    }

    /// A fresh schema in the test database, or `None` (said on stderr) when no database is configured.
    fn postgres() -> Option<Fixture> {
        let Ok(url) = std::env::var(PG_URL) else {
            if std::env::var_os(PG_REQUIRED).is_some() {
                panic!(
                    "{PG_REQUIRED} is set but {PG_URL} is not: the PostgreSQL half of the store contract cannot run"
                );
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                // Straight to the terminal: the test harness would swallow an eprintln of a passing test.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSKIPPED: the PostgreSQL half of the store contract ({PG_URL} is unset; scripts/test sets it)"
                );
            });
            return None;
        };
        static N: AtomicUsize = AtomicUsize::new(0);
        let schema = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("the test database answers");
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(Fixture {
            location: StoreLocation::Postgres(format!("{url}{sep}options=-csearch_path%3D{schema}")),
            kind: Kind::Postgres { admin_url: url, schema },
        })
    }

    fn open(&self) -> Store {
        Store::connect(&self.location).unwrap()
    }

    /// Marks the store as written by a future rsvault with schema `version`.
    fn set_schema_version(&self, version: i64) {
        match &self.kind {
            Kind::Sqlite(_) => {
                let StoreLocation::Sqlite(path) = &self.location else {
                    unreachable!()
                };
                let c = rusqlite::Connection::open(path).unwrap();
                c.pragma_update(None, "user_version", version).unwrap();
            }
            Kind::Postgres { admin_url, schema } => {
                let mut c = ::postgres::Client::connect(admin_url, ::postgres::NoTls).unwrap();
                c.execute(
                    &format!("INSERT INTO {schema}.schema_migrations (version, applied) VALUES ($1, 'test')"),
                    &[&version],
                )
                .unwrap();
            }
        }
    }

    /// The schema version the store records.
    fn schema_version(&self) -> i64 {
        match &self.kind {
            Kind::Sqlite(_) => {
                let StoreLocation::Sqlite(path) = &self.location else {
                    unreachable!()
                };
                let c = rusqlite::Connection::open(path).unwrap();
                c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
            }
            Kind::Postgres { admin_url, schema } => {
                let mut c = ::postgres::Client::connect(admin_url, ::postgres::NoTls).unwrap();
                let rows = c
                    .query(
                        &format!("SELECT version FROM {schema}.schema_migrations ORDER BY version"),
                        &[],
                    )
                    .unwrap();
                let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                assert_eq!(
                    versions,
                    (1..=versions.len() as i64).collect::<Vec<_>>(),
                    "each migration once"
                );
                versions.len() as i64
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Kind::Postgres { admin_url, schema } = &self.kind {
            if let Ok(mut c) = ::postgres::Client::connect(admin_url, ::postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            }
        }
    }
}

/// Runs each named test (a `fn(&Fixture)`) on both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Fixture::sqlite());
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if let Some(f) = super::Fixture::postgres() {
                    super::$name(&f);
                }
            })*
        }
    };
}

contract!(
    reopening_keeps_data_and_schema_version,
    a_newer_schema_is_refused,
    failed_write_keeps_nothing,
    resources_are_case_insensitive_and_paged,
    deleting_a_group_deletes_its_resources_only,
    a_schedule_slot_is_claimed_once_and_only_forwards,
    leftovers_of_deleted_vaults_are_found_and_only_they,
    concurrent_writers_on_two_stores_lose_no_update,
    migrations_racing_on_a_fresh_store_apply_once,
    keys_sort_and_page_byte_by_byte,
    timestamps_keep_nanoseconds,
    upserts_replace_every_column,
    job_leases_fence_renew_count_and_go_with_their_vault,
    a_leader_lease_has_one_holder_until_it_lapses,
    a_subtree_is_every_row_below_and_a_secret_moves_between_keys,
    every_role_assignment_change_moves_the_access_generation,
    a_snapshot_read_sees_one_commit_and_read_one_the_latest,
    job_pages_filter_and_continue_on_the_index,
);

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

fn reopening_keeps_data_and_schema_version(f: &Fixture) {
    {
        let s = f.open();
        s.write(|db| db.set_meta("tenant", "t1")).unwrap();
    }
    let s = f.open();
    assert_eq!(s.read(|db| db.meta("tenant")).unwrap().as_deref(), Some("t1"));
    assert_eq!(f.schema_version(), migrations::MIGRATIONS.len() as i64);
}

fn a_newer_schema_is_refused(f: &Fixture) {
    drop(f.open());
    f.set_schema_version(999);
    let e = Store::connect(&f.location).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { found: 999, .. }), "{e}");
    assert!(!e.to_string().contains("password"), "{e}");
}

fn failed_write_keeps_nothing(f: &Fixture) {
    let s = f.open();
    let r: Result<(), StoreError> = s.write(|db| {
        db.put_resource(&vault("s", "rg", "v1"))?;
        Err(StoreError::Json(serde_json::from_str::<()>("x").unwrap_err()))
    });
    assert!(r.is_err());
    assert!(s.read(|db| db.resource(&vault("s", "rg", "v1").id)).unwrap().is_none());
}

fn resources_are_case_insensitive_and_paged(f: &Fixture) {
    let s = f.open();
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

fn deleting_a_group_deletes_its_resources_only(f: &Fixture) {
    let s = f.open();
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

fn a_schedule_slot_is_claimed_once_and_only_forwards(f: &Fixture) {
    let s = f.open();
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

fn leftovers_of_deleted_vaults_are_found_and_only_they(f: &Fixture) {
    let s = f.open();
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

    // A vault deleted now: its row is retired in the delete's transaction, a record of the
    // repository still to remove, without the password; a new vault of that name finds nothing.
    let retired = s
        .write(|db| {
            let r = db.retire_vault_secret(&kept.id.to_uppercase())?;
            db.delete_resource(&kept.id)?;
            Ok::<_, StoreError>(r)
        })
        .unwrap()
        .expect("the row as it was");
    assert_eq!(
        (retired.repo.as_str(), retired.sealed.as_str()),
        ("/repos/kept", "sealed")
    );
    assert!(s.read(|db| db.vault_secret(&kept.id)).unwrap().is_none());
    let orphans = s.read(|db| db.orphaned_vault_secrets()).unwrap();
    let rec = orphans
        .iter()
        .find(|o| o.repo == "/repos/kept")
        .expect("the removal record");
    assert_eq!(rec.vault_key, rsvault_store::retired_key("/repos/kept"));
    assert_eq!(rec.sealed, "", "the password goes with the vault");
    assert!(s.write(|db| db.delete_vault_secret(&rec.vault_key)).unwrap());
    assert!(s.read(|db| db.retire_vault_secret(&kept.id)).unwrap().is_none());
}

fn a_subtree_is_every_row_below_and_a_secret_moves_between_keys(f: &Fixture) {
    let s = f.open();
    let (v, other) = (vault("s", "rg", "v"), vault("s", "rg", "v2"));
    let child = |parent: &ResourceRow, ty: &str, name: &str| ResourceRow {
        id: format!("{}/{ty}/{name}", parent.id),
        type_key: format!("microsoft.recoveryservices/vaults/{ty}").to_ascii_lowercase(),
        name: name.into(),
        parent_key: Some(parent.id.to_ascii_lowercase()),
        ..parent.clone()
    };
    let policy = child(&v, "backupPolicies", "P1");
    let config = child(&v, "backupconfig", "vaultconfig");
    s.write(|db| {
        for r in [&v, &other, &policy, &config, &child(&other, "backupPolicies", "P2")] {
            db.put_resource(r)?;
        }
        db.insert_vault_secret(&VaultSecretRow {
            vault_key: v.id.to_ascii_lowercase(),
            sealed: "sealed".into(),
            repo: "/repos/v".into(),
            created: Utc::now(),
        })
    })
    .unwrap();
    let below: Vec<String> = s
        .read(|db| db.subtree(&v.id.to_uppercase()))
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        below,
        ["vaultconfig", "P1"],
        "every type below the vault, its own row and its sibling's not"
    );

    let kept = "/subscriptions/s/providers/Microsoft.RecoveryServices/locations/westus/deletedVaults/v";
    assert!(s.write(|db| db.rekey_vault_secret(&v.id, kept)).unwrap());
    assert!(s.read(|db| db.vault_secret(&v.id)).unwrap().is_none());
    let moved = s.read(|db| db.vault_secret(kept)).unwrap().expect("moved");
    assert_eq!((moved.sealed.as_str(), moved.repo.as_str()), ("sealed", "/repos/v"));
    assert!(
        !s.write(|db| db.rekey_vault_secret(&v.id, kept)).unwrap(),
        "nothing left to move"
    );
}

fn concurrent_writers_on_two_stores_lose_no_update(f: &Fixture) {
    // Two stores (two nodes, or two processes on one file), two threads each, every write a
    // read-modify-write of one counter: one writer at a time means no increment is lost.
    const N: usize = 25;
    let stores = [f.open(), f.open()];
    std::thread::scope(|sc| {
        for s in &stores {
            for _ in 0..2 {
                sc.spawn(move || {
                    for _ in 0..N {
                        s.write(|db| {
                            let n: usize = db.meta("counter")?.map_or(0, |v| v.parse().unwrap());
                            std::thread::yield_now();
                            db.set_meta("counter", &(n + 1).to_string())
                        })
                        .unwrap();
                    }
                });
            }
        }
    });
    let total = (4 * N).to_string();
    assert_eq!(stores[1].read(|db| db.meta("counter")).unwrap(), Some(total.clone()));
    assert_eq!(f.open().read(|db| db.meta("counter")).unwrap(), Some(total));
}

fn migrations_racing_on_a_fresh_store_apply_once(f: &Fixture) {
    let start = std::sync::Barrier::new(3);
    std::thread::scope(|sc| {
        for i in 0..3 {
            let start = &start;
            sc.spawn(move || {
                start.wait();
                let s = Store::connect(&f.location).unwrap();
                s.write(|db| db.set_meta(&format!("node{i}"), "up")).unwrap();
            });
        }
    });
    assert_eq!(f.schema_version(), migrations::MIGRATIONS.len() as i64);
    let s = f.open();
    for i in 0..3 {
        assert_eq!(
            s.read(|db| db.meta(&format!("node{i}"))).unwrap().as_deref(),
            Some("up")
        );
    }
}

fn keys_sort_and_page_byte_by_byte(f: &Fixture) {
    // Punctuation, digits, case and non-ASCII: a locale's collation would order these otherwise.
    let names = [
        "a", "a0", "a-b", "a_b", "a.b", "a~", "aé", "Z", "b", "_x", "0", "a10", "a2", "ab", "ä", "a%20b", "A-",
    ];
    let s = f.open();
    let now = Utc::now();
    s.write(|db| {
        for n in names {
            db.put_resource(&vault("s", "rg", n))?;
            db.put_group(&GroupRow {
                subscription: "s".into(),
                name: n.into(),
                id: format!("/subscriptions/s/resourceGroups/{n}"),
                location: "westus".into(),
                tags: json!({}),
                managed_by: None,
                created: now,
            })?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    let mut want: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    want.sort(); // byte order of UTF-8, as SQLite's BINARY and PostgreSQL's "C" compare
    let (mut got, mut after) = (Vec::new(), None::<String>);
    loop {
        let p = s
            .read(|db| {
                db.resources(
                    "s",
                    Some("rg"),
                    "microsoft.recoveryservices/vaults",
                    after.as_deref(),
                    3,
                )
            })
            .unwrap();
        got.extend(p.items.iter().map(|r| r.name.to_lowercase()));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(got, want, "resources, 3 a page");
    let (mut got, mut after) = (Vec::new(), None::<String>);
    loop {
        let p = s.read(|db| db.groups("s", after.as_deref(), 4)).unwrap();
        got.extend(p.items.iter().map(|g| g.name.to_lowercase()));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(got, want, "groups, 4 a page");
    let all: Vec<String> = s
        .read(|db| db.all_of_type("s", "microsoft.recoveryservices/vaults"))
        .unwrap()
        .iter()
        .map(|r| r.name.to_lowercase())
        .collect();
    assert_eq!(all, want);
}

fn timestamps_keep_nanoseconds(f: &Fixture) {
    let s = f.open();
    let t: chrono::DateTime<Utc> = "2026-03-01T02:00:00.123456789Z".parse().unwrap();
    let t1 = t + chrono::Duration::nanoseconds(1);
    let mut v = vault("s", "rg", "v");
    v.created = t;
    v.updated = t1;
    let job = |name: &str, start| JobRow {
        id: format!("{}/backupJobs/{name}", v.id),
        vault_key: v.id.to_lowercase(),
        name: name.into(),
        operation: "Backup".into(),
        status: "Completed".into(),
        backup_management_type: "AzureIaasVM".into(),
        entity: "vm".into(),
        start,
        end: Some(start + chrono::Duration::nanoseconds(7)),
        body: json!({"n": name}),
        phase: Some("done".into()),
        work: Some(json!({"kind": "backup"})),
    };
    let rp = |name: &str, expiry| RecoveryPointRow {
        id: format!("{}/item/recoveryPoints/{name}", v.id),
        vault_key: v.id.to_lowercase(),
        item_key: format!("{}/item", v.id).to_lowercase(),
        name: name.into(),
        time: t,
        expiry: Some(expiry),
        body: json!({}),
        engine: json!({}),
    };
    let op = OperationRow {
        id: "op1".into(),
        scope_key: v.id.to_lowercase(),
        kind: "VaultDelete".into(),
        status: "Succeeded".into(),
        start: t,
        end: Some(t1),
        error: None,
        properties: Some(json!({"p": 1})),
        target: None,
    };
    s.write(|db| {
        db.put_resource(&v)?;
        // Two jobs a nanosecond apart: the newer sorts first.
        db.put_job(&job("older", t))?;
        db.put_job(&job("newer", t1))?;
        db.put_recovery_point(&rp("at", t))?;
        db.put_recovery_point(&rp("after", t1))?;
        db.put_operation(&op)?;
        db.insert_signing_key(&SigningKeyRow {
            kid: "k1".into(),
            created: t,
            retired: Some(t1),
            pkcs8: vec![0, 1, 2, 255],
        })?;
        db.claim_slot(&format!("{}/item", v.id), t)
    })
    .unwrap();
    let got = s.read(|db| db.resource(&v.id)).unwrap().unwrap();
    assert_eq!((got.created, got.updated), (t, t1));
    let jobs = s.read(|db| db.jobs(&v.id)).unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        ["newer", "older"]
    );
    assert_eq!(jobs[0], job("newer", t1));
    assert_eq!(s.read(|db| db.operation("OP1")).unwrap(), Some(op));
    let expiring = s.read(|db| db.recovery_points_expiring(t, t1)).unwrap();
    assert_eq!(expiring.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["after"]);
    assert_eq!(expiring[0].expiry, Some(t1));
    let keys = s.read(|db| db.signing_keys()).unwrap();
    assert_eq!((keys[0].created, keys[0].retired), (t, Some(t1)));
    assert_eq!(keys[0].pkcs8, vec![0, 1, 2, 255]);
    assert_eq!(
        s.read(|db| db.schedule_slot(&format!("{}/item", v.id))).unwrap(),
        Some(t)
    );
    assert!(
        !s.write(|db| db.claim_slot(&format!("{}/item", v.id), t - chrono::Duration::nanoseconds(1)))
            .unwrap(),
        "a nanosecond earlier is earlier"
    );
    assert!(s.write(|db| db.claim_slot(&format!("{}/item", v.id), t1)).unwrap());
}

fn upserts_replace_every_column(f: &Fixture) {
    let s = f.open();
    let now = Utc::now();
    let mut op = OperationRow {
        id: "op".into(),
        scope_key: "/subscriptions/s".into(),
        kind: "K".into(),
        status: "InProgress".into(),
        start: now,
        end: None,
        error: None,
        properties: None,
        target: Some("/t".into()),
    };
    s.write(|db| db.put_operation(&op)).unwrap();
    op.status = "Failed".into();
    op.end = Some(now);
    op.error = Some(json!({"code": "X", "message": "m"}));
    op.target = None;
    s.write(|db| db.put_operation(&op)).unwrap();
    assert_eq!(s.read(|db| db.operation("op")).unwrap(), Some(op));

    let secret = VaultSecretRow {
        vault_key: "/v".into(),
        sealed: "one".into(),
        repo: "/r".into(),
        created: now,
    };
    assert!(s.write(|db| db.insert_vault_secret(&secret)).unwrap());
    let other = VaultSecretRow {
        sealed: "two".into(),
        ..secret.clone()
    };
    assert!(
        !s.write(|db| db.insert_vault_secret(&other)).unwrap(),
        "an existing one is kept"
    );
    assert_eq!(s.read(|db| db.vault_secret("/V")).unwrap(), Some(secret));

    s.write(|db| db.set_meta("k", "1")).unwrap();
    s.write(|db| db.set_meta("k", "2")).unwrap();
    assert_eq!(s.read(|db| db.meta("k")).unwrap().as_deref(), Some("2"));
}

/// PostgreSQL only: a failed statement aborts its transaction there, so a write that carried on after
/// one is refused whole rather than half-committed.
#[test]
fn postgres_a_write_that_outlived_a_failed_statement_keeps_nothing() {
    let Some(f) = Fixture::postgres() else { return };
    let s = f.open();
    let p = PrincipalRow {
        client_id: "c".into(),
        object_id: "o".into(),
        tenant_id: "t".into(),
        display_name: "p".into(),
        secret_hash: "h".into(),
        created: Utc::now(),
    };
    s.write(|db| db.insert_principal(&p)).unwrap();
    let r: Result<(), StoreError> = s.write(|db| {
        db.set_meta("after", "x")?;
        assert!(db.insert_principal(&p).is_err(), "duplicate");
        Ok(())
    });
    assert!(matches!(r, Err(StoreError::Aborted)), "{r:?}");
    assert_eq!(s.read(|db| db.meta("after")).unwrap(), None);
    // The connection went back to the pool usable.
    for _ in 0..3 {
        s.write(|db| db.set_meta("later", "y")).unwrap();
    }
    assert_eq!(s.read(|db| db.meta("later")).unwrap().as_deref(), Some("y"));
}

/// PostgreSQL only: the last `Arc<Store>` may be dropped on an async task (a server's shutdown), where
/// closing a synchronous client would panic; the pool closes its connections on a thread of its own.
#[test]
fn postgres_a_store_dropped_on_an_async_task_closes_quietly() {
    let Some(f) = Fixture::postgres() else { return };
    let s = f.open();
    s.write(|db| db.set_meta("k", "v")).unwrap();
    assert_eq!(s.read(|db| db.meta("k")).unwrap().as_deref(), Some("v"));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async move { drop(s) });
}

fn job_leases_fence_renew_count_and_go_with_their_vault(f: &Fixture) {
    let s = f.open();
    let v = vault("s", "rg", "v");
    let job = |n: &str| format!("{}/backupJobs/{n}", v.id);
    let t0: chrono::DateTime<Utc> = "2026-03-01T02:00:00.5Z".parse().unwrap();
    let later = t0 + chrono::Duration::seconds(30);
    s.write(|db| db.put_resource(&v)).unwrap();
    let f1 = s.write(|db| db.lease_job(&job("a"), &v.id, "node-1", t0)).unwrap();
    let f2 = s.write(|db| db.lease_job(&job("b"), &v.id, "node-2", t0)).unwrap();
    assert!(f2 > f1, "fencing tokens grow: {f1} then {f2}");
    assert_eq!(s.read(|db| db.leased_jobs_in_vault(&v.id.to_uppercase())).unwrap(), 2);
    // Only the holder with the current token renews.
    assert!(s
        .write(|db| db.renew_job_lease(&job("a"), "node-1", f1, later))
        .unwrap());
    assert!(
        !s.write(|db| db.renew_job_lease(&job("a"), "node-2", f1, later))
            .unwrap(),
        "another node"
    );
    assert!(
        !s.write(|db| db.renew_job_lease(&job("a"), "node-1", f1 - 1, later))
            .unwrap(),
        "an old token"
    );
    // A re-claim (a survivor settling the job) fences the first holder out.
    let f3 = s.write(|db| db.lease_job(&job("a"), &v.id, "node-2", later)).unwrap();
    assert!(f3 > f2);
    assert!(
        !s.write(|db| db.renew_job_lease(&job("a"), "node-1", f1, later))
            .unwrap(),
        "fenced out"
    );
    let a = s.read(|db| db.job_lease(&job("A"))).unwrap().expect("lease");
    assert_eq!((a.node.as_str(), a.fence, a.expires), ("node-2", f3, later));
    let all = s.read(|db| db.job_leases()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].expires, t0, "oldest expiry first");
    s.write(|db| db.delete_job_lease(&job("b"))).unwrap();
    assert_eq!(s.read(|db| db.leased_jobs_in_vault(&v.id)).unwrap(), 1);
    // Deleting the vault drops its leases.
    s.write(|db| db.delete_resource(&v.id)).unwrap();
    assert!(s.read(|db| db.job_leases()).unwrap().is_empty());
}

fn a_leader_lease_has_one_holder_until_it_lapses(f: &Fixture) {
    let s = f.open();
    let t0: chrono::DateTime<Utc> = "2026-03-01T02:00:00Z".parse().unwrap();
    let sec = chrono::Duration::seconds;
    assert!(s
        .write(|db| db.take_leader("scheduler", "n1", t0, t0 + sec(30)))
        .unwrap());
    assert!(!s
        .write(|db| db.take_leader("scheduler", "n2", t0 + sec(10), t0 + sec(40)))
        .unwrap());
    assert!(
        s.write(|db| db.take_leader("scheduler", "n1", t0 + sec(10), t0 + sec(40)))
            .unwrap(),
        "renewed"
    );
    assert!(!s
        .write(|db| db.take_leader("scheduler", "n2", t0 + sec(39), t0 + sec(69)))
        .unwrap());
    assert!(
        s.write(|db| db.take_leader("scheduler", "n2", t0 + sec(41), t0 + sec(71)))
            .unwrap(),
        "lapsed"
    );
    assert_eq!(
        s.read(|db| db.leader("scheduler")).unwrap(),
        Some(("n2".to_string(), t0 + sec(71)))
    );
    s.write(|db| db.release_leader("scheduler", "n1")).unwrap();
    assert!(
        s.read(|db| db.leader("scheduler")).unwrap().is_some(),
        "only its holder releases it"
    );
    s.write(|db| db.release_leader("scheduler", "n2")).unwrap();
    // Garbage-collection marks: each vault once, taken once.
    s.write(|db| {
        db.mark_for_gc("/V/One")?;
        db.mark_for_gc("/v/one")?;
        db.mark_for_gc("/v/two")
    })
    .unwrap();
    assert_eq!(s.write(|db| db.take_gc_marks()).unwrap(), vec!["/v/one", "/v/two"]);
    assert!(s.write(|db| db.take_gc_marks()).unwrap().is_empty());
    assert!(s
        .write(|db| db.take_leader("scheduler", "n1", t0 + sec(42), t0 + sec(72)))
        .unwrap());
    // Nodes report themselves.
    let n = NodeRow {
        node: "n1".into(),
        started: t0,
        seen: t0 + sec(5),
        info: json!({"workers": 2}),
    };
    s.write(|db| db.put_node(&n)).unwrap();
    s.write(|db| {
        db.put_node(&NodeRow {
            seen: t0 + sec(9),
            ..n.clone()
        })
    })
    .unwrap();
    let nodes = s.read(|db| db.nodes()).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].seen, t0 + sec(9));
}

/// Issue 17: nodes keep role assignments in memory while the access generation stands, so every change
/// of assignments (insert, delete, a principal's, a group's or a resource's delete) moves it, in the
/// same transaction, seen by another store (node) at once; other writes leave it alone.
fn every_role_assignment_change_moves_the_access_generation(f: &Fixture) {
    let (s, other) = (f.open(), f.open());
    let generation = || other.read_one(|db| db.access_generation()).unwrap();
    let mut last = generation();
    let mut moved = |what: &str, yes: bool| {
        let now = generation();
        assert_eq!(now != last, yes, "{what}: {last} -> {now}");
        last = now;
    };
    let sub = "/subscriptions/s1";
    let assignment = |name: &str, scope: &str, principal: &str| RoleAssignmentRow {
        id: format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        name: name.into(),
        scope: scope.into(),
        role_definition_id: "r".into(),
        principal_id: principal.into(),
        principal_type: "ServicePrincipal".into(),
        created: Utc::now(),
        created_by: "t".into(),
    };
    s.write(|db| {
        db.insert_principal(&PrincipalRow {
            client_id: "c1".into(),
            object_id: "o1".into(),
            tenant_id: "t".into(),
            display_name: "p".into(),
            secret_hash: "h".into(),
            created: Utc::now(),
        })
    })
    .unwrap();
    moved("a principal without assignments", false);
    let a1 = assignment("a1", sub, "o1");
    s.write(|db| db.insert_role_assignment(&a1)).unwrap();
    moved("insert", true);
    assert!(s.write(|db| db.delete_role_assignment(&a1.id)).unwrap());
    moved("delete", true);
    assert!(!s.write(|db| db.delete_role_assignment(&a1.id)).unwrap());
    moved("deleting nothing", false);
    s.write(|db| db.insert_role_assignment(&assignment("a2", sub, "O1")))
        .unwrap();
    moved("insert", true);
    assert!(s.write(|db| db.delete_principal("c1")).unwrap());
    moved("the principal's delete takes its assignments", true);
    assert!(s.read_one(|db| db.role_assignments_of("o1")).unwrap().is_empty());
    let v = vault("s1", "rg", "v1");
    s.write(|db| db.put_resource(&v)).unwrap();
    moved("a resource write", false);
    s.write(|db| db.insert_role_assignment(&assignment("a3", &v.id, "o2")))
        .unwrap();
    moved("insert at the vault", true);
    assert!(s.write(|db| db.delete_resource(&v.id)).unwrap());
    moved("the vault's delete takes its assignments", true);
    let rg_scope = format!("{sub}/resourceGroups/rg");
    s.write(|db| {
        db.put_group(&GroupRow {
            subscription: "s1".into(),
            name: "rg".into(),
            id: rg_scope.clone(),
            location: "westus".into(),
            tags: json!({}),
            managed_by: None,
            created: Utc::now(),
        })?;
        db.insert_role_assignment(&assignment("a4", &rg_scope, "o2"))
    })
    .unwrap();
    moved("insert at the group", true);
    assert!(s.write(|db| db.delete_group("s1", "rg")).unwrap());
    moved("the group's delete takes its assignments", true);
}

/// `Store::read` gives all its statements one snapshot (a commit made in between is not seen), while
/// `Store::read_one` reads without a transaction: each statement sees the latest commit.
fn a_snapshot_read_sees_one_commit_and_read_one_the_latest(f: &Fixture) {
    let (s, writer) = (f.open(), f.open());
    writer.write(|db| db.set_meta("k", "1")).unwrap();
    let (first, second) = s
        .read(|db| {
            let first = db.meta("k")?;
            writer.write(|w| w.set_meta("k", "2"))?;
            Ok::<_, StoreError>((first, db.meta("k")?))
        })
        .unwrap();
    assert_eq!(
        (first.as_deref(), second.as_deref()),
        (Some("1"), Some("1")),
        "one snapshot"
    );
    let (first, second) = s
        .read_one(|db| {
            let first = db.meta("k")?;
            writer.write(|w| w.set_meta("k", "3"))?;
            Ok::<_, StoreError>((first, db.meta("k")?))
        })
        .unwrap();
    assert_eq!(
        (first.as_deref(), second.as_deref()),
        (Some("2"), Some("3")),
        "each statement the latest"
    );
    // Reads run beside an open write (none waits for the writer's lock).
    writer
        .write(|_| {
            assert_eq!(s.read_one(|db| db.meta("k")).unwrap().as_deref(), Some("3"));
            assert_eq!(s.read(|db| db.meta("k")).unwrap().as_deref(), Some("3"));
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

/// `Db::jobs_page`: a vault's jobs newest first (ties by id descending), filtered case-insensitively
/// and by start time, continued after a job's key; another vault's jobs never appear.
fn job_pages_filter_and_continue_on_the_index(f: &Fixture) {
    let s = f.open();
    let (v, w) = (vault("s1", "rg", "v1"), vault("s1", "rg", "w1"));
    let t0 = Utc::now();
    let job = |v: &ResourceRow, i: i64| JobRow {
        id: format!("{}/backupJobs/J{i:03}", v.id),
        vault_key: v.id.to_lowercase(),
        name: format!("J{i:03}"),
        operation: ["Backup", "Restore"][i as usize % 2].into(),
        status: ["Completed", "Failed", "InProgress"][i as usize % 3].into(),
        backup_management_type: "AzureIaasVM".into(),
        entity: "vm".into(),
        start: t0 + chrono::Duration::seconds(i / 2),
        end: None,
        body: json!({"i": i}),
        phase: None,
        work: None,
    };
    s.write(|db| {
        for i in 0..60 {
            db.put_job(&job(&v, i))?;
            db.put_job(&job(&w, i))?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    let walk = |q: &JobQuery| {
        let (mut names, mut after) = (Vec::new(), None::<String>);
        loop {
            let p = s.read_one(|db| db.jobs_page(&v.id, q, after.as_deref(), 7)).unwrap();
            assert!(p.items.len() <= 7);
            names.extend(p.items.iter().map(|j| j.name.clone()));
            match p.next {
                Some(n) => after = Some(n),
                None => return names,
            }
        }
    };
    let want = |keep: &dyn Fn(i64) -> bool| -> Vec<String> {
        let mut is: Vec<i64> = (0..60).filter(|i| keep(*i)).collect();
        is.sort_by_key(|i| std::cmp::Reverse((i / 2, *i)));
        is.iter().map(|i| format!("J{i:03}")).collect()
    };
    assert_eq!(walk(&JobQuery::default()), want(&|_| true));
    let failed = JobQuery {
        status: Some("FAILED".into()),
        ..Default::default()
    };
    assert_eq!(walk(&failed), want(&|i| i % 3 == 1));
    let window = JobQuery {
        operation: Some("restore".into()),
        started_after: Some((t0 + chrono::Duration::seconds(10), false)),
        started_before: Some((t0 + chrono::Duration::seconds(20), true)),
        ..Default::default()
    };
    assert_eq!(walk(&window), want(&|i| i % 2 == 1 && i / 2 > 10 && i / 2 <= 20));
    let one = JobQuery {
        name: Some("j042".into()),
        ..Default::default()
    };
    assert_eq!(walk(&one), vec!["J042".to_string()]);
    let gone = s
        .read_one(|db| db.jobs_page(&v.id, &JobQuery::default(), Some("no-such-job"), 7))
        .unwrap();
    assert!(gone.items.is_empty() && gone.next.is_none());
}
