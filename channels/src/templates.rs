//! Payment templates, shared by every channel: `GET/POST /v1/templates`,
//! `DELETE /v1/templates/{id}`, `POST /v1/templates/{id}/pay`.
//!
//! Durable in the customer's journal (`template_saved` / `template_deleted` events folded
//! into the actor's state; see `domain::templates`), so they survive passivation and
//! failover and every node answers the same. A template is checked against its definition
//! when saved (fields, amount) and again, with the payment rules, when paid: paying one goes
//! through exactly the path of `POST /v1/payments` (limits, step-up, idempotency by the
//! `Idempotency-Key`). Another customer's template id is 404, like a missing one.

use std::sync::Arc;

use actors::CustomerRequest;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use domain::templates::Template;
use kernel::Money;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::auth::Customer;
use crate::manager::ClientIp;
use crate::payments::{
    PaymentBody, body_hash, build_order, catalogue, execute, hex, idempotency_key, invalid_field,
    parse_body,
};
use crate::problem::Problem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    name: String,
    operation: String,
    from: String,
    #[serde(default)]
    amount: Option<Money>,
    #[serde(default)]
    fields: Map<String, Value>,
}

/// A body that parses as JSON but not as the request: 422 `invalid_field`.
pub(crate) fn unprocessable(e: serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        e.to_string(),
    )
}

/// `GET /v1/templates`.
pub(crate) async fn list(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Json<Value>, Problem> {
    Ok(Json(
        gateway
            .node
            .call(&claims.sub, CustomerRequest::Templates)
            .await?,
    ))
}

/// `POST /v1/templates` (`Idempotency-Key` required) → 201 the template.
pub(crate) async fn create(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = idempotency_key(&headers)?;
    let value = parse_body(&body)?;
    let hash = body_hash(&value);
    let request: TemplateBody = serde_json::from_value(value).map_err(unprocessable)?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(invalid_field("name", "must be 1 to 64 characters"));
    }
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
    if request.from.is_empty() || request.from.len() > 64 {
        return Err(invalid_field("from", "is not an account id"));
    }
    if request.amount.is_some_and(|a| a.minor <= 0) {
        return Err(invalid_field("amount", "must be positive"));
    }
    let probe = request.amount.unwrap_or(Money::new(1, definition.currency));
    definition
        .destination(&probe, &request.fields)
        .map_err(|e| invalid_field(&format!("fields.{}", e.field), &e.reason))?;
    let digest = Sha256::new()
        .chain_update(claims.sub.as_str())
        .chain_update([0u8])
        .chain_update("template")
        .chain_update([0u8])
        .chain_update(&key)
        .finalize();
    let template = Template {
        id: format!("tpl-{}", &hex(&digest)[..24]),
        name: name.to_owned(),
        operation: definition.id().to_owned(),
        from: request.from,
        amount: request.amount,
        fields: request.fields,
        body_hash: hash,
        created_at: kernel::now(),
    };
    let answer = gateway
        .node
        .call(&claims.sub, CustomerRequest::SaveTemplate { template })
        .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `DELETE /v1/templates/{id}` → 204.
pub(crate) async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    if id.len() > 64 {
        return Err(Problem::not_found());
    }
    gateway
        .node
        .call(&claims.sub, CustomerRequest::DeleteTemplate { id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PayBody {
    #[serde(default)]
    amount: Option<Money>,
}

/// `POST /v1/templates/{id}/pay` (`Idempotency-Key` required; optional body
/// `{"amount"}`, required when the template has none) → the same as `POST /v1/payments`.
pub(crate) async fn pay(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = idempotency_key(&headers)?;
    if id.len() > 64 {
        return Err(Problem::not_found());
    }
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(&body)?
    };
    let request: PayBody = serde_json::from_value(value.clone()).map_err(unprocessable)?;
    let template: Template = serde_json::from_value(
        gateway
            .node
            .call(&claims.sub, CustomerRequest::Template { id: id.clone() })
            .await?,
    )
    .map_err(|_| Problem::internal())?;
    let amount = request
        .amount
        .or(template.amount)
        .ok_or_else(|| invalid_field("amount", "is required: the template has none"))?;
    let payment = PaymentBody {
        operation: template.operation,
        from: template.from,
        amount,
        fields: template.fields,
    };
    let hash = body_hash(&json!({"template": id, "body": value}));
    let order = build_order(&gateway, &claims.sub, &key, hash, payment)?;
    let answer = execute(&gateway, &claims, ip, order).await?;
    Ok((StatusCode::CREATED, Json(answer)))
}
