use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream};
use async_trait::async_trait;
use futures::StreamExt;

use super::{Delivery, QueueError, Settle, WorkQueue};
use crate::model::{Priority, REQUEST_SUBJECT_PREFIX};

pub const STREAM: &str = "NOTIFY";
pub const DLQ_STREAM: &str = "NOTIFY_DLQ";
pub const DLQ_SUBJECT_PREFIX: &str = "notify.dlq";
/// Header of a dead letter carrying why it was given up.
pub const REASON_HEADER: &str = "Arbat-Dlq-Reason";

#[derive(Clone, Debug)]
pub struct JetStreamQueueConfig {
    /// How long a worker may hold a message before it is redelivered (first step of the
    /// consumer's backoff; later steps double it).
    pub ack_wait: Duration,
    /// The consumer stops redelivering after this many deliveries; workers dead-letter
    /// before that (at the notifier's `max_deliveries`), so keep it larger.
    pub max_deliver: i64,
    pub replicas: usize,
}

impl Default for JetStreamQueueConfig {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            replicas: 1,
        }
    }
}

fn err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// The cluster queue. Every worker on every node uses the same two durable consumers, so
/// each message goes to one worker at a time.
#[derive(Clone)]
pub struct JetStreamQueue {
    js: jetstream::Context,
    high: PullConsumer,
    normal: PullConsumer,
}

impl JetStreamQueue {
    /// Creates the streams and consumers when missing.
    pub async fn connect(
        client: async_nats::Client,
        config: JetStreamQueueConfig,
    ) -> Result<Self, QueueError> {
        let js = jetstream::new(client);
        let work = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{REQUEST_SUBJECT_PREFIX}.>")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        js.get_or_create_stream(stream::Config {
            name: DLQ_STREAM.into(),
            subjects: vec![format!("{DLQ_SUBJECT_PREFIX}.>")],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(err)?;
        let backoff: Vec<Duration> = (0..4).map(|i| config.ack_wait * (1 << i)).collect();
        let consumer = |name: &str, subject: String| jetstream::consumer::pull::Config {
            durable_name: Some(name.into()),
            filter_subject: subject,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver.max(backoff.len() as i64 + 1),
            backoff: backoff.clone(),
            max_ack_pending: 10_000,
            ..Default::default()
        };
        let high = work
            .get_or_create_consumer(
                "notify-high",
                consumer("notify-high", format!("{REQUEST_SUBJECT_PREFIX}.high")),
            )
            .await
            .map_err(err)?;
        let normal = work
            .get_or_create_consumer(
                "notify-normal",
                consumer("notify-normal", format!("{REQUEST_SUBJECT_PREFIX}.normal")),
            )
            .await
            .map_err(err)?;
        Ok(Self { js, high, normal })
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    async fn take(
        &self,
        consumer: &PullConsumer,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut messages = match wait {
            None => consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(err)?,
            Some(wait) => consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(err)?,
        };
        let mut out = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(err)?;
            let attempt = message
                .info()
                .map(|i| i.delivered.max(1) as u32)
                .unwrap_or(1);
            out.push(Delivery::new(
                message.payload.clone(),
                attempt,
                Box::new(JsSettle {
                    js: self.js.clone(),
                    message,
                }),
            ));
        }
        Ok(out)
    }
}

struct JsSettle {
    js: jetstream::Context,
    message: jetstream::Message,
}

#[async_trait]
impl Settle for JsSettle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.message.double_ack().await.map_err(err)
    }
    /// A delayed NAK: redelivered after `delay` (the worker's backoff), independent of the
    /// consumer's `backoff`, which only paces redelivery after an ack timeout.
    async fn retry(self: Box<Self>, delay: Duration) -> Result<(), QueueError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(err)
    }
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), QueueError> {
        let suffix = self
            .message
            .subject
            .as_str()
            .strip_prefix(REQUEST_SUBJECT_PREFIX)
            .unwrap_or(".unknown")
            .to_owned();
        let mut headers = async_nats::HeaderMap::new();
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        headers.insert(REASON_HEADER, reason.as_str());
        if let Some(id) = self
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
        {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        // Durable in the DLQ first, then removed from the work queue.
        self.js
            .publish_with_headers(
                format!("{DLQ_SUBJECT_PREFIX}{suffix}"),
                headers,
                self.message.payload.clone(),
            )
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        self.message.double_ack().await.map_err(err)
    }
}

#[async_trait]
impl WorkQueue for JetStreamQueue {
    async fn enqueue_raw(
        &self,
        id: &str,
        priority: Priority,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        self.js
            .publish_with_headers(
                format!("{REQUEST_SUBJECT_PREFIX}.{}", priority.as_str()),
                headers,
                bytes::Bytes::copy_from_slice(payload),
            )
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let high = self.take(&self.high, max, None).await?;
        if !high.is_empty() {
            return Ok(high);
        }
        // Short waits keep codes from queueing behind a long poll on the normal consumer.
        self.take(
            &self.normal,
            max,
            Some(wait.clamp(Duration::from_millis(10), Duration::from_millis(250))),
        )
        .await
    }
}
