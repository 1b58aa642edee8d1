//! The handler contract: what the job engine asks of the domain whose jobs it runs.
//!
//! The engine claims, leases, renews, cancels and ends jobs; what a job *does* is the handler's
//! ([`JobHandler`], implemented by the backup domain in `rsvault_control`): carry it out
//! ([`JobHandler::execute`], given its cancel flag and a progress sink in a [`Run`]), settle one
//! whose node died ([`JobHandler::settle`]: complete it from what it committed, or nothing), the
//! domain's writes in the transaction that records a job's end ([`Finished::commit`] for one that
//! ended well, [`JobHandler::after_job`] for every end), clean up after an interrupted one
//! ([`JobHandler::clean_up`]), and the clocks (`now` for the stamps users see, `wall_now` for
//! leases, which measure how long a node has been silent).

use crate::phase::JobStatus;
use crate::progress::{JobProgress, TaskSpec};
use crate::store::JobStore;
use crate::Result;
use chrono::{DateTime, Utc};
use rsvault_engine::Cancel;
use rsvault_store::{Db, JobRow};
use serde_json::{Map, Value};

/// Writes made in the transaction that records a job's end.
pub type Commit = Box<dyn FnOnce(&Db) -> Result<()> + Send>;

/// A job's work that ended well.
pub struct Finished {
    /// [`JobStatus::Completed`] or [`JobStatus::CompletedWithWarnings`].
    pub status: JobStatus,
    /// Entries added to the job's `propertyBag`.
    pub bag: Map<String, Value>,
    /// Warnings shown in the job (`dynamicErrorMessage`).
    pub warnings: Vec<String>,
    /// Writes made in the transaction that records the job's end.
    pub commit: Commit,
}

impl Finished {
    /// An end with nothing more to write.
    pub fn new(status: JobStatus) -> Finished {
        Finished {
            status,
            bag: Map::new(),
            warnings: vec![],
            commit: Box::new(|_| Ok(())),
        }
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("status", &self.status)
            .field("bag", &self.bag)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Why a job's work did not end well.
#[derive(Debug)]
pub enum Failure {
    /// Its cancel flag was set (by a user, or by a graceful stop).
    Cancelled,
    /// It failed; the job shows this error.
    Failed(JobError),
}

/// An error as jobs show it (`errorDetails`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
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

/// What a running job is given: its cancel flag and where its progress goes.
pub struct Run<'a> {
    job_id: &'a str,
    cancel: &'a Cancel,
    store: &'a dyn JobStore,
    handler: &'a dyn JobHandler,
}

impl<'a> Run<'a> {
    pub fn new(job_id: &'a str, cancel: &'a Cancel, store: &'a dyn JobStore, handler: &'a dyn JobHandler) -> Self {
        Run {
            job_id,
            cancel,
            store,
            handler,
        }
    }

    /// Set when the job must stop (a user's cancel, a graceful stop, a lost lease).
    pub fn cancel(&self) -> &'a Cancel {
        self.cancel
    }

    /// The engine's progress sink for this job, whose tasks are `tasks` (as [`crate::new_tasks`]
    /// listed them when it was queued).
    pub fn progress(&self, tasks: &'a [TaskSpec]) -> JobProgress<'a> {
        JobProgress::new(self.store, self.handler, self.job_id, tasks)
    }
}

/// The domain side of the job engine.
pub trait JobHandler: Send + Sync + 'static {
    /// Carries out a job (on a worker thread). An engine call that sees `run.cancel()` set stops
    /// and commits nothing; the job then ends [`Failure::Cancelled`].
    fn execute(&self, job: &JobRow, run: &Run<'_>) -> std::result::Result<Finished, Failure>;

    /// A job whose node stopped while it ran: its completion from what it committed before (a
    /// backup whose snapshot the vault holds), or `None`.
    fn settle(&self, job: &JobRow) -> Option<Finished>;

    /// The error an interrupted job that [`JobHandler::settle`] could not complete shows; `who`
    /// is a sentence saying what stopped.
    fn interrupted(&self, job: &JobRow, who: &str) -> JobError;

    /// Removes what an interrupted job left behind (a restore's temporary files); how many.
    fn clean_up(&self, job: &JobRow) -> usize;

    /// The domain's writes in the transaction that records a job's end (after the job's row got
    /// its end status `status`, before it is written).
    fn after_job(&self, db: &Db, job: &JobRow, status: JobStatus) -> Result<()>;

    /// The time of the stamps users see (a test clock under `--test-clock`).
    fn now(&self) -> DateTime<Utc>;

    /// The machine's real time: leases measure how long a node has been silent.
    fn wall_now(&self) -> DateTime<Utc>;
}
