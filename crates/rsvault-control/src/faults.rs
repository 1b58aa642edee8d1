//! Faults users can rehearse: on a server started with `--test-clock`, an Owner arms a fault through
//! `POST /rsvault/admin/faults`, and the next backup or restore of an item (or of any item below a
//! vault, container or group) fails with the Azure error code and words given, hangs until it is
//! cancelled, or ends `CompletedWithWarnings`. Azure has no such switch; automation that must react to
//! failed jobs (retries, alerts) needs one against the real API.
//!
//! Armed faults live in the server's memory (a restart clears them), are listed with
//! `GET /rsvault/admin/faults` and cleared with `DELETE /rsvault/admin/faults[/{id}]`. Each fires
//! `count` times (default 1), at the moment a worker starts the job, before the engine runs; a job
//! that meets one says so nowhere but in the error or warning it was given. Without `--test-clock`
//! every route answers 404, as the clock route does.

use crate::backup::recovery::Work;
use crate::{body, Control, Error, Result};
use rsvault_core::{ids, time};
use rsvault_jobs::JobError;
use rsvault_store::JobRow;
use serde_json::{json, Value};
use std::sync::Mutex;

/// What an armed fault does to the job it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The job fails with the given error.
    Fail,
    /// The job stays `InProgress` until it is cancelled.
    Hang,
    /// The job runs, then ends `CompletedWithWarnings` with the given message.
    CompletedWithWarnings,
}

impl FaultAction {
    fn parse(s: &str) -> Option<FaultAction> {
        [
            ("Fail", FaultAction::Fail),
            ("Hang", FaultAction::Hang),
            ("CompletedWithWarnings", FaultAction::CompletedWithWarnings),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|(_, a)| a)
    }

    fn name(self) -> &'static str {
        match self {
            FaultAction::Fail => "Fail",
            FaultAction::Hang => "Hang",
            FaultAction::CompletedWithWarnings => "CompletedWithWarnings",
        }
    }
}

/// One armed fault.
#[derive(Debug, Clone)]
pub struct Fault {
    pub id: String,
    /// The id of an item, or of anything above items (vault, container, group, subscription).
    pub scope: String,
    /// `Backup`, `Restore`, or either.
    pub operation: Option<String>,
    pub action: FaultAction,
    pub error_code: i64,
    pub error_title: String,
    pub message: String,
    pub remaining: u32,
    pub created: chrono::DateTime<chrono::Utc>,
}

impl Fault {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "scope": self.scope,
            "operation": self.operation,
            "action": self.action.name(),
            "errorCode": self.error_code,
            "errorTitle": self.error_title,
            "message": self.message,
            "count": self.remaining,
            "createdTime": time::timestamp(self.created),
        })
    }

    /// The job error a `Fail` fault gives.
    pub(crate) fn job_error(&self) -> JobError {
        JobError::new(
            self.error_code,
            &self.error_title,
            self.message.clone(),
            "This failure was armed through rsvault's fault admin route (a rehearsal).",
        )
    }
}

/// The armed faults of a running server.
#[derive(Debug, Default)]
pub(crate) struct Armed(Mutex<Vec<Fault>>);

fn invalid(target: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code: "InvalidRequestContent",
        message: message.into(),
        target: Some(target.into()),
    }
}

impl Control {
    fn faults(&self) -> Result<&Armed> {
        if self.test_clock().is_none() {
            return Err(Error::NotFound {
                code: "NotFound",
                message: "Faults can be armed only on a server started with --test-clock.".into(),
            });
        }
        Ok(&self.data()?.faults)
    }

    /// `POST /rsvault/admin/faults`: `{"scope", "operation"?, "action", "errorCode"?, "errorTitle"?,
    /// "message"?, "count"?}`. Returns the armed fault.
    pub fn arm_fault(&self, req: &Value) -> Result<Value> {
        let armed = self.faults()?;
        let m = body::object(req)?;
        let scope = body::opt_str(m, "scope", "")?
            .ok_or_else(|| invalid("scope", "'scope' is required: the id of a protected item, or of a vault, container, resource group or subscription above items."))?;
        let scope = format!("/{}", ids::decode_path(scope)?.join("/"));
        if !scope.to_ascii_lowercase().starts_with("/subscriptions/") {
            return Err(invalid("scope", format!("'{scope}' is not an ARM resource id.")));
        }
        let operation = match body::opt_str(m, "operation", "")? {
            None => None,
            Some(o) if o.eq_ignore_ascii_case("Backup") => Some("Backup".to_string()),
            Some(o) if o.eq_ignore_ascii_case("Restore") => Some("Restore".to_string()),
            Some(o) => {
                return Err(invalid(
                    "operation",
                    format!("'{o}' is not an operation a fault can meet: use Backup or Restore."),
                ))
            }
        };
        let action_s = body::opt_str(m, "action", "")?.unwrap_or("Fail");
        let action = FaultAction::parse(action_s).ok_or_else(|| {
            invalid(
                "action",
                format!("'{action_s}' is not a fault action: use Fail, Hang or CompletedWithWarnings."),
            )
        })?;
        let error_code = match m.get("errorCode") {
            None | Some(Value::Null) => 400_001,
            Some(v) => v.as_i64().filter(|c| *c > 0).ok_or_else(|| {
                invalid(
                    "errorCode",
                    "'errorCode' must be a positive whole number, as in a job's errorDetails.",
                )
            })?,
        };
        let error_title = body::opt_str(m, "errorTitle", "")?
            .unwrap_or("UserErrorRehearsedFault")
            .to_string();
        let message = body::opt_str(m, "message", "")?
            .unwrap_or(match action {
                FaultAction::CompletedWithWarnings => "The job completed with a rehearsed warning.",
                _ => "The job failed with a rehearsed fault.",
            })
            .to_string();
        let count = match m.get("count") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|c| (1..=1000).contains(c))
                .ok_or_else(|| invalid("count", "'count' must be a whole number from 1 to 1000."))?
                as u32,
        };
        let fault = Fault {
            id: uuid::Uuid::new_v4().to_string(),
            scope,
            operation,
            action,
            error_code,
            error_title,
            message,
            remaining: count,
            created: self.now(),
        };
        let out = fault.to_json();
        armed.0.lock().unwrap_or_else(|p| p.into_inner()).push(fault);
        Ok(out)
    }

    /// `GET /rsvault/admin/faults`.
    pub fn list_faults(&self) -> Result<Value> {
        let armed = self.faults()?;
        let list: Vec<Value> = armed
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(Fault::to_json)
            .collect();
        Ok(json!({ "value": list }))
    }

    /// `DELETE /rsvault/admin/faults[/{id}]`: clears one fault, or all.
    pub fn clear_faults(&self, id: Option<&str>) -> Result<()> {
        let armed = self.faults()?;
        let mut list = armed.0.lock().unwrap_or_else(|p| p.into_inner());
        match id {
            None => list.clear(),
            Some(id) => {
                let before = list.len();
                list.retain(|f| !f.id.eq_ignore_ascii_case(id));
                if list.len() == before {
                    return Err(Error::NotFound {
                        code: "NotFound",
                        message: format!("No armed fault has the id '{id}'."),
                    });
                }
            }
        }
        Ok(())
    }

    /// The fault, if any, a job meets as a worker starts it (consuming one of its `count`).
    pub(crate) fn take_fault(&self, job: &JobRow, work: &Work) -> Option<Fault> {
        self.test_clock()?;
        let armed = &self.data().ok()?.faults;
        let mut list = armed.0.lock().unwrap_or_else(|p| p.into_inner());
        let i = list.iter().position(|f| {
            f.operation.as_deref().is_none_or(|o| o == job.operation) && ids::scope_contains(&f.scope, work.item())
        })?;
        let f = list[i].clone();
        list[i].remaining -= 1;
        if list[i].remaining == 0 {
            list.remove(i);
        }
        Some(f)
    }
}
