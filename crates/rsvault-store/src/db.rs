//! Typed statements over one connection or transaction, of either backend.
//!
//! Every statement is one SQL text both dialects run (see [`crate::sql`]): `?N` placeholders, `ON
//! CONFLICT` upserts, `"end"` quoted, a parameter that may be NULL cast before `IS NULL` (PostgreSQL
//! must know its type).

use crate::rows::*;
use crate::sql::{ps, ts, Conn, SqlRow, P};
use crate::StoreError;
use chrono::{DateTime, Utc};
use rsvault_core::ids::key;

/// A connection (or open transaction) with rsvault's statements.
pub struct Db<'a>(pub(crate) Conn<'a>);

type R<T> = Result<T, StoreError>;

fn page<T>(mut items: Vec<T>, limit: usize, key_of: impl Fn(&T) -> String) -> Page<T> {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key_of)
    } else {
        None
    };
    Page { items, next }
}

const PRINCIPAL_COLS: &str = "client_id, object_id, tenant_id, display_name, secret_hash, created";
const ASSIGNMENT_COLS: &str = "id, name, scope, role_definition_id, principal_id, principal_type, created, created_by";
const OPERATION_COLS: &str = r#"id, scope_key, kind, status, start, "end", error, properties, target"#;
const JOB_COLS: &str =
    r#"id, vault_key, name, operation, status, backup_management_type, entity, start, "end", body, phase, work"#;
const LEASE_COLS: &str = "job_key, vault_key, node, fence, expires";
/// The last fencing token given to a job lease.
const META_FENCE: &str = "job_lease_fence";
/// The `meta` counter every change of role assignments moves (in the change's transaction), so a node
/// that keeps a principal's assignments in memory knows, from one small read, when to read them again.
pub const ACCESS_GENERATION: &str = "access_generation";
const RP_COLS: &str = "id, vault_key, item_key, name, time, expiry, body, engine";
const RESOURCE_COLS: &str = "id, sub_key, rg_key, type_key, name, parent_key, body, etag, created, updated";
const GROUP_COLS: &str = "sub_key, name, id, location, tags, managed_by, created";
const SECRET_COLS: &str = "vault_key, sealed, repo, created";

fn resource_row(r: &SqlRow) -> R<ResourceRow> {
    let (mut row, text) = resource_row_text(r)?;
    row.body = serde_json::from_str(&text)?;
    Ok(row)
}

/// A resource row whose body is left as its stored text (the row's `body` is `Null`).
fn resource_row_text(r: &SqlRow) -> R<ResourceText> {
    Ok((
        ResourceRow {
            id: r.text(0)?,
            subscription: r.text(1)?,
            resource_group: r.opt_text(2)?,
            type_key: r.text(3)?,
            name: r.text(4)?,
            parent_key: r.opt_text(5)?,
            body: serde_json::Value::Null,
            etag: r.text(7)?,
            created: r.time(8)?,
            updated: r.time(9)?,
        },
        r.text(6)?,
    ))
}

fn operation_row(r: &SqlRow) -> R<OperationRow> {
    Ok(OperationRow {
        id: r.text(0)?,
        scope_key: r.text(1)?,
        kind: r.text(2)?,
        status: r.text(3)?,
        start: r.time(4)?,
        end: r.opt_time(5)?,
        error: r.opt_json(6)?,
        properties: r.opt_json(7)?,
        target: r.opt_text(8)?,
    })
}

fn job_row(r: &SqlRow) -> R<JobRow> {
    let (mut j, text) = job_row_text(r)?;
    j.body = serde_json::from_str(&text)?;
    j.work = r.opt_json(11)?;
    Ok(j)
}

/// A job row whose body is left as its stored text (the row's `body` is `Null`, its `work` `None`): for
/// answers that can reuse a rendering of the same text instead of parsing it again.
fn job_row_text(r: &SqlRow) -> R<(JobRow, String)> {
    Ok((
        JobRow {
            id: r.text(0)?,
            vault_key: r.text(1)?,
            name: r.text(2)?,
            operation: r.text(3)?,
            status: r.text(4)?,
            backup_management_type: r.text(5)?,
            entity: r.text(6)?,
            start: r.time(7)?,
            end: r.opt_time(8)?,
            body: serde_json::Value::Null,
            phase: r.opt_text(10)?,
            work: None,
        },
        r.text(9)?,
    ))
}

fn lease_row(r: &SqlRow) -> R<JobLease> {
    Ok(JobLease {
        job_key: r.text(0)?,
        vault_key: r.text(1)?,
        node: r.text(2)?,
        fence: r.int(3)?,
        expires: r.time(4)?,
    })
}

fn rp_row(r: &SqlRow) -> R<RecoveryPointRow> {
    Ok(RecoveryPointRow {
        id: r.text(0)?,
        vault_key: r.text(1)?,
        item_key: r.text(2)?,
        name: r.text(3)?,
        time: r.time(4)?,
        expiry: r.opt_time(5)?,
        body: r.json(6)?,
        engine: r.json(7)?,
    })
}

fn group_row(r: &SqlRow) -> R<GroupRow> {
    Ok(GroupRow {
        subscription: r.text(0)?,
        name: r.text(1)?,
        id: r.text(2)?,
        location: r.text(3)?,
        tags: r.json(4)?,
        managed_by: r.opt_text(5)?,
        created: r.time(6)?,
    })
}

fn principal_row(r: &SqlRow) -> R<PrincipalRow> {
    Ok(PrincipalRow {
        client_id: r.text(0)?,
        object_id: r.text(1)?,
        tenant_id: r.text(2)?,
        display_name: r.text(3)?,
        secret_hash: r.text(4)?,
        created: r.time(5)?,
    })
}

fn assignment_row(r: &SqlRow) -> R<RoleAssignmentRow> {
    Ok(RoleAssignmentRow {
        id: r.text(0)?,
        name: r.text(1)?,
        scope: r.text(2)?,
        role_definition_id: r.text(3)?,
        principal_id: r.text(4)?,
        principal_type: r.text(5)?,
        created: r.time(6)?,
        created_by: r.text(7)?,
    })
}

/// The key of a retired vault row: the repository it says must be removed.
pub fn retired_key(repo: &str) -> String {
    format!("removed:{repo}")
}

fn secret_row(r: &SqlRow) -> R<VaultSecretRow> {
    Ok(VaultSecretRow {
        vault_key: r.text(0)?,
        sealed: r.text(1)?,
        repo: r.text(2)?,
        created: r.time(3)?,
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

impl Db<'_> {
    // ---- meta -------------------------------------------------------------------------------
    pub fn meta(&self, k: &str) -> R<Option<String>> {
        self.0
            .row("SELECT value FROM meta WHERE key = ?1", ps![k], |r| r.text(0))
    }

    pub fn set_meta(&self, k: &str, v: &str) -> R<()> {
        self.0.exec(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            ps![k, v],
        )?;
        Ok(())
    }

    /// Moves the access generation on (see [`ACCESS_GENERATION`]) when `changed` rows of role
    /// assignments changed; returns `changed`.
    fn assignments_changed(&self, changed: usize) -> R<usize> {
        if changed > 0 {
            self.0.exec(
                "INSERT INTO meta (key, value) VALUES (?1, '1') ON CONFLICT (key)
                 DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)",
                ps![ACCESS_GENERATION],
            )?;
        }
        Ok(changed)
    }

    /// The access generation: changes whenever any role assignment does (`"0"` before the first change).
    pub fn access_generation(&self) -> R<String> {
        Ok(self.meta(ACCESS_GENERATION)?.unwrap_or_else(|| "0".into()))
    }

    // ---- subscriptions ----------------------------------------------------------------------
    pub fn insert_subscription(&self, s: &SubscriptionRow) -> R<()> {
        self.0.exec(
            "INSERT INTO subscriptions (id_key, id, tenant_id, display_name, state, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            ps![key(&s.id), &s.id, &s.tenant_id, &s.display_name, &s.state, ts(&s.created)],
        )?;
        Ok(())
    }

    pub fn subscription(&self, id: &str) -> R<Option<SubscriptionRow>> {
        self.0.row(
            "SELECT id, tenant_id, display_name, state, created FROM subscriptions WHERE id_key = ?1",
            ps![key(id)],
            |r| {
                Ok(SubscriptionRow {
                    id: r.text(0)?,
                    tenant_id: r.text(1)?,
                    display_name: r.text(2)?,
                    state: r.text(3)?,
                    created: r.time(4)?,
                })
            },
        )
    }

    pub fn subscriptions(&self) -> R<Vec<SubscriptionRow>> {
        let ids = self
            .0
            .rows("SELECT id FROM subscriptions ORDER BY id_key", ps![], |r| r.text(0))?;
        ids.iter().filter_map(|id| self.subscription(id).transpose()).collect()
    }

    // ---- resource groups --------------------------------------------------------------------
    /// Inserts or replaces a group; returns true when it was new.
    pub fn put_group(&self, g: &GroupRow) -> R<bool> {
        let existed = self.group(&g.subscription, &g.name)?.is_some();
        self.0.exec(
            "INSERT INTO resource_groups (sub_key, name_key, name, id, location, tags, managed_by, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (sub_key, name_key) DO UPDATE SET location = excluded.location, tags = excluded.tags, managed_by = excluded.managed_by",
            ps![
                key(&g.subscription),
                key(&g.name),
                &g.name,
                &g.id,
                &g.location,
                g.tags.to_string(),
                &g.managed_by,
                ts(&g.created)
            ],
        )?;
        Ok(!existed)
    }

    pub fn group(&self, sub: &str, name: &str) -> R<Option<GroupRow>> {
        self.0.row(
            &format!("SELECT {GROUP_COLS} FROM resource_groups WHERE sub_key = ?1 AND name_key = ?2"),
            ps![key(sub), key(name)],
            group_row,
        )
    }

    pub fn groups(&self, sub: &str, after: Option<&str>, limit: usize) -> R<Page<GroupRow>> {
        let items = self.0.rows(
            &format!(
                "SELECT {GROUP_COLS} FROM resource_groups WHERE sub_key = ?1 AND name_key > ?2 ORDER BY name_key LIMIT ?3"
            ),
            ps![key(sub), after.map(key).unwrap_or_default(), limit_of(limit)],
            group_row,
        )?;
        Ok(page(items, limit, |g| key(&g.name)))
    }

    /// Deletes a group and every resource in it; returns false when there was no such group.
    pub fn delete_group(&self, sub: &str, name: &str) -> R<bool> {
        self.0.exec(
            "DELETE FROM resources WHERE sub_key = ?1 AND rg_key = ?2",
            ps![key(sub), key(name)],
        )?;
        let prefix = format!(
            "{}/resourcegroups/{}/",
            key(&format!("/subscriptions/{sub}")),
            key(name)
        );
        let n = self.0.exec(
            "DELETE FROM role_assignments WHERE substr(scope_key, 1, length(?1)) = ?1 OR scope_key = ?2",
            ps![prefix.clone(), prefix.trim_end_matches('/')],
        )?;
        self.assignments_changed(n)?;
        Ok(self.0.exec(
            "DELETE FROM resource_groups WHERE sub_key = ?1 AND name_key = ?2",
            ps![key(sub), key(name)],
        )? > 0)
    }

    // ---- resources --------------------------------------------------------------------------
    /// Inserts or replaces a resource (keyed by its lower-cased id); returns true when it was new.
    /// On replace, the id text and creation time of the first write are kept.
    pub fn put_resource(&self, r: &ResourceRow) -> R<bool> {
        let existed = self
            .0
            .row("SELECT 1 FROM resources WHERE id_key = ?1", ps![key(&r.id)], |_| Ok(()))?
            .is_some();
        self.0.exec(
            "INSERT INTO resources (id_key, id, sub_key, rg_key, type_key, name, parent_key, body, etag, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (id_key) DO UPDATE SET body = excluded.body, etag = excluded.etag, updated = excluded.updated",
            ps![
                key(&r.id),
                &r.id,
                key(&r.subscription),
                r.resource_group.as_deref().map(key),
                key(&r.type_key),
                &r.name,
                r.parent_key.as_deref().map(key),
                r.body.to_string(),
                &r.etag,
                ts(&r.created),
                ts(&r.updated)
            ],
        )?;
        Ok(!existed)
    }

    pub fn resource(&self, id: &str) -> R<Option<ResourceRow>> {
        self.0.row(
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE id_key = ?1"),
            ps![key(id)],
            resource_row,
        )
    }

    /// [`Db::resource`] with the body left as its stored text (see [`ResourceText`]).
    pub fn resource_text(&self, id: &str) -> R<Option<ResourceText>> {
        self.0.row(
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE id_key = ?1"),
            ps![key(id)],
            resource_row_text,
        )
    }

    /// A resource's id as stored, without reading its body (an existence check for the request path).
    pub fn resource_id(&self, id: &str) -> R<Option<String>> {
        self.0
            .row("SELECT id FROM resources WHERE id_key = ?1", ps![key(id)], |r| {
                r.text(0)
            })
    }

    /// Resources of one type in a subscription, optionally one group, in key order, paged.
    pub fn resources(
        &self,
        sub: &str,
        group: Option<&str>,
        type_key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> R<Page<ResourceRow>> {
        let items = self.0.rows(
            &format!(
                "SELECT {RESOURCE_COLS} FROM resources WHERE sub_key = ?1 AND type_key = ?2
                 AND (CAST(?3 AS TEXT) IS NULL OR rg_key = ?3) AND id_key > ?4 ORDER BY id_key LIMIT ?5"
            ),
            ps![
                key(sub),
                key(type_key),
                group.map(key),
                after.unwrap_or_default(),
                limit_of(limit)
            ],
            resource_row,
        )?;
        Ok(page(items, limit, |r| key(&r.id)))
    }

    /// Every resource of one type in a subscription (for lookups across vaults, e.g. "is this VM protected
    /// anywhere?").
    pub fn all_of_type(&self, sub: &str, type_key: &str) -> R<Vec<ResourceRow>> {
        self.0.rows(
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE sub_key = ?1 AND type_key = ?2 ORDER BY id_key"),
            ps![key(sub), key(type_key)],
            resource_row,
        )
    }

    /// Every resource of a type, in every subscription (the scheduler's walk over protected items).
    pub fn everywhere_of_type(&self, type_key: &str) -> R<Vec<ResourceRow>> {
        self.0.rows(
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE type_key = ?1 ORDER BY id_key"),
            ps![type_key.to_ascii_lowercase()],
            resource_row,
        )
    }

    /// Every resource below an id (any depth, any type), in key order.
    pub fn subtree(&self, id: &str) -> R<Vec<ResourceRow>> {
        self.0.rows(
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE substr(id_key, 1, length(?1)) = ?1 ORDER BY id_key"),
            ps![format!("{}/", key(id))],
            resource_row,
        )
    }

    /// Every resource of one type below an id (any depth), in key order.
    pub fn all_below(&self, id: &str, type_key: &str) -> R<Vec<ResourceRow>> {
        self.0.rows(
            &format!(
                "SELECT {RESOURCE_COLS} FROM resources WHERE substr(id_key, 1, length(?1)) = ?1 AND type_key = ?2 ORDER BY id_key"
            ),
            ps![format!("{}/", key(id)), key(type_key)],
            resource_row,
        )
    }

    /// [`Db::all_below`], paged: the resources of one type below an id whose keys sort after `after`
    /// (a key of an earlier page; `None` from the start; a key not below `id` gives an empty page), at
    /// most `limit`, `next` set when more follow.
    /// One range of the primary key: a page reads about its own rows, however many the id holds. Each
    /// body is left as its stored text (see [`ResourceText`]).
    pub fn below_page(&self, id: &str, type_key: &str, after: Option<&str>, limit: usize) -> R<Page<ResourceText>> {
        let prefix = format!("{}/", key(id));
        // Every key that starts with `…/` sorts below `…0` ('0' follows '/').
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        let from = match after {
            Some(a) if !a.starts_with(&prefix) => {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                })
            }
            Some(a) => a,
            None => &prefix,
        };
        let rows = self.0.rows(
            &format!(
                "SELECT {RESOURCE_COLS} FROM resources WHERE id_key > ?1 AND id_key < ?2 AND type_key = ?3 ORDER BY id_key LIMIT ?4"
            ),
            ps![from, end, key(type_key), limit_of(limit)],
            resource_row_text,
        )?;
        Ok(page(rows, limit, |r| key(&r.0.id)))
    }

    /// Children of a resource, of one type (or all types with `None`), in key order, paged.
    pub fn children(
        &self,
        parent: &str,
        type_key: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> R<Page<ResourceRow>> {
        let items = self.0.rows(
            &format!(
                "SELECT {RESOURCE_COLS} FROM resources WHERE parent_key = ?1 AND (CAST(?2 AS TEXT) IS NULL OR type_key = ?2)
                 AND id_key > ?3 ORDER BY id_key LIMIT ?4"
            ),
            ps![
                key(parent),
                type_key.map(key),
                after.unwrap_or_default(),
                limit_of(limit)
            ],
            resource_row,
        )?;
        Ok(page(items, limit, |r| key(&r.id)))
    }

    /// How many resources of a type live below an id (at any depth).
    pub fn count_below(&self, id: &str, type_key: &str) -> R<i64> {
        Ok(self
            .0
            .row(
                "SELECT count(*) FROM resources WHERE substr(id_key, 1, length(?1)) = ?1 AND type_key = ?2",
                ps![format!("{}/", key(id)), key(type_key)],
                |r| r.int(0),
            )?
            .unwrap_or(0))
    }

    /// Deletes a resource and everything below it; returns false when it did not exist.
    pub fn delete_resource(&self, id: &str) -> R<bool> {
        let k = key(id);
        let below = format!("{k}/");
        self.0.exec(
            "DELETE FROM resources WHERE substr(id_key, 1, length(?1)) = ?1",
            ps![&below],
        )?;
        let n = self.0.exec(
            "DELETE FROM role_assignments WHERE scope_key = ?1 OR substr(scope_key, 1, length(?2)) = ?2",
            ps![&k, &below],
        )?;
        self.assignments_changed(n)?;
        self.0.exec(
            "DELETE FROM jobs WHERE vault_key = ?1 OR substr(vault_key, 1, length(?2)) = ?2",
            ps![&k, &below],
        )?;
        self.0.exec(
            "DELETE FROM job_leases WHERE vault_key = ?1 OR substr(vault_key, 1, length(?2)) = ?2",
            ps![&k, &below],
        )?;
        self.0.exec(
            "DELETE FROM recovery_points WHERE substr(id_key, 1, length(?1)) = ?1",
            ps![&below],
        )?;
        self.0.exec(
            "DELETE FROM schedule_slots WHERE item_key = ?1 OR substr(item_key, 1, length(?2)) = ?2",
            ps![&k, &below],
        )?;
        Ok(self.0.exec("DELETE FROM resources WHERE id_key = ?1", ps![k])? > 0)
    }

    // ---- principals -------------------------------------------------------------------------
    pub fn insert_principal(&self, p: &PrincipalRow) -> R<()> {
        self.0.exec(
            "INSERT INTO principals (client_id, object_id, tenant_id, display_name, secret_hash, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            ps![
                key(&p.client_id),
                &p.object_id,
                &p.tenant_id,
                &p.display_name,
                &p.secret_hash,
                ts(&p.created)
            ],
        )?;
        Ok(())
    }

    pub fn principal(&self, client_id: &str) -> R<Option<PrincipalRow>> {
        self.0.row(
            &format!("SELECT {PRINCIPAL_COLS} FROM principals WHERE client_id = ?1"),
            ps![key(client_id)],
            principal_row,
        )
    }

    pub fn principal_by_object_id(&self, object_id: &str) -> R<Option<PrincipalRow>> {
        self.0.row(
            &format!("SELECT {PRINCIPAL_COLS} FROM principals WHERE object_id = ?1"),
            ps![key(object_id)],
            principal_row,
        )
    }

    pub fn principals(&self) -> R<Vec<PrincipalRow>> {
        self.0.rows(
            &format!("SELECT {PRINCIPAL_COLS} FROM principals ORDER BY created, client_id"),
            ps![],
            principal_row,
        )
    }

    pub fn set_principal_secret(&self, client_id: &str, hash: &str) -> R<bool> {
        Ok(self.0.exec(
            "UPDATE principals SET secret_hash = ?2 WHERE client_id = ?1",
            ps![key(client_id), hash],
        )? > 0)
    }

    /// Deletes a principal and its role assignments.
    pub fn delete_principal(&self, client_id: &str) -> R<bool> {
        let Some(p) = self.principal(client_id)? else {
            return Ok(false);
        };
        let n = self.0.exec(
            "DELETE FROM role_assignments WHERE principal_id = ?1",
            ps![key(&p.object_id)],
        )?;
        self.assignments_changed(n)?;
        Ok(self
            .0
            .exec("DELETE FROM principals WHERE client_id = ?1", ps![key(client_id)])?
            > 0)
    }

    // ---- role assignments -------------------------------------------------------------------
    pub fn insert_role_assignment(&self, a: &RoleAssignmentRow) -> R<()> {
        self.0.exec(
            "INSERT INTO role_assignments (id_key, id, name, scope, scope_key, role_definition_id, principal_id, principal_type, created, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            ps![
                key(&a.id),
                &a.id,
                &a.name,
                &a.scope,
                key(a.scope.trim_end_matches('/')),
                &a.role_definition_id,
                key(&a.principal_id),
                &a.principal_type,
                ts(&a.created),
                &a.created_by
            ],
        )?;
        self.assignments_changed(1)?;
        Ok(())
    }

    pub fn role_assignment(&self, id: &str) -> R<Option<RoleAssignmentRow>> {
        self.0.row(
            &format!("SELECT {ASSIGNMENT_COLS} FROM role_assignments WHERE id_key = ?1"),
            ps![key(id)],
            assignment_row,
        )
    }

    /// A role assignment by its name (GUID) anywhere.
    pub fn role_assignment_by_name(&self, name: &str) -> R<Option<RoleAssignmentRow>> {
        self.0.row(
            &format!("SELECT {ASSIGNMENT_COLS} FROM role_assignments WHERE lower(name) = ?1"),
            ps![key(name)],
            assignment_row,
        )
    }

    pub fn role_assignments(&self) -> R<Vec<RoleAssignmentRow>> {
        self.0.rows(
            &format!("SELECT {ASSIGNMENT_COLS} FROM role_assignments ORDER BY created, id_key"),
            ps![],
            assignment_row,
        )
    }

    pub fn role_assignments_of(&self, principal_object_id: &str) -> R<Vec<RoleAssignmentRow>> {
        self.0.rows(
            &format!("SELECT {ASSIGNMENT_COLS} FROM role_assignments WHERE principal_id = ?1"),
            ps![key(principal_object_id)],
            assignment_row,
        )
    }

    pub fn delete_role_assignment(&self, id: &str) -> R<bool> {
        let n = self
            .0
            .exec("DELETE FROM role_assignments WHERE id_key = ?1", ps![key(id)])?;
        Ok(self.assignments_changed(n)? > 0)
    }

    // ---- signing keys -----------------------------------------------------------------------
    pub fn insert_signing_key(&self, k: &SigningKeyRow) -> R<()> {
        self.0.exec(
            "INSERT INTO signing_keys (kid, created, retired, pkcs8) VALUES (?1, ?2, ?3, ?4)",
            ps![&k.kid, ts(&k.created), k.retired.as_ref().map(ts), &k.pkcs8],
        )?;
        Ok(())
    }

    /// Replaces a key's stored material (sealing a key kept in clear by an older version).
    pub fn set_signing_key_material(&self, kid: &str, pkcs8: &[u8]) -> R<()> {
        self.0.exec(
            "UPDATE signing_keys SET pkcs8 = ?2 WHERE kid = ?1",
            ps![kid, &pkcs8.to_vec()],
        )?;
        Ok(())
    }

    /// Marks every current key retired at `at`.
    pub fn retire_signing_keys(&self, at: DateTime<Utc>) -> R<()> {
        self.0.exec(
            "UPDATE signing_keys SET retired = ?1 WHERE retired IS NULL",
            ps![ts(&at)],
        )?;
        Ok(())
    }

    pub fn signing_keys(&self) -> R<Vec<SigningKeyRow>> {
        self.0.rows(
            "SELECT kid, created, retired, pkcs8 FROM signing_keys ORDER BY created",
            ps![],
            |r| {
                Ok(SigningKeyRow {
                    kid: r.text(0)?,
                    created: r.time(1)?,
                    retired: r.opt_time(2)?,
                    pkcs8: r.bytes(3)?,
                })
            },
        )
    }

    // ---- operations -------------------------------------------------------------------------
    /// Inserts an operation record, or replaces the one with the same id (status changes).
    pub fn put_operation(&self, o: &OperationRow) -> R<()> {
        self.0.exec(
            &format!(
                r#"INSERT INTO operations ({OPERATION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET scope_key = excluded.scope_key, kind = excluded.kind,
                 status = excluded.status, start = excluded.start, "end" = excluded."end", error = excluded.error,
                 properties = excluded.properties, target = excluded.target"#
            ),
            ps![
                key(&o.id),
                key(&o.scope_key),
                &o.kind,
                &o.status,
                ts(&o.start),
                o.end.as_ref().map(ts),
                o.error.as_ref().map(|e| e.to_string()),
                o.properties.as_ref().map(|e| e.to_string()),
                &o.target
            ],
        )?;
        Ok(())
    }

    /// Deletes the operation records scoped to a resource or below it (its vault's, its items'…);
    /// returns how many went.
    pub fn delete_operations_below(&self, scope: &str) -> R<usize> {
        let k = key(scope);
        self.0.exec(
            "DELETE FROM operations WHERE scope_key = ?1 OR substr(scope_key, 1, length(?2)) = ?2",
            ps![k.clone(), format!("{k}/")],
        )
    }

    pub fn operation(&self, id: &str) -> R<Option<OperationRow>> {
        self.0.row(
            &format!("SELECT {OPERATION_COLS} FROM operations WHERE id = ?1"),
            ps![key(id)],
            operation_row,
        )
    }

    // ---- jobs -------------------------------------------------------------------------------
    /// Inserts a job or replaces the one with the same id.
    pub fn put_job(&self, j: &JobRow) -> R<()> {
        self.0.exec(
            &format!(
                r#"INSERT INTO jobs (id_key, {JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (id_key) DO UPDATE SET id = excluded.id, vault_key = excluded.vault_key,
                 name = excluded.name, operation = excluded.operation, status = excluded.status,
                 backup_management_type = excluded.backup_management_type, entity = excluded.entity,
                 start = excluded.start, "end" = excluded."end", body = excluded.body, phase = excluded.phase,
                 work = excluded.work"#
            ),
            ps![
                key(&j.id),
                &j.id,
                key(&j.vault_key),
                &j.name,
                &j.operation,
                &j.status,
                &j.backup_management_type,
                &j.entity,
                ts(&j.start),
                j.end.as_ref().map(ts),
                j.body.to_string(),
                &j.phase,
                j.work.as_ref().map(|w| w.to_string())
            ],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> R<Option<JobRow>> {
        self.0.row(
            &format!("SELECT {JOB_COLS} FROM jobs WHERE id_key = ?1"),
            ps![key(id)],
            job_row,
        )
    }

    /// [`Db::job`] with the body left as its stored text (see [`JobText`]).
    pub fn job_text(&self, id: &str) -> R<Option<JobText>> {
        self.0.row(
            &format!("SELECT {JOB_COLS} FROM jobs WHERE id_key = ?1"),
            ps![key(id)],
            job_row_text,
        )
    }

    /// Every job of a vault, newest first.
    pub fn jobs(&self, vault: &str) -> R<Vec<JobRow>> {
        self.0.rows(
            &format!("SELECT {JOB_COLS} FROM jobs WHERE vault_key = ?1 ORDER BY start DESC, id_key DESC"),
            ps![key(vault)],
            job_row,
        )
    }

    /// The jobs of a vault that `q` wants, newest first (`start`, then id key, descending), after the job
    /// whose id key is `after` (keyset paging: the jobs that sort below it), at most `limit` of them
    /// (`next` set when more follow). Served by the `(vault_key, start, id_key)` index: a page reads about
    /// its own rows, however many jobs the vault holds. An `after` that names no job of the vault gives
    /// an empty page.
    pub fn jobs_page(&self, vault: &str, q: &JobQuery, after: Option<&str>, limit: usize) -> R<Page<JobRow>> {
        self.jobs_page_of(vault, q, after, limit, job_row, |j| key(&j.id))
    }

    /// [`Db::jobs_page`] with each body left as its stored text (see [`JobText`]).
    pub fn jobs_page_text(&self, vault: &str, q: &JobQuery, after: Option<&str>, limit: usize) -> R<Page<JobText>> {
        self.jobs_page_of(vault, q, after, limit, job_row_text, |j| key(&j.0.id))
    }

    fn jobs_page_of<T>(
        &self,
        vault: &str,
        q: &JobQuery,
        after: Option<&str>,
        limit: usize,
        row: fn(&SqlRow) -> R<T>,
        key_of: fn(&T) -> String,
    ) -> R<Page<T>> {
        let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE vault_key = ?1");
        let mut params = vec![P::from(key(vault))];
        let mut clause = |sql_of: &dyn Fn(usize) -> String, p: P| {
            params.push(p);
            sql.push_str(" AND ");
            sql.push_str(&sql_of(params.len()));
        };
        for (column, want) in [
            ("status", &q.status),
            ("operation", &q.operation),
            ("backup_management_type", &q.backup_management_type),
            ("name", &q.name),
        ] {
            if let Some(v) = want {
                clause(&|n| format!("lower({column}) = ?{n}"), P::from(v.to_lowercase()));
            }
        }
        if let Some((t, inclusive)) = q.started_after {
            let op = if inclusive { ">=" } else { ">" };
            clause(&|n| format!("start {op} ?{n}"), P::from(ts(&t)));
        }
        if let Some((t, inclusive)) = q.started_before {
            let op = if inclusive { "<=" } else { "<" };
            clause(&|n| format!("start {op} ?{n}"), P::from(ts(&t)));
        }
        if let Some(after) = after {
            let Some(start) = self.0.row(
                "SELECT start FROM jobs WHERE id_key = ?1 AND vault_key = ?2",
                ps![after, key(vault)],
                |r| r.text(0),
            )?
            else {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            };
            clause(
                &|n| format!("(start < ?{n} OR (start = ?{n} AND id_key < ?{}))", n + 1),
                P::from(start),
            );
            params.push(P::from(after.to_string()));
        }
        sql.push_str(" ORDER BY start DESC, id_key DESC");
        if limit < usize::MAX {
            sql.push_str(&format!(" LIMIT {}", limit_of(limit)));
        }
        let rows = self.0.rows(&sql, &params, row)?;
        Ok(page(rows, limit, key_of))
    }

    /// Jobs of every vault in a job-engine phase (`queued`, `running`), oldest first.
    pub fn jobs_in_phase(&self, phase: &str) -> R<Vec<JobRow>> {
        self.0.rows(
            &format!("SELECT {JOB_COLS} FROM jobs WHERE phase = ?1 ORDER BY start, id_key"),
            ps![phase],
            job_row,
        )
    }

    // ---- job leases, nodes, leaders ----------------------------------------------------------
    /// Leases `job` (of `vault`) to `node` until `expires`, replacing any lease it had, with a fencing
    /// token greater than every earlier one; returns the token.
    pub fn lease_job(&self, job: &str, vault: &str, node: &str, expires: DateTime<Utc>) -> R<i64> {
        let fence = self.meta(META_FENCE)?.and_then(|f| f.parse::<i64>().ok()).unwrap_or(0) + 1;
        self.set_meta(META_FENCE, &fence.to_string())?;
        self.0.exec(
            "INSERT INTO job_leases (job_key, vault_key, node, fence, expires) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job_key) DO UPDATE SET vault_key = excluded.vault_key, node = excluded.node,
             fence = excluded.fence, expires = excluded.expires",
            ps![key(job), key(vault), node, fence, ts(&expires)],
        )?;
        Ok(fence)
    }

    pub fn job_lease(&self, job: &str) -> R<Option<JobLease>> {
        self.0.row(
            &format!("SELECT {LEASE_COLS} FROM job_leases WHERE job_key = ?1"),
            ps![key(job)],
            lease_row,
        )
    }

    /// Extends a lease still held by `node` with `fence`; false when it is no longer theirs.
    pub fn renew_job_lease(&self, job: &str, node: &str, fence: i64, expires: DateTime<Utc>) -> R<bool> {
        Ok(self.0.exec(
            "UPDATE job_leases SET expires = ?4 WHERE job_key = ?1 AND node = ?2 AND fence = ?3",
            ps![key(job), node, fence, ts(&expires)],
        )? > 0)
    }

    pub fn delete_job_lease(&self, job: &str) -> R<()> {
        self.0
            .exec("DELETE FROM job_leases WHERE job_key = ?1", ps![key(job)])?;
        Ok(())
    }

    /// How many jobs of a vault hold a lease (run), on any node.
    pub fn leased_jobs_in_vault(&self, vault: &str) -> R<usize> {
        Ok(self
            .0
            .row(
                "SELECT count(*) FROM job_leases WHERE vault_key = ?1",
                ps![key(vault)],
                |r| r.int(0),
            )?
            .unwrap_or(0) as usize)
    }

    /// Every lease, oldest expiry first.
    pub fn job_leases(&self) -> R<Vec<JobLease>> {
        self.0.rows(
            &format!("SELECT {LEASE_COLS} FROM job_leases ORDER BY expires, job_key"),
            ps![],
            lease_row,
        )
    }

    /// Records a node's heartbeat (its row is made at its first).
    pub fn put_node(&self, n: &NodeRow) -> R<()> {
        self.0.exec(
            "INSERT INTO nodes (node, started, seen, info) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node) DO UPDATE SET started = excluded.started, seen = excluded.seen, info = excluded.info",
            ps![&n.node, ts(&n.started), ts(&n.seen), n.info.to_string()],
        )?;
        Ok(())
    }

    /// Every node that ever reported, by name.
    pub fn nodes(&self) -> R<Vec<NodeRow>> {
        self.0.rows(
            "SELECT node, started, seen, info FROM nodes ORDER BY node",
            ps![],
            |r| {
                Ok(NodeRow {
                    node: r.text(0)?,
                    started: r.time(1)?,
                    seen: r.time(2)?,
                    info: r.json(3)?,
                })
            },
        )
    }

    /// Takes or keeps the named lease for `node` until `expires`: true when `node` holds it now (it was
    /// free, lapsed before `now`, or already `node`'s).
    pub fn take_leader(&self, name: &str, node: &str, now: DateTime<Utc>, expires: DateTime<Utc>) -> R<bool> {
        Ok(self.0.exec(
            "INSERT INTO leader_leases (name, node, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET node = excluded.node, expires = excluded.expires
             WHERE leader_leases.node = excluded.node OR leader_leases.expires < ?4",
            ps![name, node, ts(&expires), ts(&now)],
        )? > 0)
    }

    /// Gives up the named lease if `node` holds it.
    pub fn release_leader(&self, name: &str, node: &str) -> R<()> {
        self.0.exec(
            "DELETE FROM leader_leases WHERE name = ?1 AND node = ?2",
            ps![name, node],
        )?;
        Ok(())
    }

    /// Marks a vault for garbage collection (by whichever node leads the scheduler).
    pub fn mark_for_gc(&self, vault: &str) -> R<()> {
        self.0.exec(
            "INSERT INTO gc_marks (vault_key) VALUES (?1) ON CONFLICT (vault_key) DO NOTHING",
            ps![key(vault)],
        )?;
        Ok(())
    }

    /// Takes every garbage-collection mark (they are removed).
    pub fn take_gc_marks(&self) -> R<Vec<String>> {
        let marks = self
            .0
            .rows("SELECT vault_key FROM gc_marks ORDER BY vault_key", ps![], |r| {
                r.text(0)
            })?;
        self.0.exec("DELETE FROM gc_marks", ps![])?;
        Ok(marks)
    }

    /// Who holds the named lease, until when.
    pub fn leader(&self, name: &str) -> R<Option<(String, DateTime<Utc>)>> {
        self.0.row(
            "SELECT node, expires FROM leader_leases WHERE name = ?1",
            ps![name],
            |r| Ok((r.text(0)?, r.time(1)?)),
        )
    }

    // ---- recovery points ------------------------------------------------------------------
    /// Inserts a recovery point or replaces the one with the same id.
    pub fn put_recovery_point(&self, rp: &RecoveryPointRow) -> R<()> {
        self.0.exec(
            &format!(
                "INSERT INTO recovery_points (id_key, {RP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id_key) DO UPDATE SET id = excluded.id, vault_key = excluded.vault_key,
                 item_key = excluded.item_key, name = excluded.name, time = excluded.time,
                 expiry = excluded.expiry, body = excluded.body, engine = excluded.engine"
            ),
            ps![
                key(&rp.id),
                &rp.id,
                key(&rp.vault_key),
                key(&rp.item_key),
                &rp.name,
                ts(&rp.time),
                rp.expiry.as_ref().map(ts),
                rp.body.to_string(),
                rp.engine.to_string()
            ],
        )?;
        Ok(())
    }

    pub fn recovery_point(&self, id: &str) -> R<Option<RecoveryPointRow>> {
        self.0.row(
            &format!("SELECT {RP_COLS} FROM recovery_points WHERE id_key = ?1"),
            ps![key(id)],
            rp_row,
        )
    }

    /// The recovery points of a protected item, newest first.
    pub fn recovery_points(&self, item: &str) -> R<Vec<RecoveryPointRow>> {
        self.0.rows(
            &format!("SELECT {RP_COLS} FROM recovery_points WHERE item_key = ?1 ORDER BY time DESC, id_key DESC"),
            ps![key(item)],
            rp_row,
        )
    }

    /// The recovery points of a vault, oldest first.
    pub fn vault_recovery_points(&self, vault: &str) -> R<Vec<RecoveryPointRow>> {
        self.0.rows(
            &format!("SELECT {RP_COLS} FROM recovery_points WHERE vault_key = ?1 ORDER BY time, id_key"),
            ps![key(vault)],
            rp_row,
        )
    }

    /// Recovery points whose expiry is in (`after`, `until`], soonest first.
    pub fn recovery_points_expiring(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> R<Vec<RecoveryPointRow>> {
        self.0.rows(
            &format!(
                "SELECT {RP_COLS} FROM recovery_points WHERE expiry > ?1 AND expiry <= ?2 ORDER BY expiry, id_key"
            ),
            ps![ts(&after), ts(&until)],
            rp_row,
        )
    }

    pub fn delete_recovery_point(&self, id: &str) -> R<bool> {
        Ok(self
            .0
            .exec("DELETE FROM recovery_points WHERE id_key = ?1", ps![key(id)])?
            > 0)
    }

    // ---- schedule claims -------------------------------------------------------------------
    /// The last schedule slot an item was backed up for.
    pub fn schedule_slot(&self, item: &str) -> R<Option<DateTime<Utc>>> {
        self.0.row(
            "SELECT last_slot FROM schedule_slots WHERE item_key = ?1",
            ps![key(item)],
            |r| r.time(0),
        )
    }

    /// Claims `slot` for an item: true when it is later than the item's last claimed slot (and is now
    /// recorded), false when that slot or a later one was already claimed.
    pub fn claim_slot(&self, item: &str, slot: DateTime<Utc>) -> R<bool> {
        let n = self.0.exec(
            "INSERT INTO schedule_slots (item_key, last_slot) VALUES (?1, ?2)
             ON CONFLICT (item_key) DO UPDATE SET last_slot = excluded.last_slot
             WHERE schedule_slots.last_slot < excluded.last_slot",
            ps![key(item), ts(&slot)],
        )?;
        Ok(n > 0)
    }

    // ---- vault secrets --------------------------------------------------------------------
    pub fn vault_secret(&self, vault: &str) -> R<Option<VaultSecretRow>> {
        self.0.row(
            &format!("SELECT {SECRET_COLS} FROM vault_secrets WHERE vault_key = ?1"),
            ps![key(vault)],
            secret_row,
        )
    }

    pub fn delete_vault_secret(&self, vault: &str) -> R<bool> {
        Ok(self
            .0
            .exec("DELETE FROM vault_secrets WHERE vault_key = ?1", ps![key(vault)])?
            > 0)
    }

    /// Retires a deleted vault's row: its sealed password is dropped and the row is kept under
    /// the key `removed:REPO` (no resource has it), as the durable record that the repository
    /// `REPO` must still be removed; [`Db::orphaned_vault_secrets`] lists it until
    /// [`Db::delete_vault_secret`] of that key. Returns the row as it was, if there was one.
    pub fn retire_vault_secret(&self, vault: &str) -> R<Option<VaultSecretRow>> {
        let Some(row) = self.vault_secret(vault)? else {
            return Ok(None);
        };
        self.0.exec(
            "UPDATE vault_secrets SET vault_key = ?2, sealed = '' WHERE vault_key = ?1",
            ps![key(vault), key(&retired_key(&row.repo))],
        )?;
        Ok(Some(row))
    }

    /// Moves a vault's sealed password and repository record to another key (a vault soft-deleted
    /// into its deleted-vault record, and back at undelete). Returns whether there was one to move.
    pub fn rekey_vault_secret(&self, from: &str, to: &str) -> R<bool> {
        Ok(self.0.exec(
            "UPDATE vault_secrets SET vault_key = ?2 WHERE vault_key = ?1",
            ps![key(from), key(to)],
        )? > 0)
    }

    /// Sealed passwords whose vault row is gone: retired rows ([`Db::retire_vault_secret`]),
    /// and what group deletes left before they deleted each vault through its own delete.
    pub fn orphaned_vault_secrets(&self) -> R<Vec<VaultSecretRow>> {
        self.0.rows(
            &format!(
                "SELECT {SECRET_COLS} FROM vault_secrets
                 WHERE vault_key NOT IN (SELECT id_key FROM resources) ORDER BY vault_key"
            ),
            ps![],
            secret_row,
        )
    }

    /// Deletes the recovery point rows whose vault row is gone; returns how many went.
    pub fn delete_orphaned_recovery_points(&self) -> R<usize> {
        self.0.exec(
            "DELETE FROM recovery_points WHERE vault_key NOT IN (SELECT id_key FROM resources)",
            ps![],
        )
    }

    /// Stores a vault's sealed password; an existing one is kept (returns `false`).
    pub fn insert_vault_secret(&self, s: &VaultSecretRow) -> R<bool> {
        Ok(self.0.exec(
            "INSERT INTO vault_secrets (vault_key, sealed, repo, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (vault_key) DO NOTHING",
            ps![key(&s.vault_key), &s.sealed, &s.repo, ts(&s.created)],
        )? > 0)
    }
}
