//! Back-office endpoints: Cache Control ingest and the reference ABS's admin postings and
//! rates.
//! Both take the back-office key as a bearer token; customer tokens never open them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::http::request::Parts;
use kernel::Change;
use kernel::change::SinkError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::bearer;
use crate::problem::Problem;

/// Largest batch one ingest request may carry.
const MAX_BATCH: usize = 1000;

pub(crate) struct Backoffice;

impl axum::extract::FromRequestParts<Arc<Gateway>> for Backoffice {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Problem> {
        let token = bearer(parts).ok_or_else(Problem::unauthorized)?;
        let key = gateway.config.backoffice_key.as_bytes();
        // Constant-time comparison: the key is a secret.
        let matches = !key.is_empty()
            && token.len() == key.len()
            && token
                .bytes()
                .zip(key)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if matches {
            Ok(Backoffice)
        } else {
            Err(Problem::unauthorized())
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Batch {
    events: Vec<Value>,
}

/// `POST /cache-control/v1/events`: all changes valid or none accepted; 202 once durable.
pub(crate) async fn ingest(
    State(gateway): State<Arc<Gateway>>,
    _: Backoffice,
    body: Result<Json<Batch>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let Json(batch) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(Problem::bad_request(format!(
            "`events` must hold 1 to {MAX_BATCH} changes"
        )));
    }
    let mut changes = Vec::with_capacity(batch.events.len());
    let mut errors = vec![];
    for (index, raw) in batch.events.into_iter().enumerate() {
        match Change::from_value(raw) {
            Ok(change) => changes.push(change),
            Err(e) => {
                errors.push(json!({"index": index, "code": e.code(), "detail": e.to_string()}))
            }
        }
    }
    if !errors.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_change",
            "some changes are invalid; none was accepted",
        )
        .with("errors", Value::Array(errors)));
    }
    let count = changes.len();
    let report = gateway.sink.submit(changes).await.map_err(sink_problem)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": count, "rejected": report.rejected.iter()
        .map(|(id, code, detail)| json!({"id": id, "code": code, "detail": detail}))
        .collect::<Vec<_>>()})),
    ))
}

fn sink_problem(error: SinkError) -> Problem {
    match error {
        SinkError::UnknownCustomer(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_customer",
            error.to_string(),
        ),
        SinkError::Unavailable(_) => {
            Problem::unavailable("changes could not be made durable; retry with the same ids")
        }
    }
}

/// `POST /admin/v1/abs/postings`: a posting in the reference ABS, published as changes.
pub(crate) async fn abs_post(
    State(gateway): State<Arc<Gateway>>,
    _: Backoffice,
    body: Result<Json<abs::PostingRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let Some(abs) = &gateway.abs else {
        return Err(Problem::not_found());
    };
    match abs.post(&request).await {
        Ok(outcome) => Ok((StatusCode::CREATED, Json(json!(outcome)))),
        Err(error) => {
            let status = match error {
                abs::AbsError::UnknownAccount => StatusCode::NOT_FOUND,
                abs::AbsError::InsufficientFunds | abs::AbsError::Invalid(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                abs::AbsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err(Problem::new(status, error.code(), error.to_string()))
        }
    }
}

/// `PUT /admin/v1/abs/rates` `{"items": [{"base", "quote", "buy", "sell"}]}`: the reference
/// ABS's treasury sets the rates; published on `abs.rates`, every node follows at once.
pub(crate) async fn abs_rates(
    State(gateway): State<Arc<Gateway>>,
    _: Backoffice,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let Json(body) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let Some(abs) = &gateway.abs else {
        return Err(Problem::not_found());
    };
    let invalid = |field: String, reason: String| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", reason)
            .with("field", json!(field))
    };
    let items = body.get("items").unwrap_or(&Value::Null);
    let rates = abs::rates::parse_items(items).map_err(|e| invalid(e.field, e.reason.into()))?;
    abs::rates::validate(&rates).map_err(|e| invalid(e.field, e.reason.into()))?;
    match abs.set_rates(&*gateway.bus, rates).await {
        Ok(set) => Ok(Json(set.to_json())),
        Err(abs::AbsError::Unavailable(_)) => Err(Problem::unavailable("the bus is unavailable")),
        Err(error) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            error.to_string(),
        )),
    }
}
