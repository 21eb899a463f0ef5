use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Delivery, QueueError, Settle, WorkQueue};
use crate::model::Priority;
use crate::store::{NotifStoreError, SqlStore};

fn unavailable(e: NotifStoreError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// The embedded queue over [`SqlStore`]'s `notif_queue` table.
///
/// An idle `fetch` polls the table; an enqueue through this queue (or a handle from
/// [`StoreQueue::with_new_owner`]) wakes it at once, so in-process requests do not wait for
/// the next poll.
#[derive(Clone)]
pub struct StoreQueue {
    store: Arc<SqlStore>,
    owner: Arc<str>,
    lease: Duration,
    poll: Duration,
    queued: Arc<tokio::sync::Notify>,
}

impl StoreQueue {
    /// `lease` is the visibility timeout: an item a worker took and did not settle within it
    /// (the worker died) is delivered again.
    pub fn new(store: Arc<SqlStore>, lease: Duration) -> Self {
        Self {
            store,
            owner: uuid::Uuid::new_v4().to_string().into(),
            lease,
            poll: Duration::from_millis(25),
            queued: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Releases the leases of a previous incarnation of the only process using this queue
    /// (see [`SqlStore::queue_release_all`]); returns how many items come back.
    pub async fn reclaim_after_restart(&self) -> Result<u64, QueueError> {
        self.store.queue_release_all().await.map_err(unavailable)
    }

    /// Another handle on the same table with its own lease owner (another worker process).
    pub fn with_new_owner(&self) -> Self {
        Self {
            owner: uuid::Uuid::new_v4().to_string().into(),
            ..self.clone()
        }
    }
}

struct Lease {
    store: Arc<SqlStore>,
    owner: Arc<str>,
    id: String,
}

#[async_trait]
impl Settle for Lease {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.store
            .queue_ack(&self.id, &self.owner)
            .await
            .map_err(unavailable)
    }
    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), QueueError> {
        let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
        self.store
            .queue_retry(&self.id, &self.owner, ms)
            .await
            .map_err(unavailable)
    }
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError> {
        self.store
            .queue_dead(&self.id, &self.owner, reason)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl WorkQueue for StoreQueue {
    async fn enqueue_raw(
        &self,
        id: &str,
        priority: Priority,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        self.store
            .queue_push(id, priority.rank(), payload)
            .await
            .map_err(unavailable)?;
        self.queued.notify_waiters();
        Ok(())
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(60_000);
        loop {
            // Registered before the claim, so an enqueue right after it is not missed.
            let queued = self.queued.notified();
            let rows = self
                .store
                .queue_claim(&self.owner, lease_ms, u32::try_from(max).unwrap_or(64))
                .await
                .map_err(unavailable)?;
            if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(rows
                    .into_iter()
                    .map(|row| {
                        Delivery::new(
                            Bytes::from(row.payload),
                            row.attempts,
                            Box::new(Lease {
                                store: self.store.clone(),
                                owner: self.owner.clone(),
                                id: row.id,
                            }),
                        )
                    })
                    .collect());
            }
            let nap = self
                .poll
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let _ = tokio::time::timeout(nap, queued).await;
        }
    }
}
