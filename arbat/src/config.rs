//! Node configuration: flags, then environment, then the config file, then defaults.
//!
//! Every setting is validated here, before anything starts; an invalid one is reported
//! with its name and the process exits with code 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A setting that cannot be used, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// Raw settings as they come from flags/env (clap) or the TOML file; all optional.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ARBAT_LISTEN")]
    pub listen: Option<String>,
    /// Data folder for the embedded store [default: ./data].
    #[arg(long, env = "ARBAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// NATS URL; with a database URL the node joins a cluster.
    #[arg(long = "nats", env = "ARBAT_NATS_URL")]
    #[serde(alias = "nats")]
    pub nats_url: Option<String>,
    /// PostgreSQL URL; with a NATS URL the node joins a cluster.
    #[arg(long, env = "ARBAT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Seed demo data (on by default when embedded).
    #[arg(long, env = "ARBAT_DEMO", num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<String>,
    /// Number of customer partitions; the same on every node [default: 64].
    #[arg(long, env = "ARBAT_PARTITIONS")]
    pub partitions: Option<String>,
    /// Idle time before a customer actor leaves memory [default: 600000].
    #[arg(long, env = "ARBAT_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<String>,
    /// This node's id in the cluster [default: random].
    #[arg(long, env = "ARBAT_NODE_ID")]
    pub node_id: Option<String>,
    /// Partition lease time to live in a cluster [default: 10000].
    #[arg(long, env = "ARBAT_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<String>,
    /// Bearer key of the back-office endpoints (generated and printed when embedded).
    #[arg(long, env = "ARBAT_BACKOFFICE_KEY", hide_env_values = true)]
    pub backoffice_key: Option<String>,
    /// WebSockets this node accepts at most [default: 100000].
    #[arg(long, env = "ARBAT_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Access token lifetime [default: 900].
    #[arg(long, env = "ARBAT_ACCESS_TOKEN_TTL_S")]
    pub access_token_ttl_s: Option<String>,
    /// WebSocket ping interval [default: 30000].
    #[arg(long, env = "ARBAT_WS_PING_INTERVAL_MS")]
    pub ws_ping_interval_ms: Option<String>,
    /// Live events queued per WebSocket before a slow client is shed [default: 256].
    #[arg(long, env = "ARBAT_WS_LIVE_BUFFER")]
    pub ws_live_buffer: Option<String>,
    /// Time to finish work in flight after SIGTERM/SIGINT [default: 10000].
    #[arg(long, env = "ARBAT_GRACE_PERIOD_MS")]
    pub grace_period_ms: Option<String>,
    /// Actor threads (arbiters) [default: number of cores].
    #[arg(long, env = "ARBAT_ACTOR_THREADS")]
    pub actor_threads: Option<String>,
    /// A session whose refresh token is unused this long ends [default: 1800].
    #[arg(long, env = "ARBAT_SESSION_IDLE_S")]
    pub session_idle_s: Option<String>,
    /// How long a login, device or IP stays locked after too many failures [default: 900].
    #[arg(long, env = "ARBAT_LOCKOUT_S")]
    pub lockout_s: Option<String>,
    /// Requests per second per client IP, 0 = off [default: 1000].
    #[arg(long, env = "ARBAT_RATE_LIMIT_IP")]
    pub rate_limit_ip: Option<String>,
    /// Authenticated requests per second per customer, 0 = off [default: 100].
    #[arg(long, env = "ARBAT_RATE_LIMIT_CUSTOMER")]
    pub rate_limit_customer: Option<String>,
    /// Comma-separated browser origins allowed by CORS and at the WebSocket [default: none].
    #[arg(long, env = "ARBAT_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Id of the access-token signing key; raising it rotates the key (the previous id's
    /// tokens stay valid until they expire) [default: 1].
    #[arg(long, env = "ARBAT_TOKEN_KEY_ID")]
    pub token_key_id: Option<String>,
    /// Longest a request may take [default: 30000].
    #[arg(long, env = "ARBAT_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<String>,
    /// Folder of Operation Studio definitions (`<id>.toml` + `<id>.toml.sig`)
    /// [default: ./operations].
    #[arg(long, env = "ARBAT_OPERATIONS_DIR")]
    pub operations_dir: Option<PathBuf>,
    /// Ed25519 public key (base64) that signs the definitions [default: the shipped
    /// development key, with a warning].
    #[arg(long, env = "ARBAT_OPERATIONS_KEY")]
    pub operations_key: Option<String>,
    /// How often the node scans for due monthly/weekly autopayments [default: 1000].
    #[arg(long, env = "ARBAT_AUTOPAY_TICK_MS")]
    pub autopay_tick_ms: Option<String>,
    /// How long a currency quote holds [default: 30].
    #[arg(long, env = "ARBAT_QUOTE_TTL_S")]
    pub quote_ttl_s: Option<String>,
}

impl RawSettings {
    /// Fills what is unset here from `other` (flags and env win over the file).
    fn or(self, other: RawSettings) -> RawSettings {
        RawSettings {
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            nats_url: self.nats_url.or(other.nats_url),
            database_url: self.database_url.or(other.database_url),
            demo: self.demo.or(other.demo),
            partitions: self.partitions.or(other.partitions),
            idle_timeout_ms: self.idle_timeout_ms.or(other.idle_timeout_ms),
            autopay_tick_ms: self.autopay_tick_ms.or(other.autopay_tick_ms),
            quote_ttl_s: self.quote_ttl_s.or(other.quote_ttl_s),
            node_id: self.node_id.or(other.node_id),
            lease_ttl_ms: self.lease_ttl_ms.or(other.lease_ttl_ms),
            backoffice_key: self.backoffice_key.or(other.backoffice_key),
            max_connections: self.max_connections.or(other.max_connections),
            access_token_ttl_s: self.access_token_ttl_s.or(other.access_token_ttl_s),
            ws_ping_interval_ms: self.ws_ping_interval_ms.or(other.ws_ping_interval_ms),
            ws_live_buffer: self.ws_live_buffer.or(other.ws_live_buffer),
            grace_period_ms: self.grace_period_ms.or(other.grace_period_ms),
            actor_threads: self.actor_threads.or(other.actor_threads),
            session_idle_s: self.session_idle_s.or(other.session_idle_s),
            lockout_s: self.lockout_s.or(other.lockout_s),
            rate_limit_ip: self.rate_limit_ip.or(other.rate_limit_ip),
            rate_limit_customer: self.rate_limit_customer.or(other.rate_limit_customer),
            allowed_origins: self.allowed_origins.or(other.allowed_origins),
            request_timeout_ms: self.request_timeout_ms.or(other.request_timeout_ms),
            token_key_id: self.token_key_id.or(other.token_key_id),
            operations_dir: self.operations_dir.or(other.operations_dir),
            operations_key: self.operations_key.or(other.operations_key),
        }
    }
}

/// Where a node keeps its state and talks to its peers.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// One process: in-process bus, SQLite in the data folder.
    Embedded,
    /// NATS JetStream and PostgreSQL shared by every node.
    Cluster {
        nats_url: String,
        database_url: String,
    },
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub mode: Mode,
    pub demo: bool,
    pub node_id: String,
    pub lease_ttl: Duration,
    pub backoffice_key: Option<String>,
    pub grace_period: Duration,
    pub actor_threads: usize,
    /// The access-token signing key id (the previous one is accepted too).
    pub token_key_id: u32,
    pub actors: actors::ActorConfig,
    pub gateway: channels::GatewayConfig,
    /// Notification providers, from the environment names of API.md.
    pub notifier: notifier::NotifierConfig,
    pub operations_dir: PathBuf,
    /// Base64 Ed25519 public key of the definitions; `None`: the development key.
    pub operations_key: Option<String>,
    /// How long a currency quote holds.
    pub quote_validity: time::Duration,
}

/// The development key pair's public half (operations/dev-signing.key signs the shipped
/// definitions; never use it in production).
pub const DEV_OPERATIONS_KEY: &str = include_str!("../../operations/dev-public.key");

fn number<T>(
    setting: &'static str,
    raw: Option<&str>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = raw else { return Ok(default) };
    let value: T = raw
        .trim()
        .parse()
        .map_err(|_| invalid(setting, format!("{raw:?} is not a whole number")))?;
    if value < min || value > max {
        return Err(invalid(
            setting,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(value)
}

fn boolean(setting: &'static str, raw: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match raw.map(|r| r.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(invalid(setting, format!("{other:?} is not true or false"))),
    }
}

impl Config {
    /// Builds the configuration from flags/env and an optional TOML file.
    pub fn load(cli: RawSettings, file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid("config", format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str::<RawSettings>(&text).map_err(|e| {
                    invalid("config", format!("{}: {}", path.display(), e.message()))
                })?
            }
            None => RawSettings::default(),
        };
        let config = Self::from_raw_and_env(cli.or(from_file))?;
        // A cluster node refuses to start without an SMS gateway (codes must go out).
        config
            .notifier
            .providers(config.mode == Mode::Embedded)
            .map_err(notifier_error)?;
        Ok(config)
    }

    pub fn from_raw(raw: RawSettings) -> Result<Config, ConfigError> {
        Self::from_raw_with(raw, notifier::NotifierConfig::default())
    }

    /// Like [`Config::from_raw`], with the notification providers read from the environment.
    pub fn from_raw_and_env(raw: RawSettings) -> Result<Config, ConfigError> {
        let notifier = notifier::NotifierConfig::from_env().map_err(notifier_error)?;
        Self::from_raw_with(raw, notifier)
    }

    fn from_raw_with(
        raw: RawSettings,
        notifier: notifier::NotifierConfig,
    ) -> Result<Config, ConfigError> {
        let listen_raw = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_raw:?} is not an address such as 127.0.0.1:8080"),
            )
        })?;
        let empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let mode = match (empty(raw.nats_url), empty(raw.database_url)) {
            (None, None) => Mode::Embedded,
            (Some(nats_url), Some(database_url)) => {
                if !(nats_url.starts_with("nats://") || nats_url.starts_with("tls://")) {
                    return Err(invalid("nats", "must start with nats:// or tls://"));
                }
                if !(database_url.starts_with("postgres://")
                    || database_url.starts_with("postgresql://"))
                {
                    return Err(invalid("database-url", "must be a postgres:// URL"));
                }
                Mode::Cluster {
                    nats_url,
                    database_url,
                }
            }
            (Some(_), None) => {
                return Err(invalid(
                    "database-url",
                    "a cluster node needs a PostgreSQL URL too",
                ));
            }
            (None, Some(_)) => return Err(invalid("nats", "a cluster node needs a NATS URL too")),
        };
        let embedded = mode == Mode::Embedded;
        let node_id = match raw.node_id {
            Some(id) => {
                if kernel::CustomerId::parse(&id).is_err() {
                    return Err(invalid(
                        "node-id",
                        "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
                    ));
                }
                id
            }
            None => format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        let backoffice_key = match empty(raw.backoffice_key) {
            Some(key) if key.len() < 16 => {
                return Err(invalid("backoffice-key", "must be at least 16 characters"));
            }
            Some(key) => Some(key),
            None if embedded => None,
            None => {
                return Err(invalid(
                    "backoffice-key",
                    "a cluster node needs one (ARBAT_BACKOFFICE_KEY)",
                ));
            }
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let actors = actors::ActorConfig {
            partitions: number("partitions", raw.partitions.as_deref(), 64, 1, 4096)?,
            idle_timeout: Duration::from_millis(number(
                "idle-timeout-ms",
                raw.idle_timeout_ms.as_deref(),
                600_000,
                100,
                86_400_000,
            )?),
            autopay_tick: Duration::from_millis(number(
                "autopay-tick-ms",
                raw.autopay_tick_ms.as_deref(),
                1_000,
                10,
                3_600_000,
            )?),
            ..actors::ActorConfig::default()
        };
        let gateway = channels::GatewayConfig {
            max_connections: number(
                "max-connections",
                raw.max_connections.as_deref(),
                100_000,
                1,
                10_000_000,
            )?,
            access_token_ttl: Duration::from_secs(number(
                "access-token-ttl-s",
                raw.access_token_ttl_s.as_deref(),
                900,
                1,
                86_400,
            )?),
            ws_ping_interval: Duration::from_millis(number(
                "ws-ping-interval-ms",
                raw.ws_ping_interval_ms.as_deref(),
                30_000,
                100,
                600_000,
            )?),
            ws_live_buffer: number(
                "ws-live-buffer",
                raw.ws_live_buffer.as_deref(),
                256,
                1,
                65_536,
            )?,
            session_idle: Duration::from_secs(number(
                "session-idle-s",
                raw.session_idle_s.as_deref(),
                1800,
                1,
                30 * 86_400,
            )?),
            rate_limit_ip_per_s: f64::from(number(
                "rate-limit-ip",
                raw.rate_limit_ip.as_deref(),
                1000u32,
                0,
                1_000_000,
            )?),
            rate_limit_customer_per_s: f64::from(number(
                "rate-limit-customer",
                raw.rate_limit_customer.as_deref(),
                100u32,
                0,
                1_000_000,
            )?),
            allowed_origins: raw
                .allowed_origins
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
            request_timeout: Duration::from_millis(number(
                "request-timeout-ms",
                raw.request_timeout_ms.as_deref(),
                30_000,
                100,
                600_000,
            )?),
            ..channels::GatewayConfig::default()
        };
        let lockout_s: i64 = number("lockout-s", raw.lockout_s.as_deref(), 900, 1, 86_400)?;
        let mut gateway = gateway;
        gateway.login_lockout.lock_for = time::Duration::seconds(lockout_s);
        gateway.ip_lockout.lock_for = time::Duration::seconds(lockout_s);
        let operations_key = match empty(raw.operations_key) {
            Some(key) => {
                channels::studio::parse_public_key(&key)
                    .map_err(|reason| invalid("operations-key", reason))?;
                Some(key)
            }
            None => None,
        };
        Ok(Config {
            operations_dir: raw
                .operations_dir
                .unwrap_or_else(|| PathBuf::from("./operations")),
            operations_key,
            listen,
            data_dir: raw.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            demo: boolean("demo", raw.demo.as_deref(), embedded)?,
            mode,
            node_id,
            lease_ttl: Duration::from_millis(number(
                "lease-ttl-ms",
                raw.lease_ttl_ms.as_deref(),
                10_000,
                1_000,
                600_000,
            )?),
            backoffice_key,
            grace_period: Duration::from_millis(number(
                "grace-period-ms",
                raw.grace_period_ms.as_deref(),
                10_000,
                0,
                600_000,
            )?),
            actor_threads: number("actor-threads", raw.actor_threads.as_deref(), cores, 1, 256)?,
            token_key_id: number("token-key-id", raw.token_key_id.as_deref(), 1, 1, 1_000_000)?,
            quote_validity: time::Duration::seconds(number(
                "quote-ttl-s",
                raw.quote_ttl_s.as_deref(),
                30,
                1,
                3_600,
            )?),
            actors,
            gateway,
            notifier,
        })
    }
}

fn notifier_error(error: notifier::ConfigError) -> ConfigError {
    let setting = match &error {
        notifier::ConfigError::Missing { var, .. } | notifier::ConfigError::Invalid { var, .. } => {
            *var
        }
    };
    ConfigError {
        setting,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded_with_demo() {
        let config = Config::from_raw(RawSettings::default()).unwrap();
        assert_eq!(config.mode, Mode::Embedded);
        assert!(config.demo);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.actors.partitions, 64);
    }

    #[test]
    fn invalid_settings_are_named() {
        let cases: Vec<(RawSettings, &str)> = vec![
            (
                RawSettings {
                    listen: Some("nowhere".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                RawSettings {
                    partitions: Some("0".into()),
                    ..Default::default()
                },
                "partitions",
            ),
            (
                RawSettings {
                    partitions: Some("many".into()),
                    ..Default::default()
                },
                "partitions",
            ),
            (
                RawSettings {
                    nats_url: Some("nats://x:4222".into()),
                    ..Default::default()
                },
                "database-url",
            ),
            (
                RawSettings {
                    demo: Some("perhaps".into()),
                    ..Default::default()
                },
                "demo",
            ),
            (
                RawSettings {
                    backoffice_key: Some("short".into()),
                    ..Default::default()
                },
                "backoffice-key",
            ),
            (
                RawSettings {
                    nats_url: Some("nats://x".into()),
                    database_url: Some("postgres://x/y".into()),
                    ..Default::default()
                },
                "backoffice-key",
            ),
        ];
        for (raw, setting) in cases {
            let error = Config::from_raw(raw).unwrap_err();
            assert_eq!(error.setting, setting, "{error}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = RawSettings {
            listen: Some("127.0.0.1:1".into()),
            partitions: Some("8".into()),
            ..Default::default()
        };
        let flags = RawSettings {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let config = Config::from_raw(flags.or(file)).unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.actors.partitions, 8);
    }
}
