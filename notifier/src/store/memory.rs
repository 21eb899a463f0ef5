use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use kernel::CustomerId;

use super::{NotifStoreError, NotifierStore, SendState};
use crate::model::{Channel, DeliveryOutcome, Device, Preferences};

/// An in-memory [`NotifierStore`] for tests.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    prefs: HashMap<CustomerId, Preferences>,
    devices: Vec<(CustomerId, Device)>,
    sends: HashMap<(String, Channel), SendState>,
    outcomes: Vec<DeliveryOutcome>,
    codes: HashMap<(CustomerId, i64), u32>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl NotifierStore for MemoryStore {
    async fn preferences(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<Preferences>, NotifStoreError> {
        Ok(self.lock().prefs.get(customer).cloned())
    }
    async fn put_preferences(
        &self,
        customer: &CustomerId,
        prefs: &Preferences,
    ) -> Result<(), NotifStoreError> {
        self.lock().prefs.insert(customer.clone(), prefs.clone());
        Ok(())
    }
    async fn devices(&self, customer: &CustomerId) -> Result<Vec<Device>, NotifStoreError> {
        Ok(self
            .lock()
            .devices
            .iter()
            .filter(|(c, _)| c == customer)
            .map(|(_, d)| d.clone())
            .collect())
    }
    async fn upsert_device(
        &self,
        customer: &CustomerId,
        device: &Device,
    ) -> Result<(), NotifStoreError> {
        let mut inner = self.lock();
        inner.devices.retain(|(_, d)| d.token != device.token);
        inner.devices.push((customer.clone(), device.clone()));
        Ok(())
    }
    async fn remove_device(
        &self,
        customer: &CustomerId,
        token: &str,
    ) -> Result<bool, NotifStoreError> {
        let mut inner = self.lock();
        let before = inner.devices.len();
        inner
            .devices
            .retain(|(c, d)| !(c == customer && d.token == token));
        Ok(inner.devices.len() != before)
    }
    async fn send_state(
        &self,
        request_id: &str,
        channel: Channel,
    ) -> Result<Option<SendState>, NotifStoreError> {
        Ok(self
            .lock()
            .sends
            .get(&(request_id.to_owned(), channel))
            .copied())
    }
    async fn record_send(
        &self,
        request_id: &str,
        channel: Channel,
        state: SendState,
    ) -> Result<(), NotifStoreError> {
        self.lock()
            .sends
            .entry((request_id.to_owned(), channel))
            .or_insert(state);
        Ok(())
    }
    async fn record_outcome(&self, outcome: &DeliveryOutcome) -> Result<(), NotifStoreError> {
        self.lock().outcomes.push(outcome.clone());
        Ok(())
    }
    async fn outcomes(&self, request_id: &str) -> Result<Vec<DeliveryOutcome>, NotifStoreError> {
        Ok(self
            .lock()
            .outcomes
            .iter()
            .filter(|o| o.request_id == request_id)
            .cloned()
            .collect())
    }
    async fn count_code(
        &self,
        customer: &CustomerId,
        window_start: i64,
    ) -> Result<u32, NotifStoreError> {
        let mut inner = self.lock();
        let count = inner
            .codes
            .entry((customer.clone(), window_start))
            .or_insert(0);
        *count += 1;
        Ok(*count)
    }
}
