//! Feed events: the customer's journal, feed and live push share this one record.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One customer-visible event. `seq` is per customer, gapless and increasing from 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub id: String,
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Kind-specific fields, flattened into the event object on the wire.
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl FeedEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
