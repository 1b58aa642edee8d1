//! Typed statements over one connection or transaction.

use crate::rows::*;
use crate::StoreError;
use chrono::{DateTime, Utc};
use rsvault_core::ids::key;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// A connection (or open transaction) with rsvault's statements.
pub struct Db<'a>(pub(crate) &'a Connection);

type R<T> = Result<T, StoreError>;

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn parse_ts(s: String) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn json(s: String) -> rusqlite::Result<serde_json::Value> {
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

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
const OPERATION_COLS: &str = "id, scope_key, kind, status, start, end, error, properties, target";
const JOB_COLS: &str =
    "id, vault_key, name, operation, status, backup_management_type, entity, start, end, body, phase, work";
const RP_COLS: &str = "id, vault_key, item_key, name, time, expiry, body, engine";
const RESOURCE_COLS: &str = "id, sub_key, rg_key, type_key, name, parent_key, body, etag, created, updated";

fn resource_row(r: &Row) -> rusqlite::Result<ResourceRow> {
    Ok(ResourceRow {
        id: r.get(0)?,
        subscription: r.get(1)?,
        resource_group: r.get(2)?,
        type_key: r.get(3)?,
        name: r.get(4)?,
        parent_key: r.get(5)?,
        body: json(r.get(6)?)?,
        etag: r.get(7)?,
        created: parse_ts(r.get(8)?)?,
        updated: parse_ts(r.get(9)?)?,
    })
}

fn operation_row(r: &Row) -> rusqlite::Result<OperationRow> {
    Ok(OperationRow {
        id: r.get(0)?,
        scope_key: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        start: parse_ts(r.get(4)?)?,
        end: r.get::<_, Option<String>>(5)?.map(parse_ts).transpose()?,
        error: r.get::<_, Option<String>>(6)?.map(json).transpose()?,
        properties: r.get::<_, Option<String>>(7)?.map(json).transpose()?,
        target: r.get(8)?,
    })
}

fn job_row(r: &Row) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        vault_key: r.get(1)?,
        name: r.get(2)?,
        operation: r.get(3)?,
        status: r.get(4)?,
        backup_management_type: r.get(5)?,
        entity: r.get(6)?,
        start: parse_ts(r.get(7)?)?,
        end: r.get::<_, Option<String>>(8)?.map(parse_ts).transpose()?,
        body: json(r.get(9)?)?,
        phase: r.get(10)?,
        work: r.get::<_, Option<String>>(11)?.map(json).transpose()?,
    })
}

fn rp_row(r: &Row) -> rusqlite::Result<RecoveryPointRow> {
    Ok(RecoveryPointRow {
        id: r.get(0)?,
        vault_key: r.get(1)?,
        item_key: r.get(2)?,
        name: r.get(3)?,
        time: parse_ts(r.get(4)?)?,
        expiry: r.get::<_, Option<String>>(5)?.map(parse_ts).transpose()?,
        body: json(r.get(6)?)?,
        engine: json(r.get(7)?)?,
    })
}

fn group_row(r: &Row) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        subscription: r.get(0)?,
        name: r.get(1)?,
        id: r.get(2)?,
        location: r.get(3)?,
        tags: json(r.get(4)?)?,
        managed_by: r.get(5)?,
        created: parse_ts(r.get(6)?)?,
    })
}

fn principal_row(r: &Row) -> rusqlite::Result<PrincipalRow> {
    Ok(PrincipalRow {
        client_id: r.get(0)?,
        object_id: r.get(1)?,
        tenant_id: r.get(2)?,
        display_name: r.get(3)?,
        secret_hash: r.get(4)?,
        created: parse_ts(r.get(5)?)?,
    })
}

fn assignment_row(r: &Row) -> rusqlite::Result<RoleAssignmentRow> {
    Ok(RoleAssignmentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        scope: r.get(2)?,
        role_definition_id: r.get(3)?,
        principal_id: r.get(4)?,
        principal_type: r.get(5)?,
        created: parse_ts(r.get(6)?)?,
        created_by: r.get(7)?,
    })
}

impl Db<'_> {
    // ---- meta -------------------------------------------------------------------------------
    pub fn meta(&self, k: &str) -> R<Option<String>> {
        Ok(self
            .0
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, k: &str, v: &str) -> R<()> {
        self.0.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [k, v],
        )?;
        Ok(())
    }

    // ---- subscriptions ----------------------------------------------------------------------
    pub fn insert_subscription(&self, s: &SubscriptionRow) -> R<()> {
        self.0.execute(
            "INSERT INTO subscriptions (id_key, id, tenant_id, display_name, state, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key(&s.id), s.id, s.tenant_id, s.display_name, s.state, ts(&s.created)],
        )?;
        Ok(())
    }

    pub fn subscription(&self, id: &str) -> R<Option<SubscriptionRow>> {
        Ok(self
            .0
            .query_row(
                "SELECT id, tenant_id, display_name, state, created FROM subscriptions WHERE id_key = ?1",
                [key(id)],
                |r| {
                    Ok(SubscriptionRow {
                        id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        display_name: r.get(2)?,
                        state: r.get(3)?,
                        created: parse_ts(r.get(4)?)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn subscriptions(&self) -> R<Vec<SubscriptionRow>> {
        let mut st = self.0.prepare("SELECT id FROM subscriptions ORDER BY id_key")?;
        let ids: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        ids.iter().filter_map(|id| self.subscription(id).transpose()).collect()
    }

    // ---- resource groups --------------------------------------------------------------------
    /// Inserts or replaces a group; returns true when it was new.
    pub fn put_group(&self, g: &GroupRow) -> R<bool> {
        let existed = self.group(&g.subscription, &g.name)?.is_some();
        self.0.execute(
            "INSERT INTO resource_groups (sub_key, name_key, name, id, location, tags, managed_by, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(sub_key, name_key) DO UPDATE SET location = excluded.location, tags = excluded.tags, managed_by = excluded.managed_by",
            params![key(&g.subscription), key(&g.name), g.name, g.id, g.location, g.tags.to_string(), g.managed_by, ts(&g.created)],
        )?;
        Ok(!existed)
    }

    pub fn group(&self, sub: &str, name: &str) -> R<Option<GroupRow>> {
        Ok(self
            .0
            .query_row(
                "SELECT sub_key, name, id, location, tags, managed_by, created FROM resource_groups WHERE sub_key = ?1 AND name_key = ?2",
                [key(sub), key(name)],
                group_row,
            )
            .optional()?)
    }

    pub fn groups(&self, sub: &str, after: Option<&str>, limit: usize) -> R<Page<GroupRow>> {
        let mut st = self.0.prepare(
            "SELECT sub_key, name, id, location, tags, managed_by, created FROM resource_groups
             WHERE sub_key = ?1 AND name_key > ?2 ORDER BY name_key LIMIT ?3",
        )?;
        let items = st
            .query_map(
                params![key(sub), after.map(key).unwrap_or_default(), (limit + 1) as i64],
                group_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, limit, |g| key(&g.name)))
    }

    /// Deletes a group and every resource in it; returns false when there was no such group.
    pub fn delete_group(&self, sub: &str, name: &str) -> R<bool> {
        self.0.execute(
            "DELETE FROM resources WHERE sub_key = ?1 AND rg_key = ?2",
            [key(sub), key(name)],
        )?;
        let prefix = format!(
            "{}/resourcegroups/{}/",
            key(&format!("/subscriptions/{sub}")),
            key(name)
        );
        self.0.execute(
            "DELETE FROM role_assignments WHERE substr(scope_key, 1, length(?1)) = ?1 OR scope_key = ?2",
            [prefix.clone(), prefix.trim_end_matches('/').to_string()],
        )?;
        Ok(self.0.execute(
            "DELETE FROM resource_groups WHERE sub_key = ?1 AND name_key = ?2",
            [key(sub), key(name)],
        )? > 0)
    }

    // ---- resources --------------------------------------------------------------------------
    /// Inserts or replaces a resource (keyed by its lower-cased id); returns true when it was new.
    /// On replace, the id text and creation time of the first write are kept.
    pub fn put_resource(&self, r: &ResourceRow) -> R<bool> {
        let existed = self
            .0
            .query_row("SELECT 1 FROM resources WHERE id_key = ?1", [key(&r.id)], |_| Ok(()))
            .optional()?
            .is_some();
        self.0.execute(
            "INSERT INTO resources (id_key, id, sub_key, rg_key, type_key, name, parent_key, body, etag, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(id_key) DO UPDATE SET body = excluded.body, etag = excluded.etag, updated = excluded.updated",
            params![
                key(&r.id),
                r.id,
                key(&r.subscription),
                r.resource_group.as_deref().map(key),
                key(&r.type_key),
                r.name,
                r.parent_key.as_deref().map(key),
                r.body.to_string(),
                r.etag,
                ts(&r.created),
                ts(&r.updated)
            ],
        )?;
        Ok(!existed)
    }

    pub fn resource(&self, id: &str) -> R<Option<ResourceRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {RESOURCE_COLS} FROM resources WHERE id_key = ?1"),
                [key(id)],
                resource_row,
            )
            .optional()?)
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
        let mut st = self.0.prepare(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE sub_key = ?1 AND type_key = ?2 AND (?3 IS NULL OR rg_key = ?3)
             AND id_key > ?4 ORDER BY id_key LIMIT ?5"
        ))?;
        let items = st
            .query_map(
                params![
                    key(sub),
                    key(type_key),
                    group.map(key),
                    after.unwrap_or_default(),
                    (limit + 1) as i64
                ],
                resource_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, limit, |r| key(&r.id)))
    }

    /// Every resource of one type in a subscription (for lookups across vaults, e.g. "is this VM protected
    /// anywhere?").
    pub fn all_of_type(&self, sub: &str, type_key: &str) -> R<Vec<ResourceRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE sub_key = ?1 AND type_key = ?2 ORDER BY id_key"
        ))?;
        let rows = st
            .query_map(params![key(sub), key(type_key)], resource_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every resource of one type below an id (any depth), in key order.
    /// Every resource of a type, in every subscription (the scheduler's walk over protected items).
    pub fn everywhere_of_type(&self, type_key: &str) -> R<Vec<ResourceRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE type_key = ?1 ORDER BY id_key"
        ))?;
        let rows = st
            .query_map([type_key.to_ascii_lowercase()], resource_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn all_below(&self, id: &str, type_key: &str) -> R<Vec<ResourceRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE substr(id_key, 1, length(?1)) = ?1 AND type_key = ?2 ORDER BY id_key"
        ))?;
        let rows = st
            .query_map(params![format!("{}/", key(id)), key(type_key)], resource_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Children of a resource, of one type (or all types with `None`), in key order, paged.
    pub fn children(
        &self,
        parent: &str,
        type_key: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> R<Page<ResourceRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE parent_key = ?1 AND (?2 IS NULL OR type_key = ?2)
             AND id_key > ?3 ORDER BY id_key LIMIT ?4"
        ))?;
        let items = st
            .query_map(
                params![
                    key(parent),
                    type_key.map(key),
                    after.unwrap_or_default(),
                    (limit + 1) as i64
                ],
                resource_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, limit, |r| key(&r.id)))
    }

    /// How many resources of a type live below an id (at any depth).
    pub fn count_below(&self, id: &str, type_key: &str) -> R<i64> {
        Ok(self.0.query_row(
            "SELECT count(*) FROM resources WHERE substr(id_key, 1, length(?1)) = ?1 AND type_key = ?2",
            [format!("{}/", key(id)), key(type_key)],
            |r| r.get(0),
        )?)
    }

    /// Deletes a resource and everything below it; returns false when it did not exist.
    pub fn delete_resource(&self, id: &str) -> R<bool> {
        let k = key(id);
        self.0.execute(
            "DELETE FROM resources WHERE substr(id_key, 1, length(?1)) = ?1",
            [format!("{k}/")],
        )?;
        self.0.execute(
            "DELETE FROM role_assignments WHERE scope_key = ?1 OR substr(scope_key, 1, length(?2)) = ?2",
            [k.clone(), format!("{k}/")],
        )?;
        self.0.execute(
            "DELETE FROM jobs WHERE vault_key = ?1 OR substr(vault_key, 1, length(?2)) = ?2",
            [k.clone(), format!("{k}/")],
        )?;
        self.0.execute(
            "DELETE FROM recovery_points WHERE substr(id_key, 1, length(?1)) = ?1",
            [format!("{k}/")],
        )?;
        self.0.execute(
            "DELETE FROM schedule_slots WHERE item_key = ?1 OR substr(item_key, 1, length(?2)) = ?2",
            [k.clone(), format!("{k}/")],
        )?;
        Ok(self.0.execute("DELETE FROM resources WHERE id_key = ?1", [k])? > 0)
    }

    // ---- principals -------------------------------------------------------------------------
    pub fn insert_principal(&self, p: &PrincipalRow) -> R<()> {
        self.0.execute(
            "INSERT INTO principals (client_id, object_id, tenant_id, display_name, secret_hash, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key(&p.client_id), p.object_id, p.tenant_id, p.display_name, p.secret_hash, ts(&p.created)],
        )?;
        Ok(())
    }

    pub fn principal(&self, client_id: &str) -> R<Option<PrincipalRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {PRINCIPAL_COLS} FROM principals WHERE client_id = ?1"),
                [key(client_id)],
                principal_row,
            )
            .optional()?)
    }

    pub fn principal_by_object_id(&self, object_id: &str) -> R<Option<PrincipalRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {PRINCIPAL_COLS} FROM principals WHERE object_id = ?1"),
                [key(object_id)],
                principal_row,
            )
            .optional()?)
    }

    pub fn principals(&self) -> R<Vec<PrincipalRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {PRINCIPAL_COLS} FROM principals ORDER BY created, client_id"
        ))?;
        let rows = st.query_map([], principal_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn set_principal_secret(&self, client_id: &str, hash: &str) -> R<bool> {
        Ok(self.0.execute(
            "UPDATE principals SET secret_hash = ?2 WHERE client_id = ?1",
            [key(client_id), hash.to_string()],
        )? > 0)
    }

    /// Deletes a principal and its role assignments.
    pub fn delete_principal(&self, client_id: &str) -> R<bool> {
        let Some(p) = self.principal(client_id)? else {
            return Ok(false);
        };
        self.0
            .execute("DELETE FROM role_assignments WHERE principal_id = ?1", [&p.object_id])?;
        Ok(self
            .0
            .execute("DELETE FROM principals WHERE client_id = ?1", [key(client_id)])?
            > 0)
    }

    // ---- role assignments -------------------------------------------------------------------
    pub fn insert_role_assignment(&self, a: &RoleAssignmentRow) -> R<()> {
        self.0.execute(
            "INSERT INTO role_assignments (id_key, id, name, scope, scope_key, role_definition_id, principal_id, principal_type, created, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                key(&a.id),
                a.id,
                a.name,
                a.scope,
                key(a.scope.trim_end_matches('/')),
                a.role_definition_id,
                key(&a.principal_id),
                a.principal_type,
                ts(&a.created),
                a.created_by
            ],
        )?;
        Ok(())
    }

    pub fn role_assignment(&self, id: &str) -> R<Option<RoleAssignmentRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {ASSIGNMENT_COLS} FROM role_assignments WHERE id_key = ?1"),
                [key(id)],
                assignment_row,
            )
            .optional()?)
    }

    /// A role assignment by its name (GUID) anywhere.
    pub fn role_assignment_by_name(&self, name: &str) -> R<Option<RoleAssignmentRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {ASSIGNMENT_COLS} FROM role_assignments WHERE lower(name) = ?1"),
                [key(name)],
                assignment_row,
            )
            .optional()?)
    }

    pub fn role_assignments(&self) -> R<Vec<RoleAssignmentRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {ASSIGNMENT_COLS} FROM role_assignments ORDER BY created, id_key"
        ))?;
        let rows = st.query_map([], assignment_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn role_assignments_of(&self, principal_object_id: &str) -> R<Vec<RoleAssignmentRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {ASSIGNMENT_COLS} FROM role_assignments WHERE principal_id = ?1"
        ))?;
        let rows = st
            .query_map([key(principal_object_id)], assignment_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn delete_role_assignment(&self, id: &str) -> R<bool> {
        Ok(self
            .0
            .execute("DELETE FROM role_assignments WHERE id_key = ?1", [key(id)])?
            > 0)
    }

    // ---- signing keys -----------------------------------------------------------------------
    pub fn insert_signing_key(&self, k: &SigningKeyRow) -> R<()> {
        self.0.execute(
            "INSERT INTO signing_keys (kid, created, retired, pkcs8) VALUES (?1, ?2, ?3, ?4)",
            params![k.kid, ts(&k.created), k.retired.as_ref().map(ts), k.pkcs8],
        )?;
        Ok(())
    }

    /// Marks every current key retired at `at`.
    pub fn retire_signing_keys(&self, at: DateTime<Utc>) -> R<()> {
        self.0
            .execute("UPDATE signing_keys SET retired = ?1 WHERE retired IS NULL", [ts(&at)])?;
        Ok(())
    }

    pub fn signing_keys(&self) -> R<Vec<SigningKeyRow>> {
        let mut st = self
            .0
            .prepare("SELECT kid, created, retired, pkcs8 FROM signing_keys ORDER BY created")?;
        let rows = st
            .query_map([], |r| {
                Ok(SigningKeyRow {
                    kid: r.get(0)?,
                    created: parse_ts(r.get(1)?)?,
                    retired: r.get::<_, Option<String>>(2)?.map(parse_ts).transpose()?,
                    pkcs8: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // ---- operations -------------------------------------------------------------------------
    /// Inserts an operation record, or replaces the one with the same id (status changes).
    pub fn put_operation(&self, o: &OperationRow) -> R<()> {
        self.0.execute(
            &format!(
                "INSERT OR REPLACE INTO operations ({OPERATION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                key(&o.id),
                key(&o.scope_key),
                o.kind,
                o.status,
                ts(&o.start),
                o.end.as_ref().map(ts),
                o.error.as_ref().map(|e| e.to_string()),
                o.properties.as_ref().map(|e| e.to_string()),
                o.target
            ],
        )?;
        Ok(())
    }

    /// Deletes the operation records scoped to a resource or below it (its vault's, its items'…);
    /// returns how many went.
    pub fn delete_operations_below(&self, scope: &str) -> R<usize> {
        let k = key(scope);
        Ok(self.0.execute(
            "DELETE FROM operations WHERE scope_key = ?1 OR substr(scope_key, 1, length(?2)) = ?2",
            [k.clone(), format!("{k}/")],
        )?)
    }

    pub fn operation(&self, id: &str) -> R<Option<OperationRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {OPERATION_COLS} FROM operations WHERE id = ?1"),
                [key(id)],
                operation_row,
            )
            .optional()?)
    }

    // ---- jobs -------------------------------------------------------------------------------
    /// Inserts a job or replaces the one with the same id.
    pub fn put_job(&self, j: &JobRow) -> R<()> {
        self.0.execute(
            &format!("INSERT OR REPLACE INTO jobs (id_key, {JOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                key(&j.id),
                j.id,
                key(&j.vault_key),
                j.name,
                j.operation,
                j.status,
                j.backup_management_type,
                j.entity,
                ts(&j.start),
                j.end.as_ref().map(ts),
                j.body.to_string(),
                j.phase,
                j.work.as_ref().map(|w| w.to_string())
            ],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> R<Option<JobRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id_key = ?1"),
                [key(id)],
                job_row,
            )
            .optional()?)
    }

    /// Every job of a vault, newest first.
    pub fn jobs(&self, vault: &str) -> R<Vec<JobRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE vault_key = ?1 ORDER BY start DESC, id_key DESC"
        ))?;
        let rows = st.query_map([key(vault)], job_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Jobs of every vault in a job-engine phase (`queued`, `running`), oldest first.
    pub fn jobs_in_phase(&self, phase: &str) -> R<Vec<JobRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE phase = ?1 ORDER BY start, id_key"
        ))?;
        let rows = st.query_map([phase], job_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // ---- recovery points ------------------------------------------------------------------
    /// Inserts a recovery point or replaces the one with the same id.
    pub fn put_recovery_point(&self, rp: &RecoveryPointRow) -> R<()> {
        self.0.execute(
            &format!("INSERT OR REPLACE INTO recovery_points (id_key, {RP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                key(&rp.id),
                rp.id,
                key(&rp.vault_key),
                key(&rp.item_key),
                rp.name,
                ts(&rp.time),
                rp.expiry.as_ref().map(ts),
                rp.body.to_string(),
                rp.engine.to_string()
            ],
        )?;
        Ok(())
    }

    pub fn recovery_point(&self, id: &str) -> R<Option<RecoveryPointRow>> {
        Ok(self
            .0
            .query_row(
                &format!("SELECT {RP_COLS} FROM recovery_points WHERE id_key = ?1"),
                [key(id)],
                rp_row,
            )
            .optional()?)
    }

    /// The recovery points of a protected item, newest first.
    pub fn recovery_points(&self, item: &str) -> R<Vec<RecoveryPointRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RP_COLS} FROM recovery_points WHERE item_key = ?1 ORDER BY time DESC, id_key DESC"
        ))?;
        let rows = st.query_map([key(item)], rp_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The recovery points of a vault, oldest first.
    pub fn vault_recovery_points(&self, vault: &str) -> R<Vec<RecoveryPointRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RP_COLS} FROM recovery_points WHERE vault_key = ?1 ORDER BY time, id_key"
        ))?;
        let rows = st.query_map([key(vault)], rp_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Recovery points whose expiry is in (`after`, `until`], soonest first.
    pub fn recovery_points_expiring(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> R<Vec<RecoveryPointRow>> {
        let mut st = self.0.prepare(&format!(
            "SELECT {RP_COLS} FROM recovery_points WHERE expiry > ?1 AND expiry <= ?2 ORDER BY expiry, id_key"
        ))?;
        let rows = st
            .query_map([ts(&after), ts(&until)], rp_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn delete_recovery_point(&self, id: &str) -> R<bool> {
        Ok(self
            .0
            .execute("DELETE FROM recovery_points WHERE id_key = ?1", [key(id)])?
            > 0)
    }

    // ---- schedule claims -------------------------------------------------------------------
    /// The last schedule slot an item was backed up for.
    pub fn schedule_slot(&self, item: &str) -> R<Option<DateTime<Utc>>> {
        self.0
            .query_row(
                "SELECT last_slot FROM schedule_slots WHERE item_key = ?1",
                [key(item)],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(parse_ts)
            .transpose()
            .map_err(Into::into)
    }

    /// Claims `slot` for an item: true when it is later than the item's last claimed slot (and is now
    /// recorded), false when that slot or a later one was already claimed.
    pub fn claim_slot(&self, item: &str, slot: DateTime<Utc>) -> R<bool> {
        let n = self.0.execute(
            "INSERT INTO schedule_slots (item_key, last_slot) VALUES (?1, ?2)
             ON CONFLICT (item_key) DO UPDATE SET last_slot = excluded.last_slot WHERE last_slot < excluded.last_slot",
            [key(item), ts(&slot)],
        )?;
        Ok(n > 0)
    }

    // ---- vault secrets --------------------------------------------------------------------
    pub fn vault_secret(&self, vault: &str) -> R<Option<VaultSecretRow>> {
        Ok(self
            .0
            .query_row(
                "SELECT vault_key, sealed, repo, created FROM vault_secrets WHERE vault_key = ?1",
                [key(vault)],
                |r| {
                    Ok(VaultSecretRow {
                        vault_key: r.get(0)?,
                        sealed: r.get(1)?,
                        repo: r.get(2)?,
                        created: parse_ts(r.get(3)?)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn delete_vault_secret(&self, vault: &str) -> R<bool> {
        Ok(self
            .0
            .execute("DELETE FROM vault_secrets WHERE vault_key = ?1", [key(vault)])?
            > 0)
    }

    /// Sealed passwords whose vault row is gone (what group deletes left before they deleted each
    /// vault through its own delete).
    pub fn orphaned_vault_secrets(&self) -> R<Vec<VaultSecretRow>> {
        let mut st = self.0.prepare(
            "SELECT vault_key, sealed, repo, created FROM vault_secrets
             WHERE vault_key NOT IN (SELECT id_key FROM resources) ORDER BY vault_key",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(VaultSecretRow {
                    vault_key: r.get(0)?,
                    sealed: r.get(1)?,
                    repo: r.get(2)?,
                    created: parse_ts(r.get(3)?)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Deletes the recovery point rows whose vault row is gone; returns how many went.
    pub fn delete_orphaned_recovery_points(&self) -> R<usize> {
        Ok(self.0.execute(
            "DELETE FROM recovery_points WHERE vault_key NOT IN (SELECT id_key FROM resources)",
            [],
        )?)
    }

    /// Stores a vault's sealed password; an existing one is kept (returns `false`).
    pub fn insert_vault_secret(&self, s: &VaultSecretRow) -> R<bool> {
        Ok(self.0.execute(
            "INSERT OR IGNORE INTO vault_secrets (vault_key, sealed, repo, created) VALUES (?1, ?2, ?3, ?4)",
            params![key(&s.vault_key), s.sealed, s.repo, ts(&s.created)],
        )? > 0)
    }
}
