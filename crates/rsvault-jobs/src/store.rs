//! The job engine's contract with the metadata store ([`JobStore`]), implemented once over
//! [`rsvault_store::Store`] (SQLite or PostgreSQL; the store's contract suite covers the lease
//! statements underneath).
//!
//! Every method is one store transaction, and writes are serialised on both backends (SQLite's one
//! writer, PostgreSQL's advisory lock), so a claim that counts a vault's leased jobs and writes a
//! new lease cannot interleave with another node's. A job's **lease** names its node, a fencing
//! token greater than every earlier one, and a wall-clock expiry; only the holder of the current
//! token ends a running job ([`JobStore::finish`], [`JobStore::requeue`]).
//!
//! The phase column is text in the store; this module is where [`Phase`] meets it.

use crate::phase::{JobStatus, Phase};
use crate::progress::set_tasks;
use crate::runner::CancelOutcome;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use rsvault_core::time;
use rsvault_store::{Db, JobLease, JobRow, Store};
use serde_json::json;
use std::collections::HashMap;

/// A job claimed by a node: its row (now `running`) and the fencing token of the claim's lease.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRow,
    pub fence: i64,
}

/// What a lease renewal found for one job a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed; nothing asked of it.
    Held,
    /// Renewed, and a user asked (on any node) to cancel it.
    CancelRequested,
    /// The lease is no longer this node's (another node settled the job): its end will not be recorded.
    Lost,
}

/// A job taken over from a node that stopped: its row, the lease it had, and the new token.
#[derive(Debug, Clone)]
pub struct TakenOver {
    pub job: JobRow,
    pub previous: Option<JobLease>,
    pub fence: i64,
}

/// What recording a job's end found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Recorded; the lease ended with it.
    Recorded,
    /// The job is gone (its vault was deleted) or no longer running: nothing to record.
    Gone,
    /// Another holder has the job's lease now (node and token, if any): nothing recorded.
    NotHeld(Option<(String, i64)>),
}

/// The writes that end a job in [`JobStore::finish`]'s transaction: given the store and the job's
/// row (still `running`), they set its end; the row is then written `done`.
pub type Ending<'a> = &'a mut dyn FnMut(&Db, &mut JobRow) -> Result<()>;

/// The job engine's store.
pub trait JobStore: Send + Sync {
    /// Claims the oldest queued job whose vault has fewer than `per_vault` leased jobs on every node:
    /// `running`, leased to `node` until `until`, in one transaction.
    fn claim(&self, node: &str, per_vault: usize, until: DateTime<Utc>) -> Result<Option<Claim>>;

    /// Extends the leases `node` holds (`held`: job id and token) to `until`, and says for each
    /// whether it is still held and whether a cancel was asked.
    fn renew(&self, node: &str, held: &[(String, i64)], until: DateTime<Utc>) -> Result<Vec<(String, Renewal)>>;

    /// A user's cancel: a queued job ends `Cancelled` at once (at `now`), a running one goes
    /// `Cancelling` (its node stops it).
    fn request_cancel(&self, job_id: &str, now: DateTime<Utc>) -> Result<CancelOutcome>;

    /// Every `running` job with its lease (none for jobs from before leases).
    fn running(&self) -> Result<Vec<(JobRow, Option<JobLease>)>>;

    /// The `running` jobs whose lease lapsed before `now` (or that have none).
    fn lapsed(&self, now: DateTime<Utc>) -> Result<Vec<(JobRow, Option<JobLease>)>> {
        Ok(self
            .running()?
            .into_iter()
            .filter(|(_, l)| l.as_ref().is_none_or(|l| l.expires < now))
            .collect())
    }

    /// Takes a running job's lease over for `node` until `until`, if its lease is still the one seen
    /// (`seen`: its token, or `None` for no lease); `None` when it was renewed, ended or taken meanwhile.
    fn take_over(&self, job_id: &str, seen: Option<i64>, node: &str, until: DateTime<Utc>)
        -> Result<Option<TakenOver>>;

    /// At a graceful stop: puts a job `node` holds with `fence` back in the queue (its tasks not
    /// started), unless a user asked to cancel it. True when it was re-queued.
    fn requeue(&self, job_id: &str, node: &str, fence: i64, now: DateTime<Utc>) -> Result<bool>;

    /// Records a job's end in one transaction, if `node` holds its lease with `fence`: `end` sets the
    /// row's end (and makes the domain's writes), the lease is removed and the row written `done`.
    fn finish(&self, job_id: &str, node: &str, fence: i64, end: Ending<'_>) -> Result<Finish>;

    /// Changes a running job's row (its progress); `f` returns false to leave it unwritten.
    fn update_running(&self, job_id: &str, f: &mut dyn FnMut(&mut JobRow) -> bool) -> Result<()>;
}

/// Jobs of every vault in a phase, oldest first.
fn jobs_in(db: &Db, phase: Phase) -> Result<Vec<JobRow>> {
    Ok(db.jobs_in_phase(phase.as_str())?)
}

/// Every job the engine still has (queued, then running), oldest first within each; for reads the
/// domain makes in its own transactions (garbage collection's keep-set, "is a job of this item
/// active?").
pub fn active_jobs(db: &Db) -> Result<Vec<JobRow>> {
    let mut jobs = jobs_in(db, Phase::Queued)?;
    jobs.extend(jobs_in(db, Phase::Running)?);
    Ok(jobs)
}

impl JobStore for Store {
    fn claim(&self, node: &str, per_vault: usize, until: DateTime<Utc>) -> Result<Option<Claim>> {
        self.write(|db| {
            let mut full: Vec<String> = Vec::new();
            for mut j in jobs_in(db, Phase::Queued)? {
                if full.contains(&j.vault_key) {
                    continue;
                }
                if db.leased_jobs_in_vault(&j.vault_key)? >= per_vault {
                    full.push(j.vault_key.clone());
                    continue;
                }
                Phase::Running.set(&mut j);
                db.put_job(&j)?;
                let fence = db.lease_job(&j.id, &j.vault_key, node, until)?;
                return Ok(Some(Claim { job: j, fence }));
            }
            Ok(None)
        })
    }

    fn renew(&self, node: &str, held: &[(String, i64)], until: DateTime<Utc>) -> Result<Vec<(String, Renewal)>> {
        if held.is_empty() {
            return Ok(vec![]);
        }
        self.write(|db| {
            let mut out = Vec::with_capacity(held.len());
            for (job, fence) in held {
                let r = if !db.renew_job_lease(job, node, *fence, until)? {
                    Renewal::Lost
                } else if db
                    .job(job)?
                    .is_some_and(|j| JobStatus::of(&j) == Some(JobStatus::Cancelling))
                {
                    Renewal::CancelRequested
                } else {
                    Renewal::Held
                };
                out.push((job.clone(), r));
            }
            Ok(out)
        })
    }

    fn request_cancel(&self, job_id: &str, now: DateTime<Utc>) -> Result<CancelOutcome> {
        self.write(|db| {
            let Some(mut j) = db.job(job_id)? else {
                return Ok(CancelOutcome::NotCancellable);
            };
            match (Phase::of(&j), JobStatus::of(&j)) {
                (Some(Phase::Queued), _) => {
                    JobStatus::Cancelled.set(&mut j);
                    Phase::Done.set(&mut j);
                    j.end = Some(now);
                    j.body["endTime"] = json!(time::timestamp(now));
                    set_tasks(&mut j.body, |_| Some("Cancelled"), now);
                    db.put_job(&j)?;
                    Ok(CancelOutcome::Cancelled)
                }
                (Some(Phase::Running), Some(JobStatus::InProgress)) => {
                    JobStatus::Cancelling.set(&mut j);
                    db.put_job(&j)?;
                    Ok(CancelOutcome::Cancelling)
                }
                _ => Ok(CancelOutcome::NotCancellable),
            }
        })
    }

    fn running(&self) -> Result<Vec<(JobRow, Option<JobLease>)>> {
        let (jobs, leases) = self.read(|db| Ok::<_, Error>((jobs_in(db, Phase::Running)?, db.job_leases()?)))?;
        let mut by_job: HashMap<String, JobLease> = leases.into_iter().map(|l| (l.job_key.clone(), l)).collect();
        Ok(jobs
            .into_iter()
            .map(|j| {
                let l = by_job.remove(&j.id.to_ascii_lowercase());
                (j, l)
            })
            .collect())
    }

    fn take_over(
        &self,
        job_id: &str,
        seen: Option<i64>,
        node: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<TakenOver>> {
        self.write(|db| {
            let Some(j) = db.job(job_id)? else { return Ok(None) };
            let lease = db.job_lease(job_id)?;
            if Phase::of(&j) != Some(Phase::Running) || lease.as_ref().map(|l| l.fence) != seen {
                return Ok(None); // renewed, ended or taken over meanwhile
            }
            let fence = db.lease_job(&j.id, &j.vault_key, node, until)?;
            Ok(Some(TakenOver {
                job: j,
                previous: lease,
                fence,
            }))
        })
    }

    fn requeue(&self, job_id: &str, node: &str, fence: i64, now: DateTime<Utc>) -> Result<bool> {
        self.write(|db| {
            let Some(mut j) = db.job(job_id)? else { return Ok(false) };
            if Phase::of(&j) != Some(Phase::Running) || JobStatus::of(&j) == Some(JobStatus::Cancelling) {
                return Ok(false);
            }
            match db.job_lease(job_id)? {
                Some(l) if l.node == node && l.fence == fence => db.delete_job_lease(job_id)?,
                _ => return Ok(false),
            }
            Phase::Queued.set(&mut j);
            set_tasks(&mut j.body, |_| Some("NotStarted"), now);
            crate::progress::strip_task_times(&mut j.body);
            db.put_job(&j)?;
            Ok(true)
        })
    }

    fn finish(&self, job_id: &str, node: &str, fence: i64, end: Ending<'_>) -> Result<Finish> {
        self.write(|db| {
            let Some(mut j) = db.job(job_id)? else {
                return Ok(Finish::Gone); // its vault was deleted meanwhile
            };
            if Phase::of(&j) != Some(Phase::Running) {
                return Ok(Finish::Gone);
            }
            match db.job_lease(job_id)? {
                Some(l) if l.node == node && l.fence == fence => db.delete_job_lease(job_id)?,
                other => return Ok(Finish::NotHeld(other.map(|l| (l.node, l.fence)))),
            }
            end(db, &mut j)?;
            Phase::Done.set(&mut j);
            db.put_job(&j)?;
            Ok(Finish::Recorded)
        })
    }

    fn update_running(&self, job_id: &str, f: &mut dyn FnMut(&mut JobRow) -> bool) -> Result<()> {
        self.write(|db| {
            let Some(mut j) = db.job(job_id)? else { return Ok(()) };
            if Phase::of(&j) != Some(Phase::Running) || !f(&mut j) {
                return Ok(());
            }
            db.put_job(&j)?;
            Ok(())
        })
    }
}
