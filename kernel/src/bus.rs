//! The message bus: fire-and-forget publish, subscriptions with NATS wildcards, queue groups
//! and request/reply. In-process when embedded, core NATS in a cluster (bus crate).
//!
//! Delivery is at most once and bounded: a subscriber that falls behind loses messages
//! rather than stalling the publisher. Everything that must not be lost goes through the
//! store (journal, outbox) or JetStream, never through a plain subscription alone.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A message as a subscriber sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// Where to send the answer, for requests.
    pub reply: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no responders on the subject")]
    NoResponders,
    #[error("request timed out")]
    Timeout,
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A live subscription. Dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Message> + Send>>,
}

impl Subscription {
    pub fn new(stream: impl Stream<Item = Message> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes without waiting for anyone.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;
    /// Subscribes to a subject; `*` matches one token and `>` the rest, as in NATS.
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;
    /// Like `subscribe`, but each message goes to one member of the group.
    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription, BusError>;
    /// Sends a request and waits for the first reply.
    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError>;
    /// Waits until everything published so far has left this process.
    async fn flush(&self) -> Result<(), BusError>;
}

/// Subject names, so that no other crate spells them.
pub mod subjects {
    use crate::CustomerId;

    /// Live events for one customer's sockets.
    pub fn push(customer: &CustomerId) -> String {
        format!("push.{customer}")
    }
    /// Presence of one customer: every node holding a socket of theirs answers a request.
    pub fn presence(customer: &CustomerId) -> String {
        format!("presence.{customer}")
    }
    /// Control messages for one customer's sockets (logout, revoke).
    pub fn control(customer: &CustomerId) -> String {
        format!("ctl.{customer}")
    }
    /// Cache Control changes from back systems, one subject per customer.
    pub fn abs_event(customer: &CustomerId) -> String {
        format!("abs.evt.{customer}")
    }
    pub const ABS_EVENTS_WILDCARD: &str = "abs.evt.*";
    /// Where refused changes go, with the reason, so they never stall the stream.
    pub const ABS_DEAD_LETTER: &str = "abs.dlq";
    /// The reference ABS's current rate set, published whole when the treasury changes it
    /// (`{"version", "items": [{"base", "quote", "buy", "sell"}]}`); every node follows.
    pub const ABS_RATES: &str = "abs.rates";
    /// Commands to the ABS (request/reply), e.g. `abs.cmd.customer.get`.
    pub fn abs_command(name: &str) -> String {
        format!("abs.cmd.{name}")
    }
    /// Requests to the owner of a partition.
    pub fn partition_request(partition: u32) -> String {
        format!("arbat.part.{partition}.req")
    }
}
