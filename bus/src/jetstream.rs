//! The durable half of the cluster bus: the Cache Control stream, its per-partition
//! consumers and the dead-letter stream (NATS JetStream only).
//!
//! Back systems publish a change to `abs.evt.<customer>`; the stream's subject transform
//! rewrites it to `abs.part.<partition>.<customer>` as it is stored, with the same
//! FNV-1a partition function as [`kernel::partition_of`]. The owner of a partition reads
//! it through one durable pull consumer, so a customer's changes are applied in stream
//! order by exactly one node.
//!
//! Durability: every stream here uses file storage. nats-server fsyncs file streams every
//! `sync_interval` (default 2 minutes), and that is a *server* setting, not a stream one
//! (async-nats's stream `Config` has no such field): production servers must run with
//! `jetstream { sync_interval: always }` in their configuration file.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::Publish;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType, SubjectTransform};
use async_nats::jetstream::{self as js, Context};
use bytes::Bytes;
use futures::StreamExt;
use kernel::Change;
use kernel::bus::{BusError, subjects};

/// Stream holding Cache Control changes.
pub const ABS_STREAM: &str = "ABS_EVENTS";
/// Stream holding refused changes.
pub const DLQ_STREAM: &str = "ABS_DLQ";
/// Header naming why a message was dead-lettered (a stable code such as `invalid_change`).
pub const REASON_HEADER: &str = "Arbat-Reason";
/// Header with a human-readable detail of the refusal.
pub const DETAIL_HEADER: &str = "Arbat-Detail";
/// Header with the subject the refused message was read from, when known.
pub const ORIGIN_HEADER: &str = "Arbat-Origin-Subject";

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

/// The stored subject of partition `partition`'s messages: `abs.part.<p>.*`.
pub fn partition_filter(partition: u32) -> String {
    format!("abs.part.{partition}.*")
}

/// Settings of the `ABS_EVENTS` stream.
#[derive(Clone, Debug)]
pub struct AbsStreamConfig {
    /// Fixed for the life of a cluster: changing it remaps customers to other partitions.
    pub partitions: u32,
    /// How long a `Nats-Msg-Id` is remembered for deduplication. The server keeps every id
    /// of the window in memory, so this trades memory for the retry span it covers; the
    /// consumers are idempotent by change id anyway, this only saves work.
    pub duplicate_window: Duration,
    /// How long changes stay available for replay.
    pub max_age: Duration,
    /// Size bound of the stream (oldest are discarded beyond it).
    pub max_bytes: i64,
}

impl AbsStreamConfig {
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions: partitions.max(1),
            duplicate_window: Duration::from_secs(60 * 60),
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            max_bytes: 8 << 30,
        }
    }
}

/// Creates or updates the `ABS_EVENTS` stream for `partitions` partitions.
pub async fn ensure_abs_stream(js: &Context, partitions: u32) -> Result<(), BusError> {
    ensure_abs_stream_with(js, &AbsStreamConfig::new(partitions)).await
}

pub async fn ensure_abs_stream_with(
    js: &Context,
    config: &AbsStreamConfig,
) -> Result<(), BusError> {
    let partitions = config.partitions.max(1);
    js.create_or_update_stream(stream::Config {
        name: ABS_STREAM.into(),
        description: Some(
            "Cache Control changes, mapped to abs.part.<partition>.<customer>".into(),
        ),
        subjects: vec![subjects::ABS_EVENTS_WILDCARD.into()],
        subject_transform: Some(SubjectTransform {
            source: subjects::ABS_EVENTS_WILDCARD.into(),
            destination: format!("abs.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"),
        }),
        storage: StorageType::File,
        duplicate_window: config.duplicate_window.min(config.max_age),
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        discard: DiscardPolicy::Old,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Creates or updates the `ABS_DLQ` stream (bounded: 30 days, 1 million messages).
pub async fn ensure_dlq_stream(js: &Context) -> Result<(), BusError> {
    js.create_or_update_stream(stream::Config {
        name: DLQ_STREAM.into(),
        description: Some("Refused Cache Control changes, with the reason in headers".into()),
        subjects: vec![subjects::ABS_DEAD_LETTER.into()],
        storage: StorageType::File,
        max_age: Duration::from_secs(30 * 24 * 60 * 60),
        max_messages: 1_000_000,
        max_bytes: 1 << 30,
        discard: DiscardPolicy::Old,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Publishes a change to `abs.evt.<customer>` with `Nats-Msg-Id` = its id and waits for the
/// stream's acknowledgement: when this returns `Ok`, the change is durably accepted (a
/// duplicate of an id seen within the window is accepted and not stored twice).
pub async fn publish_change(js: &Context, change: &Change) -> Result<(), BusError> {
    let publish = Publish::build()
        .message_id(&change.id)
        .payload(Bytes::from(change.to_json()));
    js.send_publish(subjects::abs_event(&change.customer_id), publish)
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Stores a refused message on `abs.dlq` with the reason in headers, and waits for the
/// acknowledgement so that the caller may then `term` the original.
pub async fn dead_letter(
    js: &Context,
    payload: Bytes,
    reason_code: &str,
    detail: &str,
) -> Result<(), BusError> {
    dead_letter_from(js, None, payload, reason_code, detail).await
}

/// Like [`dead_letter`], recording the subject the message came from.
pub async fn dead_letter_from(
    js: &Context,
    origin_subject: Option<&str>,
    payload: Bytes,
    reason_code: &str,
    detail: &str,
) -> Result<(), BusError> {
    let mut headers = HeaderMap::new();
    headers.insert(REASON_HEADER, header_value(reason_code));
    // Header values are single-line; keep the detail short and on one line.
    headers.insert(DETAIL_HEADER, header_value(detail));
    if let Some(origin) = origin_subject {
        headers.insert(ORIGIN_HEADER, header_value(origin));
    }
    js.publish_with_headers(subjects::ABS_DEAD_LETTER, headers, payload)
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn header_value(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

/// Settings of a partition consumer.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Most unacknowledged messages outstanding; the server stops delivering past it.
    pub max_ack_pending: i64,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
        }
    }
}

/// The durable pull consumer of one partition (`arbat-part-<p>` on `abs.part.<p>.*`).
///
/// Order: the server delivers a partition's messages in stream order. To keep that order
/// through failures, the owner handles a batch in order and acks (or terms, after
/// dead-lettering) every message before fetching the next batch; an unacked message is
/// redelivered after `ack_wait`.
pub struct PartitionConsumer {
    partition: u32,
    consumer: PullConsumer,
}

impl PartitionConsumer {
    /// Binds to (creating or updating) the consumer of `partition` with default options.
    pub async fn bind(js: &Context, partition: u32) -> Result<Self, BusError> {
        Self::bind_with(js, partition, ConsumerOptions::default()).await
    }

    /// Binds to the consumer of `partition`, so that its messages come in stream order even
    /// after a change of owner.
    ///
    /// A previous owner may have died (or lost the partition) holding fetched, unacked
    /// messages. Redelivery of those would wait for `ack_wait` while newer messages flow, and
    /// a customer's changes would be applied out of order. So when the consumer has messages
    /// pending, it is recreated to start right after its ack floor: everything unacked comes
    /// again, in order (what was acked past the floor comes again too, and is dropped by
    /// change id).
    pub async fn bind_with(
        js: &Context,
        partition: u32,
        options: ConsumerOptions,
    ) -> Result<Self, BusError> {
        let name = format!("arbat-part-{partition}");
        let stream = js.get_stream(ABS_STREAM).await.map_err(unavailable)?;
        let mut deliver_policy = DeliverPolicy::All;
        if let Ok(info) = stream.consumer_info(&name).await {
            if info.num_ack_pending == 0 {
                let consumer: PullConsumer =
                    stream.get_consumer(&name).await.map_err(unavailable)?;
                return Ok(Self {
                    partition,
                    consumer,
                });
            }
            deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: info.ack_floor.stream_sequence + 1,
            };
            stream.delete_consumer(&name).await.map_err(unavailable)?;
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                name: Some(name),
                description: Some(format!("Cache Control changes of partition {partition}")),
                filter_subject: partition_filter(partition),
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_ack_pending: options.max_ack_pending.max(1),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Self {
            partition,
            consumer,
        })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Up to `max` messages: returns as soon as any are available, or empty after `wait`.
    pub async fn fetch_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<IncomingChange>, BusError> {
        let max = max.clamp(1, 10_000);
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(max.min(256));
        // The server ends the batch itself (on `expires`); the extra bound covers a lost
        // end-of-batch status.
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(2);
        while out.len() < max {
            match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(Ok(message))) => out.push(IncomingChange::new(message)?),
                Ok(Some(Err(error))) if out.is_empty() => return Err(unavailable(error)),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            }
        }
        Ok(out)
    }
}

/// A partition consumer read continuously: the server keeps messages flowing to this node
/// while it works on earlier ones, so a batch does not wait one fetch round trip behind the
/// previous one. Bounded: at most `buffered` messages are requested ahead, and the
/// consumer's `max_ack_pending` caps what is delivered but not yet acknowledged.
///
/// Order and acknowledgement are as with [`PartitionConsumer::fetch_batch`]: the caller
/// handles what [`next_batch`](Self::next_batch) returned before asking for more, and a
/// caller that stops on an error binds again from the ack floor (what was buffered and not
/// acknowledged comes again, in order).
pub struct PartitionBacklog {
    messages: async_nats::jetstream::consumer::pull::Stream,
}

/// How often the server signals an idle pull is alive; a missed signal ends the backlog.
const BACKLOG_HEARTBEAT: Duration = Duration::from_secs(2);
/// Life of one pull request; the client renews it.
const BACKLOG_EXPIRES: Duration = Duration::from_secs(6);

impl PartitionConsumer {
    /// Starts a continuous read of this partition, at most `buffered` messages ahead.
    pub async fn backlog(&self, buffered: usize) -> Result<PartitionBacklog, BusError> {
        let messages = self
            .consumer
            .stream()
            .max_messages_per_batch(buffered.clamp(1, 10_000))
            .heartbeat(BACKLOG_HEARTBEAT)
            .expires(BACKLOG_EXPIRES)
            .messages()
            .await
            .map_err(unavailable)?;
        Ok(PartitionBacklog { messages })
    }
}

impl PartitionBacklog {
    /// Waits for the next message, then takes the ones that have already arrived, up to
    /// `max` in all, in stream order. `Err` when the read broke (missed heartbeats, the
    /// consumer deleted, the connection lost): the caller binds again.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<IncomingChange>, BusError> {
        let first = match self.messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(unavailable(error)),
            None => return Err(BusError::Unavailable("partition read ended".into())),
        };
        let mut out = vec![IncomingChange::new(first)?];
        while out.len() < max.max(1) {
            match futures::FutureExt::now_or_never(self.messages.next()) {
                Some(Some(Ok(message))) => out.push(IncomingChange::new(message)?),
                // An error after messages: hand over these; it shows again on the next call
                // if the read is really broken.
                Some(Some(Err(_)) | None) | None => break,
            }
        }
        Ok(out)
    }
}

/// One change read from a partition consumer.
pub struct IncomingChange {
    message: js::Message,
    stream_sequence: u64,
    delivered: i64,
}

impl std::fmt::Debug for IncomingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingChange")
            .field("subject", &self.subject())
            .field("stream_sequence", &self.stream_sequence)
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl IncomingChange {
    fn new(message: js::Message) -> Result<Self, BusError> {
        let info = message.info().map_err(unavailable)?;
        let (stream_sequence, delivered) = (info.stream_sequence, info.delivered);
        Ok(Self {
            message,
            stream_sequence,
            delivered,
        })
    }

    /// The change's JSON, as the back system sent it.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The stored subject, `abs.part.<p>.<customer>`.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// Position in `ABS_EVENTS`; strictly increasing within a partition.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// How many times this message has been delivered (1 the first time).
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// The `Nats-Msg-Id` header (the change id), if the publisher set one.
    pub fn msg_id(&self) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str())
    }

    /// Done with it. Fire-and-forget: if the ack is lost the message comes back after
    /// `ack_wait`, which is harmless because consumers are idempotent by change id.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.message.ack().await.map_err(unavailable)
    }

    /// Like [`ack`](Self::ack), but waits for the server to confirm it (one round trip).
    pub async fn ack_confirmed(&self) -> Result<(), BusError> {
        self.message.double_ack().await.map_err(unavailable)
    }

    /// A poison message: never delivered again (dead-letter it first).
    pub async fn term(&self) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(unavailable)
    }

    /// Asks for redelivery after `delay` (e.g. the store was unavailable).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(unavailable)
    }
}
