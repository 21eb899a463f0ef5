//! Payments Hub endpoints: the operation catalogue, payments, rates and conversions (at
//! the bank's rate, or at a quote's: see quotes.rs).
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
//! Step-up: a payment to someone else above the operation's `limits.confirm_above` (default
//! `DEFAULT_CONFIRM_ABOVE_RUB`), or a first payment to a payee when the operation sets
//! `limits.confirm_new_payee`, answers 201 `confirmation_required` with a `challenge_id`:
//! the actor decides (pure rules, `domain::payments`), the Access Manager's own step-up
//! (`manager::step_up`, the function behind `POST /v1/auth/step-up`) issues the challenge
//! bound to the operation, amount and payee and sends the code, and the actor journals the
//! order held under that challenge. `POST /v1/auth/challenges/{id}/confirm` (`confirm`
//! below, wrapping `manager::confirm`) verifies the code and then has the actor execute
//! exactly the held order.

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
use crate::auth::{Customer, MaybeCustomer};
use crate::manager::{self, ClientIp};
use crate::problem::Problem;
use crate::tokens::Claims;

/// The operation id of conversions between own accounts (`POST /v1/conversions`).
pub const CONVERSION: &str = "conversion";

/// What every customer may move per day in all (RUB), on top of the operations' limits.
pub const CUSTOMER_DAILY_LIMIT_RUB: i64 = 100_000_000;

/// A payment to someone else above this (RUB 50 000.00) needs a step-up confirmation when
/// its definition sets no `limits.confirm_above`.
pub const DEFAULT_CONFIRM_ABOVE_RUB: i64 = 5_000_000;

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

pub(crate) fn catalogue(gateway: &Gateway) -> Result<&crate::studio::Catalogue, Problem> {
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

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
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

pub(crate) fn hex(bytes: &[u8]) -> String {
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

pub(crate) fn body_hash(body: &Value) -> String {
    hex(&Sha256::digest(body.to_string().as_bytes()))
}

pub(crate) fn invalid_field(field: &str, reason: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        format!("{field}: {reason}"),
    )
    .with("field", json!(field))
}

pub(crate) fn parse_body(body: &Bytes) -> Result<Value, Problem> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Problem::bad_request("the body must be a JSON object"));
    }
    Ok(value)
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct PaymentBody {
    pub(crate) operation: String,
    pub(crate) from: String,
    pub(crate) amount: Money,
    #[serde(default)]
    pub(crate) fields: Map<String, Value>,
}

fn customer_limits(definition_limits: &Limits) -> Limits {
    Limits {
        customer_daily: Some(Money::new(CUSTOMER_DAILY_LIMIT_RUB, Currency::RUB)),
        confirm_above: Some(
            definition_limits
                .confirm_above
                .unwrap_or(Money::new(DEFAULT_CONFIRM_ABOVE_RUB, Currency::RUB)),
        ),
        ..definition_limits.clone()
    }
}

/// Builds the order of a payment request against its definition (fields, fee, limits,
/// routing); bad input is refused before anything is asked of the actor.
pub(crate) fn build_order(
    gateway: &Gateway,
    customer: &kernel::CustomerId,
    key: &str,
    hash: String,
    request: PaymentBody,
) -> Result<PaymentOrder, Problem> {
    let definition: Arc<Definition> =
        catalogue(gateway)?.get(&request.operation).ok_or_else(|| {
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
    Ok(PaymentOrder {
        payment_id: payment_id(customer, key),
        body_hash: hash,
        operation: definition.id().to_owned(),
        from: request.from,
        to,
        amount: request.amount,
        fee: definition.fee(&request.amount),
        limits: customer_limits(&definition.limits),
        description: definition.raw.title.get("en").cloned().unwrap_or_default(),
        confirmed: false,
        quote: None,
    })
}

/// Asks the customer's actor to pay; when the rules want a step-up confirmation, opens the
/// challenge through the Access Manager's step-up and holds the order with it.
pub(crate) async fn execute(
    gateway: &Arc<Gateway>,
    claims: &Claims,
    ip: String,
    order: PaymentOrder,
) -> Result<Value, Problem> {
    let answer = gateway
        .node
        .call(
            &claims.sub,
            CustomerRequest::Pay {
                order: order.clone(),
            },
        )
        .await?;
    if answer["status"] != "confirmation_required" || answer.get("challenge_id").is_some() {
        return Ok(answer);
    }
    let payee = domain::payments::payee_key(&order.to).ok_or_else(Problem::internal)?;
    let operation: manager::Operation = serde_json::from_value(json!({
        "operation": order.operation,
        "amount": order.amount,
        "payee": payee,
    }))
    .map_err(|_| Problem::internal())?;
    let started = manager::step_up(
        State(gateway.clone()),
        Customer(claims.clone()),
        ClientIp(ip),
        Ok(Json(operation)),
    )
    .await?;
    let bytes = axum::body::to_bytes(started.into_body(), 64 * 1024)
        .await
        .map_err(|_| Problem::internal())?;
    let started: Value = serde_json::from_slice(&bytes).map_err(|_| Problem::internal())?;
    let challenge_id = started["challenge_id"]
        .as_str()
        .ok_or_else(Problem::internal)?
        .to_owned();
    Ok(gateway
        .node
        .call(
            &claims.sub,
            CustomerRequest::Hold {
                order,
                challenge_id,
            },
        )
        .await?)
}

/// `POST /v1/auth/challenges/{id}/confirm`: the Access Manager's confirmation; for a
/// challenge that holds a payment, the body may carry only the code (the held payment's
/// operation, amount and payee are what the code is checked against; an `operation` in the
/// body must match them, else `operation_mismatch`), and a confirmed code executes exactly
/// that payment and answers it (200). A used code is `code_used`, as for every challenge.
pub(crate) async fn confirm(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    MaybeCustomer(caller): MaybeCustomer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let mut value = parse_body(&body)?;
    let held = match &caller {
        Some(claims) if id.len() <= 64 => {
            match gateway
                .node
                .call(
                    &claims.sub,
                    CustomerRequest::Held {
                        challenge_id: id.clone(),
                    },
                )
                .await
            {
                Ok(binding) => Some(binding),
                Err(e) if e.code == "not_found" => None,
                Err(e) => return Err(e.into()),
            }
        }
        _ => None,
    };
    if let Some(binding) = &held
        && value.get("operation").is_none_or(Value::is_null)
    {
        value["operation"] = json!({
            "operation": binding["operation"],
            "amount": binding["amount"],
            "payee": binding["payee"],
        });
    }
    let request: manager::ConfirmRequest = serde_json::from_value(value)
        .map_err(|e| Problem::bad_request(format!("the body is not a confirmation: {e}")))?;
    let response = manager::confirm(
        State(gateway.clone()),
        ClientIp(ip),
        MaybeCustomer(caller.clone()),
        Path(id.clone()),
        Ok(Json(request)),
    )
    .await?;
    let (Some(_), Some(claims)) = (held, caller) else {
        return Ok(response);
    };
    if !response.status().is_success() {
        return Ok(response);
    }
    // The code is spent: execute the held payment (idempotent by its id, so retrying a
    // transient failure never pays twice).
    let mut last = None;
    for _ in 0..3 {
        match gateway
            .node
            .call(
                &claims.sub,
                CustomerRequest::Confirm {
                    challenge_id: id.clone(),
                },
            )
            .await
        {
            Ok(answer) => return Ok((StatusCode::OK, Json(answer)).into_response()),
            Err(e) if e.is_transient() => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(Problem::from)
        .unwrap_or_else(|| Problem::unavailable("try again")))
}

/// `POST /v1/payments`.
pub(crate) async fn pay(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
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
    let order = build_order(&gateway, &claims.sub, &key, hash, request)?;
    let answer = execute(&gateway, &claims, ip, order).await?;
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
    Ok(Json(abs::rates::rates_json(&abs.rates())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionBody {
    from: String,
    to: String,
    amount: Money,
    /// A quote (`POST /v1/quotes`): converted at its rate, or refused.
    #[serde(default)]
    quote: Option<String>,
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
    if request
        .quote
        .as_ref()
        .is_some_and(|q| q.is_empty() || q.len() > 1024)
    {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "quote_not_found",
            "no such quote",
        ));
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
        confirmed: false,
        quote: request.quote,
    };
    let answer = gateway
        .node
        .call(&claims.sub, CustomerRequest::Pay { order })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}
