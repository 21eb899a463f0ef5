//! The cluster bus: core NATS through one `async_nats::Client`.
//!
//! async-nats already has the semantics the trait asks for: a bounded buffer per
//! subscription that drops on overflow (reported as a slow-consumer event, which we count),
//! unsubscribe when a `Subscriber` is dropped, and "no responders" status replies. What we
//! add is the same subject validation as the in-process bus and a bound on how long a
//! publish may wait when the client's outgoing queue is full (a dead connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use kernel::bus::{Bus, BusError, Message, Subscription};

use crate::subject;

/// How a node connects to NATS.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Connection name shown by the server (`nats server report connections`).
    pub name: String,
    /// Buffer per subscription, in messages; overflow is dropped and counted.
    pub subscription_capacity: usize,
    /// Longest a publish waits for room in the client's outgoing queue; past it the bus
    /// reports `Unavailable` instead of stalling the caller (only happens when disconnected).
    pub publish_timeout: Duration,
    /// Timeout of the first connection attempt; reconnects after that go on forever.
    pub connection_timeout: Duration,
    /// Upper bound of the exponential reconnect backoff.
    pub max_reconnect_delay: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            name: "arbat".into(),
            subscription_capacity: crate::inprocess::DEFAULT_SUBSCRIPTION_CAPACITY,
            publish_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(5),
        }
    }
}

/// The NATS bus. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    dropped: Arc<AtomicU64>,
    publish_timeout: Duration,
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

impl NatsBus {
    /// Connects with [`NatsOptions::default`].
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        Self::connect_with(url, NatsOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: NatsOptions) -> Result<Self, BusError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let max_delay = options.max_reconnect_delay;
        let client = async_nats::ConnectOptions::new()
            .name(&options.name)
            .subscription_capacity(options.subscription_capacity.max(1))
            .connection_timeout(options.connection_timeout)
            // None = reconnect forever; the backoff doubles from 100 ms up to the cap.
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                let exp = attempts.min(16) as u32;
                Duration::from_millis(100)
                    .saturating_mul(1 << exp.min(10))
                    .min(max_delay)
            })
            .event_callback(move |event| {
                let counter = counter.clone();
                async move {
                    match event {
                        // One event per message dropped from a full subscription buffer
                        // (the client's event queue is bounded too, so under a flood this
                        // count is a lower bound).
                        async_nats::Event::SlowConsumer(_) => {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        other => tracing::info!(event = %other, "nats connection event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            client,
            dropped,
            publish_timeout: options.publish_timeout,
        })
    }

    /// Wraps a client made elsewhere (drops are then not counted).
    pub fn from_client(client: async_nats::Client) -> Self {
        Self {
            client,
            dropped: Arc::new(AtomicU64::new(0)),
            publish_timeout: NatsOptions::default().publish_timeout,
        }
    }

    /// The underlying client, for JetStream users.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A JetStream context on the same connection.
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// Messages dropped because a subscription's buffer was full (slow-consumer events).
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn to_message(message: async_nats::Message) -> Message {
    Message {
        subject: message.subject.to_string(),
        payload: message.payload,
        reply: message.reply.map(|r| r.to_string()),
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        subject::validate_publish(subject)?;
        // The timeout's timer is only armed if the send has to wait, so the usual path
        // costs one clock read.
        match tokio::time::timeout(
            self.publish_timeout,
            self.client.publish(subject.to_owned(), payload),
        )
        .await
        {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(BusError::Unavailable("publish queue full".into())),
        }
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        subject::validate_pattern(subject)?;
        let subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(unavailable)?;
        Ok(Subscription::new(subscriber.map(to_message)))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        subject::validate_pattern(subject)?;
        subject::validate_group(group)?;
        let subscriber = self
            .client
            .queue_subscribe(subject.to_owned(), group.to_owned())
            .await
            .map_err(unavailable)?;
        Ok(Subscription::new(subscriber.map(to_message)))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        subject::validate_publish(subject)?;
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        // The outer timeout also bounds the wait for room in the outgoing queue.
        let reply = tokio::time::timeout(
            timeout,
            self.client.send_request(subject.to_owned(), request),
        )
        .await
        .map_err(|_| BusError::Timeout)?;
        match reply {
            Ok(message) => Ok(message.payload),
            Err(error) => Err(match error.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders,
                RequestErrorKind::TimedOut => BusError::Timeout,
                RequestErrorKind::Other => unavailable(error),
            }),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(unavailable)
    }
}
