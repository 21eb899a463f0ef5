//! `arbat bench`: benchmarks of a running Arbat node, each beside a baseline measured in the
//! same run (DESIGN.md "Performance budget").
//!
//! # Guided tour
//!
//! - this file: the command line ([`BenchArgs`], [`LiveArgs`]) and [`run`], which runs
//!   `arbat bench live`: idle density first (on fresh processes), then the live path.
//! - [`cluster`]: self-hosting. nats-server and a PostgreSQL database from testkit, the real
//!   `arbat serve` binary in cluster mode with `--demo`, and the baseline relay process;
//!   all killed on drop, temp folders removed.
//! - [`clients`]: log in, open authenticated WebSockets (spread over 127.0.0.x source
//!   addresses past the ephemeral port range), subscribe, and account every frame in a
//!   shared [`clients::Sink`] (per-phase counts and latency).
//! - [`publisher`]: Cache Control changes to `abs.evt.<customer>`; open loop at a set rate
//!   (latency from the intended send time: no coordinated omission) or closed loop with a
//!   bounded number of changes in flight (the max rate).
//! - [`relay`]: the baseline, a bare NATS→WebSocket relay with no actor and no store, run as
//!   its own process (`arbat bench relay`) so its memory and CPU are measured like the node's.
//! - [`report`]: hdrhistogram latencies and the report (console table, Markdown, JSON, plots).
//! - [`sockets`]: opening, waiting for and closing many client sockets, in any [`sockets::Wire`]
//!   protocol (Arbat's, NATS over WebSocket, nchan), all accounted in one [`clients::Sink`].
//! - [`idle`]: idle density (a ramp of idle sockets; memory per socket, heartbeat CPU), used by
//!   `live` and by `arbat bench idle`.
//! - [`peers`]: nats-server's WebSocket listener and nginx + nchan as peers of the live path,
//!   and the raw NATS pub→sub rate.
//! - [`nodes`]: multi-node self-hosting (nats-server with `/varz`, one database, n nodes in
//!   CPU groups of their own) for [`scale`] and [`activation`].
//! - [`scale`]: `arbat bench scale`; [`activation`]: `arbat bench activation`.
//! - [`progress`]: the once-a-second sampler (progress line, timelines); [`svg`]: the plots.
//! - [`report`]: hdrhistogram latencies and the report (console table, Markdown, JSON).
//! - [`payments`]: `arbat bench payments`, payments/s end to end beside the ledger's own
//!   postings/s ([`ledger_baseline`], in process; [`payments_report`]).
//! - [`mixed`]: `arbat bench mixed`, a realistic day in a configurable mix ([`mix`]).
//! - [`payclient`]: what those two share (the payment request, the accounting of answers,
//!   frames paired with payments); [`hosting`]: the node under test (self-hosted embedded
//!   or cluster, or `--url`), the reproduce command, the machine's load.
//!
//! # What is measured
//!
//! For each target (arbat, then the relay) the same clients connect N sockets over K
//! customers. Phase `max`: closed loop, the delivered events/s is the ceiling. Phase `rate`:
//! open loop at half of arbat's max (the same absolute load for both targets), p50/p99/p99.9
//! publish→frame latency. Warm-up is excluded by the intended send time carried in each
//! change id. Every phase is drained and checked: frames delivered vs frames expected.
//! Idle density: M idle authenticated subscribed sockets; server VmRSS before and after.

pub mod activation;
pub mod auth;
pub mod clients;
pub mod cluster;
pub mod hosting;
pub mod idle;
pub mod ledger_baseline;
pub mod mix;
pub mod mixed;
pub mod nodes;
pub mod payclient;
pub mod payments;
pub mod payments_report;
pub mod peers;
pub mod progress;
pub mod publisher;
pub mod relay;
pub mod report;
pub mod scale;
pub mod sockets;
pub mod svg;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::sync::watch;

use crate::clients::{Clock, Customer, Endpoint, Sink};
use crate::cluster::{RelayProcess, SelfHosted};
use crate::idle::{IdleSettings, idle_density};
use crate::peers::{NatsWsPeer, NchanPeer, Peer};
use crate::publisher::{Mode, PhasePlan, Publisher, Via};
pub use crate::report::Report;
use crate::report::Scenario;
use crate::sockets::{ConnectSettings, Wire, close_all, open_sockets_with, wait_live};

/// `arbat bench …`
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The live path (ABS change → actor → journal → WebSocket frame) against a bare
    /// NATS→WebSocket relay, and server memory per idle socket.
    Live(LiveArgs),
    /// Logins/s (argon2id), token verifications/s per core and the latency the gateway adds
    /// to a warm read, each beside a baseline, against a self-hosted embedded node.
    Auth(auth::AuthArgs),
    /// Server memory per idle authenticated socket (a ramp to N) and heartbeat CPU, beside
    /// the bare relay.
    Idle(idle::IdleArgs),
    /// Cold activations/s (snapshot + journal) and memory per resident actor, after a
    /// restart of a self-hosted node.
    Activation(activation::ActivationArgs),
    /// The live path with 1, 2 and 4 self-hosted nodes, each with an equal CPU quota:
    /// throughput per node, scaling efficiency, CPU and bus messages per event.
    Scale(scale::ScaleArgs),
    /// Payments/s end to end (HTTP → actor → ABS ledger → feed → WebSocket) beside the
    /// ledger's own postings/s, spread and hot-account scenarios, embedded or clustered.
    Payments(payments::PaymentsArgs),
    /// A realistic day at a total rate: logins, reads, payments, incoming transfers and
    /// notifications in a configurable mix, per-kind counts and latency.
    Mixed(mixed::MixedArgs),
    /// The baseline relay alone (started by `bench live`; useful by hand).
    #[command(hide = true)]
    Relay(relay::RelayArgs),
}

/// How the baseline's changes reach its NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BaselinePublish {
    /// Same publisher as the live path: JetStream, acknowledged once stored (file storage);
    /// the relay reads the subject with core NATS. Compares what the platform adds.
    Jetstream,
    /// Core NATS, nothing stored: the bare ceiling of NATS + WebSocket on this machine.
    Core,
}

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct LiveArgs {
    /// The `arbat` binary to self-host [default: this executable].
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// A running node (http://host:port) instead of self-hosting; needs --nats-url.
    #[arg(long, requires = "nats_url")]
    pub url: Option<String>,
    /// The cluster's NATS, where changes are published to `abs.evt.<customer>` (JetStream).
    #[arg(long, requires = "url")]
    pub nats_url: Option<String>,
    /// Logins are `<prefix><n, 7 digits>`.
    #[arg(long, default_value = "+7999")]
    pub login_prefix: String,
    /// First customer number n.
    #[arg(long, default_value_t = 1)]
    pub first_customer: u32,
    /// Customers to log in as (K); sockets are spread over them round robin.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    #[arg(long, default_value = "arbat-demo", hide_default_value = true)]
    pub password: String,
    /// Live WebSockets (N), spread over the customers; 0 skips the live phases.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Warm-up of each phase, seconds (excluded from every figure).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Measurement window of each phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Changes in flight (published, not yet delivered to every socket) in the max phase.
    #[arg(long, default_value_t = 256)]
    pub in_flight: u64,
    /// Changes/s of the latency phase [default: half of arbat's measured max].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Idle sockets for the density measurement (M); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    pub idle_sockets: usize,
    /// Seconds the idle sockets are held while server CPU is measured.
    #[arg(long, default_value_t = 5.0)]
    pub idle_hold: f64,
    /// Client sockets per 127.0.0.x source address (ephemeral ports: ~28k per address).
    #[arg(long, default_value_t = 20_000)]
    pub per_source: usize,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Partitions of the self-hosted node.
    #[arg(long, default_value_t = 64)]
    pub partitions: u32,
    /// How the baseline is fed.
    #[arg(long, value_enum, default_value_t = BaselinePublish::Jetstream)]
    pub baseline_publish: BaselinePublish,
    /// NATS for the baseline relay [default: a nats-server of its own]. Never the
    /// deployment's: the relay's changes would reach its customers.
    #[arg(long)]
    pub relay_nats_url: Option<String>,
    /// Skip the baseline (no ratios).
    #[arg(long)]
    pub no_baseline: bool,
    /// Peers driven by the same clients and publisher rate, besides the relay: nats-server's
    /// own WebSocket listener and nginx + nchan (skipped with a note when not installed).
    #[arg(long, value_delimiter = ',', default_value = "nats-ws,nchan")]
    pub peers: Vec<peers::Peer>,
    /// The nginx binary for the nchan peer.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// Print a progress line on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Folder for bench-live.md, bench-live.json and the plots.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

impl LiveArgs {
    /// The command line that reproduces this run, every setting explicit.
    pub fn command_line(&self) -> String {
        let mut c = String::new();
        if let Some(server) = std::env::var_os("ARBAT_NATS_SERVER") {
            c.push_str(&format!("ARBAT_NATS_SERVER={} ", server.to_string_lossy()));
        }
        c.push_str("arbat bench live");
        if let Some(url) = &self.url {
            c.push_str(&format!(
                " --url {url} --nats-url {}",
                self.nats_url.as_deref().unwrap_or_default()
            ));
        }
        c.push_str(&format!(
            " --login-prefix '{}' --first-customer {} --customers {} --sockets {} --warmup {} --duration {} --in-flight {}",
            self.login_prefix, self.first_customer, self.customers, self.sockets, self.warmup, self.duration, self.in_flight
        ));
        if let Some(rate) = self.rate {
            c.push_str(&format!(" --rate {rate}"));
        }
        c.push_str(&format!(
            " --idle-sockets {} --idle-hold {} --per-source {} --connect-concurrency {} --partitions {} --baseline-publish {}",
            self.idle_sockets,
            self.idle_hold,
            self.per_source,
            self.connect_concurrency,
            self.partitions,
            match self.baseline_publish {
                BaselinePublish::Jetstream => "jetstream",
                BaselinePublish::Core => "core",
            }
        ));
        if let Some(url) = &self.relay_nats_url {
            c.push_str(&format!(" --relay-nats-url {url}"));
        }
        if self.no_baseline {
            c.push_str(" --no-baseline");
        }
        let peers: Vec<&str> = self.peers.iter().map(|p| p.name()).collect();
        c.push_str(&format!(" --peers '{}'", peers.join(",")));
        if self.nginx != std::path::Path::new("nginx") {
            c.push_str(&format!(" --nginx {}", self.nginx.display()));
        }
        c.push_str(&format!(" --out {}", self.out.display()));
        c
    }
}

/// Runs a bench command; `bench live` returns its report (also written to `--out`).
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    match args.command {
        BenchCommand::Live(live) => run_live(live).await,
        BenchCommand::Auth(args) => {
            auth::run_auth(args).await?;
            Ok(Report::default())
        }
        BenchCommand::Idle(args) => idle::run_idle(args).await,
        BenchCommand::Activation(args) => {
            activation::run_activation(args).await?;
            Ok(Report::default())
        }
        BenchCommand::Scale(args) => {
            scale::run_scale(args).await?;
            Ok(Report::default())
        }
        BenchCommand::Payments(args) => {
            payments::run_payments(args).await?;
            Ok(Report::default())
        }
        BenchCommand::Mixed(args) => {
            mixed::run_mixed(args).await?;
            Ok(Report::default())
        }
        BenchCommand::Relay(relay) => {
            relay::serve(relay).await?;
            Ok(Report::default())
        }
    }
}

/// About the size of a `balance_changed` change body.
const RAW_NATS_PAYLOAD_BYTES: usize = 256;

/// The `arbat` binary to self-host: `--arbat-bin`, else this executable.
pub fn arbat_bin(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe().context("locating this executable (pass --arbat-bin)"),
    }
}

/// Logins `<prefix><n, 7 digits>` for n in `first..first + count` (at least one).
pub fn demo_logins(prefix: &str, first: u32, count: u32) -> Vec<String> {
    (first..first + count.max(1))
        .map(|n| format!("{prefix}{n:07}"))
        .collect()
}

impl LiveArgs {
    fn connect(&self) -> ConnectSettings {
        ConnectSettings {
            per_source: self.per_source,
            concurrency: self.connect_concurrency,
        }
    }

    fn idle(&self) -> IdleSettings {
        IdleSettings {
            sockets: self.idle_sockets,
            steps: 1,
            hold_s: self.idle_hold,
            connect: self.connect(),
        }
    }
}

/// The live phases (max, then rate) against one target; returns its scenarios.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::explicit_counter_loop)]
async fn live_target(
    target: &str,
    endpoint: &Endpoint,
    customers: &[Customer],
    tokens: &[String],
    via: Via,
    wire: Wire,
    run_tag: &str,
    first_phase: usize,
    rate: Option<f64>,
    clock: Clock,
    args: &LiveArgs,
) -> anyhow::Result<Vec<Scenario>> {
    tracing::info!(target, sockets = args.sockets, "live path");
    let sink = Sink::new(clock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let opened = open_sockets_with(
        wire,
        endpoint,
        tokens,
        args.sockets,
        &sink,
        &stop_rx,
        args.connect(),
    )
    .await;
    if opened.handles.is_empty() {
        bail!(
            "{target}: no socket opened: {}",
            opened.first_error.unwrap_or_default()
        );
    }
    let open = opened.handles.len();
    wait_live(&sink, open as u64, Duration::from_secs(60)).await?;
    // Publish only for customers with sockets; fanout = their sockets.
    let (customers, fanout): (Vec<Customer>, Vec<u64>) = customers
        .iter()
        .cloned()
        .zip(opened.per_token.iter().copied())
        .filter(|(_, n)| *n > 0)
        .unzip();
    let avg_fanout = open as f64 / customers.len() as f64;
    let publisher = Publisher {
        via,
        customers,
        fanout,
        run: run_tag.to_owned(),
        sink: sink.clone(),
    };
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let measure = Duration::from_secs_f64(args.duration.max(0.1));
    let mut scenarios = Vec::new();

    let plans = [
        Mode::Max {
            in_flight: args.in_flight.max(1),
        },
        Mode::Rate(0.0),
    ];
    for (phase, mode) in (first_phase..).zip(plans) {
        let mode = match mode {
            Mode::Rate(_) => {
                let max_changes = scenarios
                    .first()
                    .map_or(0.0, |s: &Scenario| s.events_per_s / avg_fanout);
                let rate = rate.or(args.rate).unwrap_or(max_changes / 2.0);
                if rate < 1.0 {
                    break;
                }
                Mode::Rate(rate)
            }
            max => max,
        };
        let closed_before = sink.closed.load(Ordering::Acquire);
        let plan = PhasePlan {
            phase,
            mode,
            warmup,
            measure,
        };
        tracing::info!(target, ?mode, "phase");
        let sampler = progress::Sampler::start(
            sink.clone(),
            phase,
            format!(
                "{target} {}",
                if matches!(mode, Mode::Max { .. }) {
                    "max"
                } else {
                    "rate"
                }
            ),
            progress::enabled(args.progress),
        );
        let out = publisher.run_phase(&plan).await;
        let timeline = sampler.finish().await;
        let delivered = publisher
            .drain(
                phase,
                out.expected_frames,
                Duration::from_secs(5),
                Duration::from_secs(60),
            )
            .await;
        let mut scenario = Scenario {
            target: target.to_owned(),
            mode: match mode {
                Mode::Max { .. } => "max".into(),
                Mode::Rate(_) => "rate".into(),
            },
            target_changes_per_s: match mode {
                Mode::Rate(rate) => Some(rate),
                Mode::Max { .. } => None,
            },
            sockets: open,
            customers: publisher.customers.len(),
            window_s: out.window_s,
            changes_per_s: out.published_in_window as f64 / measure.as_secs_f64(),
            events_per_s: if out.window_s > 0.0 {
                out.frames_in_window as f64 / out.window_s
            } else {
                0.0
            },
            latency: sink.latency(phase).summary(),
            ratio_to_baseline: None,
            p99_ratio_to_baseline: None,
            published: out.published,
            publish_errors: out.errors,
            expected_frames: out.expected_frames,
            delivered_frames: delivered,
            sockets_closed: sink.closed.load(Ordering::Acquire) - closed_before,
            notes: Vec::new(),
            timeline,
        };
        if let Some(reason) = out.stopped_early {
            scenario.notes.push(format!("stopped early: {reason}"));
        }
        if out.window_s < 0.5 * measure.as_secs_f64() {
            scenario.notes.push(format!(
                "the publisher was blocked for most of the window (measured {:.2} s of {:.2} s): publish acknowledgements stalled",
                out.window_s,
                measure.as_secs_f64()
            ));
        }
        if let Some(error) = out.first_error {
            scenario
                .notes
                .push(format!("{} publish error(s), first: {error}", out.errors));
        }
        if scenario.lost_frames() > 0 {
            scenario.notes.push(format!(
                "{} of {} expected frames never arrived",
                scenario.lost_frames(),
                scenario.expected_frames
            ));
        }
        if scenario.sockets_closed > 0 {
            scenario.notes.push(format!(
                "{} socket(s) closed by the server: {:?}",
                scenario.sockets_closed,
                sink.close_reasons()
            ));
        }
        if matches!(mode, Mode::Max { .. }) {
            scenario.notes.push(format!(
                "closed loop, {} changes in flight; latency includes that queue",
                args.in_flight
            ));
        }
        tracing::info!(
            target,
            events_per_s = scenario.events_per_s,
            p99_ms = scenario.latency.p99_ms,
            lost = scenario.lost_frames(),
            "phase done"
        );
        scenarios.push(scenario);
    }
    close_all(stop_tx, opened.handles).await;
    Ok(scenarios)
}

async fn relay_via(relay: &RelayProcess, how: BaselinePublish) -> anyhow::Result<Via> {
    baseline_via(&relay.nats_url, how).await
}

/// The baselines' publisher on their own NATS: JetStream (a stream like the node's) or core.
async fn baseline_via(nats_url: &str, how: BaselinePublish) -> anyhow::Result<Via> {
    let client = async_nats::connect(nats_url)
        .await
        .context("connecting to the baseline's NATS")?;
    Ok(match how {
        BaselinePublish::Core => Via::Core(client),
        BaselinePublish::Jetstream => {
            let js = async_nats::jetstream::new(client);
            // The node's ABS_EVENTS settings: file storage, deduplication by Nats-Msg-Id.
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "BENCH_RELAY".into(),
                subjects: vec!["abs.evt.*".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(3600),
                max_age: Duration::from_secs(3600),
                ..Default::default()
            })
            .await
            .context("creating the baseline's stream")?;
            Via::JetStream(js)
        }
    })
}

async fn run_live(args: LiveArgs) -> anyhow::Result<Report> {
    let started_at = time::OffsetDateTime::now_utc();
    let clock = Clock::default();
    let run_tag = format!("{:x}", started_at.unix_timestamp_nanos() / 1_000_000);
    let want_files = 2 * (args.idle_sockets.max(args.sockets) as u64) + 10_000;
    let nofile = cluster::raise_nofile(want_files);
    let arbat_bin = match &args.arbat_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating this executable (pass --arbat-bin)")?,
    };
    let mut report = Report {
        title: "Arbat live-path benchmark".into(),
        command: args.command_line(),
        started_at: started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mode: if args.url.is_some() {
            "remote".into()
        } else {
            "self-hosted".into()
        },
        settings: serde_json::to_value(&args)?,
        ..Default::default()
    };
    report.notes.push(format!(
        "open-file limit of the bench (inherited by the processes it starts): {nofile}"
    ));
    if nofile < want_files {
        report.notes.push(format!("wanted {want_files} open files; raise with `ulimit -n {want_files}` (as root) before the run"));
    }

    // The node: self-hosted or given.
    let hosted = match &args.url {
        Some(_) => None,
        None => {
            tracing::info!(bin = %arbat_bin.display(), "starting nats-server, PostgreSQL database and arbat serve");
            Some(SelfHosted::start(&arbat_bin, args.partitions, Duration::from_secs(90)).await?)
        }
    };
    let (url, nats_url) = match (&hosted, &args.url, &args.nats_url) {
        (Some(h), _, _) => (h.url.clone(), h.nats.url()),
        (None, Some(url), Some(nats)) => (url.clone(), nats.clone()),
        _ => bail!("--url needs --nats-url"),
    };
    let logins: Vec<String> = (args.first_customer..args.first_customer + args.customers.max(1))
        .map(|n| format!("{}{n:07}", args.login_prefix))
        .collect();
    let customers = clients::login_all(&url, &logins, &args.password, 4).await?;
    let node_tokens: Vec<String> = customers.iter().map(|c| c.token.clone()).collect();
    let relay_tokens: Vec<String> = customers.iter().map(|c| c.customer_id.clone()).collect();
    let node_endpoint = Endpoint::for_node(&url).await?;
    let node_pid = hosted.as_ref().map(|h| h.node.pid());
    let relay = if args.no_baseline {
        None
    } else {
        Some(RelayProcess::start(&arbat_bin, args.relay_nats_url.clone()).await?)
    };

    // Idle density first, on fresh processes (memory freed by live phases would hide growth).
    if args.idle_sockets > 0 {
        match node_pid {
            Some(pid) => report.idle.push(
                idle_density(
                    "arbat",
                    &node_endpoint,
                    &node_tokens,
                    pid,
                    clock,
                    args.idle(),
                )
                .await?,
            ),
            None => report.notes.push(
                "idle density: the node runs elsewhere, its memory cannot be read; skipped".into(),
            ),
        }
        if let Some(relay) = &relay {
            let endpoint = Endpoint::for_relay(relay.addr);
            report.idle.push(
                idle_density(
                    "relay",
                    &endpoint,
                    &relay_tokens,
                    relay.process.pid(),
                    clock,
                    args.idle(),
                )
                .await?,
            );
        }
    }

    // The live path, then the baseline at the same absolute rate.
    if args.sockets > 0 {
        let nats = async_nats::connect(&nats_url)
            .await
            .with_context(|| format!("connecting to {nats_url}"))?;
        let via = Via::JetStream(async_nats::jetstream::new(nats));
        let arbat = live_target(
            "arbat",
            &node_endpoint,
            &customers,
            &node_tokens,
            via,
            Wire::Arbat,
            &run_tag,
            0,
            None,
            clock,
            &args,
        )
        .await?;
        let rate = arbat.iter().find_map(|s| s.target_changes_per_s);
        report.scenarios.extend(arbat);
        if let Some(relay) = &relay {
            let via = relay_via(relay, args.baseline_publish).await?;
            let endpoint = Endpoint::for_relay(relay.addr);
            let baseline = live_target(
                "relay",
                &endpoint,
                &customers,
                &relay_tokens,
                via,
                Wire::Arbat,
                &run_tag,
                4,
                rate,
                clock,
                &args,
            )
            .await?;
            report.scenarios.extend(baseline);
        }
        let mut peers = args.peers.clone();
        peers.dedup();
        for peer in peers {
            let scenarios = match peer {
                Peer::None => continue,
                Peer::NatsWs => {
                    let server = NatsWsPeer::start().await?;
                    let via = baseline_via(&server.nats.url(), args.baseline_publish).await?;
                    live_target(
                        "nats-ws",
                        &server.endpoint(),
                        &customers,
                        &relay_tokens,
                        via,
                        Wire::NatsWs,
                        &run_tag,
                        2,
                        rate,
                        clock,
                        &args,
                    )
                    .await?
                }
                Peer::Nchan => match NchanPeer::start(&args.nginx, args.sockets).await? {
                    Ok(server) => {
                        report.notes.push(
                            "nchan is fed over its HTTP publisher endpoint and keeps messages in memory (nothing synced), like a core-NATS-fed baseline".into(),
                        );
                        let via = Via::Http {
                            client: reqwest::Client::new(),
                            base: server.publish_base(),
                        };
                        live_target(
                            "nchan",
                            &server.endpoint(),
                            &customers,
                            &relay_tokens,
                            via,
                            Wire::Nchan,
                            &run_tag,
                            6,
                            rate,
                            clock,
                            &args,
                        )
                        .await?
                    }
                    Err(reason) => {
                        report.notes.push(format!("peer nchan skipped: {reason}"));
                        continue;
                    }
                },
            };
            report.scenarios.extend(scenarios);
        }
    }
    // The raw NATS pub→sub rate on a server of its own, same payload size as a change.
    if args.sockets > 0 && !args.no_baseline {
        let raw_server = nodes::BenchNats::start(false).await?;
        let raw = peers::raw_nats_rate(
            &raw_server.url(),
            RAW_NATS_PAYLOAD_BYTES,
            Duration::from_secs_f64(args.duration.max(0.1)),
        )
        .await?;
        report.baselines.push(report::BaselineFigure {
            name: "raw NATS pub→sub".into(),
            value: raw,
            unit: "messages/s".into(),
            note: format!(
                "core NATS, one publisher and one subscriber connection, {RAW_NATS_PAYLOAD_BYTES}-byte payloads, bounded in flight"
            ),
        });
    }
    report.compute_ratios();
    if let Some(mut hosted) = hosted {
        hosted.node.check_running()?;
        let warnings = std::fs::read_to_string(&hosted.node.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count();
        if warnings > 0 {
            report.notes.push(format!(
                "the node logged {warnings} WARN/ERROR line(s); last lines:\n\n```\n{}\n```",
                hosted.node.log_tail(15)
            ));
        }
        hosted.node.stop(Duration::from_secs(10));
    }
    report.notes.push(format!(
        "baseline fed by {}; the relay is a separate process with its own nats-server unless --relay-nats-url",
        match args.baseline_publish {
            BaselinePublish::Jetstream => "JetStream publish (same publisher and file storage as the live path)",
            BaselinePublish::Core => "core NATS publish (nothing stored)",
        }
    ));
    report.write(&args.out, "bench-live")?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: BenchCommand,
    }

    #[test]
    fn command_line_round_trips() {
        let cli = Cli::try_parse_from([
            "bench",
            "live",
            "--sockets",
            "7",
            "--rate",
            "50",
            "--no-baseline",
        ])
        .unwrap();
        let BenchCommand::Live(args) = cli.command else {
            panic!("not live")
        };
        assert_eq!(args.sockets, 7);
        let line = args.command_line();
        let words: Vec<String> = line
            .split_whitespace()
            .skip_while(|w| *w != "arbat")
            .skip(2)
            .map(|w| w.trim_matches('\'').to_owned())
            .collect();
        let again = Cli::try_parse_from(std::iter::once("bench".to_owned()).chain(words)).unwrap();
        let BenchCommand::Live(again) = again.command else {
            panic!("not live")
        };
        assert_eq!(again.rate, Some(50.0));
        assert!(again.no_baseline);
        assert_eq!(again.command_line(), line);
        assert!(
            Cli::try_parse_from(["bench", "live", "--url", "http://x:1"]).is_err(),
            "--url needs --nats-url"
        );
    }
}
