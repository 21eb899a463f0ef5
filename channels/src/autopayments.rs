//! Autopayments: `GET/POST /v1/autopayments`, `DELETE /v1/autopayments/{id}`.
//!
//! A standing order is validated like a payment when it is saved (definition, fields, fee,
//! limits; see `payments::build_order`) and journaled in the customer's state
//! (`autopayment_saved`), so it survives passivation and failover. Balance triggers
//! (`{"kind": "balance", "account", "below"}`: top up `account` from `from` when its balance
//! falls below `below`) are executed by the customer's actor when it folds the balance
//! change, at most once per UTC day (the payment id is the autopayment id plus the day). The
//! clock-driven kinds (`monthly` on a day, `weekly` on a weekday) are indexed in the store
//! with their next run and executed by each node's scheduler (actors crate), once per period.

use std::sync::Arc;

use actors::CustomerRequest;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use domain::autopay::{Autopayment, Schedule};
use kernel::Money;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::auth::Customer;
use crate::payments::{
    PaymentBody, body_hash, build_order, hex, idempotency_key, invalid_field, parse_body,
};
use crate::problem::Problem;

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ScheduleBody {
    Monthly { day: u8 },
    Weekly { weekday: u8 },
    Balance { account: String, below: Money },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutopaymentBody {
    name: String,
    operation: String,
    from: String,
    amount: Money,
    #[serde(default)]
    fields: Map<String, Value>,
    schedule: ScheduleBody,
}

/// `GET /v1/autopayments`.
pub(crate) async fn list(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Json<Value>, Problem> {
    Ok(Json(
        gateway
            .node
            .call(&claims.sub, CustomerRequest::Autopayments)
            .await?,
    ))
}

/// `POST /v1/autopayments` (`Idempotency-Key` required) → 201 the autopayment.
pub(crate) async fn create(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let key = idempotency_key(&headers)?;
    let value = parse_body(&body)?;
    let hash = body_hash(&value);
    let request: AutopaymentBody =
        serde_json::from_value(value).map_err(crate::templates::unprocessable)?;
    let name = request.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(invalid_field("name", "must be 1 to 64 characters"));
    }
    let schedule = match request.schedule {
        ScheduleBody::Balance { account, below } => {
            if below.currency != request.amount.currency {
                return Err(invalid_field(
                    "schedule.below",
                    "must be in the amount's currency",
                ));
            }
            Schedule::Balance {
                account,
                below_minor: below.minor,
            }
        }
        ScheduleBody::Monthly { day } => Schedule::Monthly { day },
        ScheduleBody::Weekly { weekday } => Schedule::Weekly { weekday },
    };
    schedule
        .validate()
        .map_err(|e| invalid_field(e.field, e.reason))?;
    let digest = Sha256::new()
        .chain_update(claims.sub.as_str())
        .chain_update([0u8])
        .chain_update("autopayment")
        .chain_update([0u8])
        .chain_update(&key)
        .finalize();
    let id = format!("apm-{}", &hex(&digest)[..24]);
    let payment = PaymentBody {
        operation: request.operation,
        from: request.from,
        amount: request.amount,
        fields: request.fields,
    };
    let order = build_order(&gateway, &claims.sub, &key, hash.clone(), payment)?;
    let autopayment = Autopayment {
        id,
        name,
        schedule,
        order,
        body_hash: hash,
        created_at: kernel::now(),
    };
    let answer = gateway
        .node
        .call(
            &claims.sub,
            CustomerRequest::SaveAutopayment { autopayment },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `DELETE /v1/autopayments/{id}` → 204.
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
        .call(&claims.sub, CustomerRequest::DeleteAutopayment { id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
