//! Peers for the live path, driven by the same clients ([`Sink`] accounting) and the same
//! publisher rate as arbat and the relay, and the raw NATS pub→sub rate:
//!
//! - **nats-ws**: nats-server's own WebSocket listener (`websocket { no_tls: true }`); each
//!   client speaks the NATS protocol over the WebSocket (CONNECT, SUB `abs.evt.<customer>`,
//!   then MSG frames) and the change body is the frame. No authentication, no store after
//!   JetStream, no per-customer sequence: what a message broker alone delivers.
//! - **nchan**: nginx with the nchan module, run as a non-daemon child with a config of our
//!   own on a free port; changes are POSTed to `/pub/<customer>`, clients subscribe to the
//!   WebSocket `/sub/<customer>`. Skipped with a note when nginx or the module is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Endpoint, Sink, Ws};
use crate::cluster::{ChildProcess, TempDir};
use crate::nodes::BenchNats;

/// A peer of the live-path comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// nats-server's WebSocket listener.
    NatsWs,
    /// nginx + nchan.
    Nchan,
    /// No peer (`--peers none`).
    None,
}

impl Peer {
    pub fn name(&self) -> &'static str {
        match self {
            Peer::NatsWs => "nats-ws",
            Peer::Nchan => "nchan",
            Peer::None => "none",
        }
    }
}

/// nats-server with its WebSocket listener, for the nats-ws peer.
pub struct NatsWsPeer {
    pub nats: BenchNats,
}

impl NatsWsPeer {
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            nats: BenchNats::start(true).await?,
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        let port = self.nats.websocket_port.unwrap_or_default();
        Endpoint {
            addr: ([127, 0, 0, 1], port).into(),
            url: format!("ws://127.0.0.1:{port}/"),
        }
    }
}

/// Where Debian and others put nginx's dynamic modules.
const NCHAN_MODULE_DIRS: [&str; 4] = [
    "/usr/lib/nginx/modules",
    "/usr/lib64/nginx/modules",
    "/usr/share/nginx/modules",
    "/usr/local/nginx/modules",
];

/// nginx + nchan as a child process with its own config and folder.
pub struct NchanPeer {
    pub process: ChildProcess,
    pub port: u16,
    pub dir: TempDir,
}

/// Finds the nchan module, or says why the peer is skipped.
pub fn find_nchan(nginx: &Path) -> Result<PathBuf, String> {
    let version = Command::new(nginx).arg("-v").output();
    if !version.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "{} not found: install nginx and nchan (Debian: apt-get install nginx-light libnginx-mod-nchan)",
            nginx.display()
        ));
    }
    NCHAN_MODULE_DIRS
        .iter()
        .map(|dir| Path::new(dir).join("ngx_nchan_module.so"))
        .find(|path| path.exists())
        .ok_or_else(|| {
            "the nchan module (ngx_nchan_module.so) is not installed (Debian: apt-get install libnginx-mod-nchan)".into()
        })
}

impl NchanPeer {
    /// Starts nginx; `Ok(Err(reason))` when the peer is not installed.
    pub async fn start(nginx: &Path, sockets: usize) -> anyhow::Result<Result<Self, String>> {
        let module = match find_nchan(nginx) {
            Ok(module) => module,
            Err(reason) => return Ok(Err(reason)),
        };
        let dir = TempDir::new("arbat-bench-nchan")?;
        let port = testkit::free_port();
        let root = dir.path().display().to_string();
        let connections = (sockets + 1024).max(4096);
        let config = format!(
            "load_module {module};\n\
             daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
             pid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
             worker_rlimit_nofile {files};\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n\
               fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 16; nchan_message_timeout 120s; }}\n\
                 location ~ ^/sub/(\\w+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; nchan_subscriber_first_message newest; }}\n\
               }}\n}}\n",
            module = module.display(),
            files = 2 * connections,
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config)?;
        let mut command = Command::new(nginx);
        command
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"));
        let mut process =
            ChildProcess::spawn("nginx (nchan)", command, dir.path().join("nginx.log"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Err(error) = process.check_running() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                bail!("{error:#}\nerror.log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not listen on {port}; log:\n{}",
                    process.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Ok(Self { process, port, dir }))
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: ([127, 0, 0, 1], self.port).into(),
            url: format!("ws://127.0.0.1:{}/sub", self.port),
        }
    }

    pub fn publish_base(&self) -> String {
        format!("http://127.0.0.1:{}/pub", self.port)
    }

    /// nginx's processes (master and worker) for CPU and memory.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.process.pid();
        let mut pids = vec![master];
        if let Ok(children) =
            std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }
}

impl Drop for NchanPeer {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; a SIGKILL of the master alone (what
        // dropping the child does) would leave them running.
        let workers: Vec<u32> = self.pids().into_iter().skip(1).collect();
        self.process.stop(Duration::from_secs(5));
        for pid in workers {
            if running(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// One operation of the NATS protocol, server to client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsOp {
    Info,
    Ok,
    Ping,
    Pong,
    Err(String),
    Msg { subject: String, payload: Vec<u8> },
}

/// Incremental parser of the server side of the NATS protocol (the WebSocket frames carry
/// the byte stream in arbitrary pieces). Bounded: a payload over `max_payload` is an error.
#[derive(Default)]
pub struct NatsParser {
    buffer: BytesMut,
}

const MAX_NATS_PAYLOAD: usize = 1 << 20;

impl NatsParser {
    /// Adds bytes and returns every complete operation.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<NatsOp>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut ops = Vec::new();
        loop {
            let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") else {
                if self.buffer.len() > 4096 {
                    return Err("protocol line too long".into());
                }
                return Ok(ops);
            };
            let line = String::from_utf8_lossy(&self.buffer[..end]).to_string();
            let mut words = line.split_whitespace();
            let verb = words.next().unwrap_or_default().to_ascii_uppercase();
            match verb.as_str() {
                "MSG" => {
                    let args: Vec<&str> = words.collect();
                    let (subject, size) = match args.as_slice() {
                        [subject, _sid, size] | [subject, _sid, _, size] => (*subject, *size),
                        _ => return Err(format!("malformed MSG line {line:?}")),
                    };
                    let size: usize = size.parse().map_err(|_| format!("bad size in {line:?}"))?;
                    if size > MAX_NATS_PAYLOAD {
                        return Err(format!("payload of {size} bytes"));
                    }
                    if self.buffer.len() < end + 2 + size + 2 {
                        return Ok(ops);
                    }
                    let subject = subject.to_owned();
                    self.buffer.advance(end + 2);
                    let payload = self.buffer.split_to(size).to_vec();
                    self.buffer.advance(2);
                    ops.push(NatsOp::Msg { subject, payload });
                    continue;
                }
                "INFO" => ops.push(NatsOp::Info),
                "+OK" => ops.push(NatsOp::Ok),
                "PING" => ops.push(NatsOp::Ping),
                "PONG" => ops.push(NatsOp::Pong),
                "-ERR" => ops.push(NatsOp::Err(line[4..].trim().to_owned())),
                _ => return Err(format!("unknown operation {line:?}")),
            }
            self.buffer.advance(end + 2);
        }
    }
}

/// A nats-ws client: subscribes to `abs.evt.<customer>` and accounts every MSG payload.
pub async fn run_nats_ws_client(
    mut ws: Ws,
    customer: String,
    sink: Arc<Sink>,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) {
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"arbat-bench\"}}\r\nSUB abs.evt.{customer} 1\r\nPING\r\n"
    );
    if ws.send(Message::binary(hello.into_bytes())).await.is_err() {
        sink.note_lost("could not send CONNECT".into());
        return;
    }
    let mut parser = NatsParser::default();
    let mut live = false;
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow_and_update() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
                continue;
            }
        };
        let bytes = match message {
            Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
            Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
            Some(Ok(Message::Close(_))) | None => {
                if !*stop.borrow() {
                    sink.note_lost("nats-ws closed".into());
                }
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                if !*stop.borrow() {
                    sink.note_lost(format!("nats-ws error: {error}"));
                }
                return;
            }
        };
        let ops = match parser.feed(&bytes) {
            Ok(ops) => ops,
            Err(error) => {
                sink.note_lost(format!("nats-ws protocol: {error}"));
                return;
            }
        };
        for op in ops {
            match op {
                NatsOp::Msg { payload, .. } => {
                    sink.on_payload(&String::from_utf8_lossy(&payload), shard)
                }
                NatsOp::Pong if !live => {
                    // The server answered the PING after the SUB: the subscription is in place.
                    live = true;
                    sink.mark_live();
                }
                NatsOp::Ping
                    if ws
                        .send(Message::binary(b"PONG\r\n".to_vec()))
                        .await
                        .is_err() =>
                {
                    sink.note_lost("could not answer PING".into());
                    return;
                }
                NatsOp::Err(error) => {
                    sink.note_lost(format!("nats-ws -ERR {error}"));
                    return;
                }
                _ => {}
            }
        }
    }
}

/// An nchan client: every text frame is a published change body.
pub async fn run_nchan_client(
    mut ws: Ws,
    sink: Arc<Sink>,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) {
    // nchan subscribes on the upgrade and has no `live` frame.
    sink.mark_live();
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow_and_update() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
                continue;
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => sink.on_payload(text.as_str(), shard),
            Some(Ok(Message::Binary(bytes))) => {
                sink.on_payload(&String::from_utf8_lossy(&bytes), shard)
            }
            Some(Ok(Message::Close(_))) | None => {
                if !*stop.borrow() {
                    sink.note_lost("nchan closed".into());
                }
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                if !*stop.borrow() {
                    sink.note_lost(format!("nchan error: {error}"));
                }
                return;
            }
        }
    }
}

/// The raw NATS pub→sub rate: core publishes of `payload_bytes` to one subscriber on its own
/// connection, bounded in flight, for `window`. Messages received per second.
pub async fn raw_nats_rate(
    nats_url: &str,
    payload_bytes: usize,
    window: Duration,
) -> anyhow::Result<f64> {
    let subscriber = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .connect(nats_url)
        .await
        .context("connecting the raw-rate subscriber")?;
    let publisher = async_nats::connect(nats_url)
        .await
        .context("connecting the raw-rate publisher")?;
    let mut subscription = subscriber.subscribe("bench.raw").await?;
    subscriber.flush().await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while subscription.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let payload = bytes::Bytes::from(vec![b'x'; payload_bytes.max(1)]);
    let warmup = Duration::from_millis(500);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut window_start: Option<(Instant, u64)> = None;
    const IN_FLIGHT: u64 = 20_000;
    loop {
        let now = Instant::now();
        if window_start.is_none() && now >= started + warmup {
            window_start = Some((now, received.load(Ordering::Relaxed)));
        }
        if now >= started + warmup + window {
            break;
        }
        if sent.saturating_sub(received.load(Ordering::Relaxed)) < IN_FLIGHT {
            for _ in 0..256 {
                publisher.publish("bench.raw", payload.clone()).await?;
                sent += 1;
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
    let (at, base) = window_start.unwrap_or((started, 0));
    let rate = received.load(Ordering::Relaxed).saturating_sub(base) as f64
        / at.elapsed().as_secs_f64().max(1e-3);
    reader.abort();
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nats_operations_split_anywhere() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPING\r\nMSG abs.evt.c1 1 5\r\nhello\r\nMSG abs.evt.c2 1 _INBOX.x 2\r\nhi\r\nPONG\r\n-ERR 'Slow Consumer'\r\n";
        let expected = vec![
            NatsOp::Info,
            NatsOp::Ok,
            NatsOp::Ping,
            NatsOp::Msg {
                subject: "abs.evt.c1".into(),
                payload: b"hello".to_vec(),
            },
            NatsOp::Msg {
                subject: "abs.evt.c2".into(),
                payload: b"hi".to_vec(),
            },
            NatsOp::Pong,
            NatsOp::Err("'Slow Consumer'".into()),
        ];
        // In one piece, and byte by byte.
        assert_eq!(NatsParser::default().feed(stream).unwrap(), expected);
        let mut parser = NatsParser::default();
        let mut ops = Vec::new();
        for byte in stream {
            ops.extend(parser.feed(&[*byte]).unwrap());
        }
        assert_eq!(ops, expected);
    }

    #[test]
    fn rejects_bad_nats_input() {
        assert!(NatsParser::default().feed(b"BOGUS\r\n").is_err());
        assert!(NatsParser::default().feed(b"MSG a\r\n").is_err());
        assert!(
            NatsParser::default()
                .feed(b"MSG a 1 99999999999\r\n")
                .is_err()
        );
        assert!(NatsParser::default().feed(&[b'x'; 5000]).is_err());
    }

    #[test]
    fn nchan_is_skipped_with_a_reason_when_nginx_is_missing() {
        let reason = find_nchan(Path::new("/nonexistent/nginx")).unwrap_err();
        assert!(reason.contains("apt-get install"), "{reason}");
    }
}
