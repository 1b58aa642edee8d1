//! The backup domain's side of the job engine (`rsvault_jobs`): [`Control`] is the
//! [`JobHandler`] whose jobs the engine runs.
//!
//! The engine claims, leases, renews, cancels and ends jobs; what a job does is here and in
//! [`crate::backup::recovery`]: carry out a backup or restore (`Control::execute_job`), settle one
//! whose node died (a backup whose snapshot the vault already holds completes from it:
//! `Control::recover_backup`), the writes made in the transaction that ends a job (the recovery
//! point row through [`rsvault_jobs::Finished::commit`], the item's last-backup fields and the
//! vault's garbage-collection mark in `Control::after_job`), and the clean-up of an interrupted
//! restore (`Control::remove_restore_leftovers`). The control plane reaches this node's queue
//! ([`rsvault_jobs::Jobs`], made with the data plane) to wake it when it queues a job, and to cancel.

use crate::{Control, Error, Result};
use chrono::{DateTime, Utc};
use rsvault_jobs::{CancelOutcome, Failure, Finished, JobError, JobHandler, JobStatus, Jobs, Run};
use rsvault_store::{Db, JobRow};
use std::sync::Arc;

impl JobHandler for Control {
    fn execute(&self, job: &JobRow, run: &Run<'_>) -> std::result::Result<Finished, Failure> {
        self.execute_job(job, run)
    }

    fn settle(&self, job: &JobRow) -> Option<Finished> {
        self.recover_backup(job)
    }

    fn interrupted(&self, job: &JobRow, who: &str) -> JobError {
        if job.operation == "Restore" {
            JobError::new(
                500_001,
                "The job was interrupted",
                format!("{who} Every target file is either as it was before the restore or completely restored, never a mix: files are written under temporary names and renamed into place only when all of them are written and verified, and the temporary files the interruption left were removed."),
                "Run the restore again.",
            )
        } else {
            JobError::new(
                500_001,
                "The job was interrupted",
                format!("{who} No recovery point was created."),
                "Run the operation again.",
            )
        }
    }

    fn clean_up(&self, job: &JobRow) -> usize {
        self.remove_restore_leftovers(job)
    }

    fn after_job(&self, db: &Db, job: &JobRow, status: JobStatus) -> Result<()> {
        Control::after_job(self, db, job, status)
    }

    fn now(&self) -> DateTime<Utc> {
        Control::now(self)
    }

    fn wall_now(&self) -> DateTime<Utc> {
        Control::wall_now(self)
    }
}

impl Control {
    /// This node's job queue (with a data plane).
    pub fn jobs(&self) -> Result<&Arc<Jobs>> {
        self.jobs
            .as_ref()
            .ok_or_else(|| Error::internal("this rsvault process has no data plane (backups run in `rsvault serve`)"))
    }

    /// True once this node's job engine is stopping (a graceful shutdown), or when it has none.
    pub(crate) fn jobs_stopping(&self) -> bool {
        self.jobs().map(|j| j.stopping()).unwrap_or(true)
    }

    /// Wakes this node's job workers (a job was queued).
    pub(crate) fn wake_jobs(&self) {
        if let Ok(j) = self.jobs() {
            j.wake();
        }
    }

    /// Cancels a data-plane job.
    pub(crate) fn cancel_job_run(&self, job_id: &str) -> Result<CancelOutcome> {
        self.jobs()?.cancel(job_id, self.now())
    }
}
