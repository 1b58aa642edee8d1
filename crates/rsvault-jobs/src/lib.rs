//! rsvault's job engine: data-plane jobs (backups, restores) run here, off the request path, on
//! one node or on several sharing a store.
//!
//! The engine knows nothing of backups. It moves jobs through their [`Phase`]s in the store under
//! leases ([`store::JobStore`], implemented once over [`rsvault_store::Store`]), runs them on worker
//! threads ([`JobRunner`]) through a [`JobHandler`] the backup domain implements
//! (`rsvault_control`'s `Control`), records their progress ([`progress`]) and their end, and
//! reports what its threads do ([`worker`]).
//!
//! Modules: [`phase`] (typed [`Phase`] and [`JobStatus`], converted to the store's text once),
//! [`store`] (the [`JobStore`] contract: claim, renew, cancel, take over, re-queue, finish),
//! [`handler`] (the [`JobHandler`] contract, [`Finished`], [`Failure`], [`JobError`]), [`progress`]
//! (a job's tasks and progress in its row), [`runner`] ([`Jobs`]: the queue and its limits;
//! [`JobRunner`]: the workers and the lease keeper), [`worker`] (the [`Worker`] shape, the status
//! board [`Workers`], and the node's report into the store's `nodes` table).

pub mod handler;
pub mod phase;
pub mod progress;
pub mod runner;
pub mod store;
pub mod worker;

pub use handler::{Commit, Failure, Finished, JobError, JobHandler, Run};
pub use phase::{JobStatus, Phase};
pub use progress::{new_tasks, JobProgress, TaskSpec};
pub use rsvault_core::{Error, Result};
pub use runner::{CancelOutcome, JobLimits, JobRunner, Jobs};
pub use store::{active_jobs, JobStore};
pub use worker::{Worker, WorkerState, WorkerStatus, Workers};
