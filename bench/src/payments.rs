//! `arbat bench payments`: payments/s end to end (`POST /v1/payments` → customer actor →
//! ABS ledger → feed → the payer's WebSocket `payment_status` frame), durability on, beside
//! the ledger's own postings/s on the same store backend, measured in the same run.
//!
//! For each scenario ([`Shape`]: spread or hot account):
//! - **closed loop** at each `--clients` level (e.g. 1, 8, 32): every client sends a payment,
//!   waits for its answer and its frame, and sends the next. Completed payments/s per level
//!   shows whether throughput grows with load; the highest is the scenario's maximum.
//! - **ledger baseline** at the same levels: `abs::Abs::pay` in this process against a fresh
//!   SQLite file or PostgreSQL database (seeded with the same demo customers), the same
//!   transfer shape (phone transfer or biller with its fee), no HTTP, actor or feed.
//! - **open loop** at half of the maximum (or `--rate`): payment `i` is due at
//!   `start + i / rate` and sent then whatever is still in flight; latency counts from that
//!   intended time (no coordinated omission). The aim of issue 5: p99 < 50 ms here.
//!
//! Warm-up is excluded from every figure (by send time, or intended send time). Every
//! payment's answer is checked: only `completed` with its frame counts as a payment; every
//! other status, problem code, transport failure or missing frame is counted and reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use kernel::Money;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::clients::{Clock, Customer, Sink};
use crate::hosting::{self, HostMode, Target};
use crate::ledger_baseline::Ledger;
use crate::payclient::{self, Measured, PhaseAccount, PhaseLatency, Shape, Tracker};
pub use crate::payments_report::{LoadPoint, OpenLoop, PaymentsReport, ScenarioResult};
use crate::publisher::Schedule;

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct PaymentsArgs {
    /// The self-hosted node's store and bus.
    #[arg(long, value_enum, default_value_t = HostMode::Embedded)]
    pub mode: HostMode,
    /// The `arbat` binary to self-host [default: this executable].
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// A running node (http://host:port) instead of self-hosting. Its rate limits apply.
    #[arg(long)]
    pub url: Option<String>,
    /// The ledger baseline's database: a scratch PostgreSQL database (its ABS tables are
    /// created and seeded) [default: a fresh one on ARBAT_TEST_PG in cluster mode, a fresh
    /// SQLite file in embedded mode].
    #[arg(long)]
    pub ledger_database_url: Option<String>,
    /// Scenarios, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Shape::Spread, Shape::Hot])]
    pub scenario: Vec<Shape>,
    /// Logins are `<prefix><n, 7 digits>` (demo customers trust every device).
    #[arg(long, default_value = "+7999")]
    pub login_prefix: String,
    #[arg(long, default_value_t = 1)]
    pub first_customer: u32,
    /// Customers who pay (each with one WebSocket); at least 2.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    #[arg(long, default_value = "arbat-demo", hide_default_value = true)]
    pub password: String,
    /// Closed-loop concurrency levels (clients, each with one payment in flight).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    pub clients: Vec<usize>,
    /// Open-loop payments/s [default: half of the scenario's closed-loop maximum].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Payments in flight at most in the open loop (a bound, not a pace).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Amount of each payment, RUB (below the step-up threshold, 50 000.00).
    #[arg(long, default_value = "1.00")]
    pub amount: String,
    /// Warm-up of each phase, seconds (excluded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measurement window of each phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds to wait for a completed payment's frame before counting it missing.
    #[arg(long, default_value_t = 10.0)]
    pub frame_timeout: f64,
    /// Partitions of a self-hosted cluster node.
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Skip the ledger baseline (no ratios).
    #[arg(long)]
    pub no_baseline: bool,
    /// Folder for bench-payments.md and bench-payments.json.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

impl PaymentsArgs {
    fn validate(&self) -> anyhow::Result<Money> {
        if self.customers < 2 {
            bail!("--customers must be at least 2 (phone transfers go to another customer)");
        }
        if self.clients.is_empty() || self.clients.contains(&0) {
            bail!("--clients takes positive concurrency levels, e.g. 1,8,32");
        }
        if self.scenario.is_empty() {
            bail!("--scenario needs spread, hot or both");
        }
        if !(self.warmup >= 0.0 && self.duration > 0.0 && self.frame_timeout > 0.0) {
            bail!("--warmup must be ≥ 0, --duration and --frame-timeout > 0");
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            bail!("--rate must be a positive number of payments/s");
        }
        payclient::parse_amount(&self.amount)
    }
}

/// Everything a payment phase needs.
struct Ctx {
    http: reqwest::Client,
    base_url: String,
    tracker: Arc<Tracker>,
    customers: Vec<Customer>,
    /// Phones (= logins) of the customers, aligned.
    phones: Vec<String>,
    amount: String,
    run: String,
    /// Payment sequence across phases (unique Idempotency-Keys).
    next: AtomicU64,
    frame_timeout: Duration,
}

impl Ctx {
    async fn pay(&self, shape: Shape, i: u64, start_ns: u64) -> Measured {
        let (payer, payee) = payclient::payer_and_payee(i, self.customers.len());
        let body = payclient::payment_body(
            shape,
            i,
            &self.customers[payer],
            &self.phones[payee],
            &self.amount,
        );
        payclient::pay(
            &self.http,
            &self.base_url,
            &self.tracker,
            &self.customers[payer].token,
            &format!("bench-{}-{i}", self.run),
            &body,
            start_ns,
            self.frame_timeout,
        )
        .await
    }
}

/// Closed loop: `clients` tasks pay back to back; what was sent inside the window counts.
async fn closed_loop(
    ctx: &Arc<Ctx>,
    shape: Shape,
    clients: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<PhaseAccount> {
    let clock = ctx.tracker.clock;
    let start = clock.now_ns() + warmup.as_nanos() as u64;
    let end = start + window.as_nanos() as u64;
    let mut tasks = vec![];
    for _ in 0..clients {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut account = PhaseAccount::default();
            loop {
                let sent = ctx.tracker.clock.now_ns();
                if sent >= end {
                    break;
                }
                let i = ctx.next.fetch_add(1, Ordering::Relaxed);
                let measured = ctx.pay(shape, i, sent).await;
                if sent >= start {
                    account.record(&measured);
                }
            }
            account
        }));
    }
    let mut all = PhaseAccount::default();
    for task in tasks {
        all.merge(&task.await?);
    }
    Ok(all)
}

/// Open loop: payment `j` is due at `start + j / rate`; latency from that time.
async fn open_loop(
    ctx: &Arc<Ctx>,
    shape: Shape,
    rate: f64,
    max_in_flight: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<PhaseAccount> {
    let clock = ctx.tracker.clock;
    let schedule = Schedule::new(clock.now_ns() + 1_000_000, rate);
    let start = schedule.start_ns + warmup.as_nanos() as u64;
    let end = start + window.as_nanos() as u64;
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<PhaseAccount>();
    let mut j = 0u64;
    loop {
        let intended = schedule.at(j);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(clock.instant_at(intended).into()).await;
        // Bounded: when the limit is reached, later payments wait for a slot but keep their
        // intended send times, so the wait shows up as latency.
        let permit = permits.clone().acquire_owned().await?;
        let (ctx, done) = (ctx.clone(), done_tx.clone());
        tokio::spawn(async move {
            let i = ctx.next.fetch_add(1, Ordering::Relaxed);
            let measured = ctx.pay(shape, i, intended).await;
            let mut account = PhaseAccount::default();
            if intended >= start {
                account.record(&measured);
            }
            drop(permit);
            let _ = done.send(account);
        });
        j += 1;
    }
    drop(done_tx);
    let mut all = PhaseAccount::default();
    while let Some(account) = done_rx.recv().await {
        all.merge(&account);
    }
    Ok(all)
}

pub async fn run_payments(args: PaymentsArgs) -> anyhow::Result<PaymentsReport> {
    let amount = args.validate()?;
    let load_at_start = hosting::load_average();
    let started_at = time::OffsetDateTime::now_utc();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let warmup = Duration::from_secs_f64(args.warmup);
    let window = Duration::from_secs_f64(args.duration);
    let settings = serde_json::to_value(&args)?;
    let mut report = PaymentsReport {
        command: hosting::command_line("payments", &settings),
        started_at: started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        cores,
        backend: args.mode.backend().into(),
        settings,
        ..Default::default()
    };
    let mut target = Target::start(
        args.url.as_deref(),
        None,
        args.mode,
        args.arbat_bin.as_deref(),
        args.partitions,
    )
    .await?;
    report.mode = target.description.clone();
    let logins = hosting::logins(&args.login_prefix, args.first_customer, args.customers);
    let customers = crate::clients::login_all(&target.base_url, &logins, &args.password, 8).await?;
    let clock = Clock::default();
    let tracker = Tracker::new(clock);
    let sink = Sink::new(clock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sockets =
        payclient::open_sockets(&target.base_url, &customers, &tracker, &sink, &stop_rx).await?;
    let run = format!("{:x}", clock_seed());
    let ctx = Arc::new(Ctx {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build()?,
        base_url: target.base_url.clone(),
        tracker,
        customers,
        phones: logins,
        amount: args.amount.clone(),
        run: run.clone(),
        next: AtomicU64::new(0),
        frame_timeout: Duration::from_secs_f64(args.frame_timeout),
    });
    let ledger = if args.no_baseline {
        None
    } else {
        Some(Ledger::open(args.mode.backend(), args.ledger_database_url.as_deref()).await?)
    };
    for shape in &args.scenario {
        let shape = *shape;
        let name = serde_json::to_value(shape)?
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut result = ScenarioResult {
            scenario: name.clone(),
            ..Default::default()
        };
        for &clients in &args.clients {
            tracing::info!(scenario = %name, clients, "closed loop");
            let account = closed_loop(&ctx, shape, clients, warmup, window).await?;
            target.check_running()?;
            if account.tally.completed == 0 {
                bail!(
                    "{name}, {clients} client(s): no payment completed end to end ({})",
                    account.tally.problems()
                );
            }
            let mut point = LoadPoint {
                clients,
                window_s: window.as_secs_f64(),
                payments_per_s: account.tally.completed as f64 / window.as_secs_f64(),
                tally: account.tally.clone(),
                latency: PhaseLatency {
                    answer: account.answer.summary(),
                    frame: account.frame.summary(),
                },
                ..Default::default()
            };
            if let Some(ledger) = &ledger {
                tracing::info!(scenario = %name, clients, "ledger baseline");
                let (rate, failures) = ledger
                    .postings_per_s(
                        shape,
                        args.customers,
                        args.first_customer,
                        amount,
                        clients,
                        warmup,
                        window,
                        &format!("{run}-{name}-{clients}"),
                    )
                    .await?;
                point.ledger_postings_per_s = Some(rate);
                point.ledger_failures = failures;
                point.ratio_to_ledger = (rate > 0.0).then(|| point.payments_per_s / rate);
            }
            result.closed_loop.push(point);
        }
        result.max_payments_per_s = result
            .closed_loop
            .iter()
            .map(|p| p.payments_per_s)
            .fold(0.0, f64::max);
        if let (Some(first), Some(last)) = (result.closed_loop.first(), result.closed_loop.last())
            && result.closed_loop.len() > 1
            && first.payments_per_s > 0.0
        {
            result.growth_with_load = Some(last.payments_per_s / first.payments_per_s);
        }
        let rate = args.rate.unwrap_or(result.max_payments_per_s / 2.0);
        if rate > 0.0 {
            tracing::info!(scenario = %name, rate, "open loop");
            let account = open_loop(&ctx, shape, rate, args.max_in_flight, warmup, window).await?;
            target.check_running()?;
            let frame = account.frame.summary();
            result.open_loop = Some(OpenLoop {
                target_per_s: rate,
                window_s: window.as_secs_f64(),
                payments_per_s: account.tally.completed as f64 / window.as_secs_f64(),
                tally: account.tally.clone(),
                p99_below_50_ms: frame.samples > 0 && frame.p99_ms < 50.0,
                latency: PhaseLatency {
                    answer: account.answer.summary(),
                    frame,
                },
            });
        } else {
            report.notes.push(format!(
                "{name}: no payment completed in the closed loop, so no open-loop rate"
            ));
        }
        report.scenarios.push(result);
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(sockets)).await;
    let closed = sink.closed.load(Ordering::Acquire);
    if closed > 0 {
        report.notes.push(format!(
            "{closed} WebSocket(s) closed by the server during the run"
        ));
    }
    report.notes.push(format!(
        "each payment is {} RUB (below the step-up threshold) with a unique Idempotency-Key; only `completed` answers whose `payment_status` frame reached the payer's socket count as payments",
        args.amount
    ));
    report.notes.push("closed loop: latency from the actual send; open loop: from the intended send time (a stalled sender shows as latency: no coordinated omission); warm-up excluded".into());
    report.notes.push(format!(
        "ledger baseline: `abs::Abs::pay` (account lookups, payee resolution, the {} store's group-committed transfers, changes discarded) in the bench process, same shape and concurrency",
        args.mode.backend()
    ));
    if args.url.is_none() {
        report.notes.push(format!("self-hosted: the node, its store{} and the bench's clients share this machine's {cores} cores; compare ratios within the run", if args.mode == HostMode::Cluster { ", NATS" } else { "" }));
    }
    report
        .notes
        .extend(hosting::load_note(load_at_start, cores));
    target.check_running()?;
    target.stop();
    println!("{}", report.table());
    for note in &report.notes {
        println!("- {note}");
    }
    crate::report::write_files(
        &args.out,
        "bench-payments",
        &report.markdown(),
        &serde_json::to_string_pretty(&report)?,
        &[],
    )?;
    Ok(report)
}

/// A run tag unique enough that Idempotency-Keys never repeat across runs.
pub(crate) fn clock_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: PaymentsArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["bench"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.args)
        };
        assert!(parse(&[]).unwrap().validate().is_ok());
        assert!(parse(&["--scenario", "sideways"]).is_err());
        for (flags, reason) in [
            (&["--customers", "1"][..], "--customers"),
            (&["--clients", "0"][..], "--clients"),
            (&["--amount", "60000.00"][..], "step-up"),
            (&["--amount", "abc"][..], "--amount"),
            (&["--rate=-3"][..], "--rate"),
        ] {
            let error = parse(flags).unwrap().validate().unwrap_err();
            assert!(
                format!("{error:#}").contains(reason),
                "{flags:?}: {error:#}"
            );
        }
    }
}
