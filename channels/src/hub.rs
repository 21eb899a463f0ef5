//! Per-node fan-out of live subjects to WebSockets.
//!
//! A node holds one bus subscription per customer with at least one open socket here, not
//! one per socket and never one for all customers: bus traffic per event stays constant as
//! nodes are added. Each socket gets a bounded queue; a socket whose queue is full is cut
//! off (its receiver ends), and the socket closes with "too slow" and resumes later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use futures::StreamExt;
use kernel::CustomerId;
use kernel::bus::{Bus, BusError, subjects};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;

type Members = std::sync::Mutex<Vec<(u64, mpsc::Sender<Bytes>)>>;

struct Topic {
    members: Members,
    ready: OnceCell<Result<(), BusError>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Topic {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    bus: Arc<dyn Bus>,
    topics: DashMap<CustomerId, Arc<Topic>>,
    next_id: AtomicU64,
}

/// A socket's place in the hub; leaving happens on drop.
pub struct Membership {
    hub: Hub,
    customer: CustomerId,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.customer, self.id);
    }
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            inner: Arc::new(HubInner {
                bus,
                topics: DashMap::new(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Joins the customer's live subject. Returns once the bus subscription is in place, so
    /// anything published after this returns reaches the receiver (listen before replay).
    pub async fn join(
        &self,
        customer: &CustomerId,
        buffer: usize,
    ) -> Result<(Membership, mpsc::Receiver<Bytes>), BusError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let topic = {
            // Joining under the map's entry lock serialises with `leave` removing the topic.
            let entry = self
                .inner
                .topics
                .entry(customer.clone())
                .or_insert_with(|| {
                    Arc::new(Topic {
                        members: Members::default(),
                        ready: OnceCell::new(),
                        task: std::sync::Mutex::new(None),
                    })
                });
            if let Ok(mut members) = entry.members.lock() {
                members.push((id, tx));
            }
            entry.clone()
        };
        let membership = Membership {
            hub: self.clone(),
            customer: customer.clone(),
            id,
        };
        let ready = topic
            .ready
            .get_or_init(|| async {
                let subject = subjects::push(customer);
                let subscription = self.inner.bus.subscribe(&subject).await?;
                let presence = self
                    .inner
                    .bus
                    .subscribe(&subjects::presence(customer))
                    .await?;
                self.inner.bus.flush().await?;
                let weak = Arc::downgrade(&topic);
                let task = tokio::spawn(fan_out(
                    subscription,
                    presence,
                    self.inner.bus.clone(),
                    weak,
                ));
                if let Ok(mut slot) = topic.task.lock() {
                    *slot = Some(task);
                }
                Ok(())
            })
            .await
            .clone();
        ready.map(|()| (membership, rx))
    }

    fn leave(&self, customer: &CustomerId, id: u64) {
        let removed = self.inner.topics.remove_if(customer, |_, topic| {
            let Ok(mut members) = topic.members.lock() else {
                return false;
            };
            members.retain(|(member, _)| *member != id);
            members.is_empty()
        });
        drop(removed);
    }

    /// Customers with a live subscription on this node.
    pub fn topics(&self) -> usize {
        self.inner.topics.len()
    }
}

async fn fan_out(
    mut subscription: kernel::bus::Subscription,
    mut presence: kernel::bus::Subscription,
    bus: Arc<dyn Bus>,
    topic: std::sync::Weak<Topic>,
) {
    loop {
        tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else { return };
                let Some(topic) = topic.upgrade() else { return };
                let Ok(mut members) = topic.members.lock() else { return };
                // A full queue means the socket fell behind: drop its sender so it sheds itself.
                members.retain(|(_, tx)| tx.try_send(message.payload.clone()).is_ok());
            }
            // The customer has a live socket here: say so (the notifier asks before a push).
            request = presence.next() => {
                let Some(request) = request else { return };
                if let Some(reply) = request.reply {
                    let _ = bus.publish(&reply, Bytes::from_static(b"1")).await;
                }
            }
        }
    }
}
