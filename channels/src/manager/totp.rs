//! Customers' TOTP second factor: enrolment (start → secret and `otpauth://` URI, shown this
//! once; confirm with a first valid code), removal (re-authentication), and the check a login
//! challenge uses when the customer answers with a TOTP code instead of the SMS code.
//!
//! The secret is sealed (`access::seal`) under a platform key before it reaches the store,
//! and never leaves again. Each accepted time step is recorded, so a code works once.
//! Enrolment confirmation takes 5 wrong codes, then waits 5 minutes (or a new start).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kernel::CustomerId;
use kernel::store::{LockoutPolicy, TotpEnrolment};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use super::credentials::reauthenticate;
use super::{ClientIp, JsonBody, body, unavailable};
use crate::Gateway;
use crate::access::challenge::{ChallengeError, MAX_ATTEMPTS};
use crate::access::{seal, totp};
use crate::auth::Customer;
use crate::problem::Problem;

/// The platform key sealing TOTP secrets (in `secrets`, shared by every node).
const SEAL_KEY_NAME: &str = "totp_seal_key_v1";
/// The name authenticator apps show.
const ISSUER: &str = "Arbat";
/// Wrong codes while confirming an enrolment, like a challenge's attempts.
const CONFIRM_ATTEMPTS: LockoutPolicy = LockoutPolicy {
    max_failures: MAX_ATTEMPTS,
    lock_for: time::Duration::minutes(5),
};

fn confirm_key(customer: &CustomerId) -> String {
    format!("totp-confirm:{customer}")
}

fn not_enrolled() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "totp_not_enrolled",
        "no authenticator app is being enrolled",
    )
}

impl Gateway {
    async fn totp_seal_key(&self) -> Result<Vec<u8>, Problem> {
        let mut candidate = [0u8; seal::KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut candidate);
        self.store
            .secret(SEAL_KEY_NAME, &candidate)
            .await
            .map_err(unavailable)
    }

    /// Whether `code` is the customer's current TOTP code, spending its time step: true at
    /// most once per step. False, too, when the customer has no confirmed enrolment.
    pub(super) async fn totp_factor(
        &self,
        subject: &str,
        code: &str,
        now: i64,
    ) -> Result<bool, Problem> {
        let Ok(customer) = CustomerId::parse(subject) else {
            return Ok(false);
        };
        let Some(enrolment) = self
            .store
            .totp_enrolment(&customer)
            .await
            .map_err(unavailable)?
            .filter(|enrolment| enrolment.confirmed)
        else {
            return Ok(false);
        };
        let key = self.totp_seal_key().await?;
        let Some(secret) = seal::open(&key, customer.as_str(), &enrolment.sealed_secret) else {
            tracing::warn!("a TOTP secret does not open under the platform key");
            return Ok(false);
        };
        let Some(step) = totp::matching_step(&secret, code, now) else {
            return Ok(false);
        };
        self.store
            .use_totp_step(&customer, step)
            .await
            .map_err(unavailable)
    }
}

#[derive(Deserialize)]
pub(crate) struct Reauthentication {
    current_password: String,
}

#[derive(Deserialize)]
pub(crate) struct TotpCode {
    code: String,
}

/// `GET /v1/me/totp`: whether an authenticator app is enrolled (never the secret).
pub(crate) async fn status(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Response, Problem> {
    let enrolment = gateway
        .store
        .totp_enrolment(&claims.sub)
        .await
        .map_err(unavailable)?;
    let state = match enrolment {
        None => "none",
        Some(enrolment) if enrolment.confirmed => "enrolled",
        Some(_) => "pending",
    };
    Ok(Json(json!({"status": state})).into_response())
}

/// `POST /v1/me/totp`: re-authentication, then a fresh secret (replacing a pending one),
/// shown this once as base32 and as an `otpauth://` URI. 409 when one is enrolled already.
pub(crate) async fn start(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    request: JsonBody<Reauthentication>,
) -> Result<Response, Problem> {
    let request = body(request)?;
    let customer = claims.sub.clone();
    let phone = reauthenticate(
        &gateway,
        &customer,
        request.current_password,
        &ip,
        "totp_enrol_started",
    )
    .await?;
    let mut secret = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let key = gateway.totp_seal_key().await?;
    let sealed =
        seal::seal(&key, nonce, customer.as_str(), &secret).ok_or_else(Problem::internal)?;
    let started = gateway
        .store
        .start_totp(&TotpEnrolment {
            customer_id: customer.clone(),
            sealed_secret: sealed,
            confirmed: false,
            last_step: 0,
            created_at: kernel::now(),
        })
        .await
        .map_err(unavailable)?;
    if !started {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "totp_enrolled",
            "an authenticator app is enrolled already; remove it first",
        ));
    }
    gateway
        .store
        .clear_failures(&confirm_key(&customer))
        .await
        .map_err(unavailable)?;
    gateway
        .audit("totp_enrol_started", customer.as_str(), "", &ip, true)
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "secret": totp::base32(&secret),
            "otpauth_uri": totp::otpauth_uri(ISSUER, &phone, &secret),
            "digits": 6,
            "period": totp::STEP_S,
        })),
    )
        .into_response())
}

/// `POST /v1/me/totp/confirm`: the first code from the app completes the enrolment.
pub(crate) async fn confirm(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    request: JsonBody<TotpCode>,
) -> Result<Response, Problem> {
    let request = body(request)?;
    let customer = claims.sub.clone();
    let key = confirm_key(&customer);
    let now = kernel::now();
    let attempts = gateway.store.lock_state(&key).await.map_err(unavailable)?;
    if attempts.locked(now) {
        let wait = attempts
            .locked_until
            .map_or(1, |until| (until - now).whole_seconds() + 1);
        let error = ChallengeError::TooManyAttempts;
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            error.code(),
            error.to_string(),
        )
        .retry_after(wait.max(1) as u64));
    }
    let Some(enrolment) = gateway
        .store
        .totp_enrolment(&customer)
        .await
        .map_err(unavailable)?
        .filter(|enrolment| !enrolment.confirmed)
    else {
        return Err(not_enrolled());
    };
    let seal_key = gateway.totp_seal_key().await?;
    let step = seal::open(&seal_key, customer.as_str(), &enrolment.sealed_secret)
        .and_then(|secret| totp::matching_step(&secret, &request.code, now.unix_timestamp()));
    let confirmed = match step {
        Some(step) => gateway
            .store
            .confirm_totp(&customer, &enrolment.sealed_secret, step)
            .await
            .map_err(unavailable)?,
        None => false,
    };
    if !confirmed {
        gateway
            .store
            .record_failure(&key, CONFIRM_ATTEMPTS, now)
            .await
            .map_err(unavailable)?;
        gateway
            .audit("totp_enrolled", customer.as_str(), "", &ip, false)
            .await;
        let error = ChallengeError::InvalidCode;
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            error.code(),
            error.to_string(),
        ));
    }
    gateway
        .store
        .clear_failures(&key)
        .await
        .map_err(unavailable)?;
    gateway
        .audit("totp_enrolled", customer.as_str(), "", &ip, true)
        .await;
    Ok(Json(json!({"status": "enrolled"})).into_response())
}

/// `POST /v1/me/totp/remove`: re-authentication, then the enrolment (pending or not) is gone.
pub(crate) async fn remove(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    request: JsonBody<Reauthentication>,
) -> Result<StatusCode, Problem> {
    let request = body(request)?;
    let customer = claims.sub.clone();
    let phone = reauthenticate(
        &gateway,
        &customer,
        request.current_password,
        &ip,
        "totp_removed",
    )
    .await?;
    let removed = gateway
        .store
        .delete_totp(&customer)
        .await
        .map_err(unavailable)?;
    if !removed {
        return Err(not_enrolled());
    }
    gateway.notify_security(&customer, &phone, "authenticator app removed");
    gateway
        .audit("totp_removed", customer.as_str(), "", &ip, true)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
