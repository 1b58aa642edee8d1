//! The job engine: data-plane jobs (backups, restores) run here, off the request path.
//!
//! Life of a job: the request that accepts it writes the job row (`status: InProgress`,
//! `phase: queued`, `work`: what to do, as JSON) in the same transaction as its operation record,
//! and wakes the queue. A worker thread ([`JobLimits::workers`] of them) takes the oldest queued job
//! whose vault runs fewer than [`JobLimits::per_vault`] jobs, marks it `running`, and carries it out
//! through the engine. Progress goes into the job row (at every task change and at most once a
//! second otherwise), so `GET backupJobs/{job}` reads it from the store like any job. The end
//! (`Completed`, `CompletedWithWarnings`, `Failed`, `Cancelled`) is written in one transaction with
//! what the job produced (the recovery point row, the protected item's last-backup fields).
//!
//! * **Cancel**: a queued job is cancelled at once; a running one goes `Cancelling` and its engine
//!   call stops at the next chunk, committing nothing (the engine's guarantee), then `Cancelled`.
//! * **Several nodes** share one store (PostgreSQL) and one queue. A worker claims a job in one
//!   store transaction (writes are serialised: SQLite's one writer, PostgreSQL's advisory lock) that
//!   counts the vault's leased jobs on every node against [`JobLimits::per_vault`], sets `running`
//!   and writes the job's **lease**: this node's name, a fencing token greater than every earlier
//!   one, and a wall-clock expiry ([`JobLimits::lease_secs`]). The node's lease keeper renews its
//!   leases every few seconds; a job's end is recorded only by the holder of its current token.
//! * **Cancel**: a queued job is cancelled at once; a running one goes `Cancelling` (from any node)
//!   and its engine call stops at the next chunk, committing nothing (the engine's guarantee), then
//!   `Cancelled`. The node running it sees `Cancelling` at its next renewal.
//! * **A node that dies**: any node's lease keeper settles a job whose lease lapsed. It takes the
//!   lease over (a new token fences the old holder out), then settles the job as a restart does.
//! * **Restart**: jobs still `queued` run after a restart. A job found `running` whose lease is this
//!   node's (its name is kept in `DATA_DIR/node-id`) or lapsed was interrupted by a crash: a backup
//!   whose recovery point the vault already holds (the crash came after the snapshot was committed)
//!   is completed from it; any other ends `Failed`, saying why. Other nodes' live jobs are left
//!   alone. A graceful stop cancels this node's running engine calls (committing nothing) and puts
//!   their jobs back in the queue, so they run again (on any node).
//!
//! *Architecture Invariant*: a job leaves `running` only in the transaction that records its end
//! (or puts it back in the queue at a graceful stop), and only under its current lease (node and
//! fencing token); besides the worker running it, only cancel writes a running job's status
//! (`Cancelling`), and progress writes only its `extendedInfo`. Lease times are wall-clock times
//! (`Control::wall_now`), never the test clock. Lock order: the queue's mutex, then the store's.

use crate::dataplane::DataPlane;
use crate::{Control, Result};
use chrono::{DateTime, Utc};
use rsvault_core::time;
use rsvault_engine::{Cancel, Progress, Task};
use rsvault_store::{Db, JobLease, JobRow, NodeRow};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const DONE: &str = "done";

/// The in-memory side of the queue: which jobs run, and their cancel flags.
#[derive(Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    running: HashMap<String, Running>,
    stopping: bool,
}

struct Running {
    cancel: Cancel,
    /// The fencing token of this node's lease on the job.
    fence: i64,
}

/// Writes made in the transaction that records a job's end.
pub(crate) type Commit = Box<dyn FnOnce(&Db) -> Result<()> + Send>;

/// A job's work that ended well.
pub(crate) struct Finished {
    /// `Completed` or `CompletedWithWarnings`.
    pub status: &'static str,
    /// Entries added to the job's `propertyBag`.
    pub bag: Map<String, Value>,
    /// Warnings shown in the job (`dynamicErrorMessage`).
    pub warnings: Vec<String>,
    /// Writes made in the transaction that records the job's end.
    pub commit: Commit,
}

/// Why a job's work did not end well.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Its cancel flag was set (by a user, or by a graceful stop).
    Cancelled,
    /// It failed; the job shows this error.
    Failed(JobError),
}

/// An error as jobs show it (`errorDetails`).
#[derive(Debug, Clone)]
pub(crate) struct JobError {
    pub code: i64,
    pub title: String,
    pub message: String,
    pub recommendations: Vec<String>,
}

impl JobError {
    pub fn new(code: i64, title: &str, message: impl Into<String>, recommendation: &str) -> JobError {
        JobError {
            code,
            title: title.into(),
            message: message.into(),
            recommendations: vec![recommendation.into()],
        }
    }
}

/// A task of a job as the engine reports it: its name in the job, the engine task, and its weight
/// in the job's `progressPercentage`.
pub(crate) type TaskSpec = (&'static str, Task, u32);

/// The tasks list of a new job: every task `NotStarted`.
pub(crate) fn new_tasks(tasks: &[TaskSpec]) -> Value {
    Value::Array(
        tasks
            .iter()
            .map(|(name, _, _)| json!({"taskId": name, "status": "NotStarted"}))
            .collect(),
    )
}

/// The running job engine: worker threads over the queue, and the lease keeper.
pub struct JobRunner {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
    sweeper: crate::removals::Sweeper,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl JobRunner {
    /// Settles deleted vaults' leftovers and starts their sweeper ([`crate::removals`]), settles jobs
    /// a crash interrupted, then starts the workers.
    pub fn start(control: Arc<Control>) -> Result<JobRunner> {
        let workers = control.data()?.limits.workers;
        control.remove_orphaned_vault_data()?;
        let sweeper = crate::removals::Sweeper::start(control.clone())?;
        control.recover_interrupted_jobs()?;
        let keeper = {
            let c = control.clone();
            std::thread::Builder::new()
                .name("rsvault-job-leases".into())
                .spawn(move || c.keep_leases())
                .map_err(|e| crate::Error::internal(format!("cannot start the lease keeper: {e}")))?
        };
        let threads = (0..workers)
            .map(|i| {
                let c = control.clone();
                std::thread::Builder::new()
                    .name(format!("rsvault-job-{i}"))
                    .spawn(move || c.work_loop())
                    .map_err(|e| crate::Error::internal(format!("cannot start a job worker: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(JobRunner {
            control,
            threads,
            keeper: Some(keeper),
            sweeper,
        })
    }

    /// Stops the workers: running engine calls are cancelled and their jobs go back to the queue.
    pub fn stop(self) {
        self.sweeper.stop();
        if let Ok(dp) = self.control.data() {
            let mut st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stopping = true;
            for r in st.running.values() {
                r.cancel.cancel();
            }
            dp.queue.wake.notify_all();
        }
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(k) = self.keeper {
            let _ = k.join();
        }
    }
}

/// What cancelling a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    /// It was queued and is now `Cancelled`.
    Cancelled,
    /// It runs and is now `Cancelling`.
    Cancelling,
    /// It already ended (or is already being cancelled).
    NotCancellable,
}

impl Control {
    /// True once the job engine is stopping (a graceful shutdown).
    pub(crate) fn jobs_stopping(&self) -> bool {
        self.data()
            .map(|dp| dp.queue.state.lock().unwrap_or_else(|p| p.into_inner()).stopping)
            .unwrap_or(true)
    }

    /// Wakes the workers (a job was queued).
    pub(crate) fn wake_jobs(&self) {
        if let Ok(dp) = self.data() {
            let _guard = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
            dp.queue.wake.notify_all();
        }
    }

    /// Cancels a data-plane job.
    pub(crate) fn cancel_job_run(&self, job_id: &str) -> Result<CancelOutcome> {
        let dp = self.data()?;
        let st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now();
        let key = job_id.to_ascii_lowercase();
        // A job running on another node stops when that node next renews its lease.
        let running = st.running.get(&key);
        let out = self.store.write(|db| -> Result<CancelOutcome> {
            let Some(mut j) = db.job(job_id)? else {
                return Ok(CancelOutcome::NotCancellable);
            };
            match (j.phase.as_deref(), running) {
                (Some(QUEUED), _) => {
                    j.status = "Cancelled".into();
                    j.phase = Some(DONE.into());
                    j.end = Some(now);
                    j.body["status"] = json!("Cancelled");
                    j.body["endTime"] = json!(time::timestamp(now));
                    set_tasks(&mut j.body, |_| Some("Cancelled"), now);
                    db.put_job(&j)?;
                    Ok(CancelOutcome::Cancelled)
                }
                (Some(RUNNING), r) if j.status == "InProgress" => {
                    if let Some(r) = r {
                        r.cancel.cancel();
                    }
                    j.status = "Cancelling".into();
                    j.body["status"] = json!("Cancelling");
                    db.put_job(&j)?;
                    Ok(CancelOutcome::Cancelling)
                }
                _ => Ok(CancelOutcome::NotCancellable),
            }
        })?;
        Ok(out)
    }

    /// At start: a job left `running` under this node's lease (or a lapsed one, or none) was
    /// interrupted by a crash.
    fn recover_interrupted_jobs(&self) -> Result<()> {
        let node = self.data()?.node.clone();
        let now = self.wall_now();
        for (j, lease) in self.running_jobs_and_leases()? {
            let ours_or_lapsed = lease.as_ref().is_none_or(|l| l.node == node || l.expires < now);
            if ours_or_lapsed {
                self.settle_interrupted(&j, lease.map(|l| l.fence));
            }
        }
        Ok(())
    }

    /// Every `running` job with its lease (none for jobs from before leases).
    fn running_jobs_and_leases(&self) -> Result<Vec<(JobRow, Option<JobLease>)>> {
        let (jobs, leases) = self
            .store
            .read(|db| Ok::<_, crate::Error>((db.jobs_in_phase(RUNNING)?, db.job_leases()?)))?;
        let mut by_job: HashMap<String, JobLease> = leases.into_iter().map(|l| (l.job_key.clone(), l)).collect();
        Ok(jobs
            .into_iter()
            .map(|j| {
                let l = by_job.remove(&j.id.to_ascii_lowercase());
                (j, l)
            })
            .collect())
    }

    /// Settles a job its node no longer runs: takes its lease over (if it is still the one seen,
    /// `seen`: its fencing token, or `None` for no lease), then completes it from the snapshot it
    /// committed, or ends it `Failed` (or `Cancelled`, if a user had cancelled it).
    fn settle_interrupted(&self, job: &JobRow, seen: Option<i64>) {
        let Ok(dp) = self.data() else { return };
        let until = self.lease_until();
        let taken = self
            .store
            .write(|db| -> Result<Option<(JobRow, Option<JobLease>, i64)>> {
                let Some(j) = db.job(&job.id)? else { return Ok(None) };
                let lease = db.job_lease(&job.id)?;
                if j.phase.as_deref() != Some(RUNNING) || lease.as_ref().map(|l| l.fence) != seen {
                    return Ok(None); // renewed, ended or taken over meanwhile
                }
                let fence = db.lease_job(&j.id, &j.vault_key, &dp.node, until)?;
                Ok(Some((j, lease, fence)))
            });
        let (j, lease, fence) = match taken {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot take over an interrupted job");
                return;
            }
        };
        let node = lease.as_ref().map_or("", |l| l.node.as_str());
        let who = if node.is_empty() || node == dp.node {
            "The rsvault server stopped while this job ran (a crash or a kill).".to_string()
        } else {
            format!("The rsvault node '{node}' stopped while this job ran (a crash, a kill, or a lost connection to the store); another node settled the job.")
        };
        {
            let leftovers = self.remove_restore_leftovers(&j);
            let outcome = match self.recover_backup(&j) {
                Some(done) => Ok(done),
                // Cancelled before the crash: the user's cancel is what happened.
                None if j.status == "Cancelling" => Err(Failure::Cancelled),
                None if j.operation == "Restore" => Err(Failure::Failed(JobError::new(
                    500_001,
                    "The job was interrupted",
                    format!("{who} Every target file is either as it was before the restore or completely restored, never a mix: files are written under temporary names and renamed into place only when all of them are written and verified, and the temporary files the interruption left were removed."),
                    "Run the restore again.",
                ))),
                None => Err(Failure::Failed(JobError::new(
                    500_001,
                    "The job was interrupted",
                    format!("{who} No recovery point was created."),
                    "Run the operation again.",
                ))),
            };
            tracing::warn!(job = %j.id, node, recovered = outcome.is_ok(), leftovers, "settling an interrupted job");
            self.finish_job(&j, fence, outcome, false);
        }
    }

    /// The end of a lease taken or renewed now.
    fn lease_until(&self) -> DateTime<Utc> {
        let secs = self.data().map_or(30, |dp| dp.limits.lease_secs);
        self.wall_now() + chrono::Duration::seconds(secs as i64)
    }

    /// The lease keeper: every few seconds renews this node's leases (a job whose lease was taken
    /// over is cancelled here: its end will not be recorded), passes cancels requested on other nodes
    /// to the engine calls they target, reports the node, and settles other nodes' jobs whose leases
    /// lapsed. Ends when the job engine stops.
    fn keep_leases(&self) {
        let Ok(dp) = self.data() else { return };
        let tick = Duration::from_millis((dp.limits.lease_secs * 1000 / 6).clamp(200, 2000));
        let started = self.wall_now();
        loop {
            {
                let st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
                let (st, _) = dp
                    .queue
                    .wake
                    .wait_timeout_while(st, tick, |st| !st.stopping)
                    .unwrap_or_else(|p| p.into_inner());
                if st.stopping {
                    return;
                }
            }
            if let Err(e) = self.renew_leases(dp, started) {
                tracing::warn!(error = %e, "cannot renew this node's job leases");
            }
            match self.running_jobs_and_leases() {
                Ok(jobs) => {
                    let now = self.wall_now();
                    for (j, lease) in jobs {
                        let mine = {
                            let st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
                            st.running.contains_key(&j.id.to_ascii_lowercase())
                        };
                        if !mine && lease.as_ref().is_none_or(|l| l.expires < now) {
                            self.settle_interrupted(&j, lease.map(|l| l.fence));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the running jobs"),
            }
        }
    }

    fn renew_leases(&self, dp: &DataPlane, started: DateTime<Utc>) -> Result<()> {
        let mine: Vec<(String, i64, Cancel)> = {
            let st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running
                .iter()
                .map(|(k, r)| (k.clone(), r.fence, r.cancel.clone()))
                .collect()
        };
        let until = self.lease_until();
        let now = self.wall_now();
        let stop: Vec<(String, bool, Cancel)> = self.store.write(|db| -> Result<Vec<(String, bool, Cancel)>> {
            let mut stop = Vec::new();
            for (job, fence, cancel) in &mine {
                if !db.renew_job_lease(job, &dp.node, *fence, until)? {
                    stop.push((job.clone(), true, cancel.clone()));
                } else if db.job(job)?.is_some_and(|j| j.status == "Cancelling") {
                    stop.push((job.clone(), false, cancel.clone()));
                }
            }
            db.put_node(&NodeRow {
                node: dp.node.clone(),
                started,
                seen: now,
                info: json!({"version": env!("CARGO_PKG_VERSION"), "workers": dp.limits.workers, "runningJobs": mine.len()}),
            })?;
            Ok(stop)
        })?;
        for (job, lost, cancel) in stop {
            if lost && !cancel.is_cancelled() {
                tracing::warn!(job = %job, "this node lost the job's lease (another node settled it); stopping it");
            }
            cancel.cancel();
        }
        Ok(())
    }

    fn work_loop(&self) {
        let Ok(dp) = self.data() else { return };
        while let Some((job, fence, cancel)) = self.next_job(dp) {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.execute_job(&job, &cancel)))
                .unwrap_or_else(|_| {
                    Err(Failure::Failed(JobError::new(
                        500_002,
                        "Internal error",
                        "The job's worker failed unexpectedly.",
                        "Run the operation again; report the server log if it happens again.",
                    )))
                });
            {
                let mut st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
                let stopping = st.stopping;
                self.finish_job(&job, fence, outcome, stopping);
                st.running.remove(&job.id.to_ascii_lowercase());
                dp.queue.wake.notify_all();
            }
            rsvault_engine::release_free_memory();
        }
    }

    /// Waits for a job this worker may run; `None` when the engine stops.
    fn next_job(&self, dp: &DataPlane) -> Option<(JobRow, i64, Cancel)> {
        let mut st = dp.queue.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.stopping {
                return None;
            }
            match self.pick_job(dp) {
                Ok(Some((job, fence))) => {
                    let cancel = Cancel::new();
                    st.running.insert(
                        job.id.to_ascii_lowercase(),
                        Running {
                            cancel: cancel.clone(),
                            fence,
                        },
                    );
                    return Some((job, fence, cancel));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot read the job queue"),
            }
            st = dp
                .queue
                .wake
                .wait_timeout(st, Duration::from_secs(2))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Claims the oldest queued job whose vault runs fewer than the limit on all nodes: `running`,
    /// leased to this node, in one transaction. Returns it with its fencing token.
    fn pick_job(&self, dp: &DataPlane) -> Result<Option<(JobRow, i64)>> {
        let until = self.lease_until();
        self.store.write(|db| {
            let mut full: Vec<String> = Vec::new();
            for mut j in db.jobs_in_phase(QUEUED)? {
                if full.contains(&j.vault_key) {
                    continue;
                }
                if db.leased_jobs_in_vault(&j.vault_key)? >= dp.limits.per_vault {
                    full.push(j.vault_key.clone());
                    continue;
                }
                j.phase = Some(RUNNING.into());
                db.put_job(&j)?;
                let fence = db.lease_job(&j.id, &j.vault_key, &dp.node, until)?;
                return Ok(Some((j, fence)));
            }
            Ok(None)
        })
    }

    /// Records a job's end (or, at a graceful stop, puts it back in the queue).
    /// Only the holder of the job's lease with token `fence` records it; the lease ends with it.
    fn finish_job(&self, job: &JobRow, fence: i64, outcome: std::result::Result<Finished, Failure>, stopping: bool) {
        let now = self.now();
        let node = self.data().map(|dp| dp.node.clone()).unwrap_or_default();
        let res = self.store.write(|db| -> Result<()> {
            let Some(mut j) = db.job(&job.id)? else {
                return Ok(()); // its vault was deleted meanwhile
            };
            if j.phase.as_deref() != Some(RUNNING) {
                return Ok(());
            }
            match db.job_lease(&job.id)? {
                Some(l) if l.node == node && l.fence == fence => db.delete_job_lease(&job.id)?,
                other => {
                    tracing::warn!(job = %job.id, holder = ?other.map(|l| (l.node, l.fence)), "not recording the end of a job this node no longer holds (another node settled it)");
                    return Ok(());
                }
            }
            let user_cancelled = j.status == "Cancelling";
            let status = match outcome {
                Ok(f) => {
                    (f.commit)(db)?;
                    if let Some(bag) = j
                        .body
                        .pointer_mut("/extendedInfo/propertyBag")
                        .and_then(Value::as_object_mut)
                    {
                        bag.extend(f.bag);
                    }
                    if !f.warnings.is_empty() {
                        j.body["extendedInfo"]["dynamicErrorMessage"] = json!(f.warnings.join(" "));
                    }
                    set_tasks(&mut j.body, |_| Some("Completed"), now);
                    j.body["extendedInfo"]["progressPercentage"] = json!(100.0);
                    j.body["extendedInfo"]["estimatedRemainingDuration"] = json!("PT0S");
                    f.status
                }
                Err(Failure::Cancelled) if stopping && !user_cancelled => {
                    j.phase = Some(QUEUED.into());
                    set_tasks(&mut j.body, |_| Some("NotStarted"), now);
                    strip_task_times(&mut j.body);
                    db.put_job(&j)?;
                    return Ok(());
                }
                Err(Failure::Cancelled) => {
                    set_tasks(
                        &mut j.body,
                        |s| (s == "InProgress" || s == "NotStarted").then_some("Cancelled"),
                        now,
                    );
                    "Cancelled"
                }
                Err(Failure::Failed(e)) => {
                    tracing::warn!(job = %j.id, operation = %j.operation, code = e.code, title = %e.title, error = %e.message, "job failed");
                    set_tasks(
                        &mut j.body,
                        |s| match s {
                            "InProgress" => Some("Failed"),
                            "NotStarted" => Some("Cancelled"),
                            _ => None,
                        },
                        now,
                    );
                    j.body["errorDetails"] = json!([{
                        "errorCode": e.code,
                        "errorTitle": e.title,
                        "errorString": e.message,
                        "recommendations": e.recommendations,
                    }]);
                    "Failed"
                }
            };
            j.status = status.into();
            j.phase = Some(DONE.into());
            j.end = Some(now);
            j.body["status"] = json!(status);
            j.body["endTime"] = json!(time::timestamp(now));
            self.after_job(db, &j)?;
            db.put_job(&j)?;
            Ok(())
        });
        if let Err(e) = res {
            tracing::error!(job = %job.id, error = %e, "cannot record the end of a job");
        }
    }

    /// Progress of a running job into its row: task states, `progressPercentage`,
    /// `estimatedRemainingDuration`, and the bag's transferred bytes.
    fn record_progress(&self, job_id: &str, tasks: &[TaskSpec], current: usize, done: u64, total: u64) {
        let now = self.now();
        let pct = if total == 0 {
            0.0
        } else {
            (done.min(total) as f64 * 100.0 / total as f64).floor()
        };
        let res = self.store.write(|db| {
            let Some(mut j) = db.job(job_id)? else { return Ok(()) };
            if j.phase.as_deref() != Some(RUNNING) {
                return Ok(());
            }
            let Some(list) = j
                .body
                .pointer_mut("/extendedInfo/tasksList")
                .and_then(Value::as_array_mut)
            else {
                return Ok(());
            };
            let mut overall = 0.0;
            let weights: u32 = tasks.iter().map(|t| t.2).sum::<u32>().max(1);
            for (i, t) in list.iter_mut().enumerate() {
                let status = t["status"].as_str().unwrap_or_default().to_string();
                if i < current && (status == "NotStarted" || status == "InProgress") {
                    if t.get("startTime").is_none() {
                        t["startTime"] = json!(time::timestamp(now));
                    }
                    t["status"] = json!("Completed");
                    t["endTime"] = json!(time::timestamp(now));
                    t["progressPercentage"] = json!(100.0);
                } else if i == current {
                    if status == "NotStarted" {
                        t["status"] = json!("InProgress");
                        t["startTime"] = json!(time::timestamp(now));
                    }
                    t["progressPercentage"] = json!(pct);
                    if total > 0 {
                        t["taskExecutionDetails"] = json!(format!(
                            "{} MB / {} MB Transferred",
                            done / (1 << 20),
                            total / (1 << 20)
                        ));
                    }
                }
                let p = t["progressPercentage"].as_f64().unwrap_or(0.0);
                overall += p * f64::from(tasks.get(i).map_or(0, |x| x.2)) / f64::from(weights);
            }
            let overall = overall.floor();
            j.body["extendedInfo"]["progressPercentage"] = json!(overall);
            if overall > 0.0 {
                let elapsed = (now - j.start).num_milliseconds().max(0) as f64;
                let left = elapsed * (100.0 - overall) / overall;
                j.body["extendedInfo"]["estimatedRemainingDuration"] =
                    json!(time::iso_duration(chrono::Duration::milliseconds(left as i64)));
            }
            if tasks.get(current).is_some_and(|t| t.1 == Task::Transfer) {
                if let Some(bag) = j
                    .body
                    .pointer_mut("/extendedInfo/propertyBag")
                    .and_then(Value::as_object_mut)
                {
                    if bag.contains_key("Data Transferred (in MB)") {
                        bag.insert("Data Transferred (in MB)".into(), json!((done / (1 << 20)).to_string()));
                    }
                }
            }
            db.put_job(&j)?;
            Ok::<_, crate::Error>(())
        });
        if let Err(e) = res {
            tracing::warn!(job = %job_id, error = %e, "cannot record job progress");
        }
    }
}

/// Sets each task's status by `f` (given its current status; `None` keeps it), stamping end times.
fn set_tasks(body: &mut Value, f: impl Fn(&str) -> Option<&'static str>, now: DateTime<Utc>) {
    if let Some(list) = body
        .pointer_mut("/extendedInfo/tasksList")
        .and_then(Value::as_array_mut)
    {
        for t in list {
            let cur = t["status"].as_str().unwrap_or_default().to_string();
            if cur == "Completed" || cur == "Failed" || cur == "Cancelled" {
                continue;
            }
            if let Some(new) = f(&cur) {
                if new == "Completed" {
                    if t.get("startTime").is_none() {
                        t["startTime"] = json!(time::timestamp(now));
                    }
                    t["progressPercentage"] = json!(100.0);
                }
                if new != "NotStarted" && t.get("startTime").is_some() {
                    t["endTime"] = json!(time::timestamp(now));
                }
                t["status"] = json!(new);
            }
        }
    }
}

fn strip_task_times(body: &mut Value) {
    if let Some(list) = body
        .pointer_mut("/extendedInfo/tasksList")
        .and_then(Value::as_array_mut)
    {
        for t in list.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["startTime", "endTime", "progressPercentage", "taskExecutionDetails"] {
                t.remove(k);
            }
        }
    }
}

/// The engine's progress sink for one job: forwards to the job row at every task change, when a
/// task ends, and at most once a second otherwise.
///
/// The engine may report two tasks at once (a restore writes and verifies in one pipeline, each
/// with its own counters). The task shown is the first one reported that is still running (not
/// ended, its known total not reached), so the bytes of a transfer stay on the transfer task until
/// it ends; moving on records the earlier task's last report first.
pub(crate) struct JobProgress<'a> {
    control: &'a Control,
    job_id: String,
    tasks: &'a [TaskSpec],
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    /// The task the job row shows; tasks only move forward.
    current: Option<usize>,
    last: Option<Instant>,
    /// Each task's latest report (done, total).
    latest: Vec<Option<(u64, u64)>>,
    /// Tasks the engine said have ended.
    ended: Vec<bool>,
}

impl ProgressState {
    fn new(tasks: usize) -> Self {
        ProgressState {
            latest: vec![None; tasks],
            ended: vec![false; tasks],
            ..ProgressState::default()
        }
    }

    /// The task to show: the first reported one still running (not ended, a known total not
    /// reached), else the last one reported.
    fn shown(&self) -> Option<usize> {
        let reported = || self.latest.iter().enumerate().filter_map(|(i, l)| l.map(|l| (i, l)));
        reported()
            .find(|&(i, (done, total))| !self.ended[i] && total > 0 && done < total)
            .or_else(|| reported().next_back())
            .map(|(i, _)| i)
    }
}

impl<'a> JobProgress<'a> {
    pub fn new(control: &'a Control, job_id: &str, tasks: &'a [TaskSpec]) -> Self {
        JobProgress {
            control,
            job_id: job_id.to_string(),
            tasks,
            state: Mutex::new(ProgressState::new(tasks.len())),
        }
    }

    /// Records what `change` did to the state, if the task shown changed, a task ended or a
    /// second has passed.
    fn apply(&self, task: Task, change: impl FnOnce(&mut ProgressState, usize)) {
        let Some(idx) = self.tasks.iter().position(|t| t.1 == task) else {
            return;
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut st, idx);
        if st.current.is_some_and(|c| idx < c) {
            // A late report of a task already passed (its reporter may not have run before the
            // next task's did): its final count still belongs on it; anything else is ignored.
            let last = st.latest[idx].filter(|&(d, t)| st.ended[idx] || (t > 0 && d >= t));
            if let Some((d, t)) = last {
                self.control.record_progress(&self.job_id, self.tasks, idx, d, t);
            }
            return;
        }
        let Some(shown) = st.shown() else { return };
        // Tasks only move forward: a late report of an earlier task is ignored.
        if st.current.is_some_and(|c| shown < c) {
            return;
        }
        let Some((done, total)) = st.latest[shown] else { return };
        let changed = st.current != Some(shown);
        if changed {
            if let Some((c, (d, t))) = st.current.and_then(|c| Some((c, st.latest[c]?))) {
                self.control.record_progress(&self.job_id, self.tasks, c, d, t);
            }
        }
        let due = st.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if changed || due || (total > 0 && done >= total) {
            st.current = Some(shown);
            st.last = Some(Instant::now());
            self.control
                .record_progress(&self.job_id, self.tasks, shown, done, total);
        }
    }
}

impl Progress for JobProgress<'_> {
    fn update(&self, task: Task, done: u64, total: u64) {
        self.apply(task, |st, i| st.latest[i] = Some((done, total)));
    }

    fn finished(&self, task: Task) {
        self.apply(task, |st, i| st.ended[i] = true);
    }
}

#[cfg(test)]
mod progress_tests {
    use super::ProgressState;

    /// Issue 16: a restore reports its transfer and its verification at once; the verification's
    /// reports hid the transfer (0 MB / 256 MB on the transfer task, every byte under "Verify").
    /// The transfer task is shown until it ends.
    #[test]
    fn a_task_reported_alongside_a_later_one_is_shown_until_it_ends() {
        const MB: u64 = 1 << 20;
        let mut st = ProgressState::new(2);
        for (task, done, total, shown) in [
            (0, 0, 256 * MB, 0),
            (1, 0, 256 * MB, 0),
            (1, 64 * MB, 256 * MB, 0),
            (0, 128 * MB, 256 * MB, 0),
            (1, 256 * MB, 256 * MB, 0),
            (0, 256 * MB, 256 * MB, 1),
        ] {
            st.latest[task] = Some((done, total));
            assert_eq!(st.shown(), Some(shown), "after task {task} at {done}");
        }
        // A task whose total is not known (0) does not hold back the next one, nor does one that
        // ended short of its total (a share restore that skipped files).
        let mut st = ProgressState::new(2);
        st.latest = vec![Some((0, 0)), Some((1, 2))];
        assert_eq!(st.shown(), Some(1));
        st.latest = vec![Some((5, 10)), Some((1, 2))];
        assert_eq!(st.shown(), Some(0));
        st.ended[0] = true;
        assert_eq!(st.shown(), Some(1));
    }
}
