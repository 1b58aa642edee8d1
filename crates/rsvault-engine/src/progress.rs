//! Progress reporting and cooperative cancellation.
//!
//! The job layer passes a [`Progress`] sink and a [`Cancel`] flag into every long call. The engine
//! reports bytes done / total per [`Task`] (at most a few times a second, and once at the end of
//! each task) and checks the flag between chunks; a cancelled call returns
//! [`crate::EngineError::Cancelled`] and commits nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The phases of an engine call, as the job layer shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// "Take Snapshot": making the point-in-time view of the source.
    Snapshot,
    /// "Transfer data to vault": reading, chunking, packing and writing.
    Transfer,
    /// Writing restored data to its target.
    Restore,
    /// Checking restored data against the snapshot's content hashes (disks: as each blob is
    /// written; files, and qcow2 images in addition: by reading them back).
    Verify,
}

/// Receives progress updates. Implementations must be cheap and must not block.
pub trait Progress: Send + Sync {
    /// `done` of `total` bytes of `task` are processed (`total` may be 0 when unknown yet).
    fn update(&self, task: Task, done: u64, total: u64);

    /// `task` has ended (its last `update` was its final count, which may be short of its total).
    /// Tasks may overlap: a disk restore writes and verifies in one pipeline.
    fn finished(&self, _task: Task) {}

    /// What `task` did, in words (a running guest's "Take Snapshot": its consistency, the
    /// freeze and thaw, changed-block tracking), shown with the task once it has ended.
    fn detail(&self, _task: Task, _text: &str) {}
}

/// A progress sink that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _task: Task, _done: u64, _total: u64) {}
}

/// A cheap, clonable cancellation flag. Once cancelled it stays cancelled.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A new, not cancelled flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shared byte counters, written by worker threads and read by the reporter.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl Counters {
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}

/// Runs `work` while a scoped thread forwards `counters` to `sink` every 200 ms; sends a final
/// update when `work` returns.
pub(crate) fn report_while<T>(
    sink: &dyn Progress,
    task: Task,
    counters: &Arc<Counters>,
    work: impl FnOnce() -> T,
) -> T {
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = (u64::MAX, u64::MAX);
            while !stop.load(Ordering::Relaxed) {
                let now = counters.get();
                if now != last {
                    sink.update(task, now.0, now.1);
                    last = now;
                }
                std::thread::park_timeout(Duration::from_millis(200));
            }
        });
        let out = work();
        stop.store(true, Ordering::Relaxed);
        out
    });
    let (done, total) = counters.get();
    sink.update(task, done, total.max(done));
    sink.finished(task);
    out
}

/// Adapter that feeds rustic_core's byte progress bars into [`Counters`].
#[derive(Debug, Clone)]
pub(crate) struct RusticBars(pub Arc<Counters>);

#[derive(Debug)]
struct RusticBytes(Arc<Counters>);

impl rustic_core::RusticProgress for RusticBytes {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.0.set_total(len);
    }
    fn set_title(&self, _title: &str) {}
    fn inc(&self, inc: u64) {
        self.0.add(inc);
    }
    fn finish(&self) {}
}

impl rustic_core::ProgressBars for RusticBars {
    fn progress(&self, progress_type: rustic_core::ProgressType, _prefix: &str) -> rustic_core::Progress {
        match progress_type {
            rustic_core::ProgressType::Bytes => rustic_core::Progress::new(RusticBytes(self.0.clone())),
            _ => rustic_core::Progress::hidden(),
        }
    }
}
