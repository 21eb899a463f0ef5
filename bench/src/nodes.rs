//! Multi-node self-hosting for `arbat bench scale` (and the scenarios that restart a node):
//! a nats-server with its monitoring endpoint (and, for the nats-ws baseline, its WebSocket
//! listener), one PostgreSQL database, and n `arbat serve` nodes, each in a CPU group of its
//! own with an equal quota. Everything is stopped and removed on drop.
//!
//! CPU limits, best first: a cgroup v1 child group per node under `/sys/fs/cgroup/cpu` with
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us` (needs write access, normally root); else each node
//! pinned to one CPU with `taskset` (round robin, a coarse share); else no limit. The report
//! says which one was used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use testkit::PgDatabase;

use crate::cluster::{ChildProcess, TempDir, node_command};

/// cgroup v1 CPU controller mount.
const CGROUP_CPU: &str = "/sys/fs/cgroup/cpu";
const CFS_PERIOD_US: u64 = 100_000;

/// nats-server with JetStream (synced writes, as in production), a monitoring port and
/// optionally a plain WebSocket listener.
pub struct BenchNats {
    pub process: ChildProcess,
    pub port: u16,
    pub monitor_port: u16,
    pub websocket_port: Option<u16>,
    dir: TempDir,
}

/// Message counters of `/varz`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Varz {
    pub in_msgs: u64,
    pub out_msgs: u64,
}

impl Varz {
    /// Messages in and out between `earlier` and `self`.
    pub fn since(&self, earlier: &Varz) -> Varz {
        Varz {
            in_msgs: self.in_msgs.saturating_sub(earlier.in_msgs),
            out_msgs: self.out_msgs.saturating_sub(earlier.out_msgs),
        }
    }
}

impl BenchNats {
    pub async fn start(websocket: bool) -> anyhow::Result<Self> {
        let dir = TempDir::new("arbat-bench-nats")?;
        let port = testkit::free_port();
        let monitor_port = testkit::free_port();
        let websocket_port = websocket.then(testkit::free_port);
        let mut config = format!(
            "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\n\
             max_payload: 1048576\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  max_file_store: 64G\n}}\n",
            dir.path().join("js").display()
        );
        if let Some(ws) = websocket_port {
            config.push_str(&format!(
                "websocket {{\n  listen: \"127.0.0.1:{ws}\"\n  no_tls: true\n}}\n"
            ));
        }
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(testkit::nats_server_binary());
        command.arg("-c").arg(&config_path);
        let mut process = ChildProcess::spawn("nats-server", command, dir.path().join("nats.log"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let wanted: Vec<u16> = [port, monitor_port]
            .into_iter()
            .chain(websocket_port)
            .collect();
        while !wanted
            .iter()
            .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            process.check_running()?;
            if Instant::now() > deadline {
                bail!("nats-server did not listen; log:\n{}", process.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            process,
            port,
            monitor_port,
            websocket_port,
            dir,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Reads `/varz` from the monitoring endpoint.
    pub async fn varz(&self) -> anyhow::Result<Varz> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/varz", self.monitor_port))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Varz {
            in_msgs: body["in_msgs"].as_u64().context("no in_msgs in /varz")?,
            out_msgs: body["out_msgs"].as_u64().context("no out_msgs in /varz")?,
        })
    }
}

/// How each node's CPU is limited.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CpuLimitKind {
    /// cgroup v1 CFS quota: `cpus` of CPU time per node.
    Cgroup { cpus: f64 },
    /// Pinned to one CPU with taskset (no cgroup write access).
    Taskset,
    /// Nothing could limit the nodes, or no limit was asked for.
    None { reason: String },
}

impl CpuLimitKind {
    pub fn describe(&self) -> String {
        match self {
            CpuLimitKind::Cgroup { cpus } => format!(
                "cgroup v1 CFS quota of {cpus} CPU per node ({} µs per {CFS_PERIOD_US} µs period)",
                (cpus * CFS_PERIOD_US as f64).round()
            ),
            CpuLimitKind::Taskset => {
                "no cgroup write access: each node pinned to one CPU with taskset (round robin); shares are coarse".into()
            }
            CpuLimitKind::None { reason } => format!("nodes not CPU-limited: {reason}"),
        }
    }
}

/// The CPU groups of one run: created on demand, removed on drop (after their processes).
pub struct CpuLimits {
    pub kind: CpuLimitKind,
    root: Option<PathBuf>,
    groups: Vec<PathBuf>,
}

impl CpuLimits {
    /// Probes what can limit CPU here, for `cpus` per node (`None`: no limit).
    pub fn probe(cpus: Option<f64>) -> Self {
        let Some(cpus) = cpus.filter(|c| *c > 0.0) else {
            return Self {
                kind: CpuLimitKind::None {
                    reason: "--cpu-per-node 0".into(),
                },
                root: None,
                groups: Vec::new(),
            };
        };
        let root = Path::new(CGROUP_CPU).join(format!("arbat-bench-{}", std::process::id()));
        let cgroup = std::fs::create_dir_all(&root).is_ok()
            && root.join("cpu.cfs_quota_us").exists()
            && std::fs::write(root.join("cpu.cfs_quota_us"), "-1").is_ok();
        if cgroup {
            return Self {
                kind: CpuLimitKind::Cgroup { cpus },
                root: Some(root),
                groups: Vec::new(),
            };
        }
        let _ = std::fs::remove_dir(&root);
        let taskset = Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        Self {
            kind: if taskset {
                CpuLimitKind::Taskset
            } else {
                CpuLimitKind::None {
                    reason: format!("{CGROUP_CPU} is not writable and taskset is missing"),
                }
            },
            root: None,
            groups: Vec::new(),
        }
    }

    /// Wraps a node's command so that it starts pinned (taskset only).
    pub fn wrap(&self, command: Command, index: usize) -> Command {
        if self.kind != CpuLimitKind::Taskset {
            return command;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut pinned = Command::new("taskset");
        pinned
            .args(["-c", &(index % cpus).to_string()])
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                pinned.env(key, value);
            }
        }
        pinned
    }

    /// Puts a started process into a group of its own with the quota (cgroup only).
    pub fn apply(&mut self, name: &str, pid: u32) -> anyhow::Result<()> {
        let (CpuLimitKind::Cgroup { cpus }, Some(root)) = (&self.kind, &self.root) else {
            return Ok(());
        };
        let group = root.join(name);
        std::fs::create_dir_all(&group).with_context(|| format!("creating {}", group.display()))?;
        std::fs::write(group.join("cpu.cfs_period_us"), CFS_PERIOD_US.to_string())?;
        let quota = ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000);
        std::fs::write(group.join("cpu.cfs_quota_us"), quota.to_string())?;
        // cgroup.procs moves every thread of the process.
        std::fs::write(group.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", group.display()))?;
        self.groups.push(group);
        Ok(())
    }

    /// A reader of the groups' throttling counters (for a task of its own).
    pub fn throttled_reader(&self) -> ThrottleReader {
        ThrottleReader {
            groups: self.groups.clone(),
        }
    }

    /// The groups still present (for tests: none after drop).
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }
}

/// Reads `cpu.stat` of a set of CPU groups.
#[derive(Clone, Debug, Default)]
pub struct ThrottleReader {
    groups: Vec<PathBuf>,
}

impl ThrottleReader {
    /// Throttled periods and time (ns) of every group so far.
    pub fn read(&self) -> (u64, u64) {
        let mut total = (0, 0);
        for group in &self.groups {
            let stat = std::fs::read_to_string(group.join("cpu.stat")).unwrap_or_default();
            for line in stat.lines() {
                let mut words = line.split_whitespace();
                match (
                    words.next(),
                    words.next().and_then(|v| v.parse::<u64>().ok()),
                ) {
                    (Some("nr_throttled"), Some(v)) => total.0 += v,
                    (Some("throttled_time"), Some(v)) => total.1 += v,
                    _ => {}
                }
            }
        }
        total
    }
}

impl Drop for CpuLimits {
    fn drop(&mut self) {
        // A group can only be removed once empty: its processes were stopped before.
        for group in self.groups.drain(..).rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&group).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(root) = &self.root {
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// One `arbat serve` of a cluster.
pub struct Node {
    pub process: ChildProcess,
    pub url: String,
    pub id: String,
}

/// n nodes over one NATS and one PostgreSQL database. Drop order: nodes, their CPU groups,
/// then NATS, the database and the folder.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub limits: CpuLimits,
    pub nats: BenchNats,
    pub pg: PgDatabase,
    pub partitions: u32,
    pub dir: TempDir,
    arbat_bin: PathBuf,
}

impl Cluster {
    /// Starts NATS, the database and `nodes` nodes; ready once ownership is balanced.
    pub async fn start(
        arbat_bin: &Path,
        nodes: usize,
        partitions: u32,
        limits: CpuLimits,
        websocket: bool,
        ready_within: Duration,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("arbat-bench-cluster")?;
        let nats = BenchNats::start(websocket).await?;
        let pg = PgDatabase::create()
            .await
            .context("creating a PostgreSQL database (ARBAT_TEST_PG)")?;
        let mut cluster = Self {
            nodes: Vec::new(),
            limits,
            nats,
            pg,
            partitions,
            dir,
            arbat_bin: arbat_bin.to_owned(),
        };
        // One node first: it seeds the demo data, the others then find it there.
        for index in 0..nodes.max(1) {
            cluster.add_node(index)?;
            if index == 0 {
                cluster.wait_balanced(ready_within).await?;
            }
        }
        cluster.wait_balanced(ready_within).await?;
        Ok(cluster)
    }

    fn add_node(&mut self, index: usize) -> anyhow::Result<()> {
        let port = testkit::free_port();
        let id = format!("bench-node-{index}");
        let command = node_command(
            &self.arbat_bin,
            port,
            &self.dir.path().join(format!("data-{index}")),
            &self.nats.url(),
            &self.pg.url,
            &id,
            self.partitions,
        );
        let command = self.limits.wrap(command, index);
        let process = ChildProcess::spawn(
            &format!("arbat serve ({id})"),
            command,
            self.dir.path().join(format!("{id}.log")),
        )?;
        self.limits.apply(&id, process.pid())?;
        self.nodes.push(Node {
            process,
            url: format!("http://127.0.0.1:{port}"),
            id,
        });
        Ok(())
    }

    /// Stops node `index` (SIGTERM) and starts it again on the same data and port.
    pub async fn restart_node(
        &mut self,
        index: usize,
        ready_within: Duration,
    ) -> anyhow::Result<()> {
        let node = self.nodes.remove(index);
        let Node {
            mut process, url, ..
        } = node;
        process.stop(Duration::from_secs(15));
        drop(process);
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("node url without port")?;
        let id = format!("bench-node-{index}");
        let command = node_command(
            &self.arbat_bin,
            port,
            &self.dir.path().join(format!("data-{index}")),
            &self.nats.url(),
            &self.pg.url,
            &id,
            self.partitions,
        );
        let command = self.limits.wrap(command, index);
        let process = ChildProcess::spawn(
            &format!("arbat serve ({id})"),
            command,
            self.dir.path().join(format!("{id}.restarted.log")),
        )?;
        self.limits
            .apply(&format!("{id}-restarted"), process.pid())?;
        self.nodes.insert(index, Node { process, url, id });
        self.wait_balanced(ready_within).await
    }

    /// Waits until every node answers `/readyz` 200 and the partitions are split evenly:
    /// each owned once, each node within one of N/n.
    pub async fn wait_balanced(&mut self, limit: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        let deadline = Instant::now() + limit;
        loop {
            let mut owned = Vec::new();
            for node in &mut self.nodes {
                node.process.check_running()?;
                owned.push(node_partitions(&http, &node.url).await);
            }
            if balanced(&owned, self.partitions) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let last = owned;
                let tail = self
                    .nodes
                    .last()
                    .map(|n| n.process.log_tail(30))
                    .unwrap_or_default();
                bail!(
                    "partitions not balanced within {limit:?} (owned: {last:?}); last node's log:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The partitions each node owns now.
    pub async fn ownership(&self) -> Vec<Option<BTreeSet<u32>>> {
        let http = reqwest::Client::new();
        let mut owned = Vec::new();
        for node in &self.nodes {
            owned.push(node_partitions(&http, &node.url).await);
        }
        owned
    }

    /// Every process the bench started for this cluster: `(role, pid)`, PostgreSQL backends
    /// of its database included (found by their process title).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut all: Vec<(String, u32)> = self
            .nodes
            .iter()
            .map(|n| ("nodes".to_owned(), n.process.pid()))
            .collect();
        all.push(("nats".into(), self.nats.process.pid()));
        all.extend(
            postgres_backends(&self.pg.name)
                .into_iter()
                .map(|pid| ("postgres".to_owned(), pid)),
        );
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process.stop(Duration::from_secs(5));
        }
        self.nodes.clear();
    }
}

async fn node_partitions(http: &reqwest::Client, url: &str) -> Option<BTreeSet<u32>> {
    let response = http.get(format!("{url}/readyz")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    Some(
        body["partitions"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_u64().map(|p| p as u32))
            .collect(),
    )
}

/// Each partition owned by exactly one ready node, and no node off N/n by more than one.
pub fn balanced(owned: &[Option<BTreeSet<u32>>], partitions: u32) -> bool {
    let Some(sets) = owned.iter().cloned().collect::<Option<Vec<_>>>() else {
        return false;
    };
    if sets.is_empty() {
        return false;
    }
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u32> = sets.iter().flatten().copied().collect();
    let fair = partitions as usize / sets.len();
    total == partitions as usize
        && union.len() == partitions as usize
        && sets
            .iter()
            .all(|s| s.len() + 1 >= fair && s.len() <= fair + 1)
}

/// PostgreSQL backends serving `database` (their title is `postgres: user db host ...`).
pub fn postgres_backends(database: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let text = String::from_utf8_lossy(&cmd);
                text.starts_with("postgres: ") && text.split_whitespace().any(|w| w == database)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[u32]) -> Option<BTreeSet<u32>> {
        Some(items.iter().copied().collect())
    }

    #[test]
    fn balance_needs_every_partition_once_and_even_shares() {
        assert!(balanced(&[set(&[0, 1, 2, 3])], 4));
        assert!(balanced(&[set(&[0, 2]), set(&[1, 3])], 4));
        assert!(!balanced(&[set(&[0, 1, 2, 3]), set(&[])], 4), "uneven");
        assert!(
            !balanced(&[set(&[0, 1]), set(&[1, 3])], 4),
            "1 twice, 2 never"
        );
        assert!(!balanced(&[set(&[0, 1]), None], 4), "a node not ready");
        assert!(balanced(&[set(&[0, 1]), set(&[2]), set(&[3, 4])], 5));
        assert!(!balanced(&[], 4));
    }

    #[test]
    fn varz_deltas() {
        let a = Varz {
            in_msgs: 10,
            out_msgs: 20,
        };
        let b = Varz {
            in_msgs: 15,
            out_msgs: 40,
        };
        assert_eq!(
            b.since(&a),
            Varz {
                in_msgs: 5,
                out_msgs: 20
            }
        );
    }
}
