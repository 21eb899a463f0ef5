//! Arbat's shared kernel: the vocabulary every other crate speaks.
//!
//! # Layout
//!
//! - [`ids`]: customer ids and the partition function shared with NATS subject transforms.
//! - [`money`]: integer minor units with an ISO 4217 currency; the wire form is a decimal string.
//! - [`change`]: Cache Control changes pushed by back systems (API.md), parsed strictly.
//! - [`event`]: customer feed events, the unit of the journal, the feed and live push.
//! - [`bus`]: the message bus trait (in-process or NATS) and its subjects.
//! - [`payment`]: the payment command to the ABS (`abs.cmd.payment`) and its receipt.
//! - [`store`]: the durable store trait (SQLite or PostgreSQL) and its records.
//!
//! The kernel does no I/O of its own; the bus and store crates implement its traits.

pub mod bus;
pub mod change;
pub mod event;
pub mod ids;
pub mod metrics;
pub mod money;
pub mod payment;
pub mod store;

pub use change::{Change, ChangeBody, ChangeError};
pub use event::FeedEvent;
pub use ids::{CustomerId, IdError, partition_of};
pub use money::{Currency, Money, MoneyError};

/// The current time, truncated to milliseconds so it survives every store round trip unchanged.
pub fn now() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now)
}
