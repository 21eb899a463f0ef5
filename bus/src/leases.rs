//! Partition ownership in a cluster: each partition has at most one owner node at a time.
//!
//! Two JetStream KV buckets, both with `max_age` = the lease TTL (so anything not rewritten
//! within the TTL vanishes on its own, which is how a dead node's claims expire):
//! - `arbat_nodes`: `node.<id>` is each live node's heartbeat;
//! - `arbat_leases`: `p.<n>` holds the id of partition n's owner.
//!
//! Every TTL/3 a node rewrites its heartbeat, lists the live nodes and computes who
//! *should* own each partition (rendezvous hashing with a load cap, so every node computes
//! the same balanced answer from the same live set). It then
//! - acquires the free partitions it should own with `create` (fails if the key exists),
//! - renews the ones it holds with `update(revision)` (a failed update means the lease was
//!   lost: it is dropped from the owned set at once),
//! - releases the ones another live node should own, with a revision-checked delete.
//!
//! Safety rules: a partition enters the owned set only after its KV write succeeded, and
//! leaves it *before* the release write is sent; a lease not renewed within 3/4 of the TTL
//! (measured from before the last successful write, so before the server's expiry) is
//! dropped locally even if no write failed. Every KV operation has a timeout. The store
//! fences a stale owner anyway (expected versions on journal appends); the leases keep
//! that from being the common case.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kernel::bus::BusError;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bucket of node heartbeats.
pub const NODES_BUCKET: &str = "arbat_nodes";
/// Bucket of partition leases.
pub const LEASES_BUCKET: &str = "arbat_leases";
/// Bound on the node list read each tick.
const MAX_NODES: usize = 1024;
/// Bound on concurrent KV writes in one tick.
const WRITE_CONCURRENCY: usize = 32;

/// The set of partitions this node owns, as published on the watch channel.
pub type Owned = BTreeSet<u32>;

/// Runs the lease loop of one node. Stop it with [`stop`](Self::stop) (releases every
/// lease at once) or the `shutdown` future given to [`start`](Self::start). Dropping it
/// without stopping abandons the leases like a crash would: they expire after the TTL.
pub struct LeaseManager {
    node_id: String,
    owned: watch::Receiver<Owned>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

/// Node ids become KV key tokens: 1 to 64 of `[A-Za-z0-9_-]`, unique in the cluster.
fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl LeaseManager {
    /// Creates the buckets if needed and starts the loop. All nodes of a cluster must use
    /// the same `partitions` and `lease_ttl` (the TTL is the buckets' `max_age`). The TTL is
    /// raised to at least one second.
    pub async fn start(
        js: Context,
        node_id: &str,
        partitions: u32,
        lease_ttl: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(Self, watch::Receiver<Owned>), BusError> {
        if !valid_node_id(node_id) {
            return Err(BusError::InvalidSubject(node_id.chars().take(64).collect()));
        }
        let ttl = lease_ttl.max(Duration::from_secs(1));
        let bucket = |name: &str, description: &str| kv::Config {
            bucket: name.into(),
            description: description.into(),
            history: 1,
            max_age: ttl,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let nodes = js
            .create_or_update_key_value(bucket(NODES_BUCKET, "live Arbat nodes (heartbeats)"))
            .await
            .map_err(unavailable)?;
        let leases = js
            .create_or_update_key_value(bucket(LEASES_BUCKET, "partition owners"))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = watch::channel(Owned::new());
        let (stop_tx, stop_rx) = oneshot::channel();
        let worker = Worker {
            ctx: Arc::new(Ctx {
                nodes,
                leases,
                node_id: node_id.to_owned(),
                op_timeout: (ttl / 6).max(Duration::from_millis(100)),
            }),
            partitions: partitions.max(1),
            ttl,
            held: BTreeMap::new(),
            tx,
        };
        let task = tokio::spawn(worker.run(shutdown, stop_rx));
        Ok((
            Self {
                node_id: node_id.to_owned(),
                owned: rx.clone(),
                stop: Some(stop_tx),
                task: Some(task),
            },
            rx,
        ))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The partitions owned right now.
    pub fn owned(&self) -> Owned {
        self.owned.borrow().clone()
    }

    /// Another receiver of the owned set.
    pub fn watch(&self) -> watch::Receiver<Owned> {
        self.owned.clone()
    }

    /// Graceful leave: gives up every lease and the heartbeat, then returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseManager {
    fn drop(&mut self) {
        // Abort before the stop sender goes away, so the loop cannot mistake this for a
        // graceful stop: leases are abandoned and expire after the TTL.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Held {
    revision: u64,
    /// Past this instant the lease may have expired on the server; stop trusting it.
    trusted_until: Instant,
}

struct Worker {
    ctx: Arc<Ctx>,
    partitions: u32,
    ttl: Duration,
    held: BTreeMap<u32, Held>,
    tx: watch::Sender<Owned>,
}

/// What the concurrent KV writes of a tick share (owned, so each write is a 'static task).
struct Ctx {
    nodes: kv::Store,
    leases: kv::Store,
    node_id: String,
    op_timeout: Duration,
}

enum Outcome {
    /// The write succeeded at this revision (acquired, adopted or renewed).
    Held(u32, u64, Instant),
    /// Not ours (any more).
    Lost(u32),
    /// Released or nothing to do.
    Done,
}

impl Worker {
    async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut ticks = tokio::time::interval(self.ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                stopped = &mut stop => match stopped {
                    Ok(()) => break,
                    // The manager was dropped without stop(): abandon, like a crash.
                    Err(_) => return,
                },
                _ = ticks.tick() => self.tick().await,
            }
        }
        self.release_all().await;
    }

    fn publish_owned(&self) {
        let owned: Owned = self.held.keys().copied().collect();
        self.tx.send_if_modified(|current| {
            if *current == owned {
                false
            } else {
                *current = owned;
                true
            }
        });
    }

    async fn tick(&mut self) {
        let ctx = self.ctx.clone();
        let (heartbeat, live) = tokio::join!(ctx.heartbeat(), ctx.live_nodes());
        if let Err(error) = heartbeat {
            tracing::warn!(node = %ctx.node_id, %error, "lease heartbeat failed");
        }

        // What to do with each partition.
        let mut writes: Vec<BoxFuture<'static, Outcome>> = Vec::new();
        let mut release = Vec::new();
        match live {
            Ok(live) => {
                let me = live.iter().position(|n| *n == ctx.node_id).unwrap_or(0);
                let owners = assign(self.partitions, &live);
                for (partition, owner) in (0..self.partitions).zip(owners) {
                    match (owner == me, self.held.get(&partition)) {
                        (true, Some(held)) => {
                            writes.push(ctx.clone().renew(partition, held.revision).boxed())
                        }
                        (true, None) => writes.push(ctx.clone().acquire(partition).boxed()),
                        (false, Some(held)) => release.push((partition, held.revision)),
                        (false, None) => {}
                    }
                }
            }
            Err(error) => {
                // Without the live set, keep what we hold and change nothing else.
                tracing::warn!(node = %ctx.node_id, %error, "lease node listing failed");
                for (partition, held) in &self.held {
                    writes.push(ctx.clone().renew(*partition, held.revision).boxed());
                }
            }
        }

        // Give up ownership before anyone can take it over.
        for (partition, revision) in release {
            self.held.remove(&partition);
            writes.push(ctx.clone().release(partition, revision).boxed());
        }
        self.publish_owned();

        let outcomes: Vec<Outcome> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Outcome::Held(partition, revision, started) => {
                    let trusted_until = started + self.ttl * 3 / 4;
                    self.held.insert(
                        partition,
                        Held {
                            revision,
                            trusted_until,
                        },
                    );
                }
                Outcome::Lost(partition) => {
                    self.held.remove(&partition);
                }
                Outcome::Done => {}
            }
        }
        let now = Instant::now();
        self.held.retain(|_, held| held.trusted_until > now);
        self.publish_owned();
    }

    async fn release_all(mut self) {
        let held = std::mem::take(&mut self.held);
        self.publish_owned();
        let ctx = self.ctx.clone();
        futures::stream::iter(
            held.into_iter()
                .map(|(p, h)| ctx.clone().release(p, h.revision)),
        )
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let node_key = format!("node.{}", ctx.node_id);
        if let Err(error) = ctx.bounded("leave", ctx.nodes.delete(&node_key)).await {
            tracing::warn!(node = %ctx.node_id, %error, "removing heartbeat failed");
        }
    }
}

impl Ctx {
    fn lease_key(partition: u32) -> String {
        format!("p.{partition}")
    }

    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(format!("{what}: {error}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    }

    async fn heartbeat(&self) -> Result<u64, String> {
        let node_key = format!("node.{}", self.node_id);
        let value = Bytes::from(self.node_id.clone());
        self.bounded("heartbeat", self.nodes.put(&node_key, value))
            .await
    }

    async fn live_nodes(&self) -> Result<Vec<String>, String> {
        let list = async {
            let keys = self.nodes.keys().await.map_err(|e| e.to_string())?;
            keys.take(MAX_NODES)
                .try_collect::<Vec<String>>()
                .await
                .map_err(|e| e.to_string())
        };
        let keys = self.bounded("listing nodes", list).await?;
        let mut live: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix("node."))
            .map(str::to_owned)
            .collect();
        // We are alive whatever the listing says (our heartbeat may not be visible yet).
        live.push(self.node_id.clone());
        live.sort();
        live.dedup();
        Ok(live)
    }

    async fn renew(self: Arc<Self>, partition: u32, revision: u64) -> Outcome {
        let started = Instant::now();
        let key = Self::lease_key(partition);
        let value = Bytes::from(self.node_id.clone());
        match self
            .bounded("renew", self.leases.update(&key, value, revision))
            .await
        {
            Ok(revision) => Outcome::Held(partition, revision, started),
            Err(error) => {
                tracing::warn!(node = %self.node_id, partition, %error, "lease lost");
                Outcome::Lost(partition)
            }
        }
    }

    async fn acquire(self: Arc<Self>, partition: u32) -> Outcome {
        let started = Instant::now();
        let key = Self::lease_key(partition);
        let value = Bytes::from(self.node_id.clone());
        let created =
            tokio::time::timeout(self.op_timeout, self.leases.create(&key, value.clone())).await;
        match created {
            Ok(Ok(revision)) => {
                tracing::info!(node = %self.node_id, partition, "lease acquired");
                Outcome::Held(partition, revision, started)
            }
            Ok(Err(error)) if error.kind() == CreateErrorKind::AlreadyExists => {
                // Ours already (a write that timed out but landed, or a restart under the
                // same id)? Adopt it with a revision-checked write; otherwise wait for the
                // owner to release it or for it to expire.
                let Ok(Some(entry)) = self.bounded("lease entry", self.leases.entry(&key)).await
                else {
                    return Outcome::Done;
                };
                if entry.operation != Operation::Put || entry.value != value {
                    return Outcome::Done;
                }
                match self
                    .bounded("adopt", self.leases.update(&key, value, entry.revision))
                    .await
                {
                    Ok(revision) => Outcome::Held(partition, revision, started),
                    Err(_) => Outcome::Done,
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(node = %self.node_id, partition, %error, "lease acquire failed");
                Outcome::Done
            }
            Err(_) => Outcome::Done,
        }
    }

    async fn release(self: Arc<Self>, partition: u32, revision: u64) -> Outcome {
        let key = Self::lease_key(partition);
        // A revision mismatch means it is not ours any more; either way we are done, and if
        // the write is lost the lease simply expires.
        match self
            .bounded(
                "release",
                self.leases.delete_expect_revision(&key, Some(revision)),
            )
            .await
        {
            Ok(()) => tracing::info!(node = %self.node_id, partition, "lease released"),
            Err(error) => {
                tracing::debug!(node = %self.node_id, partition, %error, "lease release failed")
            }
        }
        Outcome::Done
    }
}

/// Who should own each partition: index into `nodes` (sorted, deduplicated) per partition.
///
/// Rendezvous (highest random weight) hashing, so a node joining or leaving moves few
/// partitions, with a load cap of ⌈partitions / nodes⌉ so the split is balanced even for
/// small counts. Deterministic: every node computes the same answer from the same list.
pub fn assign(partitions: u32, nodes: &[String]) -> Vec<usize> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let cap = partitions.div_ceil(nodes.len() as u32);
    let mut load = vec![0u32; nodes.len()];
    let mut ranked: Vec<(u64, usize)> = Vec::with_capacity(nodes.len());
    (0..partitions)
        .map(|partition| {
            ranked.clear();
            ranked.extend(
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (score(n, partition), i)),
            );
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            let chosen = ranked
                .iter()
                .map(|(_, i)| *i)
                .find(|i| load[*i] < cap)
                .unwrap_or(ranked[0].1);
            load[chosen] += 1;
            chosen
        })
        .collect()
}

/// FNV-1a 64 of node id and partition, then a finaliser so that near-identical ids spread.
fn score(node: &str, partition: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0xff]).chain(partition.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn assignment_is_balanced_and_deterministic() {
        for n in 1..=5 {
            let nodes: Vec<String> = ids(&["n-a", "n-b", "n-c", "n-d", "n-e"][..n]);
            let a = assign(64, &nodes);
            assert_eq!(a, assign(64, &nodes));
            let mut load = vec![0; n];
            for i in &a {
                load[*i] += 1;
            }
            let cap = 64usize.div_ceil(n);
            assert!(load.iter().all(|l| *l <= cap), "{load:?}");
            assert_eq!(load.iter().sum::<usize>(), 64);
        }
    }

    #[test]
    fn a_joining_node_moves_a_minority() {
        let two = ids(&["node-1", "node-2"]);
        let three = ids(&["node-1", "node-2", "node-3"]);
        let before: Vec<&String> = assign(60, &two).into_iter().map(|i| &two[i]).collect();
        let after: Vec<&String> = assign(60, &three).into_iter().map(|i| &three[i]).collect();
        let moved_between_old = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && a.as_str() != "node-3")
            .count();
        // Only the new node should take partitions, give or take the load cap's cascade.
        assert!(moved_between_old <= 10, "{moved_between_old}");
    }

    #[test]
    fn node_ids_are_key_safe() {
        assert!(valid_node_id("node-1_a"));
        for bad in ["", "a.b", "a b", "a*", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
    }
}
