//! The embedded store: one SQLite file in WAL mode.
//!
//! Every write goes through the group-commit writer (one connection, see [`crate::group`]);
//! reads use a small pool of their own connections, which WAL lets run beside the writer.
//! `synchronous=FULL` makes each COMMIT fsync the WAL, so an acknowledged write survives a
//! crash or power loss, not just a process kill.

use std::path::Path;
use std::time::Duration;

use kernel::store::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, SqliteConnection};

use crate::convert::db_err;
use crate::group::{BoxFuture, GroupWriter};
use crate::schema;

/// How long a connection waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections; WAL readers never block the writer or each other.
const READERS: u32 = 4;

/// The SQLite store. Cheap to share behind an `Arc`; dropping it stops the writer task.
pub struct SqliteStore {
    readers: SqlitePool,
    writer: GroupWriter,
}

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates the database.
    /// Needs a Tokio runtime: the writer is a spawned task.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(folder).await.map_err(|error| {
                StoreError::Unavailable(format!("cannot create the data folder: {error}"))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let mut write_conn: SqliteConnection = options.connect().await.map_err(|error| {
            tracing::warn!(%error, path = %path.display(), "cannot open the SQLite store");
            StoreError::Unavailable("cannot open the database file".into())
        })?;
        schema::migrate_sqlite(&mut write_conn).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        Ok(Self {
            readers,
            writer: GroupWriter::spawn(write_conn),
        })
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let mut conn = self.readers.acquire().await.map_err(db_err)?;
        work(&mut conn).await
    }

    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.writer.write(work).await
    }

    /// Applies a transfer; the group-commit writer already batches it with other writes.
    async fn apply_transfer(
        &self,
        transfer: kernel::store::AbsTransfer,
    ) -> Result<kernel::store::AbsTransferResult, StoreError> {
        self.write(move |c| Box::pin(async move { queries::abs_transfer(c, &transfer).await }))
            .await
    }

    /// Journal commits share the group-commit writer with every other write.
    async fn commit_validated(
        &self,
        commit: kernel::store::Commit,
    ) -> Result<Vec<i64>, StoreError> {
        self.write(move |c| Box::pin(async move { queries::commit(c, &commit).await }))
            .await
    }

    /// (transactions, writes) the group-commit writer has run: writes/transactions is the
    /// average batch size.
    #[cfg(test)]
    pub(crate) fn write_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let stats = &self.writer.stats;
        (
            stats.transactions.load(Ordering::Relaxed),
            stats.writes.load(Ordering::Relaxed),
        )
    }
}

mod queries {
    type Conn = sqlx::SqliteConnection;
    /// The writer holds SQLite's only write lock for the whole batch: no row locks needed.
    const FOR_UPDATE: &str = "";
    include!("queries.rs");
    include!("schedule_queries.rs");
    include!("hold_queries.rs");
    include!("rate_queries.rs");
}

type Backend = SqliteStore;
include!("store_impl.rs");

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kernel::store::{Commit, JournalStore, StoreError};
    use kernel::{CustomerId, FeedEvent};

    use super::SqliteStore;

    fn event(seq: u64) -> FeedEvent {
        FeedEvent {
            seq,
            id: format!("e{seq}"),
            kind: "note".into(),
            at: kernel::now(),
            data: serde_json::Map::new(),
        }
    }

    fn commit(customer: &str, expected: u64) -> Commit {
        Commit {
            customer_id: CustomerId::parse(customer).unwrap(),
            expected_version: expected,
            events: vec![event(expected + 1)],
            change_ids: vec![format!("{customer}-{expected}")],
            snapshot: None,
            outbox: vec![],
            schedules: vec![],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_transactions_and_fail_alone() {
        let dir = std::env::temp_dir().join(format!(
            "arbat-store-unit-{}-{}",
            std::process::id(),
            kernel::now().unix_timestamp_nanos()
        ));
        let store = Arc::new(SqliteStore::open(&dir.join("arbat.db")).await.unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..200 {
            let store = store.clone();
            // Every 10th commit conflicts (expects a version that does not exist).
            let expected = if n % 10 == 0 { 7 } else { 0 };
            tasks.spawn(async move { store.commit(commit(&format!("c{n}"), expected)).await });
        }
        let mut ok = 0;
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(_) => ok += 1,
                Err(error) => assert_eq!(error, StoreError::VersionConflict),
            }
        }
        assert_eq!(ok, 180);
        let (transactions, writes) = store.write_stats();
        assert_eq!(writes, 200);
        assert!(
            transactions < writes,
            "{transactions} transactions for {writes} writes"
        );
        for n in 0..200 {
            let id = CustomerId::parse(&format!("c{n}")).unwrap();
            let record = store.load_customer(&id).await.unwrap();
            assert_eq!(record.is_some(), n % 10 != 0, "customer c{n}");
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
