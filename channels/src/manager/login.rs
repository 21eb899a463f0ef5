//! Login: password, then a second factor on a new device.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kernel::metrics;
use serde::Deserialize;
use serde_json::json;

use super::{ClientIp, JsonBody, body, invalid_credentials, mask_phone, rate_limited, unavailable};
use crate::Gateway;
use crate::access::challenge::{self, Purpose};
use crate::auth::verify_password;
use crate::problem::Problem;

#[derive(Deserialize)]
pub(crate) struct LoginRequest {
    login: String,
    password: String,
    device_id: String,
}

pub(crate) async fn login(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    request: JsonBody<LoginRequest>,
) -> Result<Response, Problem> {
    let request = body(request)?;
    if request.device_id.is_empty() || request.device_id.len() > 128 {
        return Err(Problem::bad_request(
            "device_id must be 1 to 128 characters",
        ));
    }
    if request.login.is_empty() || request.login.len() > 64 || request.password.len() > 256 {
        return Err(invalid_credentials());
    }
    let keys = [
        format!("login:{}", request.login),
        format!("device:{}", request.device_id),
        format!("ip:{ip}"),
    ];
    gateway.lock_check(&keys).await?;
    let credential = gateway
        .store
        .credential(&request.login)
        .await
        .map_err(unavailable)?;
    let hash = credential
        .as_ref()
        .map(|c| c.password_hash.clone())
        .unwrap_or_else(|| gateway.dummy_hash.0.clone());
    let password = request.password;
    let verified = crate::auth::argon2_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let Some(credential) = credential.filter(|_| verified) else {
        metrics::LOGINS_FAILED.inc();
        let now = kernel::now();
        let policies = [
            gateway.config.login_lockout,
            gateway.config.login_lockout,
            gateway.config.ip_lockout,
        ];
        for (key, policy) in keys.iter().zip(policies) {
            gateway
                .store
                .record_failure(key, policy, now)
                .await
                .map_err(unavailable)?;
        }
        gateway
            .audit("login", "", &mask_phone(&request.login), &ip, false)
            .await;
        return Err(invalid_credentials());
    };
    for key in &keys[..2] {
        gateway
            .store
            .clear_failures(key)
            .await
            .map_err(unavailable)?;
    }
    let customer = credential.customer_id.clone();
    let trusted = gateway
        .store
        .is_trusted_device(&customer, &request.device_id)
        .await
        .map_err(unavailable)?;
    if !trusted {
        let context = json!({"subject": customer.as_str(), "device_id": request.device_id});
        let (challenge, code) = gateway
            .new_challenge(
                Purpose::Login,
                challenge::binding(Purpose::Login, customer.as_str(), &[]),
                context,
            )
            .await?;
        if let Err(wait) = gateway
            .limits
            .sends
            .check(&format!("phone:{}", credential.login))
        {
            return Err(rate_limited(wait));
        }
        gateway.send_code(
            &customer,
            &credential.login,
            code,
            Purpose::Login,
            &challenge.id,
        );
        gateway
            .audit(
                "login_second_factor",
                customer.as_str(),
                &challenge.id,
                &ip,
                true,
            )
            .await;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "challenge_id": challenge.id,
                "reason": "new_device",
                "expires_in": challenge::CODE_TTL_S,
            })),
        )
            .into_response());
    }
    let tokens = gateway.open_session(&customer, &request.device_id).await?;
    metrics::LOGINS_OK.inc();
    gateway
        .audit("login", customer.as_str(), "", &ip, true)
        .await;
    Ok(Json(tokens).into_response())
}
