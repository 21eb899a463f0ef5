//! The payment client `bench payments` and `bench mixed` share: the payments each scenario
//! sends, the request and the accounting of its answer ([`Tally`]: only `completed` with its
//! frame counts), and the WebSocket side that matches each payment's `payment_status` frame
//! to the request that caused it.
//!
//! A payment's `payment_status` frame can reach the payer's socket before its HTTP answer
//! (the actor pushes the committed event, then answers), so the [`Tracker`] keeps whichever
//! of the two arrives first, keyed by the payment id, and the second completes the pair.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Clock, Customer, Endpoint, Sink, Ws};
use crate::report::{Latency, LatencySummary};

/// What the node answered to one payment (or why there was no answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 201 with this status (`completed`, `pending`, `confirmation_required`, `rejected`).
    Status { payment_id: String, status: String },
    /// A problem+json answer: HTTP status and its stable code.
    Problem { http: u16, code: String },
    /// No HTTP answer (connection, timeout).
    Transport(String),
}

impl Outcome {
    /// Reads an HTTP answer to `POST /v1/payments`.
    pub fn classify(http: u16, body: &Value) -> Self {
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        match (http, text("id"), text("status")) {
            (200 | 201, Some(payment_id), Some(status)) => Outcome::Status { payment_id, status },
            _ => Outcome::Problem {
                http,
                code: text("code").unwrap_or_else(|| "no_code".into()),
            },
        }
    }

    pub fn is_completed(&self) -> bool {
        matches!(self, Outcome::Status { status, .. } if status == "completed")
    }
}

/// The answers of one phase, by kind. A payment that did not complete, or whose frame
/// never came, is counted here and reported; it is never counted as a completed payment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Completed, and the payer's `payment_status` frame arrived.
    pub completed: u64,
    /// Answered `completed`, but no frame within the frame timeout.
    pub completed_without_frame: u64,
    /// Other statuses (`pending`, `confirmation_required`, `rejected`) by status.
    pub other_statuses: BTreeMap<String, u64>,
    /// Problem answers by `<http status> <code>`, transport failures by `transport`.
    pub errors: BTreeMap<String, u64>,
    /// The first transport error's text, for the report.
    pub first_transport_error: Option<String>,
}

impl Tally {
    /// Accounts one payment: its answer and whether its frame arrived.
    pub fn record(&mut self, outcome: &Outcome, frame_arrived: bool) {
        match outcome {
            Outcome::Status { status, .. } if status == "completed" => {
                if frame_arrived {
                    self.completed += 1;
                } else {
                    self.completed_without_frame += 1;
                }
            }
            Outcome::Status { status, .. } => {
                *self.other_statuses.entry(status.clone()).or_default() += 1;
            }
            Outcome::Problem { http, code } => {
                *self.errors.entry(format!("{http} {code}")).or_default() += 1;
            }
            Outcome::Transport(error) => {
                *self.errors.entry("transport".into()).or_default() += 1;
                self.first_transport_error
                    .get_or_insert_with(|| error.clone());
            }
        }
    }

    /// Every payment accounted for.
    pub fn total(&self) -> u64 {
        self.completed
            + self.completed_without_frame
            + self.other_statuses.values().sum::<u64>()
            + self.errors.values().sum::<u64>()
    }

    /// Payments that did not complete end to end.
    pub fn not_completed(&self) -> u64 {
        self.total() - self.completed
    }

    pub fn merge(&mut self, other: &Tally) {
        self.completed += other.completed;
        self.completed_without_frame += other.completed_without_frame;
        for (k, v) in &other.other_statuses {
            *self.other_statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error.clone();
        }
    }

    /// `pending 3, 422 insufficient_funds 1` (empty when everything completed).
    pub fn problems(&self) -> String {
        let mut parts: Vec<String> = vec![];
        if self.completed_without_frame > 0 {
            parts.push(format!("no frame {}", self.completed_without_frame));
        }
        for (k, v) in self.other_statuses.iter().chain(self.errors.iter()) {
            parts.push(format!("{k} {v}"));
        }
        parts.join(", ")
    }
}

/// Frames not yet claimed by their answer are dropped past this many (bounded memory).
const MAX_UNCLAIMED: usize = 100_000;

enum Slot {
    /// The frame came first, at this clock time (ns).
    Frame(u64),
    /// The answer came first; the frame's arrival time goes here.
    Waiting(oneshot::Sender<u64>),
}

/// Pairs `payment_status` frames with their payments (whichever arrives first waits).
pub struct Tracker {
    pub clock: Clock,
    slots: DashMap<String, Slot>,
}

impl Tracker {
    pub fn new(clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            clock,
            slots: DashMap::new(),
        })
    }

    /// A `payment_status` frame of `payment_id` arrived at `at_ns`.
    pub fn on_frame(&self, payment_id: &str, at_ns: u64) {
        let full = self.slots.len() >= MAX_UNCLAIMED;
        match self.slots.entry(payment_id.to_owned()) {
            Entry::Occupied(slot) => {
                if matches!(slot.get(), Slot::Waiting(_))
                    && let Slot::Waiting(tx) = slot.remove()
                {
                    let _ = tx.send(at_ns);
                }
            }
            Entry::Vacant(slot) => {
                if !full {
                    slot.insert(Slot::Frame(at_ns));
                }
            }
        }
    }

    /// Waits (at most `limit`) for the frame of `payment_id`; its arrival time in ns.
    pub async fn frame_of(&self, payment_id: &str, limit: Duration) -> Option<u64> {
        let rx = match self.slots.entry(payment_id.to_owned()) {
            Entry::Occupied(slot) => {
                if matches!(slot.get(), Slot::Frame(_))
                    && let Slot::Frame(at) = slot.remove()
                {
                    return Some(at);
                }
                // Someone already waits for this id (a replayed answer): the frame is theirs.
                return None;
            }
            Entry::Vacant(slot) => {
                let (tx, rx) = oneshot::channel();
                slot.insert(Slot::Waiting(tx));
                rx
            }
        };
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(at)) => Some(at),
            _ => {
                self.slots.remove(payment_id);
                None
            }
        }
    }

    pub fn unclaimed(&self) -> usize {
        self.slots.len()
    }
}

/// The payment id and status of a `payment_status` event frame.
pub fn payment_frame(text: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(text).ok()?;
    let event = value.get("event")?;
    if value["type"] != "event" || event["kind"] != "payment_status" {
        return None;
    }
    Some((
        event["payment_id"].as_str()?.to_owned(),
        event["status"].as_str()?.to_owned(),
    ))
}

/// Runs one subscribed socket until `stop`: completed `payment_status` frames go to the
/// tracker, every other frame to the sink (live frames, bench change ids).
pub async fn run_socket(
    mut ws: Ws,
    tracker: Arc<Tracker>,
    sink: Arc<Sink>,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) {
    if ws
        .send(Message::text(r#"{"type":"subscribe","resume_from":null}"#))
        .await
        .is_err()
    {
        sink.closed.fetch_add(1, Ordering::AcqRel);
        return;
    }
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow_and_update() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
                continue;
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let text = text.as_str();
                if text.contains("\"payment_status\"") {
                    if let Some((id, status)) = payment_frame(text)
                        && status == "completed"
                    {
                        tracker.on_frame(&id, tracker.clock.now_ns());
                    }
                } else {
                    sink.on_text(text, shard);
                }
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                if !*stop.borrow() {
                    sink.closed.fetch_add(1, Ordering::AcqRel);
                }
                return;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// One socket per customer, each live before this returns (bounded wait).
pub async fn open_sockets(
    base_url: &str,
    customers: &[Customer],
    tracker: &Arc<Tracker>,
    sink: &Arc<Sink>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let endpoint = Endpoint::for_node(base_url).await?;
    let mut handles = vec![];
    for (i, customer) in customers.iter().enumerate() {
        let ws = crate::clients::connect(&endpoint, &customer.token, None)
            .await
            .with_context(|| format!("WebSocket of {}", customer.customer_id))?;
        handles.push(tokio::spawn(run_socket(
            ws,
            tracker.clone(),
            sink.clone(),
            i,
            stop.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.live.load(Ordering::Acquire) < customers.len() as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} sockets were live within 30 s",
                sink.live.load(Ordering::Acquire),
                customers.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(handles)
}

/// Which payments a phase sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Customers pay each other by phone (3 of 4) and a utility biller (1 of 4): little
    /// contention on any one account.
    Spread,
    /// Every payment goes to one biller's settlement account (`settle-utility`).
    Hot,
}

/// Payments above this amount to someone else need a step-up code
/// (`DEFAULT_CONFIRM_ABOVE_RUB`, docs/payments.md): the bench stays below it.
pub const STEP_UP_ABOVE_MINOR: i64 = 5_000_000;

/// The bench's payment amount: RUB, above zero and below the step-up threshold.
pub fn parse_amount(text: &str) -> anyhow::Result<kernel::Money> {
    let amount = kernel::Money::parse(text, kernel::Currency::parse("RUB")?)
        .with_context(|| format!("--amount {text:?} is not an amount in RUB"))?;
    if amount.minor <= 0 || amount.minor > STEP_UP_ABOVE_MINOR {
        bail!("--amount must be above 0 and at most the step-up threshold, 50000.00");
    }
    Ok(amount)
}

/// Utility payments go to this settlement account (the demo `utility.electricity`).
pub const HOT_ACCOUNT: &str = "settle-utility";
/// The utility operation's fixed fee in minor units (`operations/utility.electricity.toml`).
pub const UTILITY_FEE_MINOR: i64 = 1_000;

/// Whether payment `i` of `shape` goes to the utility biller (else to a customer by phone).
pub fn pays_biller(shape: Shape, i: u64) -> bool {
    match shape {
        Shape::Spread => i % 4 == 3,
        Shape::Hot => true,
    }
}

/// The payer index of payment `i` and the payee index (another customer) for `count`
/// customers (count ≥ 2 for phone transfers).
pub fn payer_and_payee(i: u64, count: usize) -> (usize, usize) {
    let count = count.max(1) as u64;
    let payer = i % count;
    if count == 1 {
        return (0, 0);
    }
    // Never the payer: an offset of 1..count.
    let offset = 1 + (i / count) % (count - 1);
    (payer as usize, ((payer + offset) % count) as usize)
}

/// The `POST /v1/payments` body of payment `i` (amount in major units, RUB).
pub fn payment_body(
    shape: Shape,
    i: u64,
    payer: &Customer,
    payee_phone: &str,
    amount: &str,
) -> Value {
    if pays_biller(shape, i) {
        json!({
            "operation": "utility.electricity",
            "from": payer.account_id,
            "amount": {"amount": amount, "currency": "RUB"},
            "fields": {"payer_account": format!("{:010}", i % 10_000_000_000), "period": "202612"}
        })
    } else {
        json!({
            "operation": "transfer.phone",
            "from": payer.account_id,
            "amount": {"amount": amount, "currency": "RUB"},
            "fields": {"phone": payee_phone}
        })
    }
}

/// One payment's measurements.
#[derive(Clone, Debug)]
pub struct Measured {
    pub outcome: Outcome,
    /// From the start time given to [`pay`] to the HTTP answer.
    pub answer_us: u64,
    /// From the start time to the payer's `payment_status` frame, when it came.
    pub frame_us: Option<u64>,
}

/// Sends one payment and waits for its answer and frame; times count from `start_ns` (the
/// intended send time in an open loop, the actual one in a closed loop).
#[allow(clippy::too_many_arguments)]
pub async fn pay(
    http: &reqwest::Client,
    base_url: &str,
    tracker: &Tracker,
    token: &str,
    key: &str,
    body: &Value,
    start_ns: u64,
    frame_timeout: Duration,
) -> Measured {
    let response = http
        .post(format!("{base_url}/v1/payments"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await;
    let outcome = match response {
        Ok(response) => {
            let http = response.status().as_u16();
            match response.json::<Value>().await {
                Ok(body) => Outcome::classify(http, &body),
                Err(_) => Outcome::Problem {
                    http,
                    code: "unreadable_body".into(),
                },
            }
        }
        Err(error) => Outcome::Transport(error.without_url().to_string()),
    };
    let answered = tracker.clock.now_ns();
    let frame_us = match &outcome {
        Outcome::Status { payment_id, status } if status == "completed" => tracker
            .frame_of(payment_id, frame_timeout)
            .await
            .map(|at| at.saturating_sub(start_ns) / 1000),
        _ => None,
    };
    Measured {
        outcome,
        answer_us: answered.saturating_sub(start_ns) / 1000,
        frame_us,
    }
}

/// Accumulated measurements of one phase.
#[derive(Clone, Debug, Default)]
pub struct PhaseAccount {
    pub tally: Tally,
    pub answer: Latency,
    pub frame: Latency,
}

impl PhaseAccount {
    pub fn record(&mut self, measured: &Measured) {
        self.tally
            .record(&measured.outcome, measured.frame_us.is_some());
        self.answer.record_us(measured.answer_us);
        if measured.outcome.is_completed()
            && let Some(frame) = measured.frame_us
        {
            self.frame.record_us(frame);
        }
    }

    pub fn merge(&mut self, other: &PhaseAccount) {
        self.tally.merge(&other.tally);
        self.answer.merge(&other.answer);
        self.frame.merge(&other.frame);
    }
}

/// Latency summaries of a phase, for the reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseLatency {
    /// Send (intended, in an open loop) → HTTP answer.
    pub answer: LatencySummary,
    /// Send (intended, in an open loop) → the payer's `payment_status` frame.
    pub frame: LatencySummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(n: u32) -> Customer {
        Customer {
            customer_id: format!("c{n:06}"),
            account_id: format!("a{n:06}"),
            currency: "RUB".into(),
            token: "t".into(),
        }
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        assert_eq!(
            Outcome::classify(201, &json!({"id": "pay-1", "status": "completed"})),
            Outcome::Status {
                payment_id: "pay-1".into(),
                status: "completed".into()
            }
        );
        assert_eq!(
            Outcome::classify(422, &json!({"code": "insufficient_funds"})),
            Outcome::Problem {
                http: 422,
                code: "insufficient_funds".into()
            }
        );
        assert_eq!(
            Outcome::classify(502, &json!("gateway")),
            Outcome::Problem {
                http: 502,
                code: "no_code".into()
            }
        );
        assert!(Outcome::classify(201, &json!({"id": "p", "status": "completed"})).is_completed());
        assert!(!Outcome::classify(201, &json!({"id": "p", "status": "pending"})).is_completed());
    }

    #[test]
    fn tally_never_counts_an_unfinished_payment_as_completed() {
        let mut tally = Tally::default();
        let completed = Outcome::classify(201, &json!({"id": "p", "status": "completed"}));
        tally.record(&completed, true);
        tally.record(&completed, false);
        tally.record(
            &Outcome::classify(201, &json!({"id": "p", "status": "pending"})),
            false,
        );
        tally.record(
            &Outcome::classify(422, &json!({"code": "limit_exceeded"})),
            false,
        );
        tally.record(&Outcome::Transport("reset".into()), false);
        assert_eq!(tally.completed, 1);
        assert_eq!(tally.completed_without_frame, 1);
        assert_eq!(tally.total(), 5);
        assert_eq!(tally.not_completed(), 4);
        assert_eq!(
            tally.problems(),
            "no frame 1, pending 1, 422 limit_exceeded 1, transport 1"
        );
        assert_eq!(tally.first_transport_error.as_deref(), Some("reset"));
        let mut sum = tally.clone();
        sum.merge(&tally);
        assert_eq!(sum.total(), 10);
        assert_eq!(sum.errors["transport"], 2);
    }

    #[tokio::test]
    async fn tracker_pairs_frames_with_answers_in_either_order() {
        let tracker = Tracker::new(Clock::default());
        // Frame first.
        tracker.on_frame("pay-a", 5);
        assert_eq!(
            tracker.frame_of("pay-a", Duration::from_millis(10)).await,
            Some(5)
        );
        // Answer first: the frame wakes the waiter.
        let waiting = {
            let tracker = tracker.clone();
            tokio::spawn(async move { tracker.frame_of("pay-b", Duration::from_secs(5)).await })
        };
        while tracker.unclaimed() == 0 {
            tokio::task::yield_now().await;
        }
        // A second answer for an id already awaited does not steal the first one's frame.
        assert_eq!(
            tracker.frame_of("pay-b", Duration::from_secs(5)).await,
            None
        );
        tracker.on_frame("pay-b", 9);
        assert_eq!(waiting.await.unwrap(), Some(9));
        // No frame: bounded wait, nothing left behind.
        assert_eq!(
            tracker.frame_of("pay-c", Duration::from_millis(10)).await,
            None
        );
        assert_eq!(tracker.unclaimed(), 0);
    }

    #[test]
    fn payment_frames_are_recognised() {
        let frame = r#"{"type":"event","seq":3,"event":{"id":"pay-x-completed","kind":"payment_status","payment_id":"pay-x","status":"completed"}}"#;
        assert_eq!(
            payment_frame(frame),
            Some(("pay-x".into(), "completed".into()))
        );
        assert_eq!(
            payment_frame(r#"{"type":"event","event":{"kind":"balance_changed"}}"#),
            None
        );
        assert_eq!(payment_frame("not json"), None);
    }

    #[test]
    fn payees_are_never_the_payer_and_shapes_route_as_documented() {
        for count in [2, 3, 10] {
            for i in 0..200 {
                let (payer, payee) = payer_and_payee(i, count);
                assert!(payer < count && payee < count);
                assert_ne!(payer, payee, "i={i} count={count}");
            }
        }
        assert_eq!(payer_and_payee(7, 1), (0, 0));
        let spread: Vec<bool> = (0..8).map(|i| pays_biller(Shape::Spread, i)).collect();
        assert_eq!(spread.iter().filter(|b| **b).count(), 2);
        assert!((0..8).all(|i| pays_biller(Shape::Hot, i)));
        let body = payment_body(Shape::Hot, 12, &customer(1), "+79990000002", "1.00");
        assert_eq!(body["operation"], "utility.electricity");
        assert_eq!(body["fields"]["payer_account"], "0000000012");
        assert_eq!(body["from"], "a000001");
        let body = payment_body(Shape::Spread, 0, &customer(1), "+79990000002", "1.00");
        assert_eq!(body["fields"]["phone"], "+79990000002");
    }
}
