//! The Identity Gateway: the one entry point of a node for apps and back systems.
//!
//! # Layout
//!
//! - [`router`] / [`run`]: the axum application and its server loop (bind port 0 in tests).
//! - auth.rs: password hashing (argon2id) and the bearer-token extractors.
//! - manager/: the Access Manager, one file per flow: `register`, `login` (+ second factor),
//!   `challenges` (confirmation, step-up), `sessions` (refresh rotation with reuse detection,
//!   logout, the session list), `credentials` (password and phone change); its pure rules
//!   are in [`access`] (challenges, rate-limit buckets, TOTP, policies).
//! - staff/: staff accounts, roles, staff login (password + TOTP), stored staff sessions
//!   (refresh, logout, revocation by `security`) and `/staff/v1/*`.
//! - [`revocations`]: revoked sessions per node, fed by `ctl.*` control messages.
//! - guard.rs: per-IP limits, CORS/Origin allowlist, timeouts, security headers.
//! - openapi.json: the OpenAPI 3.1 document served at `GET /v1/openapi.json`.
//! - [`tokens`]: signed access tokens verified without a store round trip.
//! - rest.rs: customer reads (`/v1/me`, products, transactions, feed) answered by actors.
//! - ws.rs and hub.rs: `GET /v1/ws`, resumable live push (replay from the store, then live
//!   events from the bus, deduplicated by seq), and the per-node fan-out of live subjects.
//! - payments.rs: the operation catalogue, payments (with step-up), rates and conversions;
//! - quotes.rs: `POST /v1/quotes`, signed quotes the reference ABS honours in conversions;
//!   templates.rs: saved payments paid through the same path; autopayments.rs: standing
//!   orders (balance triggers) run by the customer's actor.
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
use axum::routing::{get, post, put};
use kernel::bus::Bus;
use kernel::change::ChangeSink;
use kernel::store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod access;
mod auth;
mod autopayments;
mod backoffice;
mod deposits;
mod guard;
mod hub;
mod manager;
mod notifications;
mod ops;
mod payments;
pub mod problem;
mod products;
mod quotes;
mod rest;
pub mod revocations;
mod staff;
pub mod studio;
mod templates;
pub mod tokens;
mod ws;

pub use auth::{DummyHash, hash_password};
pub use guard::Limits;
pub use hub::Hub;
pub use manager::{SEND_QUEUE_CAPACITY, SendQueue};
pub use revocations::Revocations;
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
    /// A session whose refresh token is unused this long ends.
    pub session_idle: Duration,
    /// Failures per login and per device before a lockout, and its length.
    pub login_lockout: kernel::store::LockoutPolicy,
    /// Failures per client IP before a lockout (higher: many customers share an IP).
    pub ip_lockout: kernel::store::LockoutPolicy,
    /// Requests per second per client IP (burst twice that); 0 turns it off.
    pub rate_limit_ip_per_s: f64,
    /// Authenticated requests per second per customer (burst twice that); 0 turns it off.
    pub rate_limit_customer_per_s: f64,
    /// Codes sent per phone per hour (burst at most 5).
    pub code_sends_per_hour: f64,
    /// Browser origins allowed by CORS and at the WebSocket upgrade (none by default:
    /// requests without an `Origin`, i.e. apps, are not affected).
    pub allowed_origins: Vec<String>,
    /// Longest a request may take (WebSockets excepted).
    pub request_timeout: Duration,
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
            session_idle: Duration::from_secs(30 * 60),
            login_lockout: kernel::store::LockoutPolicy {
                max_failures: 5,
                lock_for: time::Duration::minutes(15),
            },
            ip_lockout: kernel::store::LockoutPolicy {
                max_failures: 100,
                lock_for: time::Duration::minutes(15),
            },
            rate_limit_ip_per_s: 1000.0,
            rate_limit_customer_per_s: 100.0,
            code_sends_per_hour: 10.0,
            allowed_origins: Vec::new(),
            request_timeout: Duration::from_secs(30),
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
    /// The node's notifier queue.
    pub queue: Option<Arc<dyn notifier::WorkQueue>>,
    /// Codes and security alerts on their way to `queue` (bounded, off the request path).
    pub send_queue: SendQueue,
    pub revocations: Revocations,
    pub limits: Limits,
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
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/auth/register", post(manager::register))
        .route("/v1/auth/login", post(manager::login))
        .route("/v1/auth/challenges/{id}/confirm", post(payments::confirm))
        .route("/v1/auth/challenges/{id}/sms", post(manager::send_sms))
        .route("/v1/auth/refresh", post(manager::refresh))
        .route("/v1/auth/logout", post(manager::logout))
        .route("/v1/auth/step-up", post(manager::step_up))
        .route("/v1/auth/password", post(manager::change_password))
        .route("/v1/sessions", get(manager::sessions))
        .route(
            "/v1/sessions/{id}",
            axum::routing::delete(manager::delete_session),
        )
        .route("/staff/v1/auth/login", post(staff::login))
        .route("/staff/v1/auth/refresh", post(staff::refresh))
        .route("/staff/v1/auth/logout", post(staff::logout))
        .route("/staff/v1/sessions", get(staff::list_sessions))
        .route(
            "/staff/v1/sessions/{id}",
            axum::routing::delete(staff::delete_session),
        )
        .route(
            "/staff/v1/customers/{id}/sessions",
            get(staff::customer_sessions),
        )
        .route("/staff/v1/audit", get(staff::audit))
        .route(
            "/staff/v1/customers/{id}/risk-flag",
            axum::routing::put(staff::set_risk_flag).delete(staff::clear_risk_flag),
        )
        .route("/admin/v1/staff", post(staff::create))
        .route("/v1/me", get(rest::me))
        .route("/v1/me/phone", post(manager::change_phone))
        .route(
            "/v1/me/totp",
            get(manager::totp_status).post(manager::start_totp),
        )
        .route("/v1/me/totp/confirm", post(manager::confirm_totp))
        .route("/v1/me/totp/remove", post(manager::remove_totp))
        .route("/v1/products", get(products::products))
        .route("/v1/loans/{id}/schedule", get(products::loan_schedule))
        .route("/v1/cards/{id}/block", post(products::block_card))
        .route("/v1/cards/{id}/unblock", post(products::unblock_card))
        .route("/v1/cards/{id}/limits", put(products::set_card_limits))
        .route("/v1/deposits", post(deposits::open_deposit))
        .route("/v1/accounts/{id}/transactions", get(rest::transactions))
        .route("/v1/feed", get(rest::feed))
        .route("/v1/feed/read", post(rest::feed_read))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/operations", get(payments::operations))
        .route("/v1/payments", post(payments::pay))
        .route("/v1/payments/{id}", get(payments::payment))
        .route("/v1/rates", get(payments::rates))
        .route("/v1/conversions", post(payments::convert))
        .route("/v1/quotes", post(quotes::quote))
        .route(
            "/v1/templates",
            get(templates::list).post(templates::create),
        )
        .route(
            "/v1/templates/{id}",
            axum::routing::delete(templates::delete),
        )
        .route("/v1/templates/{id}/pay", post(templates::pay))
        .route(
            "/v1/autopayments",
            get(autopayments::list).post(autopayments::create),
        )
        .route(
            "/v1/autopayments/{id}",
            axum::routing::delete(autopayments::delete),
        )
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
        .route(
            "/admin/v1/abs/rates",
            axum::routing::put(backoffice::abs_rates),
        )
        .fallback(|| async { problem::Problem::not_found() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            guard::guard,
        ))
        .with_state(gateway)
}

/// The OpenAPI 3.1 document of the HTTP API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

impl Gateway {
    /// Fills the revoked set with sessions revoked within the last access-token lifetime,
    /// then listens for revocations from every node (`ctl.*`).
    pub async fn start_control(self: &Arc<Self>) -> Result<(), kernel::store::StoreError> {
        let ttl = self.config.access_token_ttl.as_secs() as i64;
        let now = kernel::now();
        for (sid, _) in self
            .store
            .revoked_since(now - time::Duration::seconds(ttl + 1))
            .await?
        {
            self.revocations.revoke(&sid, now.unix_timestamp());
        }
        let subscription = self
            .bus
            .subscribe("ctl.*")
            .await
            .map_err(|e| kernel::store::StoreError::Unavailable(e.to_string()))?;
        let gateway = Arc::downgrade(self);
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut subscription = subscription;
            while let Some(message) = subscription.next().await {
                let Some(gateway) = gateway.upgrade() else {
                    return;
                };
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&message.payload)
                else {
                    continue;
                };
                if value["type"] == "session_revoked"
                    && let Some(sid) = value["sid"].as_str()
                {
                    gateway
                        .revocations
                        .revoke(sid, kernel::now().unix_timestamp());
                }
            }
        });
        Ok(())
    }
}

/// Serves until `shutdown` turns true, then stops accepting and lets requests in flight
/// finish (the caller bounds that with its grace period).
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>) -> std::io::Result<()> {
    let mut shutdown = gateway.shutdown.clone();
    let app = router(gateway);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        stopped(&mut shutdown).await;
    })
    .await
}

/// Resolves once the shutdown flag is up (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
