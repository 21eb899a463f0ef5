//! Refresh rotation with reuse detection, logout, and the customer's sessions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kernel::store::SessionRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ClientIp, JsonBody, body, random_token, token_hash, unavailable};
use crate::Gateway;
use crate::access::challenge;
use crate::auth::Customer;
use crate::problem::Problem;

#[derive(Deserialize)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

fn session_revoked() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "session_revoked",
        "this session has ended; log in again",
    )
}

pub(crate) async fn refresh(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    request: JsonBody<RefreshRequest>,
) -> Result<Response, Problem> {
    let token = body(request)?.refresh_token;
    let (session, next) = rotate(&gateway, &token, &ip, "customer").await?;
    Ok(Json(gateway.tokens_for(&session, next, None)).into_response())
}

/// Rotates the refresh token `token` of a live session in `scope` (`customer` or `staff`):
/// returns the session and the next refresh token. An old token coming back (reuse) ends
/// the whole session; so does idling past the limit. A token of the other scope is unknown.
pub(crate) async fn rotate(
    gateway: &Gateway,
    token: &str,
    ip: &str,
    scope: &str,
) -> Result<(SessionRecord, String), Problem> {
    let ip = ip.to_owned();
    let mut parts = token.splitn(3, '.');
    let (Some("rt1"), Some(sid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Problem::unauthorized());
    };
    if token.len() > 256 {
        return Err(Problem::unauthorized());
    }
    let Some(session) = gateway
        .store
        .session(sid)
        .await
        .map_err(unavailable)?
        .filter(|session| session.scope == scope)
    else {
        return Err(Problem::unauthorized());
    };
    if session.revoked {
        gateway
            .audit("refresh", session.customer_id.as_str(), sid, &ip, false)
            .await;
        return Err(session_revoked());
    }
    let now = kernel::now();
    let presented = token_hash(token);
    if !challenge::constant_time_eq(presented.as_bytes(), session.refresh_hash.as_bytes()) {
        // An old refresh token came back: someone holds a copy. End the whole session.
        gateway.revoke(&session).await?;
        gateway
            .audit(
                "refresh_reuse",
                session.customer_id.as_str(),
                sid,
                &ip,
                false,
            )
            .await;
        return Err(session_revoked());
    }
    let idle = time::Duration::try_from(gateway.config.session_idle).unwrap_or(time::Duration::MAX);
    if now - session.last_used_at > idle {
        gateway.revoke(&session).await?;
        gateway
            .audit(
                "refresh_idle",
                session.customer_id.as_str(),
                sid,
                &ip,
                false,
            )
            .await;
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "the session was idle too long; log in again",
        ));
    }
    let next = format!("rt1.{sid}.{}", random_token(32));
    let rotated = gateway
        .store
        .rotate_refresh(sid, &presented, &token_hash(&next), now)
        .await
        .map_err(unavailable)?;
    if !rotated {
        // Used twice at the same moment: one of the two is a copy.
        gateway.revoke(&session).await?;
        gateway
            .audit(
                "refresh_reuse",
                session.customer_id.as_str(),
                sid,
                &ip,
                false,
            )
            .await;
        return Err(session_revoked());
    }
    gateway
        .audit("refresh", session.customer_id.as_str(), sid, &ip, true)
        .await;
    Ok((session, next))
}

pub(crate) async fn logout(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
) -> Result<StatusCode, Problem> {
    if let Some(session) = gateway
        .store
        .session(&claims.sid)
        .await
        .map_err(unavailable)?
    {
        gateway.revoke(&session).await?;
    }
    gateway
        .audit("logout", claims.sub.as_str(), &claims.sid, &ip, true)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

fn session_json(session: &SessionRecord, current: &str) -> Value {
    let format = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    json!({
        "id": session.id,
        "device_id": session.device_id,
        "created_at": format(session.created_at),
        "last_used_at": format(session.last_used_at),
        "current": session.id == current,
    })
}

pub(crate) fn sessions_json(sessions: &[SessionRecord], current: &str) -> Value {
    json!({
        "items": sessions.iter().map(|s| session_json(s, current)).collect::<Vec<_>>(),
        "next_cursor": null,
    })
}

pub(crate) async fn sessions(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Json<Value>, Problem> {
    let sessions = gateway
        .store
        .sessions_of(&claims.sub)
        .await
        .map_err(unavailable)?;
    Ok(Json(sessions_json(&sessions, &claims.sid)))
}

pub(crate) async fn delete_session(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let session = gateway.store.session(&id).await.map_err(unavailable)?;
    // Another customer's session is "not found": its existence is not revealed.
    let Some(session) =
        session.filter(|s| s.customer_id == claims.sub && s.scope == "customer" && !s.revoked)
    else {
        gateway
            .audit(
                "authz_refused",
                claims.sub.as_str(),
                "DELETE /v1/sessions/{id}",
                &ip,
                false,
            )
            .await;
        return Err(Problem::not_found());
    };
    gateway.revoke(&session).await?;
    gateway
        .audit("session_revoked", claims.sub.as_str(), &id, &ip, true)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
