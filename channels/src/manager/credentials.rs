//! Password and phone change, both behind re-authentication by the current password.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kernel::CustomerId;
use kernel::store::SessionRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ClientIp, JsonBody, body, invalid_credentials, mask_phone, rate_limited, unavailable};
use crate::Gateway;
use crate::access::challenge::{self, Challenge, Purpose};
use crate::access::policy;
use crate::auth::{Customer, hash_password, verify_password};
use crate::problem::Problem;

#[derive(Deserialize)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
    #[serde(default)]
    end_other_sessions: bool,
}

/// Re-authentication by the current password before a sensitive change: counts a failure
/// toward the login's lockout and audits it as `action`. Returns the phone on file (the login).
pub(super) async fn reauthenticate(
    gateway: &Gateway,
    customer: &CustomerId,
    current_password: String,
    ip: &str,
    action: &str,
) -> Result<String, Problem> {
    let phone = gateway
        .store
        .abs_customer(customer)
        .await
        .map_err(unavailable)?
        .map(|c| c.phone)
        .ok_or_else(invalid_credentials)?;
    let key = format!("login:{phone}");
    gateway.lock_check(std::slice::from_ref(&key)).await?;
    let credential = gateway
        .store
        .credential(&phone)
        .await
        .map_err(unavailable)?
        .filter(|c| &c.customer_id == customer)
        .ok_or_else(invalid_credentials)?;
    let hash = credential.password_hash;
    let verified = crate::auth::argon2_blocking(move || verify_password(&hash, &current_password))
        .await
        .unwrap_or(false);
    if !verified {
        gateway
            .store
            .record_failure(&key, gateway.config.login_lockout, kernel::now())
            .await
            .map_err(unavailable)?;
        gateway
            .audit(action, customer.as_str(), "", ip, false)
            .await;
        return Err(invalid_credentials());
    }
    Ok(phone)
}

/// Re-authentication by the current password; the customer is notified; other sessions
/// end when asked, and the answer says how many there are so the app can offer it.
pub(crate) async fn change_password(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    _headers: HeaderMap,
    request: JsonBody<PasswordChange>,
) -> Result<Json<Value>, Problem> {
    let request = body(request)?;
    let customer = claims.sub.clone();
    let phone = reauthenticate(
        &gateway,
        &customer,
        request.current_password,
        &ip,
        "password_change",
    )
    .await?;
    if let Err(reason) = policy::check_password(&request.new_password, &phone) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            reason,
        ));
    }
    let new = request.new_password;
    let new_hash = crate::auth::argon2_blocking(move || hash_password(&new))
        .await
        .ok_or_else(Problem::internal)?
        .map_err(|_| Problem::internal())?;
    gateway
        .store
        .set_password(&phone, &new_hash)
        .await
        .map_err(unavailable)?;
    let others: Vec<SessionRecord> = gateway
        .store
        .sessions_of(&customer)
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|s| s.id != claims.sid)
        .collect();
    if request.end_other_sessions {
        for session in &others {
            gateway.revoke(session).await?;
        }
    }
    gateway.notify_security(&customer, &phone, "password changed");
    gateway
        .audit("password_change", customer.as_str(), "", &ip, true)
        .await;
    Ok(Json(json!({
        "other_sessions": others.len(),
        "ended_other_sessions": request.end_other_sessions,
    })))
}

// ---- phone change ------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct PhoneChange {
    current_password: String,
    new_phone: String,
    #[serde(default)]
    end_other_sessions: bool,
}

/// `POST /v1/me/phone`: re-authentication by the current password, then a code sent to the
/// NEW phone (202 with the challenge). Confirming it (`/v1/auth/challenges/{id}/confirm`, by
/// the same customer) moves the phone on file and the login, alerts the old phone, and ends
/// the other sessions when asked.
pub(crate) async fn change_phone(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    request: JsonBody<PhoneChange>,
) -> Result<Response, Problem> {
    let request = body(request)?;
    if !policy::valid_phone(&request.new_phone) {
        return Err(Problem::bad_request("new_phone must be +<country><number>"));
    }
    let customer = claims.sub.clone();
    let phone = reauthenticate(
        &gateway,
        &customer,
        request.current_password,
        &ip,
        "phone_change",
    )
    .await?;
    if request.new_phone == phone {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_phone",
            "this is already the phone on file",
        ));
    }
    if let Err(wait) = gateway
        .limits
        .sends
        .check(&format!("phone:{}", request.new_phone))
    {
        return Err(rate_limited(wait));
    }
    let (challenge, code) = gateway
        .new_challenge(
            Purpose::PhoneChange,
            challenge::binding(
                Purpose::PhoneChange,
                customer.as_str(),
                &[&request.new_phone],
            ),
            json!({
                "subject": customer.as_str(),
                "old_phone": phone,
                "new_phone": request.new_phone,
                "end_other_sessions": request.end_other_sessions,
            }),
        )
        .await?;
    gateway.send_code(
        &customer,
        &request.new_phone,
        code,
        Purpose::PhoneChange,
        &challenge.id,
    );
    gateway
        .audit(
            "phone_change_started",
            customer.as_str(),
            &mask_phone(&request.new_phone),
            &ip,
            true,
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"challenge_id": challenge.id, "expires_in": challenge::CODE_TTL_S})),
    )
        .into_response())
}

pub(super) async fn finish_phone_change(
    gateway: &Gateway,
    challenge: &Challenge,
    subject: &str,
    sid: &str,
    ip: &str,
) -> Result<Response, Problem> {
    let customer = CustomerId::parse(subject).map_err(|_| Problem::internal())?;
    let old = challenge.context["old_phone"].as_str().unwrap_or_default();
    let new = challenge.context["new_phone"].as_str().unwrap_or_default();
    let end_others = challenge.context["end_other_sessions"]
        .as_bool()
        .unwrap_or(false);
    let in_use = || {
        Problem::new(
            StatusCode::CONFLICT,
            "phone_in_use",
            "this phone cannot be used; contact the bank",
        )
    };
    // Only someone holding the new phone's code learns that it is taken.
    match gateway.store.change_phone(&customer, old, new).await {
        Ok(true) => {}
        Ok(false) | Err(kernel::store::StoreError::NotFound) => return Err(in_use()),
        Err(error) => return Err(unavailable(error)),
    }
    let others: Vec<SessionRecord> = gateway
        .store
        .sessions_of(&customer)
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|s| s.id != sid)
        .collect();
    if end_others {
        for session in &others {
            gateway.revoke(session).await?;
        }
    }
    gateway.notify_security(&customer, old, "phone changed");
    gateway
        .audit("phone_change", subject, &mask_phone(new), ip, true)
        .await;
    Ok(Json(json!({
        "phone": new,
        "other_sessions": others.len(),
        "ended_other_sessions": end_others,
    }))
    .into_response())
}
