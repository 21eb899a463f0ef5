//! The Identity Gateway: the one entry point of a node for apps and back systems.
//!
//! # Layout
//!
//! - [`router`] / [`run`]: the axum application and its server loop (bind port 0 in tests).
//! - auth.rs: password login (argon2id) and the bearer-token extractor.
//! - [`tokens`]: signed access tokens verified without a store round trip.
//! - rest.rs: customer reads (`/v1/me`, products, transactions, feed) answered by actors.
//! - ws.rs and hub.rs: `GET /v1/ws`, resumable live push (replay from the store, then live
//!   events from the bus, deduplicated by seq), and the per-node fan-out of live subjects.
//! - payments.rs: the operation catalogue, payments, rates and conversions.
//! - [`studio`]: Operation Studio definitions from a folder, signed (Ed25519), hot-reloaded.
//! - notifications.rs: notification preferences and push devices (the notifier's API).
//! - backoffice.rs: Cache Control ingest and the reference ABS's admin postings.
//! - ops.rs: `/healthz`, `/readyz`, `/metrics`.
//! - [`problem`]: RFC 9457 errors with stable codes; nothing else leaves as an error.
//!
//! # Invariants
//!
//! - Only this crate knows HTTP and the WebSocket wire format.
//! - A customer is identified by the token only: no endpoint takes a customer id from the
//!   path or the body, so a token can never reach another customer's data.
//! - Tokens never appear in URLs or logs.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use kernel::bus::Bus;
use kernel::change::ChangeSink;
use kernel::store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod auth;
mod backoffice;
mod hub;
mod notifications;
mod ops;
mod payments;
pub mod problem;
mod rest;
pub mod studio;
pub mod tokens;
mod ws;

pub use auth::{DummyHash, hash_password};
pub use hub::Hub;
pub use tokens::{Claims, TokenKeys};

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// WebSockets this node holds at most; more are refused with 503 before the upgrade.
    pub max_connections: usize,
    pub ws_ping_interval: Duration,
    /// A socket must send `subscribe` within this time.
    pub ws_subscribe_timeout: Duration,
    /// A frame that cannot be written within this time sheds the client (close 4008).
    pub ws_send_timeout: Duration,
    /// Live events buffered per socket; a socket that falls further behind is shed.
    pub ws_live_buffer: usize,
    pub access_token_ttl: Duration,
    /// Bearer key of the back-office endpoints (Cache Control, ABS admin).
    pub backoffice_key: String,
    pub max_body_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            ws_ping_interval: Duration::from_secs(30),
            ws_subscribe_timeout: Duration::from_secs(10),
            ws_send_timeout: Duration::from_secs(10),
            ws_live_buffer: 256,
            access_token_ttl: Duration::from_secs(900),
            backoffice_key: String::new(),
            max_body_bytes: 1 << 20,
        }
    }
}

/// Everything a request handler may use.
pub struct Gateway {
    pub node: actors::Node,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub sink: Arc<dyn ChangeSink>,
    pub abs: Option<abs::Abs>,
    pub tokens: TokenKeys,
    pub dummy_hash: DummyHash,
    pub config: GatewayConfig,
    pub hub: Hub,
    /// Operation Studio definitions (payments); `None`: no catalogue, payments answer 404.
    pub operations: Option<studio::Catalogue>,
    /// Preferences, devices and metrics of the node's notifier.
    pub notifier: Option<Arc<notifier::Notifier>>,
    pub sockets: AtomicUsize,
    pub shutdown: watch::Receiver<bool>,
}

/// The full application.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let body_limit = gateway.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/me", get(rest::me))
        .route("/v1/products", get(rest::products))
        .route("/v1/accounts/{id}/transactions", get(rest::transactions))
        .route("/v1/feed", get(rest::feed))
        .route("/v1/feed/read", post(rest::feed_read))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/operations", get(payments::operations))
        .route("/v1/payments", post(payments::pay))
        .route("/v1/payments/{id}", get(payments::payment))
        .route("/v1/rates", get(payments::rates))
        .route("/v1/conversions", post(payments::convert))
        .route(
            "/v1/notification-preferences",
            get(notifications::get_preferences).put(notifications::put_preferences),
        )
        .route("/v1/devices", post(notifications::register_device))
        .route(
            "/v1/devices/{token}",
            axum::routing::delete(notifications::delete_device),
        )
        .route("/cache-control/v1/events", post(backoffice::ingest))
        .route("/admin/v1/abs/postings", post(backoffice::abs_post))
        .fallback(|| async { problem::Problem::not_found() })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(gateway)
}

/// Serves until `shutdown` turns true, then stops accepting and lets requests in flight
/// finish (the caller bounds that with its grace period).
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<()> {
    let mut shutdown = gateway.shutdown.clone();
    let app = router(gateway);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stopped(&mut shutdown).await;
        })
        .await
}

/// Resolves once the shutdown flag is up (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
