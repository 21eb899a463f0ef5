//! Customer actors: each active customer is an actix actor holding its hot state.
//!
//! # Layout
//!
//! - [`runtime`]: the actix system with one arbiter per core, beside the tokio runtime.
//! - [`Node`] (node.rs): the one entry point. `call` reaches a customer's actor locally when
//!   this node owns the customer's partition, otherwise over the bus on
//!   `arbat.part.<p>.req`; the node answers those requests for the partitions it owns.
//! - registry.rs: resident actors and activation (snapshot + journal replay; the ABS is asked
//!   only the first time a customer is seen).
//! - actor.rs: the actor. Reads come from memory. A change is decided by the pure domain
//!   crate, committed (events, change ids, snapshot, outbox) in one store transaction, and
//!   only then folded into the state. Idle actors passivate after `idle_timeout`.
//! - scheduler.rs: the per-node loop that runs due monthly/weekly autopayments of the owned
//!   partitions (the store's schedule index) through their customers' actors.
//! - relay.rs: the outbox relay that turns committed events into live messages.
//! - [`protocol`]: requests, replies and errors as data.
//!
//! # Invariants
//!
//! - State never runs ahead of the journal: `apply` happens after the commit returned.
//! - A stale owner is fenced: every commit carries the expected journal version, and an
//!   actor whose commit conflicts stops so the next request rebuilds it from the store.
//! - Mailboxes are bounded (`mailbox_capacity`); callers wait, nothing queues without bound.

use std::sync::Arc;
use std::time::Duration;

use kernel::bus::Bus;
use kernel::store::Store;

mod actor;
pub mod ingest;
mod node;
pub mod protocol;
mod registry;
mod relay;
pub mod runtime;
mod scheduler;
mod sink;

pub use node::{Node, Wiring};
pub use protocol::{ApplyReport, CallError, CustomerRequest};
pub use runtime::ActorRuntime;
pub use sink::{LocalSink, group_by_customer};

/// Settings of the actor side of a node.
#[derive(Clone, Debug)]
pub struct ActorConfig {
    /// Customers hash into this many partitions (the same on every node of a cluster).
    pub partitions: u32,
    /// An actor with no message for this long leaves memory.
    pub idle_timeout: Duration,
    /// Write a snapshot at least every this many journal events.
    pub snapshot_every: u64,
    pub mailbox_capacity: usize,
    /// How long a call to another node (or to the ABS) may take.
    pub request_timeout: Duration,
    /// How often the scheduler scans for due monthly/weekly autopayments.
    pub autopay_tick: Duration,
    /// Due autopayment runs taken per scan at most.
    pub autopay_batch: u32,
}

impl Default for ActorConfig {
    fn default() -> Self {
        Self {
            partitions: 64,
            idle_timeout: Duration::from_secs(600),
            snapshot_every: 64,
            mailbox_capacity: 64,
            request_timeout: Duration::from_secs(5),
            autopay_tick: scheduler::DEFAULT_TICK,
            autopay_batch: 100,
        }
    }
}

/// What every actor of a node shares.
pub(crate) struct Deps {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) relay: relay::Relay,
    pub(crate) registry: registry::Registry,
    pub(crate) config: ActorConfig,
}
