//! Latency histograms and the report: a console table, Markdown and JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

pub use crate::progress::TimelinePoint;
use crate::svg::{Chart, Series};

/// Highest latency recorded: one minute, in microseconds (larger values saturate).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Publish→frame latencies in microseconds (3 significant figures).
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
        }
    }

    pub fn record_us(&mut self, micros: u64) {
        self.histogram
            .saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// Adds every sample of `other` (histograms of client shards are merged per phase).
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// The samples recorded since `earlier` (a copy of this histogram taken before).
    pub fn minus(&self, earlier: &Latency) -> Latency {
        let mut interval = self.clone();
        if interval.histogram.subtract(&earlier.histogram).is_err() {
            // `earlier` is not a prefix of this one: no interval can be told apart.
            interval.histogram.reset();
        }
        interval
    }

    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |q: f64| {
            if self.histogram.is_empty() {
                0.0
            } else {
                self.histogram.value_at_quantile(q) as f64 / 1000.0
            }
        };
        LatencySummary {
            samples: self.histogram.len(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if self.histogram.is_empty() {
                0.0
            } else {
                self.histogram.max() as f64 / 1000.0
            },
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// One measured phase against one target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scenario {
    /// `arbat` (the live path) or `relay` (the bare NATS→WebSocket baseline).
    pub target: String,
    /// `max` (closed loop, bounded in flight) or `rate` (open loop at a set rate).
    pub mode: String,
    /// Changes per second the open-loop schedule aimed at (`None` for `max`).
    pub target_changes_per_s: Option<f64>,
    pub sockets: usize,
    pub customers: usize,
    /// Seconds of the measurement window (warm-up excluded).
    pub window_s: f64,
    /// Changes published during the window, per second.
    pub changes_per_s: f64,
    /// Event frames received by all clients during the window, per second.
    pub events_per_s: f64,
    pub latency: LatencySummary,
    /// `events_per_s` divided by the baseline's in the comparable phase.
    pub ratio_to_baseline: Option<f64>,
    /// p99 latency divided by the baseline's in the comparable phase.
    pub p99_ratio_to_baseline: Option<f64>,
    /// Changes published in the whole phase (warm-up included) and their JetStream/flush errors.
    pub published: u64,
    pub publish_errors: u64,
    /// Frames the published changes should have produced, and frames that arrived.
    pub expected_frames: u64,
    pub delivered_frames: u64,
    /// Sockets the server closed during the phase.
    pub sockets_closed: u64,
    pub notes: Vec<String>,
    /// Rate and latency second by second (plotted).
    pub timeline: Vec<TimelinePoint>,
}

impl Scenario {
    pub fn label(&self) -> String {
        match self.target_changes_per_s {
            Some(rate) => format!("{} @ {:.0} changes/s", self.target, rate),
            None => format!("{} max", self.target),
        }
    }

    pub fn lost_frames(&self) -> u64 {
        self.expected_frames.saturating_sub(self.delivered_frames)
    }
}

/// Server memory for idle authenticated sockets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleResult {
    pub target: String,
    pub sockets_requested: usize,
    pub sockets_open: usize,
    pub connect_failures: usize,
    pub connect_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_socket: f64,
    /// Server CPU (user + system) while the sockets sat idle, in percent of one core.
    pub idle_cpu_percent: f64,
    pub idle_hold_s: f64,
    pub first_error: Option<String>,
    /// `(sockets open, VmRSS KiB)` after each step of the ramp.
    pub ramp: Vec<(usize, u64)>,
}

/// A baseline figure measured beside the scenarios (e.g. the raw NATS pub→sub rate).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BaselineFigure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The report's heading [default: the live-path benchmark].
    pub title: String,
    /// The exact command line that reproduces this run.
    pub command: String,
    pub started_at: String,
    pub cores: usize,
    /// `self-hosted` or `remote`.
    pub mode: String,
    /// Every setting the run used.
    pub settings: serde_json::Value,
    pub scenarios: Vec<Scenario>,
    pub idle: Vec<IdleResult>,
    pub baselines: Vec<BaselineFigure>,
    pub notes: Vec<String>,
}

/// `ARBAT_NATS_SERVER=… ` when set, to prefix reproduce commands.
pub fn nats_env_prefix() -> String {
    std::env::var_os("ARBAT_NATS_SERVER")
        .map(|server| format!("ARBAT_NATS_SERVER={} ", server.to_string_lossy()))
        .unwrap_or_default()
}

/// Now, RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Writes `<stem>.md`, `<stem>.json` and each SVG into `out`; prints where.
pub fn write_files(
    out: &std::path::Path,
    stem: &str,
    markdown: &str,
    json: &str,
    svgs: &[(String, String)],
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(format!("{stem}.md")), markdown)?;
    std::fs::write(out.join(format!("{stem}.json")), json)?;
    for (name, svg) in svgs {
        std::fs::write(out.join(name), svg)?;
    }
    println!(
        "report: {} and {}",
        out.join(format!("{stem}.md")).display(),
        out.join(format!("{stem}.json")).display()
    );
    Ok(())
}

fn opt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

impl Report {
    pub fn new(title: &str, command: String, settings: serde_json::Value) -> Self {
        Self {
            title: title.to_owned(),
            command,
            started_at: now_rfc3339(),
            cores: cores(),
            mode: "self-hosted".into(),
            settings,
            ..Default::default()
        }
    }

    /// File stem of this report's plots.
    fn plot_stem(&self) -> &str {
        if self.title.contains("idle") {
            "bench-idle"
        } else {
            "bench-live"
        }
    }

    /// The plots: latency percentiles over time per target, memory over the idle ramp.
    pub fn svgs(&self) -> Vec<(String, String)> {
        let mut svgs = Vec::new();
        let timed: Vec<&Scenario> = self
            .scenarios
            .iter()
            .filter(|s| !s.timeline.is_empty())
            .collect();
        // One latency chart per mode: the max phase (its queue) and the fixed rate.
        for (mode, title) in [
            (
                "rate",
                "Publish → frame latency at the same fixed rate, per second",
            ),
            (
                "max",
                "Publish → frame latency at each target's max (closed loop), per second",
            ),
        ] {
            let mut series = Vec::new();
            for s in timed.iter().filter(|s| s.mode == mode) {
                for (name, pick) in [
                    (
                        "p50",
                        (|p: &TimelinePoint| p.p50_ms) as fn(&TimelinePoint) -> f64,
                    ),
                    ("p99", |p: &TimelinePoint| p.p99_ms),
                ] {
                    series.push(Series {
                        name: format!("{} {name}", s.target),
                        points: s
                            .timeline
                            .iter()
                            .filter(|p| p.p99_ms > 0.0)
                            .map(|p| (p.t_s, pick(p)))
                            .collect(),
                    });
                }
            }
            if series.is_empty() {
                continue;
            }
            let chart = Chart {
                title: title.into(),
                x_label: "seconds into the phase".into(),
                y_label: "ms".into(),
                series,
                x_ticks: Vec::new(),
            };
            let name = if mode == "rate" {
                format!("{}-latency.svg", self.plot_stem())
            } else {
                format!("{}-latency-max.svg", self.plot_stem())
            };
            svgs.push((name, chart.render()));
        }
        if !timed.is_empty() {
            let chart = Chart {
                title: "Event frames delivered per second".into(),
                x_label: "seconds into the phase".into(),
                y_label: "frames/s".into(),
                series: timed
                    .iter()
                    .map(|s| Series {
                        name: s.label(),
                        points: s.timeline.iter().map(|p| (p.t_s, p.events_per_s)).collect(),
                    })
                    .collect(),
                x_ticks: Vec::new(),
            };
            svgs.push((format!("{}-rate.svg", self.plot_stem()), chart.render()));
        }
        if self.idle.iter().any(|i| !i.ramp.is_empty()) {
            let chart = Chart {
                title: "Server memory growth vs idle sockets".into(),
                x_label: "idle sockets".into(),
                y_label: "MiB over the start".into(),
                series: self
                    .idle
                    .iter()
                    .map(|i| Series {
                        name: i.target.clone(),
                        points: std::iter::once((0.0, 0.0))
                            .chain(i.ramp.iter().map(|(n, rss)| {
                                (
                                    *n as f64,
                                    rss.saturating_sub(i.rss_before_kib) as f64 / 1024.0,
                                )
                            }))
                            .collect(),
                    })
                    .collect(),
                x_ticks: Vec::new(),
            };
            svgs.push((format!("{}-memory.svg", self.plot_stem()), chart.render()));
        }
        svgs
    }

    /// Prints the table and writes `<stem>.md`, `.json` and the plots into `out`.
    pub fn write(&self, out: &std::path::Path, stem: &str) -> anyhow::Result<()> {
        println!("{}", self.table());
        write_files(out, stem, &self.markdown(), &self.json(), &self.svgs())
    }

    /// Fills `ratio_to_baseline` of each arbat scenario from the relay scenario of the same mode.
    pub fn compute_ratios(&mut self) {
        let baselines: Vec<(String, f64, f64)> = self
            .scenarios
            .iter()
            .filter(|s| s.target == "relay")
            .map(|s| (s.mode.clone(), s.events_per_s, s.latency.p99_ms))
            .collect();
        let ratio = |value: f64, base: f64| (base > 0.0).then(|| value / base);
        for scenario in &mut self.scenarios {
            let base = baselines.iter().find(|(mode, _, _)| *mode == scenario.mode);
            (scenario.ratio_to_baseline, scenario.p99_ratio_to_baseline) =
                match (scenario.target.as_str(), base) {
                    ("relay", _) => (Some(1.0), Some(1.0)),
                    (_, Some((_, events, p99))) => (
                        ratio(scenario.events_per_s, *events),
                        ratio(scenario.latency.p99_ms, *p99),
                    ),
                    _ => (None, None),
                };
        }
        // Max rows first, each beside its baseline.
        self.scenarios
            .sort_by_key(|s| (s.mode != "max", s.target != "arbat"));
    }

    /// arbat's max events/s divided by each other target's max events/s.
    pub fn ratios_to_peers(&self) -> Vec<(String, f64)> {
        let max_of = |target: &str| {
            self.scenarios
                .iter()
                .find(|s| s.target == target && s.mode == "max")
                .map(|s| s.events_per_s)
        };
        let Some(arbat) = max_of("arbat") else {
            return Vec::new();
        };
        let mut targets: Vec<&str> = Vec::new();
        for s in &self.scenarios {
            if s.target != "arbat" && !targets.contains(&s.target.as_str()) {
                targets.push(&s.target);
            }
        }
        targets
            .into_iter()
            .filter_map(|t| {
                max_of(t)
                    .filter(|v| *v > 0.0)
                    .map(|v| (t.to_owned(), arbat / v))
            })
            .collect()
    }

    /// The console table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.scenarios.is_empty() {
            out.push_str(&format!(
                "{:<32} {:>11} {:>11} {:>9} {:>9} {:>9} {:>7} {:>7} {:>10}\n",
                "scenario",
                "changes/s",
                "events/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "ratio",
                "p99 x",
                "lost"
            ));
            for s in &self.scenarios {
                out.push_str(&format!(
                    "{:<32} {:>11.0} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>7} {:>10}\n",
                    s.label(),
                    s.changes_per_s,
                    s.events_per_s,
                    s.latency.p50_ms,
                    s.latency.p99_ms,
                    s.latency.p999_ms,
                    opt_ratio(s.ratio_to_baseline),
                    opt_ratio(s.p99_ratio_to_baseline),
                    s.lost_frames()
                ));
            }
        }
        if !self.idle.is_empty() {
            out.push_str(&format!(
                "\n{:<10} {:>9} {:>13} {:>13} {:>12} {:>10}\n",
                "idle", "sockets", "RSS before", "RSS after", "KiB/socket", "CPU %"
            ));
            for i in &self.idle {
                out.push_str(&format!(
                    "{:<10} {:>9} {:>10} KiB {:>10} KiB {:>12.2} {:>10.2}\n",
                    i.target,
                    i.sockets_open,
                    i.rss_before_kib,
                    i.rss_after_kib,
                    i.kib_per_socket,
                    i.idle_cpu_percent
                ));
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let title = if self.title.is_empty() {
            "Arbat live-path benchmark"
        } else {
            &self.title
        };
        md.push_str(&format!("# {title}\n\n"));
        md.push_str(&format!(
            "Run at {} on {} core(s), {} mode.\n\nReproduce:\n\n```sh\n{}\n```\n\n",
            self.started_at, self.cores, self.mode, self.command
        ));
        if !self.scenarios.is_empty() {
            md.push_str("## Live path (ABS change published → WebSocket frame)\n\n");
            md.push_str("`max`: closed loop with a bounded number of changes in flight (the highest sustained rate). ");
            md.push_str("`@ rate`: open loop at half of arbat's max; latency is measured from each change's intended send time, ");
            md.push_str("so a stalled publisher does not hide delays (coordinated omission). Ratio: events/s ÷ the relay's in the same mode; p99 ×: p99 ÷ the relay's.\n\n");
            md.push_str("| scenario | sockets | changes/s | events/s | p50 ms | p99 ms | p99.9 ms | max ms | ratio to baseline | p99 × baseline | delivered / expected |\n");
            md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for s in &self.scenarios {
                md.push_str(&format!(
                    "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} / {} |\n",
                    s.label(),
                    s.sockets,
                    s.changes_per_s,
                    s.events_per_s,
                    s.latency.p50_ms,
                    s.latency.p99_ms,
                    s.latency.p999_ms,
                    s.latency.max_ms,
                    opt_ratio(s.ratio_to_baseline),
                    opt_ratio(s.p99_ratio_to_baseline),
                    s.delivered_frames,
                    s.expected_frames
                ));
            }
            md.push('\n');
            let peers = self.ratios_to_peers();
            if !peers.is_empty() {
                let list: Vec<String> = peers
                    .iter()
                    .map(|(target, ratio)| format!("{ratio:.2}× {target}"))
                    .collect();
                md.push_str(&format!(
                    "arbat's max delivery rate (events/s) = {}.\n\n",
                    list.join(", ")
                ));
            }
            for s in &self.scenarios {
                for note in &s.notes {
                    md.push_str(&format!("- {}: {}\n", s.label(), note));
                }
            }
        }
        if !self.idle.is_empty() {
            md.push_str("\n## Idle density (authenticated, subscribed, idle WebSockets)\n\n");
            md.push_str("| server | sockets open | RSS before KiB | RSS after KiB | KiB per socket | idle CPU % | connect s |\n");
            md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for i in &self.idle {
                md.push_str(&format!(
                    "| {} | {} / {} | {} | {} | {:.2} | {:.2} | {:.1} |\n",
                    i.target,
                    i.sockets_open,
                    i.sockets_requested,
                    i.rss_before_kib,
                    i.rss_after_kib,
                    i.kib_per_socket,
                    i.idle_cpu_percent,
                    i.connect_s
                ));
            }
            for i in &self.idle {
                if let Some(error) = &i.first_error {
                    md.push_str(&format!(
                        "\n- {}: {} connect failure(s), first: {}\n",
                        i.target, i.connect_failures, error
                    ));
                }
            }
        }
        if !self.baselines.is_empty() {
            md.push_str("\n## Baselines measured in the same run\n\n| baseline | value | unit | note |\n|---|---:|---|---|\n");
            for b in &self.baselines {
                md.push_str(&format!(
                    "| {} | {:.0} | {} | {} |\n",
                    b.name, b.value, b.unit, b.note
                ));
            }
        }
        let svgs = self.svgs();
        if !svgs.is_empty() {
            md.push_str("\n## Plots\n\n");
            for (name, _) in &svgs {
                md.push_str(&format!("![{name}]({name})\n\n"));
            }
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

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_hold_every_sample() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=900 {
            a.record_us(us);
        }
        for _ in 0..100 {
            b.record_us(50_000);
        }
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.samples, 1000);
        assert!((s.p50_ms - 0.5).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 50.0).abs() < 0.1, "{s:?}");
        // Out-of-range values saturate rather than fail.
        a.record_us(0);
        a.record_us(u64::MAX);
        assert_eq!(a.len(), 1002);
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    fn sample_report() -> Report {
        let mut report = Report {
            command: "arbat bench live --sockets 10".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            cores: 2,
            mode: "self-hosted".into(),
            settings: serde_json::json!({"sockets": 10}),
            ..Default::default()
        };
        for (target, mode, rate, events) in [
            ("arbat", "max", None, 500.0),
            ("relay", "max", None, 1000.0),
            ("arbat", "rate", Some(25.0), 250.0),
        ] {
            report.scenarios.push(Scenario {
                target: target.into(),
                mode: mode.into(),
                target_changes_per_s: rate,
                sockets: 10,
                customers: 2,
                events_per_s: events,
                expected_frames: 100,
                delivered_frames: 98,
                ..Default::default()
            });
        }
        report.scenarios.push(Scenario {
            target: "relay".into(),
            mode: "rate".into(),
            target_changes_per_s: Some(25.0),
            events_per_s: 250.0,
            ..Default::default()
        });
        report.idle.push(IdleResult {
            target: "arbat".into(),
            sockets_open: 100,
            kib_per_socket: 6.5,
            ..Default::default()
        });
        report.compute_ratios();
        report
    }

    #[test]
    fn ratios_compare_like_with_like() {
        let report = sample_report();
        assert_eq!(report.scenarios[0].ratio_to_baseline, Some(0.5));
        assert_eq!(report.scenarios[1].ratio_to_baseline, Some(1.0));
        assert_eq!(report.scenarios[2].ratio_to_baseline, Some(1.0));
        assert_eq!(report.scenarios[2].target, "arbat");
        assert_eq!(report.scenarios[3].mode, "rate");
        assert_eq!(report.scenarios[0].lost_frames(), 2);
    }

    #[test]
    fn renders_table_markdown_and_json() {
        let report = sample_report();
        let table = report.table();
        assert!(table.contains("arbat max"), "{table}");
        assert!(table.contains("arbat @ 25 changes/s"), "{table}");
        assert!(table.contains("6.50"), "{table}");
        let md = report.markdown();
        assert!(
            md.contains("```sh\narbat bench live --sockets 10\n```"),
            "{md}"
        );
        assert!(md.contains("| arbat max | 10 | 0 | 500 |"), "{md}");
        assert!(md.contains("| 0.50 | — | 98 / 100 |"), "{md}");
        assert!(md.contains("## Idle density"), "{md}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["scenarios"][0]["ratio_to_baseline"], 0.5);
        assert_eq!(json["idle"][0]["kib_per_socket"], 6.5);
        assert_eq!(json["command"], "arbat bench live --sockets 10");
    }
}
