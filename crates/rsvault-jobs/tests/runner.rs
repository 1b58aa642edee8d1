//! The job engine against a fake handler on a real (SQLite) store: a job runs, shows progress and
//! ends in one transaction with the domain's writes; the per-vault limit; cancel of queued and
//! running jobs; a graceful stop re-queues; lapsed leases of a dead node are settled, live ones of
//! another node left alone; only the current lease holder records an end.

use chrono::{DateTime, Duration as Span, Utc};
use rsvault_engine::{Progress, Task};
use rsvault_jobs::store::{Finish, JobStore};
use rsvault_jobs::{
    new_tasks, CancelOutcome, Failure, Finished, JobError, JobHandler, JobLimits, JobRunner, JobStatus, Jobs, Phase,
    Run, TaskSpec, Workers,
};
use rsvault_store::{Db, JobRow, Store};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TASKS: &[TaskSpec] = &[
    ("Take Snapshot", Task::Snapshot, 0),
    ("Transfer data to vault", Task::Transfer, 100),
];

/// What a fake job does, from its `work`: `{"hold": ms}` runs that long (stopping if cancelled),
/// `{"fail": true}` fails, `{"untilCancelled": true}` runs until cancelled.
#[derive(Default)]
struct Fake {
    /// Jobs running now per vault, and the most seen at once.
    running: Mutex<HashMap<String, (usize, usize)>>,
    started: Mutex<Vec<String>>,
    after: Mutex<Vec<(String, JobStatus)>>,
    /// Names of interrupted jobs `settle` completes.
    committed: Mutex<Vec<String>>,
    cleaned: Mutex<Vec<String>>,
    in_progress: AtomicBool,
}

impl Fake {
    fn most_at_once(&self, vault: &str) -> usize {
        self.running.lock().unwrap().get(vault).map_or(0, |r| r.1)
    }
}

impl JobHandler for Fake {
    fn execute(&self, job: &JobRow, run: &Run<'_>) -> Result<Finished, Failure> {
        self.started.lock().unwrap().push(job.name.clone());
        {
            let mut r = self.running.lock().unwrap();
            let e = r.entry(job.vault_key.clone()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        let work = job.work.clone().unwrap_or_default();
        let progress = run.progress(TASKS);
        progress.update(Task::Transfer, 50 << 20, 100 << 20);
        self.in_progress.store(true, Ordering::SeqCst);
        let until_cancelled = work["untilCancelled"].as_bool() == Some(true);
        let hold = Duration::from_millis(work["hold"].as_u64().unwrap_or(0));
        let t0 = Instant::now();
        let mut cancelled = false;
        while until_cancelled || t0.elapsed() < hold {
            if run.cancel().is_cancelled() {
                cancelled = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.running.lock().unwrap().get_mut(&job.vault_key).unwrap().0 -= 1;
        if cancelled {
            return Err(Failure::Cancelled);
        }
        if work["fail"].as_bool() == Some(true) {
            return Err(Failure::Failed(JobError::new(
                42,
                "It failed",
                "as asked",
                "Do not ask.",
            )));
        }
        progress.update(Task::Transfer, 100 << 20, 100 << 20);
        Ok(committed(job))
    }

    fn settle(&self, job: &JobRow) -> Option<Finished> {
        self.committed
            .lock()
            .unwrap()
            .contains(&job.name)
            .then(|| committed(job))
    }

    fn interrupted(&self, job: &JobRow, who: &str) -> JobError {
        JobError::new(
            500_001,
            "The job was interrupted",
            format!("{who} ({})", job.name),
            "Again.",
        )
    }

    fn clean_up(&self, job: &JobRow) -> usize {
        self.cleaned.lock().unwrap().push(job.name.clone());
        0
    }

    fn after_job(&self, _db: &Db, job: &JobRow, status: JobStatus) -> rsvault_jobs::Result<()> {
        assert_eq!(
            JobStatus::of(job),
            Some(status),
            "the row has its end status when the domain writes"
        );
        self.after.lock().unwrap().push((job.name.clone(), status));
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn wall_now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A completion whose domain write (a meta key) lands in the job's final transaction.
fn committed(job: &JobRow) -> Finished {
    let key = format!("made-by-{}", job.name);
    let mut f = Finished::new(JobStatus::Completed);
    f.bag.insert("Made".into(), json!("yes"));
    f.commit = Box::new(move |db| {
        db.set_meta(&key, "1")?;
        Ok(())
    });
    f
}

struct Env {
    _tmp: tempfile::TempDir,
    store: Arc<Store>,
    fake: Arc<Fake>,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("meta.db")).unwrap());
    Env {
        _tmp: tmp,
        store,
        fake: Arc::default(),
    }
}

impl Env {
    fn queue(&self, vault: &str, name: &str, work: Value) {
        let job = JobRow {
            id: format!("{vault}/backupJobs/{name}"),
            vault_key: vault.to_ascii_lowercase(),
            name: name.into(),
            operation: "Backup".into(),
            status: "InProgress".into(),
            backup_management_type: "AzureIaasVM".into(),
            entity: "vm".into(),
            start: Utc::now(),
            end: None,
            body: json!({"status": "InProgress", "extendedInfo": {"tasksList": new_tasks(TASKS), "propertyBag": {}}}),
            phase: Some(Phase::Queued.as_str().into()),
            work: Some(work),
        };
        self.store.write(|db| db.put_job(&job)).unwrap();
    }

    fn job(&self, vault: &str, name: &str) -> JobRow {
        self.store
            .read(|db| db.job(&format!("{vault}/backupJobs/{name}")))
            .unwrap()
            .unwrap()
    }

    fn jobs(&self, node: &str, limits: JobLimits) -> Arc<Jobs> {
        let store: Arc<dyn JobStore> = self.store.clone();
        Jobs::new(store, node, limits)
    }

    fn start(&self, jobs: &Arc<Jobs>) -> JobRunner {
        let handler: Arc<dyn JobHandler> = self.fake.clone();
        JobRunner::start(jobs.clone(), handler, &Workers::new(Utc::now)).unwrap()
    }

    fn wait_end(&self, vault: &str, name: &str) -> JobRow {
        wait(&format!("{name} ends"), || {
            let j = self.job(vault, name);
            (Phase::of(&j) == Some(Phase::Done)).then_some(j)
        })
    }
}

fn wait<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const VAULT: &str = "/subscriptions/s/resourceGroups/g/providers/Microsoft.RecoveryServices/vaults/v";
const OTHER: &str = "/subscriptions/s/resourceGroups/g/providers/Microsoft.RecoveryServices/vaults/w";

#[test]
fn a_job_runs_shows_progress_and_ends_in_one_transaction_with_the_domains_writes() {
    let e = env();
    let jobs = e.jobs("n1", JobLimits::default());
    let runner = e.start(&jobs);
    e.queue(VAULT, "j1", json!({"hold": 300}));
    jobs.wake();
    let j = wait("progress shows", || {
        let j = e.job(VAULT, "j1");
        (j.body["extendedInfo"]["progressPercentage"] == json!(50.0)).then_some(j)
    });
    assert_eq!(Phase::of(&j), Some(Phase::Running));
    assert_eq!(j.body["extendedInfo"]["tasksList"][1]["status"], "InProgress", "{j:?}");
    assert_eq!(jobs.running_here(), ["j1"]);
    let j = e.wait_end(VAULT, "j1");
    assert_eq!(JobStatus::of(&j), Some(JobStatus::Completed));
    assert_eq!(j.body["status"], "Completed");
    assert_eq!(j.body["extendedInfo"]["propertyBag"]["Made"], "yes");
    assert_eq!(j.body["extendedInfo"]["progressPercentage"], json!(100.0));
    assert!(j.end.is_some());
    assert_eq!(e.store.read(|db| db.meta("made-by-j1")).unwrap().as_deref(), Some("1"));
    assert!(
        e.store.read(|db| db.job_leases()).unwrap().is_empty(),
        "the lease ends with the job"
    );
    assert_eq!(
        *e.fake.after.lock().unwrap(),
        [("j1".to_string(), JobStatus::Completed)]
    );

    e.queue(VAULT, "j2", json!({"fail": true}));
    jobs.wake();
    let j = e.wait_end(VAULT, "j2");
    assert_eq!(JobStatus::of(&j), Some(JobStatus::Failed));
    assert_eq!(j.body["errorDetails"][0]["errorCode"], 42);
    assert_eq!(j.body["extendedInfo"]["tasksList"][1]["status"], "Failed");
    assert!(e.store.read(|db| db.meta("made-by-j2")).unwrap().is_none());
    runner.stop();
}

#[test]
fn the_per_vault_limit_holds_while_other_vaults_run() {
    let e = env();
    let jobs = e.jobs(
        "n1",
        JobLimits {
            workers: 3,
            per_vault: 1,
            lease_secs: 30,
        },
    );
    for i in 0..3 {
        e.queue(VAULT, &format!("a{i}"), json!({"hold": 200}));
    }
    e.queue(OTHER, "b0", json!({"hold": 50}));
    let runner = e.start(&jobs);
    jobs.wake();
    for i in 0..3 {
        e.wait_end(VAULT, &format!("a{i}"));
    }
    let b = e.wait_end(OTHER, "b0");
    assert_eq!(e.fake.most_at_once(&VAULT.to_ascii_lowercase()), 1);
    assert!(
        b.end.unwrap() < e.job(VAULT, "a2").end.unwrap(),
        "the other vault did not wait"
    );
    runner.stop();
}

#[test]
fn cancel_ends_a_queued_job_at_once_and_stops_a_running_one() {
    let e = env();
    let jobs = e.jobs("n1", JobLimits::default());
    e.queue(VAULT, "run", json!({"untilCancelled": true}));
    e.queue(VAULT, "wait", json!({}));
    let runner = e.start(&jobs);
    jobs.wake();
    wait("it runs", || e.fake.in_progress.load(Ordering::SeqCst).then_some(()));
    assert_eq!(
        jobs.cancel(&e.job(VAULT, "wait").id, Utc::now()).unwrap(),
        CancelOutcome::Cancelled
    );
    let w = e.job(VAULT, "wait");
    assert_eq!(
        (JobStatus::of(&w), Phase::of(&w)),
        (Some(JobStatus::Cancelled), Some(Phase::Done))
    );
    assert_eq!(
        jobs.cancel(&e.job(VAULT, "run").id, Utc::now()).unwrap(),
        CancelOutcome::Cancelling
    );
    let r = e.wait_end(VAULT, "run");
    assert_eq!(JobStatus::of(&r), Some(JobStatus::Cancelled));
    assert_eq!(jobs.cancel(&r.id, Utc::now()).unwrap(), CancelOutcome::NotCancellable);
    assert!(!e.fake.started.lock().unwrap().contains(&"wait".to_string()));
    runner.stop();
}

#[test]
fn a_graceful_stop_puts_running_jobs_back_in_the_queue() {
    let e = env();
    let jobs = e.jobs("n1", JobLimits::default());
    e.queue(VAULT, "long", json!({"untilCancelled": true}));
    let runner = e.start(&jobs);
    jobs.wake();
    wait("it runs", || e.fake.in_progress.load(Ordering::SeqCst).then_some(()));
    runner.stop();
    let j = e.job(VAULT, "long");
    assert_eq!(
        (Phase::of(&j), JobStatus::of(&j)),
        (Some(Phase::Queued), Some(JobStatus::InProgress))
    );
    assert_eq!(j.body["extendedInfo"]["tasksList"][1]["status"], "NotStarted");
    assert!(j.body["extendedInfo"]["tasksList"][1].get("startTime").is_none());
    assert!(e.store.read(|db| db.job_leases()).unwrap().is_empty());
    assert!(e.fake.after.lock().unwrap().is_empty(), "nothing ended");
}

#[test]
fn lapsed_leases_of_a_dead_node_are_settled_and_live_ones_of_another_node_left_alone() {
    let e = env();
    for (name, node, secs) in [("done", "dead", -60), ("lost", "dead", -60), ("live", "other", 600)] {
        e.queue(VAULT, name, json!({}));
        let id = e.job(VAULT, name).id;
        e.store
            .write(|db| {
                let mut j = db.job(&id)?.unwrap();
                j.phase = Some(Phase::Running.as_str().into());
                db.put_job(&j)?;
                db.lease_job(&id, VAULT, node, Utc::now() + Span::seconds(secs))
            })
            .unwrap();
    }
    e.fake.committed.lock().unwrap().push("done".into());
    let jobs = e.jobs("n1", JobLimits::default());
    let runner = e.start(&jobs);
    let done = e.job(VAULT, "done");
    assert_eq!(
        JobStatus::of(&done),
        Some(JobStatus::Completed),
        "settled at start from what it committed"
    );
    assert_eq!(
        e.store.read(|db| db.meta("made-by-done")).unwrap().as_deref(),
        Some("1")
    );
    let lost = e.job(VAULT, "lost");
    assert_eq!(JobStatus::of(&lost), Some(JobStatus::Failed));
    let msg = lost.body["errorDetails"][0]["errorString"].as_str().unwrap();
    assert!(
        msg.starts_with("The rsvault node 'dead' stopped") && msg.ends_with("(lost)"),
        "{msg}"
    );
    let live = e.job(VAULT, "live");
    assert_eq!(
        Phase::of(&live),
        Some(Phase::Running),
        "another node's live job is left alone"
    );
    assert_eq!(*e.fake.cleaned.lock().unwrap(), ["done", "lost"]);
    // Once the other node's lease lapses, the keeper settles it too.
    let id = live.id.clone();
    e.store
        .write(|db| db.renew_job_lease(&id, "other", db.job_lease(&id)?.unwrap().fence, Utc::now()))
        .unwrap();
    let live = e.wait_end(VAULT, "live");
    assert_eq!(JobStatus::of(&live), Some(JobStatus::Failed));
    runner.stop();
}

#[test]
fn only_the_current_lease_holder_records_a_jobs_end() {
    let e = env();
    e.queue(VAULT, "j", json!({}));
    let until = Utc::now() + Span::seconds(30);
    let store: &dyn JobStore = &*e.store;
    let c = store.claim("n1", 1, until).unwrap().unwrap();
    assert!(store.claim("n2", 1, until).unwrap().is_none(), "one job per vault");
    let t = store.take_over(&c.job.id, Some(c.fence), "n2", until).unwrap().unwrap();
    assert!(t.fence > c.fence);
    assert!(
        store
            .take_over(&c.job.id, Some(c.fence), "n3", until)
            .unwrap()
            .is_none(),
        "a lease seen before is no longer the current one"
    );
    let mut end = |_: &Db, j: &mut JobRow| {
        JobStatus::Completed.set(j);
        Ok(())
    };
    assert_eq!(
        store.finish(&c.job.id, "n1", c.fence, &mut end).unwrap(),
        Finish::NotHeld(Some(("n2".into(), t.fence)))
    );
    assert!(!store.requeue(&c.job.id, "n1", c.fence, Utc::now()).unwrap());
    let renewed = store
        .renew("n1", &[(c.job.id.to_ascii_lowercase(), c.fence)], until)
        .unwrap();
    assert_eq!(renewed[0].1, rsvault_jobs::store::Renewal::Lost);
    assert_eq!(
        store.finish(&c.job.id, "n2", t.fence, &mut end).unwrap(),
        Finish::Recorded
    );
    let j = e.job(VAULT, "j");
    assert_eq!(
        (Phase::of(&j), JobStatus::of(&j)),
        (Some(Phase::Done), Some(JobStatus::Completed))
    );
}
