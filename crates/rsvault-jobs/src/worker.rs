//! Background workers with a status an operator can see.
//!
//! One shape for every background thread of a node (the job workers, the lease keeper, the
//! scheduler, the node's own report): a [`Worker`] has a name, does one round of work at a time
//! ([`Worker::work`]), waits for work between rounds ([`Worker::wait_for_work`]) and says what it
//! is doing ([`Worker::status`]). [`Workers`] runs each on a thread of its own and keeps the board of
//! their statuses (state, last run, last error, jobs running); [`NodeReporter`] writes that board
//! into the node's row of the store's `nodes` table every few seconds, where `rsvault nodes` reads
//! it, whichever node it runs on.

use crate::runner::Jobs;
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use rsvault_core::time;
use rsvault_store::{NodeRow, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a round of work says about the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// There may be more to do at once: work again.
    Busy,
    /// Nothing to do: wait for work.
    Idle,
    /// The worker ends.
    Done,
}

/// What a worker says of itself besides its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Jobs it runs now (job workers).
    pub jobs_running: Option<usize>,
    /// A word on what it does (the job it runs, whether it leads the scheduler).
    pub detail: Option<String>,
}

/// A background worker of a node.
pub trait Worker: Send + 'static {
    /// Its name on the board (unique on a node).
    fn name(&self) -> String;
    /// Does one round of work. An error is shown on the board; the worker then waits for work.
    fn work(&mut self) -> Result<WorkerState>;
    /// Blocks until there may be work ([`WorkerState::Busy`]) or the worker must end
    /// ([`WorkerState::Done`]).
    fn wait_for_work(&mut self) -> WorkerState;
    /// What it is doing now (asked before and after every round).
    fn status(&self) -> Activity {
        Activity::default()
    }
}

/// A worker's line on the board, as `rsvault nodes` shows it (the `nodes` row's `info.workers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    pub name: String,
    /// `busy` (in a round of work), `idle` (waiting for work) or `stopped`.
    pub state: String,
    /// When its last round of work ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// The last round's error, if the last round failed; with when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_running: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

type WallClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A node's workers: runs them, and keeps their statuses.
#[derive(Clone)]
pub struct Workers {
    board: Arc<Mutex<BTreeMap<String, WorkerStatus>>>,
    wall: WallClock,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("board", &self.statuses()).finish()
    }
}

impl Workers {
    /// A board whose times come from `wall` (the machine's real time).
    pub fn new(wall: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Workers {
        Workers {
            board: Arc::default(),
            wall: Arc::new(wall),
        }
    }

    /// Every worker's status, by name.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut WorkerStatus)) {
        let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let s = b.entry(name.to_string()).or_insert_with(|| WorkerStatus {
            name: name.to_string(),
            state: "idle".into(),
            last_run: None,
            last_error: None,
            last_error_time: None,
            jobs_running: None,
            detail: None,
        });
        f(s);
    }

    fn show(&self, name: &str, state: &str, a: Activity) {
        self.update(name, |s| {
            s.state = state.into();
            s.jobs_running = a.jobs_running;
            s.detail = a.detail;
        });
    }

    /// Runs `w` on a thread of its own until it is done.
    pub fn spawn(&self, mut w: impl Worker) -> Result<JoinHandle<()>> {
        let name = w.name();
        let board = self.clone();
        board.show(&name, "idle", w.status());
        std::thread::Builder::new()
            .name(format!("rsvault-{name}"))
            .spawn(move || {
                loop {
                    board.show(&name, "busy", w.status());
                    let r = w.work();
                    let now = time::timestamp((board.wall)());
                    board.update(&name, |s| {
                        s.last_run = Some(now.clone());
                        match &r {
                            Err(e) => {
                                s.last_error = Some(e.to_string());
                                s.last_error_time = Some(now.clone());
                            }
                            Ok(_) => s.last_error = None,
                        }
                    });
                    let mut next = match r {
                        Ok(st) => st,
                        Err(e) => {
                            tracing::warn!(worker = %name, error = %e, "worker round failed");
                            WorkerState::Idle
                        }
                    };
                    if next == WorkerState::Idle {
                        board.show(&name, "idle", w.status());
                        next = w.wait_for_work();
                    }
                    if next == WorkerState::Done {
                        break;
                    }
                }
                board.show(&name, "stopped", Activity::default());
            })
            .map_err(|e| Error::internal(format!("cannot start a worker thread: {e}")))
    }
}

/// A stop signal a worker waits on between rounds.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Stop {
    pub fn stop(&self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0 .1.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits `d` or until stopped; true when stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let g = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .0
             .1
            .wait_timeout_while(g, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// The node's report: every few seconds, the board (and the jobs this node runs) into the node's
/// row of the `nodes` table (`seen`: when; `info`: version, role, running jobs, workers).
pub struct NodeReporter {
    store: Arc<Store>,
    node: String,
    role: String,
    started: DateTime<Utc>,
    workers: Workers,
    jobs: Option<Arc<Jobs>>,
    every: Duration,
    stop: Stop,
}

/// How often a node reports itself.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

impl NodeReporter {
    /// The report of node `node` in role `role` (`all`, `api` or `jobs`); `jobs` when it runs jobs.
    pub fn new(store: Arc<Store>, node: &str, role: &str, workers: &Workers, jobs: Option<Arc<Jobs>>) -> NodeReporter {
        NodeReporter {
            store,
            node: node.to_string(),
            role: role.to_string(),
            started: (workers.wall)(),
            workers: workers.clone(),
            jobs,
            every: REPORT_EVERY,
            stop: Stop::default(),
        }
    }

    /// The signal that ends it (after one last report).
    pub fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    fn report(&self) -> Result<()> {
        let running = self.jobs.as_ref().map(|j| j.running_here()).unwrap_or_default();
        let row = NodeRow {
            node: self.node.clone(),
            started: self.started,
            seen: (self.workers.wall)(),
            info: json!({
                "version": env!("CARGO_PKG_VERSION"),
                "role": self.role,
                "jobWorkers": self.jobs.as_ref().map(|j| j.limits().workers),
                "runningJobs": running.len(),
                "jobs": running,
                "workers": self.workers.statuses(),
            }),
        };
        self.store.write(|db| db.put_node(&row))?;
        Ok(())
    }
}

impl Worker for NodeReporter {
    fn name(&self) -> String {
        "node-report".into()
    }

    fn work(&mut self) -> Result<WorkerState> {
        self.report()?;
        Ok(WorkerState::Idle)
    }

    fn wait_for_work(&mut self) -> WorkerState {
        if self.stop.wait(self.every) {
            if let Err(e) = self.report() {
                tracing::warn!(error = %e, "cannot report this node's last state");
            }
            return WorkerState::Done;
        }
        WorkerState::Busy
    }
}
