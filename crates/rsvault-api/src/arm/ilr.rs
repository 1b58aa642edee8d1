//! Dispatch of restore validation (`backupValidateOperation`, `backupTriggerValidateOperation` and
//! its result and status) and item level recovery (`provisionInstantItemRecovery`,
//! `revokeInstantItemRecovery`, `listInstantItemRecoveryOperationResult`), and their HTTP shapes:
//!
//! - a triggered validation: 202, `Location` = the vault's `backupValidateOperationResults/{op}`,
//!   `Azure-AsyncOperation` = `backupValidateOperationsStatuses/{op}`; the result answers 202 while
//!   running, then 200 with `ValidateOperationsResponse`;
//! - provision and revoke: 202 with the item's `operationResults/{op}` and `operationsStatus/{op}`,
//!   as a restore answers (the az CLI polls the vault's `backupOperations/{op}` from the last segment
//!   of `Azure-AsyncOperation`, which finds the same record).

use super::{accepted, request_url_up, vault_base, with_api_version};
use crate::pipeline::Ctx;
use crate::reply::Reply;
use crate::routes::{Params, RestoreToolOp};
use rsvault_control::{Caller, Control, Result};

/// Carries out one of these endpoints.
pub fn dispatch(ctx: &Ctx, caller: &Caller, op: RestoreToolOp, p: &Params) -> Result<Reply> {
    let c = &ctx.state.control;
    let (sub, rg, v) = (p.sub(), p.rg(), p.vault());
    let (fabric, container, item) = (p.get("fabricName"), p.get("containerName"), p.get("protectedItemName"));
    let (rp, opid) = (p.get("recoveryPointId"), p.get("operationId"));
    Ok(match op {
        RestoreToolOp::ValidateOperation => Reply::ok(c.validate_operation(caller, sub, rg, v, &ctx.json()?)?),
        RestoreToolOp::TriggerValidateOperation => {
            let id = c.trigger_validate_operation(caller, sub, rg, v, &ctx.json()?)?;
            let base = vault_base(ctx);
            accepted(
                ctx,
                &format!("{base}/backupValidateOperationResults/{id}"),
                &format!("{base}/backupValidateOperationsStatuses/{id}"),
            )
        }
        RestoreToolOp::ValidateOperationResult => match c.validate_operation_result(sub, rg, v, opid)? {
            Some(body) => Reply::ok(body),
            None => Reply::empty(202)
                .header(
                    "Location",
                    with_api_version(
                        ctx,
                        &format!("{}/backupValidateOperationResults/{opid}", vault_base(ctx)),
                    ),
                )
                .header("Retry-After", ctx.state.config.retry_after_secs.to_string()),
        },
        RestoreToolOp::ValidateOperationStatus => {
            // The findings are the result's, not the status's (`OperationStatus.properties` is
            // a discriminated extended info).
            let o = rsvault_store::OperationRow {
                properties: None,
                ..c.validate_operation_record(sub, rg, v, opid)?
            };
            let id = format!(
                "{}/backupValidateOperationsStatuses/{opid}",
                vault_base(ctx).trim_start_matches(&ctx.base)
            );
            Reply::ok(Control::operation_status_body(&id, &o))
        }
        RestoreToolOp::ProvisionIlr => {
            let id = c.provision_ilr(caller, sub, rg, v, fabric, container, item, rp, &ctx.json()?)?;
            let base = request_url_up(ctx, 3);
            accepted(
                ctx,
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        RestoreToolOp::RevokeIlr => {
            let id = c.revoke_ilr(sub, rg, v, fabric, container, item, rp)?;
            let base = request_url_up(ctx, 3);
            accepted(
                ctx,
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        RestoreToolOp::IlrOperationResult => {
            Reply::ok(c.ilr_operation_result(sub, rg, v, fabric, container, item, rp, &ctx.json()?)?)
        }
    })
}
