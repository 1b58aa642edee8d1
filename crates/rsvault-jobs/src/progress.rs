//! A job's tasks and progress, as its row shows them: the tasks list of a new job
//! ([`new_tasks`]), the engine's reports recorded into the running job's row ([`JobProgress`]: at
//! every task change, when a task ends, and at most once a second otherwise), and the tasks' states
//! at the job's end ([`set_tasks`]).

use crate::handler::JobHandler;
use crate::store::JobStore;
use chrono::{DateTime, Utc};
use rsvault_core::time;
use rsvault_engine::{Progress, Task};
use rsvault_store::JobRow;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A task of a job as the engine reports it: its name in the job, the engine task, and its weight
/// in the job's `progressPercentage`.
pub type TaskSpec = (&'static str, Task, u32);

/// The tasks list of a new job: every task `NotStarted`.
pub fn new_tasks(tasks: &[TaskSpec]) -> Value {
    Value::Array(
        tasks
            .iter()
            .map(|(name, _, _)| json!({"taskId": name, "status": "NotStarted"}))
            .collect(),
    )
}

/// Progress of a running job into its row: task states, `progressPercentage`,
/// `estimatedRemainingDuration`, and the bag's transferred bytes. False when the row has no tasks.
fn apply_progress(
    j: &mut JobRow,
    tasks: &[TaskSpec],
    current: usize,
    done: u64,
    total: u64,
    now: DateTime<Utc>,
) -> bool {
    let pct = if total == 0 {
        0.0
    } else {
        (done.min(total) as f64 * 100.0 / total as f64).floor()
    };
    let Some(list) = j
        .body
        .pointer_mut("/extendedInfo/tasksList")
        .and_then(Value::as_array_mut)
    else {
        return false;
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
    true
}

/// Writes the tasks' details in words over their byte counts.
fn apply_details(j: &mut JobRow, details: &[Option<String>]) -> bool {
    let Some(list) = j
        .body
        .pointer_mut("/extendedInfo/tasksList")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    for (t, d) in list.iter_mut().zip(details) {
        if let Some(d) = d {
            t["taskExecutionDetails"] = json!(d);
        }
    }
    true
}

/// Sets each task's status by `f` (given its current status; `None` keeps it), stamping end times.
pub fn set_tasks(body: &mut Value, f: impl Fn(&str) -> Option<&'static str>, now: DateTime<Utc>) {
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

pub fn strip_task_times(body: &mut Value) {
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
pub struct JobProgress<'a> {
    store: &'a dyn JobStore,
    handler: &'a dyn JobHandler,
    job_id: String,
    tasks: &'a [TaskSpec],
    state: Mutex<ProgressState>,
    /// Each task's details in words ([`Progress::detail`]), kept over its byte counts.
    details: Mutex<Vec<Option<String>>>,
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
    pub fn new(store: &'a dyn JobStore, handler: &'a dyn JobHandler, job_id: &str, tasks: &'a [TaskSpec]) -> Self {
        JobProgress {
            store,
            handler,
            job_id: job_id.to_string(),
            tasks,
            state: Mutex::new(ProgressState::new(tasks.len())),
            details: Mutex::new(vec![None; tasks.len()]),
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
                self.record(idx, d, t);
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
                self.record(c, d, t);
            }
        }
        let due = st.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if changed || due || (total > 0 && done >= total) {
            st.current = Some(shown);
            st.last = Some(Instant::now());
            self.record(shown, done, total);
        }
    }
}

impl JobProgress<'_> {
    /// Writes the progress of task `current` into the job's row, if the job still runs.
    fn record(&self, current: usize, done: u64, total: u64) {
        let now = self.handler.now();
        let details = self.details.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let res = self.store.update_running(&self.job_id, &mut |j| {
            apply_progress(j, self.tasks, current, done, total, now) && apply_details(j, &details)
        });
        if let Err(e) = res {
            tracing::warn!(job = %self.job_id, error = %e, "cannot record job progress");
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

    /// The task's `taskExecutionDetails` (what a running guest's snapshot did), written now;
    /// later byte counts of an ended task do not replace it.
    fn detail(&self, task: Task, text: &str) {
        let Some(idx) = self.tasks.iter().position(|t| t.1 == task) else {
            return;
        };
        let details = {
            let mut d = self.details.lock().unwrap_or_else(|p| p.into_inner());
            d[idx] = Some(text.to_string());
            d.clone()
        };
        let res = self
            .store
            .update_running(&self.job_id, &mut |j| apply_details(j, &details));
        if let Err(e) = res {
            tracing::warn!(job = %self.job_id, error = %e, "cannot record a task's details");
        }
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

    /// Issue 18: a running guest's "Take Snapshot" says what happened (freeze, thaw, one
    /// instant); the byte counts recorded when the next task starts do not replace it.
    #[test]
    fn a_task_keeps_its_details_over_later_byte_counts() {
        use super::{apply_details, apply_progress, new_tasks};
        use rsvault_engine::Task;
        let tasks: &[super::TaskSpec] = &[
            ("Take Snapshot", Task::Snapshot, 0),
            ("Transfer data to vault", Task::Transfer, 100),
        ];
        let now = chrono::Utc::now();
        let mut j = rsvault_store::JobRow {
            id: "v/backupJobs/j".into(),
            vault_key: "v".into(),
            name: "j".into(),
            operation: "Backup".into(),
            status: "InProgress".into(),
            backup_management_type: "AzureIaasVM".into(),
            entity: "vm".into(),
            start: now,
            end: None,
            body: serde_json::json!({"extendedInfo": {"tasksList": new_tasks(tasks), "propertyBag": {}}}),
            phase: None,
            work: None,
        };
        let details = vec![Some("Application consistent: froze 2".to_string()), None];
        assert!(apply_progress(&mut j, tasks, 0, 10 << 20, 10 << 20, now) && apply_details(&mut j, &details));
        assert!(apply_progress(&mut j, tasks, 1, 1 << 20, 10 << 20, now) && apply_details(&mut j, &details));
        let list = &j.body["extendedInfo"]["tasksList"];
        assert_eq!(list[0]["taskExecutionDetails"], "Application consistent: froze 2");
        assert_eq!(list[0]["status"], "Completed");
        assert_eq!(list[1]["taskExecutionDetails"], "1 MB / 10 MB Transferred");
    }
}
