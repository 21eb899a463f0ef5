//! The baseline: a bare NATS→WebSocket relay with no actor and no store.
//!
//! One core-NATS subscription on `abs.evt.*`; each message is wrapped in the same frame the
//! node sends (`{"type":"event","seq":N,"event":<change>}`, a per-customer counter for the
//! seq) and handed to the sockets of that customer through bounded queues (256 frames, like
//! the node's; a socket whose queue is full is dropped, like the node's "too slow").
//! Sockets speak the node's protocol: `Authorization: Bearer <customer id>` (no signature
//! check: verifying a token costs once per connect, not per event or per idle socket), then
//! `subscribe`, then `{"type":"live","head":0}`, then events.
//!
//! It runs as its own process (`arbat bench relay`), so its memory and CPU are measured
//! apart from the clients', exactly like the node's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// `arbat bench relay`: runs the baseline relay until SIGTERM/SIGINT.
#[derive(Clone, Debug, clap::Args)]
pub struct RelayArgs {
    /// NATS to read changes from.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Address to listen on; prints `relay listening on ADDR` when ready.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Subject to relay (the last token is the customer id).
    #[arg(long, default_value = "abs.evt.*")]
    pub subject: String,
    /// Frames queued per socket before it is dropped as too slow.
    #[arg(long, default_value_t = 256)]
    pub buffer: usize,
}

#[derive(Default)]
struct Topic {
    seq: u64,
    members: Vec<(u64, mpsc::Sender<Utf8Bytes>)>,
}

struct Relay {
    topics: DashMap<String, Topic>,
    next_id: AtomicU64,
    buffer: usize,
}

/// Runs the relay until a termination signal.
pub async fn serve(args: RelayArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let nats = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 16)
        .connect(&args.nats_url)
        .await?;
    let mut subscriber = nats.subscribe(args.subject.clone()).await?;
    nats.flush().await?;
    let relay = Arc::new(Relay {
        topics: DashMap::new(),
        next_id: AtomicU64::new(1),
        buffer: args.buffer.max(1),
    });
    println!("relay listening on {}", listener.local_addr()?);

    let fanout_relay = relay.clone();
    let fanout = tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let customer = message
                .subject
                .as_str()
                .rsplit('.')
                .next()
                .unwrap_or_default();
            let Some(mut topic) = fanout_relay.topics.get_mut(customer) else {
                continue;
            };
            topic.seq += 1;
            let event = String::from_utf8_lossy(&message.payload);
            let frame = Utf8Bytes::from(format!(
                "{{\"type\":\"event\",\"seq\":{},\"event\":{event}}}",
                topic.seq
            ));
            topic
                .members
                .retain(|(_, tx)| tx.try_send(frame.clone()).is_ok());
        }
    });

    let accept_relay = relay.clone();
    let accept = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(socket(stream, accept_relay.clone()));
                }
                Err(error) => {
                    // Out of descriptors: back off rather than spin.
                    tracing::warn!(%error, "relay accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    terminated().await;
    accept.abort();
    fanout.abort();
    Ok(())
}

async fn terminated() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn server_config() -> WebSocketConfig {
    // The node's settings: most sockets are idle, buffers stay small.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(4 * 1024))
        .max_frame_size(Some(4 * 1024))
}

// The handshake callback's signature is tungstenite's; its error type is not ours to box.
#[allow(clippy::result_large_err)]
async fn socket(stream: TcpStream, relay: Arc<Relay>) {
    let _ = stream.set_nodelay(true);
    let mut customer: Option<String> = None;
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        match bearer {
            Some(token) => {
                customer = Some(token.to_owned());
                Ok(response)
            }
            None => {
                let mut refusal = ErrorResponse::new(Some("bearer token required".into()));
                *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
        }
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(server_config()))
            .await
    else {
        return;
    };
    let Some(customer) = customer else { return };
    // Wait for `subscribe`.
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if text.contains("\"subscribe\"") => {}
        _ => {
            let _ = ws.close(None).await;
            return;
        }
    }
    let id = relay.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(relay.buffer);
    relay
        .topics
        .entry(customer.clone())
        .or_default()
        .members
        .push((id, tx));
    if ws
        .send(Message::text(r#"{"type":"live","head":0}"#))
        .await
        .is_ok()
    {
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        if ws.send(Message::Text(frame)).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let _ = ws.close(None).await;
                        break;
                    }
                },
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    if let Some(mut topic) = relay.topics.get_mut(&customer) {
        topic.members.retain(|(member, _)| *member != id);
    }
    relay
        .topics
        .remove_if(&customer, |_, topic| topic.members.is_empty());
}
