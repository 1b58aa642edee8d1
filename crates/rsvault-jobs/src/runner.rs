//! The job engine: the queue ([`Jobs`]) and the threads that run it ([`JobRunner`]).
//!
//! Life of a job: the request that accepts it writes the job row (`status: InProgress`,
//! phase [`Phase::Queued`](crate::Phase), `work`: what to do, as JSON) in the same transaction as
//! its operation record, and wakes the queue ([`Jobs::wake`]). A job worker ([`JobLimits::workers`]
//! of them) claims the oldest queued job whose vault runs fewer than [`JobLimits::per_vault`] jobs
//! ([`JobStore::claim`]) and carries it out through the [`JobHandler`]. Progress goes into the job
//! row ([`crate::progress`]), so `GET backupJobs/{job}` reads it from the store like any job. The
//! end (`Completed`, `CompletedWithWarnings`, `Failed`, `Cancelled`) is written in one transaction
//! with what the job produced ([`Finished::commit`], [`JobHandler::after_job`]).
//!
//! * **Several nodes** share one store (PostgreSQL) and one queue. A claim is one store transaction
//!   (writes are serialised) that counts the vault's leased jobs on every node and writes the job's
//!   **lease**: this node's name, a fencing token greater than every earlier one, and a wall-clock
//!   expiry ([`JobLimits::lease_secs`]). The node's lease keeper renews its leases every `lease/6`
//!   seconds (at most 2); a job's end is recorded only by the holder of its current token.
//! * **Cancel**: a queued job is cancelled at once; a running one goes `Cancelling` (from any node)
//!   and its engine call stops at the next chunk, committing nothing (the engine's guarantee), then
//!   `Cancelled`. The node running it sees `Cancelling` at its next renewal.
//! * **A node that dies**: any node's lease keeper settles a job whose lease lapsed. It takes the
//!   lease over (a new token fences the old holder out), then settles the job as a restart does.
//! * **Restart**: jobs still queued run after a restart. A job found running whose lease is this
//!   node's or lapsed was interrupted by a crash: the handler completes it from what it committed
//!   ([`JobHandler::settle`]), else it ends `Failed`, saying why ([`JobHandler::interrupted`]).
//!   Other nodes' live jobs are left alone. A graceful stop ([`JobRunner::stop`]) cancels this
//!   node's running engine calls (committing nothing) and puts their jobs back in the queue, so
//!   they run again (on any node).
//!
//! *Architecture Invariant*: a job leaves `running` only in the transaction that records its end
//! (or puts it back in the queue at a graceful stop), and only under its current lease (node and
//! fencing token); besides the worker running it, only cancel writes a running job's status
//! (`Cancelling`), and progress writes only its `extendedInfo`. Lease times are wall-clock times
//! ([`JobHandler::wall_now`]), never the test clock. Lock order: the queue's mutex, then the store's.

use crate::handler::{Failure, Finished, JobError, JobHandler, Run};
use crate::phase::JobStatus;
use crate::progress::set_tasks;
use crate::store::{Finish, JobStore, Renewal};
use crate::worker::{Activity, Worker, WorkerState, Workers};
use crate::Result;
use chrono::{DateTime, Utc};
use rsvault_core::time;
use rsvault_engine::Cancel;
use rsvault_store::{Db, JobRow};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How many data-plane jobs run at once, and how long their leases last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Jobs running at once on this node.
    pub workers: usize,
    /// Jobs running at once in one vault, counted over every node of the store; the others wait
    /// in the queue.
    pub per_vault: usize,
    /// How long a running job's lease lasts unless its node renews it (a few times per lease); a
    /// job whose lease lapsed is settled by any node.
    pub lease_secs: u64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            workers: 2,
            per_vault: 1,
            lease_secs: 30,
        }
    }
}

impl JobLimits {
    /// The limits with every value in its range (one worker, one job per vault, a 2 s lease at least).
    pub fn normalized(self) -> JobLimits {
        JobLimits {
            workers: self.workers.max(1),
            per_vault: self.per_vault.max(1),
            lease_secs: self.lease_secs.max(2),
        }
    }
}

/// What cancelling a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now `Cancelled`.
    Cancelled,
    /// It runs and is now `Cancelling`.
    Cancelling,
    /// It already ended (or is already being cancelled).
    NotCancellable,
}

#[derive(Default)]
struct QueueState {
    /// The jobs this node runs, by lower-cased id.
    running: HashMap<String, Running>,
    stopping: bool,
    /// Counts wakes, so a worker that found nothing does not sleep through one that came since.
    wakes: u64,
}

struct Running {
    name: String,
    cancel: Cancel,
    /// The fencing token of this node's lease on the job.
    fence: i64,
}

/// A node's job queue: the store's queue, this node's name and limits, and the in-memory side
/// (which jobs run here, their cancel flags, the workers' wake-up).
pub struct Jobs {
    store: Arc<dyn JobStore>,
    node: String,
    limits: JobLimits,
    state: Mutex<QueueState>,
    wake: Condvar,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("node", &self.node)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Jobs {
    /// The queue of node `node` over `store`.
    pub fn new(store: Arc<dyn JobStore>, node: &str, limits: JobLimits) -> Arc<Jobs> {
        Arc::new(Jobs {
            store,
            node: node.to_string(),
            limits: limits.normalized(),
            state: Mutex::default(),
            wake: Condvar::new(),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn limits(&self) -> JobLimits {
        self.limits
    }

    pub fn store(&self) -> &dyn JobStore {
        &*self.store
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits at most `timeout` on the queue's wake-up while `waiting` holds: `Done` once the job
    /// engine stops, else `Busy` (a worker's next round).
    fn wait(&self, timeout: Duration, waiting: impl Fn(&QueueState) -> bool) -> WorkerState {
        let (st, _) = self
            .wake
            .wait_timeout_while(self.lock(), timeout, |st| !st.stopping && waiting(st))
            .unwrap_or_else(|p| p.into_inner());
        if st.stopping {
            WorkerState::Done
        } else {
            WorkerState::Busy
        }
    }

    /// Wakes the workers (a job was queued).
    pub fn wake(&self) {
        let mut st = self.lock();
        st.wakes = st.wakes.wrapping_add(1);
        self.wake.notify_all();
    }

    /// True once this node's job engine is stopping (a graceful shutdown).
    pub fn stopping(&self) -> bool {
        self.lock().stopping
    }

    /// The names of the jobs this node runs now.
    pub fn running_here(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().running.values().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    /// A user's cancel (at `now`): a queued job is cancelled at once; a running one goes
    /// `Cancelling`, and stops at once if it runs on this node (at its node's next renewal otherwise).
    pub fn cancel(&self, job_id: &str, now: DateTime<Utc>) -> Result<CancelOutcome> {
        let st = self.lock();
        let out = self.store.request_cancel(job_id, now)?;
        if out == CancelOutcome::Cancelling {
            if let Some(r) = st.running.get(&job_id.to_ascii_lowercase()) {
                r.cancel.cancel();
            }
        }
        Ok(out)
    }

    /// The end of a lease taken or renewed at `wall_now`.
    fn lease_until(&self, wall_now: DateTime<Utc>) -> DateTime<Utc> {
        wall_now + chrono::Duration::seconds(self.limits.lease_secs as i64)
    }
}

/// The running job engine of a node: its job workers and its lease keeper.
pub struct JobRunner {
    jobs: Arc<Jobs>,
    threads: Vec<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl JobRunner {
    /// Settles the jobs a crash of this node interrupted (and lapsed ones), then starts the lease
    /// keeper and the job workers on `workers`' board.
    pub fn start(jobs: Arc<Jobs>, handler: Arc<dyn JobHandler>, workers: &Workers) -> Result<JobRunner> {
        let engine = Engine {
            jobs: jobs.clone(),
            handler,
        };
        engine.recover_interrupted()?;
        let keeper = workers.spawn(LeaseKeeper {
            engine: engine.clone(),
            started: false,
        })?;
        let threads = (0..jobs.limits.workers)
            .map(|i| {
                workers.spawn(JobWorker {
                    engine: engine.clone(),
                    index: i,
                    claimed: None,
                    current: None,
                    seen_wakes: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(JobRunner {
            jobs,
            threads,
            keeper: Some(keeper),
        })
    }

    /// Stops the workers: running engine calls are cancelled and their jobs go back to the queue.
    pub fn stop(self) {
        {
            let mut st = self.jobs.lock();
            st.stopping = true;
            for r in st.running.values() {
                r.cancel.cancel();
            }
            self.jobs.wake.notify_all();
        }
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(k) = self.keeper {
            let _ = k.join();
        }
    }
}

/// What the workers and the keeper share: the queue and the handler.
#[derive(Clone)]
struct Engine {
    jobs: Arc<Jobs>,
    handler: Arc<dyn JobHandler>,
}

impl Engine {
    /// At start: a job left running under this node's lease (or a lapsed one, or none) was
    /// interrupted by a crash.
    fn recover_interrupted(&self) -> Result<()> {
        let now = self.handler.wall_now();
        for (j, lease) in self.jobs.store.running()? {
            let ours_or_lapsed = lease
                .as_ref()
                .is_none_or(|l| l.node == self.jobs.node || l.expires < now);
            if ours_or_lapsed {
                self.settle_interrupted(&j, lease.map(|l| l.fence));
            }
        }
        Ok(())
    }

    /// Settles a job its node no longer runs: takes its lease over (if it is still the one seen,
    /// `seen`: its fencing token, or `None` for no lease), then completes it from what it committed,
    /// or ends it `Failed` (or `Cancelled`, if a user had cancelled it).
    fn settle_interrupted(&self, job: &JobRow, seen: Option<i64>) {
        let (jobs, handler) = (&self.jobs, &self.handler);
        let until = jobs.lease_until(handler.wall_now());
        let t = match jobs.store.take_over(&job.id, seen, &jobs.node, until) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot take over an interrupted job");
                return;
            }
        };
        let j = t.job;
        let node = t.previous.as_ref().map_or("", |l| l.node.as_str());
        let who = if node.is_empty() || node == jobs.node {
            "The rsvault server stopped while this job ran (a crash or a kill).".to_string()
        } else {
            format!("The rsvault node '{node}' stopped while this job ran (a crash, a kill, or a lost connection to the store); another node settled the job.")
        };
        let leftovers = handler.clean_up(&j);
        let outcome = match handler.settle(&j) {
            Some(done) => Ok(done),
            // Cancelled before the crash: the user's cancel is what happened.
            None if JobStatus::of(&j) == Some(JobStatus::Cancelling) => Err(Failure::Cancelled),
            None => Err(Failure::Failed(handler.interrupted(&j, &who))),
        };
        tracing::warn!(job = %j.id, node, recovered = outcome.is_ok(), leftovers, "settling an interrupted job");
        self.finish_job(&j, t.fence, outcome, false);
    }

    /// Records a job's end (or, at a graceful stop, puts it back in the queue).
    /// Only the holder of the job's lease with token `fence` records it; the lease ends with it.
    fn finish_job(&self, job: &JobRow, fence: i64, outcome: std::result::Result<Finished, Failure>, stopping: bool) {
        let (jobs, handler) = (&self.jobs, &self.handler);
        let now = handler.now();
        if stopping && matches!(outcome, Err(Failure::Cancelled)) {
            match jobs.store.requeue(&job.id, &jobs.node, fence, now) {
                Ok(true) => return,
                Ok(false) => {} // cancelled by a user, ended, or no longer ours: recorded below
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "cannot put a job back in the queue");
                    return;
                }
            }
        }
        let mut outcome = Some(outcome);
        let mut end = |db: &Db, j: &mut JobRow| -> Result<()> {
            let Some(outcome) = outcome.take() else {
                return Ok(());
            };
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
                Err(Failure::Cancelled) => {
                    set_tasks(
                        &mut j.body,
                        |s| (s == "InProgress" || s == "NotStarted").then_some("Cancelled"),
                        now,
                    );
                    JobStatus::Cancelled
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
                    JobStatus::Failed
                }
            };
            status.set(j);
            j.end = Some(now);
            j.body["endTime"] = json!(time::timestamp(now));
            handler.after_job(db, j, status)
        };
        match jobs.store.finish(&job.id, &jobs.node, fence, &mut end) {
            Ok(Finish::Recorded | Finish::Gone) => {}
            Ok(Finish::NotHeld(holder)) => {
                tracing::warn!(job = %job.id, ?holder, "not recording the end of a job this node no longer holds (another node settled it)");
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record the end of a job"),
        }
    }
}

/// A job worker: claims a job (one round), then runs it to its end (the next round).
struct JobWorker {
    engine: Engine,
    index: usize,
    claimed: Option<(JobRow, i64, Cancel)>,
    /// The job it runs now (for its status).
    current: Option<String>,
    seen_wakes: u64,
}

impl JobWorker {
    fn run(&mut self, job: JobRow, fence: i64, cancel: Cancel) {
        let Engine { jobs, handler } = &self.engine;
        let outcome = {
            let run = Run::new(&job.id, &cancel, &*jobs.store, &**handler);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.execute(&job, &run))).unwrap_or_else(
                |_| {
                    Err(Failure::Failed(JobError::new(
                        500_002,
                        "Internal error",
                        "The job's worker failed unexpectedly.",
                        "Run the operation again; report the server log if it happens again.",
                    )))
                },
            )
        };
        {
            let mut st = jobs.lock();
            let stopping = st.stopping;
            self.engine.finish_job(&job, fence, outcome, stopping);
            st.running.remove(&job.id.to_ascii_lowercase());
            // A vault's place is free: workers waiting for it look again.
            st.wakes = st.wakes.wrapping_add(1);
            jobs.wake.notify_all();
        }
        rsvault_engine::release_free_memory();
    }
}

impl Worker for JobWorker {
    fn name(&self) -> String {
        format!("job-{}", self.index)
    }

    fn work(&mut self) -> Result<WorkerState> {
        if let Some((job, fence, cancel)) = self.claimed.take() {
            self.run(job, fence, cancel);
            self.current = None;
            return Ok(WorkerState::Busy);
        }
        let jobs = self.engine.jobs.clone();
        let mut st = jobs.lock();
        if st.stopping {
            return Ok(WorkerState::Done);
        }
        self.seen_wakes = st.wakes;
        let until = jobs.lease_until(self.engine.handler.wall_now());
        let Some(c) = jobs.store.claim(&jobs.node, jobs.limits.per_vault, until)? else {
            return Ok(WorkerState::Idle);
        };
        let cancel = Cancel::new();
        st.running.insert(
            c.job.id.to_ascii_lowercase(),
            Running {
                name: c.job.name.clone(),
                cancel: cancel.clone(),
                fence: c.fence,
            },
        );
        self.current = Some(c.job.name.clone());
        self.claimed = Some((c.job, c.fence, cancel));
        Ok(WorkerState::Busy)
    }

    fn wait_for_work(&mut self) -> WorkerState {
        let seen = self.seen_wakes;
        self.engine.jobs.wait(Duration::from_secs(2), |st| st.wakes == seen)
    }

    fn status(&self) -> Activity {
        Activity {
            jobs_running: Some(usize::from(self.current.is_some())),
            detail: self.current.clone(),
        }
    }
}

/// The lease keeper: every few seconds renews this node's leases (a job whose lease was taken over
/// is cancelled here: its end will not be recorded), passes cancels requested on other nodes to the
/// engine calls they target, and settles other nodes' jobs whose leases lapsed. Ends when the job
/// engine stops.
struct LeaseKeeper {
    engine: Engine,
    /// Whether it has waited once (it renews nothing before a first tick).
    started: bool,
}

impl LeaseKeeper {
    fn renew(&self) -> Result<()> {
        let jobs = &self.engine.jobs;
        let mine: Vec<(String, i64, Cancel)> = jobs
            .lock()
            .running
            .iter()
            .map(|(k, r)| (k.clone(), r.fence, r.cancel.clone()))
            .collect();
        let held: Vec<(String, i64)> = mine.iter().map(|(k, f, _)| (k.clone(), *f)).collect();
        let until = jobs.lease_until(self.engine.handler.wall_now());
        let found = jobs.store.renew(&jobs.node, &held, until)?;
        for ((job, renewal), (_, _, cancel)) in found.into_iter().zip(&mine) {
            match renewal {
                Renewal::Held => {}
                Renewal::CancelRequested => cancel.cancel(),
                Renewal::Lost => {
                    if !cancel.is_cancelled() {
                        tracing::warn!(job = %job, "this node lost the job's lease (another node settled it); stopping it");
                    }
                    cancel.cancel();
                }
            }
        }
        Ok(())
    }

    fn settle_lapsed(&self) -> Result<()> {
        let jobs = &self.engine.jobs;
        let now = self.engine.handler.wall_now();
        for (j, lease) in jobs.store.lapsed(now)? {
            let mine = jobs.lock().running.contains_key(&j.id.to_ascii_lowercase());
            if !mine {
                self.engine.settle_interrupted(&j, lease.map(|l| l.fence));
            }
        }
        Ok(())
    }
}

impl Worker for LeaseKeeper {
    fn name(&self) -> String {
        "job-leases".into()
    }

    fn work(&mut self) -> Result<WorkerState> {
        if !self.started {
            // Start-up settled what there was; the first renewal comes a tick later.
            self.started = true;
            return Ok(WorkerState::Idle);
        }
        let renewed = self.renew();
        if let Err(e) = &renewed {
            tracing::warn!(error = %e, "cannot renew this node's job leases");
        }
        self.settle_lapsed()?;
        renewed.map(|()| WorkerState::Idle)
    }

    fn wait_for_work(&mut self) -> WorkerState {
        let jobs = &self.engine.jobs;
        let tick = Duration::from_millis((jobs.limits.lease_secs * 1000 / 6).clamp(200, 2000));
        jobs.wait(tick, |_| true)
    }

    fn status(&self) -> Activity {
        Activity {
            jobs_running: Some(self.engine.jobs.lock().running.len()),
            detail: None,
        }
    }
}
