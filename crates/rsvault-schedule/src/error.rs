//! The crate's one error type: a policy the schedule or retention rules cannot use, worded like
//! Azure's answer (`BMSUserErrorInvalidPolicyInput`) so the control plane can return it as it is.

/// Azure's error code for every rejection this crate makes.
pub const INVALID_POLICY_INPUT: &str = "BMSUserErrorInvalidPolicyInput";

/// Why a schedule, retention or time zone cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `timeZone` is not a Windows time-zone id this crate knows.
    #[error(
        "The time zone '{0}' is not supported. Use a Windows time zone id such as 'UTC' or 'Pacific Standard Time'."
    )]
    UnknownTimeZone(String),
    /// A member of the policy is missing, malformed or breaks one of Azure's rules.
    #[error("{message}")]
    Invalid {
        /// The JSON path of the offending member, e.g. `schedulePolicy.hourlySchedule.interval`.
        target: String,
        /// A sentence worded like Azure's.
        message: String,
    },
}

impl Error {
    /// Azure's error code: always [`INVALID_POLICY_INPUT`].
    pub fn code(&self) -> &'static str {
        INVALID_POLICY_INPUT
    }

    /// The JSON path the error is about.
    pub fn target(&self) -> &str {
        match self {
            Error::UnknownTimeZone(_) => "timeZone",
            Error::Invalid { target, .. } => target,
        }
    }

    pub(crate) fn invalid(target: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            target: target.into(),
            message: message.into(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
