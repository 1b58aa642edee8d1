//! Restore validation: `backupValidateOperation` (answered at once) and
//! `backupTriggerValidateOperation` (a long-running operation whose result is
//! `backupValidateOperationResults/{op}` and status `backupValidateOperationsStatuses/{op}`).
//!
//! A validation runs every check a restore would make without queuing it, with the restore's own
//! code: the request as [`Control::plan_restore`] reads it (kind, recovery type, names, linked
//! access, the target through the operator's grants), then the checks its job makes before it
//! writes ([`Control::restore_preflight`]: the grants again, the target takes a new file, room for
//! the whole point). What would refuse the restore becomes one `ErrorDetail`
//! (`{code, message, recommendations}`) of `validateOperationResponse.validationResults`; an empty
//! list means the restore would start. Only a malformed request (or an internal failure) is an
//! ARM error.
//!
//! The recovery point is named by the request's `id` (the recovery point's ARM id), or by its
//! `restoreRequest.recoveryPointId` with the item found from `sourceResourceId` in the vault.

use super::PROTECTED_ITEM_TYPE;
use crate::{body, Caller, Control, Error, Result};
use rsvault_core::ids::ResourceId;
use rsvault_jobs::{Failure, JobError};
use rsvault_store::{OperationRow, RecoveryPointRow, ResourceRow};
use serde_json::{json, Map, Value};

/// The operation kind of a triggered validation.
const VALIDATE_KIND: &str = "ValidateOperation";

/// One reason the restore would not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: String,
    pub message: String,
    pub recommendations: Vec<String>,
}

impl Finding {
    fn from_error(e: &Error) -> Finding {
        let recommendation = match e.code() {
            "BMSUserErrorRecoveryPointNotFound" | "BMSUserErrorItemNotFound" => {
                "Choose a recovery point of a protected item of this vault."
            }
            "LinkedAuthorizationFailed" => {
                "Ask for a role that allows writing to the restore's target (the storage account or VM), then restore."
            }
            "UserErrorHostPathNotAvailable" => {
                "Ask the operator to grant the target's directory (rsvault serve --allow-path DIR) and make sure it exists."
            }
            _ => "Correct the restore request, then validate it again.",
        };
        Finding {
            code: e.code().to_string(),
            message: e.to_string(),
            recommendations: vec![recommendation.into()],
        }
    }

    fn from_job_error(e: JobError) -> Finding {
        let code = match e.code {
            100_004 => "BMSUserErrorRecoveryPointNotFound",
            100_005 => "UserErrorRestoreTargetNotWritable",
            100_006 => "UserErrorNotEnoughSpace",
            100_007 => "UserErrorVaultStorageNotAvailable",
            100_013 => "UserErrorHostPathNotAvailable",
            _ => "UserErrorRestoreValidationFailed",
        };
        Finding {
            code: code.into(),
            message: e.message,
            recommendations: e.recommendations,
        }
    }

    fn wire(&self) -> Value {
        json!({"code": self.code, "message": self.message, "recommendations": self.recommendations})
    }
}

/// `ValidateOperationsResponse` for a list of findings.
fn response(findings: &[Finding]) -> Value {
    json!({"validateOperationResponse": {"validationResults": findings.iter().map(Finding::wire).collect::<Vec<_>>()}})
}

fn bad(target: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code: "BMSUserErrorInvalidInput",
        message: message.into(),
        target: Some(target.into()),
    }
}

/// Errors that say something about rsvault, not about the restore asked for: not findings.
fn is_server_side(e: &Error) -> bool {
    matches!(
        e,
        Error::Internal(_) | Error::StorageUnavailable(_) | Error::InsufficientStorage(_) | Error::ServerBusy { .. }
    )
}

/// The validation request's restore request (`ValidateOperationRequestResource` with `properties`,
/// or the flat `ValidateOperationRequest` of older api-versions) and the resource `id`, if any.
fn restore_request(req: &Value) -> Result<(&Map<String, Value>, Option<&str>)> {
    let m = body::object(req)?;
    let (props, path) = match body::opt_obj(m, "properties", "")? {
        Some(p) => (p, "properties."),
        None => (m, ""),
    };
    let kind = body::opt_str(props, "objectType", path)?.ok_or_else(|| {
        bad(
            &format!("{path}objectType"),
            "The validation request needs 'objectType' (ValidateIaasVMRestoreOperationRequest).",
        )
    })?;
    if ![
        "ValidateIaasVMRestoreOperationRequest",
        "ValidateRestoreOperationRequest",
    ]
    .iter()
    .any(|k| k.eq_ignore_ascii_case(kind))
    {
        return Err(bad(
            &format!("{path}objectType"),
            format!("'{kind}' is not supported: rsvault validates VM and file share restores (ValidateIaasVMRestoreOperationRequest, ValidateRestoreOperationRequest)."),
        ));
    }
    let rr = body::opt_obj(props, "restoreRequest", path)?.ok_or_else(|| {
        bad(
            &format!("{path}restoreRequest"),
            "The validation request needs 'restoreRequest': the body a restore would send.",
        )
    })?;
    Ok((rr, body::opt_str(m, "id", "")?))
}

impl Control {
    /// `POST …/backupValidateOperation`: the findings as `ValidateOperationsResponse`.
    pub fn validate_operation(&self, caller: &Caller, sub: &str, rg: &str, vault: &str, req: &Value) -> Result<Value> {
        Ok(response(&self.validate_restore(caller, sub, rg, vault, req)?))
    }

    /// `POST …/backupTriggerValidateOperation`: validates now and keeps the answer as the
    /// operation's result; returns the operation id.
    pub fn trigger_validate_operation(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        vault: &str,
        req: &Value,
    ) -> Result<String> {
        let v = self.vault_row(sub, rg, vault)?;
        let findings = self.validate_restore(caller, sub, rg, vault, req)?;
        let op = self.finished_operation(&v, VALIDATE_KIND, None, Some(response(&findings)));
        let id = op.id.clone();
        self.store.write(|db| db.put_operation(&op))?;
        Ok(id)
    }

    /// A triggered validation of a vault (for its result and status URLs).
    pub fn validate_operation_record(&self, sub: &str, rg: &str, vault: &str, op: &str) -> Result<OperationRow> {
        let o = self.backup_operation(sub, rg, vault, op)?;
        if o.kind != VALIDATE_KIND {
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The validate operation '{op}' was not found."),
            });
        }
        Ok(o)
    }

    /// `GET …/backupValidateOperationResults/{op}`: the findings (`None` while running).
    pub fn validate_operation_result(&self, sub: &str, rg: &str, vault: &str, op: &str) -> Result<Option<Value>> {
        let o = self.validate_operation_record(sub, rg, vault, op)?;
        Ok((o.status != "InProgress").then(|| o.properties.unwrap_or_else(|| response(&[]))))
    }

    /// The findings of validating a restore request in a vault.
    pub fn validate_restore(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        vault: &str,
        req: &Value,
    ) -> Result<Vec<Finding>> {
        let v = self.vault_row(sub, rg, vault)?;
        let (rr, id) = restore_request(req)?;
        let (row, rp_row, rp) = match self.validated_point(&v, rr, id) {
            Ok(found) => found,
            Err(e) if is_server_side(&e) => return Err(e),
            Err(e) => return Ok(vec![Finding::from_error(&e)]),
        };
        let restore = json!({ "properties": rr });
        let plan = match self.plan_restore(caller, &v, &row, &rp_row, &rp, &restore) {
            Ok(plan) => plan,
            Err(e) if is_server_side(&e) => return Err(e),
            Err(e) => return Ok(vec![Finding::from_error(&e)]),
        };
        let super::recovery::Work::Restore { target, resource, .. } = &plan.work else {
            return Err(Error::internal("a restore plan without a restore"));
        };
        let checked = self
            .restore_repo(&v.id, &rp)
            .and_then(|(repo, _)| self.restore_preflight(&repo, &rp, target, resource.as_deref().unwrap_or_default()));
        Ok(match checked {
            Ok(()) => vec![],
            Err(Failure::Failed(e)) if e.code == 500_000 => return Err(Error::internal(e.message)),
            Err(Failure::Failed(e)) => vec![Finding::from_job_error(e)],
            Err(Failure::Cancelled) => return Err(Error::internal("a validation was cancelled")),
        })
    }

    /// The protected item and recovery point a validation names: by the request's `id` (a recovery
    /// point's ARM id in this vault), else `recoveryPointId` of the item whose source is
    /// `sourceResourceId`.
    fn validated_point(
        &self,
        v: &ResourceRow,
        rr: &Map<String, Value>,
        id: Option<&str>,
    ) -> Result<(ResourceRow, RecoveryPointRow, String)> {
        let not_found = |rp: &str| Error::NotFound {
            code: "BMSUserErrorRecoveryPointNotFound",
            message: format!("Recovery point '{rp}' was not found in vault '{}'.", v.name),
        };
        let named = id.filter(|i| i.to_ascii_lowercase().contains("/recoverypoints/"));
        if let Some(id) = named {
            let rid = ResourceId::parse(id).map_err(|_| bad("id", format!("'{id}' is not a recovery point id.")))?;
            let rp = rid.name().unwrap_or_default().to_string();
            let rp_row = self
                .store
                .read(|db| db.recovery_point(id))?
                .ok_or_else(|| not_found(&rp))?;
            if !rp_row.vault_key.eq_ignore_ascii_case(&v.id) {
                return Err(not_found(&rp));
            }
            let row = self
                .store
                .read(|db| db.resource(&rp_row.item_key))?
                .ok_or_else(|| not_found(&rp))?;
            return Ok((row, rp_row, rp));
        }
        let rp = body::opt_str(rr, "recoveryPointId", "restoreRequest.")?.ok_or_else(|| {
            bad(
                "restoreRequest.recoveryPointId",
                "The restore request needs 'recoveryPointId' (or the validation request the recovery point's 'id').",
            )
        })?;
        let source = body::opt_str(rr, "sourceResourceId", "restoreRequest.")?.unwrap_or_default();
        let items = self.store.read(|db| db.all_below(&v.id, PROTECTED_ITEM_TYPE))?;
        for row in items {
            let src = row.body["properties"]["sourceResourceId"].as_str().unwrap_or_default();
            if !source.is_empty() && !src.eq_ignore_ascii_case(source) {
                continue;
            }
            if let Some(rp_row) = self
                .store
                .read(|db| db.recovery_point(&format!("{}/recoveryPoints/{rp}", row.id)))?
            {
                return Ok((row, rp_row, rp.to_string()));
            }
        }
        Err(not_found(rp))
    }
}
