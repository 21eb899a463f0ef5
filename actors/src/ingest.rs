//! Cluster ingest: Cache Control changes from the `ABS_EVENTS` JetStream stream.
//!
//! The stream maps `abs.evt.<customer>` onto `abs.part.<p>.<customer>` (p = FNV-1a of the
//! id mod partitions, [`kernel::partition_of`]); the owner of partition p reads the durable
//! consumer `arbat-part-<p>`. A batch is applied per customer in stream order, each
//! customer's changes in one store commit, and a message is acked only after its commit:
//! nothing acknowledged by the store is lost, and redeliveries are dropped by change id.
//! A message that cannot be parsed, or that the customer's rules refuse, is stored on the
//! dead-letter stream with its reason and terminated, so it never stalls the partition.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::Context;
use bus::jetstream::{self, IncomingChange, PartitionConsumer};
use futures::stream::{self, StreamExt};
use kernel::change::{ChangeSink, SinkError, SubmitReport};
use kernel::{Change, CustomerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Node, group_by_customer};

/// Most messages handled as one batch, and requested ahead of the one being handled.
const BATCH: usize = 256;
/// Customers of one batch applied concurrently.
const CONCURRENCY: usize = 64;

/// Runs one consumer per owned partition until shutdown, following ownership changes.
pub async fn run_partition_consumers(node: Node, js: Context, mut shutdown: watch::Receiver<bool>) {
    let mut owned = node.owned();
    let mut running: HashMap<u32, JoinHandle<()>> = HashMap::new();
    loop {
        let current: BTreeSet<u32> = owned.borrow_and_update().clone();
        running.retain(|partition, task| {
            let keep = current.contains(partition) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for partition in current {
            running.entry(partition).or_insert_with(|| {
                tokio::spawn(consume_partition(node.clone(), js.clone(), partition))
            });
        }
        tokio::select! {
            changed = owned.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|stop| *stop) => break,
            // Restart consumers that died (the stream was briefly unreachable).
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

async fn consume_partition(node: Node, js: Context, partition: u32) {
    let consumer = match PartitionConsumer::bind(&js, partition).await {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::warn!(%error, partition, "cannot bind partition consumer; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    // Read continuously: the next messages arrive while a batch commits, and a batch takes
    // whatever has arrived meanwhile. Batches are still handled one at a time, in order.
    let mut backlog = match consumer.backlog(BATCH).await {
        Ok(backlog) => backlog,
        Err(error) => {
            tracing::warn!(%error, partition, "cannot read partition; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    tracing::info!(partition, "consuming partition");
    loop {
        let batch = match backlog.next_batch(BATCH).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, partition, "partition read failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
        };
        if !batch.is_empty() && handle_batch(&node, &js, batch).await.is_err() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
    }
}

/// Applies a batch; `Err` when some changes could not be applied now (the caller rebinds).
async fn handle_batch(node: &Node, js: &Context, batch: Vec<IncomingChange>) -> Result<(), ()> {
    let mut valid: Vec<(Change, IncomingChange)> = Vec::with_capacity(batch.len());
    for message in batch {
        match Change::from_json(message.payload()) {
            Ok(change) => valid.push((change, message)),
            Err(error) => {
                tracing::warn!(code = error.code(), %error, subject = message.subject(), "malformed change dead-lettered");
                kernel::metrics::CHANGES_REJECTED.inc();
                dead_letter(js, &message, error.code(), &error.to_string()).await;
            }
        }
    }
    // Keep the message of each change so it can be acked after its commit.
    let mut messages: HashMap<String, Vec<IncomingChange>> = HashMap::new();
    let mut changes = Vec::with_capacity(valid.len());
    for (change, message) in valid {
        messages.entry(change.id.clone()).or_default().push(message);
        changes.push(change);
    }
    let groups = group_by_customer(changes);
    let results: Vec<(Vec<String>, Result<crate::ApplyReport, crate::CallError>)> =
        stream::iter(groups)
            .map(|(customer, changes)| async move {
                let ids: Vec<String> = changes.iter().map(|c| c.id.clone()).collect();
                (ids, node.apply_local(&customer, changes).await)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let mut failed = false;
    for (ids, result) in results {
        match result {
            Ok(report) => {
                for (id, code, detail) in &report.rejected {
                    tracing::warn!(change_id = %id, %code, %detail, "change refused; dead-lettered");
                    for message in messages.remove(id).unwrap_or_default() {
                        dead_letter(js, &message, code, detail).await;
                    }
                }
                for id in ids {
                    for message in messages.remove(&id).unwrap_or_default() {
                        let _ = message.ack().await;
                    }
                }
            }
            Err(error) if error.code == "unknown_customer" => {
                for id in ids {
                    for message in messages.remove(&id).unwrap_or_default() {
                        dead_letter(js, &message, "unknown_customer", &error.detail).await;
                    }
                }
            }
            Err(error) => {
                // Transient (store down, partition moving, fenced). Naking would let newer
                // changes of this customer overtake these; instead stop this consumer: it is
                // bound again from its ack floor and everything unacked comes back in order.
                tracing::warn!(%error, "changes not applied; partition consumer restarts");
                failed = true;
            }
        }
    }
    if failed { Err(()) } else { Ok(()) }
}

async fn dead_letter(js: &Context, message: &IncomingChange, code: &str, detail: &str) {
    match jetstream::dead_letter_from(
        js,
        Some(message.subject()),
        message.payload().clone(),
        code,
        detail,
    )
    .await
    {
        Ok(()) => {
            let _ = message.term().await;
        }
        // Not stored on the dead-letter stream: let it come back rather than lose it.
        Err(error) => {
            tracing::warn!(%error, "dead-letter failed");
            let _ = message.nak(Some(Duration::from_secs(1))).await;
        }
    }
}

/// The cluster change sink: changes are durable once `ABS_EVENTS` acknowledged them.
pub struct JetStreamSink {
    js: Context,
}

impl JetStreamSink {
    pub fn new(js: Context) -> Self {
        Self { js }
    }
}

#[async_trait::async_trait]
impl ChangeSink for JetStreamSink {
    async fn submit(&self, changes: Vec<Change>) -> Result<SubmitReport, SinkError> {
        let accepted = changes.len();
        let groups: Vec<(CustomerId, Vec<Change>)> = group_by_customer(changes);
        let results: Vec<Result<(), SinkError>> = stream::iter(groups)
            .map(|(_, changes)| async move {
                // One customer's changes in order; customers side by side.
                for change in &changes {
                    jetstream::publish_change(&self.js, change)
                        .await
                        .map_err(|e| SinkError::Unavailable(e.to_string()))?;
                }
                Ok(())
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(SubmitReport {
            accepted,
            rejected: vec![],
        })
    }
}
