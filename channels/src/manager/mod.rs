//! The Access Manager's HTTP shell, one file per flow: `register`, `login`, `challenges`
//! (confirmation and step-up), `totp` (customers' authenticator apps), `sessions` (refresh rotation with reuse detection, logout,
//! the session list) and `credentials` (password and phone change). This file holds what
//! they share: problems, the audit log, sessions and their tokens, revocation, code sends.
//! The rules live in `access/` (pure) and `kernel::store::LockState`; these files do I/O.
//!
//! Non-revealing by construction: login answers 401 `invalid_credentials` whatever failed,
//! and an unknown login costs one argon2 verification like a known one; registration answers
//! 202 with a challenge for every well-formed phone and does the same work (an argon2 hash, a
//! challenge write) whether or not the bank knows it, only sending nothing when it does not.

mod challenges;
mod credentials;
mod login;
mod register;
mod send_queue;
mod sessions;
mod totp;

pub(crate) use challenges::{ConfirmRequest, Operation, confirm, send_sms, step_up};
pub(crate) use credentials::{change_password, change_phone};
pub(crate) use login::login;
pub(crate) use register::register;
pub use send_queue::{SEND_QUEUE_CAPACITY, SendQueue};
pub(crate) use sessions::{delete_session, logout, refresh, rotate, sessions, sessions_json};
pub(crate) use totp::{
    confirm as confirm_totp, remove as remove_totp, start as start_totp, status as totp_status,
};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kernel::CustomerId;
use kernel::bus::subjects;
use kernel::store::{AuditEntry, ChallengeRecord, LockState, SessionRecord};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::access::challenge::{self, Challenge, ChallengeError, Purpose};
use crate::problem::Problem;
use crate::tokens::Claims;

type JsonBody<T> = Result<Json<T>, JsonRejection>;

fn body<T>(body: JsonBody<T>) -> Result<T, Problem> {
    body.map(|Json(b)| b)
        .map_err(|e| Problem::bad_request(e.body_text()))
}

fn unavailable<E>(_: E) -> Problem {
    Problem::unavailable("try again")
}

pub(crate) fn invalid_credentials() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "login or password is wrong",
    )
}

pub(crate) fn locked_out(retry_after: i64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "locked_out",
        "too many failed attempts; try again later",
    )
    .retry_after(retry_after.max(1) as u64)
}

fn challenge_problem(error: ChallengeError) -> Problem {
    let status = match error {
        ChallengeError::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        ChallengeError::InvalidCode | ChallengeError::WrongOperation => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ChallengeError::Expired | ChallengeError::AlreadyUsed => StatusCode::GONE,
    };
    Problem::new(status, error.code(), error.to_string())
}

/// SHA-256 hex of a refresh token (the store keeps only this).
fn token_hash(token: &str) -> String {
    challenge::hex(&Sha256::digest(token.as_bytes()))
}

fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// `+7999***0101`: enough to recognise in a log, not enough to enumerate.
pub(crate) fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 8 {
        return "***".into();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

impl Gateway {
    /// Appends to the audit log; a failure is logged, never shown to the caller.
    pub(crate) async fn audit(&self, kind: &str, actor: &str, subject: &str, ip: &str, ok: bool) {
        let entry = AuditEntry {
            at: kernel::now(),
            kind: kind.into(),
            actor: actor.into(),
            subject: subject.into(),
            ip: ip.into(),
            outcome: if ok { "ok" } else { "refused" }.into(),
        };
        if let Err(error) = self.store.audit_append(&entry).await {
            tracing::warn!(%error, kind, "audit entry not written");
        }
    }

    /// A new customer session with its tokens (the refresh token is returned once, stored
    /// hashed).
    pub(crate) async fn open_session(
        &self,
        customer: &CustomerId,
        device_id: &str,
    ) -> Result<Value, Problem> {
        let sid = uuid::Uuid::new_v4().to_string();
        let refresh = format!("rt1.{sid}.{}", random_token(32));
        let session = SessionRecord::new(
            sid,
            customer.clone(),
            device_id.to_owned(),
            token_hash(&refresh),
            kernel::now(),
        );
        self.store
            .create_session(&session)
            .await
            .map_err(unavailable)?;
        Ok(self.tokens_for(&session, refresh, None))
    }

    /// A new staff session: access tokens in the `staff` scope with the member's role, and a
    /// refresh token rotated like a customer's.
    pub(crate) async fn open_staff_session(
        &self,
        login: &CustomerId,
        role: &str,
    ) -> Result<Value, Problem> {
        let sid = uuid::Uuid::new_v4().to_string();
        let refresh = format!("rt1.{sid}.{}", random_token(32));
        let session = SessionRecord::staff(sid, login.clone(), token_hash(&refresh), kernel::now());
        self.store
            .create_session(&session)
            .await
            .map_err(unavailable)?;
        Ok(self.tokens_for(&session, refresh, Some(role)))
    }

    /// Tokens for `session`, in its scope; `role` for staff sessions.
    pub(crate) fn tokens_for(
        &self,
        session: &SessionRecord,
        refresh: String,
        role: Option<&str>,
    ) -> Value {
        let now = kernel::now().unix_timestamp();
        let ttl = self.config.access_token_ttl.as_secs() as i64;
        let claims = Claims {
            sub: session.customer_id.clone(),
            sid: session.id.clone(),
            scope: session.scope.clone(),
            role: role.map(str::to_owned),
            iat: now,
            exp: now + ttl,
        };
        let mut tokens = json!({
            "access_token": self.tokens.sign(&claims),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": ttl,
        });
        if let Some(role) = role {
            tokens["role"] = json!(role);
        }
        tokens
    }

    /// Revokes in the store, here at once, and on every node through the bus (their
    /// revoked sets and sockets).
    pub(crate) async fn revoke(&self, session: &SessionRecord) -> Result<(), Problem> {
        self.store
            .revoke_session(&session.id)
            .await
            .map_err(unavailable)?;
        self.revocations
            .revoke(&session.id, kernel::now().unix_timestamp());
        let message = json!({"type": "session_revoked", "sid": session.id}).to_string();
        if let Err(error) = self
            .bus
            .publish(&subjects::control(&session.customer_id), message.into())
            .await
        {
            tracing::warn!(%error, "session revocation not broadcast");
        }
        Ok(())
    }

    /// A code by SMS, as a notifier request (handed to the send queue by the caller).
    fn code_message(
        &self,
        customer: &CustomerId,
        phone: &str,
        code: String,
        purpose: Purpose,
        id: &str,
    ) -> notifier::NotificationRequest {
        let mut request = notifier::NotificationRequest::new(
            format!("code-{id}"),
            customer.clone(),
            notifier::Kind::Code,
            json!({"code": code, "purpose": purpose.as_str()}),
        );
        request.phone = Some(phone.to_owned());
        request
    }

    /// Sends a code by SMS through the send queue (off the request path).
    fn send_code(
        &self,
        customer: &CustomerId,
        phone: &str,
        code: String,
        purpose: Purpose,
        id: &str,
    ) {
        let message = self.code_message(customer, phone, code, purpose, id);
        self.send_queue.push(Some(message));
    }

    fn notify_security(&self, customer: &CustomerId, phone: &str, event: &str) {
        let at = kernel::now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut request = notifier::NotificationRequest::new(
            format!("sec-{}", uuid::Uuid::new_v4()),
            customer.clone(),
            notifier::Kind::SecurityAlert,
            json!({"event": event, "at": at}),
        );
        request.phone = Some(phone.to_owned());
        self.send_queue.push(Some(request));
    }

    async fn new_challenge(
        &self,
        purpose: Purpose,
        binding: String,
        context: Value,
    ) -> Result<(Challenge, String), Problem> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = kernel::now();
        let (challenge, code) = Challenge::issue(
            id,
            purpose,
            binding,
            context,
            now.unix_timestamp(),
            &mut rand::rngs::OsRng,
        );
        let record = ChallengeRecord {
            id: challenge.id.clone(),
            state: serde_json::to_string(&challenge).map_err(|_| Problem::internal())?,
            expires_at: now + time::Duration::seconds(challenge::CODE_TTL_S),
            version: 0,
        };
        self.store
            .insert_challenge(&record)
            .await
            .map_err(unavailable)?;
        Ok((challenge, code))
    }

    /// Refuses when any key is locked; else returns their failure counters, in order.
    async fn lock_check(&self, keys: &[String]) -> Result<Vec<LockState>, Problem> {
        let now = kernel::now();
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            let state: LockState = self.store.lock_state(key).await.map_err(unavailable)?;
            if state.locked(now) {
                let until = state.locked_until.unwrap_or(now);
                return Err(locked_out((until - now).whole_seconds() + 1));
            }
            states.push(state);
        }
        Ok(states)
    }
}

pub(crate) fn client_ip(headers: &axum::http::Extensions) -> String {
    headers
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_default()
}

/// The caller's IP, for limits and the audit log.
pub(crate) struct ClientIp(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

pub(crate) fn rate_limited(retry_after: u64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down",
    )
    .retry_after(retry_after)
}
