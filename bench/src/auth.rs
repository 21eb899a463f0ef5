//! `arbat bench auth`: what authentication costs, each figure beside a baseline measured in
//! the same run.
//!
//! - **logins/s**: N concurrent clients log the demo customers in (`POST /v1/auth/login`,
//!   closed loop). Argon2id verification dominates, so the baseline is argon2id verifications/s
//!   in this process with the same parameters (the `argon2` crate defaults the node uses),
//!   times the cores: the ratio shows what the rest of a login (lockout checks, session
//!   write, audit) costs on top.
//! - **token verifications/s on one core**: `channels::TokenKeys::verify` in a loop, in
//!   process, beside an HMAC-SHA256 of the same bytes (the ratio is the parsing overhead).
//! - **warm read**: `GET /v1/products` (token check, rate limits, actor read from memory,
//!   JSON) p50/p99 beside `GET /healthz` through the same HTTP stack and clients (no token,
//!   no limits, no actor). The difference is what the gateway and the read add over the
//!   bare HTTP round trip; the in-process token verification time is printed next to it.
//!   An honest baseline without a test-only route in production builds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::cluster::{ChildProcess, TempDir};
use crate::report::{Latency, LatencySummary};

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct AuthArgs {
    /// The `arbat` binary to self-host [default: this executable].
    #[arg(long)]
    pub arbat_bin: Option<PathBuf>,
    /// A running node (http://host:port) instead of self-hosting an embedded one. Its rate
    /// limits apply (a self-hosted node runs with them raised).
    #[arg(long)]
    pub url: Option<String>,
    /// Logins are `<prefix><n, 7 digits>` (demo customers trust every device).
    #[arg(long, default_value = "+7999")]
    pub login_prefix: String,
    #[arg(long, default_value_t = 1)]
    pub first_customer: u32,
    /// Customers logged in round robin, and whose products are read.
    #[arg(long, default_value_t = 50)]
    pub customers: u32,
    #[arg(long, default_value = "arbat-demo", hide_default_value = true)]
    pub password: String,
    /// Concurrent login clients.
    #[arg(long, default_value_t = 4)]
    pub login_clients: usize,
    /// Concurrent read clients (closed loop, one request in flight each).
    #[arg(long, default_value_t = 2)]
    pub read_clients: usize,
    /// Warm-up of each phase, seconds (excluded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measurement window of each phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Folder for bench-auth.md and bench-auth.json.
    #[arg(long, default_value = "target/bench-results")]
    pub out: PathBuf,
}

impl AuthArgs {
    pub fn command_line(&self) -> String {
        let mut c = String::from("arbat bench auth");
        if let Some(url) = &self.url {
            c.push_str(&format!(" --url {url}"));
        }
        c.push_str(&format!(
            " --login-prefix '{}' --first-customer {} --customers {} --login-clients {} --read-clients {} --warmup {} --duration {} --out {}",
            self.login_prefix,
            self.first_customer,
            self.customers,
            self.login_clients,
            self.read_clients,
            self.warmup,
            self.duration,
            self.out.display()
        ));
        c
    }
}

/// One measured figure and its baseline.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline_name: String,
    pub baseline: f64,
    /// value / baseline.
    pub ratio: Option<f64>,
}

impl Figure {
    fn new(name: &str, value: f64, unit: &str, baseline_name: &str, baseline: f64) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: baseline_name.into(),
            baseline,
            ratio: (baseline > 0.0).then(|| value / baseline),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AuthReport {
    pub command: String,
    pub started_at: String,
    pub cores: usize,
    pub mode: String,
    pub settings: serde_json::Value,
    /// argon2id m (KiB), t, p.
    pub argon2: String,
    pub figures: Vec<Figure>,
    pub login_latency: LatencySummary,
    pub read_latency: LatencySummary,
    pub baseline_read_latency: LatencySummary,
    pub notes: Vec<String>,
}

impl AuthReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<40} {:>14} {:<10} {:<40} {:>14} {:>8}\n",
            "figure", "value", "unit", "baseline", "value", "ratio"
        );
        for f in &self.figures {
            out.push_str(&format!(
                "{:<40} {:>14.2} {:<10} {:<40} {:>14.2} {:>8}\n",
                f.name,
                f.value,
                f.unit,
                f.baseline_name,
                f.baseline,
                f.ratio.map_or("—".into(), |r| format!("{r:.2}"))
            ));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("# arbat bench auth\n\n");
        out.push_str(&format!(
            "- started: {}\n- cores: {}\n- mode: {}\n- argon2id: {}\n- reproduce: `{}`\n\n",
            self.started_at, self.cores, self.mode, self.argon2, self.command
        ));
        out.push_str("| figure | value | unit | baseline | baseline value | ratio |\n");
        out.push_str("|---|---:|---|---|---:|---:|\n");
        for f in &self.figures {
            out.push_str(&format!(
                "| {} | {:.2} | {} | {} | {:.2} | {} |\n",
                f.name,
                f.value,
                f.unit,
                f.baseline_name,
                f.baseline,
                f.ratio.map_or("—".into(), |r| format!("{r:.2}"))
            ));
        }
        out.push_str("\n| latency (ms) | samples | p50 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|\n");
        for (name, l) in [
            ("login", &self.login_latency),
            ("GET /v1/products", &self.read_latency),
            ("GET /healthz (baseline)", &self.baseline_read_latency),
        ] {
            out.push_str(&format!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                l.samples, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            ));
        }
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }
}

/// An embedded node (SQLite, in-process bus and ABS, demo data) with raised rate limits.
pub(crate) struct EmbeddedNode {
    pub(crate) node: ChildProcess,
    pub(crate) url: String,
    _dir: TempDir,
}

impl EmbeddedNode {
    pub(crate) async fn start(bin: &std::path::Path) -> anyhow::Result<Self> {
        let dir = TempDir::new("arbat-bench-auth")?;
        let port = testkit::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = std::process::Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--backoffice-key", crate::cluster::BACKOFFICE_KEY])
            .args([
                "--rate-limit-ip",
                "1000000",
                "--rate-limit-customer",
                "1000000",
            ])
            .args(["--access-token-ttl-s", "86400"]);
        let mut node = ChildProcess::spawn("arbat serve", command, dir.path().join("node.log"))?;
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            node.check_running()?;
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the node was not ready in 60 s:\n{}", node.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            node,
            url,
            _dir: dir,
        })
    }
}

/// Runs `f` on this thread for `window`, in batches; calls per second.
fn per_second(window: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < window {
        for _ in 0..256 {
            f();
        }
        calls += 256;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

/// Token verifications/s on one core, and HMAC-SHA256s of the same bytes.
pub fn token_verifications(window: Duration) -> (f64, f64) {
    let keys = channels::TokenKeys::new("bench", vec![7u8; 32]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = channels::Claims {
        sub: kernel::CustomerId::parse("c000001").unwrap_or_else(|_| unreachable!()),
        sid: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        scope: "customer".into(),
        role: None,
        iat: now,
        exp: now + 86_400,
    };
    let token = keys.sign(&claims);
    let signed = token.rsplit_once('.').map_or("", |(s, _)| s).to_owned();
    let verified = per_second(window, || {
        let ok = keys.verify(std::hint::black_box(&token), now).is_ok();
        std::hint::black_box(ok);
    });
    let hmacs = per_second(window, || {
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap_or_else(|_| unreachable!());
        mac.update(std::hint::black_box(signed.as_bytes()));
        std::hint::black_box(mac.finalize().into_bytes());
    });
    (verified, hmacs)
}

/// Argon2id verifications/s on one core with the node's parameters.
pub fn argon2_verifications(window: Duration) -> anyhow::Result<f64> {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
    let salt = SaltString::encode_b64(b"arbat-bench-salt").map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(b"arbat-demo", &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    let parsed = argon2::PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window || n < 3 {
        let ok = argon2::Argon2::default()
            .verify_password(b"arbat-demo", &parsed)
            .is_ok();
        std::hint::black_box(ok);
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Closed loop: `clients` tasks call `request` until the window ends; successes/s and latency
/// of the measured window (warm-up excluded).
async fn closed_loop<F, Fut>(
    clients: usize,
    warmup: Duration,
    window: Duration,
    request: F,
) -> anyhow::Result<(f64, Latency)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let request = Arc::new(request);
    let start = Instant::now() + warmup;
    let end = start + window;
    let mut tasks = Vec::new();
    for client in 0..clients.max(1) {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Latency::new();
            let mut ok = 0u64;
            let mut i = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                request(client, i).await?;
                i += 1;
                if sent >= start {
                    latency.record_us(sent.elapsed().as_micros() as u64);
                    ok += 1;
                }
            }
            anyhow::Ok((ok, latency))
        }));
    }
    let mut total = 0u64;
    let mut latency = Latency::new();
    for task in tasks {
        let (ok, l) = task.await??;
        total += ok;
        latency.merge(&l);
    }
    Ok((total as f64 / window.as_secs_f64(), latency))
}

pub async fn run_auth(args: AuthArgs) -> anyhow::Result<AuthReport> {
    let started_at = time::OffsetDateTime::now_utc();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let window = Duration::from_secs_f64(args.duration.max(0.1));
    let params = argon2::Params::default();
    let mut report = AuthReport {
        command: args.command_line(),
        started_at: started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        cores,
        mode: if args.url.is_some() {
            "remote"
        } else {
            "self-hosted embedded"
        }
        .into(),
        settings: serde_json::to_value(&args)?,
        argon2: format!(
            "m = {} KiB, t = {}, p = {} (argon2 crate defaults, as the node uses)",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ),
        ..Default::default()
    };
    let hosted = match &args.url {
        Some(_) => None,
        None => {
            let bin = match &args.arbat_bin {
                Some(path) => path.clone(),
                None => std::env::current_exe().context("locating this executable")?,
            };
            Some(EmbeddedNode::start(&bin).await?)
        }
    };
    let base = match (&hosted, &args.url) {
        (Some(h), _) => h.url.clone(),
        (None, Some(url)) => url.trim_end_matches('/').to_owned(),
        (None, None) => unreachable!(),
    };
    let logins: Arc<Vec<String>> = Arc::new(
        (args.first_customer..args.first_customer + args.customers.max(1))
            .map(|n| format!("{}{n:07}", args.login_prefix))
            .collect(),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()?;

    // (a) logins/s, and argon2id verifications/s on one core in this process.
    let login = {
        let (http, base, logins, password) = (
            http.clone(),
            base.clone(),
            logins.clone(),
            args.password.clone(),
        );
        move |client: usize, i: u64| {
            let (http, base, password) = (http.clone(), base.clone(), password.clone());
            let login = logins[(client + i as usize * 7) % logins.len()].clone();
            async move {
                let response = http
                    .post(format!("{base}/v1/auth/login"))
                    .json(&serde_json::json!({
                        "login": login, "password": password, "device_id": format!("bench-auth-{client}")
                    }))
                    .send()
                    .await?;
                if response.status() != 200 {
                    bail!("login {login}: {}", response.status());
                }
                response.bytes().await?;
                Ok(())
            }
        }
    };
    let (logins_per_s, login_latency) =
        closed_loop(args.login_clients, warmup, window, login).await?;
    let argon2_per_core = tokio::task::spawn_blocking(move || {
        argon2_verifications(window.min(Duration::from_secs(3)))
    })
    .await??;
    report.figures.push(Figure::new(
        &format!("logins/s ({} clients)", args.login_clients),
        logins_per_s,
        "1/s",
        &format!("argon2id verifications/s × {cores} cores"),
        argon2_per_core * cores as f64,
    ));
    report.login_latency = login_latency.summary();

    // (b) token verifications/s on one core.
    let (verifications, hmacs) = tokio::task::spawn_blocking(move || {
        token_verifications(window.min(Duration::from_secs(3)))
    })
    .await?;
    report.figures.push(Figure::new(
        "token verifications/s (1 core)",
        verifications,
        "1/s",
        "HMAC-SHA256 of the same bytes/s",
        hmacs,
    ));

    // (c) warm read through the gateway vs the bare HTTP round trip.
    let mut tokens = Vec::new();
    for (i, login) in logins.iter().enumerate().take(args.read_clients.max(1) * 4) {
        let body: serde_json::Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&serde_json::json!({"login": login, "password": args.password, "device_id": format!("bench-read-{i}")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(
            body["access_token"]
                .as_str()
                .context("no access_token")?
                .to_owned(),
        );
    }
    let tokens = Arc::new(tokens);
    let read = |path: &'static str, auth: bool| {
        let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
        move |client: usize, i: u64| {
            let mut request = http.get(format!("{base}{path}"));
            if auth {
                request = request.bearer_auth(&tokens[(client + i as usize) % tokens.len()]);
            }
            async move {
                let response = request.send().await?;
                if !response.status().is_success() {
                    bail!("GET {path}: {}", response.status());
                }
                response.bytes().await?;
                Ok(())
            }
        }
    };
    let (reads_per_s, read_latency) = closed_loop(
        args.read_clients,
        warmup,
        window,
        read("/v1/products", true),
    )
    .await?;
    let (healthz_per_s, healthz_latency) =
        closed_loop(args.read_clients, warmup, window, read("/healthz", false)).await?;
    let (read, base_read) = (read_latency.summary(), healthz_latency.summary());
    report.figures.push(Figure::new(
        "GET /v1/products p50",
        read.p50_ms,
        "ms",
        "GET /healthz p50",
        base_read.p50_ms,
    ));
    report.figures.push(Figure::new(
        "GET /v1/products p99",
        read.p99_ms,
        "ms",
        "GET /healthz p99",
        base_read.p99_ms,
    ));
    report.figures.push(Figure::new(
        &format!("GET /v1/products/s ({} clients)", args.read_clients),
        reads_per_s,
        "1/s",
        "GET /healthz/s",
        healthz_per_s,
    ));
    report.notes.push(format!(
        "the gateway adds {:.3} ms at p50 and {:.3} ms at p99 to a warm read over the bare HTTP round trip (token check, per-IP and per-customer limits, the actor's in-memory read, JSON); the token check alone is {:.2} µs on one core",
        read.p50_ms - base_read.p50_ms,
        read.p99_ms - base_read.p99_ms,
        1e6 / verifications.max(1.0)
    ));
    report.notes.push("baseline of the read: GET /healthz through the same clients, HTTP stack and security middleware, without a token, rate limits or an actor; no test-only route exists in production builds".into());
    if hosted.is_some() {
        report.notes.push(format!("self-hosted: the node and the bench's clients share this machine's {cores} cores, so logins/s sits below the argon2id ceiling by the clients' and the node's other work"));
    }
    report.notes.push("logins: closed loop, demo customers (trusted devices, so no second factor); each login writes a session and an audit entry".into());
    report.read_latency = read;
    report.baseline_read_latency = base_read;
    if let Some(mut hosted) = hosted {
        hosted.node.check_running()?;
        hosted.node.stop(Duration::from_secs(10));
    }
    println!("{}", report.table());
    for note in &report.notes {
        println!("- {note}");
    }
    crate::report::write_files(
        &args.out,
        "bench-auth",
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
    fn token_verification_is_measured_beside_its_hmac() {
        let (verified, hmacs) = token_verifications(Duration::from_millis(50));
        assert!(verified > 0.0 && hmacs > 0.0);
    }

    #[test]
    fn figures_carry_ratios() {
        let f = Figure::new("a", 10.0, "1/s", "b", 4.0);
        assert_eq!(f.ratio, Some(2.5));
        assert_eq!(Figure::new("a", 1.0, "ms", "b", 0.0).ratio, None);
    }
}
