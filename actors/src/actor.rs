//! The customer actor: hot state in memory, one message at a time, journal before state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use domain::views::{self, TransactionQuery};
use domain::{CustomerState, EventDraft};
use kernel::bus::subjects;
use kernel::metrics;
use kernel::store::{Commit, OutboxMessage, ScheduleWrite, Snapshot, StoreError};
use kernel::{Change, FeedEvent};
use serde_json::{Value, json};

use crate::Deps;
use crate::protocol::{ApplyReport, CallError, CustomerRequest};

/// The actor-side future of a write.
type Work = ResponseActFuture<CustomerActor, Result<Value, CallError>>;

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
            CustomerRequest::Payment { id } => state
                .payments
                .get(id)
                .map(|p| p.answer())
                .ok_or_else(CallError::not_found),
            CustomerRequest::Held { challenge_id } => state
                .held
                .get(challenge_id)
                .map(|order| {
                    json!({
                        "payment_id": order.payment_id,
                        "operation": order.operation,
                        "amount": order.amount,
                        "payee": domain::payments::payee_key(&order.to),
                    })
                })
                .ok_or_else(CallError::not_found),
            CustomerRequest::Templates => Ok(json!({
                "items": state.templates.values().map(|t| t.answer()).collect::<Vec<_>>(),
                "next_cursor": null,
            })),
            CustomerRequest::Template { id } => state
                .templates
                .get(id)
                .map(|t| json!(t))
                .ok_or_else(CallError::not_found),
            CustomerRequest::Autopayments => Ok(json!({
                "items": state.autopayments.values().map(|a| a.answer()).collect::<Vec<_>>(),
                "next_cursor": null,
            })),
            CustomerRequest::MarkRead { .. }
            | CustomerRequest::SaveAutopayment { .. }
            | CustomerRequest::DeleteAutopayment { .. }
            | CustomerRequest::RunScheduled { .. }
            | CustomerRequest::SaveTemplate { .. }
            | CustomerRequest::DeleteTemplate { .. }
            | CustomerRequest::Apply { .. }
            | CustomerRequest::Hold { .. }
            | CustomerRequest::Confirm { .. }
            | CustomerRequest::Pay { .. } => Err(CallError::new("internal", "not a read")),
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
                schedules: vec![],
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
            CustomerRequest::Pay { order } => AtomicResponse::new(self.pay(order)),
            CustomerRequest::Hold {
                order,
                challenge_id,
            } => AtomicResponse::new(self.hold(order, challenge_id)),
            CustomerRequest::SaveTemplate { template } => {
                use domain::templates::TemplateCheck;
                match self.state.check_template(&template) {
                    Err(rejection) => AtomicResponse::new(Box::pin(fut::ready(Err(
                        CallError::new(rejection.code(), rejection.to_string()),
                    )))),
                    Ok(TemplateCheck::Replay(answer)) => {
                        AtomicResponse::new(Box::pin(fut::ready(Ok(answer))))
                    }
                    Ok(TemplateCheck::Save) => {
                        let draft = CustomerState::template_saved(&template, kernel::now());
                        let id = template.id;
                        AtomicResponse::new(self.commit_draft(draft, move |state| {
                            state.templates.get(&id).map(|t| t.answer()).ok_or_else(|| {
                                CallError::new(
                                    "idempotency_conflict",
                                    "this Idempotency-Key created a template that was deleted",
                                )
                            })
                        }))
                    }
                }
            }
            CustomerRequest::SaveAutopayment { autopayment } => {
                match self.state.check_autopayment(&autopayment) {
                    Err(rejection) => AtomicResponse::new(Box::pin(fut::ready(Err(
                        CallError::new(rejection.code(), rejection.to_string()),
                    )))),
                    Ok(Some(answer)) => AtomicResponse::new(Box::pin(fut::ready(Ok(answer)))),
                    Ok(None) => {
                        let draft = CustomerState::autopayment_saved(&autopayment, kernel::now());
                        let id = autopayment.id;
                        AtomicResponse::new(self.commit_draft(draft, move |state| {
                            state
                                .autopayments
                                .get(&id)
                                .map(|a| a.answer())
                                .ok_or_else(|| {
                                    CallError::new(
                                        "idempotency_conflict",
                                        "this Idempotency-Key created an autopayment that was deleted",
                                    )
                                })
                        }))
                    }
                }
            }
            CustomerRequest::DeleteAutopayment { id } => {
                if self.state.autopayments.contains_key(&id) {
                    let draft = CustomerState::autopayment_deleted(&id, kernel::now());
                    AtomicResponse::new(self.commit_draft(draft, |_| Ok(Value::Null)))
                } else {
                    AtomicResponse::new(Box::pin(fut::ready(Err(CallError::not_found()))))
                }
            }
            CustomerRequest::RunScheduled {
                autopayment_id,
                due_at_ms,
            } => AtomicResponse::new(self.run_scheduled(&autopayment_id, due_at_ms)),
            CustomerRequest::DeleteTemplate { id } => {
                if self.state.templates.contains_key(&id) {
                    let draft = CustomerState::template_deleted(&id, kernel::now());
                    AtomicResponse::new(self.commit_draft(draft, |_| Ok(Value::Null)))
                } else {
                    AtomicResponse::new(Box::pin(fut::ready(Err(CallError::not_found()))))
                }
            }
            CustomerRequest::Confirm { challenge_id } => match self.state.held.get(&challenge_id) {
                Some(order) => {
                    let mut order = order.clone();
                    order.confirmed = true;
                    AtomicResponse::new(self.pay(order))
                }
                None => AtomicResponse::new(Box::pin(fut::ready(Err(CallError::not_found())))),
            },
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

/// One run of a balance-triggered autopayment, sent by the actor to itself.
struct RunAutopay(domain::payments::PaymentOrder);

impl Message for RunAutopay {
    type Result = ();
}

impl Handler<RunAutopay> for CustomerActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, RunAutopay(order): RunAutopay, _ctx: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        if self.state.payments.contains_key(&order.payment_id) {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        AtomicResponse::new(Box::pin(self.run_autopay(order).map(|_, _, _| ())))
    }
}

impl CustomerActor {
    /// Pays one autopayment run (idempotent by its id, the autopayment id plus the period);
    /// a refusal is journaled as a `payment_status` `rejected` event with a notification, so
    /// the run is not retried in this period and the customer learns of it. Only a transient
    /// failure (the store or the bus) is an error: the run is tried again later.
    fn run_autopay(&mut self, order: domain::payments::PaymentOrder) -> Work {
        let failed = order.clone();
        let work = self.pay(order).then(move |result, actor: &mut CustomerActor, _ctx| {
            match result {
                Err(error) if !error.is_transient() => {
                    tracing::info!(payment = %failed.payment_id, code = %error.code, "autopayment refused");
                    let draft =
                        CustomerState::autopayment_failed(&failed, &error.code, kernel::now());
                    actor.commit_draft(draft, |_| Ok(Value::Null))
                }
                Err(error) => {
                    tracing::warn!(payment = %failed.payment_id, %error, "autopayment not run");
                    Box::pin(fut::ready(Err(error)))
                }
                Ok(answer) => Box::pin(fut::ready(Ok(answer))),
            }
        });
        Box::pin(work)
    }

    /// A due run of a monthly/weekly autopayment (asked by the node's scheduler): decided by
    /// the pure `scheduled_run`, paid through the same path as balance triggers, answered
    /// with where the schedule index moves next.
    fn run_scheduled(&mut self, autopayment_id: &str, due_at_ms: i64) -> Work {
        use domain::scheduled::ScheduledRun;
        let due_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(due_at_ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        match self
            .state
            .scheduled_run(autopayment_id, due_at, kernel::now())
        {
            ScheduledRun::Gone => Box::pin(fut::ready(Ok(json!({"next_run_ms": null})))),
            ScheduledRun::AlreadyRun { next_run_ms } => {
                Box::pin(fut::ready(Ok(json!({"next_run_ms": next_run_ms}))))
            }
            ScheduledRun::Run { order, next_run_ms } => {
                Box::pin(self.run_autopay(*order).map(move |result, _, _| {
                    // `pending`: the ABS did not answer. The index stays due, so the next
                    // tick asks again (the ABS applies the run's id at most once).
                    if result.as_ref().is_ok_and(|a| a["status"] == "pending") {
                        return Err(CallError::unavailable("the ABS did not answer"));
                    }
                    result.map(|_| json!({"next_run_ms": next_run_ms}))
                }))
            }
        }
    }
}

impl CustomerActor {
    /// After a batch of changes: the balance-triggered autopayments now due, each sent to
    /// this actor as its own message (handled after the current one, one at a time).
    fn run_triggered(&mut self, ctx: &mut Context<Self>) {
        for order in self.state.triggered(kernel::now()) {
            if ctx.address().try_send(RunAutopay(order)).is_err() {
                tracing::warn!("mailbox full: autopayment deferred to the next change");
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
        let work = commit_decisions(
            store,
            customer_id,
            contact,
            self.deps.config.partitions,
            expected_version,
            decisions,
            snapshot,
        );
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, actor, ctx| {
            let committed = actor.fold_committed(result, ctx)?;
            actor.run_triggered(ctx);
            Ok(serde_json::to_value(&committed.report).unwrap_or(Value::Null))
        })))
    }

    /// After a commit: folds the events into the state and hands the outbox to the relay;
    /// on a version conflict (another node wrote this journal) stops the stale actor.
    fn fold_committed(
        &mut self,
        result: Result<Committed, CallError>,
        ctx: &mut Context<Self>,
    ) -> Result<Committed, CallError> {
        let committed = match result {
            Ok(committed) => committed,
            Err(error) => {
                if error.code == "version_conflict" {
                    // Our state is stale. Stop, so the next request activates a fresh
                    // actor from the store.
                    self.deps
                        .registry
                        .remove_if_same(&self.state.customer_id, &ctx.address());
                    ctx.stop();
                }
                return Err(error);
            }
        };
        for event in &committed.events {
            self.state.apply(event);
        }
        if let Some(version) = committed.snapshot_version {
            self.snapshot_version = version;
        }
        metrics::CHANGES_APPLIED.add(committed.report.applied.len() as u64);
        metrics::CHANGES_DUPLICATE.add(committed.report.duplicates.len() as u64);
        metrics::CHANGES_REJECTED.add(committed.report.rejected.len() as u64);
        metrics::EVENTS_COMMITTED.add(committed.events.len() as u64);
        self.deps
            .relay
            .publish(committed.outbox_ids.clone(), committed.outbox.clone());
        Ok(committed)
    }

    /// A payment: pure checks, then the ABS command (request/reply on the bus, honouring the
    /// payment id as its idempotency key), then one commit with the `payment_status` event
    /// and this customer's own transaction and balance changes (their ids recorded, so the
    /// copies arriving through the change sink later are dropped as duplicates).
    /// The actor handles nothing else meanwhile: concurrent payments of a customer are
    /// serialised, so a double spend finds the first one's balance.
    fn pay(&mut self, order: domain::payments::PaymentOrder) -> Work {
        use domain::payments::PaymentCheck;
        use kernel::payment::{CommandReply, PaymentCommand, PaymentReceipt};

        match self.state.check_payment(&order, kernel::now()) {
            Err(rejection) => {
                return Box::pin(fut::ready(Err(CallError::new(
                    rejection.code(),
                    rejection.to_string(),
                ))));
            }
            Ok(PaymentCheck::Replay(answer)) => {
                return Box::pin(fut::ready(Ok(answer)));
            }
            // The gateway opens a step-up challenge and comes back with `Hold`.
            Ok(PaymentCheck::ConfirmationRequired) => {
                return Box::pin(fut::ready(Ok(json!({"status": "confirmation_required"}))));
            }
            Ok(PaymentCheck::Proceed) => {}
        }
        let command = PaymentCommand {
            id: order.payment_id.clone(),
            customer_id: self.state.customer_id.clone(),
            from: order.from.clone(),
            to: order.to.clone(),
            amount: order.amount,
            fee: (order.fee.minor > 0).then_some(order.fee),
            description: order.description.clone(),
            quote: order.quote.clone(),
        };
        let bus = self.deps.bus.clone();
        let timeout = self.deps.config.request_timeout;
        let ask = async move {
            let payload = bytes::Bytes::from(serde_json::to_vec(&command).unwrap_or_default());
            match bus
                .request(&subjects::abs_command("payment"), payload, timeout)
                .await
            {
                Ok(bytes) => match serde_json::from_slice::<CommandReply<PaymentReceipt>>(&bytes) {
                    Ok(CommandReply::Ok(receipt)) => Ok(receipt),
                    Ok(CommandReply::Err(error)) => Err(error),
                    Err(e) => Err(kernel::payment::CommandError::new(
                        "unavailable",
                        e.to_string(),
                    )),
                },
                Err(e) => Err(kernel::payment::CommandError::new(
                    "unavailable",
                    e.to_string(),
                )),
            }
        };
        let work = ask.into_actor(self).then(move |answer, actor, _ctx| {
            let now = kernel::now();
            let mut decisions: Vec<Decision> = vec![];
            let status = match &answer {
                Ok(receipt) => {
                    for change in receipt
                        .changes
                        .iter()
                        .filter(|c| c.customer_id == actor.state.customer_id)
                    {
                        let decision = actor
                            .state
                            .decide(change)
                            .map_err(|r| (r.code().to_owned(), r.to_string()));
                        decisions.push((change.id.clone(), decision));
                    }
                    "completed"
                }
                // The ABS refused: nothing moved, nothing is recorded.
                Err(error) if error.code != "unavailable" => {
                    let error = CallError::new(&error.code, error.detail.clone());
                    return fut::ready(Err(error)).boxed_local();
                }
                // No answer: the outcome is unknown. Record `pending`; a retry with the same
                // key asks the ABS again, which applies the id at most once.
                Err(_) => "pending",
            };
            let already_pending = actor
                .state
                .payments
                .get(&order.payment_id)
                .is_some_and(|p| p.status == status);
            if already_pending {
                let answer = actor.state.payments[&order.payment_id].answer();
                return fut::ready(Ok(answer)).boxed_local();
            }
            let (credited, rate, payee) = match &answer {
                Ok(receipt) => (
                    receipt.credited,
                    receipt
                        .rate_e6
                        .map(|r| format!("{}.{:06}", r / 1_000_000, r % 1_000_000)),
                    receipt.payee.clone(),
                ),
                Err(_) => (None, None, None),
            };
            let draft = CustomerState::payment_event(&order, status, now, credited, rate, payee);
            decisions.push((draft.id.clone(), Ok(vec![draft])));
            let contact = Contact {
                phone: actor.state.phone.clone(),
                language: actor.state.language.clone(),
            };
            let work = commit_decisions(
                actor.deps.store.clone(),
                actor.state.customer_id.clone(),
                contact,
                actor.deps.config.partitions,
                actor.state.version,
                decisions,
                actor.snapshot_if_due(),
            );
            let payment_id = order.payment_id.clone();
            work.into_actor(actor)
                .map(move |result, actor: &mut CustomerActor, ctx| {
                    actor.fold_committed(result, ctx)?;
                    actor
                        .state
                        .payments
                        .get(&payment_id)
                        .map(|p| p.answer())
                        .ok_or_else(|| CallError::new("internal", "payment not recorded"))
                })
                .boxed_local()
        });
        Box::pin(work)
    }
}

impl CustomerActor {
    /// Journals a payment waiting for its step-up challenge. A concurrent duplicate (same
    /// key) finds the first one held and gets its answer (and challenge) back.
    fn hold(&mut self, order: domain::payments::PaymentOrder, challenge_id: String) -> Work {
        use domain::payments::PaymentCheck;
        match self.state.check_payment(&order, kernel::now()) {
            Err(rejection) => {
                return Box::pin(fut::ready(Err(CallError::new(
                    rejection.code(),
                    rejection.to_string(),
                ))));
            }
            Ok(PaymentCheck::Replay(answer)) => {
                return Box::pin(fut::ready(Ok(answer)));
            }
            Ok(PaymentCheck::Proceed | PaymentCheck::ConfirmationRequired) => {}
        }
        let draft = CustomerState::hold_event(&order, &challenge_id, kernel::now());
        let payment_id = order.payment_id;
        self.commit_draft(draft, move |state| {
            state
                .payments
                .get(&payment_id)
                .map(|p| p.answer())
                .ok_or_else(|| CallError::new("internal", "payment not recorded"))
        })
    }

    /// Commits one event of the customer's own (its id recorded like a change id), folds it,
    /// and answers from the state after it.
    fn commit_draft(
        &mut self,
        draft: EventDraft,
        answer: impl FnOnce(&CustomerState) -> Result<Value, CallError> + 'static,
    ) -> Work {
        let decisions: Vec<Decision> = vec![(draft.id.clone(), Ok(vec![draft]))];
        let contact = Contact {
            phone: self.state.phone.clone(),
            language: self.state.language.clone(),
        };
        let work = commit_decisions(
            self.deps.store.clone(),
            self.state.customer_id.clone(),
            contact,
            self.deps.config.partitions,
            self.state.version,
            decisions,
            self.snapshot_if_due(),
        );
        Box::pin(
            work.into_actor(self)
                .map(move |result, actor: &mut CustomerActor, ctx| {
                    actor.fold_committed(result, ctx)?;
                    answer(&actor.state)
                }),
        )
    }
}

/// Commits decided changes (usually one round trip: the store refuses the whole commit if
/// any change id was consumed before, a redelivery, and only then do we ask which ones).
async fn commit_decisions(
    store: Arc<dyn kernel::store::Store>,
    customer_id: kernel::CustomerId,
    contact: Contact,
    partitions: u32,
    expected_version: u64,
    decisions: Vec<Decision>,
    snapshot: Option<Snapshot>,
) -> Result<Committed, CallError> {
    let mut skip: Vec<String> = vec![];
    for attempt in 0..2 {
        let (commit, mut report) = build_commit(
            &customer_id,
            &contact,
            partitions,
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
    partitions: u32,
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
    // The schedule index follows the journal in the same transaction.
    let partition = customer_id.partition(partitions);
    let schedules = events
        .iter()
        .filter_map(domain::scheduled::schedule_change)
        .map(|(autopayment_id, next_run_ms)| ScheduleWrite {
            autopayment_id,
            partition,
            next_run_ms,
        })
        .collect();
    let commit = Commit {
        customer_id: customer_id.clone(),
        expected_version,
        events,
        change_ids,
        snapshot,
        outbox,
        schedules,
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
