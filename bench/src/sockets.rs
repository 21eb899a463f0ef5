//! Opening, waiting for and closing many client sockets: shared by every scenario that
//! holds WebSockets (live, idle, scale).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clients::{self, Endpoint, Sink};

/// How sockets are opened.
#[derive(Clone, Copy, Debug)]
pub struct ConnectSettings {
    /// Client sockets per 127.0.0.x source address.
    pub per_source: usize,
    /// Concurrent connection attempts.
    pub concurrency: usize,
}

/// Sockets opened in this run so far: each gets a fresh (source address, port) slot.
static SOCKET_SLOTS: AtomicUsize = AtomicUsize::new(0);

pub struct Opened {
    pub handles: Vec<JoinHandle<()>>,
    /// Sockets open per token.
    pub per_token: Vec<u64>,
    pub failures: usize,
    pub first_error: Option<String>,
    pub took: Duration,
}

/// The protocol the clients speak; every one reports into the same [`Sink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Arbat's `/v1/ws` (and the relay's): bearer token, `subscribe`, `live`, event frames.
    Arbat,
    /// NATS over nats-server's WebSocket listener: CONNECT, SUB `abs.evt.<token>`, MSG frames.
    NatsWs,
    /// nginx + nchan: the WebSocket `/sub/<token>` receives each published body.
    Nchan,
}

/// Opens `count` Arbat sockets, the i-th with `tokens[i % len]`, each running a client.
pub async fn open_sockets(
    endpoint: &Endpoint,
    tokens: &[String],
    count: usize,
    sink: &Arc<Sink>,
    stop: &watch::Receiver<bool>,
    settings: ConnectSettings,
) -> Opened {
    open_sockets_with(Wire::Arbat, endpoint, tokens, count, sink, stop, settings).await
}

/// Opens `count` sockets speaking `wire`, the i-th for `tokens[i % len]` (an access token,
/// or the customer id for the peers).
pub async fn open_sockets_with(
    wire: Wire,
    endpoint: &Endpoint,
    tokens: &[String],
    count: usize,
    sink: &Arc<Sink>,
    stop: &watch::Receiver<bool>,
    settings: ConnectSettings,
) -> Opened {
    let started = Instant::now();
    let mut opened = Opened {
        handles: Vec::with_capacity(count),
        per_token: vec![0; tokens.len()],
        failures: 0,
        first_error: None,
        took: Duration::ZERO,
    };
    if tokens.is_empty() {
        return opened;
    }
    let mut attempts = futures::stream::iter(0..count)
        .map(|i| {
            let slot = SOCKET_SLOTS.fetch_add(1, Ordering::Relaxed);
            let source = clients::source_for(&endpoint.addr, slot, settings.per_source);
            let token = &tokens[i % tokens.len()];
            async move {
                let ws = match wire {
                    Wire::Arbat => clients::connect(endpoint, token, source).await,
                    Wire::NatsWs => {
                        clients::connect_url(endpoint.addr, &endpoint.url, None, source).await
                    }
                    Wire::Nchan => {
                        let url = format!("{}/{token}", endpoint.url.trim_end_matches('/'));
                        clients::connect_url(endpoint.addr, &url, None, source).await
                    }
                };
                (i, ws)
            }
        })
        .buffer_unordered(settings.concurrency.max(1));
    while let Some((i, result)) = attempts.next().await {
        match result {
            Ok(ws) => {
                let token = tokens[i % tokens.len()].clone();
                opened.per_token[i % tokens.len()] += 1;
                let (sink, stop) = (sink.clone(), stop.clone());
                opened.handles.push(match wire {
                    Wire::Arbat => tokio::spawn(clients::run_client(ws, sink, i, stop)),
                    Wire::NatsWs => {
                        tokio::spawn(crate::peers::run_nats_ws_client(ws, token, sink, i, stop))
                    }
                    Wire::Nchan => tokio::spawn(crate::peers::run_nchan_client(ws, sink, i, stop)),
                });
            }
            Err(error) => {
                opened.failures += 1;
                opened
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    opened.took = started.elapsed();
    opened
}

/// Waits until `want` sockets got their `live` frame (bounded).
pub async fn wait_live(sink: &Sink, want: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while sink.live.load(Ordering::Acquire) < want {
        if Instant::now() > deadline {
            bail!(
                "only {} of {want} sockets were live within {limit:?} (closes: {:?})",
                sink.live.load(Ordering::Acquire),
                sink.close_reasons()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Tells every client to close and waits for them (bounded).
pub async fn close_all(stop: watch::Sender<bool>, handles: Vec<JoinHandle<()>>) {
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(handles)).await;
}
