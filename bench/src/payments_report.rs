//! The report of `bench payments`: per scenario, each closed-loop level beside the ledger,
//! the open loop at half of the maximum and issue 5's aims; Markdown, console table, JSON.

use serde::Serialize;

use crate::payclient::{PhaseLatency, Tally};
use crate::report::LatencySummary;

/// One closed-loop level: the node end to end beside the ledger alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadPoint {
    pub clients: usize,
    pub window_s: f64,
    /// Completed payments (answer `completed` and frame received) per second.
    pub payments_per_s: f64,
    pub tally: Tally,
    pub latency: PhaseLatency,
    /// `Abs::pay` per second in this process on the same backend, same shape and clients.
    pub ledger_postings_per_s: Option<f64>,
    pub ledger_failures: u64,
    pub ratio_to_ledger: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OpenLoop {
    pub target_per_s: f64,
    pub window_s: f64,
    pub payments_per_s: f64,
    pub tally: Tally,
    /// From each payment's intended send time.
    pub latency: PhaseLatency,
    /// p99 of intended send → frame below 50 ms (issue 5's aim).
    pub p99_below_50_ms: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub closed_loop: Vec<LoadPoint>,
    pub max_payments_per_s: f64,
    /// Completed payments/s at the highest concurrency over the lowest.
    pub growth_with_load: Option<f64>,
    pub open_loop: Option<OpenLoop>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PaymentsReport {
    pub command: String,
    pub started_at: String,
    pub cores: usize,
    pub mode: String,
    pub backend: String,
    pub settings: serde_json::Value,
    pub scenarios: Vec<ScenarioResult>,
    pub notes: Vec<String>,
}

fn ms(summary: &LatencySummary) -> String {
    format!(
        "{:.1} / {:.1} / {:.1}",
        summary.p50_ms, summary.p99_ms, summary.p999_ms
    )
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

impl PaymentsReport {
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Arbat payments benchmark\n\n");
        md.push_str(&format!(
            "Run at {} on {} core(s), {}; store backend {}.\n\nReproduce:\n\n```sh\n{}\n```\n\n",
            self.started_at, self.cores, self.mode, self.backend, self.command
        ));
        md.push_str("Payments end to end: `POST /v1/payments` → actor → ABS ledger → feed → the payer's `payment_status` frame. ");
        md.push_str("Baseline: `abs::Abs::pay` in process on a fresh database of the same backend, same transfer shape and concurrency. ");
        md.push_str(
            "Latency p50 / p99 / p99.9 in ms; in the open loop from the intended send time.\n\n",
        );
        for s in &self.scenarios {
            md.push_str(&format!("## Scenario `{}`\n\n", s.scenario));
            md.push_str("| load | payments/s | ledger postings/s | ratio | answer ms | frame ms | not completed |\n");
            md.push_str("|---|---:|---:|---:|---:|---:|---|\n");
            for p in &s.closed_loop {
                md.push_str(&format!(
                    "| closed, {} client(s) | {:.1} | {} | {} | {} | {} | {} |\n",
                    p.clients,
                    p.payments_per_s,
                    opt(p.ledger_postings_per_s, 1),
                    opt(p.ratio_to_ledger, 3),
                    ms(&p.latency.answer),
                    ms(&p.latency.frame),
                    not_completed(&p.tally)
                ));
            }
            if let Some(o) = &s.open_loop {
                md.push_str(&format!(
                    "| open, {:.1}/s | {:.1} | — | — | {} | {} | {} |\n",
                    o.target_per_s,
                    o.payments_per_s,
                    ms(&o.latency.answer),
                    ms(&o.latency.frame),
                    not_completed(&o.tally)
                ));
            }
            md.push('\n');
            md.push_str(&format!(
                "- maximum: {:.1} payments/s; growth from the lowest to the highest concurrency: {}×\n",
                s.max_payments_per_s,
                opt(s.growth_with_load, 2)
            ));
            if let Some(o) = &s.open_loop {
                md.push_str(&format!(
                    "- aim p99 < 50 ms at half of the maximum: {} (p99 {:.1} ms at {:.1}/s)\n",
                    if o.p99_below_50_ms { "met" } else { "not met" },
                    o.latency.frame.p99_ms,
                    o.target_per_s
                ));
            }
            md.push('\n');
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

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:<16} {:>11} {:>11} {:>7} {:>20} {:>20}  {}\n",
            "scenario",
            "load",
            "payments/s",
            "ledger/s",
            "ratio",
            "answer p50/99/99.9",
            "frame p50/99/99.9",
            "not completed"
        );
        for s in &self.scenarios {
            for p in &s.closed_loop {
                out.push_str(&format!(
                    "{:<8} {:<16} {:>11.1} {:>11} {:>7} {:>20} {:>20}  {}\n",
                    s.scenario,
                    format!("closed x{}", p.clients),
                    p.payments_per_s,
                    opt(p.ledger_postings_per_s, 1),
                    opt(p.ratio_to_ledger, 3),
                    ms(&p.latency.answer),
                    ms(&p.latency.frame),
                    not_completed(&p.tally)
                ));
            }
            if let Some(o) = &s.open_loop {
                out.push_str(&format!(
                    "{:<8} {:<16} {:>11.1} {:>11} {:>7} {:>20} {:>20}  {}\n",
                    s.scenario,
                    format!("open {:.0}/s", o.target_per_s),
                    o.payments_per_s,
                    "—",
                    "—",
                    ms(&o.latency.answer),
                    ms(&o.latency.frame),
                    not_completed(&o.tally)
                ));
            }
        }
        out
    }
}

fn not_completed(tally: &Tally) -> String {
    match tally.not_completed() {
        0 => "0".into(),
        n => format!("{n} ({})", tally.problems()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PaymentsReport {
        let tally = Tally {
            completed: 10,
            other_statuses: [("pending".to_owned(), 2)].into(),
            ..Default::default()
        };
        PaymentsReport {
            command: "arbat bench payments --clients 1".into(),
            mode: "self-hosted embedded".into(),
            backend: "sqlite".into(),
            scenarios: vec![ScenarioResult {
                scenario: "hot".into(),
                closed_loop: vec![LoadPoint {
                    clients: 1,
                    payments_per_s: 20.0,
                    tally,
                    ledger_postings_per_s: Some(80.0),
                    ratio_to_ledger: Some(0.25),
                    ..Default::default()
                }],
                max_payments_per_s: 20.0,
                open_loop: Some(OpenLoop {
                    target_per_s: 10.0,
                    payments_per_s: 10.0,
                    p99_below_50_ms: true,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn reports_show_ratios_unfinished_payments_and_the_aim() {
        let report = sample();
        let md = report.markdown();
        assert!(
            md.contains("```sh\narbat bench payments --clients 1\n```"),
            "{md}"
        );
        assert!(
            md.contains("| closed, 1 client(s) | 20.0 | 80.0 | 0.250 |"),
            "{md}"
        );
        assert!(md.contains("2 (pending 2)"), "{md}");
        assert!(md.contains("| open, 10.0/s | 10.0 |"), "{md}");
        assert!(
            md.contains("p99 < 50 ms at half of the maximum: met"),
            "{md}"
        );
        assert!(report.table().contains("closed x1"));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["scenarios"][0]["closed_loop"][0]["ratio_to_ledger"],
            0.25
        );
        assert_eq!(
            json["scenarios"][0]["closed_loop"][0]["tally"]["other_statuses"]["pending"],
            2
        );
    }
}
