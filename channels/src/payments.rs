//! Payments Hub endpoints: the operation catalogue, payments, rates and conversions.
//!
//! The gateway validates a payment against its Operation Studio definition (fields, fee,
//! limits, routing) and hands the customer's actor a `PaymentOrder`; the actor checks it
//! against the hot state, asks the ABS and journals the `payment_status` event.
//!
//! Idempotency: `Idempotency-Key` (1 to 255 characters) is required. The payment id is
//! derived from the customer and the key, and the body's hash travels with it, so the
//! actor answers a repeat with the first answer and a reuse with another body with 409
//! `idempotency_conflict`. A refusal (4xx) records nothing: retrying re-evaluates it.
//!
//! Step-up: the seam is `requires_confirmation` below; until the Access Manager's step-up
//! challenges land, no payment answers `confirmation_required`.

use std::sync::Arc;

use actors::CustomerRequest;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use domain::operations::Definition;
use domain::payments::{Limits, PaymentOrder};
use kernel::payment::Destination;
use kernel::{Currency, Money};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::auth::Customer;
use crate::problem::Problem;

/// The operation id of conversions between own accounts (`POST /v1/conversions`).
pub const CONVERSION: &str = "conversion";

/// What every customer may move per day in all (RUB), on top of the operations' limits.
pub const CUSTOMER_DAILY_LIMIT_RUB: i64 = 100_000_000;

fn language(headers: &HeaderMap) -> &'static str {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match accept.trim_start().get(..2) {
        Some(l) if l.eq_ignore_ascii_case("ru") => "ru",
        _ => "en",
    }
}

fn catalogue(gateway: &Gateway) -> Result<&crate::studio::Catalogue, Problem> {
    gateway.operations.as_ref().ok_or_else(Problem::not_found)
}

/// `GET /v1/operations`.
pub(crate) async fn operations(
    State(gateway): State<Arc<Gateway>>,
    Customer(_claims): Customer,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let language = language(&headers);
    let items: Vec<Value> = catalogue(&gateway)?
        .list()
        .iter()
        .map(|d| d.to_json(language))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key.is_empty() || key.len() > 255 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "an Idempotency-Key header of 1 to 255 characters is required",
        ));
    }
    Ok(key.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The payment id: stable for a customer and key, unguessable from outside.
fn payment_id(customer: &kernel::CustomerId, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(customer.as_str())
        .chain_update([0u8])
        .chain_update(key)
        .finalize();
    format!("pay-{}", &hex(&digest)[..32])
}

fn body_hash(body: &Value) -> String {
    hex(&Sha256::digest(body.to_string().as_bytes()))
}

fn invalid_field(field: &str, reason: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        format!("{field}: {reason}"),
    )
    .with("field", json!(field))
}

fn parse_body(body: &Bytes) -> Result<Value, Problem> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Problem::bad_request("the body must be a JSON object"));
    }
    Ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentBody {
    operation: String,
    from: String,
    amount: Money,
    #[serde(default)]
    fields: Map<String, Value>,
}

/// Where step-up would be required (the Access Manager's challenge bound to amount and
/// payee). The seam for the authentication work: today nothing requires it.
fn requires_confirmation(_definition: &Definition, _order: &PaymentOrder) -> bool {
    false
}

fn customer_limits(definition_limits: &Limits) -> Limits {
    Limits {
        customer_daily: Some(Money::new(CUSTOMER_DAILY_LIMIT_RUB, Currency::RUB)),
        ..definition_limits.clone()
    }
}

/// `POST /v1/payments`.
pub(crate) async fn pay(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = idempotency_key(&headers)?;
    let value = parse_body(&body)?;
    let hash = body_hash(&value);
    let request: PaymentBody = serde_json::from_value(value).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        )
    })?;
    let definition = catalogue(&gateway)?
        .get(&request.operation)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_operation",
                "no such operation (see GET /v1/operations)",
            )
            .with("field", json!("operation"))
        })?;
    if request.amount.minor <= 0 {
        return Err(invalid_field("amount", "must be positive"));
    }
    if request.from.is_empty() || request.from.len() > 64 {
        return Err(invalid_field("from", "is not an account id"));
    }
    let to = definition
        .destination(&request.amount, &request.fields)
        .map_err(|e| invalid_field(&format!("fields.{}", e.field), &e.reason))?;
    let order = PaymentOrder {
        payment_id: payment_id(&claims.sub, &key),
        body_hash: hash,
        operation: definition.id().to_owned(),
        from: request.from,
        to,
        amount: request.amount,
        fee: definition.fee(&request.amount),
        limits: customer_limits(&definition.limits),
        description: definition.raw.title.get("en").cloned().unwrap_or_default(),
    };
    if requires_confirmation(&definition, &order) {
        return Err(Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "confirmation_unavailable",
            "step-up confirmation is not available yet",
        ));
    }
    let answer = gateway
        .node
        .call(&claims.sub, CustomerRequest::Pay { order })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /v1/payments/{id}`.
pub(crate) async fn payment(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    if id.len() > 64 {
        return Err(Problem::not_found());
    }
    Ok(Json(
        gateway
            .node
            .call(&claims.sub, CustomerRequest::Payment { id })
            .await?,
    ))
}

/// `GET /v1/rates`.
pub(crate) async fn rates(
    State(gateway): State<Arc<Gateway>>,
    Customer(_claims): Customer,
) -> Result<Json<Value>, Problem> {
    let abs = gateway.abs.as_ref().ok_or_else(Problem::not_found)?;
    Ok(Json(abs::rates::rates_json(abs.rates())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionBody {
    from: String,
    to: String,
    amount: Money,
}

/// `POST /v1/conversions`: between the customer's own accounts at the bank's rate (the
/// applied rate and the credited amount are in the answer).
pub(crate) async fn convert(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = idempotency_key(&headers)?;
    let value = parse_body(&body)?;
    let hash = body_hash(&value);
    let request: ConversionBody = serde_json::from_value(value).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        )
    })?;
    if request.amount.minor <= 0 {
        return Err(invalid_field("amount", "must be positive"));
    }
    if request.to.is_empty() || request.to.len() > 64 {
        return Err(invalid_field("to", "is not an account id"));
    }
    let order = PaymentOrder {
        payment_id: payment_id(&claims.sub, &key),
        body_hash: hash,
        operation: CONVERSION.to_owned(),
        from: request.from,
        to: Destination::Account {
            account_id: request.to,
            own: true,
        },
        amount: request.amount,
        fee: Money::new(0, request.amount.currency),
        limits: Limits::default(),
        description: "Currency conversion".to_owned(),
    };
    let answer = gateway
        .node
        .call(&claims.sub, CustomerRequest::Pay { order })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}
