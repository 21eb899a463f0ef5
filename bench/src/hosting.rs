//! The node under test and how a run describes itself: a self-hosted node (embedded, or a
//! cluster with its own NATS and PostgreSQL) or a running deployment at a URL; the command
//! line that reproduces a run; the machine's load while it ran.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;

use crate::auth::EmbeddedNode;
use crate::cluster::SelfHosted;

/// Which store and bus a self-hosted node runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HostMode {
    /// SQLite (WAL, `synchronous=FULL`), in-process bus and ABS: one process.
    Embedded,
    /// PostgreSQL and NATS JetStream (both self-hosted by the tool), the ABS on `abs.cmd.*`.
    Cluster,
}

impl HostMode {
    /// The store backend of this mode (the ledger baseline runs on the same).
    pub fn backend(self) -> &'static str {
        match self {
            HostMode::Embedded => "sqlite",
            HostMode::Cluster => "postgres",
        }
    }
}

/// The node under test. Self-hosted nodes stop when this drops.
pub struct Target {
    pub base_url: String,
    pub backoffice_key: Option<String>,
    /// `self-hosted embedded (SQLite)`, `self-hosted cluster (PostgreSQL + NATS)` or `remote`.
    pub description: String,
    hosted: Hosted,
}

enum Hosted {
    Embedded(EmbeddedNode),
    Cluster(Box<SelfHosted>),
    Remote,
}

impl Target {
    /// Starts a node in `mode`, or uses the running one at `url` (with its back-office key,
    /// needed only to publish Cache Control changes).
    pub async fn start(
        url: Option<&str>,
        backoffice_key: Option<String>,
        mode: HostMode,
        arbat_bin: Option<&Path>,
        partitions: u32,
    ) -> anyhow::Result<Self> {
        if let Some(url) = url {
            return Ok(Self {
                base_url: url.trim_end_matches('/').to_owned(),
                backoffice_key,
                description: "remote".into(),
                hosted: Hosted::Remote,
            });
        }
        let bin: PathBuf = match arbat_bin {
            Some(path) => path.to_owned(),
            None => std::env::current_exe().context("locating this executable")?,
        };
        // The node reads its payment definitions from ARBAT_OPERATIONS_DIR, else
        // ./operations; without them every payment would be `unknown_operation`.
        if std::env::var_os("ARBAT_OPERATIONS_DIR").is_none() && !Path::new("operations").is_dir() {
            bail!(
                "no Operation Studio definitions for the self-hosted node: run from the repository root (./operations) or set ARBAT_OPERATIONS_DIR"
            );
        }
        let key = Some(crate::cluster::BACKOFFICE_KEY.to_owned());
        match mode {
            HostMode::Embedded => {
                let node = EmbeddedNode::start(&bin).await?;
                Ok(Self {
                    base_url: node.url.clone(),
                    backoffice_key: key,
                    description: "self-hosted embedded (SQLite, in-process bus)".into(),
                    hosted: Hosted::Embedded(node),
                })
            }
            HostMode::Cluster => {
                let node = SelfHosted::start(&bin, partitions, Duration::from_secs(120)).await?;
                Ok(Self {
                    base_url: node.url.clone(),
                    backoffice_key: key,
                    description: "self-hosted cluster (PostgreSQL + NATS JetStream)".into(),
                    hosted: Hosted::Cluster(Box::new(node)),
                })
            }
        }
    }

    /// Fails when a self-hosted node has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match &mut self.hosted {
            Hosted::Embedded(node) => node.node.check_running(),
            Hosted::Cluster(node) => node.node.check_running(),
            Hosted::Remote => Ok(()),
        }
    }

    /// Stops a self-hosted node (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        match &mut self.hosted {
            Hosted::Embedded(node) => node.node.stop(Duration::from_secs(10)),
            Hosted::Cluster(node) => node.node.stop(Duration::from_secs(10)),
            Hosted::Remote => {}
        }
    }
}

/// Renders the command line that reproduces a run from its serialized arguments: every
/// setting explicit, secrets left out.
pub fn command_line(subcommand: &str, args: &Value) -> String {
    let mut c = String::new();
    if let Some(server) = std::env::var_os("ARBAT_NATS_SERVER") {
        c.push_str(&format!("ARBAT_NATS_SERVER={} ", server.to_string_lossy()));
    }
    c.push_str("arbat bench ");
    c.push_str(subcommand);
    let Some(map) = args.as_object() else {
        return c;
    };
    for (key, value) in map {
        if matches!(key.as_str(), "password" | "backoffice_key" | "arbat_bin") {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let rendered = match value {
            Value::Null | Value::Bool(false) => continue,
            Value::Bool(true) => {
                c.push_str(&format!(" {flag}"));
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if rendered.is_empty() || rendered.contains([' ', '+', '\'', '$']) {
            c.push_str(&format!(" {flag} '{rendered}'"));
        } else {
            c.push_str(&format!(" {flag} {rendered}"));
        }
    }
    c
}

/// The machine's 1-minute load average (`/proc/loadavg`), to tell a quiet run from one that
/// shared its cores with other work.
pub fn load_average() -> Option<f64> {
    parse_load_average(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn parse_load_average(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A report note on the machine's load at the start and end of a run.
pub fn load_note(at_start: Option<f64>, cores: usize) -> Option<String> {
    let (start, end) = (at_start?, load_average()?);
    Some(format!(
        "machine load average (1 min) {start:.1} at the start and {end:.1} at the end, on {cores} core(s): above the core count, other work shared the CPUs and absolute figures drift; same-run ratios still compare"
    ))
}

/// Logins `<prefix><n, 7 digits>` for customers `first..first + count`.
pub fn logins(prefix: &str, first: u32, count: u32) -> Vec<String> {
    (first..first.saturating_add(count.max(1)))
        .map(|n| format!("{prefix}{n:07}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn load_average_is_read_from_proc() {
        assert_eq!(
            parse_load_average("8.66 8.83 8.26 3/812 4242\n"),
            Some(8.66)
        );
        assert_eq!(parse_load_average(""), None);
        assert!(load_average().is_some_and(|l| l >= 0.0));
        assert!(
            load_note(Some(1.0), 2)
                .unwrap()
                .contains("1.0 at the start")
        );
        assert_eq!(load_note(None, 2), None);
    }

    #[test]
    fn command_lines_render_every_setting_but_secrets() {
        let args = json!({
            "url": null, "password": "secret", "clients": [1, 8], "scenario": ["spread", "hot"],
            "login_prefix": "+7999", "no_baseline": false, "dry": true, "duration": 5.0,
            "out": "target/x"
        });
        let line = command_line("payments", &args);
        for part in [
            "arbat bench payments",
            " --clients 1,8",
            " --scenario spread,hot",
            " --login-prefix '+7999'",
            " --duration 5.0",
            " --out target/x",
            " --dry",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(!line.contains("secret"), "{line}");
        assert!(!line.contains("--url"), "{line}");
        assert!(!line.contains("--no-baseline"), "{line}");
        assert!(line.contains(" --dry"), "{line}");
    }
}
