//! The clients: log in, open authenticated WebSockets (optionally from many source
//! addresses), subscribe, and account for every event frame that arrives.
//!
//! Frames are matched to the change that caused them by the change id, which is the event
//! id in the frame: `bench-<run>-<phase>-<intended send time, ns since the clock's epoch>-<n>`.
//! The publisher and the clients share one [`Clock`], so latency is the receive time minus
//! the *intended* send time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::report::Latency;

pub type Ws = WebSocketStream<TcpStream>;

/// Phases one run can hold (frames of other phases are counted but not attributed).
pub const MAX_PHASES: usize = 8;
const SHARDS: usize = 8;

/// A monotonic clock shared by the publisher and the clients.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Clock {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn instant_at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

/// Formats a change id that carries its phase and intended send time.
pub fn change_id(run: &str, phase: usize, intended_ns: u64, n: u64) -> String {
    format!("bench-{run}-{phase}-{intended_ns}-{n}")
}

/// Finds the bench change id in an event frame: `(phase, intended send time ns)`.
pub fn parse_frame(text: &str) -> Option<(usize, u64)> {
    const KEY: &str = "\"id\":\"bench-";
    let start = text.find(KEY)? + KEY.len();
    let rest = &text[start..];
    let end = rest.find('"')?;
    let mut parts = rest[..end].split('-');
    let _run = parts.next()?;
    let phase = parts.next()?.parse().ok()?;
    let intended = parts.next()?.parse().ok()?;
    Some((phase, intended))
}

#[derive(Default)]
struct PhaseStats {
    delivered: AtomicU64,
    window_start: AtomicU64,
    window_end: AtomicU64,
}

/// What every client reports into: frame counts, per-phase latency, closes.
pub struct Sink {
    pub clock: Clock,
    phases: Vec<PhaseStats>,
    shards: Vec<Mutex<Vec<Latency>>>,
    /// Event frames received, any phase.
    pub frames: AtomicU64,
    /// Sockets that got their `live` frame.
    pub live: AtomicU64,
    /// Sockets the server closed (or that failed) while the bench still wanted them.
    pub closed: AtomicU64,
    close_reasons: Mutex<Vec<String>>,
}

impl Sink {
    pub fn new(clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            clock,
            phases: (0..MAX_PHASES).map(|_| PhaseStats::default()).collect(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![Latency::new(); MAX_PHASES]))
                .collect(),
            frames: AtomicU64::new(0),
            live: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            close_reasons: Mutex::new(Vec::new()),
        })
    }

    /// Latency is recorded for changes whose intended send time falls in `[start, end)`.
    pub fn set_window(&self, phase: usize, start_ns: u64, end_ns: u64) {
        let stats = &self.phases[phase];
        stats.window_start.store(start_ns, Ordering::Release);
        stats.window_end.store(end_ns, Ordering::Release);
    }

    pub fn delivered(&self, phase: usize) -> u64 {
        self.phases[phase].delivered.load(Ordering::Acquire)
    }

    pub fn latency(&self, phase: usize) -> Latency {
        let mut all = Latency::new();
        for shard in &self.shards {
            if let Ok(shard) = shard.lock() {
                all.merge(&shard[phase]);
            }
        }
        all
    }

    pub fn close_reasons(&self) -> Vec<String> {
        self.close_reasons
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    fn note_close(&self, reason: String) {
        self.closed.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut reasons) = self.close_reasons.lock()
            && reasons.len() < 10
        {
            reasons.push(reason);
        }
    }

    /// Accounts for one text frame.
    pub fn on_text(&self, text: &str, shard: usize) {
        if !text.starts_with("{\"type\":\"event\"") {
            // Rare frames: parse properly (key order is the server's business).
            let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            match value["type"].as_str() {
                Some("live") => {
                    self.live.fetch_add(1, Ordering::AcqRel);
                }
                Some("event") => self.on_event(text, shard),
                _ => {}
            }
            return;
        }
        self.on_event(text, shard);
    }

    /// Accounts for one delivered change whose frame is the raw change body (nats-ws, nchan).
    pub fn on_payload(&self, text: &str, shard: usize) {
        self.on_event(text, shard);
    }

    /// A socket that has no `live` frame in its protocol counts as live once subscribed.
    pub fn mark_live(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    /// Notes a socket lost while the bench still wanted it.
    pub fn note_lost(&self, reason: String) {
        self.note_close(reason);
    }

    /// The latency window of a phase, `(start, end)` in clock ns (`(0, 0)` before it is set).
    pub fn window(&self, phase: usize) -> (u64, u64) {
        let stats = &self.phases[phase];
        (
            stats.window_start.load(Ordering::Acquire),
            stats.window_end.load(Ordering::Acquire),
        )
    }

    fn on_event(&self, text: &str, shard: usize) {
        let now = self.clock.now_ns();
        self.frames.fetch_add(1, Ordering::Relaxed);
        let Some((phase, intended)) = parse_frame(text) else {
            return;
        };
        let Some(stats) = self.phases.get(phase) else {
            return;
        };
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        let start = stats.window_start.load(Ordering::Acquire);
        let end = stats.window_end.load(Ordering::Acquire);
        if intended >= start && intended < end {
            let micros = now.saturating_sub(intended) / 1000;
            if let Ok(mut shard) = self.shards[shard % SHARDS].lock() {
                shard[phase].record_us(micros);
            }
        }
    }
}

/// Where the WebSockets go.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ws://host:port/path`.
    pub url: String,
}

impl Endpoint {
    /// The node's `/v1/ws` from its base URL (`http://host:port`).
    pub async fn for_node(base_url: &str) -> anyhow::Result<Self> {
        let authority = base_url
            .trim_end_matches('/')
            .strip_prefix("http://")
            .with_context(|| format!("{base_url}: only http:// URLs are supported"))?;
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} has no address"))?;
        Ok(Self {
            addr,
            url: format!("ws://{authority}/v1/ws"),
        })
    }

    pub fn for_relay(addr: SocketAddr) -> Self {
        Self {
            addr,
            url: format!("ws://{addr}/v1/ws"),
        }
    }
}

fn client_config() -> WebSocketConfig {
    // Small buffers: the bench process may hold 100k sockets.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Opens one authenticated WebSocket, from `source` when given (to spread client ports
/// over 127.0.0.x beyond the ~28k ephemeral ports of one source address).
pub async fn connect(
    endpoint: &Endpoint,
    token: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    connect_url(endpoint.addr, &endpoint.url, Some(token), source).await
}

/// Opens a WebSocket to `url` at `addr`, with a bearer token when given.
pub async fn connect_url(
    addr: SocketAddr,
    url: &str,
    bearer: Option<&str>,
    source: Option<IpAddr>,
) -> anyhow::Result<Ws> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("binding {source}"))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .context("TCP connect timed out")??;
    stream.set_nodelay(true)?;
    let mut request = url.into_client_request()?;
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_config())),
    )
    .await
    .context("WebSocket handshake timed out")??;
    Ok(ws)
}

/// Runs one subscribed client until `stop` turns true: subscribes, then accounts frames.
pub async fn run_client(
    mut ws: Ws,
    sink: Arc<Sink>,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) {
    if ws
        .send(Message::text(r#"{"type":"subscribe","resume_from":null}"#))
        .await
        .is_err()
    {
        sink.note_close("could not send subscribe".into());
        return;
    }
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            changed = stop.changed() => {
                let stopping = changed.is_err() || *stop.borrow_and_update();
                if stopping {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
                continue;
            }
        };
        {
            match message {
                Some(Ok(Message::Text(text))) => sink.on_text(text.as_str(), shard),
                Some(Ok(Message::Close(frame))) => {
                    if !*stop.borrow() {
                        sink.note_close(frame.map_or_else(
                            || "close without code".to_owned(),
                            |f| format!("close {} {}", u16::from(f.code), f.reason),
                        ));
                    }
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    if !*stop.borrow() {
                        sink.note_close(format!("error: {error}"));
                    }
                    return;
                }
                None => {
                    if !*stop.borrow() {
                        sink.note_close("stream ended".into());
                    }
                    return;
                }
            }
        }
    }
}

/// A customer the bench can log in as and publish changes for.
#[derive(Clone, Debug)]
pub struct Customer {
    pub customer_id: String,
    pub account_id: String,
    pub currency: String,
    /// The node's access token (the relay takes the customer id as its token).
    pub token: String,
}

/// Logs in every login, a few at a time, and finds each customer's id and first account.
pub async fn login_all(
    base_url: &str,
    logins: &[String],
    password: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<Customer>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = base_url.trim_end_matches('/').to_owned();
    let results: Vec<anyhow::Result<Customer>> = futures::stream::iter(logins.iter().enumerate())
        .map(|(i, login)| {
            let http = http.clone();
            let base = base.clone();
            async move { login_one(&http, &base, login, password, i).await }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn login_one(
    http: &reqwest::Client,
    base: &str,
    login: &str,
    password: &str,
    i: usize,
) -> anyhow::Result<Customer> {
    let response = http
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"login": login, "password": password, "device_id": format!("arbat-bench-{i}")}))
        .send()
        .await
        .with_context(|| format!("logging in {login}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.as_u16() == 202 {
        bail!(
            "login {login} asks for a second factor ({body}); the bench needs logins that do not"
        );
    }
    if !status.is_success() {
        bail!("login {login}: {status} {body}");
    }
    let token = body["access_token"]
        .as_str()
        .with_context(|| format!("login {login}: no access_token in {body}"))?
        .to_owned();
    let me: serde_json::Value = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let customer_id = me["customer_id"]
        .as_str()
        .with_context(|| format!("/v1/me of {login}: {me}"))?
        .to_owned();
    let products: serde_json::Value = http
        .get(format!("{base}/v1/products"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let account = products["accounts"]
        .as_array()
        .and_then(|accounts| {
            accounts
                .iter()
                .find(|a| a["balance"]["currency"].is_string())
        })
        .with_context(|| format!("{customer_id} has no account with a balance: {products}"))?;
    Ok(Customer {
        customer_id,
        account_id: account["id"].as_str().unwrap_or_default().to_owned(),
        currency: account["balance"]["currency"]
            .as_str()
            .unwrap_or("RUB")
            .to_owned(),
        token,
    })
}

/// The source address of the `i`-th socket: 127.0.0.2, .3, … each for `per_source` sockets
/// (only for loopback targets; elsewhere the system picks).
pub fn source_for(target: &SocketAddr, i: usize, per_source: usize) -> Option<IpAddr> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let n = 2 + i / per_source.max(1);
    let (b, c) = ((n / 256) % 256, n % 256);
    Some(IpAddr::from([127, 0, b as u8, c as u8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_phase_and_intended_time() {
        let id = change_id("k3", 2, 123_456_789, 7);
        let frame = format!(
            r#"{{"type":"event","seq":4,"event":{{"seq":4,"id":"{id}","kind":"balance_changed"}}}}"#
        );
        assert_eq!(parse_frame(&frame), Some((2, 123_456_789)));
        assert_eq!(
            parse_frame(r#"{"type":"event","seq":1,"event":{"id":"other"}}"#),
            None
        );
    }

    #[test]
    fn sink_attributes_frames_and_latency_to_phases() {
        let sink = Sink::new(Clock::default());
        sink.set_window(1, 0, u64::MAX);
        sink.on_text(r#"{"type":"live","head":0}"#, 0);
        sink.on_text(r#"{"head":0,"type":"live"}"#, 0);
        let id = change_id("r", 1, 0, 0);
        sink.on_text(
            &format!(r#"{{"type":"event","seq":1,"event":{{"id":"{id}"}}}}"#),
            3,
        );
        let late = change_id("r", 2, 0, 1);
        sink.on_text(
            &format!(r#"{{"type":"event","seq":2,"event":{{"id":"{late}"}}}}"#),
            3,
        );
        assert_eq!(sink.live.load(Ordering::Acquire), 2);
        assert_eq!(sink.frames.load(Ordering::Acquire), 2);
        assert_eq!(sink.delivered(1), 1);
        assert_eq!(sink.latency(1).len(), 1);
        // Phase 2 has an empty window: counted, not timed.
        assert_eq!(sink.delivered(2), 1);
        assert!(sink.latency(2).is_empty());
    }

    #[test]
    fn sources_spread_over_loopback() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            source_for(&target, 0, 100),
            Some(IpAddr::from([127, 0, 0, 2]))
        );
        assert_eq!(
            source_for(&target, 250, 100),
            Some(IpAddr::from([127, 0, 0, 4]))
        );
        assert_eq!(
            source_for(&target, 254 * 100, 100),
            Some(IpAddr::from([127, 0, 1, 0]))
        );
        let remote: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(source_for(&remote, 0, 100), None);
    }
}
