//! Dispatch of the inventory endpoints (`Microsoft.Compute/virtualMachines`,
//! `Microsoft.Storage/storageAccounts` and their file shares).

use crate::pipeline::{page_reply, skip_token, Ctx};
use crate::reply::Reply;
use crate::routes::{InventoryOp, Params};
use rsvault_control::Result;
use serde_json::json;

fn put(created: bool, body: serde_json::Value) -> Reply {
    Reply::json(if created { 201 } else { 200 }, body)
}

fn deleted(existed: bool) -> Reply {
    Reply::empty(if existed { 200 } else { 204 })
}

/// Carries out an inventory endpoint.
pub fn dispatch(ctx: &Ctx, op: InventoryOp, p: &Params) -> Result<Reply> {
    let c = &ctx.state.control;
    let (sub, rg) = (p.sub(), p.rg());
    Ok(match op {
        InventoryOp::ListVmsBySubscription | InventoryOp::ListVmsByGroup => {
            let group = (op == InventoryOp::ListVmsByGroup).then_some(rg);
            let page = c.list_vms(sub, group, skip_token(ctx)?.as_deref())?;
            page_reply(ctx, page.items, page.next)
        }
        InventoryOp::PutVm => {
            let (created, body) = c.put_vm(sub, rg, p.get("vmName"), &ctx.json()?)?;
            put(created, body)
        }
        InventoryOp::GetVm => Reply::ok(c.get_vm(sub, rg, p.get("vmName"))?),
        InventoryOp::DeleteVm => deleted(c.delete_vm(sub, rg, p.get("vmName"))?),
        InventoryOp::ListAccountsBySubscription | InventoryOp::ListAccountsByGroup => {
            let group = (op == InventoryOp::ListAccountsByGroup).then_some(rg);
            let page = c.list_storage_accounts(sub, group, skip_token(ctx)?.as_deref())?;
            page_reply(ctx, page.items, page.next)
        }
        InventoryOp::PutAccount => {
            let (created, body) = c.put_storage_account(sub, rg, p.get("accountName"), &ctx.json()?)?;
            put(created, body)
        }
        InventoryOp::GetAccount => Reply::ok(c.get_storage_account(sub, rg, p.get("accountName"))?),
        InventoryOp::DeleteAccount => deleted(c.delete_storage_account(sub, rg, p.get("accountName"))?),
        InventoryOp::ListShares => Reply::ok(json!({"value": c.list_shares(sub, rg, p.get("accountName"))?})),
        InventoryOp::PutShare => {
            let (created, body) = c.put_share(sub, rg, p.get("accountName"), p.get("shareName"), &ctx.json()?)?;
            put(created, body)
        }
        InventoryOp::GetShare => Reply::ok(c.get_share(sub, rg, p.get("accountName"), p.get("shareName"))?),
        InventoryOp::DeleteShare => deleted(c.delete_share(sub, rg, p.get("accountName"), p.get("shareName"))?),
    })
}
