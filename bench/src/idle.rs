//! Idle density: ramp to N idle authenticated, subscribed sockets against one server process;
//! its memory at each step (VmRSS) and its CPU while they sit idle (heartbeats only).
//! Used by `arbat bench live` (before the live phases) and by `arbat bench idle`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;

use crate::clients::{self, Clock, Endpoint, Sink};
use crate::cluster::{self, RelayProcess, SelfHosted};
use crate::report::{IdleResult, Report};
use crate::sockets::{ConnectSettings, close_all, open_sockets, wait_live};

/// What one idle-density measurement does.
#[derive(Clone, Copy, Debug)]
pub struct IdleSettings {
    pub sockets: usize,
    /// Steps of the ramp; memory is read after each.
    pub steps: usize,
    /// Seconds the sockets are held while CPU is measured.
    pub hold_s: f64,
    pub connect: ConnectSettings,
}

/// Ramps to `settings.sockets` idle sockets against the server process `pid`.
pub async fn idle_density(
    target: &str,
    endpoint: &Endpoint,
    tokens: &[String],
    pid: u32,
    clock: Clock,
    settings: IdleSettings,
) -> anyhow::Result<IdleResult> {
    tracing::info!(target, sockets = settings.sockets, "idle density");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = cluster::rss_kib(pid)?;
    let sink = Sink::new(clock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let steps = settings.steps.clamp(1, 100);
    let mut handles = Vec::with_capacity(settings.sockets);
    let mut failures = 0;
    let mut first_error = None;
    let mut took = Duration::ZERO;
    let mut ramp = Vec::with_capacity(steps);
    let mut live = Ok(());
    for step in 1..=steps {
        let want = settings.sockets * step / steps;
        let count = want.saturating_sub(handles.len() + failures);
        let opened = open_sockets(endpoint, tokens, count, &sink, &stop_rx, settings.connect).await;
        handles.extend(opened.handles);
        failures += opened.failures;
        took += opened.took;
        if first_error.is_none() {
            first_error = opened.first_error;
        }
        live = wait_live(&sink, handles.len() as u64, Duration::from_secs(60)).await;
        // Let allocations settle before reading memory.
        tokio::time::sleep(Duration::from_millis(if step == steps {
            2000
        } else {
            500
        }))
        .await;
        ramp.push((handles.len(), cluster::rss_kib(pid)?));
        if live.is_err() {
            break;
        }
    }
    let open = handles.len();
    let rss_after = ramp.last().map_or(rss_before, |(_, rss)| *rss);
    let hold = Duration::from_secs_f64(settings.hold_s.max(0.0));
    let cpu_before = cluster::cpu_ticks(pid)?;
    let held = Instant::now();
    tokio::time::sleep(hold).await;
    let cpu_after = cluster::cpu_ticks(pid)?;
    let held_s = held.elapsed().as_secs_f64();
    let still_open = open.saturating_sub(sink.closed.load(Ordering::Acquire) as usize);
    close_all(stop_tx, handles).await;
    let mut result = IdleResult {
        target: target.to_owned(),
        sockets_requested: settings.sockets,
        sockets_open: still_open,
        connect_failures: failures,
        connect_s: took.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_socket: if still_open > 0 {
            rss_after.saturating_sub(rss_before) as f64 / still_open as f64
        } else {
            0.0
        },
        idle_cpu_percent: if held_s > 0.0 {
            (cpu_after.saturating_sub(cpu_before)) as f64 / cluster::TICKS_PER_S / held_s * 100.0
        } else {
            0.0
        },
        idle_hold_s: held_s,
        first_error,
        ramp,
    };
    if let Err(error) = live {
        result.first_error.get_or_insert(format!("{error:#}"));
    }
    // Let the server settle after the mass close before anything else is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(result)
}

/// `arbat bench idle`: a self-hosted node and the baseline relay, each ramped to N idle sockets.
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct IdleArgs {
    /// The `arbat` binary to self-host [default: this executable].
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// Customers to log in as; sockets are spread over them round robin.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    /// Idle sockets to ramp to (N).
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Steps of the ramp (memory is read after each).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Seconds the sockets are held while server CPU (heartbeats) is measured.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Client sockets per 127.0.0.x source address.
    #[arg(long, default_value_t = 20_000)]
    pub per_source: usize,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    #[arg(long, default_value_t = 64)]
    pub partitions: u32,
    /// Skip the baseline relay.
    #[arg(long)]
    pub no_baseline: bool,
    /// Folder for bench-idle.md, bench-idle.json and bench-idle-memory.svg.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

impl IdleArgs {
    pub fn command_line(&self) -> String {
        let mut c = crate::report::nats_env_prefix();
        c.push_str(&format!(
            "arbat bench idle --customers {} --sockets {} --steps {} --hold {} --per-source {} --connect-concurrency {} --partitions {}",
            self.customers,
            self.sockets,
            self.steps,
            self.hold,
            self.per_source,
            self.connect_concurrency,
            self.partitions
        ));
        if self.no_baseline {
            c.push_str(" --no-baseline");
        }
        c.push_str(&format!(" --out {}", self.out.display()));
        c
    }
}

pub async fn run_idle(args: IdleArgs) -> anyhow::Result<Report> {
    let clock = Clock::default();
    let nofile = cluster::raise_nofile(2 * args.sockets as u64 + 10_000);
    let arbat_bin = crate::arbat_bin(args.arbat_bin.as_ref())?;
    let mut report = Report::new(
        "Arbat idle-density benchmark",
        args.command_line(),
        serde_json::to_value(&args)?,
    );
    report.notes.push(format!(
        "open-file limit of the bench (inherited by the processes it starts): {nofile}"
    ));
    let settings = IdleSettings {
        sockets: args.sockets,
        steps: args.steps,
        hold_s: args.hold,
        connect: ConnectSettings {
            per_source: args.per_source,
            concurrency: args.connect_concurrency,
        },
    };
    let mut hosted =
        SelfHosted::start(&arbat_bin, args.partitions, Duration::from_secs(90)).await?;
    let logins = crate::demo_logins("+7999", 1, args.customers);
    let customers = clients::login_all(&hosted.url, &logins, "arbat-demo", 4).await?;
    let tokens: Vec<String> = customers.iter().map(|c| c.token.clone()).collect();
    let endpoint = Endpoint::for_node(&hosted.url).await?;
    report.idle.push(
        idle_density(
            "arbat",
            &endpoint,
            &tokens,
            hosted.node.pid(),
            clock,
            settings,
        )
        .await?,
    );
    hosted.node.check_running()?;
    if !args.no_baseline {
        let relay = RelayProcess::start(&arbat_bin, None)
            .await
            .context("starting the baseline relay")?;
        let relay_tokens: Vec<String> = customers.iter().map(|c| c.customer_id.clone()).collect();
        report.idle.push(
            idle_density(
                "relay",
                &Endpoint::for_relay(relay.addr),
                &relay_tokens,
                relay.process.pid(),
                clock,
                settings,
            )
            .await?,
        );
    }
    report.notes.push(
        "heartbeat CPU: server CPU while the sockets sat idle (the node pings every socket at its --ws-ping-interval-ms)"
            .into(),
    );
    hosted.node.stop(Duration::from_secs(10));
    report.write(&args.out, "bench-idle")?;
    Ok(report)
}
