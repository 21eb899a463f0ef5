//! Antifraud flags on customers, set by the `security` role: while a flag lasts, every login
//! of the customer needs a second factor (the `antifraud` signal of `access::risk`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kernel::CustomerId;
use serde::Deserialize;

use super::Staff;
use crate::Gateway;
use crate::manager::ClientIp;
use crate::problem::Problem;

/// The longest a flag may last (30 days); a longer case is flagged again.
pub const MAX_FLAG_HOURS: u32 = 720;

#[derive(Deserialize)]
pub(crate) struct NewFlag {
    hours: u32,
}

/// `PUT /staff/v1/customers/{id}/risk-flag` `{hours}` (security): flags the customer for
/// 1 to 720 hours from now (replacing any flag).
pub(crate) async fn set(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    request: Result<Json<NewFlag>, JsonRejection>,
) -> Result<StatusCode, Problem> {
    staff.require(&["security"])?;
    let customer = CustomerId::parse(&id).map_err(|_| Problem::not_found())?;
    let Json(request) = request.map_err(|e| Problem::bad_request(e.body_text()))?;
    if !(1..=MAX_FLAG_HOURS).contains(&request.hours) {
        return Err(Problem::bad_request("hours must be 1 to 720"));
    }
    let until = kernel::now() + time::Duration::hours(i64::from(request.hours));
    put(&gateway, &staff, &customer, until, &ip, "risk_flag_set").await
}

/// `DELETE /staff/v1/customers/{id}/risk-flag` (security): ends the flag now.
pub(crate) async fn clear(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    staff.require(&["security"])?;
    let customer = CustomerId::parse(&id).map_err(|_| Problem::not_found())?;
    put(
        &gateway,
        &staff,
        &customer,
        kernel::now(),
        &ip,
        "risk_flag_cleared",
    )
    .await
}

async fn put(
    gateway: &Gateway,
    staff: &Staff,
    customer: &CustomerId,
    until: time::OffsetDateTime,
    ip: &str,
    kind: &str,
) -> Result<StatusCode, Problem> {
    gateway
        .store
        .set_risk_flag(customer, until)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    gateway
        .audit(kind, staff.0.sub.as_str(), customer.as_str(), ip, true)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
