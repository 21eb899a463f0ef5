//! Which customer actors are resident, and their activation.

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use dashmap::DashMap;
use domain::{CustomerState, Profile};
use kernel::bus::subjects;
use kernel::metrics;
use kernel::store::Commit;
use kernel::{CustomerId, partition_of};

use crate::Deps;
use crate::actor::{CustomerActor, store_error};
use crate::protocol::{CallError, Reply};

/// Journal events replayed per store round trip at activation.
const REPLAY_PAGE: u32 = 1000;

#[derive(Default)]
pub(crate) struct Registry {
    actors: DashMap<CustomerId, Addr<CustomerActor>>,
    /// One lock per customer being activated, so concurrent first requests build one actor.
    activating: DashMap<CustomerId, Arc<tokio::sync::Mutex<()>>>,
}

impl Registry {
    pub(crate) fn get(&self, id: &CustomerId) -> Option<Addr<CustomerActor>> {
        self.actors
            .get(id)
            .map(|a| a.clone())
            .filter(|addr| addr.connected())
    }

    pub(crate) fn remove_if_same(&self, id: &CustomerId, addr: &Addr<CustomerActor>) {
        self.actors.remove_if(id, |_, current| current == addr);
    }

    /// Removes and returns the actors of one partition (the node lost it).
    pub(crate) fn drain_partition(
        &self,
        partition: u32,
        partitions: u32,
    ) -> Vec<Addr<CustomerActor>> {
        let ids: Vec<CustomerId> = self
            .actors
            .iter()
            .filter(|entry| partition_of(entry.key().as_str(), partitions) == partition)
            .map(|entry| entry.key().clone())
            .collect();
        ids.iter()
            .filter_map(|id| self.actors.remove(id).map(|(_, addr)| addr))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.actors.len()
    }

    /// The resident actor, activating it from the store (and the ABS on first sight) if needed.
    pub(crate) async fn get_or_activate(
        &self,
        id: &CustomerId,
        deps: &Arc<Deps>,
        arbiters: &[ArbiterHandle],
    ) -> Result<Addr<CustomerActor>, CallError> {
        if let Some(addr) = self.get(id) {
            return Ok(addr);
        }
        let lock = self.activating.entry(id.clone()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(addr) = self.get(id) {
            return Ok(addr);
        }
        let result = activate(id, deps).await;
        let outcome = result.map(|(state, snapshot_version)| {
            let arbiter = &arbiters[partition_of(id.as_str(), u32::MAX) as usize % arbiters.len()];
            let actor_deps = deps.clone();
            let addr = CustomerActor::start_in_arbiter(arbiter, move |_| {
                CustomerActor::new(state, snapshot_version, actor_deps)
            });
            self.actors.insert(id.clone(), addr.clone());
            metrics::ACTIVATIONS.inc();
            addr
        });
        self.activating.remove(id);
        outcome
    }
}

/// Rebuilds a customer's state: snapshot, then the journal after it.
async fn activate(id: &CustomerId, deps: &Deps) -> Result<(CustomerState, u64), CallError> {
    let record = deps.store.load_customer(id).await.map_err(store_error)?;
    let (mut state, snapshot_version, read_seq, version) = match record {
        Some(record) => match record.snapshot {
            Some(snapshot) => {
                let state: CustomerState = serde_json::from_value(snapshot.state)
                    .map_err(|e| CallError::new("internal", format!("corrupt snapshot: {e}")))?;
                (state, snapshot.version, record.read_seq, record.version)
            }
            None => {
                let state = CustomerState::new(fetch_profile(id, deps).await?);
                (state, 0, record.read_seq, record.version)
            }
        },
        None => {
            // First sight: ask the ABS once, and keep its answer as the version-0 snapshot so
            // later activations never ask again.
            let state = CustomerState::new(fetch_profile(id, deps).await?);
            let snapshot = kernel::store::Snapshot {
                version: 0,
                state: serde_json::to_value(&state).unwrap_or_default(),
            };
            let commit = Commit {
                customer_id: id.clone(),
                expected_version: 0,
                events: vec![],
                change_ids: vec![],
                snapshot: Some(snapshot),
                outbox: vec![],
                schedules: vec![],
            };
            match deps.store.commit(commit).await {
                Ok(_) | Err(kernel::store::StoreError::VersionConflict) => {}
                Err(e) => return Err(store_error(e)),
            }
            (state, 0, 0, 0)
        }
    };
    // Replay to the end of the journal (which may be past `version` if a writer was quick).
    let _ = version;
    loop {
        let events = deps
            .store
            .journal_after(id, state.version, REPLAY_PAGE)
            .await
            .map_err(store_error)?;
        if events.is_empty() {
            break;
        }
        for event in &events {
            state.apply(event);
        }
    }
    state.read_seq = read_seq.min(state.version);
    Ok((state, snapshot_version))
}

async fn fetch_profile(id: &CustomerId, deps: &Deps) -> Result<Profile, CallError> {
    let payload = serde_json::to_vec(&serde_json::json!({"customer_id": id})).unwrap_or_default();
    let answer = deps
        .bus
        .request(
            &subjects::abs_command("customer.get"),
            payload.into(),
            deps.config.request_timeout,
        )
        .await
        .map_err(|e| CallError::unavailable(format!("ABS: {e}")))?;
    match serde_json::from_slice::<Reply>(&answer) {
        Ok(Reply::Ok(value)) => serde_json::from_value(value)
            .map_err(|e| CallError::new("internal", format!("ABS profile: {e}"))),
        Ok(Reply::Err(error)) if error.code == "not_found" => Err(CallError::new(
            "unknown_customer",
            "the bank does not know this customer",
        )),
        Ok(Reply::Err(error)) => Err(error),
        Err(e) => Err(CallError::new("internal", format!("ABS answer: {e}"))),
    }
}
