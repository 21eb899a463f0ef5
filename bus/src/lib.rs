//! The message bus behind [`kernel::bus::Bus`], in two backends with one behaviour, plus the
//! durable JetStream parts and partition leases a cluster needs.
//!
//! # Guided tour
//!
//! - `subject.rs` (private): the subject grammar (tokens, `*`, `>`) and
//!   matching, shared so that both backends refuse exactly the same subjects.
//! - [`InProcessBus`] (`inprocess.rs`): embedded mode. A read-mostly registry (literal
//!   subjects in a `DashMap`, a short copy-on-write list of wildcard subscriptions), bounded
//!   buffers per subscription that drop and count on overflow, queue groups, request/reply.
//! - [`NatsBus`] (`nats.rs`): cluster mode over one `async_nats::Client`; same validation,
//!   bounded publish wait, slow-consumer drops counted.
//! - [`jetstream`]: the `ABS_EVENTS` stream (subject transform to per-partition subjects),
//!   `publish_change`, the per-partition durable consumer and the dead-letter stream.
//! - [`leases`]: partition ownership through JetStream KV (heartbeats, rendezvous
//!   assignment, create/update/delete with revisions, TTL expiry of dead nodes).
//!
//! Both backends pass the same conformance suite (`tests/conformance.rs`).

mod inprocess;
mod nats;
mod subject;

pub mod jetstream;
pub mod leases;

pub use inprocess::{DEFAULT_SUBSCRIPTION_CAPACITY, InProcessBus};
pub use kernel::bus::{Bus, BusError, Message, Subscription, subjects};
pub use leases::LeaseManager;
pub use nats::{NatsBus, NatsOptions};
