//! Self-hosting: nats-server and a PostgreSQL database (testkit), the real `arbat serve` in
//! cluster mode, and the baseline relay process. Every child is killed on drop and every
//! temporary folder removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use testkit::{NatsServer, PgDatabase};

/// A temporary folder removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process with its output in a log file; killed on drop.
pub struct ChildProcess {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl ChildProcess {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; its log ends with:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        cpu_ticks(self.pid())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops terminal colour sequences (`ESC [ … m`) from log text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second for [`cpu_ticks`] (Linux's USER_HZ).
pub const TICKS_PER_S: f64 = 100.0;

/// A self-hosted single-node cluster. Fields drop in order: the node stops first.
pub struct SelfHosted {
    pub node: ChildProcess,
    pub url: String,
    pub nats: NatsServer,
    pub pg: PgDatabase,
    pub partitions: u32,
    pub dir: TempDir,
}

pub const BACKOFFICE_KEY: &str = "arbat-bench-backoffice-key";

impl SelfHosted {
    pub async fn start(
        arbat_bin: &Path,
        partitions: u32,
        ready_within: Duration,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("arbat-bench")?;
        let nats = tokio::task::spawn_blocking(NatsServer::start)
            .await?
            .context("starting nats-server (set ARBAT_NATS_SERVER to a 2.10+ binary)")?;
        let pg = PgDatabase::create()
            .await
            .context("creating a PostgreSQL database (ARBAT_TEST_PG)")?;
        let port = testkit::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let command = node_command(
            arbat_bin,
            port,
            &dir.path().join("data"),
            &nats.url(),
            &pg.url,
            "bench-node",
            partitions,
        );
        let node = ChildProcess::spawn("arbat serve", command, dir.path().join("node.log"))?;
        let mut hosted = Self {
            node,
            url,
            nats,
            pg,
            partitions,
            dir,
        };
        hosted.wait_ready(ready_within).await?;
        Ok(hosted)
    }

    /// Waits for `/readyz` 200 with every partition owned.
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.node.check_running()?;
            if let Ok(response) = http.get(format!("{}/readyz", self.url)).send().await {
                let ok = response.status().is_success();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                // `partitions_owned` (a count) or `partitions` (the list), by server version.
                let owned = body["partitions_owned"]
                    .as_u64()
                    .or_else(|| body["partitions"].as_array().map(|a| a.len() as u64));
                if ok && owned.is_none_or(|owned| owned >= u64::from(self.partitions)) {
                    return Ok(());
                }
                last = body.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the node was not ready within {limit:?} (last /readyz: {last}); log:\n{}",
            self.node.log_tail(40)
        )
    }
}

/// `arbat serve` in cluster mode with `--demo`, limits off for a load from one machine.
pub fn node_command(
    arbat_bin: &Path,
    port: u16,
    data_dir: &Path,
    nats_url: &str,
    database_url: &str,
    node_id: &str,
    partitions: u32,
) -> Command {
    let mut command = Command::new(arbat_bin);
    command
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--nats", nats_url, "--database-url", database_url])
        .args([
            "--backoffice-key",
            BACKOFFICE_KEY,
            "--node-id",
            node_id,
            "--demo",
        ])
        .args(["--partitions", &partitions.to_string()])
        .args([
            "--max-connections",
            "10000000",
            "--access-token-ttl-s",
            "86400",
            // The load comes from one machine: per-IP and per-customer limits would
            // measure the limiter, not the live path.
            "--rate-limit-ip",
            "0",
            "--rate-limit-customer",
            "0",
        ])
        // A clustered node wants an SMS gateway; nothing here registers, so a dead one does.
        .env("ARBAT_SMS_URL", "http://127.0.0.1:9/sms");
    command
}

/// The baseline relay as its own process (`arbat bench relay`) with its own nats-server.
pub struct RelayProcess {
    pub process: ChildProcess,
    pub addr: std::net::SocketAddr,
    pub nats_url: String,
    /// The relay's own nats-server when the bench started one.
    pub nats: Option<NatsServer>,
    pub dir: TempDir,
}

impl RelayProcess {
    pub async fn start(arbat_bin: &Path, nats_url: Option<String>) -> anyhow::Result<Self> {
        let dir = TempDir::new("arbat-bench-relay")?;
        let (nats, nats_url) = match nats_url {
            Some(url) => (None, url),
            None => {
                let server = tokio::task::spawn_blocking(NatsServer::start)
                    .await?
                    .context("starting the relay's nats-server")?;
                let url = server.url();
                (Some(server), url)
            }
        };
        let port = testkit::free_port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(arbat_bin);
        command.args([
            "bench",
            "relay",
            "--nats-url",
            &nats_url,
            "--listen",
            &addr.to_string(),
        ]);
        let mut process =
            ChildProcess::spawn("arbat bench relay", command, dir.path().join("relay.log"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            process.check_running()?;
            if std::fs::read_to_string(&process.log)
                .unwrap_or_default()
                .contains("relay listening on")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the relay did not start; log:\n{}", process.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            process,
            addr,
            nats_url,
            nats,
            dir,
        })
    }
}

/// Raises this process's open-file limit (children inherit it). Returns the soft limit now
/// in force; raising the hard limit needs root (otherwise `ulimit -n` before the run).
pub fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap_or((1024, 1024));
    if soft >= want {
        return soft;
    }
    if hard < want && rlimit::setrlimit(Resource::NOFILE, want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_cpu_of_this_process() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345)
        );
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(cpu_ticks(std::process::id()).is_ok());
    }
}
