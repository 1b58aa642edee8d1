//! Dispatch of typed ARM endpoints to the control plane, and their HTTP shapes (status codes, headers).

mod backup;
mod ilr;
mod inventory;

use crate::pipeline::{page_reply, skip_token, Ctx};
use crate::reply::Reply;
use crate::routes::{Access, Op, Params, ROUTES};
use rsvault_control::{Caller, Control, Error, Result};
use serde_json::{json, Value};

/// Carries out one endpoint.
pub fn dispatch(ctx: &Ctx, caller: &Caller, op: Op, p: &Params) -> Result<Reply> {
    let c = &ctx.state.control;
    Ok(match op {
        Op::ListTenants => Reply::ok(json!({ "value": c.list_tenants() })),
        Op::AdvanceClock => {
            let body = ctx.json()?;
            let seconds = body
                .get("seconds")
                .and_then(Value::as_i64)
                .ok_or_else(|| Error::Invalid {
                    code: "InvalidRequestContent",
                    message: "The request body must be {\"seconds\": N} with N a whole number of seconds.".into(),
                    target: Some("seconds".into()),
                })?;
            Reply::ok(c.advance_clock(seconds)?)
        }
        Op::ListFaults => Reply::ok(c.list_faults()?),
        Op::ArmFault => Reply::json(201, c.arm_fault(&ctx.json()?)?),
        Op::ClearFaults => {
            c.clear_faults(None)?;
            Reply::empty(204)
        }
        Op::ClearFault => {
            c.clear_faults(Some(p.get("faultId")))?;
            Reply::empty(204)
        }
        Op::ListSubscriptions => {
            let subs = c.list_subscriptions(caller)?;
            Reply::ok(json!({ "count": {"type": "Total", "value": subs.len()}, "value": subs }))
        }
        Op::GetSubscription => Reply::ok(c.get_subscription(p.sub())?),
        Op::ProviderOperations => Reply::ok(json!({ "value": provider_operations() })),
        Op::ListGroups => {
            let page = c.list_groups(p.sub(), skip_token(ctx)?.as_deref())?;
            page_reply(ctx, page.items, page.next)
        }
        Op::PutGroup => {
            let (created, body) = c.put_group(p.sub(), p.rg(), &ctx.json()?)?;
            Reply::json(if created { 201 } else { 200 }, body)
        }
        Op::GetGroup => Reply::ok(c.get_group(p.sub(), p.rg())?),
        Op::HeadGroup => match c.get_group(p.sub(), p.rg()) {
            Ok(_) => Reply::empty(204),
            Err(Error::ResourceGroupNotFound(_)) => Reply::empty(404),
            Err(e) => return Err(e),
        },
        Op::PatchGroup => Reply::ok(c.patch_group(p.sub(), p.rg(), &ctx.json()?)?),
        Op::DeleteGroup => {
            c.delete_group(p.sub(), p.rg())?;
            Reply::empty(200)
        }
        Op::ListVaultsBySubscription | Op::ListVaultsByGroup => {
            let rg = (op == Op::ListVaultsByGroup).then(|| p.rg());
            let page = c.list_vaults(p.sub(), rg, skip_token(ctx)?.as_deref())?;
            page_reply(ctx, page.items, page.next)
        }
        Op::PutVault => {
            check_conditions(ctx, vault_etag(ctx, p)?)?;
            let (created, body) = c.put_vault(caller, p.sub(), p.rg(), p.vault(), &ctx.json()?)?;
            Reply::json(if created { 201 } else { 200 }, body)
        }
        Op::GetVault => Reply::rendered(c.get_vault_text(p.sub(), p.rg(), p.vault())?),
        Op::PatchVault => {
            check_conditions(ctx, vault_etag(ctx, p)?)?;
            Reply::ok(c.patch_vault(caller, p.sub(), p.rg(), p.vault(), &ctx.json()?)?)
        }
        Op::DeleteVault => {
            check_conditions(ctx, vault_etag(ctx, p)?)?;
            match c.delete_vault(p.sub(), p.rg(), p.vault())? {
                Some(op) => accepted(
                    ctx,
                    &format!("{}/operationResults/{op}", vault_base(ctx)),
                    &format!("{}/operationStatus/{op}", vault_base(ctx)),
                ),
                None => Reply::empty(204),
            }
        }
        Op::VaultOperationStatus => {
            let o = c.vault_operation(p.sub(), p.rg(), p.vault(), p.get("operationId"))?;
            let id = format!(
                "{}/operationStatus/{}",
                vault_base(ctx).trim_start_matches(&ctx.base),
                p.get("operationId")
            );
            Reply::ok(Control::operation_status_body(&id, &o))
        }
        Op::VaultOperationResult => {
            let o = c.vault_operation(p.sub(), p.rg(), p.vault(), p.get("operationId"))?;
            match o.status.as_str() {
                "InProgress" => Reply::empty(202)
                    .header(
                        "Location",
                        with_api_version(
                            ctx,
                            &format!("{}/operationResults/{}", vault_base(ctx), p.get("operationId")),
                        ),
                    )
                    .header("Retry-After", ctx.state.config.retry_after_secs.to_string()),
                // The spec declares 200 (the vault) and 202 only: a finished delete's result is a
                // 200 with no vault left to show.
                "Succeeded" => match c.get_vault_text(p.sub(), p.rg(), p.vault()) {
                    Ok(v) => Reply::rendered(v),
                    Err(Error::ResourceNotFound { .. }) => Reply::empty(200),
                    Err(e) => return Err(e),
                },
                _ => Reply::ok(Control::operation_status_body(&ctx.raw_path, &o)),
            }
        }
        Op::CheckVaultName => Reply::ok(c.check_vault_name(p.sub(), p.rg(), &ctx.json()?)?),
        Op::VaultUsages => Reply::ok(json!({ "value": c.vault_usages(p.sub(), p.rg(), p.vault())? })),
        Op::GetVaultExtendedInfo => Reply::ok(c.get_vault_extended_info(p.sub(), p.rg(), p.vault())?),
        Op::PutVaultExtendedInfo | Op::PatchVaultExtendedInfo => {
            let merge = op == Op::PatchVaultExtendedInfo;
            Reply::ok(c.set_vault_extended_info(p.sub(), p.rg(), p.vault(), &ctx.json()?, merge)?)
        }
        Op::PutRoleAssignment => {
            let (created, body) =
                c.put_role_assignment(caller, &p.scope(), p.get("roleAssignmentName"), &ctx.json()?)?;
            Reply::json(if created { 201 } else { 200 }, body)
        }
        Op::GetRoleAssignment => Reply::ok(c.get_role_assignment(&p.scope(), p.get("roleAssignmentName"))?),
        Op::DeleteRoleAssignment => match c.delete_role_assignment(&p.scope(), p.get("roleAssignmentName"))? {
            Some(body) => Reply::ok(body),
            None => Reply::empty(204),
        },
        Op::ListRoleAssignments => {
            Reply::ok(json!({ "value": c.list_role_assignments(&p.scope(), ctx.query("$filter"))? }))
        }
        Op::ListRoleDefinitions => {
            Reply::ok(json!({ "value": c.list_role_definitions(&p.scope(), ctx.query("$filter")) }))
        }
        Op::GetRoleDefinition => Reply::ok(c.get_role_definition(&p.scope(), p.get("roleDefinitionId"))?),
        Op::RpExtendedInfo => {
            Reply::ok(c.rp_extended_info(p.sub(), p.rg(), p.vault(), p.get("fabricName"), &ctx.json()?)?)
        }
        Op::RpExtendedInfoResult => {
            c.vault_row(p.sub(), p.rg(), p.vault())?;
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!(
                    "The operation '{}' was not found: getRPExtendedInfo answers at once, with no operation to follow.",
                    p.get("operationId")
                ),
            });
        }
        Op::Capabilities => Reply::ok(c.capabilities(p.sub(), &ctx.json()?)?),
        Op::ListDeletedVaults => Reply::ok(json!({ "value": c.list_deleted_vaults(p.sub(), p.get("azureRegion"))? })),
        Op::GetDeletedVault => {
            Reply::ok(c.get_deleted_vault(p.sub(), p.get("azureRegion"), p.get("deletedVaultName"))?)
        }
        Op::UndeleteVault => {
            let (op, _) = c.undelete_vault(p.sub(), p.get("azureRegion"), p.get("deletedVaultName"), &ctx.json()?)?;
            // The vault is back before the answer; the operation URL tells so to a poller.
            let status = format!("{}/operations/{op}", request_url_up(ctx, 1));
            accepted(ctx, &status, &status)
        }
        Op::DeletedVaultOperationStatus => {
            let o = c.deleted_vault_operation(
                p.sub(),
                p.get("azureRegion"),
                p.get("deletedVaultName"),
                p.get("operationId"),
            )?;
            let id = ctx.raw_path.clone();
            Reply::ok(Control::operation_status_body(&id, &o))
        }
        Op::AbsentList(what) => Reply::ok(c.absent_list(p.sub(), p.rg(), p.vault(), what)?),
        Op::AbsentGet(what) => Reply::ok(c.absent_get(p.sub(), p.rg(), p.vault(), p.last(), what)?),
        Op::AbsentAction(what, operation) => Reply::ok(c.absent_action(p.sub(), p.rg(), p.vault(), operation, what)?),
        Op::Inventory(op) => return inventory::dispatch(ctx, op, p),
        Op::Backup(op) => return backup::dispatch(ctx, caller, op, p),
        Op::RestoreTool(op) => return ilr::dispatch(ctx, caller, op, p),
    })
}

/// `https://host/subscriptions/…/vaults/{v}` in the casing the request used.
pub(crate) fn vault_base(ctx: &Ctx) -> String {
    let path = &ctx.raw_path;
    let lower = path.to_ascii_lowercase();
    let end = lower
        .find("/providers/microsoft.recoveryservices/vaults/")
        .map(|i| {
            let start = i + "/providers/microsoft.recoveryservices/vaults/".len();
            start + lower[start..].find('/').unwrap_or(lower.len() - start)
        })
        .unwrap_or(path.len());
    format!("{}{}", ctx.base, &path[..end])
}

pub(crate) fn with_api_version(ctx: &Ctx, url: &str) -> String {
    format!("{url}?api-version={}", ctx.api_version())
}

/// 202 Accepted with ARM's headers for a long-running operation; the URLs carry the request's api-version.
pub(crate) fn accepted(ctx: &Ctx, location: &str, async_operation: &str) -> Reply {
    Reply::empty(202)
        .header("Location", with_api_version(ctx, location))
        .header("Azure-AsyncOperation", with_api_version(ctx, async_operation))
        .header("Retry-After", ctx.state.config.retry_after_secs.to_string())
}

/// The request's URL with literal `;` where the client sent `%3B`, as the live service echoes it.
pub(crate) fn request_url(ctx: &Ctx) -> String {
    format!("{}{}", ctx.base, ctx.raw_path.replace("%3B", ";").replace("%3b", ";"))
}

/// [`request_url`] without its last `n` segments.
pub(crate) fn request_url_up(ctx: &Ctx, n: usize) -> String {
    let mut u = request_url(ctx);
    for _ in 0..n {
        if let Some(i) = u.rfind('/') {
            u.truncate(i);
        }
    }
    u
}

fn vault_etag(ctx: &Ctx, p: &Params) -> Result<Option<String>> {
    if ctx.header("if-match").is_none() && ctx.header("if-none-match").is_none() {
        return Ok(None);
    }
    match ctx.state.control.get_vault(p.sub(), p.rg(), p.vault()) {
        Ok(v) => Ok(v["etag"].as_str().map(String::from)),
        Err(Error::ResourceNotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `If-Match` / `If-None-Match` against the current ETag (`None`: the resource does not exist).
fn check_conditions(ctx: &Ctx, current: Option<String>) -> Result<()> {
    let matches = |h: &str| {
        h.split(',')
            .map(str::trim)
            .any(|t| t == "*" || Some(t) == current.as_deref())
    };
    if let Some(h) = ctx.header("if-match") {
        if current.is_none() || !matches(h) {
            return Err(Error::PreconditionFailed);
        }
    }
    if let Some(h) = ctx.header("if-none-match") {
        if current.is_some() && matches(h) {
            return Err(Error::PreconditionFailed);
        }
    }
    Ok(())
}

/// `GET /providers/Microsoft.RecoveryServices/operations`: the RP's actions, from the route table.
fn provider_operations() -> Vec<Value> {
    let mut actions: Vec<&str> = ROUTES
        .iter()
        .filter_map(|r| match r.access {
            Access::Action(a) if a.starts_with("Microsoft.RecoveryServices/") => Some(a),
            _ => None,
        })
        .collect();
    actions.sort_unstable();
    actions.dedup();
    actions
        .into_iter()
        .map(|a| {
            let parts: Vec<&str> = a.split('/').collect();
            let verb = parts.last().copied().unwrap_or_default();
            let resource = parts[1..parts.len() - 1].join("/");
            let operation = match verb {
                "read" => "Read",
                "write" => "Create or Update",
                "delete" => "Delete",
                _ => "Action",
            };
            json!({
                "name": a,
                "display": {"provider": "Microsoft.RecoveryServices", "resource": resource, "operation": format!("{operation} {resource}"),
                            "description": format!("{operation} {resource}")},
                "origin": "user",
            })
        })
        .collect()
}
