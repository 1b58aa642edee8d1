//! Versioned schema migrations, applied in order; `PRAGMA user_version` is the last one applied.

use crate::StoreError;
use rusqlite::Connection;
use std::path::Path;

/// The migrations, oldest first. Never edit one that has shipped: add a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: tenancy, resource groups, generic ARM resources, principals, role assignments, signing keys.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE subscriptions (
        id_key TEXT PRIMARY KEY, id TEXT NOT NULL, tenant_id TEXT NOT NULL,
        display_name TEXT NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL);
    CREATE TABLE resource_groups (
        sub_key TEXT NOT NULL, name_key TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL,
        location TEXT NOT NULL, tags TEXT NOT NULL, managed_by TEXT, created TEXT NOT NULL,
        PRIMARY KEY (sub_key, name_key));
    CREATE TABLE resources (
        id_key TEXT PRIMARY KEY, id TEXT NOT NULL, sub_key TEXT NOT NULL, rg_key TEXT,
        type_key TEXT NOT NULL, name TEXT NOT NULL, parent_key TEXT,
        body TEXT NOT NULL, etag TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
    CREATE INDEX resources_by_scope ON resources (sub_key, type_key, rg_key, id_key);
    CREATE INDEX resources_by_parent ON resources (parent_key, type_key, id_key);
    CREATE TABLE principals (
        client_id TEXT PRIMARY KEY, object_id TEXT NOT NULL UNIQUE, tenant_id TEXT NOT NULL,
        display_name TEXT NOT NULL, secret_hash TEXT NOT NULL, created TEXT NOT NULL);
    CREATE TABLE role_assignments (
        id_key TEXT PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL, scope TEXT NOT NULL,
        scope_key TEXT NOT NULL, role_definition_id TEXT NOT NULL, principal_id TEXT NOT NULL,
        principal_type TEXT NOT NULL, created TEXT NOT NULL, created_by TEXT NOT NULL);
    CREATE INDEX role_assignments_by_principal ON role_assignments (principal_id);
    CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY, created TEXT NOT NULL, retired TEXT, pkcs8 BLOB NOT NULL);
    "#,
    // 2: durable records of long-running operations (what Location / Azure-AsyncOperation URLs read).
    r#"
    CREATE TABLE operations (
        id TEXT PRIMARY KEY, scope_key TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
        start TEXT NOT NULL, end TEXT, error TEXT, properties TEXT);
    CREATE INDEX operations_by_scope ON operations (scope_key, start);
    "#,
    // 3: backup jobs (one row per job, its ARM `properties` as JSON beside the columns filters use), and
    // the resource an operation acts on (what its `operationResults` URL answers with).
    r#"
    CREATE TABLE jobs (
        id_key TEXT PRIMARY KEY, id TEXT NOT NULL, vault_key TEXT NOT NULL, name TEXT NOT NULL,
        operation TEXT NOT NULL, status TEXT NOT NULL, backup_management_type TEXT NOT NULL,
        entity TEXT NOT NULL, start TEXT NOT NULL, end TEXT, body TEXT NOT NULL);
    CREATE INDEX jobs_by_vault ON jobs (vault_key, start, id_key);
    ALTER TABLE operations ADD COLUMN target TEXT;
    "#,
    // 4: data-plane work. A job the job engine runs carries its `phase` (`queued`, `running`, `done`)
    // and `work` (what to do, JSON); recovery points are indexed here once the vault holds them; each
    // vault's repository password is kept sealed with the server key.
    r#"
    ALTER TABLE jobs ADD COLUMN phase TEXT;
    ALTER TABLE jobs ADD COLUMN work TEXT;
    CREATE INDEX jobs_by_phase ON jobs (phase, start);
    CREATE TABLE recovery_points (
        id_key TEXT PRIMARY KEY, id TEXT NOT NULL, vault_key TEXT NOT NULL, item_key TEXT NOT NULL,
        name TEXT NOT NULL, time TEXT NOT NULL, expiry TEXT, body TEXT NOT NULL, engine TEXT NOT NULL);
    CREATE INDEX recovery_points_by_item ON recovery_points (item_key, time);
    CREATE INDEX recovery_points_by_vault ON recovery_points (vault_key, time);
    CREATE TABLE vault_secrets (
        vault_key TEXT PRIMARY KEY, sealed TEXT NOT NULL, repo TEXT NOT NULL, created TEXT NOT NULL);
    "#,
    // 5: the scheduler's claims (the last schedule slot each protected item was backed up for, so a slot
    // runs once across restarts and nodes), and recovery points by expiry for retention.
    r#"
    CREATE TABLE schedule_slots (item_key TEXT PRIMARY KEY, last_slot TEXT NOT NULL);
    CREATE INDEX recovery_points_by_expiry ON recovery_points (expiry);
    "#,
];

/// Applies every migration newer than the store's `user_version`, each in its own transaction.
pub fn apply(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied metadata store migration");
    }
    Ok(())
}
