//! The node's notifier: its store and durable queue for the node's mode, its workers, and
//! the sink that turns delivery outcomes into `notification` feed events.

use std::sync::Arc;

use anyhow::Context as _;
use kernel::change::ChangeSink;
use kernel::{Change, ChangeBody};
use notifier::{
    DeliveryOutcome, DeliverySink, JetStreamQueue, JetStreamQueueConfig, Notifier, NotifierConfig,
    SqlStore, StoreQueue, Templates, WorkQueue, WorkerHandle, WorkerOptions,
};

use crate::config::{Config, Mode};

/// Workers per node; each handles a batch of requests concurrently.
const WORKERS: usize = 2;
/// How long an embedded worker holds a request before another may take it.
const STORE_QUEUE_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct NodeNotifier {
    pub notifier: Arc<Notifier>,
    pub queue: Arc<dyn WorkQueue>,
    workers: WorkerHandle,
}

/// The notifier's store and queue, ready before the actors (whose outbox feeds the queue).
pub struct Prepared {
    store: Arc<SqlStore>,
    pub queue: Arc<dyn WorkQueue>,
    providers: notifier::Providers,
}

impl NodeNotifier {
    pub async fn prepare(
        config: &Config,
        notifier_config: &NotifierConfig,
        nats: Option<async_nats::Client>,
    ) -> anyhow::Result<Prepared> {
        let embedded = config.mode == Mode::Embedded;
        let providers = notifier_config
            .providers(embedded)
            .context("notification providers")?;
        let store_url = match &config.mode {
            // A file of its own: the notifier's queue and send records never contend with
            // the journal's single writer.
            Mode::Embedded => format!("sqlite://{}", config.data_dir.join("notifier.db").display()),
            Mode::Cluster { database_url, .. } => database_url.clone(),
        };
        let store = Arc::new(
            SqlStore::connect(&store_url)
                .await
                .context("opening the notifier store")?,
        );
        let queue: Arc<dyn WorkQueue> = match nats {
            None => {
                let queue = StoreQueue::new(store.clone(), STORE_QUEUE_LEASE);
                // One process owns the data folder: leases still held were a crashed run's.
                let back = queue
                    .reclaim_after_restart()
                    .await
                    .context("reclaiming notification leases")?;
                if back > 0 {
                    tracing::info!(
                        requests = back,
                        "notifications in flight at the last stop are sent again"
                    );
                }
                Arc::new(queue)
            }
            Some(client) => Arc::new(
                JetStreamQueue::connect(client, JetStreamQueueConfig::default())
                    .await
                    .context("creating the NOTIFY stream")?,
            ),
        };
        Ok(Prepared {
            store,
            queue,
            providers,
        })
    }

    pub async fn stop(self) {
        self.workers.stop().await;
    }
}

impl Prepared {
    /// Starts the workers; outcomes go to `feed`.
    pub fn start(self, feed: Arc<dyn ChangeSink>) -> NodeNotifier {
        let notifier = Notifier::new(
            self.store,
            Arc::new(Templates::builtin()),
            self.providers,
            Arc::new(FeedSink { feed }),
            WorkerOptions::default(),
        );
        let workers = notifier.spawn_workers(self.queue.clone(), WORKERS);
        NodeNotifier {
            notifier,
            queue: self.queue,
            workers,
        }
    }
}

/// Presence over the bus: a node holding a socket of the customer answers
/// `presence.<customer>`; no answer in time means offline (the push goes out as usual).
pub struct BusPresence {
    pub bus: Arc<dyn kernel::bus::Bus>,
}

/// Presence is a hint: waiting longer than this would delay the notification itself.
const PRESENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

#[async_trait::async_trait]
impl notifier::Presence for BusPresence {
    async fn online(&self, customer: &kernel::CustomerId) -> bool {
        let subject = kernel::bus::subjects::presence(customer);
        self.bus
            .request(&subject, bytes::Bytes::new(), PRESENCE_TIMEOUT)
            .await
            .is_ok()
    }
}

/// Delivery outcomes become `notification` events in the customer's feed, through the same
/// durable path as any Cache Control change (so they are deduplicated and ordered too).
struct FeedSink {
    feed: Arc<dyn ChangeSink>,
}

#[async_trait::async_trait]
impl DeliverySink for FeedSink {
    async fn report(&self, outcome: DeliveryOutcome) {
        let Some(customer_id) = outcome.customer_id else {
            return;
        };
        let status = serde_json::to_value(outcome.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let channel = outcome.channel.map(|c| c.as_str().to_owned());
        let id = format!(
            "ntf-{}-{}-{status}",
            outcome.request_id,
            channel.as_deref().unwrap_or("none")
        );
        let change = Change {
            id: id.chars().take(kernel::change::MAX_CHANGE_ID_LEN).collect(),
            customer_id,
            at: outcome.at,
            body: ChangeBody::Notification {
                request_id: outcome.request_id,
                about: outcome
                    .kind
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_default(),
                channel,
                status,
                reason: outcome.reason,
            },
        };
        if let Err(error) = self.feed.submit(vec![change]).await {
            tracing::warn!(%error, "delivery outcome not recorded in the feed");
        }
    }
}
