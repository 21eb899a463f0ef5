//! The embedded bus: NATS semantics inside one process, no I/O.
//!
//! Publishing is on the hot path (every live event goes through it), so the registry is
//! read-mostly: literal subscriptions sit in a [`DashMap`] keyed by subject (one shard read
//! lock per publish), and the few wildcard subscriptions sit in a copy-on-write list that
//! a publisher reads with one `Arc` clone. Delivery is `try_send` into each subscriber's
//! bounded channel: a full channel loses that message for that subscriber (and counts it)
//! and never makes the publisher wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::Stream;
use kernel::bus::{Bus, BusError, Message, Subscription};
use tokio::sync::mpsc;

use crate::subject::{self, Token};

/// Default per-subscription buffer, in messages.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 4096;

/// The in-process bus. Cheap to clone; clones share the same subscriptions.
#[derive(Clone)]
pub struct InProcessBus {
    registry: Arc<Registry>,
}

struct Registry {
    /// Literal subscriptions by subject.
    exact: DashMap<Box<str>, Vec<Arc<Subscriber>>>,
    /// Wildcard subscriptions; replaced wholesale on (rare) change so readers never block long.
    wildcard: RwLock<Arc<Vec<Arc<Subscriber>>>>,
    /// Lets a publisher skip the wildcard lock entirely when there are none (the usual case).
    wildcard_count: AtomicUsize,
    next_id: AtomicU64,
    /// Rotates the starting member when picking one member of a queue group.
    rotor: AtomicUsize,
    dropped: AtomicU64,
    capacity: usize,
}

struct Subscriber {
    id: u64,
    /// Parsed pattern; empty for literal subscriptions (they are matched by the map key).
    pattern: Vec<Token>,
    group: Option<Box<str>>,
    tx: mpsc::Sender<Message>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// A bus whose subscriptions buffer [`DEFAULT_SUBSCRIPTION_CAPACITY`] messages each.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_SUBSCRIPTION_CAPACITY)
    }

    /// A bus whose subscriptions buffer `capacity` messages each (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            registry: Arc::new(Registry {
                exact: DashMap::new(),
                wildcard: RwLock::new(Arc::new(Vec::new())),
                wildcard_count: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                rotor: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
                capacity: capacity.max(1),
            }),
        }
    }

    /// Messages lost because a subscriber's buffer was full (or a whole queue group's was).
    pub fn dropped_messages(&self) -> u64 {
        self.registry.dropped.load(Ordering::Relaxed)
    }

    /// Live subscriptions (request inboxes included while a request waits).
    pub fn subscription_count(&self) -> usize {
        let exact: usize = self.registry.exact.iter().map(|e| e.value().len()).sum();
        exact + self.registry.wildcard_count.load(Ordering::Relaxed)
    }

    fn add(&self, pattern: &str, group: Option<&str>, capacity: usize) -> SubscriptionStream {
        let wildcard = subject::validate_pattern(pattern).unwrap_or(true);
        let registry = &self.registry;
        let (tx, rx) = mpsc::channel(capacity);
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber {
            id,
            pattern: if wildcard {
                subject::parse_pattern(pattern)
            } else {
                Vec::new()
            },
            group: group.map(Into::into),
            tx,
        });
        if wildcard {
            let mut list = write(&registry.wildcard);
            let mut next = Vec::with_capacity(list.len() + 1);
            next.extend(list.iter().cloned());
            next.push(subscriber);
            *list = Arc::new(next);
            registry.wildcard_count.fetch_add(1, Ordering::Relaxed);
        } else {
            registry
                .exact
                .entry(pattern.into())
                .or_default()
                .push(subscriber);
        }
        SubscriptionStream {
            rx,
            _guard: Unsubscribe {
                registry: Arc::downgrade(registry),
                key: if wildcard { None } else { Some(pattern.into()) },
                id,
            },
        }
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    // No code panics while holding the lock; recover rather than poison the bus forever.
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    /// Delivers to every matching subscriber and one member per queue group; returns how many
    /// subscriptions matched (whether or not their buffers had room), for "no responders".
    fn deliver(&self, subject: &str, payload: Bytes, reply: Option<String>) -> usize {
        let message = Message {
            subject: subject.to_owned(),
            payload,
            reply,
        };
        let mut matched = 0;
        // Queue members are collected and handled after plain subscribers; allocation only
        // happens when a queue group matches.
        let mut members: Vec<Arc<Subscriber>> = Vec::new();
        if let Some(list) = self.exact.get(subject) {
            for subscriber in list.iter() {
                matched += 1;
                if subscriber.group.is_some() {
                    members.push(subscriber.clone());
                } else {
                    self.send(subscriber, &message);
                }
            }
        }
        if self.wildcard_count.load(Ordering::Relaxed) > 0 {
            let list = read(&self.wildcard).clone();
            for subscriber in list.iter() {
                if subject::matches(&subscriber.pattern, subject) {
                    matched += 1;
                    if subscriber.group.is_some() {
                        members.push(subscriber.clone());
                    } else {
                        self.send(subscriber, &message);
                    }
                }
            }
        }
        if !members.is_empty() {
            self.deliver_to_groups(members, &message);
        }
        matched
    }

    fn send(&self, subscriber: &Subscriber, message: &Message) {
        if let Err(mpsc::error::TrySendError::Full(_)) = subscriber.tx.try_send(message.clone()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // Closed: the Subscription is being dropped and its guard removes the entry.
    }

    /// One member per group, as NATS does across all matching patterns with the same group
    /// name. Members are tried from a rotating start so load spreads, and a member whose
    /// buffer is full is skipped in favour of one with room; only when every member is
    /// full is the message dropped.
    fn deliver_to_groups(&self, mut members: Vec<Arc<Subscriber>>, message: &Message) {
        members.sort_by(|a, b| a.group.cmp(&b.group));
        let start = self.rotor.fetch_add(1, Ordering::Relaxed);
        for group in members.chunk_by(|a, b| a.group == b.group) {
            let mut delivered = false;
            for offset in 0..group.len() {
                let member = &group[(start + offset) % group.len()];
                if member.tx.try_send(message.clone()).is_ok() {
                    delivered = true;
                    break;
                }
            }
            if !delivered {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn remove(&self, key: Option<&str>, id: u64) {
        match key {
            Some(key) => {
                if let Entry::Occupied(mut entry) = self.exact.entry(key.into()) {
                    entry.get_mut().retain(|s| s.id != id);
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                }
            }
            None => {
                let mut list = write(&self.wildcard);
                if list.iter().any(|s| s.id == id) {
                    let next: Vec<_> = list.iter().filter(|s| s.id != id).cloned().collect();
                    *list = Arc::new(next);
                    self.wildcard_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Removes the registry entry when the subscription is dropped.
struct Unsubscribe {
    registry: Weak<Registry>,
    key: Option<Box<str>>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.key.as_deref(), self.id);
        }
    }
}

struct SubscriptionStream {
    rx: mpsc::Receiver<Message>,
    _guard: Unsubscribe,
}

impl Stream for SubscriptionStream {
    type Item = Message;
    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        subject::validate_publish(subject)?;
        self.registry.deliver(subject, payload, None);
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        subject::validate_pattern(subject)?;
        Ok(Subscription::new(self.add(
            subject,
            None,
            self.registry.capacity,
        )))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        subject::validate_pattern(subject)?;
        subject::validate_group(group)?;
        Ok(Subscription::new(self.add(
            subject,
            Some(group),
            self.registry.capacity,
        )))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        subject::validate_publish(subject)?;
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = format!("_INBOX.inproc.{id}");
        // Only the first reply matters; a buffer of one keeps late replies from piling up.
        let mut replies = self.add(&inbox, None, 1);
        if self.registry.deliver(subject, payload, Some(inbox)) == 0 {
            return Err(BusError::NoResponders);
        }
        match tokio::time::timeout(timeout, replies.rx.recv()).await {
            Ok(Some(reply)) => Ok(reply.payload),
            Ok(None) => Err(BusError::Unavailable("reply inbox closed".into())),
            Err(_) => Err(BusError::Timeout),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        // Delivery is synchronous: by the time publish returned, the message was handed over.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registry_entries_go_away_with_their_subscriptions() {
        let bus = InProcessBus::new();
        let a = bus.subscribe("a.b").await.unwrap();
        let b = bus.subscribe("a.b").await.unwrap();
        let w = bus.queue_subscribe("a.*", "g").await.unwrap();
        assert_eq!(bus.subscription_count(), 3);
        drop(a);
        assert_eq!(bus.subscription_count(), 2);
        drop((b, w));
        assert_eq!(bus.subscription_count(), 0);
        assert!(bus.registry.exact.is_empty());
        let _ = bus
            .request("a.b", Bytes::new(), Duration::from_millis(10))
            .await;
        assert_eq!(
            bus.subscription_count(),
            0,
            "request inboxes are removed too"
        );
    }

    #[tokio::test]
    async fn full_buffers_drop_and_count() {
        let bus = InProcessBus::with_capacity(2);
        let _slow = bus.subscribe("x").await.unwrap();
        for _ in 0..5 {
            bus.publish("x", Bytes::from_static(b"m")).await.unwrap();
        }
        assert_eq!(bus.dropped_messages(), 3);
    }

    #[tokio::test]
    async fn queue_group_skips_a_full_member() {
        use futures::StreamExt;
        let bus = InProcessBus::with_capacity(1);
        let mut a = bus.queue_subscribe("q", "g").await.unwrap();
        let mut b = bus.queue_subscribe("q", "g").await.unwrap();
        bus.publish("q", Bytes::from_static(b"1")).await.unwrap();
        bus.publish("q", Bytes::from_static(b"2")).await.unwrap();
        assert_eq!(bus.dropped_messages(), 0);
        bus.publish("q", Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(bus.dropped_messages(), 1);
        let got = [a.next().await.unwrap(), b.next().await.unwrap()];
        let mut payloads: Vec<_> = got.iter().map(|m| m.payload.clone()).collect();
        payloads.sort();
        assert_eq!(
            payloads,
            [Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
    }
}
