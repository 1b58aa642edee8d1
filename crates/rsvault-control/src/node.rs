//! A node's background work, started by the binary (`rsvault serve`) beside the API, or instead of
//! it (`--role`): the job runner ([`rsvault_jobs::JobRunner`]: job workers and the lease keeper),
//! the [`Scheduler`], and the node's report of its workers into the store's `nodes` table
//! ([`rsvault_jobs::worker::NodeReporter`], which `rsvault nodes` reads).
//!
//! Start-up order (before the API accepts anything): deleted vaults' leftovers are recorded and
//! their sweeper ([`crate::removals::Sweeper`]) starts, jobs a crash of this node interrupted are
//! settled, then the workers start. Stop order ([`Node::stop`], after the API stopped accepting):
//! the sweeper (waiting a few seconds at most), the scheduler (after the pass it may be running),
//! then the job runner (running jobs go back to the queue), then the report (one last one).

use crate::scheduler::Scheduler;
use crate::{Control, Error, Result};
use rsvault_jobs::worker::{NodeReporter, Stop};
use rsvault_jobs::{JobHandler, JobRunner, Workers};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a node does: serve the API, run jobs (and the scheduler), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    All,
    Api,
    Jobs,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Jobs => "jobs",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::All, Role::Api, Role::Jobs].into_iter().find(|r| r.as_str() == s)
    }

    /// Serves the ARM and identity API.
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    /// Runs jobs and the scheduler.
    pub fn runs_jobs(self) -> bool {
        matches!(self, Role::All | Role::Jobs)
    }
}

/// A node's running background workers.
pub struct Node {
    workers: Workers,
    sweeper: Option<crate::removals::Sweeper>,
    ilr: Option<crate::backup::ilr::IlrKeeper>,
    runner: Option<JobRunner>,
    scheduler: Option<Scheduler>,
    reporter: Option<(Stop, JoinHandle<()>)>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("workers", &self.workers).finish()
    }
}

impl Node {
    /// Starts what `role` runs on this control plane's node (it needs a data plane): for jobs, the
    /// job runner (after removing deleted vaults' leftovers and settling interrupted jobs) and the
    /// scheduler (a pass every `policy_interval`); for every role, the node's report.
    /// Blocking: call it off async threads.
    pub fn start(control: Arc<Control>, role: Role, policy_interval: Duration) -> Result<Node> {
        let workers = {
            let c = control.clone();
            Workers::new(move || c.wall_now())
        };
        let jobs = control.jobs()?.clone();
        let (sweeper, ilr, runner, scheduler) = if role.runs_jobs() {
            control.remove_orphaned_vault_data()?;
            let sweeper = crate::removals::Sweeper::start(control.clone())?;
            let ilr = crate::backup::ilr::IlrKeeper::start(control.clone())?;
            let handler: Arc<dyn JobHandler> = control.clone();
            let runner = JobRunner::start(jobs.clone(), handler, &workers)?;
            let scheduler = Scheduler::start(control.clone(), policy_interval, &workers)?;
            (Some(sweeper), Some(ilr), Some(runner), Some(scheduler))
        } else {
            (None, None, None, None)
        };
        let reporting = role.runs_jobs().then(|| jobs.clone());
        let reporter = NodeReporter::new(control.store.clone(), jobs.node(), role.as_str(), &workers, reporting);
        let stop = reporter.stopper();
        let thread = workers
            .spawn(reporter)
            .map_err(|e| Error::internal(format!("cannot start the node's report: {e}")))?;
        Ok(Node {
            workers,
            sweeper,
            ilr,
            runner,
            scheduler,
            reporter: Some((stop, thread)),
        })
    }

    /// The node's workers and their statuses.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// Stops the scheduler, then the job runner (running jobs go back to the queue), then the
    /// report. Blocking: call it off async threads.
    pub fn stop(mut self) {
        if let Some(s) = self.sweeper.take() {
            s.stop();
        }
        if let Some(k) = self.ilr.take() {
            k.stop();
        }
        if let Some(s) = self.scheduler.take() {
            s.stop();
        }
        if let Some(r) = self.runner.take() {
            r.stop();
        }
        if let Some((stop, t)) = self.reporter.take() {
            stop.stop();
            let _ = t.join();
        }
    }
}
