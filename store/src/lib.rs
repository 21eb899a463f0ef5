//! Arbat's durable store: the system of record for customer journals, feeds, the outbox,
//! credentials, sessions, secrets and the reference ABS's ledger. It implements the kernel's
//! [`Store`] traits (`kernel::store`, which holds the contract) on SQLite or PostgreSQL.
//!
//! # Layout
//!
//! - [`open`]: picks the backend from configuration (a `postgres://` URL, else SQLite in the
//!   data folder).
//! - [`SqliteStore`] (`sqlite.rs`): the embedded store, one WAL file with `synchronous=FULL`.
//!   All writes go through the group-commit writer (`group.rs`): one task, one connection,
//!   concurrent writes batched into one transaction with a savepoint each, acknowledged after
//!   the batch's COMMIT (one fsync for many writes).
//! - [`PgStore`] (`postgres.rs`): the cluster store, a pool with one transaction per write,
//!   except the ABS ledger's transfers: `ledger_writer.rs` group-commits them (one transaction
//!   per batch, accounts locked up front in id order, a savepoint per transfer).
//! - `queries.rs`: every query, written once and `include!`d into both backends against
//!   their concrete connection type; `store_impl.rs` likewise holds the trait impls once.
//! - `schema.rs`: embedded, numbered migrations and the `schema_version` table, applied at
//!   start under a lock so several nodes may start at once.
//! - `convert.rs`: column conversions (u64 seqs as BIGINT, times as Unix milliseconds, JSON
//!   as TEXT) and the mapping of sqlx errors to [`StoreError`] without leaking SQL.
//!
//! # Guarantees
//!
//! A method returns `Ok` only after the database committed. A failed write changes nothing.
//! Stored data that cannot be read back is reported as `StoreError::Corrupt`, never a panic.

use std::path::Path;
use std::sync::Arc;

pub use kernel::store::{Store, StoreError};

mod convert;
mod group;
mod ledger_writer;
mod postgres;
mod schema;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The SQLite file's name inside the data folder.
pub const SQLITE_FILE: &str = "arbat.db";

/// Opens the configured store: PostgreSQL for a `postgres://` (or `postgresql://`) URL,
/// else SQLite at `data_dir/arbat.db`. Any other URL is refused rather than silently ignored.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
) -> Result<Arc<dyn Store>, StoreError> {
    match database_url.map(str::trim).filter(|url| !url.is_empty()) {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PgStore::connect(url).await?))
        }
        Some(_) => Err(StoreError::Unavailable(
            "unsupported database URL: expected postgres://".into(),
        )),
        None => Ok(Arc::new(
            SqliteStore::open(&data_dir.join(SQLITE_FILE)).await?,
        )),
    }
}
