//! Product reads: `GET /v1/products` with what is computed from each product's terms
//! (deposit interest, a loan's next payment) and `GET /v1/loans/{id}/schedule`. Both read the
//! customer actor's hot state; the arithmetic is `domain::products`, dated today in UTC.

use std::sync::Arc;

use actors::CustomerRequest;
use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value;

use crate::Gateway;
use crate::auth::Customer;
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
