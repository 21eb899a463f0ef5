//! Arbat's banking rules as pure state machines: no I/O, no clocks, no randomness.
//!
//! # Layout
//!
//! - [`autopay`]: autopayments, their schedules (next run, period keys) and balance triggers.
//! - [`customer`]: a customer's hot state (profile, products, recent transactions, journal
//!   version) and its two functions: [`CustomerState::decide`] turns a Cache Control change
//!   into event drafts or a rejection, [`CustomerState::apply`] folds a committed event into
//!   the state. Replaying the journal through `apply` rebuilds the same state.
//! - [`operations`]: Operation Studio definitions (TOML), validated with file and field
//!   named; request fields checked against them.
//! - [`payments`]: payment checks (idempotency, ownership, currency, funds, limits) and
//!   `payment_status` events folded into the state.
//! - [`products`]: deposit interest (simple, actual/365) and loan annuity schedules, and
//!   what `GET /v1/products` shows computed from a product's terms.
//! - [`scheduled`]: monthly/weekly autopayments: the schedule index write an event causes,
//!   and what a due run is (the period's payment, or already run) and when it runs next.
//! - [`templates`]: saved payments, journaled as `template_saved`/`template_deleted`.
//! - [`views`]: what the API reads from the state (products, transaction pages).
//!
//! The actor shell (actors crate) assigns sequence numbers, commits events to the store and
//! only then calls `apply`, so the state never runs ahead of the journal.

pub mod autopay;
pub mod customer;
pub mod operations;
pub mod payments;
pub mod products;
pub mod scheduled;
pub mod templates;
pub mod views;

pub use customer::{
    CustomerState, EventDraft, Product, ProductKind, Profile, Rejection, Transaction,
};
