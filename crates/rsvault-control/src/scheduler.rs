//! Policies that act: scheduled backups, retention, the soft-delete purge and garbage collection,
//! driven by the control plane's clock.
//!
//! One *pass* ([`Control::policy_pass`]) at an instant `now` does, in order:
//! 1. **Purge**: soft-deleted items whose `deferredDeleteTimeInUTC` has come are deleted with their
//!    recovery points (their vault is marked for garbage collection). In an immutable vault
//!    (`Unlocked` or `Locked`) an item waits until none of its points is unexpired.
//! 2. **Retention**: recovery points whose expiry has come are deleted, unless their item's
//!    protection is stopped (Azure keeps the points of a stopped item, and of a soft-deleted one,
//!    until its data is deleted). The item's `recoveryPointCount` and `oldestRecoveryPoint` follow.
//! 3. **Schedule**: every protected item whose policy had a slot in (last claimed slot, `now`]
//!    gets one backup job, `isUserTriggered: false`, for the latest such slot only (a server that was
//!    down runs a missed slot once, not N times). The slot is claimed in the transaction that queues
//!    the job (`schedule_slots`), so a slot runs once across restarts, and across nodes sharing the
//!    store. A scheduled point's expiry comes from the policy's retention
//!    ([`rsvault_schedule::Retention::expiry`]); a point no tier keeps (an hourly point that is not the
//!    last of its day) lives `instantRpRetentionRangeInDays` (default 2) days.
//! 4. **Garbage collection** of each marked vault: snapshots that no recovery point row and no
//!    queued or running job claims are deleted at once; the data only they used is pruned at most
//!    once every 7 days of clock time per vault (and at the first pass after a start), as backup
//!    servers schedule their GC ([`rsvault_engine::Engine::collect_garbage`]). The store decides what
//!    lives, read under the repository's exclusive lock, so a backup that has written its snapshot
//!    but not yet committed its row (its job still `running`) is never collected.
//!
//! Passes run on the [`Scheduler`]'s own thread (a [`Worker`] whose status the node reports; never on
//! an API request's), every
//! `interval`, and are serialized by one lock, so two never overlap. Among nodes sharing a store,
//! only the holder of the `scheduler` leader lease runs passes (`leader_leases`, wall-clock, three
//! intervals long and renewed at every pass). Vaults are marked for garbage collection in the store
//! (`gc_marks`), so a mark made on any node (a hard delete, a failed backup) reaches the leader.
//!
//! With `--test-clock` the clock stands still until [`Control::advance_clock`] moves it: it steps
//! from one due instant (slot, expiry, purge) to the next up to the target, running a pass at each
//! and waiting for the jobs it queued (on any node), so "advance 30 days" runs every due backup and
//! prune in order, each at its own time. Each step's time is written to the store before its pass;
//! other nodes read it when a job starts (the step waits for its jobs, so it holds while they run),
//! before a periodic pass and before an advance of their own.
//!
//! *Architecture Invariant*: a slot is claimed and its job queued in one transaction; nothing else
//! claims slots.

use crate::backup::recovery::{count_points, Work};
use crate::backup::{vault_of, ContainerName, PROTECTED_ITEM_TYPE};
use crate::immutability::Immutability;
pub use crate::maintenance::META_TEST_CLOCK;
use crate::{Control, Error, Result};
use chrono::{DateTime, Duration, Utc};
use rsvault_core::time::{self, Clock};
use rsvault_jobs::worker::{Activity, Stop, Worker, WorkerState, Workers};
use rsvault_schedule::{Retention, Schedule};
use rsvault_store::ResourceRow;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What garbage collection must keep in one vault (read from the store).
#[derive(Debug, Default)]
struct Live {
    /// Recovery point ids (lower case): the rows, and the points active jobs make or read.
    points: HashSet<String>,
    /// Names of the vault's queued and running jobs (lower case): a snapshot tagged with one is kept.
    jobs: HashSet<String>,
    /// An active job's work could not be read: keep every snapshot.
    everything: bool,
}

impl Live {
    fn keeps(&self, info: &rsvault_engine::RecoveryPointInfo) -> bool {
        self.everything
            || self.points.contains(&info.id.to_ascii_lowercase())
            || self.jobs.contains(&info.job.to_ascii_lowercase())
    }
}

/// The name of the scheduler's leadership lease (`leader_leases`).
pub const SCHEDULER_LEASE: &str = "scheduler";

/// Longest an advance waits for the jobs of one step before giving up.
const STEP_JOB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

/// How often a vault's unreferenced data is pruned (snapshots of expired points go at once).
const PRUNE_EVERY: i64 = 7;

/// What one pass (or one advance) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Scheduled backup jobs queued.
    pub backups: usize,
    /// Recovery points deleted because they expired.
    pub expired: usize,
    /// Soft-deleted items purged.
    pub purged: usize,
    /// Vault snapshots deleted by garbage collection (expired, purged or orphaned).
    pub collected: usize,
}

impl PassReport {
    fn add(&mut self, o: PassReport) {
        self.backups += o.backups;
        self.expired += o.expired;
        self.purged += o.purged;
        self.collected += o.collected;
    }
}

/// The scheduler: a [`Worker`] on its own thread that runs policy passes on the wall of time
/// while its node leads the scheduler.
pub struct Scheduler {
    stop: Stop,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish()
    }
}

impl Scheduler {
    /// Runs a pass at once and every `interval` after, while this node leads the scheduler among
    /// the nodes sharing the store (one leader at a time; see [`Control::lead_scheduler`]). A node
    /// that becomes the leader first marks every vault for garbage collection (a crash may have left
    /// work undone); a stopping leader hands the lease back. Its status goes on `workers`' board.
    pub fn start(control: Arc<Control>, interval: std::time::Duration, workers: &Workers) -> Result<Scheduler> {
        let stop = Stop::default();
        let thread = workers.spawn(SchedulerWorker {
            control,
            interval,
            leading: false,
            stop: stop.clone(),
        })?;
        Ok(Scheduler {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (after the pass it may be running).
    pub fn stop(mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The scheduler's worker: one round is a leadership renewal and, when leading, a policy pass.
struct SchedulerWorker {
    control: Arc<Control>,
    interval: std::time::Duration,
    leading: bool,
    stop: Stop,
}

impl Worker for SchedulerWorker {
    fn name(&self) -> String {
        "scheduler".into()
    }

    fn work(&mut self) -> Result<WorkerState> {
        let control = &self.control;
        match control.lead_scheduler(self.interval) {
            Ok(now_leading) => {
                if now_leading && !self.leading {
                    tracing::info!("this node leads the scheduler");
                    if let Err(e) = control.mark_all_vaults() {
                        tracing::warn!(error = %e, "cannot mark the vaults for garbage collection");
                    }
                } else if self.leading && !now_leading {
                    tracing::warn!("this node no longer leads the scheduler");
                }
                self.leading = now_leading;
            }
            Err(e) => {
                self.leading = false;
                return Err(Error::internal(format!("cannot renew the scheduler's leadership: {e}")));
            }
        }
        if self.leading {
            // On a test clock another node may have moved it.
            control
                .resume_test_clock()
                .map_err(|e| Error::internal(format!("cannot read the test clock: {e}")))?;
            control
                .policy_pass(control.now())
                .map_err(|e| Error::internal(format!("policy pass failed: {e}")))?;
        }
        Ok(WorkerState::Idle)
    }

    fn wait_for_work(&mut self) -> WorkerState {
        if !self.stop.wait(self.interval) {
            return WorkerState::Busy;
        }
        if self.leading {
            if let Ok(dp) = self.control.data() {
                let _ = self
                    .control
                    .store
                    .write(|db| db.release_leader(SCHEDULER_LEASE, &dp.node));
            }
        }
        WorkerState::Done
    }

    fn status(&self) -> Activity {
        Activity {
            jobs_running: None,
            detail: Some(if self.leading { "leader" } else { "standby" }.into()),
        }
    }
}

/// The schedule and retention of an item's policy, or `None` for an item that takes no scheduled
/// backups (no policy, stopped, soft-deleted, or a policy the schedule library cannot read).
struct Plan {
    schedule: Schedule,
    retention: Option<Retention>,
    instant_days: i64,
}

fn active(item: &ResourceRow) -> bool {
    let p = &item.body["properties"];
    p["isScheduledForDeferredDelete"].as_bool() != Some(true)
        && p["protectionState"].as_str() != Some("ProtectionStopped")
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Control {
    /// Takes or keeps the scheduler's leadership among the nodes sharing the store (a lease of three
    /// pass intervals, at least 30 s, renewed at every pass). Returns true while this node leads.
    fn lead_scheduler(&self, interval: std::time::Duration) -> Result<bool> {
        let node = self.data()?.node.clone();
        let now = self.wall_now();
        let hold = Duration::seconds((interval.as_secs() as i64 * 3).max(30));
        Ok(self
            .store
            .write(|db| db.take_leader(SCHEDULER_LEASE, &node, now, now + hold))?)
    }

    fn mark_all_vaults(&self) -> Result<()> {
        let vaults = self.store.read(|db| db.everywhere_of_type(crate::vaults::VAULT_TYPE))?;
        for v in vaults {
            self.mark_vault_here(&v.id);
        }
        Ok(())
    }

    fn plan_of(&self, item: &ResourceRow) -> Option<Plan> {
        if !active(item) {
            return None;
        }
        let policy_id = item.body["properties"]["policyId"].as_str().filter(|p| !p.is_empty())?;
        let policy = self.store.read(|db| db.resource(policy_id)).ok()??;
        let props = &policy.body["properties"];
        let schedule = match Schedule::from_policy(props) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(policy = %policy.id, error = %e, "policy has no usable schedule");
                return None;
            }
        };
        Some(Plan {
            schedule,
            retention: Retention::from_policy(props).ok(),
            instant_days: props["instantRpRetentionRangeInDays"].as_i64().unwrap_or(2),
        })
    }

    /// The last slot an item was backed up for, or when its protection began.
    fn last_slot(&self, item: &ResourceRow) -> Result<DateTime<Utc>> {
        let claimed = self.store.read(|db| db.schedule_slot(&item.id))?;
        Ok(claimed.map_or(item.created, |c| c.max(item.created)))
    }

    fn protected_items(&self) -> Result<Vec<ResourceRow>> {
        Ok(self.store.read(|db| db.everywhere_of_type(PROTECTED_ITEM_TYPE))?)
    }

    /// One policy pass at `now` (see the module doc). Serialized with every other pass.
    pub fn policy_pass(&self, now: DateTime<Utc>) -> Result<PassReport> {
        let m = self.maintenance()?;
        let _pass = m.pass.lock().unwrap_or_else(|p| p.into_inner());
        self.pass_locked(now)
    }

    fn pass_locked(&self, now: DateTime<Utc>) -> Result<PassReport> {
        let mut r = PassReport {
            purged: self.purge_soft_deleted(now)? + self.purge_deleted_vaults(now)?,
            expired: self.expire_points(now)?,
            ..PassReport::default()
        };
        r.backups = self.queue_scheduled(now)?;
        r.collected = self.collect_marked()?;
        Ok(r)
    }

    fn purge_soft_deleted(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut n = 0;
        for item in self.protected_items()? {
            let p = &item.body["properties"];
            let due = p["isScheduledForDeferredDelete"].as_bool() == Some(true)
                && parse_time(&p["deferredDeleteTimeInUTC"]).is_some_and(|t| t <= now);
            if !due || self.immutably_kept(&item, now)? {
                continue;
            }
            let vm_container = item
                .id
                .split('/')
                .nth_back(2)
                .is_some_and(|c| matches!(ContainerName::parse(c), Ok(ContainerName::Vm { .. })));
            let container = item.parent_key.as_deref().filter(|_| vm_container);
            self.store
                .write(|db| crate::backup::protection::delete_item(db, &item.id, container))?;
            tracing::info!(item = %item.id, "soft delete period over: item and its recovery points purged");
            self.mark_vault(vault_of(&item.id));
            n += 1;
        }
        Ok(n)
    }

    /// Whether an item's vault is immutable and still holds a point of the item that has not
    /// expired: then the end of its soft-delete period does not purge it (an immutable vault loses
    /// no point before its expiry); a later pass does, once its points have expired.
    fn immutably_kept(&self, item: &ResourceRow, now: DateTime<Utc>) -> Result<bool> {
        let vault = self.store.read(|db| db.resource(vault_of(&item.id)))?;
        if !vault.is_some_and(|v| Immutability::of(&v.body).enforced()) {
            return Ok(false);
        }
        let points = self.store.read(|db| db.recovery_points(&item.id))?;
        Ok(points.iter().any(|rp| rp.expiry.is_none_or(|e| e > now)))
    }

    fn expire_points(&self, now: DateTime<Utc>) -> Result<usize> {
        let due = self
            .store
            .read(|db| db.recovery_points_expiring(DateTime::<Utc>::MIN_UTC, now))?;
        let mut n = 0;
        let mut items = BTreeSet::new();
        for rp in due {
            let Some(item) = self.store.read(|db| db.resource(&rp.item_key))? else {
                continue;
            };
            if !active(&item) {
                continue;
            }
            self.store.write(|db| db.delete_recovery_point(&rp.id))?;
            items.insert(item.id.clone());
            self.mark_vault(vault_of(&item.id));
            n += 1;
        }
        for id in items {
            self.store.write(|db| -> Result<()> {
                if let Some(mut item) = db.resource(&id)? {
                    count_points(db, &mut item)?;
                    db.put_resource(&item)?;
                }
                Ok(())
            })?;
        }
        Ok(n)
    }

    fn queue_scheduled(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut n = 0;
        for item in self.protected_items()? {
            let Some(plan) = self.plan_of(&item) else { continue };
            let Some(slot) = plan.schedule.missed(Some(self.last_slot(&item)?), now) else {
                continue;
            };
            let expiry = plan
                .retention
                .as_ref()
                .and_then(|r| r.expiry(&plan.schedule, slot))
                .unwrap_or_else(|| slot + Duration::days(plan.instant_days.max(1)));
            let Some(vault) = self.store.read(|db| db.resource(vault_of(&item.id)))? else {
                continue;
            };
            match self.enqueue_backup(&vault, &item, expiry, Some(slot), now) {
                Ok(_) => n += 1,
                Err(Error::Conflict {
                    code: "ScheduleSlotTaken",
                    ..
                }) => {}
                Err(e) => {
                    // Azure skips a slot it cannot run (a backup still running, a VM gone); so do we,
                    // once: the slot is claimed so it is not retried at every pass.
                    tracing::warn!(item = %item.id, slot = %time::timestamp(slot), error = %e, "scheduled backup skipped");
                    self.store.write(|db| db.claim_slot(&item.id, slot))?;
                }
            }
        }
        Ok(n)
    }

    fn collect_marked(&self) -> Result<usize> {
        let m = self.maintenance()?;
        let mut vaults = std::mem::take(&mut *m.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        vaults.extend(self.store.write(|db| db.take_gc_marks())?);
        {
            // Vaults owing a prune whose week is up.
            let now = self.now();
            let p = m.pruned.lock().unwrap_or_else(|p| p.into_inner());
            vaults.extend(
                p.1.iter()
                    .filter(|v| p.0.get(*v).is_none_or(|t| now - *t >= Duration::days(PRUNE_EVERY)))
                    .cloned(),
            );
        }
        let mut n = 0;
        for v in vaults {
            match self.collect_garbage(&v) {
                Ok(k) => n += k,
                Err(e) => {
                    tracing::warn!(vault = %v, error = %e, "garbage collection failed; retried at the next pass");
                    self.mark_vault(&v);
                }
            }
        }
        Ok(n)
    }

    /// Garbage collection of one vault now, between passes (what a pass does for a marked vault).
    /// Returns how many recovery points' snapshots went.
    pub fn collect_garbage_now(&self, vault_id: &str) -> Result<usize> {
        let m = self.maintenance()?;
        let _pass = m.pass.lock().unwrap_or_else(|p| p.into_inner());
        self.collect_garbage(vault_id)
    }

    /// Deletes the vault's snapshots the store no longer knows, and the data only they used.
    fn collect_garbage(&self, vault_id: &str) -> Result<usize> {
        if self.store.read(|db| db.vault_secret(vault_id))?.is_none() {
            return Ok(0); // never backed up: no repository
        }
        if self.store.read(|db| db.resource(vault_id))?.is_none() {
            return Ok(0); // deleted with its repository
        }
        let repo = self.vault_repo(vault_id)?;
        // Read under the repository's exclusive lock, at the first snapshot looked at.
        let live: std::cell::OnceCell<std::result::Result<Live, String>> = std::cell::OnceCell::new();
        let keep = |info: &rsvault_engine::RecoveryPointInfo| {
            match live.get_or_init(|| self.live_points(vault_id).map_err(|e| e.to_string())) {
                Ok(l) => l.keeps(info),
                Err(_) => true, // cannot tell: keep everything
            }
        };
        let now = self.now();
        let key = vault_id.to_ascii_lowercase();
        let m = self.maintenance()?;
        let reclaim = m
            .pruned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(&key)
            .is_none_or(|t| now - *t >= Duration::days(PRUNE_EVERY));
        let report = self
            .data()?
            .engine
            .collect_garbage(&repo, &keep, reclaim)
            .map_err(crate::dataplane::engine_error)?;
        {
            let mut p = m.pruned.lock().unwrap_or_else(|p| p.into_inner());
            if reclaim {
                p.0.insert(key.clone(), now);
                p.1.remove(&key);
            } else if !report.expired.is_empty() {
                p.1.insert(key);
            }
        }
        if let Some(Err(e)) = live.get() {
            return Err(Error::internal(format!("cannot read the vault's recovery points: {e}")));
        }
        if !report.expired.is_empty() || report.bytes_removed > 0 {
            tracing::info!(vault = %vault_id, snapshots = report.expired.len(), packs = report.packs_removed, bytes = report.bytes_removed, "vault garbage collected");
        }
        Ok(report.expired.len())
    }

    /// What the vault must keep: its recovery point rows, and whatever its queued or running jobs make
    /// or read. A running backup's snapshot is committed before its row is written; between the two
    /// only its job names it, so the job's typed [`Work`] and the snapshot's job tag both keep it. An
    /// active job of the vault whose work cannot be read makes the whole vault kept.
    fn live_points(&self, vault_id: &str) -> Result<Live> {
        self.store.read(|db| {
            let mut live = Live {
                points: db
                    .vault_recovery_points(vault_id)?
                    .into_iter()
                    .map(|r| r.name.to_ascii_lowercase())
                    .collect(),
                ..Live::default()
            };
            let key = vault_id.to_ascii_lowercase();
            for j in rsvault_jobs::active_jobs(db)? {
                if j.vault_key != key {
                    continue;
                }
                live.jobs.insert(j.name.to_ascii_lowercase());
                match Work::of(&j) {
                    Some(w) => {
                        live.points.insert(w.recovery_point().to_ascii_lowercase());
                    }
                    None if j.work.is_some() => live.everything = true,
                    None => {}
                }
            }
            Ok::<_, Error>(live)
        })
    }

    /// The first instant after `after` at which a pass has something to do: a schedule slot, an
    /// expiry or the end of a soft-delete period (an item's or a deleted vault's).
    fn next_due(&self, after: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let mut next: Option<DateTime<Utc>> = None;
        let mut consider = |t: DateTime<Utc>| {
            if t > after && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for item in self.protected_items()? {
            let p = &item.body["properties"];
            if p["isScheduledForDeferredDelete"].as_bool() == Some(true) {
                if let Some(t) = parse_time(&p["deferredDeleteTimeInUTC"]) {
                    consider(t);
                    // In an immutable vault the purge waits for the item's points to expire.
                    let vault = self.store.read(|db| db.resource(vault_of(&item.id)))?;
                    if vault.is_some_and(|v| Immutability::of(&v.body).enforced()) {
                        for rp in self.store.read(|db| db.recovery_points(&item.id))? {
                            if let Some(e) = rp.expiry.filter(|e| *e > t) {
                                consider(e);
                            }
                        }
                    }
                }
                continue;
            }
            if let Some(plan) = self.plan_of(&item) {
                let from = self.last_slot(&item)?.max(after);
                if let Some(t) = plan.schedule.next_slot(from) {
                    consider(t);
                }
            }
        }
        for t in self.deleted_vault_purges()? {
            consider(t);
        }
        // The first expiry after `after` of an item whose points expire.
        let mut from = after;
        loop {
            let batch = self
                .store
                .read(|db| db.recovery_points_expiring(from, DateTime::<Utc>::MAX_UTC))?;
            let Some(last) = batch.last().and_then(|r| r.expiry) else {
                break;
            };
            let mut found = false;
            for rp in &batch {
                let item = self.store.read(|db| db.resource(&rp.item_key))?;
                if item.as_ref().is_some_and(active) {
                    if let Some(t) = rp.expiry {
                        consider(t);
                    }
                    found = true;
                    break;
                }
            }
            if found || last <= from {
                break;
            }
            from = last;
        }
        Ok(next)
    }

    /// Blocks until no data-plane job is queued or running.
    fn wait_for_jobs(&self) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let busy = !self.store.read(rsvault_jobs::active_jobs)?.is_empty();
            if !busy {
                return Ok(());
            }
            if self.jobs_stopping() {
                return Err(Error::internal(
                    "the server is stopping; the clock advance was interrupted",
                ));
            }
            if started.elapsed() > STEP_JOB_TIMEOUT {
                return Err(Error::internal("jobs did not finish within 30 minutes of a clock step"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// `POST /rsvault/admin/clock/advance`: moves the test clock `seconds` forward, stopping at every
    /// due instant on the way to run a pass and let its jobs finish. `NotFound` without
    /// `--test-clock`. Returns the new time and what ran.
    pub fn advance_clock(&self, seconds: i64) -> Result<Value> {
        let clock = self.test_clock().ok_or_else(|| Error::NotFound {
            code: "NotFound",
            message: "The test clock is off: start the server with --test-clock to move time.".into(),
        })?;
        if !(0..=100 * 366 * 86_400).contains(&seconds) {
            return Err(Error::Invalid {
                code: "InvalidRequestContent",
                message: "'seconds' must be a whole number from 0 to 3162240000 (100 years).".into(),
                target: Some("seconds".into()),
            });
        }
        let m = self.maintenance()?;
        let _pass = m.pass.lock().unwrap_or_else(|p| p.into_inner());
        // Another node sharing the store may have moved the clock.
        self.resume_test_clock()?;
        let target = clock.now() + Duration::seconds(seconds);
        let mut total = PassReport::default();
        let mut steps = 0u64;
        loop {
            self.wait_for_jobs()?;
            let now = clock.now();
            total.add(self.pass_locked(now)?);
            self.wait_for_jobs()?;
            // Jobs that ended may have made points that expire, or marked vaults.
            total.collected += self.collect_marked()?;
            match self.next_due(now)? {
                Some(t) if t <= target => {
                    self.set_test_time(clock, t)?;
                    steps += 1;
                }
                _ => break,
            }
        }
        let now = self.set_test_time(clock, target)?;
        total.add(self.pass_locked(now)?);
        self.wait_for_jobs()?;
        total.collected += self.collect_marked()?;
        Ok(json!({
            "time": time::timestamp(now),
            "steps": steps,
            "scheduledBackups": total.backups,
            "expiredRecoveryPoints": total.expired,
            "purgedItems": total.purged,
        }))
    }

    fn set_test_time(&self, clock: &rsvault_core::time::TestClock, t: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let now = clock.move_to(t);
        self.store.write(|db| db.set_meta(META_TEST_CLOCK, &now.to_rfc3339()))?;
        Ok(now)
    }
}
