//! Versioned schema migrations, applied in order, one list for both backends.
//!
//! [`MIGRATIONS`] is the one list of logical migrations, written in SQLite's DDL (never edited once
//! shipped). PostgreSQL runs each through [`postgres_ddl`]: every `TEXT` column gets `COLLATE "C"` (keys
//! and RFC 3339 timestamps compare byte by byte, as in SQLite, so ordering and keyset paging match),
//! `BLOB` becomes `BYTEA`, and the column `end` (reserved in PostgreSQL) is quoted.
//!
//! - **SQLite** records the last migration applied in `PRAGMA user_version` (stores made before
//!   PostgreSQL existed open unchanged).
//! - **PostgreSQL** records each in a `schema_migrations` table, and applies them holding a session
//!   advisory lock ([`MIGRATION_LOCK`]), so nodes starting at once apply each migration exactly once
//!   and the others wait, then find nothing left to do.
//!
//! Either way a store whose schema is newer than this rsvault knows is refused ([`StoreError::TooNew`]),
//! and each migration is applied in its own transaction.

use crate::StoreError;
use rusqlite::Connection;

/// The advisory lock key under which PostgreSQL migrations run (`rsvault` and 1, as bytes).
pub const MIGRATION_LOCK: i64 = 0x7273_7661_756c_7401;

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
    // 6: several nodes on one store. A running job's lease: the node that claimed it, its fencing token
    // (the claim's number: only the holder of the current token records the job's end) and when it
    // lapses unless renewed. The nodes and when each was last seen; named leases (the scheduler's
    // leader). Lease times are wall-clock stamps. Vaults marked for garbage collection by any node,
    // for the scheduler's leader to collect.
    r#"
    CREATE TABLE job_leases (
        job_key TEXT PRIMARY KEY, vault_key TEXT NOT NULL, node TEXT NOT NULL, fence BIGINT NOT NULL,
        expires TEXT NOT NULL);
    CREATE INDEX job_leases_by_vault ON job_leases (vault_key);
    CREATE INDEX job_leases_by_expiry ON job_leases (expires);
    CREATE TABLE nodes (node TEXT PRIMARY KEY, started TEXT NOT NULL, seen TEXT NOT NULL, info TEXT NOT NULL);
    CREATE TABLE leader_leases (name TEXT PRIMARY KEY, node TEXT NOT NULL, expires TEXT NOT NULL);
    CREATE TABLE gc_marks (vault_key TEXT PRIMARY KEY);
    "#,
];

/// Applies every migration newer than the store's `user_version`, each in its own immediate
/// transaction that reads the version again (two processes opening a new store at once apply each once).
pub(crate) fn apply_sqlite(conn: &mut Connection, location: &str) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current > known {
            return Err(StoreError::TooNew {
                location: location.to_string(),
                found: current,
                known,
            });
        }
        if current == known {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[current as usize])?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
        tracing::info!(version = current + 1, "applied metadata store migration");
    }
}

/// Applies the migrations PostgreSQL's `schema_migrations` does not list, under [`MIGRATION_LOCK`].
pub(crate) fn apply_postgres(client: &mut postgres::Client, location: &str) -> Result<(), StoreError> {
    client.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
    let out = apply_postgres_locked(client, location);
    // A failed unlock leaves the lock to the end of the session; the caller drops this connection.
    let unlocked = client.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
    out?;
    Ok(unlocked?)
}

fn apply_postgres_locked(client: &mut postgres::Client, location: &str) -> Result<(), StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied TEXT NOT NULL)",
    )?;
    let current: i64 = client
        .query_one("SELECT COALESCE(max(version), 0) FROM schema_migrations", &[])?
        .try_get(0)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            location: location.to_string(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = (i + 1) as i64;
        let mut tx = client.transaction()?;
        tx.batch_execute(&postgres_ddl(sql))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
            &[&version, &crate::sql::ts(&chrono::Utc::now())],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied metadata store migration");
    }
    Ok(())
}

/// A migration's DDL as PostgreSQL runs it: `TEXT` → `TEXT COLLATE "C"`, `BLOB` → `BYTEA`, `end` →
/// `"end"` (whole words only; the DDL holds no string literals).
pub fn postgres_ddl(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "TEXT" => "TEXT COLLATE \"C\"",
            "BLOB" => "BYTEA",
            "end" => "\"end\"",
            w => w,
        });
        word.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_ddl_collates_text_quotes_end_and_has_no_blob() {
        let ddl = postgres_ddl(MIGRATIONS[1]);
        assert!(
            ddl.contains(r#"start TEXT COLLATE "C" NOT NULL, "end" TEXT COLLATE "C", error"#),
            "{ddl}"
        );
        let all: String = MIGRATIONS.iter().map(|m| postgres_ddl(m)).collect();
        assert!(!all.contains("BLOB") && all.contains("pkcs8 BYTEA NOT NULL"));
        assert!(!all.contains(" end ") && !all.contains("TEXT,") && !all.contains("TEXT)"));
        assert!(all.contains("CREATE INDEX jobs_by_phase ON jobs (phase, start)"));
    }
}
