//! `arbat bench activation`: cold activations per second (an actor built from its snapshot
//! and journal) and the memory of a resident actor.
//!
//! A self-hosted cluster node (NATS + PostgreSQL) gets K customers logged in and J changes
//! journaled per customer through `ABS_EVENTS` (waited for until every partition consumer
//! has acknowledged them). The baseline is a warm pass: one `GET /v1/products` per customer
//! while every actor is resident. Then the node is restarted (SIGTERM, start again on the same
//! store), so every actor is cold, and the same pass is run again: each read activates its
//! actor (snapshot + journal replay), which gives activations/s and the read latency of a
//! cold customer. VmRSS and `arbat_actors_resident` before and after the cold pass give the
//! memory per resident actor. A last warm pass checks that the actors stayed resident.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde::Serialize;

use crate::clients::{self, Customer};
use crate::cluster;
use crate::nodes::{Cluster, CpuLimits};
use crate::report::{Latency, LatencySummary, cores, nats_env_prefix, now_rfc3339, write_files};

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ActivationArgs {
    /// The `arbat` binary to self-host [default: this executable].
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// Customers made resident (demo logins; the demo has 100).
    #[arg(long, default_value_t = 100)]
    pub customers: u32,
    /// Changes journaled per customer before the restart (replayed at activation beyond the
    /// last snapshot).
    #[arg(long, default_value_t = 20)]
    pub changes_per_customer: u32,
    /// Concurrent readers.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Folder for bench-activation.md and bench-activation.json.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

impl ActivationArgs {
    pub fn command_line(&self) -> String {
        format!(
            "{}arbat bench activation --customers {} --changes-per-customer {} --concurrency {} --partitions {} --out {}",
            nats_env_prefix(),
            self.customers,
            self.changes_per_customer,
            self.concurrency,
            self.partitions,
            self.out.display()
        )
    }
}

/// One pass of reads over every customer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadPass {
    pub name: String,
    pub reads: usize,
    pub failures: usize,
    pub seconds: f64,
    pub reads_per_s: f64,
    pub latency: LatencySummary,
    pub resident_before: Option<u64>,
    pub resident_after: Option<u64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ActivationReport {
    pub command: String,
    pub started_at: String,
    pub cores: usize,
    pub settings: serde_json::Value,
    pub journaled_changes: u64,
    pub passes: Vec<ReadPass>,
    /// Cold reads/s of the cold pass (each read is one activation).
    pub activations_per_s: f64,
    /// Cold activations/s ÷ warm reads/s in the same run.
    pub ratio_to_warm: Option<f64>,
    /// VmRSS growth over the cold pass ÷ actors that became resident.
    pub kib_per_resident_actor: Option<f64>,
    pub notes: Vec<String>,
}

impl ActivationReport {
    pub fn markdown(&self) -> String {
        let mut md =
            String::from("# Arbat cold-activation benchmark (`arbat bench activation`)\n\n");
        md.push_str(&format!(
            "Run at {} on {} core(s).\n\nReproduce:\n\n```sh\n{}\n```\n\n",
            self.started_at, self.cores, self.command
        ));
        md.push_str(&format!(
            "{} changes were journaled before the restart. Each pass reads `GET /v1/products` once per customer; in the cold pass every read activates its actor from the snapshot and the journal.\n\n",
            self.journaled_changes
        ));
        md.push_str(&format!(
            "- **cold activations/s: {:.0}** ({} × the warm reads/s of the same run)\n- **memory per resident actor: {}**\n\n",
            self.activations_per_s,
            self.ratio_to_warm.map_or("—".into(), |r| format!("{r:.2}")),
            self.kib_per_resident_actor
                .map_or("—".into(), |k| format!("{k:.1} KiB"))
        ));
        md.push_str("| pass | reads | failures | reads/s | p50 ms | p99 ms | max ms | resident before → after | RSS before → after KiB |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---|---|\n");
        for p in &self.passes {
            let resident = |r: Option<u64>| r.map_or("?".into(), |r| r.to_string());
            md.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} → {} | {} → {} |\n",
                p.name,
                p.reads,
                p.failures,
                p.reads_per_s,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                resident(p.resident_before),
                resident(p.resident_after),
                p.rss_before_kib,
                p.rss_after_kib
            ));
        }
        for p in &self.passes {
            if let Some(error) = &p.first_error {
                md.push_str(&format!("\n- {}: first failure: {error}\n", p.name));
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

    /// Derives the headline figures from the passes (`cold` and the first `warm`).
    pub fn compute(&mut self) {
        let cold = self.passes.iter().find(|p| p.name == "cold");
        let warm = self.passes.iter().find(|p| p.name.starts_with("warm"));
        self.activations_per_s = cold.map_or(0.0, |c| c.reads_per_s);
        self.ratio_to_warm = match (cold, warm) {
            (Some(c), Some(w)) if w.reads_per_s > 0.0 => Some(c.reads_per_s / w.reads_per_s),
            _ => None,
        };
        self.kib_per_resident_actor = cold.and_then(|c| {
            let became = c
                .resident_after?
                .saturating_sub(c.resident_before.unwrap_or(0));
            (became > 0)
                .then(|| c.rss_after_kib.saturating_sub(c.rss_before_kib) as f64 / became as f64)
        });
    }
}

async fn resident_actors(http: &reqwest::Client, url: &str) -> Option<u64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("arbat_actors_resident "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn read_pass(
    name: &str,
    url: &str,
    pid: u32,
    customers: &[Customer],
    concurrency: usize,
) -> anyhow::Result<ReadPass> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // Let the node settle (a restart's start-up work) before memory is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resident_before = resident_actors(&http, url).await;
    let rss_before_kib = cluster::rss_kib(pid)?;
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = futures::stream::iter(customers.iter())
        .map(|customer| {
            let http = http.clone();
            async move {
                let at = Instant::now();
                let response = http
                    .get(format!("{url}/v1/products"))
                    .bearer_auth(&customer.token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!(
                        "{}: HTTP {}",
                        customer.customer_id,
                        response.status()
                    ));
                }
                let _ = response.bytes().await.map_err(|e| e.to_string())?;
                Ok(at.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latency = Latency::new();
    let mut pass = ReadPass {
        name: name.to_owned(),
        seconds,
        resident_before,
        rss_before_kib,
        ..Default::default()
    };
    for result in results {
        match result {
            Ok(took) => {
                pass.reads += 1;
                latency.record_us(took.as_micros() as u64);
            }
            Err(error) => {
                pass.failures += 1;
                pass.first_error.get_or_insert(error);
            }
        }
    }
    pass.reads_per_s = pass.reads as f64 / seconds.max(1e-6);
    pass.latency = latency.summary();
    pass.resident_after = resident_actors(&http, url).await;
    pass.rss_after_kib = cluster::rss_kib(pid)?;
    Ok(pass)
}

/// Publishes `per_customer` changes for each customer and waits until the node has
/// acknowledged all of them (every partition consumer drained).
async fn journal_changes(
    cluster: &Cluster,
    customers: &[Customer],
    per_customer: u32,
) -> anyhow::Result<u64> {
    let nats = async_nats::connect(&cluster.nats.url()).await?;
    let js = async_nats::jetstream::new(nats);
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut published = 0;
    let run = format!(
        "{:x}",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    for i in 0..per_customer {
        for customer in customers {
            let id = format!("bench-activation-{run}-{}-{i}", customer.customer_id);
            let body = serde_json::json!({
                "id": id,
                "customer_id": customer.customer_id,
                "kind": "balance_changed",
                "at": now_rfc3339(),
                "account_id": customer.account_id,
                "balance": {"amount": format!("{}.00", 1000 + i), "currency": customer.currency},
            });
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = js
                .publish_with_headers(
                    format!("abs.evt.{}", customer.customer_id),
                    headers,
                    serde_json::to_vec(&body)?.into(),
                )
                .await?;
            acks.push(ack.into_future());
            published += 1;
            while acks.len() >= 1024 {
                if let Some(result) = acks.next().await {
                    result.context("a JetStream publish was not acknowledged")?;
                }
            }
        }
    }
    while let Some(result) = acks.next().await {
        result.context("a JetStream publish was not acknowledged")?;
    }
    // Every partition consumer has nothing pending and nothing unacknowledged.
    let stream = js.get_stream("ABS_EVENTS").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    'wait: loop {
        let mut outstanding = 0;
        for partition in 0..cluster.partitions {
            let name = format!("arbat-part-{partition}");
            match stream.consumer_info(&name).await {
                Ok(info) => outstanding += info.num_pending + info.num_ack_pending as u64,
                // Created on the owner's first pull; nothing consumed yet.
                Err(_) => outstanding += 1,
            }
        }
        if outstanding == 0 {
            break 'wait;
        }
        if Instant::now() > deadline {
            bail!("{outstanding} journaled change(s) still unacknowledged after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(published)
}

pub async fn run_activation(args: ActivationArgs) -> anyhow::Result<ActivationReport> {
    let arbat_bin = crate::arbat_bin(args.arbat_bin.as_ref())?;
    let mut report = ActivationReport {
        command: args.command_line(),
        started_at: now_rfc3339(),
        cores: cores(),
        settings: serde_json::to_value(&args)?,
        ..Default::default()
    };
    let mut cluster = Cluster::start(
        &arbat_bin,
        1,
        args.partitions,
        CpuLimits::probe(None),
        false,
        Duration::from_secs(120),
    )
    .await?;
    let url = cluster.nodes[0].url.clone();
    let logins = crate::demo_logins("+7999", 1, args.customers);
    let customers = Arc::new(clients::login_all(&url, &logins, "arbat-demo", 4).await?);
    report.journaled_changes =
        journal_changes(&cluster, &customers, args.changes_per_customer).await?;
    report.passes.push(
        read_pass(
            "warm (before restart)",
            &url,
            cluster.nodes[0].process.pid(),
            &customers,
            args.concurrency,
        )
        .await?,
    );
    cluster
        .restart_node(0, Duration::from_secs(120))
        .await
        .context("restarting the node")?;
    report.passes.push(
        read_pass(
            "cold",
            &url,
            cluster.nodes[0].process.pid(),
            &customers,
            args.concurrency,
        )
        .await?,
    );
    report.passes.push(
        read_pass(
            "warm (after)",
            &url,
            cluster.nodes[0].process.pid(),
            &customers,
            args.concurrency,
        )
        .await?,
    );
    report.compute();
    let cold = &report.passes[1];
    if cold.resident_before.unwrap_or(0) > 0 {
        report.notes.push(format!(
            "{} actor(s) were already resident after the restart (the node's own start-up work)",
            cold.resident_before.unwrap_or(0)
        ));
    }
    if args.customers < 1000 {
        report.notes.push(
            "few customers (the self-hosted demo seeds 100 logins): memory per actor is a small difference of RSS readings, read it as an estimate"
                .into(),
        );
    }
    let failures: usize = report.passes.iter().map(|p| p.failures).sum();
    if failures > 0 {
        report
            .notes
            .push(format!("{failures} read(s) failed; see each pass"));
    }
    cluster.nodes[0].process.check_running()?;
    drop(cluster);
    println!(
        "cold activations/s {:.0} (× warm {}), KiB per resident actor {}",
        report.activations_per_s,
        report
            .ratio_to_warm
            .map_or("—".into(), |r| format!("{r:.2}")),
        report
            .kib_per_resident_actor
            .map_or("—".into(), |k| format!("{k:.1}"))
    );
    write_files(
        &args.out,
        "bench-activation",
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
    fn headline_figures_come_from_the_cold_and_warm_passes() {
        let mut report = ActivationReport {
            command: "arbat bench activation --customers 100".into(),
            passes: vec![
                ReadPass {
                    name: "warm (before restart)".into(),
                    reads: 100,
                    reads_per_s: 2000.0,
                    ..Default::default()
                },
                ReadPass {
                    name: "cold".into(),
                    reads: 100,
                    reads_per_s: 500.0,
                    resident_before: Some(0),
                    resident_after: Some(100),
                    rss_before_kib: 50_000,
                    rss_after_kib: 51_000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        report.compute();
        assert_eq!(report.activations_per_s, 500.0);
        assert_eq!(report.ratio_to_warm, Some(0.25));
        assert_eq!(report.kib_per_resident_actor, Some(10.0));
        let md = report.markdown();
        assert!(
            md.contains("```sh\narbat bench activation --customers 100\n```"),
            "{md}"
        );
        assert!(md.contains("**cold activations/s: 500** (0.25 ×"), "{md}");
        assert!(md.contains("| cold | 100 | 0 | 500 |"), "{md}");
        // No actor became resident: no per-actor figure rather than a division by zero.
        report.passes[1].resident_after = Some(0);
        report.compute();
        assert_eq!(report.kib_per_resident_actor, None);
    }
}
