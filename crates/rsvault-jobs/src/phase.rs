//! A job's phase in the job engine and its status as users see it, typed.
//!
//! The store keeps both as text (`jobs.phase`, `jobs.status`); they are converted here, once, at
//! the boundary: code above reads [`Phase::of`] and [`JobStatus::of`] and writes with
//! [`Phase::set`] and [`JobStatus::set`], never comparing strings.

use rsvault_store::JobRow;
use serde_json::json;

/// Where a job is in the job engine. Jobs that completed with their request have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a node under a lease.
    Running,
    /// Ended; its row holds the end.
    Done,
}

impl Phase {
    /// The store's text for the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Running => "running",
            Phase::Done => "done",
        }
    }

    /// The phase the store's text names.
    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Queued, Phase::Running, Phase::Done]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// A job's phase (`None` for a job the engine never ran, or an unknown text).
    pub fn of(job: &JobRow) -> Option<Phase> {
        job.phase.as_deref().and_then(Phase::parse)
    }

    /// Puts a job in this phase.
    pub fn set(self, job: &mut JobRow) {
        job.phase = Some(self.as_str().to_string());
    }

    /// Queued or running: the job engine still has it.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Queued | Phase::Running)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status as Azure shows it (`properties.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    InProgress,
    /// A user asked to cancel it while it ran.
    Cancelling,
    Completed,
    CompletedWithWarnings,
    Failed,
    Cancelled,
}

impl JobStatus {
    const ALL: [JobStatus; 6] = [
        JobStatus::InProgress,
        JobStatus::Cancelling,
        JobStatus::Completed,
        JobStatus::CompletedWithWarnings,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// Azure's word.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "InProgress",
            JobStatus::Cancelling => "Cancelling",
            JobStatus::Completed => "Completed",
            JobStatus::CompletedWithWarnings => "CompletedWithWarnings",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    /// The status Azure's word names.
    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// A job's status (`None` for a word this engine does not use).
    pub fn of(job: &JobRow) -> Option<JobStatus> {
        JobStatus::parse(&job.status)
    }

    /// Sets a job's status, in its row and in its body.
    pub fn set(self, job: &mut JobRow) {
        job.status = self.as_str().to_string();
        job.body["status"] = json!(self.as_str());
    }

    /// `Completed` or `CompletedWithWarnings`.
    pub fn is_completed(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::CompletedWithWarnings)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_statuses_round_trip_through_the_stores_text() {
        for p in [Phase::Queued, Phase::Running, Phase::Done] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("Queued"), None);
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert!(JobStatus::CompletedWithWarnings.is_completed());
        assert!(!JobStatus::Failed.is_completed());
    }
}
