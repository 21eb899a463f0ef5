//! Staff access: back-office accounts with roles, their own login (password + TOTP, lockout
//! after 10 failures for 30 minutes; each TOTP time step is accepted once, so a code cannot be
//! replayed within its drift window), `staff` tokens that open only `/staff/v1/*` (customer
//! tokens never do; staff tokens never open customer endpoints), and staff endpoints.
//! Accounts are provisioned with the back-office key (`POST /admin/v1/staff`).
//!
//! Staff tokens belong to stored sessions (`sessions.rs`): refresh rotation with reuse
//! detection, logout, and revocation by the `security` role, effective at once on every
//! node (the revoked set, like customers'). The `security` role also sets antifraud flags on
//! customers (`risk_flags.rs`), a risk signal at login.

mod risk_flags;
mod sessions;

pub(crate) use risk_flags::{clear as clear_risk_flag, set as set_risk_flag};
pub(crate) use sessions::{delete_session, list_sessions, logout, refresh};

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use kernel::CustomerId;
use kernel::store::{LockoutPolicy, StaffAccount};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::access::totp;
use crate::auth::verify_password;
use crate::auth::{bearer, hash_password};
use crate::backoffice::Backoffice;
use crate::manager::{ClientIp, invalid_credentials, locked_out, sessions_json};
use crate::problem::Problem;
use crate::tokens::Claims;

pub const ROLES: [&str; 4] = ["support", "marketing", "operations", "security"];

/// 10 failures lock a staff account for 30 minutes.
pub const STAFF_LOCKOUT: LockoutPolicy = LockoutPolicy {
    max_failures: 10,
    lock_for: time::Duration::minutes(30),
};

/// An authenticated staff member.
pub(crate) struct Staff(pub Claims);

impl Staff {
    pub(crate) fn require(&self, roles: &[&str]) -> Result<(), Problem> {
        match &self.0.role {
            Some(role) if roles.contains(&role.as_str()) => Ok(()),
            _ => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role cannot use this endpoint",
            )),
        }
    }
}

impl FromRequestParts<Arc<Gateway>> for Staff {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Problem> {
        let verified = bearer(parts)
            .ok_or_else(Problem::unauthorized)
            .and_then(|token| {
                gateway
                    .tokens
                    .verify(token, kernel::now().unix_timestamp())
                    .map_err(|_| Problem::unauthorized())
            })
            .and_then(|claims| {
                if claims.scope != "staff" {
                    Err(Problem::forbidden())
                } else if gateway.revocations.is_revoked(&claims.sid) {
                    Err(Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "session_revoked",
                        "this session has ended; log in again",
                    ))
                } else {
                    Ok(claims)
                }
            });
        match verified {
            Ok(claims) => Ok(Staff(claims)),
            Err(problem) => {
                gateway.audit_refusal(parts, &problem);
                Err(problem)
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct NewStaff {
    login: String,
    role: String,
    password: String,
}

pub(crate) async fn create(
    State(gateway): State<Arc<Gateway>>,
    _key: Backoffice,
    request: Result<Json<NewStaff>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let Json(request) = request.map_err(|e| Problem::bad_request(e.body_text()))?;
    if CustomerId::parse(&request.login).is_err() {
        return Err(Problem::bad_request(
            "login must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
        ));
    }
    if !ROLES.contains(&request.role.as_str()) {
        return Err(Problem::bad_request(
            "role must be support, marketing, operations or security",
        ));
    }
    if let Err(reason) = crate::access::policy::check_password(&request.password, "") {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            reason,
        ));
    }
    let password = request.password;
    let password_hash = crate::auth::argon2_blocking(move || hash_password(&password))
        .await
        .ok_or_else(Problem::internal)?
        .map_err(|_| Problem::internal())?;
    let mut secret = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let account = StaffAccount {
        login: request.login.clone(),
        role: request.role.clone(),
        password_hash,
        totp_secret: secret.clone(),
    };
    let inserted = gateway
        .store
        .insert_staff(&account)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    if !inserted {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already_exists",
            "this staff login exists",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "login": request.login,
            "role": request.role,
            "totp_secret": totp::base32(&secret),
        })),
    ))
}

#[derive(Deserialize)]
pub(crate) struct StaffLogin {
    login: String,
    password: String,
    totp: String,
}

pub(crate) async fn login(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    request: Result<Json<StaffLogin>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let Json(request) = request.map_err(|e| Problem::bad_request(e.body_text()))?;
    if request.login.is_empty() || request.login.len() > 64 || request.password.len() > 256 {
        return Err(invalid_credentials());
    }
    let key = format!("staff:{}", request.login);
    let now = kernel::now();
    let state = gateway
        .store
        .lock_state(&key)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    if state.locked(now) {
        let until = state.locked_until.unwrap_or(now);
        return Err(locked_out((until - now).whole_seconds() + 1));
    }
    let account = gateway
        .store
        .staff(&request.login)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    let hash = account
        .as_ref()
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(|| gateway.dummy_hash.0.clone());
    let password = request.password;
    let password_ok = crate::auth::argon2_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let step = account
        .as_ref()
        .and_then(|a| totp::matching_step(&a.totp_secret, &request.totp, now.unix_timestamp()));
    // The code's time step is spent (compare-and-set in the store) only behind the right
    // password, so a guesser cannot burn a staff member's current code. A replayed code, or
    // one of a step already used, is refused like a wrong one.
    let totp_ok = match (&account, step) {
        (Some(account), Some(step)) if password_ok => gateway
            .store
            .use_staff_totp_step(&account.login, step)
            .await
            .map_err(|_| Problem::unavailable("try again"))?,
        _ => false,
    };
    let Some(account) = account.filter(|_| password_ok && totp_ok) else {
        gateway
            .store
            .record_failure(&key, STAFF_LOCKOUT, now)
            .await
            .map_err(|_| Problem::unavailable("try again"))?;
        gateway
            .audit("staff_login", &request.login, "", &ip, false)
            .await;
        return Err(invalid_credentials());
    };
    let _ = gateway.store.clear_failures(&key).await;
    let login = CustomerId::parse(&account.login).map_err(|_| Problem::internal())?;
    let tokens = gateway.open_staff_session(&login, &account.role).await?;
    gateway
        .audit("staff_login", &account.login, &account.role, &ip, true)
        .await;
    Ok(Json(tokens))
}

/// `GET /staff/v1/customers/{id}/sessions` (support, security).
pub(crate) async fn customer_sessions(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    staff.require(&["support", "security"])?;
    let customer = CustomerId::parse(&id).map_err(|_| Problem::not_found())?;
    let sessions = gateway
        .store
        .sessions_of(&customer)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    gateway
        .audit("staff_read_sessions", staff.0.sub.as_str(), &id, &ip, true)
        .await;
    Ok(Json(sessions_json(&sessions, "")))
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /staff/v1/audit?limit=` (security): the newest audit entries.
pub(crate) async fn audit(
    State(gateway): State<Arc<Gateway>>,
    staff: Staff,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Problem> {
    staff.require(&["security"])?;
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let entries = gateway
        .store
        .audit_recent(query.limit.unwrap_or(100).clamp(1, 1000))
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    let items: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "at": e.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "kind": e.kind, "actor": e.actor, "subject": e.subject, "ip": e.ip, "outcome": e.outcome,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}
