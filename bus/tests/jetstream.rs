//! JetStream parts against a real nats-server (set `ARBAT_NATS_SERVER` to a 2.10+ binary).

use std::time::Duration;

use bus::jetstream::{
    self, ABS_STREAM, ConsumerOptions, DLQ_STREAM, PartitionConsumer, REASON_HEADER,
};
use bus::{NatsBus, subjects};
use bytes::Bytes;
use kernel::{Change, CustomerId, partition_of};
use testkit::NatsServer;

const PARTITIONS: u32 = 16;

async fn connect() -> (NatsServer, async_nats::jetstream::Context) {
    let server = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let bus = NatsBus::connect(&server.url()).await.unwrap();
    (server, bus.jetstream())
}

fn change(id: &str, customer: &str) -> Change {
    let raw = format!(
        r#"{{"id":"{id}","customer_id":"{customer}","kind":"balance_changed","at":"2026-12-04T10:00:00Z",
            "account_id":"a1","balance":{{"amount":"1.00","currency":"RUB"}}}}"#
    );
    Change::from_json(raw.as_bytes()).unwrap()
}

/// Customers of one partition, in a stable order.
fn customers_of(partition: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("c{i:06}"))
        .filter(|c| partition_of(c, PARTITIONS) == partition)
        .take(count)
        .collect()
}

#[tokio::test]
async fn server_partition_equals_kernel_partition_of() {
    let (_server, js) = connect().await;
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    // Ensuring twice is harmless (nodes all do it at start).
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    let mut ids: Vec<String> = (0..300).map(|i| format!("c{i:06}")).collect();
    ids.extend(["a", "Z", "x_y-z", "0", "customer-with-a-long-id_0123456789"].map(String::from));
    for id in &ids {
        let customer = CustomerId::parse(id).unwrap();
        js.publish(subjects::abs_event(&customer), Bytes::new())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stream = js.get_stream(ABS_STREAM).await.unwrap();
    let mut used = std::collections::BTreeSet::new();
    for (seq, id) in (1u64..).zip(&ids) {
        let stored = stream.get_raw_message(seq).await.unwrap();
        let partition = partition_of(id, PARTITIONS);
        used.insert(partition);
        assert_eq!(
            stored.subject.as_str(),
            format!("abs.part.{partition}.{id}"),
            "customer {id}"
        );
    }
    assert_eq!(used.len() as u32, PARTITIONS, "every partition is used");
}

#[tokio::test]
async fn msg_id_deduplicates_changes() {
    let (_server, js) = connect().await;
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    let first = change("chg-1", "c000001");
    jetstream::publish_change(&js, &first).await.unwrap();
    jetstream::publish_change(&js, &first).await.unwrap();
    jetstream::publish_change(&js, &change("chg-2", "c000001"))
        .await
        .unwrap();
    let mut stream = js.get_stream(ABS_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}

#[tokio::test]
async fn partition_consumer_delivers_in_order_and_redelivers_unacked() {
    let (_server, js) = connect().await;
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    let mine = customers_of(3, 3);
    let other = customers_of(4, 1);
    for (i, customer) in mine.iter().chain(&other).enumerate() {
        jetstream::publish_change(&js, &change(&format!("chg-{i}"), customer))
            .await
            .unwrap();
    }
    let options = ConsumerOptions {
        ack_wait: Duration::from_secs(1),
        ..ConsumerOptions::default()
    };
    let consumer = PartitionConsumer::bind_with(&js, 3, options.clone())
        .await
        .unwrap();
    assert_eq!(consumer.partition(), 3);

    let batch = consumer
        .fetch_batch(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(batch.len(), 3, "only partition 3's changes");
    let seqs: Vec<u64> = batch.iter().map(|m| m.stream_sequence()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in stream order: {seqs:?}"
    );
    for (message, customer) in batch.iter().zip(&mine) {
        assert_eq!(message.subject(), format!("abs.part.3.{customer}"));
        let parsed = Change::from_json(message.payload()).unwrap();
        assert_eq!(parsed.customer_id.as_str(), customer);
        assert_eq!(message.msg_id(), Some(parsed.id.as_str()));
        assert_eq!(message.delivered(), 1);
    }
    batch[0].ack_confirmed().await.unwrap();
    batch[1].ack_confirmed().await.unwrap();
    // batch[2] is not acked (its owner died): a new binding starts after the ack floor, so
    // it comes back at once and before anything newer, not after ack_wait.
    drop(batch);
    let rebound = PartitionConsumer::bind_with(&js, 3, options).await.unwrap();
    let again = rebound
        .fetch_batch(10, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].stream_sequence(), seqs[2]);
    again[0].ack_confirmed().await.unwrap();

    let empty = rebound
        .fetch_batch(10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn backlog_reads_in_order_and_a_new_binding_gets_the_unacked_back() {
    let (_server, js) = connect().await;
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    let mine = customers_of(3, 4);
    let other = customers_of(4, 1);
    for (i, customer) in mine.iter().chain(&other).enumerate() {
        jetstream::publish_change(&js, &change(&format!("chg-{i}"), customer))
            .await
            .unwrap();
    }
    let consumer = PartitionConsumer::bind(&js, 3).await.unwrap();
    let mut backlog = consumer.backlog(8).await.unwrap();
    // The first batch may hold fewer than all four (whatever had arrived); read on until
    // every one came, at most two in a batch.
    let mut read = Vec::new();
    while read.len() < mine.len() {
        let batch = tokio::time::timeout(Duration::from_secs(5), backlog.next_batch(2))
            .await
            .expect("messages within 5 s")
            .unwrap();
        assert!((1..=2).contains(&batch.len()), "{}", batch.len());
        read.extend(batch);
    }
    let seqs: Vec<u64> = read.iter().map(|m| m.stream_sequence()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for (message, customer) in read.iter().zip(&mine) {
        assert_eq!(message.subject(), format!("abs.part.3.{customer}"));
    }
    // Nothing of partition 4 and nothing more of 3.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), backlog.next_batch(8))
            .await
            .is_err()
    );
    read[0].ack_confirmed().await.unwrap();
    // The owner dies holding three read, unacked messages: the next binding gets them again
    // at once, in order.
    drop((read, backlog, consumer));
    let rebound = PartitionConsumer::bind(&js, 3).await.unwrap();
    let mut backlog = rebound.backlog(8).await.unwrap();
    let mut again = Vec::new();
    while again.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), backlog.next_batch(8))
            .await
            .expect("redelivered within 5 s, not after ack_wait")
            .unwrap();
        again.extend(batch);
    }
    let again_seqs: Vec<u64> = again.iter().map(|m| m.stream_sequence()).collect();
    assert_eq!(again_seqs, seqs[1..]);
}

#[tokio::test]
async fn fetch_returns_early_when_messages_are_there() {
    let (_server, js) = connect().await;
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    let customer = &customers_of(0, 1)[0];
    jetstream::publish_change(&js, &change("chg-x", customer))
        .await
        .unwrap();
    let consumer = PartitionConsumer::bind(&js, 0).await.unwrap();
    let started = std::time::Instant::now();
    let batch = consumer
        .fetch_batch(100, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn poison_message_is_dead_lettered_and_terminated() {
    let (_server, js) = connect().await;
    jetstream::ensure_abs_stream(&js, PARTITIONS).await.unwrap();
    jetstream::ensure_dlq_stream(&js).await.unwrap();
    let customer = &customers_of(5, 1)[0];
    let poison = Bytes::from_static(b"{not json");
    js.publish(format!("abs.evt.{customer}"), poison.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer = PartitionConsumer::bind_with(
        &js,
        5,
        ConsumerOptions {
            ack_wait: Duration::from_secs(1),
            ..ConsumerOptions::default()
        },
    )
    .await
    .unwrap();
    let batch = consumer
        .fetch_batch(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    let error = Change::from_json(batch[0].payload()).unwrap_err();
    jetstream::dead_letter_from(
        &js,
        Some(batch[0].subject()),
        batch[0].payload().clone(),
        error.code(),
        &error.to_string(),
    )
    .await
    .unwrap();
    batch[0].term().await.unwrap();

    let dlq = js.get_stream(DLQ_STREAM).await.unwrap();
    let stored = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(stored.subject.as_str(), subjects::ABS_DEAD_LETTER);
    assert_eq!(stored.payload, poison);
    assert_eq!(
        stored.headers.get(REASON_HEADER).map(|v| v.as_str()),
        Some("malformed_change")
    );
    assert_eq!(
        stored
            .headers
            .get(jetstream::ORIGIN_HEADER)
            .map(|v| v.as_str().to_owned()),
        Some(format!("abs.part.5.{customer}"))
    );
    // Terminated: not redelivered after ack_wait.
    let later = consumer
        .fetch_batch(10, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(later.is_empty());

    // The plain variant works too.
    jetstream::dead_letter(
        &js,
        Bytes::from_static(b"x"),
        "invalid_change",
        "line1\nline2",
    )
    .await
    .unwrap();
    let stored = dlq.get_raw_message(2).await.unwrap();
    assert_eq!(
        stored
            .headers
            .get(jetstream::DETAIL_HEADER)
            .map(|v| v.as_str()),
        Some("line1 line2")
    );
}
