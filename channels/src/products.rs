//! Products: `GET /v1/products` with what is computed from each product's terms (deposit
//! interest, a loan's next payment) and `GET /v1/loans/{id}/schedule`, both read from the
//! customer actor's hot state (the arithmetic is `domain::products`, dated today in UTC); and
//! `POST /v1/cards/{id}/block` / `unblock` and `PUT /v1/cards/{id}/limits`, asked of the
//! reference ABS.

use std::sync::Arc;

use actors::CustomerRequest;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use kernel::bus::subjects;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::Customer;
use crate::payments::invalid_field;
use crate::problem::Problem;

pub(crate) async fn products(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Json<Value>, Problem> {
    let mut products = gateway
        .node
        .call(&claims.sub, CustomerRequest::Products)
        .await?;
    domain::products::annotate(&mut products, kernel::now().date());
    Ok(Json(products))
}

/// Another customer's loan, an unknown id and a loan whose terms the ABS did not record all
/// answer 404 alike, so the answer says nothing about whose a product might be.
pub(crate) async fn loan_schedule(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(loan_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let products = gateway
        .node
        .call(&claims.sub, CustomerRequest::Products)
        .await?;
    let loan = products["loans"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|loan| loan["id"].as_str() == Some(loan_id.as_str()))
        .ok_or_else(Problem::not_found)?;
    domain::products::schedule_view(loan, kernel::now().date())
        .map(Json)
        .map_err(|_| Problem::not_found())
}

/// How long the gateway waits for the ABS's answer to a card command.
const CARD_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn block_card(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(card_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    card_command(&gateway, &claims.sub, card_id, &headers, "card.block").await
}

pub(crate) async fn unblock_card(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(card_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    card_command(&gateway, &claims.sub, card_id, &headers, "card.unblock").await
}

/// `PUT /v1/cards/{id}/limits` `{"daily": money}`: the ABS checks the limit against the card
/// (positive, in its account's currency, at most 1 000 000.00) and answers `{"id",
/// "daily_limit"}`; the actor sees the `product_changed` change moments later and refuses card
/// payments beyond what is left of the day's limit.
pub(crate) async fn set_card_limits(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(card_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LimitsBody {
        daily: Value,
    }
    let key = crate::payments::idempotency_key(&headers)?;
    let body = crate::payments::parse_body(&body)?;
    let body: LimitsBody = serde_json::from_value(body)
        .map_err(|_| invalid_field("daily", "expected {\"daily\": {\"amount\", \"currency\"}}"))?;
    let daily: kernel::Money = serde_json::from_value(body.daily)
        .map_err(|_| invalid_field("daily", "must be {\"amount\", \"currency\"}"))?;
    if card_id.is_empty() || card_id.len() > 64 {
        return Err(Problem::not_found());
    }
    let payload =
        json!({"customer_id": claims.sub, "card_id": card_id, "key": key, "daily": daily});
    let answer = ask_abs(&gateway, "card.limits", &payload).await?;
    if let Some(ok) = answer.get("ok") {
        return Ok(Json(
            json!({"id": ok["id"], "daily_limit": ok["daily_limit"]}),
        ));
    }
    if answer["err"]["code"].as_str() == Some("invalid_field") {
        let detail = answer["err"]["detail"].as_str().unwrap_or("out of bounds");
        return Err(invalid_field("daily", detail));
    }
    Err(card_refusal(&answer))
}

async fn ask_abs(gateway: &Gateway, command: &str, payload: &Value) -> Result<Value, Problem> {
    let answer = gateway
        .bus
        .request(
            &subjects::abs_command(command),
            payload.to_string().into(),
            CARD_COMMAND_TIMEOUT,
        )
        .await
        .map_err(|_| Problem::unavailable("the bank's core system did not answer; try again"))?;
    serde_json::from_slice(&answer)
        .map_err(|_| Problem::unavailable("the bank's core system did not answer; try again"))
}

/// The problem for a refused card command.
fn card_refusal(answer: &Value) -> Problem {
    match answer["err"]["code"].as_str() {
        Some("not_found") => Problem::not_found(),
        Some("card_closed") => {
            Problem::new(StatusCode::CONFLICT, "card_closed", "the card is closed")
        }
        Some("bad_request") => Problem::bad_request("card id or Idempotency-Key out of bounds"),
        _ => Problem::unavailable("the bank's core system did not answer; try again"),
    }
}

/// Asks the ABS (`abs.cmd.card.*`, on the bus: in-process when embedded) and answers with its
/// answer `{"id", "status"}`. The customer actor applies the ABS's `product_changed` change
/// asynchronously: `GET /v1/products` and the feed show it moments later.
async fn card_command(
    gateway: &Gateway,
    customer_id: &kernel::CustomerId,
    card_id: String,
    headers: &HeaderMap,
    command: &str,
) -> Result<Json<Value>, Problem> {
    let key = crate::payments::idempotency_key(headers)?;
    if card_id.is_empty() || card_id.len() > 64 {
        return Err(Problem::not_found());
    }
    let payload = json!({"customer_id": customer_id, "card_id": card_id, "key": key});
    let answer = ask_abs(gateway, command, &payload).await?;
    if let Some(ok) = answer.get("ok") {
        return Ok(Json(json!({"id": ok["id"], "status": ok["status"]})));
    }
    Err(card_refusal(&answer))
}
