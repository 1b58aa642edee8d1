//! The engine's error type.
//!
//! Every fallible engine call returns [`EngineError`]. Variants say what the job layer needs to
//! decide (not found, conflict, cancelled, source unusable, vault damaged); the text of a
//! `Repository` error comes from rustic_core and never contains the repository password.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The operation was cancelled through its [`crate::Cancel`] flag; nothing was committed.
    #[error("the operation was cancelled")]
    Cancelled,
    /// No recovery point with this id exists in the vault.
    #[error("recovery point '{0}' not found")]
    RecoveryPointNotFound(String),
    /// A source (disk image, directory) cannot be used.
    #[error("source '{path}': {reason}")]
    Source {
        /// The path of the source.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A restore target already exists and the conflict policy is `FailOnConflict`.
    #[error("restore conflicts with {count} existing item(s), first: '{first}'")]
    Conflict {
        /// How many entries conflict.
        count: usize,
        /// The first conflicting path.
        first: PathBuf,
    },
    /// The request is malformed (unknown disk name, empty disk list, path outside the snapshot).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Restored bytes do not match the snapshot's content hashes.
    #[error("verification of restored '{path}' failed: {reason}")]
    VerificationFailed {
        /// The restored file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// A restore target cannot be written: read-only, no permission, no space, or a symbolic link
    /// where the restore needs a directory (restores never follow links).
    #[error("restore target '{path}': {reason}")]
    Target {
        /// The target path.
        path: PathBuf,
        /// Why it cannot be written.
        reason: String,
    },
    /// The vault key material cannot be used (wrong server key, damaged sealed blob).
    #[error("vault key: {0}")]
    Key(String),
    /// An error reported by rustic_core while operating on the repository.
    #[error("repository: {0}")]
    Repository(String),
    /// An object store holding the vault refused, failed or did not answer (after retries).
    #[error("vault storage '{target}': {reason}")]
    Storage {
        /// The operator's name of the storage target.
        target: String,
        /// What failed, and how.
        reason: String,
    },
    /// A local I/O error outside the repository.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<Box<rustic_core::RusticError>> for EngineError {
    fn from(e: Box<rustic_core::RusticError>) -> Self {
        // An object store that refused or did not answer is the storage's failure, not the
        // repository's, wherever rustic_core met it.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
        while let Some(c) = cause {
            if let Some(f) = c.downcast_ref::<crate::objstore::StorageFailure>() {
                return Self::Storage {
                    target: f.target.clone(),
                    reason: f.reason.clone(),
                };
            }
            cause = c.source();
        }
        Self::Repository(e.display_log())
    }
}

/// Adds a context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| EngineError::io(context(), e))
    }
}
