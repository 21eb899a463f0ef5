//! End-to-end test harness: runs the real `arbat` binary and talks to it like an app, a
//! back system and an operator would.
//!
//! # Layout
//!
//! - [`ArbatProcess`]: a node process (embedded or cluster), killed on drop; `kill9` and
//!   `restart` for crash tests.
//! - [`Client`]: HTTP calls as a customer or as the back office.
//! - [`Socket`]: the WebSocket protocol of API.md, with bounded waits.
//!
//! The binary is `ARBAT_BIN`, else `target/debug/arbat` of this workspace (`.ci/run` builds
//! it before the tests).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use testkit::{NatsServer, PgDatabase, eventually, free_port};

pub mod fixtures;

pub const BACKOFFICE_KEY: &str = "e2e-backoffice-key-0123456789";
pub const DEMO_PASSWORD: &str = "arbat-demo";

pub fn arbat_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ARBAT_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/arbat")
}

/// The Operation Studio definitions shipped in the repository (signed with the dev key).
pub fn operations_dir() -> String {
    format!("{}/../operations", env!("CARGO_MANIFEST_DIR"))
}

pub fn phone(n: u32) -> String {
    format!("+7999{n:07}")
}
pub fn customer(n: u32) -> String {
    format!("c{n:06}")
}
pub fn account(n: u32) -> String {
    format!("a{n:06}")
}

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub port: u16,
}

impl NodeSpec {
    pub fn embedded(data_dir: &std::path::Path) -> Self {
        let port = free_port();
        Self {
            port,
            env: vec![],
            args: vec![
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--backoffice-key".into(),
                BACKOFFICE_KEY.into(),
                "--operations-dir".into(),
                operations_dir(),
            ],
        }
    }

    pub fn cluster(nats_url: &str, database_url: &str, node_id: &str, sms_url: &str) -> Self {
        let port = free_port();
        Self {
            port,
            env: vec![("ARBAT_SMS_URL".into(), sms_url.into())],
            args: vec![
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--nats".into(),
                nats_url.into(),
                "--database-url".into(),
                database_url.into(),
                "--node-id".into(),
                node_id.into(),
                "--backoffice-key".into(),
                BACKOFFICE_KEY.into(),
                "--demo".into(),
                "--partitions".into(),
                "16".into(),
                "--lease-ttl-ms".into(),
                "2000".into(),
                "--operations-dir".into(),
                operations_dir(),
            ],
        }
    }

    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(name.into());
        self.args.push(value.into());
        self
    }
}

/// A running `arbat serve`, SIGKILLed on drop.
pub struct ArbatProcess {
    pub spec: NodeSpec,
    child: Option<Child>,
}

impl ArbatProcess {
    pub async fn start(spec: NodeSpec) -> anyhow::Result<Self> {
        let binary = arbat_binary();
        if !binary.exists() {
            bail!(
                "{} not found: build it with `cargo build -p arbat` or set ARBAT_BIN",
                binary.display()
            );
        }
        let child = Command::new(&binary)
            .args(&spec.args)
            .envs(spec.env.iter().cloned())
            .env("ARBAT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting arbat")?;
        let process = Self {
            spec,
            child: Some(child),
        };
        process.wait_ready(Duration::from_secs(60)).await?;
        Ok(process)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.spec.port)
    }

    pub fn client(&self) -> Client {
        Client {
            base: self.url(),
            http: reqwest::Client::new(),
        }
    }

    async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.url())).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node on port {} not ready within {limit:?}", self.spec.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Partitions this node owns, as `/readyz` reports them.
    pub async fn partitions(&self) -> Vec<u32> {
        let body: Value = match reqwest::get(format!("{}/readyz", self.url())).await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        body["partitions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_u64().map(|p| p as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let mut child = child;
        child.wait().ok().and_then(|s| s.code())
    }

    /// Starts the same node again (same port, data, id).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let again = Self::start(self.spec.clone()).await?;
        *self = again;
        Ok(())
    }
}

impl Drop for ArbatProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// HTTP as an app or a back system.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub async fn login(&self, n: u32) -> anyhow::Result<String> {
        let (status, body) = self
            .post(
                "/v1/auth/login",
                None,
                json!({"login": phone(n), "password": DEMO_PASSWORD, "device_id": "e2e"}),
            )
            .await?;
        if status != 200 {
            bail!("login of {n} failed: {status} {body}");
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access_token")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.delete(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// A POST with an `Idempotency-Key` (payments, conversions).
    pub async fn post_idempotent(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// A PUT with an `Idempotency-Key` (no key when `key` is empty).
    pub async fn put_idempotent(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body);
        if !key.is_empty() {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// A posting in the reference ABS (it publishes transaction_posted + balance_changed).
    pub async fn abs_post(&self, id: &str, account: &str, amount: &str) -> anyhow::Result<Value> {
        let body = json!({"id": id, "account_id": account, "amount": {"amount": amount, "currency": "RUB"}, "description": format!("e2e {id}")});
        let (status, body) = self
            .post("/admin/v1/abs/postings", Some(BACKOFFICE_KEY), body)
            .await?;
        if status != 201 {
            bail!("posting {id} refused: {status} {body}");
        }
        Ok(body)
    }

    /// `GET /v1/feed` walked to the end, oldest first.
    pub async fn whole_feed(&self, token: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/feed?limit=100&cursor={c}"),
                None => "/v1/feed?limit=100".to_string(),
            };
            let (status, body) = self.get(&path, Some(token)).await?;
            if status != 200 {
                bail!("feed: {status} {body}");
            }
            items.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        items.reverse();
        Ok(items)
    }
}

/// A balance change as a back system sends it.
pub fn balance_change(id: &str, n: u32, amount: &str) -> Value {
    json!({"id": id, "customer_id": customer(n), "kind": "balance_changed",
        "at": "2026-12-04T10:00:00Z", "account_id": account(n),
        "balance": {"amount": amount, "currency": "RUB"}})
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking API.md's protocol.
pub struct Socket {
    stream: WsStream,
    /// The last seq received; every event must follow it exactly (no gap, no duplicate).
    pub last_seq: Option<u64>,
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Event { seq: u64, event: Value },
    Live { head: u64 },
    Closed { code: Option<u16> },
}

impl Socket {
    /// Connects with the token in the Authorization header.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Self> {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self {
            stream,
            last_seq: None,
        })
    }

    /// Connects with the browser form: subprotocols `arbat.v1, bearer.<token>`.
    pub async fn connect_subprotocol(
        url: &str,
        token: &str,
    ) -> anyhow::Result<(Self, Option<String>)> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("arbat.v1, bearer.{token}").parse()?,
        );
        let (stream, response) = tokio_tungstenite::connect_async(request).await?;
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((
            Self {
                stream,
                last_seq: None,
            },
            chosen,
        ))
    }

    pub async fn subscribe(&mut self, resume_from: Option<u64>) -> anyhow::Result<()> {
        self.last_seq = resume_from;
        let message = json!({"type": "subscribe", "resume_from": resume_from}).to_string();
        self.stream.send(Message::Text(message.into())).await?;
        Ok(())
    }

    /// The next frame, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .context("no frame in time")?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text)?;
                    return match value["type"].as_str() {
                        Some("event") => {
                            let seq = value["seq"].as_u64().context("seq")?;
                            if let Some(last) = self.last_seq
                                && seq != last + 1
                            {
                                bail!("seq {seq} after {last}: a gap or a duplicate");
                            }
                            self.last_seq = Some(seq);
                            Ok(Frame::Event {
                                seq,
                                event: value["event"].clone(),
                            })
                        }
                        Some("live") => {
                            let head = value["head"].as_u64().context("head")?;
                            if self.last_seq.is_none() {
                                self.last_seq = Some(head);
                            }
                            Ok(Frame::Live { head })
                        }
                        other => bail!("unexpected frame type {other:?}: {text}"),
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Frame::Closed {
                        code: frame.map(|f| u16::from(f.code)),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Frame::Closed { code: None }),
            }
        }
    }

    /// Reads events until `count` have arrived; fails on anything else.
    pub async fn events(
        &mut self,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<(u64, Value)>> {
        let mut out = vec![];
        while out.len() < count {
            match self.next(limit).await? {
                Frame::Event { seq, event } => out.push((seq, event)),
                other => bail!(
                    "expected an event, got {other:?} after {} events",
                    out.len()
                ),
            }
        }
        Ok(out)
    }

    /// Reads until `count` events that are not `notification` outcomes have arrived (those
    /// come asynchronously from the notifier and interleave); the seqs of all of them are
    /// checked gapless as they arrive.
    pub async fn business_events(
        &mut self,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<(u64, Value)>> {
        let mut out = vec![];
        while out.len() < count {
            match self.next(limit).await? {
                Frame::Event { event, .. } if event["kind"] == "notification" => {}
                Frame::Event { seq, event } => out.push((seq, event)),
                Frame::Live { .. } => {}
                other => bail!(
                    "expected an event, got {other:?} after {} events",
                    out.len()
                ),
            }
        }
        Ok(out)
    }

    /// Reads every frame up to and including `live`; returns the events and the head.
    pub async fn until_live(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<(Vec<(u64, Value)>, u64)> {
        let mut out = vec![];
        loop {
            match self.next(limit).await? {
                Frame::Event { seq, event } => out.push((seq, event)),
                Frame::Live { head } => return Ok((out, head)),
                other => bail!("expected events then live, got {other:?}"),
            }
        }
    }

    /// True if no business event arrives within `quiet` (notification outcomes may).
    pub async fn no_business_event(&mut self, quiet: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Err(_) => return true,
                Ok(Frame::Event { event, .. }) if event["kind"] == "notification" => continue,
                Ok(_) => return false,
            }
        }
    }

    /// True if nothing arrives within `quiet`.
    pub async fn is_quiet(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.stream.next())
            .await
            .is_err()
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// A local SMS gateway (API.md's generic JSON provider) that accepts everything and keeps
/// what it received: a real HTTP server on a real socket.
pub struct SmsGateway {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmsGateway {
    pub async fn start() -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/sms", listener.local_addr()?);
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Keep-alive: answer every request on the connection.
                    loop {
                        let Some(end) = find(&buffer, b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        while buffer.len() < end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Value =
                            serde_json::from_slice(&buffer[end + 4..end + 4 + length])
                                .unwrap_or(Value::Null);
                        if let Ok(mut sink) = sink.lock() {
                            sink.push(body);
                        }
                        buffer.drain(..end + 4 + length);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self {
            url,
            received,
            task,
        })
    }

    pub fn messages(&self) -> Vec<Value> {
        self.received.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The newest one-time code sent to `phone` after `skip` earlier messages to it.
    pub async fn code_for(&self, phone: &str, skip: usize) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let codes: Vec<String> = self
                .messages()
                .iter()
                .filter(|m| m["to"] == phone)
                .filter_map(|m| six_digits(m["text"].as_str()?))
                .collect();
            if codes.len() > skip {
                return Ok(codes[codes.len() - 1].clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no code for {phone} (after {skip})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many messages went to `phone`.
    pub fn count_to(&self, phone: &str) -> usize {
        self.messages().iter().filter(|m| m["to"] == phone).count()
    }
}

impl Drop for SmsGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The code in a code SMS ("Arbat: code 123456 (...)" or "Arbat: код 123456 (...)").
fn six_digits(text: &str) -> Option<String> {
    let start = ["code ", "код "]
        .iter()
        .find_map(|marker| text.find(marker).map(|at| at + marker.len()))?;
    let code: String = text[start..].chars().take(6).collect();
    (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
