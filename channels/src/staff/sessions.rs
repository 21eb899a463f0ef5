//! Staff sessions: refresh rotation (the customers' rules: reuse ends the session, idling
//! ends it), logout, and the `security` role's list and revocation of staff sessions.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Staff;
use crate::Gateway;
use crate::manager::{ClientIp, rotate};
use crate::problem::Problem;

fn unavailable<E>(_: E) -> Problem {
    Problem::unavailable("try again")
}

#[derive(Deserialize)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

/// `POST /staff/v1/auth/refresh`: new tokens; the role is read again, so a removed account's
/// session ends here.
pub(crate) async fn refresh(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    request: Result<Json<RefreshRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let Json(request) = request.map_err(|e| Problem::bad_request(e.body_text()))?;
    let (session, next) = rotate(&gateway, &request.refresh_token, &ip, "staff").await?;
    let Some(account) = gateway
        .store
        .staff(session.customer_id.as_str())
        .await
        .map_err(unavailable)?
    else {
        gateway.revoke(&session).await?;
        return Err(Problem::unauthorized());
    };
    Ok(Json(gateway.tokens_for(
        &session,
        next,
        Some(&account.role),
    )))
}

/// `POST /staff/v1/auth/logout`: ends the caller's session.
pub(crate) async fn logout(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
    ClientIp(ip): ClientIp,
) -> Result<StatusCode, Problem> {
    if let Some(session) = gateway
        .store
        .session(&staff.0.sid)
        .await
        .map_err(unavailable)?
        .filter(|session| session.scope == "staff")
    {
        gateway.revoke(&session).await?;
    }
    gateway
        .audit(
            "staff_logout",
            staff.0.sub.as_str(),
            &staff.0.sid,
            &ip,
            true,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `GET /staff/v1/sessions` (security): live staff sessions, newest first.
pub(crate) async fn list_sessions(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
) -> Result<Json<Value>, Problem> {
    staff.require(&["security"])?;
    let sessions = gateway
        .store
        .staff_sessions(100)
        .await
        .map_err(unavailable)?;
    let items: Vec<Value> = sessions
        .iter()
        .map(|session| {
            json!({
                "id": session.id,
                "login": session.customer_id.as_str(),
                "created_at": rfc3339(session.created_at),
                "last_used_at": rfc3339(session.last_used_at),
                "current": session.id == staff.0.sid,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// `DELETE /staff/v1/sessions/{id}` (security): ends a staff session at once, everywhere.
pub(crate) async fn delete_session(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    staff.require(&["security"])?;
    if id.len() > 64 {
        return Err(Problem::not_found());
    }
    let Some(session) = gateway
        .store
        .session(&id)
        .await
        .map_err(unavailable)?
        .filter(|session| session.scope == "staff" && !session.revoked)
    else {
        return Err(Problem::not_found());
    };
    gateway.revoke(&session).await?;
    gateway
        .audit(
            "staff_session_revoked",
            staff.0.sub.as_str(),
            &format!("{} {}", session.customer_id, id),
            &ip,
            true,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}
