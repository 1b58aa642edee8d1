//! Issue 15 over HTTPS: vaults whose repositories live in object storage (the S3 server and
//! Azurite the test command starts): protect, back up, list, restore, delete; a store that stops
//! answering fails the job saying why, and a later backup succeeds.

use crate::recovery::*;
use rsvault_control::storage::StorageTargets;
use rsvault_engine::objstore::{ObjectStoreOptions, ObjectTarget};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The object stores the test command started, from the environment (see
/// `scripts/object-test-servers`); a missing one fails under `RSVAULT_REQUIRE_OBJECT_STORES=1`.
pub(crate) fn object_targets() -> Vec<(&'static str, ObjectTarget)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let require = std::env::var("RSVAULT_REQUIRE_OBJECT_STORES").as_deref() == Ok("1");
    let mut out = vec![];
    match (var("RSVAULT_TEST_S3_ENDPOINT"), var("RSVAULT_TEST_S3_BUCKET")) {
        (Some(endpoint), Some(bucket)) => out.push((
            "s3",
            ObjectTarget::S3 {
                endpoint,
                bucket,
                region: var("RSVAULT_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                prefix: "api-tests".into(),
                access_key_id: var("RSVAULT_TEST_S3_ACCESS_KEY_ID").unwrap_or_default(),
                secret_access_key: var("RSVAULT_TEST_S3_SECRET_ACCESS_KEY").unwrap_or_default(),
            },
        )),
        _ if require => panic!("no S3 server in the environment: run the tests through scripts/test"),
        _ => eprintln!("note: no S3 server (RSVAULT_TEST_S3_*): its API tests are skipped"),
    }
    match (
        var("RSVAULT_TEST_AZBLOB_ENDPOINT"),
        var("RSVAULT_TEST_AZBLOB_CONTAINER"),
    ) {
        (Some(endpoint), Some(container)) => out.push((
            "blob",
            ObjectTarget::Azblob {
                endpoint,
                account: var("RSVAULT_TEST_AZBLOB_ACCOUNT").unwrap_or_default(),
                container,
                prefix: "api-tests".into(),
                account_key: var("RSVAULT_TEST_AZBLOB_KEY"),
                sas_token: None,
            },
        )),
        _ if require => panic!("no Azure Blob server in the environment: run the tests through scripts/test"),
        _ => eprintln!("note: no Azure Blob server (RSVAULT_TEST_AZBLOB_*): its API tests are skipped"),
    }
    out
}

fn targets(list: Vec<(&str, ObjectTarget)>, default: Option<&str>) -> StorageTargets {
    let map: BTreeMap<String, ObjectTarget> = list.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    StorageTargets::from_targets(map, default.map(str::to_string)).unwrap()
}

/// The location recorded for vault `rg/v1` (no credentials: `TARGET:vaults/UUID` or a directory).
fn vault_location(f: &Fixture) -> String {
    let vault = f.vault();
    f.s.offline(move |c| {
        c.store()
            .read(|db| db.vault_secret(&vault))
            .unwrap()
            .expect("the vault has a repository")
            .repo
    })
}

async fn backup(f: &Fixture, vm: &str) -> Value {
    let job = accept(
        f,
        &f.s.url(&format!("{}/backup?{BK}", f.item(vm))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    wait_job(f, &job).await.pop().unwrap()
}

async fn restore_disks(f: &Fixture, vm: &str, rp: &str, acct: &str) -> (Value, std::path::PathBuf) {
    let dir = account(f, acct).await;
    let vm_id = format!("{}/providers/Microsoft.Compute/virtualMachines/{vm}", f.s.rg_path("rg"));
    let job = accept(
        f,
        &f.s.url(&format!("{}/recoveryPoints/{rp}/restore?{BK}", f.item(vm))),
        &json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks",
            "sourceResourceId": vm_id, "storageAccountId": f.account_id(acct), "region": "westus",
            "createNewCloudService": false, "originalStorageAccountOption": false}}),
    )
    .await;
    (wait_job(f, &job).await.pop().unwrap(), dir)
}

fn restored_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = crate::harness::restored_images(dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort_by_key(|c| c.len());
    out
}

#[tokio::test]
async fn vm_and_share_vaults_in_object_storage_back_up_and_restore_through_the_api() {
    for (kind, target) in object_targets() {
        let f = fixture_with(|c| c.storage = targets(vec![(kind, target)], Some(kind))).await;
        let os = f.dir.join("os.raw");
        write_random(&os, 12 << 20, 3);
        let data = f.dir.join("data.raw");
        write_random(&data, 6 << 20, 4);
        protect_vm(&f, "vm1", &os, &[&data]).await;
        let done = backup(&f, "vm1").await;
        assert_eq!(done["properties"]["status"], "Completed", "{kind}: {done}");
        let loc = vault_location(&f);
        assert!(loc.starts_with(&format!("{kind}:vaults/")), "{kind}: {loc}");

        let (st, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
        assert_eq!(st, 200, "{rps}");
        let rp = rps["value"][0]["name"].as_str().unwrap().to_string();
        let (r, dir) = restore_disks(&f, "vm1", &rp, "restoresa").await;
        assert_eq!(r["properties"]["status"], "Completed", "{kind}: {r}");
        assert_eq!(
            restored_files(&dir),
            vec![std::fs::read(&data).unwrap(), std::fs::read(&os).unwrap()],
            "{kind}: restored disks differ"
        );

        // A share in the same vault, restored to another location.
        let share = protect_share(&f, "filesa", "docs", |d| {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("a.txt"), b"object storage").unwrap();
            write_random(&d.join("sub/b.bin"), 1 << 20, 5);
        })
        .await;
        let job = accept(
            &f,
            &f.s.url(&format!("{}/backup?{BK}", f.share_item("filesa", "docs"))),
            &json!({"properties": {"objectType": "AzureFileShareBackupRequest"}}),
        )
        .await;
        let done = wait_job(&f, &job).await.pop().unwrap();
        assert_eq!(done["properties"]["status"], "Completed", "{kind}: {done}");
        let (_, _, rps) = send(
            &f.s,
            "GET",
            &format!("{}/recoveryPoints?{BK}", f.share_item("filesa", "docs")),
            None,
        )
        .await;
        let rp = rps["value"][0]["name"].as_str().unwrap().to_string();
        let alt = account(&f, "altsa").await;
        let (st, _, b) = send(
            &f.s,
            "PUT",
            &format!("{}/fileServices/default/shares/docs?{ST_API}", f.account_id("altsa")),
            Some(&json!({"properties": {}})),
        )
        .await;
        assert!(st == 200 || st == 201, "{b}");
        let job = accept(
            &f,
            &f.s.url(&format!("{}/recoveryPoints/{rp}/restore?{BK}", f.share_item("filesa", "docs"))),
            &json!({"properties": {"objectType": "AzureFileShareRestoreRequest", "recoveryType": "AlternateLocation",
                "sourceResourceId": f.account_id("filesa"), "copyOptions": "Overwrite", "restoreRequestType": "FullShareRestore",
                "restoreFileSpecs": [{"targetFolderPath": "restored"}],
                "targetDetails": {"name": "docs", "targetResourceId": f.account_id("altsa")}}}),
        )
        .await;
        let done = wait_job(&f, &job).await.pop().unwrap();
        assert_eq!(done["properties"]["status"], "Completed", "{kind}: {done}");
        let restored = alt.join("docs/restored");
        assert_eq!(std::fs::read(restored.join("a.txt")).unwrap(), b"object storage");
        assert_eq!(
            std::fs::read(restored.join("sub/b.bin")).unwrap(),
            std::fs::read(share.join("sub/b.bin")).unwrap()
        );
    }
}

#[tokio::test]
async fn a_vault_tag_chooses_its_target_and_an_unknown_one_is_refused() {
    let list = object_targets();
    let Some((kind, target)) = list.into_iter().next() else {
        return;
    };
    // The default is the data dir; the vault's tag sends it to the object store.
    let f = fixture_with(|c| c.storage = targets(vec![(kind, target)], None)).await;
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}?api-version=2024-04-01", f.s.vault_path("rg", "tagged")),
        Some(&json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {}, "tags": {"rsvault-storage-target": "nosuch"}})),
    )
    .await;
    crate::harness::assert_arm_error(st, &b, 400, "BadRequest");
    let (st, _, b) = send(
        &f.s,
        "PATCH",
        &format!("{}?api-version=2024-04-01", f.vault()),
        Some(&json!({"tags": {"rsvault-storage-target": kind}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let os = f.dir.join("os.raw");
    write_random(&os, 4 << 20, 6);
    protect_vm(&f, "vm1", &os, &[]).await;
    let done = backup(&f, "vm1").await;
    assert_eq!(done["properties"]["status"], "Completed", "{done}");
    assert!(
        vault_location(&f).starts_with(&format!("{kind}:vaults/")),
        "{}",
        vault_location(&f)
    );
}

/// The names of vault `v1`'s recovery points of `vm1`.
async fn rp_names(f: &Fixture) -> Vec<String> {
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
    rps["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// The newest of `vm1`'s recovery points.
async fn newest_point(f: &Fixture) -> String {
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
    rps["value"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|p| {
            p["properties"]["recoveryPointTime"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .map(|p| p["name"].as_str().unwrap().to_string())
        .unwrap()
}

/// A TCP relay to an object store that can be switched off (open connections cut, new ones
/// closed at once): the fault a stopped or unreachable store is.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

async fn relay(upstream: std::net::SocketAddr) -> Relay {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let (cut, _) = tokio::sync::watch::channel(0u64);
    let on = up.clone();
    let cuts = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            if !on.load(Ordering::SeqCst) {
                drop(c);
                continue;
            }
            let mut cut = cuts.subscribe();
            tokio::spawn(async move {
                if let Ok(mut u) = tokio::net::TcpStream::connect(upstream).await {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                        _ = cut.changed() => {}
                    }
                }
            });
        }
    });
    Relay { addr, up, cut }
}

fn through(target: &ObjectTarget, relay: std::net::SocketAddr) -> (ObjectTarget, std::net::SocketAddr) {
    let swap = |endpoint: &str| -> (String, std::net::SocketAddr) {
        let u = url::Url::parse(endpoint).unwrap();
        let up: std::net::SocketAddr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
            .parse()
            .unwrap();
        (endpoint.replacen(&up.to_string(), &relay.to_string(), 1), up)
    };
    match target.clone() {
        ObjectTarget::S3 {
            endpoint,
            bucket,
            region,
            prefix,
            access_key_id,
            secret_access_key,
        } => {
            let (endpoint, up) = swap(&endpoint);
            (
                ObjectTarget::S3 {
                    endpoint,
                    bucket,
                    region,
                    prefix,
                    access_key_id,
                    secret_access_key,
                },
                up,
            )
        }
        ObjectTarget::Azblob {
            endpoint,
            account,
            container,
            prefix,
            account_key,
            sas_token,
        } => {
            let (endpoint, up) = swap(&endpoint);
            (
                ObjectTarget::Azblob {
                    endpoint,
                    account,
                    container,
                    prefix,
                    account_key,
                    sas_token,
                },
                up,
            )
        }
    }
}

#[tokio::test]
async fn a_store_that_stops_answering_fails_the_job_saying_why_and_a_later_backup_succeeds() {
    for (kind, target) in object_targets() {
        // The relay's address is known only once it listens: bind it to the real upstream first.
        let (_, upstream) = through(&target, "127.0.0.1:1".parse().unwrap());
        let r = relay(upstream).await;
        let (target, _) = through(&target, r.addr);
        let f = fixture_with(|c| c.storage = targets(vec![(kind, target)], Some(kind))).await;
        let os = f.dir.join("os.raw");
        write_random(&os, 4 << 20, 8);
        protect_vm(&f, "vm1", &os, &[]).await;
        let ok = backup(&f, "vm1").await;
        assert_eq!(ok["properties"]["status"], "Completed", "{kind}: {ok}");

        r.set(false);
        let failed = backup(&f, "vm1").await;
        let p = &failed["properties"];
        assert_eq!(p["status"], "Failed", "{kind}: {failed}");
        let err = &p["errorDetails"][0];
        assert_eq!(err["errorCode"], 100007, "{kind}: {failed}");
        assert!(
            err["errorString"].as_str().unwrap().contains(&format!("'{kind}'")),
            "{err}"
        );
        // The item reports the failure; the vault still lists only the good point.
        let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
        assert_eq!(rps["value"].as_array().unwrap().len(), 1, "{kind}: {rps}");

        r.set(true);
        let again = backup(&f, "vm1").await;
        assert_eq!(again["properties"]["status"], "Completed", "{kind}: {again}");
        let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
        assert_eq!(rps["value"].as_array().unwrap().len(), 2, "{kind}: {rps}");
    }
}

#[tokio::test]
async fn a_geo_redundant_vault_restores_from_its_secondary_after_the_primary_is_gone() {
    let list = object_targets();
    if list.len() < 2 {
        assert!(
            std::env::var("RSVAULT_REQUIRE_OBJECT_STORES").as_deref() != Ok("1"),
            "geo-redundancy needs both object stores"
        );
        return;
    }
    // Primary: Azure Blob; secondary: S3 (so stock restic can read the copy), reached through a
    // fault proxy so that a copy can be made to fail.
    let blob = list.iter().find(|(k, _)| *k == "blob").unwrap().1.clone();
    let s3 = list.iter().find(|(k, _)| *k == "s3").unwrap().1.clone();
    let (proxy, s3_proxied) = crate::faultproxy::FaultProxy::start(&s3);
    let f = fixture_with(|c| {
        let map = BTreeMap::from([("blob".to_string(), blob.clone()), ("s3".to_string(), s3_proxied)]);
        c.storage = StorageTargets::from_targets_with(map, Some("blob".into()), fast_retries())
            .unwrap()
            .with_secondary(Some("s3"))
            .unwrap()
    })
    .await;
    let config = format!("{}/backupstorageconfig/vaultstorageconfig?{BK}", f.vault());
    let (st, _, b) = send(
        &f.s,
        "PATCH",
        &config,
        Some(&json!({"properties": {"crossRegionRestoreFlag": true}})),
    )
    .await;
    assert!(st == 200 || st == 204, "{b}");
    let (_, _, b) = send(&f.s, "GET", &config, None).await;
    assert_eq!(b["properties"]["storageType"], "GeoRedundant", "{b}");

    let os = f.dir.join("os.raw");
    write_random(&os, 6 << 20, 11);
    protect_vm(&f, "vm1", &os, &[]).await;
    let done = backup(&f, "vm1").await;
    let p = &done["properties"];
    assert_eq!(p["status"], "Completed", "{done}");
    assert_eq!(
        p["extendedInfo"]["propertyBag"]["Secondary Copy"], "Completed",
        "{done}"
    );
    let loc = vault_location(&f);
    let path = loc.strip_prefix("blob:").expect("the vault lives on blob").to_string();
    let first = rp_names(&f).await;

    // The protected item shows the state of its latest point's copy (a kpisHealths entry).
    let kpi = |item: &Value| item["properties"]["kpisHealths"]["SecondaryCopyStatusKPI"].clone();
    let (_, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("vm1")), None).await;
    let k = kpi(&item);
    assert_eq!(k["resourceHealthStatus"], "Healthy", "{item}");
    let d = &k["resourceHealthDetails"][0];
    assert_eq!(d["code"], 0, "{k}");
    let msg = d["message"].as_str().unwrap();
    assert!(msg.contains(&first[0]) && msg.contains("'s3'"), "{k}");

    // A copy that fails (the secondary answers 503): the backup completes with a warning, the
    // item says the latest point is not copied and why; the next backup's copy heals it.
    proxy.arm(crate::faultproxy::Rule::all(crate::faultproxy::Fault::Unavailable));
    let warned = backup(&f, "vm1").await;
    proxy.disarm();
    let p = &warned["properties"];
    assert_eq!(p["status"], "CompletedWithWarnings", "{warned}");
    assert_eq!(p["extendedInfo"]["propertyBag"]["Secondary Copy"], "Failed", "{warned}");
    let (_, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("vm1")), None).await;
    let k = kpi(&item);
    assert_eq!(k["resourceHealthStatus"], "TransientDegraded", "{item}");
    assert_eq!(k["resourceHealthDetails"][0]["code"], 100008, "{k}");
    assert!(
        k["resourceHealthDetails"][0]["message"]
            .as_str()
            .unwrap()
            .contains("secondary"),
        "{k}"
    );
    let done = backup(&f, "vm1").await;
    assert_eq!(
        done["properties"]["extendedInfo"]["propertyBag"]["Secondary Copy"], "Completed",
        "{done}"
    );
    let newest = rp_names(&f).await;
    assert_eq!(newest.len(), 3);
    let (_, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("vm1")), None).await;
    let k = kpi(&item);
    assert_eq!(k["resourceHealthStatus"], "Healthy", "{item}");
    let latest = newest_point(&f).await;
    assert!(
        k["resourceHealthDetails"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&latest),
        "names the latest point {latest}: {k}"
    );

    // Stock restic reads the secondary copy (S3) with the vault's password.
    // (Object-store calls block: off the async threads, as the server makes them.)
    let control = f.s.running.as_ref().unwrap().control();
    let vault = f.vault();
    let (_, password) = tokio::task::spawn_blocking(move || control.restic_env(&vault).unwrap())
        .await
        .unwrap();
    let secondary = rsvault_engine::RepoLocation::Object(rsvault_engine::objstore::ObjectRepo {
        store: rsvault_engine::objstore::ObjectStore::connect("s3", s3.clone()).unwrap(),
        path: path.clone(),
    });
    let out = std::process::Command::new("restic")
        .args(["snapshots", "--json", "--no-lock", "--no-cache"])
        .envs(secondary.restic_env())
        .env("RESTIC_PASSWORD", password.expose())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap().len(), 3);

    // The primary is removed entirely.
    let primary = rsvault_engine::objstore::ObjectStore::connect("blob", blob.clone()).unwrap();
    let p2 = path.clone();
    let removed = tokio::task::spawn_blocking(move || primary.remove_all(&p2).unwrap())
        .await
        .unwrap();
    assert!(removed > 0);
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
    let rp = rps["value"][0]["name"].as_str().unwrap().to_string();
    let (r, dir) = restore_disks(&f, "vm1", &rp, "crrsa").await;
    let p = &r["properties"];
    assert_eq!(p["status"], "Completed", "{r}");
    assert!(
        p["extendedInfo"]["propertyBag"]["Restored From"]
            .as_str()
            .unwrap_or_default()
            .contains("'s3'"),
        "{r}"
    );
    assert_eq!(
        restored_files(&dir),
        vec![std::fs::read(&os).unwrap()],
        "restored byte for byte"
    );

    // Without cross-region restore, the same restore fails.
    let (st, _, b) = send(
        &f.s,
        "PATCH",
        &config,
        Some(&json!({"properties": {"crossRegionRestoreFlag": false}})),
    )
    .await;
    assert!(st == 200 || st == 204, "{b}");
    let (r, _) = restore_disks(&f, "vm1", &rp, "crrsa2").await;
    assert_eq!(r["properties"]["status"], "Failed", "{r}");
}

/// Short timeouts and pauses, so that a refusing store fails a job in seconds.
fn fast_retries() -> ObjectStoreOptions {
    ObjectStoreOptions {
        request_timeout: std::time::Duration::from_secs(8),
        io_timeout: std::time::Duration::from_secs(5),
        retries: 3,
        min_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(200),
    }
}

/// One target reached through a fault proxy, the default for new vaults.
fn faulty(kind: &str, through: ObjectTarget) -> StorageTargets {
    let map = BTreeMap::from([(kind.to_string(), through)]);
    StorageTargets::from_targets_with(map, Some(kind.to_string()), fast_retries()).unwrap()
}

#[tokio::test]
async fn a_store_answering_503s_fails_the_job_as_unavailable_a_burst_is_absorbed_and_restic_checks_clean() {
    use crate::faultproxy::{Fault, FaultProxy, Rule};
    for (kind, target) in object_targets() {
        let (proxy, through) = FaultProxy::start(&target);
        let f = fixture_with(|c| c.storage = faulty(kind, through)).await;
        let os = f.dir.join("os.raw");
        write_random(&os, 6 << 20, 31);
        protect_vm(&f, "vm1", &os, &[]).await;
        let ok = backup(&f, "vm1").await;
        assert_eq!(ok["properties"]["status"], "Completed", "{kind}: {ok}");

        // Every pack upload answered 503, beyond the retry budget.
        write_random(&os, 6 << 20, 32);
        proxy.arm(Rule::all(Fault::Unavailable).method("PUT").path("/data/"));
        let failed = backup(&f, "vm1").await;
        proxy.disarm();
        let p = &failed["properties"];
        assert_eq!(p["status"], "Failed", "{kind}: {failed}");
        let err = &p["errorDetails"][0];
        assert_eq!(err["errorCode"], 100007, "{kind}: {failed}");
        assert_eq!(
            err["errorTitle"], "The vault's storage is not available",
            "{kind}: {err}"
        );
        let text = err["errorString"].as_str().unwrap();
        assert!(text.contains(&format!("'{kind}'")), "{kind}: {err}");
        assert!(
            proxy.injected() > fast_retries().retries,
            "{kind}: the fault met the server"
        );
        let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
        assert_eq!(
            rps["value"].as_array().unwrap().len(),
            1,
            "{kind}: no half-written point: {rps}"
        );
        let (_, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("vm1")), None).await;
        assert_eq!(item["properties"]["lastBackupStatus"], "Failed", "{kind}: {item}");

        // A burst of two 503s, shorter than the retry budget, is absorbed.
        write_random(&os, 6 << 20, 33);
        let before = proxy.injected();
        proxy.arm(Rule::all(Fault::Unavailable).method("PUT").times(2));
        let done = backup(&f, "vm1").await;
        assert_eq!(done["properties"]["status"], "Completed", "{kind}: {done}");
        assert_eq!(proxy.injected(), before + 2, "{kind}: the burst met the server");
        proxy.disarm();

        let again = backup(&f, "vm1").await;
        assert_eq!(again["properties"]["status"], "Completed", "{kind}: {again}");
        let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
        assert_eq!(rps["value"].as_array().unwrap().len(), 3, "{kind}: {rps}");

        // Stock restic, with what `rsvault restic-env` prints, finds the vault clean.
        if kind == "s3" {
            let control = f.s.running.as_ref().unwrap().control();
            let vault = f.vault();
            let (loc, password) = tokio::task::spawn_blocking(move || control.restic_env(&vault).unwrap())
                .await
                .unwrap();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("restic")
                    .args(["check", "--read-data", "--no-cache"])
                    .envs(loc.restic_env())
                    .env("RESTIC_PASSWORD", password.expose())
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            assert!(
                out.status.success(),
                "restic check: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// How many objects a target holds under `path`, asked straight (not through any proxy).
async fn objects_under(target: &ObjectTarget, path: &str) -> usize {
    let (target, path) = (target.clone(), path.to_string());
    tokio::task::spawn_blocking(move || {
        rsvault_engine::objstore::ObjectStore::connect("direct", target)
            .unwrap()
            .count(&path)
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_deleted_vaults_prefixes_go_in_the_background_retrying_while_the_store_refuses() {
    use crate::faultproxy::{Fault, FaultProxy, Rule};
    let list = object_targets();
    let Some(s3) = list.iter().find(|(k, _)| *k == "s3").map(|(_, t)| t.clone()) else {
        return;
    };
    // The primary (S3) through a fault proxy; the geo-redundant copy on Azure Blob when there is one.
    let blob = list.iter().find(|(k, _)| *k == "blob").map(|(_, t)| t.clone());
    let (proxy, through) = FaultProxy::start(&s3);
    let f = fixture_with(|c| {
        let mut map = BTreeMap::from([("s3".to_string(), through)]);
        if let Some(b) = &blob {
            map.insert("blob".to_string(), b.clone());
        }
        let t = StorageTargets::from_targets(map, Some("s3".into())).unwrap();
        c.storage = t.with_secondary(blob.as_ref().map(|_| "blob")).unwrap();
    })
    .await;
    let os = f.dir.join("os.raw");
    write_random(&os, 4 << 20, 41);
    protect_vm(&f, "vm1", &os, &[]).await;
    let done = backup(&f, "vm1").await;
    assert_eq!(done["properties"]["status"], "Completed", "{done}");
    let loc = vault_location(&f);
    let path = loc.strip_prefix("s3:").expect("the vault lives on s3").to_string();
    assert!(objects_under(&s3, &path).await > 0);
    if let Some(b) = &blob {
        assert!(objects_under(b, &path).await > 0, "the secondary copy is there");
    }

    // The vault is emptied (soft delete off, the item's data deleted), then deleted while every
    // request to its store hangs: the DELETE answers all the same.
    let config = format!("{}/backupconfig/vaultconfig?{BK}", f.vault());
    let (st, _, b) = send(
        &f.s,
        "PATCH",
        &config,
        Some(&json!({"properties": {"softDeleteFeatureState": "Disabled"}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = send(&f.s, "DELETE", &format!("{}?{BK}", f.item("vm1")), None).await;
    assert_eq!(st, 202, "{b}");
    proxy.arm(Rule::all(Fault::Stall));
    let vault_url = format!("{}?api-version=2024-04-01", f.vault());
    let (st, _, b) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        send(&f.s, "DELETE", &vault_url, None),
    )
    .await
    .expect("the vault DELETE answers while its store hangs");
    assert!([200, 202, 204].contains(&st), "{st} {b}");
    let (st, _, _) = send(&f.s, "GET", &vault_url, None).await;
    assert_eq!(st, 404);

    // The sweeper meets the hang, then refusals; the prefix stays until the store is back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while proxy.injected() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper never tried the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    proxy.arm(Rule::all(Fault::Unavailable));
    let tried = proxy.injected();
    while proxy.injected() < tried + 10 {
        assert!(std::time::Instant::now() < deadline, "the sweeper stopped trying");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        objects_under(&s3, &path).await > 0,
        "nothing removed while the store refuses"
    );
    proxy.disarm();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let left = objects_under(&s3, &path).await
            + match &blob {
                Some(b) => objects_under(b, &path).await,
                None => 0,
            };
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} objects of the deleted vault are still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let vault_key = f.vault().to_ascii_lowercase();
    f.s.offline(move |c| {
        let records = c.store().read(|db| db.orphaned_vault_secrets()).unwrap();
        assert!(records.is_empty(), "removal records left: {records:?}");
        assert!(c.store().read(|db| db.vault_secret(&vault_key)).unwrap().is_none());
    });

    // A vault re-created with the same name starts empty, somewhere else.
    f.s.make_vault("rg", "v1").await;
    let os2 = f.dir.join("os2.raw");
    write_random(&os2, 4 << 20, 42);
    protect_vm(&f, "vm2", &os2, &[]).await;
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm2")), None).await;
    assert_eq!(rps["value"], json!([]), "{rps}");
    let done = backup(&f, "vm2").await;
    assert_eq!(done["properties"]["status"], "Completed", "{done}");
    assert_ne!(vault_location(&f), loc, "a new prefix");
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm2")), None).await;
    assert_eq!(rps["value"].as_array().unwrap().len(), 1, "{rps}");
    assert_eq!(objects_under(&s3, &path).await, 0);
}
