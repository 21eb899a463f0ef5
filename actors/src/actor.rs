//! The customer actor: hot state in memory, one message at a time, journal before state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use domain::views::{self, TransactionQuery};
use domain::{CustomerState, EventDraft};
use kernel::bus::subjects;
use kernel::metrics;
use kernel::store::{Commit, OutboxMessage, Snapshot, StoreError};
use kernel::{Change, FeedEvent};
use serde_json::{Value, json};

use crate::Deps;
use crate::protocol::{ApplyReport, CallError, CustomerRequest};

/// One request to the actor; answered once the journal has it (for writes).
pub(crate) struct Ask(pub CustomerRequest);

impl Message for Ask {
    type Result = Result<Value, CallError>;
}

pub(crate) struct CustomerActor {
    state: CustomerState,
    /// Version of the newest snapshot in the store.
    snapshot_version: u64,
    last_activity: Instant,
    deps: Arc<Deps>,
}

impl CustomerActor {
    pub(crate) fn new(state: CustomerState, snapshot_version: u64, deps: Arc<Deps>) -> Self {
        Self {
            state,
            snapshot_version,
            last_activity: Instant::now(),
            deps,
        }
    }

    fn snapshot_if_due(&mut self) -> Option<Snapshot> {
        let due = self.state.version.saturating_sub(self.snapshot_version)
            >= self.deps.config.snapshot_every;
        due.then(|| self.snapshot())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.state.version,
            state: serde_json::to_value(&self.state).unwrap_or(Value::Null),
        }
    }

    fn read(&self, request: &CustomerRequest) -> Result<Value, CallError> {
        let state = &self.state;
        match request {
            CustomerRequest::Me => Ok(json!({
                "customer_id": state.customer_id,
                "name": state.name,
                "phone": state.phone,
                "language": state.language,
            })),
            CustomerRequest::Products => Ok(views::products(state)),
            CustomerRequest::Transactions {
                account_id,
                from,
                to,
                before_seq,
                limit,
            } => {
                let query = TransactionQuery {
                    from: *from,
                    to: *to,
                    before_seq: *before_seq,
                    limit: *limit as usize,
                };
                let page = views::transactions(state, account_id, &query)
                    .ok_or_else(CallError::not_found)?;
                Ok(json!({
                    "items": page.items.iter().map(|t| t.to_json()).collect::<Vec<_>>(),
                    "next_cursor": page.next_cursor.map(|c| c.to_string()),
                }))
            }
            CustomerRequest::FeedHead => {
                Ok(json!({"head": state.version, "unread": state.unread()}))
            }
            CustomerRequest::MarkRead { .. } | CustomerRequest::Apply { .. } => {
                Err(CallError::new("internal", "not a read"))
            }
        }
    }

    /// Decides a batch without I/O: per change, the drafts or the rejection.
    fn decide_batch(&self, changes: &[Change]) -> Vec<Decision> {
        let mut seen = std::collections::HashSet::new();
        changes
            .iter()
            .filter(|change| seen.insert(change.id.clone()))
            .map(|change| {
                let decision = self
                    .state
                    .decide(change)
                    .map_err(|r| (r.code().to_owned(), r.to_string()));
                (change.id.clone(), decision)
            })
            .collect()
    }
}

impl Actor for CustomerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.deps.config.mailbox_capacity);
        metrics::ACTORS_RESIDENT.inc();
        let check_every = (self.deps.config.idle_timeout / 4).max(Duration::from_millis(50));
        ctx.run_interval(check_every, |actor, ctx| {
            if actor.last_activity.elapsed() >= actor.deps.config.idle_timeout {
                actor.passivate(ctx);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::ACTORS_RESIDENT.dec();
    }
}

impl CustomerActor {
    /// Leaves memory: off the registry first (new requests activate a fresh actor from the
    /// store), then a final snapshot so the next activation replays little.
    fn passivate(&mut self, ctx: &mut Context<Self>) {
        self.deps
            .registry
            .remove_if_same(&self.state.customer_id, &ctx.address());
        metrics::PASSIVATIONS.inc();
        if self.state.version > self.snapshot_version {
            let commit = Commit {
                customer_id: self.state.customer_id.clone(),
                expected_version: self.state.version,
                events: vec![],
                change_ids: vec![],
                snapshot: Some(self.snapshot()),
                outbox: vec![],
            };
            let store = self.deps.store.clone();
            // A conflict here only means a newer owner wrote meanwhile: its journal wins.
            actix::spawn(async move {
                let _ = store.commit(commit).await;
            });
        }
        ctx.stop();
    }
}

impl Handler<Ask> for CustomerActor {
    type Result = AtomicResponse<Self, Result<Value, CallError>>;

    fn handle(&mut self, Ask(request): Ask, _ctx: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        match request {
            CustomerRequest::Apply { changes } => self.apply(changes),
            CustomerRequest::MarkRead { up_to_seq } => {
                let store = self.deps.store.clone();
                let id = self.state.customer_id.clone();
                AtomicResponse::new(Box::pin(
                    async move { store.mark_read(&id, up_to_seq).await }
                        .into_actor(self)
                        .map(|result, actor, _| match result {
                            Ok(mark) => {
                                actor.state.mark_read(mark);
                                Ok(json!({"read_seq": actor.state.read_seq, "unread": actor.state.unread()}))
                            }
                            Err(e) => Err(store_error(e)),
                        }),
                ))
            }
            read => {
                let answer = self.read(&read);
                AtomicResponse::new(Box::pin(fut::ready(answer)))
            }
        }
    }
}

/// A change id and what the rules decided: drafts, or (code, detail) of the refusal.
type Decision = (String, Result<Vec<EventDraft>, (String, String)>);

/// What the async part of an apply hands back to the actor.
struct Committed {
    events: Vec<FeedEvent>,
    outbox_ids: Vec<i64>,
    outbox: Vec<OutboxMessage>,
    report: ApplyReport,
    snapshot_version: Option<u64>,
}

impl CustomerActor {
    fn apply(&mut self, changes: Vec<Change>) -> AtomicResponse<Self, Result<Value, CallError>> {
        let decisions = self.decide_batch(&changes);
        let expected_version = self.state.version;
        let snapshot = self.snapshot_if_due();
        let customer_id = self.state.customer_id.clone();
        let contact = Contact {
            phone: self.state.phone.clone(),
            language: self.state.language.clone(),
        };
        let store = self.deps.store.clone();
        let work = async move {
            let mut skip: Vec<String> = vec![];
            // Usually one round trip: the store refuses the whole commit if any change id
            // was consumed before (a redelivery), and only then do we ask which ones.
            for attempt in 0..2 {
                let (commit, mut report) = build_commit(
                    &customer_id,
                    &contact,
                    expected_version,
                    &decisions,
                    &skip,
                    snapshot.clone(),
                );
                let outbox = commit.outbox.clone();
                let events = commit.events.clone();
                let snapshot_version = commit.snapshot.as_ref().map(|s| s.version);
                if commit.change_ids.is_empty() {
                    report.version = expected_version;
                    return Ok(Committed {
                        events,
                        outbox_ids: vec![],
                        outbox,
                        report,
                        snapshot_version: None,
                    });
                }
                match store.commit(commit).await {
                    Ok(outbox_ids) => {
                        report.version = expected_version + events.len() as u64;
                        return Ok(Committed {
                            events,
                            outbox_ids,
                            outbox,
                            report,
                            snapshot_version,
                        });
                    }
                    Err(StoreError::Duplicate) if attempt == 0 => {
                        let ids: Vec<String> = decisions.iter().map(|(id, _)| id.clone()).collect();
                        skip = store
                            .applied_changes(&customer_id, &ids)
                            .await
                            .map_err(store_error)?;
                    }
                    Err(e) => return Err(store_error(e)),
                }
            }
            Err(CallError::unavailable("changes could not be deduplicated"))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, actor, ctx| {
            let committed = match result {
                Ok(committed) => committed,
                Err(error) => {
                    if error.code == "version_conflict" {
                        // Another node wrote this journal: our state is stale. Stop, so the
                        // next request activates a fresh actor from the store.
                        actor
                            .deps
                            .registry
                            .remove_if_same(&actor.state.customer_id, &ctx.address());
                        ctx.stop();
                    }
                    return Err(error);
                }
            };
            for event in &committed.events {
                actor.state.apply(event);
            }
            if let Some(version) = committed.snapshot_version {
                actor.snapshot_version = version;
            }
            metrics::CHANGES_APPLIED.add(committed.report.applied.len() as u64);
            metrics::CHANGES_DUPLICATE.add(committed.report.duplicates.len() as u64);
            metrics::CHANGES_REJECTED.add(committed.report.rejected.len() as u64);
            metrics::EVENTS_COMMITTED.add(committed.events.len() as u64);
            actor
                .deps
                .relay
                .publish(committed.outbox_ids, committed.outbox);
            Ok(serde_json::to_value(&committed.report).unwrap_or(Value::Null))
        })))
    }
}

/// How the bank reaches the customer, for notifications.
struct Contact {
    phone: String,
    language: String,
}

/// Numbers the surviving drafts from `expected_version + 1` and builds the atomic commit.
fn build_commit(
    customer_id: &kernel::CustomerId,
    contact: &Contact,
    expected_version: u64,
    decisions: &[Decision],
    skip: &[String],
    snapshot: Option<Snapshot>,
) -> (Commit, ApplyReport) {
    let mut report = ApplyReport::default();
    let mut events = vec![];
    let mut notices = vec![];
    let mut change_ids = vec![];
    for (change_id, decision) in decisions {
        if skip.contains(change_id) {
            report.duplicates.push(change_id.clone());
            continue;
        }
        change_ids.push(change_id.clone());
        match decision {
            Ok(drafts) => {
                for draft in drafts {
                    let seq = expected_version + events.len() as u64 + 1;
                    if let Some(notice) = &draft.notify {
                        notices.push((seq, notice.clone()));
                    }
                    events.push(draft.clone().into_event(seq));
                }
                report.applied.push(change_id.clone());
            }
            Err((code, detail)) => {
                report
                    .rejected
                    .push((change_id.clone(), code.clone(), detail.clone()))
            }
        }
    }
    let subject = subjects::push(customer_id);
    let mut outbox: Vec<OutboxMessage> = events
        .iter()
        .map(|event| OutboxMessage {
            subject: subject.clone(),
            payload: event.to_json(),
        })
        .collect();
    outbox.extend(notices.into_iter().filter_map(|(seq, notice)| {
        let kind = notifier::Kind::parse(notice.kind)?;
        // Stable across redeliveries: the commit fixes the seq, so the id is the same.
        let id = format!("{customer_id}-{seq}");
        let mut request = notifier::NotificationRequest::new(
            id,
            customer_id.clone(),
            kind,
            serde_json::Value::Object(notice.params),
        );
        // The bank's contact data, so that a customer without saved preferences is still
        // reachable (SMS fallback) in their language.
        request.phone = Some(contact.phone.clone());
        request.language = notifier::Language::parse(&contact.language);
        Some(request.outbox_message())
    }));
    let commit = Commit {
        customer_id: customer_id.clone(),
        expected_version,
        events,
        change_ids,
        snapshot,
        outbox,
    };
    (commit, report)
}

pub(crate) fn store_error(error: StoreError) -> CallError {
    match error {
        StoreError::VersionConflict => CallError::new("version_conflict", "journal moved on"),
        StoreError::NotFound => CallError::not_found(),
        StoreError::Unavailable(_) => CallError::unavailable("store unavailable"),
        other => CallError::new("internal", other.to_string()),
    }
}

/// Asks the actor to leave memory now (its partition moved to another node).
pub(crate) struct Stop;

impl Message for Stop {
    type Result = ();
}

impl Handler<Stop> for CustomerActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
