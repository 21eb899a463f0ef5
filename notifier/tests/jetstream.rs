//! The cluster queue on a real nats-server (ARBAT_NATS_SERVER must be 2.10+).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use kernel::CustomerId;
use notifier::providers::sms::{JsonGateway, JsonGatewayConfig};
use notifier::resilience::Backoff;
use notifier::*;
use serde_json::json;

fn code(i: u32) -> NotificationRequest {
    let mut r = NotificationRequest::new(
        format!("code-{i}"),
        CustomerId::parse(&format!("c{i}")).unwrap(),
        Kind::Code,
        json!({"code": "123456", "purpose": "login"}),
    );
    r.phone = Some("+79990000001".into());
    r
}

#[tokio::test]
async fn jetstream_work_queue_delivers_dedupes_survives_a_kill_and_dead_letters() {
    let server = testkit::NatsServer::start().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let config = JetStreamQueueConfig {
        ack_wait: Duration::from_millis(800),
        ..Default::default()
    };
    let queue = Arc::new(
        JetStreamQueue::connect(client.clone(), config.clone())
            .await
            .unwrap(),
    );
    let sms = MockHttp::start(|_, _| Reply::ok("{}").delayed(Duration::from_millis(10))).await;
    let store = Arc::new(MemoryStore::new());
    let providers = Providers {
        sms: Some(Arc::new(JsonGateway::new(JsonGatewayConfig {
            url: sms.url.clone(),
            token: None,
            timeout: Duration::from_secs(5),
        }))),
        ..Providers::default()
    };
    let options = WorkerOptions {
        concurrency: 4,
        redelivery: Backoff {
            base: Duration::from_millis(30),
            max: Duration::from_millis(100),
        },
        ..WorkerOptions::default()
    };
    let notifier = Notifier::new(
        store.clone(),
        Arc::new(Templates::builtin()),
        providers,
        Arc::new(NoopSink),
        options,
    );

    let n = 30;
    for i in 0..n {
        queue.enqueue(&code(i)).await.unwrap();
    }
    queue.enqueue(&code(0)).await.unwrap(); // a repeat of the same id is dropped by the stream
    queue
        .enqueue_outbox("notify.req.high", b"\x00garbage")
        .await
        .unwrap();

    let first = notifier.spawn_workers(queue.clone(), 1);
    let seen = sms.requests.clone();
    testkit::eventually("some sent", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move { (seen.lock().unwrap().len() >= 8).then_some(()) }
    })
    .await;
    first.abort();
    // Another node's workers (own connection) on the same durable consumers.
    let other = Arc::new(
        JetStreamQueue::connect(async_nats::connect(server.url()).await.unwrap(), config)
            .await
            .unwrap(),
    );
    let second = notifier.spawn_workers(other, 2);
    testkit::eventually("all sent", Duration::from_secs(15), || {
        let seen = seen.clone();
        async move {
            let mut ids: Vec<String> = seen
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap_or("").to_owned())
                .collect();
            ids.sort();
            ids.dedup();
            (ids.len() == n as usize).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // past ack_wait: nothing more arrives
    second.stop().await;
    let raw = sms.count();
    assert!(
        raw - n as usize <= 4,
        "only in-flight sends at the kill may repeat: {raw}"
    );

    let js = queue.context();
    let mut work = js.get_stream("NOTIFY").await.unwrap();
    assert_eq!(
        work.info().await.unwrap().state.messages,
        0,
        "work queue drained"
    );
    let dlq = js.get_stream("NOTIFY_DLQ").await.unwrap();
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(10).messages().await.unwrap();
    let dead = messages.next().await.unwrap().unwrap();
    assert_eq!(dead.subject.as_str(), "notify.dlq.high");
    assert_eq!(&dead.payload[..], b"\x00garbage");
    let reason = dead
        .headers
        .as_ref()
        .unwrap()
        .get("Arbat-Dlq-Reason")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(reason.starts_with("malformed request"), "{reason}");
}

/// A worker's retry is a delayed NAK (`AckKind::Nak(Some(delay))`): the message comes back
/// after the worker's own backoff, not after the consumer's `ack_wait`/`backoff` steps, which
/// only apply when a worker vanishes without settling.
#[tokio::test]
async fn jetstream_retry_is_a_delayed_nak_not_the_consumer_backoff() {
    let server = testkit::NatsServer::start().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let queue = JetStreamQueue::connect(
        client,
        JetStreamQueueConfig {
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    queue.enqueue(&code(1)).await.unwrap();
    let first = queue.fetch(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    let naked_at = std::time::Instant::now();
    first
        .into_iter()
        .next()
        .unwrap()
        .retry(Duration::from_secs(2))
        .await
        .unwrap();
    let early = queue.fetch(1, Duration::from_millis(100)).await.unwrap();
    assert!(early.is_empty(), "not before the delay");
    let again = testkit::eventually("redelivered", Duration::from_secs(10), || {
        let queue = queue.clone();
        async move {
            let batch = queue.fetch(1, Duration::from_millis(100)).await.unwrap();
            (!batch.is_empty()).then_some(batch)
        }
    })
    .await;
    let waited = naked_at.elapsed();
    assert_eq!(again[0].attempt, 2);
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "after the NAK delay, long before ack_wait (30 s): {waited:?}"
    );
    for d in again {
        d.ack().await.unwrap();
    }
}
