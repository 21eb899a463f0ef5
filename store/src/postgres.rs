//! The cluster store: PostgreSQL shared by every node.
//!
//! Each write is a plain transaction of its own on the pool, not group-committed (except the
//! ledger's transfers, see `ledger_writer.rs`, which serialise on hot account rows): PostgreSQL
//! takes concurrent writers with row locks and already groups WAL flushes of concurrent
//! commits itself, and a per-call transaction keeps a slow node's batch from holding row locks
//! other nodes wait on. Fencing of stale writers rests on the version check inside `commit`.

use std::str::FromStr as _;
use std::time::Duration;

use kernel::store::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgConnection};

use crate::convert::db_err;
use crate::group::BoxFuture;
use crate::ledger_writer::LedgerWriter;
use crate::schema;

mod commit;

/// Connections per node; bounded so a node cannot exhaust the server's `max_connections`.
const MAX_CONNECTIONS: u32 = 16;
/// How long a caller waits for a pooled connection (or a new one) before `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// Group-commits the ledger's transfers (`ledger_writer.rs`).
    ledger: LedgerWriter,
}

impl PgStore {
    /// Connects and migrates (under an advisory lock, so nodes may start together).
    /// Errors never echo the URL: it may hold a password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Unavailable("invalid PostgreSQL URL".into()))?;
        let migration_conn = options.connect().await.map_err(connect_failed)?;
        schema::migrate_postgres(migration_conn).await?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_failed)?;
        Ok(Self {
            ledger: LedgerWriter::spawn(pool.clone()),
            pool,
        })
    }

    /// (transactions, transfers) the ledger's group-commit writer has run:
    /// transfers/transactions is the average batch size.
    pub fn ledger_write_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let stats = &self.ledger.stats;
        (
            stats.transactions.load(Ordering::Relaxed),
            stats.transfers.load(Ordering::Relaxed),
        )
    }

    /// Applies a transfer through the ledger's group commit (one transaction per batch).
    async fn apply_transfer(
        &self,
        transfer: kernel::store::AbsTransfer,
    ) -> Result<kernel::store::AbsTransferResult, StoreError> {
        self.ledger.transfer(transfer).await
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        work(&mut conn).await
    }

    /// Runs `work` in its own transaction; an error (or a dropped future) rolls it back.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let value = work(&mut tx).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(value)
    }

    /// A journal commit: one self-contained statement when it can be (see commit.rs),
    /// else the general transaction.
    async fn commit_validated(
        &self,
        commit: kernel::store::Commit,
    ) -> Result<Vec<i64>, StoreError> {
        if commit::fits_one_statement(&commit) {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            return commit::commit_in_one_statement(&mut conn, &commit).await;
        }
        self.write(move |c| Box::pin(async move { queries::commit(c, &commit).await }))
            .await
    }
}

fn connect_failed(error: sqlx::Error) -> StoreError {
    tracing::warn!(%error, "cannot connect to PostgreSQL");
    StoreError::Unavailable("cannot connect to PostgreSQL".into())
}

pub(crate) mod queries {
    type Conn = sqlx::PgConnection;
    /// Locks the ABS account row so concurrent postings apply one after another.
    const FOR_UPDATE: &str = " FOR UPDATE";
    include!("queries.rs");
    include!("schedule_queries.rs");
    include!("hold_queries.rs");
    include!("rate_queries.rs");
}

type Backend = PgStore;
include!("store_impl.rs");
