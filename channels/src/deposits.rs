//! `POST /v1/deposits`: opening a deposit from one of the caller's accounts, asked of the
//! reference ABS (`abs.cmd.deposit.open`), which creates the deposit and moves the money in
//! one store transaction, idempotent by the `Idempotency-Key` (see `docs/products.md`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kernel::Money;
use kernel::bus::subjects;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::Customer;
use crate::payments::invalid_field;
use crate::problem::Problem;

/// How long the gateway waits for the ABS's answer.
const DEPOSIT_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDeposit {
    from: String,
    amount: Value,
    term_months: Value,
}

pub(crate) async fn open_deposit(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = crate::payments::idempotency_key(&headers)?;
    let body = crate::payments::parse_body(&body)?;
    let body: NewDeposit = serde_json::from_value(body).map_err(|_| {
        invalid_field(
            "body",
            "expected {\"from\", \"amount\": {\"amount\", \"currency\"}, \"term_months\"}",
        )
    })?;
    let amount: Money = serde_json::from_value(body.amount)
        .map_err(|_| invalid_field("amount", "must be {\"amount\", \"currency\"}"))?;
    let term_months = body
        .term_months
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| invalid_field("term_months", "must be 3, 6 or 12"))?;
    if body.from.is_empty() || body.from.len() > 64 {
        return Err(account_not_found());
    }
    let payload = json!({"customer_id": claims.sub, "from": body.from, "amount": amount,
        "term_months": term_months, "key": key});
    let unavailable = || Problem::unavailable("the bank's core system did not answer; try again");
    let answer = gateway
        .bus
        .request(
            &subjects::abs_command("deposit.open"),
            payload.to_string().into(),
            DEPOSIT_COMMAND_TIMEOUT,
        )
        .await
        .map_err(|_| unavailable())?;
    let answer: Value = serde_json::from_slice(&answer).map_err(|_| unavailable())?;
    if let Some(ok) = answer.get("ok") {
        return Ok((StatusCode::CREATED, Json(ok.clone())));
    }
    let err = &answer["err"];
    let detail = err["detail"].as_str().unwrap_or_default().to_owned();
    let refused =
        |code: &'static str| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail.clone());
    Err(match err["code"].as_str() {
        Some("account_not_found") => account_not_found(),
        Some("invalid_field") => invalid_field(err["field"].as_str().unwrap_or("amount"), &detail),
        Some("insufficient_funds") => refused("insufficient_funds"),
        Some("account_closed") => refused("account_closed"),
        Some("limit_exceeded") => refused("limit_exceeded"),
        Some("idempotency_conflict") => Problem::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this Idempotency-Key was used with another request",
        ),
        Some("bad_request") => Problem::bad_request("account id or Idempotency-Key out of bounds"),
        _ => unavailable(),
    })
}

fn account_not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "account_not_found",
        "no such account",
    )
}
