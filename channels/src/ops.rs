//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use kernel::CustomerId;

use crate::Gateway;

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers and the bus flushes; a cluster node that owns no partition
/// yet can still serve (it routes to the owners), so ownership is reported, not required.
pub(crate) async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let probe = CustomerId::parse("readiness-probe").ok();
    let store_ok = match probe {
        Some(id) => gateway.store.load_customer(&id).await.is_ok(),
        None => false,
    };
    let bus_ok = tokio::time::timeout(std::time::Duration::from_secs(2), gateway.bus.flush())
        .await
        .is_ok_and(|r| r.is_ok());
    let owned: Vec<u32> = gateway.node.owned().borrow().iter().copied().collect();
    let body = serde_json::json!({"store": store_ok, "bus": bus_ok, "partitions": owned});
    let status = if store_ok && bus_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

pub(crate) async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    let mut text = kernel::metrics::render();
    if let Some(notifier) = &gateway.notifier {
        text.push_str(&notifier.metrics().render_prometheus());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
