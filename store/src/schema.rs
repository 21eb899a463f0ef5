//! The schema and its migrations, embedded as SQL strings (one list per backend).
//!
//! Migrations are numbered and append-only: a released step is never edited, a change is a
//! new step. `schema_version` records each applied step. Applying is idempotent and safe when
//! several nodes start at once: SQLite takes the write lock (`BEGIN IMMEDIATE`) around the
//! whole run, PostgreSQL a session advisory lock. A database newer than this build is refused
//! rather than written with an older idea of the schema.
//!
//! Conventions: seqs, versions, money and times (Unix milliseconds) are BIGINT; JSON is TEXT
//! so it reads back byte-for-byte as written (JSONB would reorder keys and reformat numbers).

use kernel::store::StoreError;
use sqlx::{Connection, Executor as _, PgConnection, SqliteConnection};

use crate::convert::{db_err, time_to_db};

// Step 4 is reserved for the payments work (templates, autopayments), merged separately.
const SQLITE: &[(i64, &str)] = &[
    (1, SQLITE_V1),
    (2, SQLITE_V2),
    (3, LEDGER_V3),
    (4, CARD_PANS_V4),
    (5, SQLITE_ACCESS_V5),
    (6, AUTOPAY_SCHEDULE_V6),
    (7, STAFF_TOTP_STEP_V7),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, POSTGRES_V1),
    (2, POSTGRES_V2),
    (3, LEDGER_V3),
    (4, CARD_PANS_V4),
    (5, POSTGRES_ACCESS_V5),
    (6, AUTOPAY_SCHEDULE_V6),
    (7, STAFF_TOTP_STEP_V7),
];

/// Arbitrary constant key of the advisory lock serialising PostgreSQL migrations.
const PG_MIGRATION_LOCK: i64 = 0x4152_4241_545f_4d31; // "ARBAT_M1"

const SCHEMA_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version BIGINT PRIMARY KEY,
    applied_at_ms BIGINT NOT NULL
)";

const SQLITE_V1: &str = r#"
CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    read_seq BIGINT NOT NULL DEFAULT 0,
    snapshot_version BIGINT,
    snapshot_state TEXT
);
CREATE TABLE journal (
    customer_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (customer_id, seq)
) WITHOUT ROWID;
CREATE TABLE applied_changes (
    customer_id TEXT NOT NULL,
    change_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (customer_id, change_id)
) WITHOUT ROWID;
-- AUTOINCREMENT: ids are never reused after deletion, so "oldest first" stays true.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE credentials (
    login TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX sessions_customer ON sessions (customer_id);
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE abs_customers (
    id TEXT PRIMARY KEY,
    phone TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    language TEXT NOT NULL
);
CREATE TABLE abs_products (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES abs_customers (id),
    ord BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance_minor BIGINT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX abs_products_customer ON abs_products (customer_id, ord);
CREATE TABLE abs_postings (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES abs_products (id),
    amount_minor BIGINT NOT NULL,
    balance_after_minor BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    description TEXT NOT NULL,
    mcc TEXT,
    counterparty TEXT
);
CREATE INDEX abs_postings_account ON abs_postings (account_id, at_ms);
"#;

const POSTGRES_V1: &str = r#"
CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    read_seq BIGINT NOT NULL DEFAULT 0,
    snapshot_version BIGINT,
    snapshot_state TEXT
);
CREATE TABLE journal (
    customer_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (customer_id, seq)
);
CREATE TABLE applied_changes (
    customer_id TEXT NOT NULL,
    change_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (customer_id, change_id)
);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    subject TEXT NOT NULL,
    payload BYTEA NOT NULL
);
CREATE TABLE credentials (
    login TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX sessions_customer ON sessions (customer_id);
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE abs_customers (
    id TEXT PRIMARY KEY,
    phone TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    language TEXT NOT NULL
);
CREATE TABLE abs_products (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES abs_customers (id),
    ord BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    status TEXT NOT NULL,
    currency TEXT NOT NULL,
    balance_minor BIGINT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX abs_products_customer ON abs_products (customer_id, ord);
CREATE TABLE abs_postings (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES abs_products (id),
    amount_minor BIGINT NOT NULL,
    balance_after_minor BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    description TEXT NOT NULL,
    mcc TEXT,
    counterparty TEXT
);
CREATE INDEX abs_postings_account ON abs_postings (account_id, at_ms);
"#;

/// The Access Manager: refresh rotation on sessions, challenges, lockout counters, trusted
/// devices, staff accounts and the append-only audit log.
const SQLITE_V2: &str = r#"
ALTER TABLE sessions ADD COLUMN refresh_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN last_used_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN revoked_at_ms BIGINT;
CREATE INDEX sessions_revoked_at ON sessions (revoked_at_ms);
CREATE TABLE challenges (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX challenges_expiry ON challenges (expires_at_ms);
CREATE TABLE auth_failures (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    locked_until_ms BIGINT
);
CREATE TABLE trusted_devices (
    customer_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (customer_id, device_id)
);
CREATE TABLE staff_accounts (
    login TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_secret BLOB NOT NULL
);
-- Append-only: the database itself refuses to change or remove an entry.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    ip TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"#;

const POSTGRES_V2: &str = r#"
ALTER TABLE sessions ADD COLUMN refresh_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN last_used_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN revoked_at_ms BIGINT;
CREATE INDEX sessions_revoked_at ON sessions (revoked_at_ms);
CREATE TABLE challenges (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX challenges_expiry ON challenges (expires_at_ms);
CREATE TABLE auth_failures (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    locked_until_ms BIGINT
);
CREATE TABLE trusted_devices (
    customer_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (customer_id, device_id)
);
CREATE TABLE staff_accounts (
    login TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_secret BYTEA NOT NULL
);
-- Append-only: the database itself refuses to change or remove an entry.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    ip TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"#;

/// The reference ABS's double-entry ledger (both backends): a transfer and its legs, each
/// leg with the balance of its account after the transfer. The sum of all legs is zero per
/// currency.
const LEDGER_V3: &str = r#"
CREATE TABLE abs_transfers (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    description TEXT NOT NULL,
    counterparty TEXT
);
CREATE TABLE abs_legs (
    transfer_id TEXT NOT NULL REFERENCES abs_transfers (id),
    ord BIGINT NOT NULL,
    account_id TEXT NOT NULL REFERENCES abs_products (id),
    currency TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    balance_after_minor BIGINT NOT NULL,
    PRIMARY KEY (transfer_id, ord)
);
CREATE INDEX abs_legs_account ON abs_legs (account_id);
"#;

/// The reference ABS's card numbers (both backends), never in clear: an HMAC-SHA256 of the
/// full PAN under the ABS's own key (`secrets`), so registration by card number can be checked
/// without storing a PAN.
const CARD_PANS_V4: &str = r#"
CREATE TABLE abs_card_pans (
    pan_hash TEXT PRIMARY KEY,
    card_id TEXT NOT NULL REFERENCES abs_products (id),
    customer_id TEXT NOT NULL REFERENCES abs_customers (id)
);
"#;

/// The Access Manager, continued: staff sessions beside customer ones (`scope`), customers'
/// TOTP enrolments (the secret sealed by the Access Manager, the last accepted step), the IP
/// networks each customer completed a login from (a risk signal when a new one appears), and
/// antifraud flags set by the security staff (another risk signal while they last).
const SQLITE_ACCESS_V5: &str = r#"
ALTER TABLE sessions ADD COLUMN scope TEXT NOT NULL DEFAULT 'customer';
CREATE INDEX sessions_scope ON sessions (scope, created_at_ms);
CREATE TABLE customer_totp (
    customer_id TEXT PRIMARY KEY,
    sealed_secret BLOB NOT NULL,
    confirmed BOOLEAN NOT NULL,
    last_step BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE login_networks (
    customer_id TEXT NOT NULL,
    network TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (customer_id, network)
);
CREATE TABLE risk_flags (
    customer_id TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL
);
"#;

const POSTGRES_ACCESS_V5: &str = r#"
ALTER TABLE sessions ADD COLUMN scope TEXT NOT NULL DEFAULT 'customer';
CREATE INDEX sessions_scope ON sessions (scope, created_at_ms);
CREATE TABLE customer_totp (
    customer_id TEXT PRIMARY KEY,
    sealed_secret BYTEA NOT NULL,
    confirmed BOOLEAN NOT NULL,
    last_step BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE login_networks (
    customer_id TEXT NOT NULL,
    network TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (customer_id, network)
);
CREATE TABLE risk_flags (
    customer_id TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL
);
"#;

/// The index of clock-driven autopayments (both backends): when each runs next. Written in
/// the same transaction as the `autopayment_saved` / `autopayment_deleted` journal events;
/// each node's scheduler scans the due rows of the partitions it owns. And the reference
/// ABS's holds (authorizations): `held` until `captured` (by `transfer_id`) or `released`;
/// `abs_products.held_minor` is the sum of an account's active holds, kept in the same
/// writes, so a transfer's funds check reads it with the locked account row. And the ABS's
/// current rate set (one row), so every node, and a restarted one, quotes the same rates.
const AUTOPAY_SCHEDULE_V6: &str = r#"
CREATE TABLE autopay_schedule (
    customer_id TEXT NOT NULL,
    autopayment_id TEXT NOT NULL,
    partition_no BIGINT NOT NULL,
    next_run_ms BIGINT NOT NULL,
    PRIMARY KEY (customer_id, autopayment_id)
);
CREATE INDEX autopay_schedule_due ON autopay_schedule (partition_no, next_run_ms);
CREATE TABLE abs_holds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES abs_products (id),
    amount_minor BIGINT NOT NULL,
    state TEXT NOT NULL,
    transfer_id TEXT,
    at_ms BIGINT NOT NULL
);
CREATE INDEX abs_holds_account ON abs_holds (account_id, state);
ALTER TABLE abs_products ADD COLUMN held_minor BIGINT NOT NULL DEFAULT 0;
CREATE TABLE abs_rate_sets (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    body TEXT NOT NULL
);
"#;

/// Staff TOTP replay protection (both backends): the last time step a staff member's code
/// was accepted at login, advanced by compare-and-set so a code works once.
const STAFF_TOTP_STEP_V7: &str = r#"
ALTER TABLE staff_accounts ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
"#;

/// Brings a SQLite database up to date. `BEGIN IMMEDIATE` takes the write lock first, so a
/// second process opening the same file waits (busy timeout) and then finds nothing to do.
pub(crate) async fn migrate_sqlite(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
    apply_sqlite(&mut tx).await?;
    tx.commit().await.map_err(db_err)
}

/// Brings a PostgreSQL database up to date under a session advisory lock, so nodes starting
/// together apply each step once. Run on a dedicated connection: closing it releases the lock
/// even if this future is dropped half-way.
pub(crate) async fn migrate_postgres(mut conn: PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(PG_MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .map_err(db_err)?;
    let result = async {
        let mut tx = conn.begin().await.map_err(db_err)?;
        apply_postgres(&mut tx).await?;
        tx.commit().await.map_err(db_err)
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PG_MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .map_err(db_err);
    let _ = conn.close().await;
    result.and(unlocked.map(|_| ()))
}

/// Applies the missing steps inside the caller's transaction. A macro, not a generic fn:
/// generic sqlx executors make the calling futures fail the `Send` check (higher-ranked
/// lifetime limitation), and node startup futures must be `Send`.
macro_rules! apply_steps {
    ($conn:expr, $steps:expr) => {{
        let conn = $conn;
        let steps: &[(i64, &str)] = $steps;
        // `Executor::execute` with a plain string runs every statement in it (as sqlx's own
        // migrator does); `sqlx::raw_sql` would make the future fail the `Send` check.
        (&mut *conn)
            .execute(SCHEMA_VERSION_TABLE)
            .await
            .map_err(db_err)?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        let current: i64 = crate::convert::col(&row, 0)?;
        let newest = steps.last().map_or(0, |(version, _)| *version);
        if current > newest {
            return Err(StoreError::Corrupt(format!(
                "database schema version {current} is newer than this build's {newest}"
            )));
        }
        for (version, sql) in steps.iter().filter(|(version, _)| *version > current) {
            (&mut *conn).execute(*sql).await.map_err(db_err)?;
            sqlx::query("INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)")
                .bind(*version)
                .bind(time_to_db(kernel::now())?)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
            tracing::info!(version, "store schema migrated");
        }
        Ok::<(), StoreError>(())
    }};
}

async fn apply_sqlite(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    apply_steps!(conn, SQLITE)
}

async fn apply_postgres(conn: &mut PgConnection) -> Result<(), StoreError> {
    apply_steps!(conn, POSTGRES)
}
