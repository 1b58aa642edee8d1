//! Issue 7 over HTTPS on a test clock: scheduled backups at the policy's local times (across a
//! daylight-saving change), one job per slot across restarts, long-term retention over 400 days with
//! prune and garbage collection, ad-hoc expiry, soft delete, undelete and the purge, and the admin
//! clock endpoint's own answers.

use crate::harness::*;
use chrono::{DateTime, Datelike, Duration, Utc, Weekday};
use rsvault_core::time::TestClock;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BK: &str = "api-version=2026-10-01";
const VM_API: &str = "api-version=2024-07-01";
const ST_API: &str = "api-version=2023-05-01";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

struct Env {
    s: Server,
    images: tempfile::TempDir,
}

/// A server on a test clock standing at `start`, with a group and a vault.
async fn start_at(start: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let s = restart_at(tmp.path().join("data"), Some(tmp), start).await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    Env { images: s.tempdir(), s }
}

async fn restart_at(data: PathBuf, tmp: Option<tempfile::TempDir>, start: &str) -> Server {
    let mut config = test_config(data);
    // The scheduler's own thread runs once at start and then sleeps: the advances drive time.
    config.policy_interval = std::time::Duration::from_secs(3600);
    start_with_clock(config, tmp, Arc::new(TestClock::new(at(start)))).await
}

impl Env {
    fn vault(&self) -> String {
        self.s.vault_path("rg", "v1")
    }
    fn item(&self, vm: &str) -> String {
        format!(
            "{}/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Brg%3B{vm}/protectedItems/VM%3Biaasvmcontainerv2%3Brg%3B{vm}",
            self.vault()
        )
    }

    async fn advance(&self, seconds: i64) -> Value {
        let (st, b) = self
            .s
            .call(
                "POST",
                "/rsvault/admin/clock/advance",
                Some(&json!({ "seconds": seconds })),
            )
            .await;
        assert_eq!(st, 200, "{b}");
        b
    }

    /// A VM over one image of `len` bytes, protected by `policy`.
    async fn protect(&self, vm: &str, len: usize, policy: &str) -> PathBuf {
        let img = self.images.path().join(format!("{vm}.img"));
        std::fs::write(&img, noise(len, 1)).unwrap();
        let body = json!({"location": "westus", "properties": {"storageProfile": {
            "osDisk": {"osType": "Linux", "vhd": {"uri": format!("file://{}", img.display())}}}}});
        let (st, b) = self
            .s
            .call(
                "PUT",
                &format!(
                    "{}/providers/Microsoft.Compute/virtualMachines/{vm}?{VM_API}",
                    self.s.rg_path("rg")
                ),
                Some(&body),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        let pol = format!("{}/backupPolicies/{policy}", self.vault());
        let (st, b) = self
            .s
            .call(
                "PUT",
                &format!("{}?{BK}", self.item(vm)),
                Some(
                    &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol}}),
                ),
            )
            .await;
        assert_eq!(st, 202, "{b}");
        img
    }

    async fn put_policy(&self, name: &str, props: Value) -> (u16, Value) {
        self.s
            .call(
                "PUT",
                &format!("{}/backupPolicies/{name}?{BK}", self.vault()),
                Some(&json!({ "properties": props })),
            )
            .await
    }

    /// Every page of a list.
    async fn list(&self, path: &str) -> Vec<Value> {
        let mut out = vec![];
        let (st, mut b) = self.s.call("GET", path, None).await;
        assert_eq!(st, 200, "{b}");
        loop {
            out.extend(b["value"].as_array().unwrap().iter().cloned());
            let Some(next) = b["nextLink"].as_str() else { break };
            let next = next.strip_prefix(&self.s.base).unwrap().to_string();
            let (st, nb) = self.s.call("GET", &next, None).await;
            assert_eq!(st, 200, "{nb}");
            b = nb;
        }
        out
    }

    async fn backup_jobs(&self) -> Vec<Value> {
        let mut jobs = self
            .list(&format!(
                "{}/backupJobs?{BK}&$filter=operation eq 'Backup'",
                self.vault()
            ))
            .await;
        jobs.sort_by_key(|j| j["properties"]["startTime"].as_str().unwrap().to_string());
        jobs
    }

    async fn points(&self, vm: &str) -> Vec<Value> {
        self.list(&format!("{}/recoveryPoints?{BK}", self.item(vm))).await
    }

    async fn point_times(&self, vm: &str) -> BTreeSet<DateTime<Utc>> {
        self.points(vm)
            .await
            .iter()
            .map(|p| at(p["properties"]["recoveryPointTime"].as_str().unwrap()))
            .collect()
    }

    /// The vault's repository directory (the server's own record of it).
    fn repo(&self) -> PathBuf {
        let vault = self.vault();
        let row = self
            .s
            .offline(|c| c.store().read(|db| db.vault_secret(&vault)))
            .unwrap();
        PathBuf::from(row.expect("the vault has a repository").repo)
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn bytes_under(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { bytes_under(&e.path()) } else { m.len() };
    }
    n
}

fn daily_policy(time_zone: &str, run: &str, retention: Value) -> Value {
    json!({
        "backupManagementType": "AzureIaasVM",
        "instantRpRetentionRangeInDays": 2,
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [run]},
        "retentionPolicy": retention,
        "timeZone": time_zone,
    })
}

#[tokio::test]
async fn scheduled_backups_run_at_local_times_across_dst_once_per_slot_even_across_restarts() {
    // 2026-03-05 00:00Z is 16:00 on the 4th in Los Angeles; DST starts there on Sunday 8 March.
    let e = start_at("2026-03-05T00:00:00Z").await;
    let run = "2026-01-01T01:30:00Z";
    let keep = json!({"retentionPolicyType": "LongTermRetentionPolicy",
        "dailySchedule": {"retentionTimes": [run], "retentionDuration": {"count": 30, "durationType": "Days"}}});
    let (st, b) = e
        .put_policy("nightly", daily_policy("Pacific Standard Time", run, keep))
        .await;
    assert_eq!(st, 200, "{b}");
    let img = e.protect("vm1", 1 << 20, "nightly").await;

    let r = e.advance(6 * 86_400).await;
    assert_eq!(r["time"], "2026-03-11T00:00:00Z", "{r}");
    assert_eq!(r["scheduledBackups"], 6, "{r}");
    let want: Vec<&str> = vec![
        "2026-03-05T09:30:00Z", // 01:30 PST (UTC-8)
        "2026-03-06T09:30:00Z",
        "2026-03-07T09:30:00Z",
        "2026-03-08T09:30:00Z", // 01:30 on the morning of the change, still PST
        "2026-03-09T08:30:00Z", // 01:30 PDT (UTC-7)
        "2026-03-10T08:30:00Z",
    ];
    let jobs = e.backup_jobs().await;
    let starts: Vec<&str> = jobs
        .iter()
        .map(|j| j["properties"]["startTime"].as_str().unwrap())
        .collect();
    assert_eq!(starts, want);
    for j in &jobs {
        let p = &j["properties"];
        assert_eq!(p["isUserTriggered"], false, "{j}");
        assert_eq!(p["status"], "Completed", "{j}");
        assert_eq!(p["entityFriendlyName"], "vm1");
    }
    let times: Vec<String> = e
        .point_times("vm1")
        .await
        .iter()
        .map(|t| rsvault_core::time::timestamp(*t))
        .collect();
    assert_eq!(times, want, "one recovery point per slot, at the slot's time");
    let (_, item) = e.s.call("GET", &format!("{}?{BK}", e.item("vm1")), None).await;
    assert_eq!(item["properties"]["protectionState"], "Protected");
    assert_eq!(item["properties"]["lastBackupTime"], "2026-03-10T08:30:00Z");
    assert_eq!(item["properties"]["extendedInfo"]["recoveryPointCount"], 6);

    // A restart: the clock resumes where it was, and no slot runs twice.
    let images = e.images;
    let (data, tmp) = e.s.stop().await;
    let s = restart_at(data.clone(), tmp, "2026-03-05T00:00:00Z").await;
    let e = Env { s, images };
    let r = e.advance(0).await;
    assert_eq!(
        (r["time"].as_str(), r["scheduledBackups"].as_u64()),
        (Some("2026-03-11T00:00:00Z"), Some(0)),
        "{r}"
    );
    assert_eq!(e.backup_jobs().await.len(), 6);

    // A restart while a slot's backup runs (a graceful stop lets the request in flight, and so its
    // job, finish): the slot is never run a second time.
    std::fs::write(&img, noise(384 << 20, 2)).unwrap();
    let mut fut = {
        let http = e.s.http.clone();
        let url = e.s.url("/rsvault/admin/clock/advance");
        let token = e.s.token.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"seconds": 86_400}))
                .send()
                .await
        })
    };
    let mut running = false;
    for _ in 0..400 {
        let jobs = e.backup_jobs().await;
        if jobs.len() == 7 && jobs[6]["properties"]["status"] == "InProgress" {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(running, "the 7th slot's job never ran");
    let images = e.images;
    let (data, tmp) = e.s.stop().await;
    let _ = (&mut fut).await;
    let s = restart_at(data, tmp, "2026-03-05T00:00:00Z").await;
    let e = Env { s, images };
    let r = e.advance(0).await;
    assert_eq!(r["scheduledBackups"], 0, "{r}");
    let jobs = e.backup_jobs().await;
    assert_eq!(jobs.len(), 7, "one job for the slot the restart met");
    assert_eq!(jobs[6]["properties"]["status"], "Completed", "{}", jobs[6]);
    assert_eq!(jobs[6]["properties"]["startTime"], "2026-03-11T08:30:00Z");
    assert_eq!(e.points("vm1").await.len(), 7);
    e.s.stop().await;
}

/// The points Azure keeps at `now` of a daily 02:00 UTC schedule that began on `first`, under daily 7 /
/// weekly (Sunday) 4 / monthly (first Sunday) 12 / yearly (January's first Sunday) 2: written
/// independently of rsvault-schedule, from the tiers' definitions.
fn azure_keeps(first: DateTime<Utc>, now: DateTime<Utc>) -> BTreeSet<DateTime<Utc>> {
    let mut kept = BTreeSet::new();
    let mut t = first;
    while t <= now {
        let d = t.date_naive();
        let sunday = d.weekday() == Weekday::Sun;
        let first_sunday = sunday && d.day() <= 7;
        let mut until = vec![t + Duration::days(7)];
        if sunday {
            until.push(t + Duration::weeks(4));
        }
        if first_sunday {
            until.push(t.checked_add_months(chrono::Months::new(12)).unwrap());
        }
        if first_sunday && d.month() == 1 {
            until.push(t.checked_add_months(chrono::Months::new(24)).unwrap());
        }
        if until.into_iter().any(|u| now < u) {
            kept.insert(t);
        }
        t += Duration::days(1);
    }
    kept
}

#[tokio::test]
async fn long_term_retention_over_400_days_keeps_what_azure_keeps_and_prune_keeps_their_data() {
    let e = start_at("2026-01-01T00:00:00Z").await;
    let run = "2026-01-01T02:00:00Z";
    let ltr = json!({
        "retentionPolicyType": "LongTermRetentionPolicy",
        "dailySchedule": {"retentionTimes": [run], "retentionDuration": {"count": 7, "durationType": "Days"}},
        "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [run], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
        "monthlySchedule": {"retentionScheduleFormatType": "Weekly", "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First"]},
            "retentionTimes": [run], "retentionDuration": {"count": 12, "durationType": "Months"}},
        "yearlySchedule": {"retentionScheduleFormatType": "Weekly", "monthsOfYear": ["January"],
            "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First"]},
            "retentionTimes": [run], "retentionDuration": {"count": 2, "durationType": "Years"}},
    });
    let (st, b) = e.put_policy("ltr", daily_policy("UTC", run, ltr)).await;
    assert_eq!(st, 200, "{b}");
    // 8 MiB: the first 4 MiB never change, the last 4 MiB are rewritten before each 10-day step, so
    // points of different steps hold different data and steps whose points all expired leave data
    // to reclaim.
    let img = e.protect("vm1", 8 << 20, "ltr").await;
    let start = at("2026-01-01T00:00:00Z");
    let mut versions = vec![]; // (first instant, sha of the image) per step
    let mut biggest = 0;
    let mut done = 0;
    let mut step = 0u64;
    while done < 400 {
        let days = (400 - done).min(10);
        let mut bytes = std::fs::read(&img).unwrap();
        bytes.truncate(4 << 20);
        bytes.extend(noise(4 << 20, 100 + step));
        std::fs::write(&img, &bytes).unwrap();
        versions.push((start + Duration::days(done), sha(&img)));
        let r = e.advance(days * 86_400).await;
        assert_eq!(r["scheduledBackups"], days, "{r}");
        biggest = biggest.max(bytes_under(&e.repo().join("data")));
        done += days;
        step += 1;
    }
    let now = start + Duration::days(400);
    let want = azure_keeps(at("2026-01-01T02:00:00Z"), now);
    // 7 daily (Jan 29 - Feb 4), 3 more Sundays (Jan 10, 17, 24), 10 first Sundays (March - December
    // 2026) and 2 January first Sundays (2026, 2027).
    assert_eq!(want.len(), 7 + 3 + 10 + 2, "the independent enumeration itself");
    let got = e.point_times("vm1").await;
    assert_eq!(got, want, "kept points after 400 days");
    // Expiry times follow the longest tier of each point.
    for p in e.points("vm1").await {
        let t = at(p["properties"]["recoveryPointTime"].as_str().unwrap());
        let x = at(p["properties"]["recoveryPointProperties"]["expiryTime"]
            .as_str()
            .unwrap());
        assert!(x > now, "a listed point has not expired: {p}");
        if t.month() == 1 && t.day() <= 7 && t.weekday() == Weekday::Sun {
            assert_eq!(x, t.checked_add_months(chrono::Months::new(24)).unwrap(), "yearly: {p}");
        }
    }
    // The vault holds exactly the kept points, and garbage collection gave space back.
    let repo = e.repo();
    assert_eq!(files_in(&repo.join("snapshots")), want.len());
    // The vault holds the data of the steps whose points are kept, and no more: each step wrote its
    // own 4 MiB (random, incompressible), the first 4 MiB are shared. 40 steps were written; without
    // pruning the data of expired steps the vault would hold about 41 x 4 MiB. (Comparing with the
    // largest size seen was a coin flip: weekly prunes keep the vault near its steady size.)
    let kept_steps: std::collections::BTreeSet<usize> = want
        .iter()
        .map(|t| versions.iter().rposition(|(from, _)| from <= t).unwrap())
        .collect();
    let mib4 = 4u64 << 20;
    let now_bytes = bytes_under(&repo.join("data"));
    let most = (kept_steps.len() as u64 + 1) * mib4 + mib4 / 2; // + pack headers, index, trees
    assert!(
        now_bytes <= most && now_bytes >= kept_steps.len() as u64 * mib4,
        "the vault holds {now_bytes} bytes of data; the {} kept steps need {}..{most} (largest seen: {biggest})",
        kept_steps.len(),
        kept_steps.len() as u64 * mib4
    );

    // The oldest kept point restores to the bytes the image had then.
    let oldest = e
        .points("vm1")
        .await
        .into_iter()
        .min_by_key(|p| p["properties"]["recoveryPointTime"].as_str().unwrap().to_string())
        .unwrap();
    let t = at(oldest["properties"]["recoveryPointTime"].as_str().unwrap());
    let want_sha = &versions.iter().rev().find(|(from, _)| *from <= t).unwrap().1;
    assert_ne!(
        want_sha,
        &versions.last().unwrap().1,
        "the oldest point predates today's image"
    );
    let restored = restore_disks(&e, "vm1", oldest["name"].as_str().unwrap()).await;
    assert_eq!(&sha(&restored), want_sha, "restored bytes of the oldest kept point");
    e.s.stop().await;
}

/// Restores a point's disks into a new storage account; returns the OS disk image.
async fn restore_disks(e: &Env, vm: &str, rp: &str) -> PathBuf {
    let d = e.images.path().join("restored");
    std::fs::create_dir_all(&d).unwrap();
    let acct = format!(
        "{}/providers/Microsoft.Storage/storageAccounts/restoresa",
        e.s.rg_path("rg")
    );
    let (st, b) = e
        .s
        .call(
            "PUT",
            &format!("{acct}?{ST_API}"),
            Some(&json!({"location": "westus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}, "tags": {"rsvault-path": d}})),
        )
        .await;
    assert!(st == 200 || st == 201, "{b}");
    let vm_id = format!("{}/providers/Microsoft.Compute/virtualMachines/{vm}", e.s.rg_path("rg"));
    let r = e
        .s
        .call_as(
            Some(&e.s.token),
            "POST",
            &format!("{}/recoveryPoints/{rp}/restore?{BK}", e.item(vm)),
            Some(&json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks",
                "sourceResourceId": vm_id, "storageAccountId": acct, "region": "westus"}})),
        )
        .await;
    assert_eq!(r.status().as_u16(), 202);
    let op = r.headers()["azure-asyncoperation"].to_str().unwrap().to_string();
    let (_, opb) = e.s.call("GET", op.strip_prefix(&e.s.base).unwrap(), None).await;
    let job = opb["properties"]["jobId"].as_str().unwrap().to_string();
    for _ in 0..1200 {
        let (_, j) =
            e.s.call("GET", &format!("{}/backupJobs/{job}?{BK}", e.vault()), None)
                .await;
        match j["properties"]["status"].as_str().unwrap() {
            "InProgress" => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            "Completed" => {
                return restored_images(&d).remove(0);
            }
            _ => panic!("restore failed: {j}"),
        }
    }
    panic!("restore did not finish");
}

#[tokio::test]
async fn ad_hoc_expiry_soft_delete_undelete_and_the_purge_follow_the_clock() {
    let e = start_at("2026-06-01T00:00:00Z").await;
    // A weekly Sunday policy keeping points 4 weeks, so scheduled points do not expire in this test.
    let run = "2026-01-01T03:00:00Z";
    let (st, b) = e
        .put_policy(
            "weekly",
            json!({"backupManagementType": "AzureIaasVM", "timeZone": "UTC",
                "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday"], "scheduleRunTimes": [run]},
                "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy",
                    "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [run], "retentionDuration": {"count": 4, "durationType": "Weeks"}}}}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    e.protect("vm1", 1 << 20, "weekly").await;
    e.protect("vm2", 1 << 20, "weekly").await;

    // An ad-hoc point kept 3 days.
    let adhoc = |vm: &'static str| {
        let e = &e;
        async move {
            let r = e
                .s
                .call_as(
                    Some(&e.s.token),
                    "POST",
                    &format!("{}/backup?{BK}", e.item(vm)),
                    Some(&json!({"properties": {"objectType": "IaasVMBackupRequest", "recoveryPointExpiryTimeInUTC": "2026-06-04T00:00:00Z"}})),
                )
                .await;
            assert_eq!(r.status().as_u16(), 202);
        }
    };
    adhoc("vm1").await;
    adhoc("vm2").await;
    e.advance(0).await; // waits for the queued jobs
    assert_eq!(e.points("vm1").await.len(), 1);
    let r = e.advance(3 * 86_400).await; // to 06-04 00:00: the ad-hoc points expire at that instant
    assert_eq!(r["expiredRecoveryPoints"], 2, "{r}");
    assert!(e.points("vm1").await.is_empty());
    let r = e.advance(86_400).await; // Sunday 06-07 03:00 is a slot
    assert_eq!(r["time"], "2026-06-05T00:00:00Z");
    let r = e.advance(3 * 86_400).await;
    assert_eq!(r["scheduledBackups"], 2, "{r}");
    assert_eq!(e.points("vm1").await.len(), 1);

    // Delete with soft delete on (the vault's default): 14 days of grace.
    for vm in ["vm1", "vm2"] {
        let (st, b) = e.s.call("DELETE", &format!("{}?{BK}", e.item(vm)), None).await;
        assert_eq!(st, 202, "{b}");
    }
    let (_, item) = e.s.call("GET", &format!("{}?{BK}", e.item("vm1")), None).await;
    let p = &item["properties"];
    assert_eq!(p["isScheduledForDeferredDelete"], true, "{item}");
    assert_eq!(p["deferredDeleteTimeInUTC"], "2026-06-22T00:00:00Z", "{item}");
    assert_eq!(p["deferredDeleteTimeRemaining"], "14.00:00:00", "{item}");
    // Undelete vm2: it comes back with protection stopped, and its points stay past their expiry.
    let (st, b) =
        e.s.call(
            "PUT",
            &format!("{}?{BK}", e.item("vm2")),
            Some(
                &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "isRehydrate": true}}),
            ),
        )
        .await;
    assert_eq!(st, 202, "{b}");

    let r = e.advance(13 * 86_400).await;
    assert_eq!(r["scheduledBackups"], 0, "no backups of deleted or stopped items: {r}");
    let (st, item) = e.s.call("GET", &format!("{}?{BK}", e.item("vm1")), None).await;
    assert_eq!(st, 200, "still there on day 13: {item}");
    assert_eq!(item["properties"]["deferredDeleteTimeRemaining"], "1.00:00:00");
    assert_eq!(
        e.points("vm1").await.len(),
        1,
        "soft-deleted data is kept past its expiry"
    );
    let r = e.advance(86_400).await;
    assert_eq!(r["purgedItems"], 1, "{r}");
    let (st, b) = e.s.call("GET", &format!("{}?{BK}", e.item("vm1")), None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorProtectedItemNotFound");
    let (st, item2) = e.s.call("GET", &format!("{}?{BK}", e.item("vm2")), None).await;
    assert_eq!(st, 200);
    assert_eq!(item2["properties"]["protectionState"], "ProtectionStopped", "{item2}");
    assert_eq!(e.points("vm2").await.len(), 1, "a stopped item keeps its points");
    // The vault holds vm2's point only.
    assert_eq!(files_in(&e.repo().join("snapshots")), 1);
    e.s.stop().await;
}

#[tokio::test]
async fn the_clock_endpoint_is_absent_without_the_flag_and_checks_its_input() {
    let s = start().await;
    let (st, b) = s
        .call("POST", "/rsvault/admin/clock/advance", Some(&json!({"seconds": 60})))
        .await;
    assert_arm_error(st, &b, 404, "NotFound");
    s.stop().await;

    let e = start_at("2026-01-01T00:00:00Z").await;
    for (body, code) in [
        (json!({}), "InvalidRequestContent"),
        (json!({"seconds": "ten"}), "InvalidRequestContent"),
        (json!({"seconds": -1}), "InvalidRequestContent"),
    ] {
        let (st, b) = e.s.call("POST", "/rsvault/admin/clock/advance", Some(&body)).await;
        assert_arm_error(st, &b, 400, code);
    }
    let r = e.advance(90).await;
    assert_eq!(r["time"], "2026-01-01T00:01:30Z");
    // Job and resource times follow the clock; tokens do not (they still work).
    let (st, v) =
        e.s.call("GET", &format!("{}?api-version=2026-11-01", e.vault()), None)
            .await;
    assert_eq!(st, 200, "{v}");
    e.s.stop().await;
}

#[tokio::test]
async fn schedules_and_retentions_azure_rejects_are_rejected_with_its_code() {
    let e = start_at("2026-01-01T00:00:00Z").await;
    let run = "2026-01-01T02:00:00Z";
    let daily = json!({"retentionPolicyType": "LongTermRetentionPolicy",
        "dailySchedule": {"retentionTimes": [run], "retentionDuration": {"count": 7, "durationType": "Days"}}});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown time zone",
            daily_policy("Mars Standard Time", run, daily.clone()),
            "properties.timeZone",
        ),
        (
            "monthly tier taking no week",
            daily_policy(
                "UTC",
                run,
                json!({"retentionPolicyType": "LongTermRetentionPolicy",
                    "dailySchedule": {"retentionTimes": [run], "retentionDuration": {"count": 7, "durationType": "Days"}},
                    "monthlySchedule": {"retentionScheduleFormatType": "Weekly", "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": []},
                        "retentionTimes": [run], "retentionDuration": {"count": 12, "durationType": "Months"}}}),
            ),
            "weeksOfTheMonth",
        ),
        (
            "weekly schedule with day-based monthly retention",
            json!({"backupManagementType": "AzureIaasVM", "timeZone": "UTC",
                "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday"], "scheduleRunTimes": [run]},
                "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy",
                    "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [run], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
                    "monthlySchedule": {"retentionScheduleFormatType": "Daily", "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 1, "isLast": false}]},
                        "retentionTimes": [run], "retentionDuration": {"count": 12, "durationType": "Months"}}}}),
            "monthlySchedule",
        ),
    ];
    for (what, props, target) in cases {
        let (st, b) = e.put_policy("bad", props).await;
        assert_arm_error(st, &b, 400, "BMSUserErrorInvalidPolicyInput");
        let t = b["error"]["target"].as_str().unwrap_or_default();
        assert!(t.contains(target), "{what}: target {t}: {b}");
    }
    e.s.stop().await;
}

/// Issue 16: a deleted vault keeps its data and configuration for its soft-delete period, is listed
/// and recovered into another group (ids rebased, the same repository), and is purged — repository
/// and all — when the period is over.
#[tokio::test]
async fn a_deleted_vault_is_kept_recovered_into_another_group_and_purged_after_its_period() {
    let e = start_at("2026-06-01T00:00:00Z").await;
    e.protect("vm1", 1 << 20, "DefaultPolicy").await;
    let r =
        e.s.call(
            "POST",
            &format!("{}/backup?{BK}", e.item("vm1")),
            Some(&json!({"properties": {"objectType": "IaasVMBackupRequest"}})),
        )
        .await;
    assert_eq!(r.0, 202, "{}", r.1);
    e.advance(0).await;
    let repo = e.repo();
    let (st, b) = e.s.call("DELETE", &format!("{}?{BK}", e.item("vm1")), None).await;
    assert_eq!(st, 202, "{b}");
    let r = e.advance(14 * 86_400).await;
    assert_eq!(r["purgedItems"], 1, "{r}");

    let vault = format!("{}?{API}", e.vault());
    let (st, b) = e.s.call("DELETE", &vault, None).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(e.s.call("GET", &vault, None).await.0, 404);
    assert!(
        repo.join("config").exists(),
        "the data stays while the vault is deleted"
    );
    let deleted = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/deletedVaults",
        e.s.sub()
    );
    let (st, list) = e.s.call("GET", &format!("{deleted}?{API}"), None).await;
    assert_eq!(st, 200, "{list}");
    let dv = &list["value"][0];
    assert_eq!(list["value"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(dv["name"], "v1");
    assert_eq!(dv["type"], "Microsoft.RecoveryServices/locations/deletedVaults");
    assert_eq!(dv["properties"]["vaultId"], e.vault());
    assert_eq!(dv["properties"]["vaultDeletionTime"], "2026-06-15T00:00:00Z");
    assert_eq!(dv["properties"]["purgeAt"], "2026-06-29T00:00:00Z");
    assert_eq!(
        dv.as_object().unwrap().len(),
        4,
        "id, name, type, properties only: {dv}"
    );
    let (st, one) = e.s.call("GET", &format!("{deleted}/v1?{API}"), None).await;
    assert_eq!((st, &one), (200, dv));

    // Recovered into another group: refused while that group is missing, or holds a vault of the name.
    let undelete = format!("{deleted}/v1/undelete?{API}");
    let into = |rg: &str| json!({"properties": {"recoveryResourceGroupId": format!("/subscriptions/{}/resourceGroups/{rg}", e.s.sub())}});
    let cases: [(Value, u16, &str); 3] = [
        (json!({"properties": {}}), 400, "InvalidParameter"),
        (
            json!({"properties": {"recoveryResourceGroupId": "/subscriptions/other/resourceGroups/rg2"}}),
            400,
            "InvalidParameter",
        ),
        (into("rg2"), 404, "ResourceGroupNotFound"),
    ];
    for (body, status, code) in cases {
        let (st, b) = e.s.call("POST", &undelete, Some(&body)).await;
        assert_arm_error(st, &b, status, code);
    }
    e.s.make_group("rg2").await;
    e.s.make_vault("rg2", "v1").await;
    let (st, b) = e.s.call("POST", &undelete, Some(&into("rg2"))).await;
    assert_arm_error(st, &b, 409, "ResourceAlreadyExists");
    let (st, _) =
        e.s.call("DELETE", &format!("{}?{API}", e.s.vault_path("rg2", "v1")), None)
            .await;
    assert_eq!(st, 202);
    // That delete was soft too: the second deleted vault of the name gets a suffix.
    let (_, list) = e.s.call("GET", &format!("{deleted}?{API}"), None).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 2, "{list}");

    let r =
        e.s.call_as(Some(&e.s.token), "POST", &undelete, Some(&into("rg2")))
            .await;
    assert_eq!(r.status().as_u16(), 202);
    let status = r.headers()["azure-asyncoperation"].to_str().unwrap().to_string();
    let (st, op) = e.s.call("GET", status.strip_prefix(&e.s.base).unwrap(), None).await;
    assert_eq!((st, op["status"].as_str()), (200, Some("Succeeded")), "{op}");
    let moved = e.s.vault_path("rg2", "v1");
    let (st, v) = e.s.call("GET", &format!("{moved}?{API}"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], moved);
    let (st, pol) =
        e.s.call("GET", &format!("{moved}/backupPolicies/DefaultPolicy?{BK}"), None)
            .await;
    assert_eq!(st, 200, "the vault's policies come back with it: {pol}");
    assert_eq!(pol["id"], format!("{moved}/backupPolicies/DefaultPolicy"));
    let row = e.s.offline(|c| c.store().read(|db| db.vault_secret(&moved))).unwrap();
    assert_eq!(row.expect("the password is back").repo, repo.display().to_string());
    assert_eq!(e.s.call("GET", &format!("{deleted}/v1?{API}"), None).await.0, 404);

    // Deleted again, and purged when its period is over: the repository goes.
    let (st, _) = e.s.call("DELETE", &format!("{moved}?{API}"), None).await;
    assert_eq!(st, 202);
    let r = e.advance(13 * 86_400).await;
    assert_eq!(r["purgedItems"], 0, "{r}");
    assert!(repo.join("config").exists());
    let r = e.advance(2 * 86_400).await;
    assert_eq!(
        r["purgedItems"], 2,
        "both deleted vaults of the name, at their purgeAt: {r}"
    );
    assert!(r["steps"].as_u64().unwrap() >= 1, "the purge is a due instant: {r}");
    let (_, list) = e.s.call("GET", &format!("{deleted}?{API}"), None).await;
    assert_eq!(list["value"], json!([]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while repo.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the purged vault's repository stays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    e.s.stop().await;
}

/// Undelete and purge read the deleted vault, then commit: whichever commits second finds the row it
/// read gone and does nothing. An undelete that won keeps its vault, password and repository from a
/// purge that read the row before it; a purge that won leaves a stale undelete a `ResourceNotFound`,
/// not a vault over a repository being removed.
#[tokio::test]
async fn undelete_and_purge_racing_leave_one_whole_outcome() {
    let e = start_at("2026-06-01T00:00:00Z").await;
    e.protect("vm1", 1 << 20, "DefaultPolicy").await;
    let r =
        e.s.call(
            "POST",
            &format!("{}/backup?{BK}", e.item("vm1")),
            Some(&json!({"properties": {"objectType": "IaasVMBackupRequest"}})),
        )
        .await;
    assert_eq!(r.0, 202, "{}", r.1);
    e.advance(0).await;
    let repo = e.repo();
    // A vault that protects items cannot be deleted: the item goes first.
    let (st, b) = e.s.call("DELETE", &format!("{}?{BK}", e.item("vm1")), None).await;
    assert_eq!(st, 202, "{b}");
    e.advance(14 * 86_400).await;
    let sub = e.s.sub().to_string();
    let deleted_id =
        format!("/subscriptions/{sub}/providers/Microsoft.RecoveryServices/locations/westus/deletedVaults/v1");
    let undelete = format!("{deleted_id}/undelete?{API}");
    let into_rg = json!({"properties": {"recoveryResourceGroupId": format!("/subscriptions/{sub}/resourceGroups/rg")}});
    let vault = format!("{}?{API}", e.vault());
    let read_deleted = || {
        let id = deleted_id.clone();
        e.s.offline(move |c| c.store().read(|db| db.resource(&id)))
            .unwrap()
            .expect("the deleted vault")
    };
    let far = chrono::DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
        .unwrap()
        .to_utc();

    // The undelete commits first; a purge of the row as read before it keeps everything.
    assert_eq!(e.s.call("DELETE", &vault, None).await.0, 202);
    let as_read = read_deleted();
    let (st, b) = e.s.call("POST", &undelete, Some(&into_rg)).await;
    assert_eq!(st, 202, "{b}");
    let purged = e.s.offline(move |c| c.purge_deleted_vault(&as_read, far)).unwrap();
    assert!(!purged, "a purge of a row undeleted since does nothing");
    assert_eq!(e.s.call("GET", &vault, None).await.0, 200);
    let v = e.vault();
    let secret = e.s.offline(move |c| c.store().read(|db| db.vault_secret(&v))).unwrap();
    assert!(secret.is_some(), "the vault keeps its password");
    assert!(repo.join("config").exists(), "and its repository");

    // The purge commits first; an undelete of the row as read before it is refused and restores nothing.
    assert_eq!(e.s.call("DELETE", &vault, None).await.0, 202);
    let as_read = read_deleted();
    let r = e.advance(15 * 86_400).await;
    assert!(r["purgedItems"].as_u64().unwrap() >= 1, "{r}");
    let sub2 = sub.clone();
    let refused =
        e.s.offline(move |c| c.undelete_as_read(&sub2, as_read, "rg").map(|_| ()))
            .unwrap_err();
    assert_eq!(refused.code(), "ResourceNotFound", "{refused}");
    assert_eq!(
        e.s.call("GET", &vault, None).await.0,
        404,
        "no vault over a purged repository"
    );
    let v = e.vault();
    assert!(e
        .s
        .offline(move |c| c.store().read(|db| db.resource(&v)))
        .unwrap()
        .is_none());
    e.s.stop().await;
}

/// A vault whose soft delete is off is deleted at once, as before: no deleted vault.
#[tokio::test]
async fn a_vault_with_soft_delete_off_is_deleted_at_once() {
    let e = start_at("2026-06-01T00:00:00Z").await;
    let vault = format!("{}?{API}", e.vault());
    let (st, b) =
        e.s.call(
            "PATCH",
            &vault,
            Some(&json!({"properties": {"securitySettings": {"softDeleteSettings": {"softDeleteState": "Disabled"}}}})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(e.s.call("DELETE", &vault, None).await.0, 202);
    let deleted = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/deletedVaults?{API}",
        e.s.sub()
    );
    assert_eq!(e.s.call("GET", &deleted, None).await.1, json!({"value": []}));
    e.s.stop().await;
}
