//! `GET /v1/ws`: resumable live push (API.md "WebSocket").
//!
//! Close codes (documented in docs/websocket.md):
//! - 4001 `token_expired`: the access token expired; reconnect with a fresh one.
//! - 4003 `session_revoked`: the session was logged out or revoked (on any node).
//! - 4008 `too_slow`: the client fell too far behind; reconnect with `resume_from`.
//! - 4400 `bad_message`: no `subscribe` in time, or a message the server does not understand.
//! - 1001 going away: the node is shutting down; reconnect (to any node) and resume.
//! - 1011 server error: the store could not replay; reconnect and resume.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kernel::{CustomerId, FeedEvent, metrics};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::problem::Problem;
use crate::tokens::Claims;

pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
pub const CLOSE_SESSION_REVOKED: u16 = 4003;
pub const CLOSE_TOO_SLOW: u16 = 4008;
pub const CLOSE_BAD_MESSAGE: u16 = 4400;
const REPLAY_PAGE: u32 = 500;
/// Sockets keep small buffers: most are idle, and memory per idle socket is a budget.
const READ_BUFFER_BYTES: usize = 1024;
const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * 1024;

/// The token from `Authorization: Bearer` or the `bearer.<token>` subprotocol.
fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("bearer.").map(str::to_owned))
}

pub(crate) async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(token) = token_of(&headers) else {
        return Problem::unauthorized().into_response();
    };
    let claims = match gateway.verify_customer_token(&token) {
        Ok(claims) => claims,
        Err(problem) => return problem.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return Problem::bad_request(e.body_text()).into_response(),
    };
    // Reserve a slot before upgrading, so the limit holds under a burst of connects.
    let open = gateway.sockets.fetch_add(1, Ordering::AcqRel);
    if open >= gateway.config.max_connections {
        gateway.sockets.fetch_sub(1, Ordering::AcqRel);
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this node holds its maximum of sockets; try another or later",
        )
        .into_response();
    }
    let offered_arbat = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "arbat.v1");
    let mut upgrade = upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES);
    if offered_arbat {
        upgrade.set_selected_protocol(HeaderValue::from_static("arbat.v1"));
    }
    let slot = SocketSlot(gateway.clone());
    upgrade
        .on_failed_upgrade(|_| {})
        .on_upgrade(move |socket| async move {
            metrics::SOCKETS_OPEN.inc();
            session(socket, slot.0.clone(), claims).await;
            metrics::SOCKETS_OPEN.dec();
            drop(slot);
        })
}

/// Frees the connection slot however the socket ends (including a failed upgrade).
struct SocketSlot(Arc<Gateway>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe { resume_from: Option<u64> },
}

enum End {
    Close(u16, &'static str),
    Gone,
}

async fn session(mut socket: WebSocket, gateway: Arc<Gateway>, claims: Claims) {
    let mut revoked = gateway.revocations.watch(&claims.sid);
    let end = match run_session(&mut socket, &gateway, &claims, &mut revoked).await {
        Ok(()) => End::Gone,
        Err(end) => end,
    };
    gateway.revocations.unwatch(&claims.sid);
    drop(revoked);
    if let End::Close(code, reason) = end {
        if code == CLOSE_TOO_SLOW {
            metrics::SOCKETS_SHED_SLOW.inc();
        }
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

async fn run_session(
    socket: &mut WebSocket,
    gateway: &Gateway,
    claims: &Claims,
    revoked: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), End> {
    let config = &gateway.config;
    let customer = &claims.sub;
    let expires_in = (claims.exp - kernel::now().unix_timestamp()).max(0) as u64;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
    tokio::pin!(expiry);

    // 1. Wait for `subscribe`.
    let resume_from = tokio::select! {
        message = tokio::time::timeout(config.ws_subscribe_timeout, socket.recv()) => match message {
            Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<ClientMessage>(&text) {
                Ok(ClientMessage::Subscribe { resume_from }) => resume_from,
                Err(_) => return Err(End::Close(CLOSE_BAD_MESSAGE, "expected subscribe")),
            },
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return Ok(()),
            Ok(Some(Ok(_))) => return Err(End::Close(CLOSE_BAD_MESSAGE, "expected subscribe")),
            Err(_) => return Err(End::Close(CLOSE_BAD_MESSAGE, "subscribe timeout")),
        },
        _ = &mut expiry => return Err(End::Close(CLOSE_TOKEN_EXPIRED, "token_expired")),
        _ = crate::revocations::revoked(revoked) => return Err(End::Close(CLOSE_SESSION_REVOKED, "session_revoked")),
    };

    // 2. Listen first (buffering), then replay from the store, then drain live skipping
    //    what the replay already sent: no gap and no duplicate.
    let (_membership, mut live) = gateway
        .hub
        .join(customer, config.ws_live_buffer)
        .await
        .map_err(|_| End::Close(1011, "live subject unavailable"))?;
    let mut last_sent = match resume_from {
        Some(seq) => seq,
        None => gateway
            .store
            .load_customer(customer)
            .await
            .map_err(|_| End::Close(1011, "store unavailable"))?
            .map_or(0, |r| r.version),
    };
    if resume_from.is_some() {
        last_sent = replay(socket, gateway, customer, last_sent, None).await?;
    }
    send(
        socket,
        config.ws_send_timeout,
        json!({"type": "live", "head": last_sent}).to_string(),
    )
    .await?;

    // 3. Live.
    let mut ping = tokio::time::interval(config.ws_ping_interval);
    ping.tick().await;
    let mut awaiting_pong = false;
    let mut shutdown = gateway.shutdown.clone();
    loop {
        tokio::select! {
            payload = live.recv() => {
                let Some(payload) = payload else { return Err(End::Close(CLOSE_TOO_SLOW, "too_slow")) };
                let Ok(event) = serde_json::from_slice::<FeedEvent>(&payload) else { continue };
                if event.seq <= last_sent {
                    continue;
                }
                if event.seq > last_sent + 1 {
                    // A gap: something was published out of order or lost. The store has it.
                    last_sent = replay(socket, gateway, customer, last_sent, Some(event.seq)).await?;
                    continue;
                }
                send(socket, config.ws_send_timeout, event_frame(event.seq, &payload)).await?;
                last_sent = event.seq;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(_)) => return Err(End::Close(CLOSE_BAD_MESSAGE, "unexpected message")),
            },
            _ = ping.tick() => {
                if awaiting_pong {
                    return Ok(());
                }
                awaiting_pong = true;
                tokio::time::timeout(config.ws_send_timeout, socket.send(Message::Ping(Default::default())))
                    .await
                    .map_err(|_| End::Close(CLOSE_TOO_SLOW, "too_slow"))?
                    .map_err(|_| End::Gone)?;
            }
            _ = &mut expiry => return Err(End::Close(CLOSE_TOKEN_EXPIRED, "token_expired")),
            _ = crate::revocations::revoked(revoked) => return Err(End::Close(CLOSE_SESSION_REVOKED, "session_revoked")),
            _ = crate::stopped(&mut shutdown) => return Err(End::Close(1001, "going_away")),
        }
    }
}

/// Sends the journal after `after`, up to `until` (inclusive) or its end; returns the last
/// seq sent.
async fn replay(
    socket: &mut WebSocket,
    gateway: &Gateway,
    customer: &CustomerId,
    mut after: u64,
    until: Option<u64>,
) -> Result<u64, End> {
    loop {
        let events = gateway
            .store
            .journal_after(customer, after, REPLAY_PAGE)
            .await
            .map_err(|_| End::Close(1011, "store unavailable"))?;
        let page_len = events.len();
        for event in events {
            if until.is_some_and(|until| event.seq > until) {
                return Ok(after);
            }
            let payload = event.to_json();
            send(
                socket,
                gateway.config.ws_send_timeout,
                event_frame(event.seq, &payload),
            )
            .await?;
            after = event.seq;
        }
        if page_len < REPLAY_PAGE as usize {
            return Ok(after);
        }
    }
}

fn event_frame(seq: u64, event_json: &[u8]) -> String {
    let event = std::str::from_utf8(event_json).unwrap_or("{}");
    format!("{{\"type\":\"event\",\"seq\":{seq},\"event\":{event}}}")
}

async fn send(socket: &mut WebSocket, limit: Duration, text: String) -> Result<(), End> {
    match tokio::time::timeout(limit, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => {
            metrics::FRAMES_SENT.inc();
            Ok(())
        }
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(CLOSE_TOO_SLOW, "too_slow")),
    }
}
