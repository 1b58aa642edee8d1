//! rsvault-schedule: the time semantics of Azure Backup policies, as a pure library.
//!
//! - [`schedule`]: WHEN a policy takes backups ([`Schedule`]: slots in UTC from local wall-clock
//!   run times, daylight-saving rule, the one missed slot to run at start-up);
//! - [`retention`]: HOW LONG each recovery point is kept ([`Retention`]: daily / weekly / monthly /
//!   yearly tiers and expiry, and which points survive at an instant);
//! - [`validate`]: Azure's rejections of schedules and retentions that the control plane's policy
//!   parser does not already make;
//! - [`zone`]: Windows time-zone ids to IANA zones.
//!
//! No I/O and no clock reads: every function takes the instants it works on.

pub mod error;
mod json;
pub mod retention;
pub mod schedule;
pub mod validate;
pub mod zone;

pub use chrono_tz::Tz;
pub use error::{Error, Result, INVALID_POLICY_INPUT};
pub use retention::{DayRule, DurationType, LongTerm, Retention, RetentionDuration, Tiers, WeekOfMonth};
pub use schedule::{resolve_local, Frequency, Plan, Schedule, Slots};
pub use zone::windows_zone;
