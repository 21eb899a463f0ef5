//! Notifier storage: preferences, devices, per-channel send records (dedupe), delivery
//! outcomes, SMS-code caps, and the embedded work queue. Tables are prefixed `notif_`.
//!
//! - [`MemoryStore`]: for unit tests.
//! - [`SqlStore`]: SQLite (embedded) or PostgreSQL (cluster) through sqlx, with its own
//!   idempotent migrations.

mod memory;
mod sql;

use std::collections::HashMap;

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

/// What a worker reads before handling a fetched batch, loaded in a few round trips instead
/// of three per request (see [`NotifierStore::prefetch`]). A customer missing from
/// `preferences` has none saved; one missing from `devices` has none registered.
#[derive(Clone, Debug, Default)]
pub struct Prefetched {
    pub preferences: HashMap<CustomerId, Preferences>,
    pub devices: HashMap<CustomerId, Vec<Device>>,
    /// Final per-channel states already recorded for the batch's request ids.
    pub sends: HashMap<(String, Channel), SendState>,
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
    /// Records a final per-channel state and its outcome together (one write for stores
    /// that batch). Returns once both are durable.
    async fn record_final(
        &self,
        request_id: &str,
        channel: Channel,
        state: SendState,
        outcome: &DeliveryOutcome,
    ) -> Result<(), NotifStoreError> {
        self.record_send(request_id, channel, state).await?;
        self.record_outcome(outcome).await
    }
    /// Preferences and devices of `customers` and the send records of `request_ids`, at once.
    async fn prefetch(
        &self,
        customers: &[CustomerId],
        request_ids: &[String],
    ) -> Result<Prefetched, NotifStoreError> {
        let mut out = Prefetched::default();
        for customer in customers {
            if out.devices.contains_key(customer) {
                continue;
            }
            if let Some(p) = self.preferences(customer).await? {
                out.preferences.insert(customer.clone(), p);
            }
            out.devices
                .insert(customer.clone(), self.devices(customer).await?);
        }
        for id in request_ids {
            for channel in Channel::ALL {
                if let Some(state) = self.send_state(id, channel).await? {
                    out.sends.insert((id.clone(), channel), state);
                }
            }
        }
        Ok(out)
    }
    async fn outcomes(&self, request_id: &str) -> Result<Vec<DeliveryOutcome>, NotifStoreError>;
    /// Counts one SMS code for the customer in the window starting at `window_start` (unix
    /// seconds) and returns the count including this one.
    async fn count_code(
        &self,
        customer: &CustomerId,
        window_start: i64,
    ) -> Result<u32, NotifStoreError>;
}
