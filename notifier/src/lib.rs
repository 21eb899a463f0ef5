//! Arbat's notifier: every payment, incoming transfer, code and offer reaches the customer on
//! the channel they chose, in their language, even when a provider is down.
//!
//! # Guided tour (layout)
//!
//! - [`model`]: [`NotificationRequest`] (what a customer actor or the Access Manager emits
//!   through the outbox), kinds, priorities, channels, devices, [`Preferences`], outcomes.
//! - [`routing`] (pure): preferences × kind × quiet hours × devices → ordered channel plan
//!   with fallbacks (push reached no device → SMS).
//! - [`templates`] (pure): texts per kind in Russian and English as data
//!   (`templates/default.toml`), validated at load; money and dates per language.
//! - [`mask`] (pure): PANs only as BIN + last 4, applied to every rendered text.
//! - [`resilience`] (pure): backoff with jitter, token bucket, circuit breaker.
//! - [`providers`]: FCM HTTP v1, APNs (HTTP/2, reqwest), SMS (JSON gateway, Twilio), SMTP
//!   (lettre), console (demo). Every base URL is configurable.
//! - [`config`]: [`NotifierConfig::from_env`] with the API.md variable names.
//! - [`store`]: [`NotifierStore`] (preferences, devices, per-channel send records, outcomes,
//!   code caps) in memory, SQLite or PostgreSQL; tables `notif_*`. Reads for a whole fetched
//!   batch come in one [`NotifierStore::prefetch`]; [`SqlStore`] group-commits send records,
//!   outcomes, queue acks and claims (one transaction, one fsync, for many sends).
//! - [`queue`]: [`WorkQueue`] over JetStream (`NOTIFY`, `NOTIFY_DLQ`) or the store (leases).
//! - [`worker`]: [`Notifier`] ties it together; `spawn_workers` runs the loops, each keeping
//!   up to `concurrency` deliveries in flight and claiming more as slots free up.
//! - [`delivery`]: [`DeliverySink`] for outcomes (→ `notification` feed events), [`Metrics`].
//! - [`api`]: the operations behind `GET/PUT /v1/notification-preferences` and
//!   `POST/DELETE /v1/devices`.
//!
//! # Guarantees
//!
//! A request is settled (acked) only after every planned channel reached a final state, each
//! recorded per `(request id, channel)`; a redelivered request skips channels already sent.
//! The one window for a repeat is a worker killed after a provider answered 2xx and before
//! the record was committed (a group commit: milliseconds); providers get the request id (SMS
//! `id`, e-mail `Message-ID`) to drop such a repeat. A request claimed again while this node
//! still handles it (its lease lapsed during a long Retry-After) is left alone, not re-sent.
//! An ack is not needed for correctness: a lost one means a redelivery that the send records
//! turn into an ack.

pub mod api;
pub mod config;
pub mod delivery;
pub mod mask;
pub mod model;
pub mod providers;
pub mod queue;
pub mod resilience;
pub mod routing;
pub mod store;
pub mod templates;
pub mod worker;

pub use config::{ConfigError, NotifierConfig};
pub use delivery::{ChannelSink, DeliverySink, Metrics, NoopSink};
pub use model::{
    Channel, DeliveryOutcome, Device, Kind, Language, NotificationRequest, OutcomeStatus, Platform,
    Preferences, Priority, is_request_subject,
};
pub use providers::{Outgoing, Provider, SendError};
pub use queue::{
    Delivery, JetStreamQueue, JetStreamQueueConfig, QueueError, StoreQueue, WorkQueue,
};
pub use store::{MemoryStore, NotifStoreError, NotifierStore, Prefetched, SendState, SqlStore};
pub use templates::Templates;
pub use worker::{Notifier, Presence, Providers, RateLimit, WorkerHandle, WorkerOptions};
