//! The store-backed work queue on SQLite (file, WAL) and PostgreSQL: concurrent workers
//! (each its own lease owner) never hold the same item at once, nothing is lost, retries and
//! lapsed leases come back, dead letters keep their reason.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notifier::*;

async fn concurrent_claims_are_exclusive(store: Arc<SqlStore>) {
    let queue = StoreQueue::new(store.clone(), Duration::from_secs(30));
    let n = 300;
    for i in 0..n {
        queue
            .enqueue_raw(
                &format!("q{i}"),
                Priority::Normal,
                format!("q{i}").as_bytes(),
            )
            .await
            .unwrap();
    }
    let claimed: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let queue = queue.with_new_owner();
            let claimed = claimed.clone();
            tokio::spawn(async move {
                loop {
                    let batch = queue.fetch(7, Duration::from_millis(50)).await.unwrap();
                    if batch.is_empty() {
                        return;
                    }
                    for d in batch {
                        assert_eq!(d.attempt, 1, "nothing is handed out twice");
                        claimed.lock().unwrap().push(d.payload.to_vec());
                        d.ack().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let claimed = claimed.lock().unwrap().clone();
    let distinct: HashSet<_> = claimed.iter().collect();
    assert_eq!(claimed.len(), n, "every item claimed once");
    assert_eq!(distinct.len(), n, "no item claimed twice");
    assert_eq!(store.queue_len().await.unwrap(), 0);
}

async fn simultaneous_claims_are_disjoint(store: Arc<SqlStore>) {
    // Several owners claim at the same moment without settling: their sets are disjoint.
    let queue = StoreQueue::new(store.clone(), Duration::from_secs(30));
    for i in 0..120 {
        queue
            .enqueue_raw(
                &format!("d{i}"),
                Priority::Normal,
                format!("d{i}").as_bytes(),
            )
            .await
            .unwrap();
    }
    let owners: Vec<_> = (0..4).map(|_| queue.with_new_owner()).collect();
    let batches = futures::future::join_all(
        owners
            .iter()
            .map(|q| q.fetch(40, Duration::from_millis(10))),
    )
    .await;
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    for batch in batches {
        for d in batch.unwrap() {
            assert!(
                seen.insert(d.payload.clone()),
                "claimed twice: {:?}",
                d.payload
            );
            held.push(d); // unsettled: the lease keeps it from the others
        }
    }
    // Whatever the simultaneous claims left over is still there for a later one.
    while seen.len() < 120 {
        let more = owners[0]
            .fetch(40, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(!more.is_empty(), "items lost: only {} claimed", seen.len());
        for d in more {
            assert!(
                seen.insert(d.payload.clone()),
                "claimed twice: {:?}",
                d.payload
            );
            held.push(d);
        }
    }
    assert!(
        owners[1]
            .fetch(10, Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty()
    );
    drop(held);
}

async fn retries_leases_and_dead_letters(store: Arc<SqlStore>) {
    let queue = StoreQueue::new(store.clone(), Duration::from_millis(300));
    queue
        .enqueue_raw("a", Priority::Normal, b"a")
        .await
        .unwrap();
    queue.enqueue_raw("b", Priority::High, b"b").await.unwrap();
    queue
        .enqueue_raw("a", Priority::Normal, b"again")
        .await
        .unwrap(); // a repeat is dropped
    let batch = queue.fetch(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(
        batch.iter().map(|d| d.payload.to_vec()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"a".to_vec()],
        "high priority first"
    );
    let mut batch = batch.into_iter();
    let b = batch.next().unwrap();
    let a = batch.next().unwrap();
    b.retry(Duration::from_millis(200)).await.unwrap();
    drop(a); // a worker that died: the lease lapses
    assert!(queue.fetch(10, Duration::ZERO).await.unwrap().is_empty());
    let other = queue.with_new_owner();
    let again = other.fetch(10, Duration::from_secs(2)).await.unwrap();
    let mut got: Vec<(Vec<u8>, u32)> = again
        .iter()
        .map(|d| (d.payload.to_vec(), d.attempt))
        .collect();
    if got.len() < 2 {
        let more = other.fetch(10, Duration::from_secs(2)).await.unwrap();
        got.extend(more.iter().map(|d| (d.payload.to_vec(), d.attempt)));
        for d in more {
            d.dead_letter("gave up").await.unwrap();
        }
    }
    for d in again {
        d.dead_letter("gave up").await.unwrap();
    }
    got.sort();
    assert_eq!(got, vec![(b"a".to_vec(), 2), (b"b".to_vec(), 2)]);
    assert_eq!(store.queue_len().await.unwrap(), 0);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.2 == "gave up"));
    // An ack by a previous owner whose lease lapsed does not remove the new owner's item.
    queue
        .enqueue_raw("c", Priority::Normal, b"c")
        .await
        .unwrap();
    let stale = queue.fetch(1, Duration::from_millis(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let fresh = other.fetch(1, Duration::from_millis(10)).await.unwrap();
    assert_eq!(fresh.len(), 1);
    for d in stale {
        d.ack().await.unwrap();
    }
    assert_eq!(
        store.queue_len().await.unwrap(),
        1,
        "the stale ack changed nothing"
    );
    for d in fresh {
        d.ack().await.unwrap();
    }
    assert_eq!(store.queue_len().await.unwrap(), 0);
}

/// A fresh SQLite file (WAL) or PostgreSQL database per case.
async fn fresh(pg: bool) -> (Arc<SqlStore>, Box<dyn std::any::Any + Send>) {
    if pg {
        let db = testkit::PgDatabase::create().await.unwrap();
        let store = SqlStore::connect(&db.url).await.unwrap();
        (Arc::new(store), Box::new(db))
    } else {
        let dir = tempdir();
        let store = SqlStore::connect(&format!("sqlite://{}", dir.0.join("q.db").display()))
            .await
            .unwrap();
        (Arc::new(store), Box::new(dir))
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("notif-q-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

async fn suite(pg: bool) {
    let (store, _keep) = fresh(pg).await;
    concurrent_claims_are_exclusive(store).await;
    let (store, _keep) = fresh(pg).await;
    simultaneous_claims_are_disjoint(store).await;
    let (store, _keep) = fresh(pg).await;
    retries_leases_and_dead_letters(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_queue() {
    suite(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queue() {
    suite(true).await;
}
