//! The outbox relay: publishes what commits enqueued, then deletes it.
//!
//! The fast path hands freshly committed rows over a bounded channel, so a live event
//! leaves the node right after its commit. Whatever the fast path could not take (a full
//! channel, a crash between commit and publish) stays in the outbox table and a periodic
//! sweep publishes it. Consumers deduplicate by seq, so a row published twice is harmless.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kernel::bus::Bus;
use kernel::metrics;
use kernel::store::{OutboxMessage, Store};
use notifier::WorkQueue;
use tokio::sync::{mpsc, watch};

const FAST_PATH_CAPACITY: usize = 4096;
const BATCH: usize = 256;
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Published rows are deleted in groups at least this often.
const DELETE_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub(crate) struct Relay {
    tx: mpsc::Sender<(Vec<i64>, Vec<OutboxMessage>)>,
}

impl Relay {
    pub(crate) fn start(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        notify: Option<Arc<dyn WorkQueue>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(FAST_PATH_CAPACITY);
        let targets = Targets { bus, notify };
        tokio::spawn(run(store, targets, rx, shutdown));
        Self { tx }
    }

    /// Hands committed rows to the relay without waiting; if it is saturated the sweep
    /// publishes them a little later.
    pub(crate) fn publish(&self, ids: Vec<i64>, messages: Vec<OutboxMessage>) {
        if ids.is_empty() {
            return;
        }
        if self.tx.try_send((ids, messages)).is_err() {
            tracing::debug!("outbox relay saturated; rows left for the sweep");
        }
    }
}

/// Where outbox rows go: notification requests to the notifier's durable queue, the rest
/// (live events) to the bus.
struct Targets {
    bus: Arc<dyn Bus>,
    notify: Option<Arc<dyn WorkQueue>>,
}

async fn run(
    store: Arc<dyn Store>,
    targets: Targets,
    mut rx: mpsc::Receiver<(Vec<i64>, Vec<OutboxMessage>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(DELETE_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rows already published, deleted together: one store write for many commits.
    let mut published: Vec<i64> = Vec::new();
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { break };
                let mut ids = first.0;
                let mut messages = first.1;
                while ids.len() < BATCH {
                    match rx.try_recv() {
                        Ok((more_ids, more)) => {
                            ids.extend(more_ids);
                            messages.extend(more);
                        }
                        Err(_) => break,
                    }
                }
                if relay(&targets, messages).await {
                    published.extend(ids);
                }
                if published.len() >= BATCH {
                    delete(&*store, &mut published).await;
                }
            }
            _ = flush.tick(), if !published.is_empty() => delete(&*store, &mut published).await,
            _ = sweep.tick() => {
                // Delete first, so the sweep does not send again what was just sent.
                delete(&*store, &mut published).await;
                match store.outbox_pending(BATCH as u32).await {
                    Ok(rows) => {
                        metrics::OUTBOX_LAG.set(rows.len() as i64);
                        if rows.is_empty() { continue; }
                        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                        let messages = rows
                            .into_iter()
                            .map(|r| OutboxMessage { subject: r.subject, payload: r.payload })
                            .collect();
                        if relay(&targets, messages).await {
                            published.extend(ids);
                            delete(&*store, &mut published).await;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "outbox sweep failed"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    delete(&*store, &mut published).await;
}

/// Sends each row where it goes; false if one failed (the rows stay for the sweep).
async fn relay(targets: &Targets, messages: Vec<OutboxMessage>) -> bool {
    for message in messages {
        let sent = if notifier::is_request_subject(&message.subject) {
            match &targets.notify {
                Some(queue) => queue
                    .enqueue_outbox(&message.subject, &message.payload)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        } else {
            targets
                .bus
                .publish(&message.subject, Bytes::from(message.payload))
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "outbox relay failed");
            return false;
        }
        metrics::OUTBOX_PUBLISHED.inc();
    }
    true
}

async fn delete(store: &dyn Store, published: &mut Vec<i64>) {
    if published.is_empty() {
        return;
    }
    match store.outbox_delete(published).await {
        Ok(()) => published.clear(),
        // Kept: deleted with the next batch; meanwhile the sweep may send them again.
        Err(error) => tracing::warn!(%error, "outbox delete failed"),
    }
}
