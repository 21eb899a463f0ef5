//! `arbat bench mixed`: a realistic day at a total rate, open loop, with a configurable mix
//! of kinds (`--mix login=5,read=60,payment=20,incoming=10,notification=5`):
//!
//! - `login`: `POST /v1/auth/login` (argon2id, session write, audit);
//! - `read`: a warm `GET /v1/products` with a customer's token;
//! - `payment`: `POST /v1/payments` (a phone transfer), its answer checked and its
//!   `payment_status` frame awaited on the payer's socket;
//! - `incoming`: an incoming transfer, a `transaction_posted` Cache Control change published
//!   through `POST /cache-control/v1/events` (in cluster mode the node puts it on the ABS
//!   stream, `ABS_EVENTS`), its frame awaited on the customer's socket;
//! - `notification`: a `notification` Cache Control change (a message for the feed), likewise.
//!
//! Operation `i` is due at `start + i / rate` and its kind is the `i`-th of a smooth weighted
//! round robin over the mix (kinds interleaved, exact proportions every cycle). Latency counts
//! from the intended send time (no coordinated omission); warm-up is excluded. Per kind: sent,
//! ok, errors by reason, p50/p99 of the answer and, for payments, incoming transfers and
//! notifications, of the WebSocket delivery.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::clients::{Clock, Customer, Sink, change_id};
use crate::hosting::{self, HostMode, Target};
pub use crate::mix::{Kind, Mix, MixError};
use crate::payclient::{self, PhaseAccount, Shape, Tracker};
use crate::publisher::Schedule;
use crate::report::{Latency, LatencySummary};

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct MixedArgs {
    /// The self-hosted node's store and bus.
    #[arg(long, value_enum, default_value_t = HostMode::Embedded)]
    pub mode: HostMode,
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// A running node (http://host:port) instead of self-hosting; incoming transfers and
    /// notifications need --backoffice-key.
    #[arg(long)]
    pub url: Option<String>,
    /// The node's back-office key (Cache Control) when --url is given.
    #[arg(long, env = "ARBAT_BACKOFFICE_KEY", hide_env_values = true)]
    pub backoffice_key: Option<String>,
    /// Weights per kind: login, read, payment, incoming, notification.
    #[arg(
        long,
        default_value = "login=5,read=60,payment=20,incoming=10,notification=5"
    )]
    #[serde(serialize_with = "display")]
    pub mix: Mix,
    /// Operations per second, all kinds together (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "+7999")]
    pub login_prefix: String,
    #[arg(long, default_value_t = 1)]
    pub first_customer: u32,
    /// Customers (each with one WebSocket); at least 2.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    #[arg(long, default_value = "arbat-demo", hide_default_value = true)]
    pub password: String,
    /// Amount of each payment and incoming transfer, RUB.
    #[arg(long, default_value = "1.00")]
    pub amount: String,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Operations in flight at most (a bound, not a pace).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Seconds to wait for a frame before counting it missing.
    #[arg(long, default_value_t = 10.0)]
    pub frame_timeout: f64,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Folder for bench-mixed.md and bench-mixed.json.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

fn display<S: serde::Serializer>(mix: &Mix, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mix.to_string())
}

impl MixedArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.customers < 2 {
            bail!("--customers must be at least 2");
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a positive number of operations/s");
        }
        if !(self.warmup >= 0.0 && self.duration > 0.0 && self.frame_timeout > 0.0) {
            bail!("--warmup must be ≥ 0, --duration and --frame-timeout > 0");
        }
        if self.url.is_some()
            && self.backoffice_key.is_none()
            && (self.mix.weights.contains_key(&Kind::Incoming)
                || self.mix.weights.contains_key(&Kind::Notification))
        {
            bail!("incoming transfers and notifications against --url need --backoffice-key");
        }
        payclient::parse_amount(&self.amount)?;
        Ok(())
    }
}

/// What happened to the operations of one kind (warm-up excluded).
#[derive(Clone, Debug, Default, Serialize)]
pub struct KindResult {
    pub kind: String,
    pub weight: u32,
    pub sent: u64,
    pub ok: u64,
    /// By reason: `<http status> <code>`, `transport`, a payment status, `no frame`.
    pub errors: BTreeMap<String, u64>,
    pub ok_per_s: f64,
    /// Intended send → HTTP answer.
    pub answer: LatencySummary,
    /// Intended send → the WebSocket frame (payments, incoming, notifications).
    pub delivery: Option<LatencySummary>,
}

#[derive(Default)]
struct KindAccount {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    answer: Latency,
    /// Changes accepted (202) whose frame is awaited through the sink.
    accepted_changes: u64,
}

impl KindAccount {
    fn merge(&mut self, other: KindAccount) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.answer.merge(&other.answer);
        self.accepted_changes += other.accepted_changes;
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MixedReport {
    pub command: String,
    pub started_at: String,
    pub cores: usize,
    pub mode: String,
    pub settings: Value,
    pub mix: String,
    pub target_per_s: f64,
    pub achieved_per_s: f64,
    pub window_s: f64,
    pub kinds: Vec<KindResult>,
    pub notes: Vec<String>,
}

impl MixedReport {
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Arbat mixed-day benchmark\n\n");
        md.push_str(&format!(
            "Run at {} on {} core(s), {}.\n\nReproduce:\n\n```sh\n{}\n```\n\n",
            self.started_at, self.cores, self.mode, self.command
        ));
        md.push_str(&format!(
            "Mix `{}` at {:.1} operations/s (open loop; {:.1}/s completed ok), {:.1} s measured after warm-up. Latency from the intended send time.\n\n",
            self.mix, self.target_per_s, self.achieved_per_s, self.window_s
        ));
        md.push_str("| kind | weight | sent | ok | ok/s | answer p50 ms | answer p99 ms | delivery p50 ms | delivery p99 ms | errors |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for k in &self.kinds {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |\n",
                k.kind,
                k.weight,
                k.sent,
                k.ok,
                k.ok_per_s,
                k.answer.p50_ms,
                k.answer.p99_ms,
                k.delivery
                    .as_ref()
                    .map_or_else(|| "—".into(), |d| format!("{:.1}", d.p50_ms)),
                k.delivery
                    .as_ref()
                    .map_or_else(|| "—".into(), |d| format!("{:.1}", d.p99_ms)),
                errors(&k.errors)
            ));
        }
        if !self.notes.is_empty() {
            md.push_str("\n## Notes\n\n");
            for note in &self.notes {
                md.push_str(&format!("- {note}\n"));
            }
        }
        md.push_str("\n## Settings\n\n```json\n");
        md.push_str(&serde_json::to_string_pretty(&self.settings).unwrap_or_default());
        md.push_str("\n```\n");
        md
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<13} {:>7} {:>7} {:>8} {:>16} {:>16}  {}\n",
            "kind", "sent", "ok", "ok/s", "answer p50/p99", "delivery p50/p99", "errors"
        );
        for k in &self.kinds {
            out.push_str(&format!(
                "{:<13} {:>7} {:>7} {:>8.1} {:>16} {:>16}  {}\n",
                k.kind,
                k.sent,
                k.ok,
                k.ok_per_s,
                format!("{:.1}/{:.1}", k.answer.p50_ms, k.answer.p99_ms),
                k.delivery.as_ref().map_or_else(
                    || "—".into(),
                    |d| format!("{:.1}/{:.1}", d.p50_ms, d.p99_ms)
                ),
                errors(&k.errors)
            ));
        }
        out
    }
}

fn errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Ctx {
    http: reqwest::Client,
    base_url: String,
    backoffice_key: String,
    tracker: Arc<Tracker>,
    customers: Vec<Customer>,
    logins: Vec<String>,
    password: String,
    amount: String,
    run: String,
    frame_timeout: Duration,
    mix: Mix,
}

/// The Cache Control change of operation `i` (an incoming transfer or a notification).
fn change(kind: Kind, id: &str, customer: &Customer, amount: &str) -> Value {
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    match kind {
        Kind::Incoming => json!({
            "id": id, "customer_id": customer.customer_id, "kind": "transaction_posted", "at": at,
            "account_id": customer.account_id,
            "amount": {"amount": amount, "currency": customer.currency},
            "balance": {"amount": "150000.00", "currency": customer.currency},
            "description": "Incoming transfer", "counterparty": "Arbat bench"
        }),
        _ => json!({
            "id": id, "customer_id": customer.customer_id, "kind": "notification", "at": at,
            "request_id": id, "about": "offer", "channel": "in_app", "status": "accepted"
        }),
    }
}

impl Ctx {
    /// Runs operation `i` due at `intended` (clock ns); its accounting.
    async fn run(&self, i: u64, intended: u64) -> (Kind, KindAccount, Option<u64>) {
        let kind = self.mix.kind_of(i);
        let customer = &self.customers[(i % self.customers.len() as u64) as usize];
        let mut account = KindAccount {
            sent: 1,
            ..Default::default()
        };
        let mut payment_frame = None;
        let result: Result<(), String> = match kind {
            Kind::Payment => {
                let (payer, payee) = payclient::payer_and_payee(i, self.customers.len());
                let body = payclient::payment_body(
                    Shape::Spread,
                    0,
                    &self.customers[payer],
                    &self.logins[payee],
                    &self.amount,
                );
                let measured = payclient::pay(
                    &self.http,
                    &self.base_url,
                    &self.tracker,
                    &self.customers[payer].token,
                    &format!("bench-mixed-{}-{i}", self.run),
                    &body,
                    intended,
                    self.frame_timeout,
                )
                .await;
                let mut one = PhaseAccount::default();
                one.record(&measured);
                account.answer.record_us(measured.answer_us);
                payment_frame = measured.frame_us;
                if one.tally.completed == 1 {
                    Ok(())
                } else {
                    Err(one.tally.problems())
                }
            }
            Kind::Login => {
                let login = &self.logins[(i % self.logins.len() as u64) as usize];
                let request = self
                    .http
                    .post(format!("{}/v1/auth/login", self.base_url))
                    .json(&json!({"login": login, "password": self.password, "device_id": format!("bench-mixed-{}", i % 64)}));
                self.send(request, 200, intended, &mut account).await
            }
            Kind::Read => {
                let request = self
                    .http
                    .get(format!("{}/v1/products", self.base_url))
                    .bearer_auth(&customer.token);
                self.send(request, 200, intended, &mut account).await
            }
            Kind::Incoming | Kind::Notification => {
                let id = change_id(&self.run, kind.phase(), intended, i);
                let request = self
                    .http
                    .post(format!("{}/cache-control/v1/events", self.base_url))
                    .bearer_auth(&self.backoffice_key)
                    .json(&json!({"events": [change(kind, &id, customer, &self.amount)]}));
                let sent = self.send(request, 202, intended, &mut account).await;
                if sent.is_ok() {
                    account.accepted_changes += 1;
                }
                sent
            }
        };
        match result {
            Ok(()) => account.ok += 1,
            Err(reason) => *account.errors.entry(reason).or_default() += 1,
        }
        (kind, account, payment_frame)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        want: u16,
        intended: u64,
        account: &mut KindAccount,
    ) -> Result<(), String> {
        let response = request.send().await;
        let result = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                if status == want {
                    Ok(())
                } else {
                    let code = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["code"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "no_code".into());
                    Err(format!("{status} {code}"))
                }
            }
            Err(_) => Err("transport".into()),
        };
        let now = self.tracker.clock.now_ns();
        account
            .answer
            .record_us(now.saturating_sub(intended) / 1000);
        result
    }
}

pub async fn run_mixed(args: MixedArgs) -> anyhow::Result<MixedReport> {
    args.validate()?;
    let load_at_start = hosting::load_average();
    let started_at = time::OffsetDateTime::now_utc();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let warmup = Duration::from_secs_f64(args.warmup);
    let window = Duration::from_secs_f64(args.duration);
    let settings = serde_json::to_value(&args)?;
    let mut target = Target::start(
        args.url.as_deref(),
        args.backoffice_key.clone(),
        args.mode,
        args.arbat_bin.as_deref(),
        args.partitions,
    )
    .await?;
    let mut report = MixedReport {
        command: hosting::command_line("mixed", &settings),
        started_at: started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        cores,
        mode: target.description.clone(),
        settings,
        mix: args.mix.to_string(),
        target_per_s: args.rate,
        window_s: window.as_secs_f64(),
        ..Default::default()
    };
    let logins = hosting::logins(&args.login_prefix, args.first_customer, args.customers);
    let customers = crate::clients::login_all(&target.base_url, &logins, &args.password, 8).await?;
    let clock = Clock::default();
    let tracker = Tracker::new(clock);
    let sink = Sink::new(clock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sockets =
        payclient::open_sockets(&target.base_url, &customers, &tracker, &sink, &stop_rx).await?;
    let run = format!("{:x}", crate::payments::clock_seed());
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build()?,
        base_url: target.base_url.clone(),
        backoffice_key: target.backoffice_key.clone().unwrap_or_default(),
        tracker,
        customers,
        logins,
        password: args.password.clone(),
        amount: args.amount.clone(),
        run,
        frame_timeout: Duration::from_secs_f64(args.frame_timeout),
        mix: args.mix.clone(),
    });

    let schedule = Schedule::new(clock.now_ns() + 1_000_000, args.rate);
    let start = schedule.start_ns + warmup.as_nanos() as u64;
    let end = start + window.as_nanos() as u64;
    for kind in [Kind::Incoming, Kind::Notification] {
        sink.set_window(kind.phase(), start, end);
    }
    let permits = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(bool, (Kind, KindAccount, Option<u64>))>();
    let mut j = 0u64;
    loop {
        let intended = schedule.at(j);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(clock.instant_at(intended).into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let (ctx, done) = (ctx.clone(), done_tx.clone());
        tokio::spawn(async move {
            let outcome = ctx.run(j, intended).await;
            drop(permit);
            let _ = done.send((intended >= start, outcome));
        });
        j += 1;
    }
    drop(done_tx);
    let mut per_kind: BTreeMap<Kind, KindAccount> = BTreeMap::new();
    let mut payment_delivery = Latency::new();
    // Changes accepted over the whole run, warm-up included: the sink counts all their frames.
    let mut accepted: BTreeMap<Kind, u64> = BTreeMap::new();
    while let Some((in_window, (kind, account, frame))) = done_rx.recv().await {
        *accepted.entry(kind).or_default() += account.accepted_changes;
        if !in_window {
            continue;
        }
        if let Some(frame) = frame {
            payment_delivery.record_us(frame);
        }
        per_kind.entry(kind).or_default().merge(account);
    }
    // Wait (bounded) for the frames of every accepted change.
    let owed = |kind: Kind| accepted.get(&kind).copied().unwrap_or(0);
    let deadline = std::time::Instant::now() + ctx.frame_timeout;
    while (sink.delivered(Kind::Incoming.phase()) < owed(Kind::Incoming)
        || sink.delivered(Kind::Notification.phase()) < owed(Kind::Notification))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    target.check_running()?;
    let mut ok_total = 0;
    for (kind, weight) in &args.mix.weights {
        let account = per_kind.remove(kind).unwrap_or_default();
        let mut errors = account.errors;
        let delivery = match kind {
            Kind::Payment => Some(payment_delivery.summary()),
            Kind::Incoming | Kind::Notification => {
                let missing = owed(*kind).saturating_sub(sink.delivered(kind.phase()));
                if missing > 0 {
                    errors.insert("no frame".into(), missing);
                }
                Some(sink.latency(kind.phase()).summary())
            }
            _ => None,
        };
        ok_total += account.ok;
        report.kinds.push(KindResult {
            kind: kind.name().into(),
            weight: *weight,
            sent: account.sent,
            ok: account.ok,
            errors,
            ok_per_s: account.ok as f64 / window.as_secs_f64(),
            answer: account.answer.summary(),
            delivery,
        });
    }
    report.achieved_per_s = ok_total as f64 / window.as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(sockets)).await;
    let closed = sink.closed.load(Ordering::Acquire);
    if closed > 0 {
        report.notes.push(format!(
            "{closed} WebSocket(s) closed by the server during the run"
        ));
    }
    report.notes.push("incoming transfers and notifications are Cache Control changes sent to `POST /cache-control/v1/events` (the cluster node publishes them to `ABS_EVENTS`); their delivery latency is from the intended send time to the frame on the customer's socket".into());
    report.notes.push("payments: a phone transfer to another bench customer; only `completed` with its `payment_status` frame counts ok, anything else is an error by reason".into());
    report.notes.push("logins are argon2id (tens of ms of CPU each); on a small machine they weigh on every other kind's latency".into());
    report
        .notes
        .extend(hosting::load_note(load_at_start, cores));
    target.stop();
    println!("{}", report.table());
    for note in &report.notes {
        println!("- {note}");
    }
    crate::report::write_files(
        &args.out,
        "bench-mixed",
        &report.markdown(),
        &serde_json::to_string_pretty(&report)?,
        &[],
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn changes_have_the_cache_control_shape() {
        let customer = Customer {
            customer_id: "c000001".into(),
            account_id: "a000001".into(),
            currency: "RUB".into(),
            token: String::new(),
        };
        let incoming = change(Kind::Incoming, "bench-r-1-5-0", &customer, "1.00");
        assert!(
            kernel::Change::from_value(incoming.clone()).is_ok(),
            "{incoming}"
        );
        assert_eq!(incoming["amount"]["amount"], "1.00");
        let note = change(Kind::Notification, "bench-r-2-5-1", &customer, "1.00");
        assert!(kernel::Change::from_value(note.clone()).is_ok(), "{note}");
        assert_eq!(Kind::Incoming.phase(), 1);
        assert_eq!(Kind::Notification.phase(), 2);
    }

    fn report() -> MixedReport {
        MixedReport {
            command: "arbat bench mixed --rate 10".into(),
            mix: "read=1".into(),
            kinds: vec![KindResult {
                kind: "incoming".into(),
                weight: 10,
                sent: 5,
                ok: 4,
                errors: BTreeMap::from([("no frame".into(), 1)]),
                delivery: Some(LatencySummary {
                    p50_ms: 3.0,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn reports_show_per_kind_errors_and_delivery() {
        let md = report().markdown();
        assert!(
            md.contains("```sh\narbat bench mixed --rate 10\n```"),
            "{md}"
        );
        assert!(md.contains("| incoming | 10 | 5 | 4 |"), "{md}");
        assert!(md.contains("| 3.0 |"), "{md}");
        assert!(md.contains("no frame 1"), "{md}");
        assert!(report().table().contains("incoming"));
    }
}
