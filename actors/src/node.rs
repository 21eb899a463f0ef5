//! The node's face to the rest of the process: call a customer wherever it lives.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::MailboxError;
use actix_rt::ArbiterHandle;
use bytes::Bytes;
use futures::StreamExt;
use kernel::bus::{Bus, BusError, subjects};
use kernel::store::Store;
use kernel::{Change, CustomerId, metrics};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::actor::Ask;
use crate::protocol::{ApplyReport, CallError, CustomerRequest, Envelope, Reply};
use crate::registry::Registry;
use crate::relay::Relay;
use crate::runtime::ActorRuntime;
use crate::{ActorConfig, Deps};

/// Requests from other nodes served at once per node; more wait on the bus.
const REMOTE_CONCURRENCY: usize = 512;
/// Attempts to reach a partition's owner while the partition changes hands.
const ROUTE_ATTEMPTS: u32 = 8;

/// What the actors talk to: the store, the bus and (optionally) the notifier's queue, which
/// receives the notification requests of the outbox.
pub struct Wiring {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub notify: Option<Arc<dyn notifier::WorkQueue>>,
}

/// A handle to this node's customer actors, cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    deps: Arc<Deps>,
    arbiters: Vec<ArbiterHandle>,
    owned: watch::Receiver<BTreeSet<u32>>,
}

impl Node {
    /// Starts the node's actor side: the outbox relay (live events to the bus, notification
    /// requests to `notify`) and, when `serve_remote`, the answering of requests for the
    /// partitions it owns (`owned` follows the leases in a cluster; it holds every partition
    /// when embedded).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: ActorConfig,
        wiring: Wiring,
        runtime: &ActorRuntime,
        owned: watch::Receiver<BTreeSet<u32>>,
        serve_remote: bool,
        shutdown: watch::Receiver<bool>,
    ) -> Node {
        let Wiring { store, bus, notify } = wiring;
        let relay = Relay::start(store.clone(), bus.clone(), notify, shutdown.clone());
        let deps = Arc::new(Deps {
            store,
            bus,
            relay,
            registry: Registry::default(),
            config,
        });
        let node = Node {
            inner: Arc::new(Inner {
                deps,
                arbiters: runtime.arbiters(),
                owned,
            }),
        };
        tokio::spawn(follow_ownership(
            node.clone(),
            serve_remote,
            shutdown.clone(),
        ));
        tokio::spawn(crate::scheduler::run(node.clone(), shutdown));
        node
    }

    pub(crate) fn config(&self) -> &ActorConfig {
        &self.inner.deps.config
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.deps.store
    }

    pub fn partitions(&self) -> u32 {
        self.inner.deps.config.partitions
    }

    pub fn owns(&self, customer: &CustomerId) -> bool {
        self.inner
            .owned
            .borrow()
            .contains(&customer.partition(self.partitions()))
    }

    pub fn owned(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.inner.owned.clone()
    }

    pub fn resident_actors(&self) -> usize {
        self.inner.deps.registry.len()
    }

    /// Calls the customer's actor: locally when this node owns the customer's partition,
    /// otherwise over the bus on the partition's request subject.
    pub async fn call(
        &self,
        customer: &CustomerId,
        request: CustomerRequest,
    ) -> Result<Value, CallError> {
        let mut backoff = Duration::from_millis(25);
        for _ in 0..ROUTE_ATTEMPTS {
            let result = if self.owns(customer) {
                self.call_local(customer, request.clone()).await
            } else {
                self.call_remote(customer, &request).await
            };
            match result {
                Err(error)
                    if error.code == "partition_moving" || error.code == "version_conflict" =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(800));
                }
                other => return other,
            }
        }
        Err(CallError::unavailable(
            "the customer's partition has no owner right now",
        ))
    }

    /// Applies changes of one customer, in order, on this node (the caller owns the partition).
    pub async fn apply_local(
        &self,
        customer: &CustomerId,
        changes: Vec<Change>,
    ) -> Result<ApplyReport, CallError> {
        let value = self
            .call_local(customer, CustomerRequest::Apply { changes })
            .await?;
        serde_json::from_value(value).map_err(|e| CallError::new("internal", e.to_string()))
    }

    async fn call_local(
        &self,
        customer: &CustomerId,
        request: CustomerRequest,
    ) -> Result<Value, CallError> {
        let inner = &self.inner;
        for _ in 0..3 {
            if !self.owns(customer) {
                return Err(CallError::new("partition_moving", "not the owner"));
            }
            let addr = inner
                .deps
                .registry
                .get_or_activate(customer, &inner.deps, &inner.arbiters)
                .await?;
            match addr.send(Ask(request.clone())).await {
                Ok(answer) => return answer,
                // The actor passivated between lookup and send: activate again.
                Err(MailboxError::Closed) => continue,
                Err(MailboxError::Timeout) => return Err(CallError::new("timeout", "actor busy")),
            }
        }
        Err(CallError::unavailable("actor kept stopping"))
    }

    async fn call_remote(
        &self,
        customer: &CustomerId,
        request: &CustomerRequest,
    ) -> Result<Value, CallError> {
        metrics::REMOTE_CALLS.inc();
        let envelope = Envelope {
            customer_id: customer.clone(),
            request: request.clone(),
        };
        let payload = Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default());
        let subject = subjects::partition_request(customer.partition(self.partitions()));
        let answer = self
            .inner
            .deps
            .bus
            .request(&subject, payload, self.inner.deps.config.request_timeout)
            .await;
        match answer {
            Ok(bytes) => match serde_json::from_slice::<Reply>(&bytes) {
                Ok(Reply::Ok(value)) => Ok(value),
                Ok(Reply::Err(error)) => Err(error),
                Err(e) => Err(CallError::new("internal", format!("bad reply: {e}"))),
            },
            Err(BusError::NoResponders) => Err(CallError::new("partition_moving", "no owner")),
            Err(BusError::Timeout) => Err(CallError::new("timeout", "owner did not answer")),
            Err(e) => Err(CallError::unavailable(e.to_string())),
        }
    }
}

/// Follows the owned set: serves requests for gained partitions, stops actors of lost ones.
async fn follow_ownership(node: Node, serve_remote: bool, mut shutdown: watch::Receiver<bool>) {
    let mut owned = node.inner.owned.clone();
    let mut serving: HashMap<u32, JoinHandle<()>> = HashMap::new();
    let limit = Arc::new(Semaphore::new(REMOTE_CONCURRENCY));
    loop {
        let current = owned.borrow_and_update().clone();
        metrics::PARTITIONS_OWNED.set(current.len() as i64);
        let lost: Vec<u32> = serving
            .keys()
            .copied()
            .filter(|p| !current.contains(p))
            .collect();
        for partition in lost {
            if let Some(task) = serving.remove(&partition) {
                task.abort();
            }
            for addr in node
                .inner
                .deps
                .registry
                .drain_partition(partition, node.partitions())
            {
                let _ = addr.try_send(crate::actor::Stop);
            }
        }
        if serve_remote {
            for partition in current {
                serving.entry(partition).or_insert_with(|| {
                    tokio::spawn(serve_partition(node.clone(), partition, limit.clone()))
                });
            }
        }
        tokio::select! {
            changed = owned.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    for (_, task) in serving {
        task.abort();
    }
}

async fn serve_partition(node: Node, partition: u32, limit: Arc<Semaphore>) {
    let subject = subjects::partition_request(partition);
    let mut requests = match node
        .inner
        .deps
        .bus
        .queue_subscribe(&subject, "owners")
        .await
    {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::error!(%error, partition, "cannot serve partition requests");
            return;
        }
    };
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else { continue };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<Envelope>(&message.payload) {
                Ok(envelope) => {
                    match node
                        .call_local(&envelope.customer_id, envelope.request)
                        .await
                    {
                        Ok(value) => Reply::Ok(value),
                        Err(error) => Reply::Err(error),
                    }
                }
                Err(e) => Reply::Err(CallError::new("bad_request", e.to_string())),
            };
            let bytes = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
            let _ = node.inner.deps.bus.publish(&reply, bytes).await;
            drop(permit);
        });
    }
}
