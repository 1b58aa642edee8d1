//! Dispatch of the backup endpoints inside a vault and at subscription level, and their long-running
//! operation shapes as the live service answers them (recorded in `azure-traffic/`):
//!
//! - item writes, backup and restore: `Location` = `{item}/operationResults/{op}`,
//!   `Azure-AsyncOperation` = `{item}/operationsStatus/{op}`, both with the request's api-version;
//! - job cancel and job export: `Location` = `backupJobs/{job}/operationResults/{op}` /
//!   `backupJobs/operationResults/{op}`, `Azure-AsyncOperation` = the vault's `backupOperations/{op}`;
//! - item DELETE: the vault-level `backupOperationResults/{op}` and `backupOperations/{op}`;
//! - `refreshContainers` and container registration: `Azure-AsyncOperation` carries
//!   `api-version=2019-05-13-preview` whatever the request used;
//! - fabric `operationResults` answer 202 (with `Location` to themselves) while running, then 204.

use super::{accepted, request_url, request_url_up, vault_base, with_api_version};
use crate::pipeline::{rendered_page_reply, skip_token, Ctx};
use crate::reply::Reply;
use crate::routes::{BackupOp, Params};
use rsvault_control::backup::OperationOutcome;
use rsvault_control::{Caller, Control, Result};
use rsvault_store::OperationRow;
use serde_json::json;

const PREVIEW_API: &str = "2019-05-13-preview";

fn status(o: &OperationRow) -> Reply {
    Reply::ok(Control::backup_operation_status_body(o))
}

/// 202 whose `Azure-AsyncOperation` carries Azure's fixed preview api-version.
fn accepted_preview(ctx: &Ctx, location: &str, status_url: &str) -> Reply {
    accepted_preview_with(ctx, Reply::empty(202), location, status_url)
}

fn accepted_preview_with(ctx: &Ctx, reply: Reply, location: &str, status_url: &str) -> Reply {
    reply
        .header("Location", with_api_version(ctx, location))
        .header(
            "Azure-AsyncOperation",
            format!("{status_url}?api-version={PREVIEW_API}"),
        )
        .header("Retry-After", ctx.state.config.retry_after_secs.to_string())
}

/// A result URL's answer: 202 to itself while running, the resource (200) or 204 when done.
fn result(ctx: &Ctx, outcome: OperationOutcome) -> Reply {
    match outcome {
        OperationOutcome::Running => Reply::empty(202)
            .header("Location", with_api_version(ctx, &request_url(ctx)))
            .header("Retry-After", ctx.state.config.retry_after_secs.to_string()),
        OperationOutcome::Done(Some(body)) => Reply::ok(body),
        OperationOutcome::Done(None) => Reply::empty(204),
        OperationOutcome::Failed(body) => Reply::ok(body),
    }
}

fn list(items: Vec<serde_json::Value>) -> Reply {
    Reply::ok(json!({ "value": items }))
}

/// Carries out a backup endpoint.
pub fn dispatch(ctx: &Ctx, caller: &Caller, op: BackupOp, p: &Params) -> Result<Reply> {
    let c = &ctx.state.control;
    let (sub, rg, v) = (p.sub(), p.rg(), p.vault());
    let (fabric, container, item) = (p.get("fabricName"), p.get("containerName"), p.get("protectedItemName"));
    let filter = ctx.query("$filter");
    let opid = p.get("operationId");
    Ok(match op {
        BackupOp::RefreshContainers => {
            let id = c.refresh_containers(sub, rg, v, fabric, filter)?;
            let f = request_url_up(ctx, 1);
            accepted_preview(
                ctx,
                &format!("{f}/operationResults/{id}"),
                &format!("{f}/operationsStatus/{id}"),
            )
        }
        BackupOp::FabricOperationResult => {
            rsvault_control::backup::check_fabric(fabric)?;
            let o = c.backup_operation(sub, rg, v, opid)?;
            match c.backup_operation_outcome(&o)? {
                OperationOutcome::Done(_) => Reply::empty(204),
                other => result(ctx, other),
            }
        }
        BackupOp::FabricOperationStatus => {
            rsvault_control::backup::check_fabric(fabric)?;
            status(&c.backup_operation(sub, rg, v, opid)?)
        }
        BackupOp::ListProtectableContainers => list(c.list_protectable_containers(sub, rg, v, fabric, filter)?),
        BackupOp::PutContainer => {
            let id = c.register_container(caller, sub, rg, v, fabric, container, &ctx.json()?)?;
            let base = request_url(ctx);
            // The 202 carries the container: the az CLI registers with `polling=False` and its
            // SDK deserializes the first response's body before following `Location`.
            let body = c.get_container(sub, rg, v, fabric, container)?;
            accepted_preview_with(
                ctx,
                Reply::json(202, body),
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        BackupOp::GetContainer => Reply::ok(c.get_container(sub, rg, v, fabric, container)?),
        BackupOp::DeleteContainer => Reply::empty(if c.unregister_container(sub, rg, v, fabric, container)? {
            200
        } else {
            204
        }),
        BackupOp::InquireContainer => {
            let id = c.inquire_container(sub, rg, v, fabric, container)?;
            let base = request_url_up(ctx, 1);
            accepted_preview(
                ctx,
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        BackupOp::ContainerOperationResult => {
            let o = c.container_operation(sub, rg, v, fabric, container, opid)?;
            result(ctx, c.backup_operation_outcome(&o)?)
        }
        BackupOp::ContainerOperationStatus => status(&c.container_operation(sub, rg, v, fabric, container, opid)?),
        BackupOp::PutItem => {
            let id = c.put_protected_item(caller, sub, rg, v, fabric, container, item, &ctx.json()?)?;
            let base = request_url(ctx);
            accepted(
                ctx,
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        BackupOp::GetItem => Reply::ok(c.get_protected_item(sub, rg, v, fabric, container, item)?),
        BackupOp::DeleteItem => match c.delete_protected_item(sub, rg, v, fabric, container, item)? {
            Some(id) => {
                let base = vault_base(ctx);
                accepted(
                    ctx,
                    &format!("{base}/backupOperationResults/{id}"),
                    &format!("{base}/backupOperations/{id}"),
                )
            }
            None => Reply::empty(204),
        },
        BackupOp::ItemOperationResult => {
            let o = c.item_operation(sub, rg, v, fabric, container, item, opid)?;
            result(ctx, c.backup_operation_outcome(&o)?)
        }
        BackupOp::ItemOperationStatus => status(&c.item_operation(sub, rg, v, fabric, container, item, opid)?),
        BackupOp::ListProtectableItems => list(c.list_protectable_items(caller, sub, rg, v, filter)?),
        BackupOp::ListProtectedItems => {
            let page = c.list_protected_items(sub, rg, v, filter, skip_token(ctx)?.as_deref())?;
            rendered_page_reply(ctx, &page.items, page.next)
        }
        BackupOp::ListContainers => list(c.list_containers(sub, rg, v, filter)?),
        BackupOp::ListDeletedContainers => list(c.list_deleted_containers(sub, rg, v, filter)?),
        BackupOp::ListPolicies => list(c.list_policies(sub, rg, v, filter)?),
        BackupOp::PutPolicy => match c.put_policy(sub, rg, v, p.get("policyName"), &ctx.json()?)? {
            (None, body) => Reply::ok(body),
            (Some(id), _) => {
                let base = request_url(ctx);
                accepted(
                    ctx,
                    &format!("{base}/operationResults/{id}"),
                    &format!("{base}/operations/{id}"),
                )
            }
        },
        BackupOp::GetPolicy => Reply::ok(c.get_policy(sub, rg, v, p.get("policyName"))?),
        BackupOp::DeletePolicy => Reply::empty(if c.delete_policy(sub, rg, v, p.get("policyName"))? {
            200
        } else {
            204
        }),
        BackupOp::PolicyOperationStatus => status(&c.policy_operation(sub, rg, v, p.get("policyName"), opid)?),
        BackupOp::PolicyOperationResult => {
            let o = c.policy_operation(sub, rg, v, p.get("policyName"), opid)?;
            result(ctx, c.backup_operation_outcome(&o)?)
        }
        BackupOp::BackupOperationStatus => status(&c.backup_operation(sub, rg, v, opid)?),
        BackupOp::BackupOperationResult => {
            let o = c.backup_operation(sub, rg, v, opid)?;
            match c.backup_operation_outcome(&o)? {
                OperationOutcome::Done(_) => Reply::empty(204),
                other => result(ctx, other),
            }
        }
        BackupOp::GetJob => Reply::rendered(c.get_job(sub, rg, v, p.get("jobName"))?.to_string()),
        BackupOp::CancelJob => {
            let job = p.get("jobName");
            let id = c.cancel_job(sub, rg, v, job)?;
            let base = vault_base(ctx);
            accepted(
                ctx,
                &format!("{base}/backupJobs/{job}/operationResults/{id}"),
                &format!("{base}/backupOperations/{id}"),
            )
        }
        BackupOp::JobOperationResult => {
            let o = c.job_operation(sub, rg, v, p.get("jobName"), opid)?;
            result(ctx, c.backup_operation_outcome(&o)?)
        }
        BackupOp::ExportJobs => {
            let id = c.export_jobs(sub, rg, v, filter)?;
            let base = vault_base(ctx);
            accepted(
                ctx,
                &format!("{base}/backupJobs/operationResults/{id}"),
                &format!("{base}/backupOperations/{id}"),
            )
        }
        BackupOp::ExportJobsResult => {
            let (path, sas) = c.export_jobs_result(sub, rg, v, opid)?;
            Reply::ok(json!({"statusCode": "OK", "headers": {}, "operation": {
                "objectType": "ExportJobsOperationResultInfo",
                "blobUrl": format!("{}{path}", ctx.base),
                "blobSasKey": sas,
            }}))
        }
        BackupOp::TriggerBackup => {
            let id = c.trigger_backup(sub, rg, v, fabric, container, item, &ctx.json()?)?;
            let base = request_url_up(ctx, 1);
            accepted(
                ctx,
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        BackupOp::ListRecoveryPoints => list(c.list_recovery_points(sub, rg, v, fabric, container, item, filter)?),
        BackupOp::GetRecoveryPoint => {
            Reply::ok(c.get_recovery_point(sub, rg, v, fabric, container, item, p.get("recoveryPointId"))?)
        }
        BackupOp::TriggerRestore => {
            let id = c.trigger_restore(
                caller,
                sub,
                rg,
                v,
                fabric,
                container,
                item,
                p.get("recoveryPointId"),
                &ctx.json()?,
            )?;
            let base = request_url_up(ctx, 3);
            accepted(
                ctx,
                &format!("{base}/operationResults/{id}"),
                &format!("{base}/operationsStatus/{id}"),
            )
        }
        BackupOp::ListJobs => {
            let page = c.list_jobs(sub, rg, v, filter, skip_token(ctx)?.as_deref())?;
            rendered_page_reply(ctx, &page.items, page.next)
        }
        BackupOp::GetVaultConfig => Reply::ok(c.get_vault_config(sub, rg, v)?),
        BackupOp::PutVaultConfig | BackupOp::PatchVaultConfig => {
            Reply::ok(c.set_vault_config(sub, rg, v, &ctx.json()?)?)
        }
        BackupOp::GetStorageConfig => Reply::ok(c.get_storage_config(sub, rg, v)?),
        BackupOp::PutStorageConfig => Reply::ok(c.set_storage_config(sub, rg, v, &ctx.json()?)?),
        BackupOp::PatchStorageConfig => {
            c.set_storage_config(sub, rg, v, &ctx.json()?)?;
            Reply::empty(204)
        }
        BackupOp::GetEncryptionConfig => Reply::ok(c.get_encryption_config(sub, rg, v)?),
        BackupOp::PutEncryptionConfig => {
            c.set_encryption_config(sub, rg, v, &ctx.json()?)?;
            Reply::empty(200)
        }
        BackupOp::ListUsageSummaries => list(c.usage_summaries(sub, rg, v)?),
        BackupOp::BackupStatus => Reply::ok(c.backup_status(sub, p.get("azureRegion"), &ctx.json()?)?),
        BackupOp::ValidateFeatures => Reply::ok(c.validate_features(sub, &ctx.json()?)?),
        BackupOp::PreValidateProtection => Reply::ok(c.pre_validate_protection(sub, &ctx.json()?)?),
    })
}
