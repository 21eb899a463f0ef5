//! Group commit: one writer task owns SQLite's write connection and runs every write.
//!
//! SQLite admits one writer at a time and a durable commit costs an fsync, so committing each
//! write on its own caps throughput at the disk's fsync rate. Instead, writes queue on a
//! bounded channel; the writer takes everything waiting (up to [`MAX_BATCH`]) and runs it in
//! one `BEGIN IMMEDIATE` transaction, each write inside its own savepoint so a failed write
//! (a version conflict, a duplicate) is rolled back alone without failing its neighbours.
//! One `COMMIT` (one fsync) then makes the whole batch durable, and only then does each
//! caller get its result: acknowledged means durable.
//!
//! There is no artificial delay: a lone write commits at once, and batches form naturally
//! from what arrives while the previous batch's fsync runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kernel::store::StoreError;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::convert::db_err;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Writes waiting for the writer; a full queue makes callers wait (backpressure).
const QUEUE: usize = 1024;
/// Most writes in one transaction, bounding how long one batch holds the write lock.
pub(crate) const MAX_BATCH: usize = 256;

/// A queued write: runs on the connection, reports whether it failed, and keeps its result
/// until the batch's outcome is known.
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Ran> + Send>;

struct Ran {
    failed: bool,
    /// Delivers the result; `Some(error)` when the batch as a whole did not commit.
    deliver: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

/// Counters for tests and diagnostics.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) transactions: AtomicU64,
    pub(crate) writes: AtomicU64,
}

/// Handle to the writer task; the task ends (closing its connection) when the last handle drops.
pub(crate) struct GroupWriter {
    jobs: mpsc::Sender<Job>,
    // Read by tests (batch sizes); kept in all builds so the counting code is what ships.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) stats: Arc<Stats>,
}

impl GroupWriter {
    pub(crate) fn spawn(conn: SqliteConnection) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(conn, queue, stats.clone()));
        Self { jobs, stats }
    }

    /// Runs `work` in the next batch and returns its result once that batch committed.
    ///
    /// If the caller stops waiting, the write still runs: once queued, it is the writer's.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job = job(move |conn| {
            Box::pin(async move {
                let outcome = work(conn).await;
                Ran {
                    failed: outcome.is_err(),
                    deliver: Box::new(move |batch_error| {
                        let outcome = match (outcome, batch_error) {
                            (Ok(_), Some(error)) => Err(error),
                            (outcome, _) => outcome,
                        };
                        // The caller may have gone; the write's fate is settled either way.
                        let _ = reply.send(outcome);
                    }),
                }
            })
        });
        self.jobs.send(job).await.map_err(|_| writer_gone())?;
        // A dropped reply means the batch never ran the job (the transaction could not start).
        result.await.map_err(|_| writer_gone())?
    }
}

/// Pins down the higher-ranked closure type a [`Job`] needs.
fn job<F>(work: F) -> Job
where
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Ran> + Send + 'static,
{
    Box::new(work)
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("database write not applied".into())
}

async fn run(mut conn: SqliteConnection, mut queue: mpsc::Receiver<Job>, stats: Arc<Stats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        run_batch(&mut conn, batch.drain(..)).await;
    }
    let _ = conn.close().await;
}

async fn run_batch(conn: &mut SqliteConnection, jobs: impl Iterator<Item = Job>) {
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(error) => {
            // Dropping the jobs drops their reply senders: each caller gets `Unavailable`.
            tracing::warn!(%error, "store writer could not begin a transaction");
            return;
        }
    };
    let mut ran = Vec::new();
    let mut broken = None;
    for job in jobs {
        if broken.is_some() {
            continue; // dropped: its caller gets `Unavailable`
        }
        // A nested sqlx transaction is a SAVEPOINT; rollback is ROLLBACK TO + RELEASE.
        let mut savepoint = match tx.begin().await {
            Ok(savepoint) => savepoint,
            Err(error) => {
                broken = Some(db_err(error));
                continue;
            }
        };
        let done = job(&mut savepoint).await;
        let ended = if done.failed {
            savepoint.rollback().await
        } else {
            savepoint.commit().await
        };
        ran.push(done);
        if let Err(error) = ended {
            // SQLite may have rolled the whole transaction back under us (disk full, I/O
            // error): the batch cannot commit, so nothing in it may be acknowledged.
            broken = Some(db_err(error));
        }
    }
    let batch_error = match broken {
        Some(error) => {
            let _ = tx.rollback().await;
            Some(error)
        }
        None => tx.commit().await.err().map(|error| {
            tracing::warn!(%error, "store group commit failed");
            db_err(error)
        }),
    };
    for done in ran {
        (done.deliver)(batch_error.clone());
    }
}
