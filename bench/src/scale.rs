//! `arbat bench scale`: the live path with 1, 2 and 4 self-hosted nodes (one NATS, one
//! PostgreSQL database alongside), each node in a CPU group of its own with an equal quota.
//!
//! For each node count the tool starts a fresh cluster, waits until the partitions are split
//! evenly, logs the customers in and opens every customer's sockets on the node that owns the
//! customer's partition (`kernel::partition_of`, what `/readyz` reports), so the load is
//! spread as the cluster spreads it. The max phase of the live path (closed loop, in-flight
//! changes proportional to the nodes) gives the throughput; during its window the tool reads
//! the CPU time of every process it started (`/proc/<pid>/stat`: nodes, nats-server and the
//! PostgreSQL backends of the database) and nats-server's `/varz` message counters, so the
//! cost per change can be compared as nodes are added. Linear scaling keeps it flat.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::sync::watch;

use crate::clients::{self, Clock, Customer, Endpoint, Sink};
use crate::cluster;
use crate::nodes::{Cluster, CpuLimits, Varz};
use crate::progress::{Sampler, TimelinePoint};
use crate::publisher::{Mode, PhasePlan, Publisher, Via};
use crate::report::{LatencySummary, cores, nats_env_prefix, now_rfc3339, write_files};
use crate::sockets::{ConnectSettings, close_all, open_sockets, wait_live};
use crate::svg::{Chart, Series};

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ScaleArgs {
    /// The `arbat` binary to self-host [default: this executable].
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// Node counts to run, in order (at most 8).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub nodes: Vec<usize>,
    /// CPU quota of each node, in CPUs (cgroup v1 CFS quota; 0 = no limit). Below what the
    /// rest of the pipeline allows, so that the nodes are the limit (0.1 on 2 cores).
    #[arg(long, default_value_t = 0.1)]
    pub cpu_per_node: f64,
    /// Customers (demo logins) whose changes are published.
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    /// Live sockets per customer, on the node that owns the customer.
    #[arg(long, default_value_t = 2)]
    pub sockets_per_customer: usize,
    /// Warm-up of each run, seconds (excluded).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Measurement window of each run, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Changes in flight per node in the closed loop.
    #[arg(long, default_value_t = 128)]
    pub in_flight_per_node: u64,
    #[arg(long, default_value_t = 64)]
    pub partitions: u32,
    /// Print a progress line on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Folder for bench-scale.md, bench-scale.json and the plots.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

impl ScaleArgs {
    pub fn command_line(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.to_string()).collect();
        format!(
            "{}arbat bench scale --nodes {} --cpu-per-node {} --customers {} --sockets-per-customer {} --warmup {} --duration {} --in-flight-per-node {} --partitions {} --out {}",
            nats_env_prefix(),
            nodes.join(","),
            self.cpu_per_node,
            self.customers,
            self.sockets_per_customer,
            self.warmup,
            self.duration,
            self.in_flight_per_node,
            self.partitions,
            self.out.display()
        )
    }
}

/// One node count.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleRow {
    pub nodes: usize,
    /// Partitions owned by each node during the run.
    pub partitions_per_node: Vec<usize>,
    pub sockets: usize,
    pub customers: usize,
    pub window_s: f64,
    /// Changes delivered (to every socket of the customer) per second in the window.
    pub changes_per_s: f64,
    /// Event frames received per second in the window.
    pub frames_per_s: f64,
    pub changes_per_s_per_node: f64,
    /// changes/s(n) ÷ (n × changes/s(1)).
    pub efficiency: Option<f64>,
    pub latency: LatencySummary,
    /// CPU seconds used in the window by role: `nodes`, `nats`, `postgres`.
    pub cpu_s: BTreeMap<String, f64>,
    /// CPU milliseconds per delivered change by role, and `total` (the bench client excluded).
    pub cpu_ms_per_change: BTreeMap<String, f64>,
    /// CPU seconds of the bench process itself (clients and publisher), for reference.
    pub client_cpu_s: f64,
    /// nats-server messages in/out in the window, and per delivered change.
    pub bus: Varz,
    pub bus_msgs_per_change: f64,
    pub bus_in_per_change: f64,
    pub bus_out_per_change: f64,
    /// CFS periods in which the nodes were throttled, and the time, in the window.
    pub throttled_periods: u64,
    pub throttled_ms: f64,
    pub published: u64,
    pub expected_frames: u64,
    pub delivered_frames: u64,
    /// Every process of the run had exited and the CPU groups were gone after it.
    pub left_nothing_behind: bool,
    pub notes: Vec<String>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleReport {
    pub command: String,
    pub started_at: String,
    pub cores: usize,
    pub cpu_limit: String,
    pub settings: serde_json::Value,
    pub rows: Vec<ScaleRow>,
    pub notes: Vec<String>,
}

/// What one window's resource counters read.
#[derive(Clone, Debug, Default)]
struct Counters {
    ticks: BTreeMap<String, u64>,
    client_ticks: u64,
    varz: Varz,
    throttled: (u64, u64),
}

fn read_counters(processes: &[(String, u32)], varz: Varz, throttled: (u64, u64)) -> Counters {
    let mut ticks = BTreeMap::new();
    for (role, pid) in processes {
        // A backend that exited meanwhile reads as missing: its last interval is lost.
        *ticks.entry(role.clone()).or_insert(0) += cluster::cpu_ticks(*pid).unwrap_or(0);
    }
    Counters {
        ticks,
        client_ticks: cluster::cpu_ticks(std::process::id()).unwrap_or(0),
        varz,
        throttled,
    }
}

pub async fn run_scale(args: ScaleArgs) -> anyhow::Result<ScaleReport> {
    if args.nodes.is_empty() || args.nodes.len() > clients::MAX_PHASES {
        bail!("--nodes takes 1 to {} node counts", clients::MAX_PHASES);
    }
    if args.nodes.contains(&0) {
        bail!("--nodes: a node count is at least 1");
    }
    let arbat_bin = crate::arbat_bin(args.arbat_bin.as_ref())?;
    let clock = Clock::default();
    let sockets = args.customers as usize * args.sockets_per_customer;
    let nofile = cluster::raise_nofile(2 * sockets as u64 + 10_000);
    let probe = CpuLimits::probe(Some(args.cpu_per_node));
    let mut report = ScaleReport {
        command: args.command_line(),
        started_at: now_rfc3339(),
        cores: cores(),
        cpu_limit: probe.kind.describe(),
        settings: serde_json::to_value(&args)?,
        ..Default::default()
    };
    drop(probe);
    report.notes.push(format!(
        "open-file limit of the bench (inherited by the processes it starts): {nofile}"
    ));
    for (phase, &nodes) in args.nodes.iter().enumerate() {
        tracing::info!(nodes, "scale run");
        let row = run_one(&arbat_bin, nodes, phase, clock, &args).await?;
        tracing::info!(
            nodes,
            changes_per_s = row.changes_per_s,
            cpu_ms_per_change = row.cpu_ms_per_change.get("total").copied().unwrap_or(0.0),
            "scale run done"
        );
        report.rows.push(row);
    }
    report.compute_efficiency();
    report.notes.push(
        "the machine may be shared while it runs: compare the rows of one run (ratios), not absolute rates across runs"
            .into(),
    );
    println!("{}", report.table());
    write_files(
        &args.out,
        "bench-scale",
        &report.markdown(),
        &serde_json::to_string_pretty(&report)?,
        &report.svgs(),
    )?;
    Ok(report)
}

async fn run_one(
    arbat_bin: &std::path::Path,
    nodes: usize,
    phase: usize,
    clock: Clock,
    args: &ScaleArgs,
) -> anyhow::Result<ScaleRow> {
    let limits = CpuLimits::probe(Some(args.cpu_per_node));
    let cgroup_root = limits.root().map(|p| p.to_owned());
    let cluster = Cluster::start(
        arbat_bin,
        nodes,
        args.partitions,
        limits,
        false,
        Duration::from_secs(180),
    )
    .await?;
    let mut row = ScaleRow {
        nodes,
        ..Default::default()
    };
    let result = measure(&cluster, phase, clock, args, &mut row).await;
    let pids: Vec<u32> = cluster.processes().iter().map(|(_, pid)| *pid).collect();
    let tails: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            let lines = std::fs::read_to_string(&n.process.log).unwrap_or_default();
            let warnings: Vec<&str> = lines
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                // Every self-hosted node says so at start; not news about the run.
                .filter(|l| !l.contains("DEVELOPMENT key"))
                .collect();
            match warnings.last() {
                Some(last) => format!(
                    "{}: {} WARN/ERROR line(s), last: `{}`",
                    n.id,
                    warnings.len(),
                    cluster::strip_ansi(last)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
                None => format!("{}: no WARN/ERROR line", n.id),
            }
        })
        .collect();
    drop(cluster);
    row.left_nothing_behind = pids
        .iter()
        .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(*pid))
        && cgroup_root.is_none_or(|root| !root.exists());
    if !row.left_nothing_behind {
        row.notes
            .push("some process or CPU group outlived the run".into());
    }
    result?;
    row.notes.push(tails.join("; "));
    Ok(row)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

async fn measure(
    cluster: &Cluster,
    phase: usize,
    clock: Clock,
    args: &ScaleArgs,
    row: &mut ScaleRow,
) -> anyhow::Result<()> {
    let nodes = cluster.nodes.len();
    let logins = crate::demo_logins("+7999", 1, args.customers);
    let customers = clients::login_all(&cluster.nodes[0].url, &logins, "arbat-demo", 4).await?;
    // Which node owns each partition now.
    let ownership = cluster.ownership().await;
    row.partitions_per_node = ownership
        .iter()
        .map(|o| o.as_ref().map_or(0, |s| s.len()))
        .collect();
    let owner_of = |customer: &Customer| -> usize {
        let partition = kernel::partition_of(&customer.customer_id, cluster.partitions);
        ownership
            .iter()
            .position(|o| o.as_ref().is_some_and(|s| s.contains(&partition)))
            .unwrap_or(0)
    };
    let sink = Sink::new(clock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let connect = ConnectSettings {
        per_source: 20_000,
        concurrency: 64,
    };
    let mut handles = Vec::new();
    let mut with_sockets: Vec<(Customer, u64)> = Vec::new();
    for node in 0..nodes {
        let mine: Vec<&Customer> = customers.iter().filter(|c| owner_of(c) == node).collect();
        if mine.is_empty() {
            continue;
        }
        let tokens: Vec<String> = mine.iter().map(|c| c.token.clone()).collect();
        let endpoint = Endpoint::for_node(&cluster.nodes[node].url).await?;
        let opened = open_sockets(
            &endpoint,
            &tokens,
            tokens.len() * args.sockets_per_customer.max(1),
            &sink,
            &stop_rx,
            connect,
        )
        .await;
        if let Some(error) = opened.first_error {
            row.notes.push(format!(
                "node {node}: {} socket(s) failed, first: {error}",
                opened.failures
            ));
        }
        handles.extend(opened.handles);
        with_sockets.extend(
            mine.into_iter()
                .cloned()
                .zip(opened.per_token)
                .filter(|(_, n)| *n > 0),
        );
    }
    if handles.is_empty() {
        bail!("{nodes} node(s): no socket opened");
    }
    row.sockets = handles.len();
    wait_live(&sink, handles.len() as u64, Duration::from_secs(60)).await?;
    row.customers = with_sockets.len();
    let avg_fanout = row.sockets as f64 / row.customers.max(1) as f64;
    let nats = async_nats::connect(&cluster.nats.url())
        .await
        .context("connecting to the cluster's NATS")?;
    let (customers, fanout): (Vec<Customer>, Vec<u64>) = with_sockets.into_iter().unzip();
    let publisher = Publisher {
        via: Via::JetStream(async_nats::jetstream::new(nats)),
        customers,
        fanout,
        run: format!("scale{nodes}x{}", clock.now_ns()),
        sink: sink.clone(),
    };
    let plan = PhasePlan {
        phase,
        mode: Mode::Max {
            in_flight: (args.in_flight_per_node * nodes as u64).max(1),
        },
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
        measure: Duration::from_secs_f64(args.duration.max(0.1)),
    };
    // The counters are read at the window's edges, as the publisher sets them.
    let processes = cluster.processes();
    let monitor = cluster.nats.monitor_port;
    let limits_groups = cluster.limits.throttled_reader();
    let counter_sink = sink.clone();
    let counters = tokio::spawn(async move {
        let varz = |port: u16| async move { read_varz(port).await.unwrap_or_default() };
        let mut window = counter_sink.window(phase);
        while window.0 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            window = counter_sink.window(phase);
        }
        tokio::time::sleep_until(clock.instant_at(window.0).into()).await;
        let before = read_counters(&processes, varz(monitor).await, limits_groups.read());
        tokio::time::sleep_until(clock.instant_at(window.1).into()).await;
        let after = read_counters(&processes, varz(monitor).await, limits_groups.read());
        (before, after)
    });
    let sampler = Sampler::start(
        sink.clone(),
        phase,
        format!("{nodes} node(s)"),
        crate::progress::enabled(args.progress),
    );
    let out = publisher.run_phase(&plan).await;
    row.timeline = sampler.finish().await;
    let (before, after) = counters.await.context("the counter task failed")?;
    row.delivered_frames = publisher
        .drain(
            phase,
            out.expected_frames,
            Duration::from_secs(5),
            Duration::from_secs(60),
        )
        .await;
    close_all(stop_tx, handles).await;
    row.window_s = out.window_s;
    row.published = out.published;
    row.expected_frames = out.expected_frames;
    row.frames_per_s = if out.window_s > 0.0 {
        out.frames_in_window as f64 / out.window_s
    } else {
        0.0
    };
    row.changes_per_s = row.frames_per_s / avg_fanout.max(1e-9);
    row.changes_per_s_per_node = row.changes_per_s / nodes as f64;
    row.latency = sink.latency(phase).summary();
    let changes = (row.changes_per_s * row.window_s).max(1.0);
    let mut total_ms = 0.0;
    for (role, ticks) in &after.ticks {
        let used = ticks.saturating_sub(before.ticks.get(role).copied().unwrap_or(0));
        let seconds = used as f64 / cluster::TICKS_PER_S;
        row.cpu_s.insert(role.clone(), seconds);
        let ms = seconds * 1000.0 / changes;
        row.cpu_ms_per_change.insert(role.clone(), ms);
        total_ms += ms;
    }
    row.cpu_ms_per_change.insert("total".into(), total_ms);
    row.client_cpu_s =
        after.client_ticks.saturating_sub(before.client_ticks) as f64 / cluster::TICKS_PER_S;
    row.bus = after.varz.since(&before.varz);
    row.bus_in_per_change = row.bus.in_msgs as f64 / changes;
    row.bus_out_per_change = row.bus.out_msgs as f64 / changes;
    row.bus_msgs_per_change = row.bus_in_per_change + row.bus_out_per_change;
    row.throttled_periods = after.throttled.0.saturating_sub(before.throttled.0);
    row.throttled_ms = after.throttled.1.saturating_sub(before.throttled.1) as f64 / 1e6;
    if let Some(reason) = out.stopped_early {
        row.notes.push(format!("stopped early: {reason}"));
    }
    if out.window_s < 0.5 * plan.measure.as_secs_f64() {
        row.notes.push(format!(
            "the publisher was blocked for most of the window (measured {:.2} s of {:.2} s): publish acknowledgements stalled",
            out.window_s,
            plan.measure.as_secs_f64()
        ));
    }
    if let Some(error) = out.first_error {
        row.notes
            .push(format!("{} publish error(s), first: {error}", out.errors));
    }
    let lost = row.expected_frames.saturating_sub(row.delivered_frames);
    if lost > 0 {
        row.notes.push(format!(
            "{lost} of {} expected frames never arrived",
            row.expected_frames
        ));
    }
    let closed = sink.closed.load(std::sync::atomic::Ordering::Acquire);
    if closed > 0 {
        row.notes.push(format!(
            "{closed} socket(s) closed by the server: {:?}",
            sink.close_reasons()
        ));
    }
    Ok(())
}

async fn read_varz(port: u16) -> anyhow::Result<Varz> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/varz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    Ok(Varz {
        in_msgs: body["in_msgs"].as_u64().unwrap_or(0),
        out_msgs: body["out_msgs"].as_u64().unwrap_or(0),
    })
}

impl ScaleReport {
    /// Efficiency of each row against the 1-node row's (or the smallest run's) per-node rate.
    pub fn compute_efficiency(&mut self) {
        let base = self
            .rows
            .iter()
            .min_by_key(|r| r.nodes)
            .map(|r| r.changes_per_s_per_node);
        for row in &mut self.rows {
            row.efficiency = base
                .filter(|b| *b > 0.0)
                .map(|b| row.changes_per_s_per_node / b);
        }
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:>5} {:>11} {:>14} {:>10} {:>12} {:>12} {:>12} {:>9}\n",
            "nodes",
            "changes/s",
            "per node",
            "effic.",
            "CPU ms/chg",
            "bus msg/chg",
            "p99 ms",
            "lost"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:>5} {:>11.0} {:>14.0} {:>10} {:>12.3} {:>12.2} {:>12.1} {:>9}\n",
                r.nodes,
                r.changes_per_s,
                r.changes_per_s_per_node,
                r.efficiency.map_or("—".into(), |e| format!("{e:.2}")),
                r.cpu_ms_per_change.get("total").copied().unwrap_or(0.0),
                r.bus_msgs_per_change,
                r.latency.p99_ms,
                r.expected_frames.saturating_sub(r.delivered_frames)
            ));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from("# Arbat scaling benchmark (`arbat bench scale`)\n\n");
        md.push_str(&format!(
            "Run at {} on {} core(s). CPU limit: {}.\n\nReproduce:\n\n```sh\n{}\n```\n\n",
            self.started_at, self.cores, self.cpu_limit, self.command
        ));
        md.push_str("Each row is a fresh cluster (nats-server, one PostgreSQL database, n `arbat serve` nodes) with the live path's closed loop (in-flight changes ∝ nodes); sockets connect to the node owning their customer. ");
        md.push_str("Efficiency = changes/s(n) ÷ (n × changes/s(1)). CPU per change counts every process the tool started (nodes, nats-server, PostgreSQL backends), not the bench client; bus messages are nats-server's `/varz` in + out.\n\n");
        md.push_str("| nodes | partitions per node | sockets | changes/s | per node | efficiency | frames/s | p50 ms | p99 ms | CPU ms/change (nodes / nats / pg / total) | bus msgs/change (in + out) | throttled | delivered / expected |\n");
        md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n");
        for r in &self.rows {
            let cpu = |role: &str| r.cpu_ms_per_change.get(role).copied().unwrap_or(0.0);
            md.push_str(&format!(
                "| {} | {:?} | {} | {:.0} | {:.0} | {} | {:.0} | {:.1} | {:.1} | {:.3} / {:.3} / {:.3} / **{:.3}** | {:.2} + {:.2} = **{:.2}** | {} periods, {:.0} ms | {} / {} |\n",
                r.nodes,
                r.partitions_per_node,
                r.sockets,
                r.changes_per_s,
                r.changes_per_s_per_node,
                r.efficiency.map_or("—".into(), |e| format!("{e:.2}")),
                r.frames_per_s,
                r.latency.p50_ms,
                r.latency.p99_ms,
                cpu("nodes"),
                cpu("nats"),
                cpu("postgres"),
                cpu("total"),
                r.bus_in_per_change,
                r.bus_out_per_change,
                r.bus_msgs_per_change,
                r.throttled_periods,
                r.throttled_ms,
                r.delivered_frames,
                r.expected_frames
            ));
        }
        md.push('\n');
        for r in &self.rows {
            md.push_str(&format!(
                "- {} node(s): bench client CPU {:.1} s in the {:.1} s window; left nothing behind: {}\n",
                r.nodes, r.client_cpu_s, r.window_s, r.left_nothing_behind
            ));
            for note in &r.notes {
                md.push_str(&format!("- {} node(s): {note}\n", r.nodes));
            }
        }
        md.push_str("\n## Plots\n\n");
        for (name, _) in self.svgs() {
            md.push_str(&format!("![{name}]({name})\n\n"));
        }
        if !self.notes.is_empty() {
            md.push_str("## Notes\n\n");
            for note in &self.notes {
                md.push_str(&format!("- {note}\n"));
            }
        }
        md.push_str("\n## Settings\n\n```json\n");
        md.push_str(&serde_json::to_string_pretty(&self.settings).unwrap_or_default());
        md.push_str("\n```\n");
        md
    }

    pub fn svgs(&self) -> Vec<(String, String)> {
        let nodes_series = |name: &str, value: &dyn Fn(&ScaleRow) -> Option<f64>| Series {
            name: name.to_owned(),
            points: self
                .rows
                .iter()
                .filter_map(|r| value(r).map(|v| (r.nodes as f64, v)))
                .collect(),
        };
        let node_ticks: Vec<f64> = self.rows.iter().map(|r| r.nodes as f64).collect();
        let throughput = Chart {
            title: "Throughput vs nodes".into(),
            x_label: "nodes".into(),
            y_label: "changes/s".into(),
            series: vec![
                nodes_series("measured", &|r| Some(r.changes_per_s)),
                nodes_series("linear (n × 1 node)", &|r| {
                    let base = self.rows.iter().min_by_key(|b| b.nodes)?;
                    Some(base.changes_per_s_per_node * r.nodes as f64)
                }),
            ],
            x_ticks: node_ticks.clone(),
        };
        let efficiency = Chart {
            title: "Scaling efficiency vs nodes".into(),
            x_label: "nodes".into(),
            y_label: "changes/s(n) ÷ (n × changes/s(1))".into(),
            series: vec![
                nodes_series("efficiency", &|r| r.efficiency),
                nodes_series("linear", &|_| Some(1.0)),
            ],
            x_ticks: node_ticks.clone(),
        };
        let cost = Chart {
            title: "CPU time per change vs nodes".into(),
            x_label: "nodes".into(),
            y_label: "CPU ms per change".into(),
            x_ticks: node_ticks.clone(),
            series: vec![
                nodes_series("CPU ms, total", &|r| {
                    r.cpu_ms_per_change.get("total").copied()
                }),
                nodes_series("CPU ms, nodes", &|r| {
                    r.cpu_ms_per_change.get("nodes").copied()
                }),
                nodes_series("CPU ms, nats", &|r| {
                    r.cpu_ms_per_change.get("nats").copied()
                }),
                nodes_series("CPU ms, postgres", &|r| {
                    r.cpu_ms_per_change.get("postgres").copied()
                }),
            ],
        };
        let bus = Chart {
            title: "Bus messages per change vs nodes".into(),
            x_label: "nodes".into(),
            y_label: "nats-server messages per change".into(),
            x_ticks: node_ticks,
            series: vec![
                nodes_series("in + out", &|r| Some(r.bus_msgs_per_change)),
                nodes_series("in", &|r| Some(r.bus_in_per_change)),
                nodes_series("out", &|r| Some(r.bus_out_per_change)),
            ],
        };
        let latency = Chart {
            title: "p99 latency per second, by node count".into(),
            x_label: "seconds into the run".into(),
            y_label: "ms".into(),
            series: self
                .rows
                .iter()
                .map(|r| Series {
                    name: format!("{} node(s)", r.nodes),
                    points: r
                        .timeline
                        .iter()
                        .filter(|p| p.p99_ms > 0.0)
                        .map(|p| (p.t_s, p.p99_ms))
                        .collect(),
                })
                .collect(),
            x_ticks: Vec::new(),
        };
        vec![
            ("bench-scale-throughput.svg".into(), throughput.render()),
            ("bench-scale-efficiency.svg".into(), efficiency.render()),
            ("bench-scale-cost.svg".into(), cost.render()),
            ("bench-scale-bus.svg".into(), bus.render()),
            ("bench-scale-latency.svg".into(), latency.render()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svg::well_formed;

    fn row(nodes: usize, changes_per_s: f64, cpu_ms: f64) -> ScaleRow {
        ScaleRow {
            nodes,
            changes_per_s,
            changes_per_s_per_node: changes_per_s / nodes as f64,
            cpu_ms_per_change: [
                ("total".to_owned(), cpu_ms),
                ("nodes".to_owned(), cpu_ms / 2.0),
            ]
            .into_iter()
            .collect(),
            bus_msgs_per_change: 6.0,
            expected_frames: 10,
            delivered_frames: 10,
            timeline: vec![TimelinePoint {
                t_s: 1.0,
                p99_ms: 5.0,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn efficiency_is_per_node_rate_over_the_single_node_rate() {
        let mut report = ScaleReport {
            command: "arbat bench scale --nodes 1,2,4".into(),
            rows: vec![
                row(1, 1000.0, 1.0),
                row(2, 1800.0, 1.1),
                row(4, 3000.0, 1.3),
            ],
            ..Default::default()
        };
        report.compute_efficiency();
        let efficiency: Vec<f64> = report.rows.iter().map(|r| r.efficiency.unwrap()).collect();
        assert_eq!(efficiency, vec![1.0, 0.9, 0.75]);
        let md = report.markdown();
        assert!(
            md.contains("```sh\narbat bench scale --nodes 1,2,4\n```"),
            "{md}"
        );
        assert!(md.contains("| 4 | [] | 0 | 3000 | 750 | 0.75 |"), "{md}");
        assert!(
            md.contains("![bench-scale-cost.svg](bench-scale-cost.svg)"),
            "{md}"
        );
        let svgs = report.svgs();
        assert_eq!(svgs.len(), 5);
        for (name, svg) in &svgs {
            well_formed(svg).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rows"][1]["efficiency"], 0.9);
        assert!(report.table().contains("0.75"));
    }

    #[test]
    fn no_rows_no_efficiency_and_no_panic() {
        let mut report = ScaleReport::default();
        report.compute_efficiency();
        for (_, svg) in report.svgs() {
            well_formed(&svg).unwrap();
        }
        let mut zero = ScaleReport {
            rows: vec![row(1, 0.0, 0.0), row(2, 10.0, 0.0)],
            ..Default::default()
        };
        zero.compute_efficiency();
        assert!(zero.rows.iter().all(|r| r.efficiency.is_none()));
    }
}
