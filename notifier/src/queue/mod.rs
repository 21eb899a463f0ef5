//! Work queues: where requests wait for a worker.
//!
//! - [`JetStreamQueue`] (cluster): stream `NOTIFY` (work-queue retention, file storage, dedupe
//!   by `Nats-Msg-Id` = request id), one durable pull consumer per priority shared by every
//!   worker on every node, explicit acks after the provider accepted, dead letters in stream
//!   `NOTIFY_DLQ` with the reason in a header. Two kinds of redelivery: a worker's retry is a
//!   *delayed NAK* (`AckKind::Nak(Some(delay))`, the delay from the worker's own
//!   `redelivery` backoff and any Retry-After); the consumer's `ack_wait` + `backoff` steps
//!   only apply when a worker vanishes without settling (killed, partitioned).
//! - [`StoreQueue`] (embedded): a `notif_queue` table with leases; a killed worker's items
//!   come back when their lease (visibility timeout) runs out; dead letters in `notif_dead`.
//!   A claim is one statement for a whole batch (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so
//!   concurrent claimers never take the same item nor wait on each other); acks are
//!   group-committed with the send records.

mod jetstream;
mod store;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::{NotificationRequest, Priority};
pub use jetstream::{JetStreamQueue, JetStreamQueueConfig};
pub use store::StoreQueue;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

impl QueueError {
    pub fn code(&self) -> &'static str {
        "queue_unavailable"
    }
}

/// How a delivery ends. Implemented by each queue.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), QueueError>;
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError>;
}

/// One request handed to a worker. Dropping it without settling leaves it to redelivery.
pub struct Delivery {
    pub payload: Bytes,
    /// 1 on first delivery.
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl Delivery {
    pub fn new(payload: Bytes, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Self {
            payload,
            attempt,
            settle,
        }
    }
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle.ack().await
    }
    pub async fn retry(self, delay: Duration) -> Result<(), QueueError> {
        self.settle.retry(delay).await
    }
    pub async fn dead_letter(self, reason: &str) -> Result<(), QueueError> {
        self.settle.dead_letter(reason).await
    }
}

#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Durably queues raw request bytes under an id (a repeat of the id is dropped).
    async fn enqueue_raw(
        &self,
        id: &str,
        priority: Priority,
        payload: &[u8],
    ) -> Result<(), QueueError>;

    /// Up to `max` deliveries, high priority first, waiting at most about `wait` for one.
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    async fn enqueue(&self, request: &NotificationRequest) -> Result<(), QueueError> {
        self.enqueue_raw(&request.id, request.priority(), &request.to_json())
            .await
    }

    /// For the outbox relay: queues an outbox row whose subject passes
    /// [`crate::is_request_subject`]. Undecodable payloads are queued too (under a fresh id)
    /// so that they end in the dead-letter queue with their reason instead of vanishing.
    async fn enqueue_outbox(&self, subject: &str, payload: &[u8]) -> Result<(), QueueError> {
        let priority = if subject.ends_with(".high") {
            Priority::High
        } else {
            Priority::Normal
        };
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .filter(|id| !id.is_empty() && id.len() <= crate::model::MAX_REQUEST_ID_LEN)
            .unwrap_or_else(|| format!("malformed-{}", uuid::Uuid::new_v4()));
        self.enqueue_raw(&id, priority, payload).await
    }
}
