//! `GET/PUT /v1/notification-preferences`, `POST /v1/devices`, `DELETE /v1/devices/{token}`:
//! the caller's own preferences and push tokens, through the notifier's API.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use crate::Gateway;
use crate::auth::Customer;
use crate::problem::Problem;

fn notifier(gateway: &Gateway) -> Result<&notifier::Notifier, Problem> {
    gateway
        .notifier
        .as_deref()
        .ok_or_else(|| Problem::unavailable("notifications are not enabled on this node"))
}

fn problem(error: notifier::api::ApiError) -> Problem {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match error {
        notifier::api::ApiError::Store(_) => Problem::unavailable("try again"),
        other => Problem::new(status, other.code(), other.to_string()),
    }
}

pub(crate) async fn get_preferences(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Json<Value>, Problem> {
    let store = notifier(&gateway)?.store();
    let preferences = notifier::api::get_preferences(&**store, &claims.sub)
        .await
        .map_err(problem)?;
    Ok(Json(
        serde_json::to_value(preferences).unwrap_or(Value::Null),
    ))
}

pub(crate) async fn put_preferences(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let store = notifier(&gateway)?.store();
    let preferences = notifier::api::put_preferences(&**store, &claims.sub, &body)
        .await
        .map_err(problem)?;
    Ok(Json(
        serde_json::to_value(preferences).unwrap_or(Value::Null),
    ))
}

pub(crate) async fn register_device(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let store = notifier(&gateway)?.store();
    let device = notifier::api::register_device(&**store, &claims.sub, &body)
        .await
        .map_err(problem)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(device).unwrap_or(Value::Null)),
    ))
}

pub(crate) async fn delete_device(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(token): Path<String>,
) -> Result<StatusCode, Problem> {
    let store = notifier(&gateway)?.store();
    notifier::api::delete_device(&**store, &claims.sub, &token)
        .await
        .map_err(problem)?;
    Ok(StatusCode::NO_CONTENT)
}
