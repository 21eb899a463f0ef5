//! Partition leases against a real nats-server (set `ARBAT_NATS_SERVER` to a 2.10+ binary).
//! Short TTLs keep these in seconds.

use std::collections::BTreeSet;
use std::future::pending;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use bus::NatsBus;
use bus::leases::{LEASES_BUCKET, LeaseManager, Owned};
use bytes::Bytes;
use testkit::{NatsServer, eventually};
use tokio::sync::watch;

const PARTITIONS: u32 = 16;
const TTL: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

fn all() -> Owned {
    (0..PARTITIONS).collect()
}

async fn js(server: &NatsServer) -> Context {
    // Each node its own connection, as in a cluster.
    NatsBus::connect(&server.url()).await.unwrap().jetstream()
}

async fn start(server: &NatsServer, id: &str) -> (LeaseManager, watch::Receiver<Owned>) {
    LeaseManager::start(js(server).await, id, PARTITIONS, TTL, pending())
        .await
        .unwrap()
}

async fn owns(rx: &watch::Receiver<Owned>, what: &str, expected: impl Fn(&Owned) -> bool) {
    eventually(what, WAIT, || {
        let ok = expected(&rx.borrow());
        async move { ok.then_some(()) }
    })
    .await;
}

/// Watches two nodes' owned sets until `done`, failing if they ever overlap.
async fn never_overlap_until(
    a: &watch::Receiver<Owned>,
    b: &watch::Receiver<Owned>,
    what: &str,
    done: impl Fn(&Owned, &Owned) -> bool,
) {
    eventually(what, WAIT, || {
        let (a, b) = (a.borrow().clone(), b.borrow().clone());
        assert!(a.is_disjoint(&b), "two owners: {a:?} and {b:?}");
        let finished = done(&a, &b);
        async move { finished.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn kv_max_age_expires_a_lease_so_another_node_can_create_it() {
    // The server behaviour the design relies on, checked directly.
    let server = NatsServer::start().unwrap();
    let js = js(&server).await;
    let kv = js
        .create_or_update_key_value(async_nats::jetstream::kv::Config {
            bucket: "ttl_probe".into(),
            history: 1,
            max_age: TTL,
            ..Default::default()
        })
        .await
        .unwrap();
    kv.create("p.0", Bytes::from_static(b"dead-node"))
        .await
        .unwrap();
    let written = Instant::now();
    assert!(
        kv.create("p.0", Bytes::from_static(b"other"))
            .await
            .is_err()
    );
    eventually("the expired key can be created again", WAIT, || {
        let kv = kv.clone();
        async move { kv.create("p.0", Bytes::from_static(b"other")).await.ok() }
    })
    .await;
    let after = written.elapsed();
    assert!(
        after >= TTL - Duration::from_millis(100),
        "expired early: {after:?}"
    );
    assert!(after < TTL * 2, "expired late: {after:?}");
    assert_eq!(
        kv.get("p.0").await.unwrap(),
        Some(Bytes::from_static(b"other"))
    );
}

#[tokio::test]
async fn a_single_node_owns_every_partition() {
    let server = NatsServer::start().unwrap();
    let (a, rx) = start(&server, "node-a").await;
    owns(&rx, "node-a owns all", |o| *o == all()).await;
    assert_eq!(a.owned(), all());
    // What KV says matches.
    let kv = js(&server)
        .await
        .get_key_value(LEASES_BUCKET)
        .await
        .unwrap();
    for p in 0..PARTITIONS {
        let owner = kv.get(format!("p.{p}")).await.unwrap();
        assert_eq!(owner, Some(Bytes::from_static(b"node-a")), "partition {p}");
    }
    a.stop().await;
    assert!(rx.borrow().is_empty(), "nothing owned after stop");
}

#[tokio::test]
async fn a_joining_node_gets_half_and_a_leaving_node_gives_it_back() {
    let server = NatsServer::start().unwrap();
    let (a, a_rx) = start(&server, "node-a").await;
    owns(&a_rx, "node-a owns all", |o| *o == all()).await;

    let (b, b_rx) = start(&server, "node-b").await;
    never_overlap_until(&a_rx, &b_rx, "split between a and b", |a, b| {
        a.union(b).copied().collect::<BTreeSet<_>>() == all() && !a.is_empty() && !b.is_empty()
    })
    .await;
    let (na, nb) = (a_rx.borrow().len(), b_rx.borrow().len());
    assert!(
        (6..=10).contains(&na) && (6..=10).contains(&nb),
        "{na} / {nb}"
    );

    // Graceful leave: b releases at once, a takes everything back well within a TTL.
    let left = Instant::now();
    b.stop().await;
    assert!(b_rx.borrow().is_empty());
    owns(&a_rx, "node-a owns all again", |o| *o == all()).await;
    assert!(left.elapsed() < TTL, "took {:?}", left.elapsed());
    a.stop().await;
}

#[tokio::test]
async fn a_killed_node_is_taken_over_after_the_ttl() {
    let server = NatsServer::start().unwrap();
    let (a, a_rx) = start(&server, "node-a").await;
    let (b, b_rx) = start(&server, "node-b").await;
    never_overlap_until(&a_rx, &b_rx, "split between a and b", |a, b| {
        a.union(b).copied().collect::<BTreeSet<_>>() == all() && !a.is_empty() && !b.is_empty()
    })
    .await;

    // Dropping without stop() abandons the leases, as kill -9 would.
    let killed = Instant::now();
    drop(b);
    owns(&a_rx, "node-a takes over b's partitions", |o| *o == all()).await;
    let took = killed.elapsed();
    assert!(
        took >= TTL / 2,
        "took over too early ({took:?}): leases were released"
    );
    assert!(took < TTL * 3, "took {took:?}");
    a.stop().await;
}

#[tokio::test]
async fn three_nodes_converge_to_a_disjoint_cover() {
    let server = NatsServer::start().unwrap();
    let (a, a_rx) = start(&server, "node-a").await;
    let (b, b_rx) = start(&server, "node-b").await;
    let (c, c_rx) = start(&server, "node-c").await;
    eventually("three-way split", WAIT, || {
        let sets = [
            a_rx.borrow().clone(),
            b_rx.borrow().clone(),
            c_rx.borrow().clone(),
        ];
        for i in 0..3 {
            for j in i + 1..3 {
                assert!(sets[i].is_disjoint(&sets[j]), "overlap: {sets:?}");
            }
        }
        let union: Owned = sets.iter().flatten().copied().collect();
        let balanced = sets.iter().all(|s| (4..=6).contains(&s.len()));
        async move { (union == all() && balanced).then_some(()) }
    })
    .await;
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test]
async fn invalid_node_ids_are_refused() {
    let server = NatsServer::start().unwrap();
    let result = LeaseManager::start(js(&server).await, "a.b", PARTITIONS, TTL, pending()).await;
    assert!(result.is_err());
}
