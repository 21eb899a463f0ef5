//! Notifier storage: preferences, devices, per-channel send records (dedupe), delivery
//! outcomes, SMS-code caps, and the embedded work queue. Tables are prefixed `notif_`.
//!
//! - [`MemoryStore`]: for unit tests.
//! - [`SqlStore`]: SQLite (embedded) or PostgreSQL (cluster) through sqlx, with its own
//!   idempotent migrations.

mod memory;
mod sql;

use async_trait::async_trait;
use kernel::CustomerId;

use crate::model::{Channel, DeliveryOutcome, Device, Preferences};
pub use memory::MemoryStore;
pub use sql::SqlStore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifStoreError {
    #[error("notifier store unavailable: {0}")]
    Unavailable(String),
    #[error("notifier store data is corrupt: {0}")]
    Corrupt(String),
}

impl NotifStoreError {
    pub fn code(&self) -> &'static str {
        match self {
            NotifStoreError::Unavailable(_) => "store_unavailable",
            NotifStoreError::Corrupt(_) => "store_corrupt",
        }
    }
}

/// Where a request stands on one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendState {
    /// A provider accepted it: never send again on this channel.
    Sent,
    /// Refused for good on this channel: do not retry it.
    Failed,
}

impl SendState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SendState::Sent => "sent",
            SendState::Failed => "failed",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sent" => Some(SendState::Sent),
            "failed" => Some(SendState::Failed),
            _ => None,
        }
    }
}

#[async_trait]
pub trait NotifierStore: Send + Sync + 'static {
    async fn preferences(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<Preferences>, NotifStoreError>;
    async fn put_preferences(
        &self,
        customer: &CustomerId,
        prefs: &Preferences,
    ) -> Result<(), NotifStoreError>;
    async fn devices(&self, customer: &CustomerId) -> Result<Vec<Device>, NotifStoreError>;
    /// Registers a device token for the customer (a token moves to its newest owner).
    async fn upsert_device(
        &self,
        customer: &CustomerId,
        device: &Device,
    ) -> Result<(), NotifStoreError>;
    /// Returns whether the token was registered for the customer.
    async fn remove_device(
        &self,
        customer: &CustomerId,
        token: &str,
    ) -> Result<bool, NotifStoreError>;
    async fn send_state(
        &self,
        request_id: &str,
        channel: Channel,
    ) -> Result<Option<SendState>, NotifStoreError>;
    /// Records a final per-channel state; the first record wins.
    async fn record_send(
        &self,
        request_id: &str,
        channel: Channel,
        state: SendState,
    ) -> Result<(), NotifStoreError>;
    async fn record_outcome(&self, outcome: &DeliveryOutcome) -> Result<(), NotifStoreError>;
    async fn outcomes(&self, request_id: &str) -> Result<Vec<DeliveryOutcome>, NotifStoreError>;
    /// Counts one SMS code for the customer in the window starting at `window_start` (unix
    /// seconds) and returns the count including this one.
    async fn count_code(
        &self,
        customer: &CustomerId,
        window_start: i64,
    ) -> Result<u32, NotifStoreError>;
}
