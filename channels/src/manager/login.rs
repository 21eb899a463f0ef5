//! Login: password, then a second factor (an SMS code, or a TOTP code when enrolled) when
//! the risk rules (`access::risk`) see any signal: a new device, an expired trust, a new
//! network, recent failures, an antifraud flag. A customer with an authenticator app gets
//! no SMS unless they ask for one (`POST /v1/auth/challenges/{id}/sms`).

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
use crate::access::risk::{self, LoginFacts, RiskPolicy, Signal};
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
    let states = gateway.lock_check(&keys).await?;
    let recent_failures = states.first().map_or(0, |state| state.failures);
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
    let customer = credential.customer_id.clone();
    let network = risk::network_of(&ip);
    let device_trusted_at = gateway
        .store
        .device_trusted_at(&customer, &request.device_id)
        .await
        .map_err(unavailable)?;
    let known_networks = gateway
        .store
        .login_networks(&customer)
        .await
        .map_err(unavailable)?;
    let now = kernel::now();
    let antifraud_flagged = gateway
        .store
        .risk_flag(&customer)
        .await
        .map_err(unavailable)?
        .is_some_and(|until| until > now);
    let signals = risk::assess(
        &RiskPolicy::default(),
        &LoginFacts {
            device_trusted_at: device_trusted_at.map(|at| at.unix_timestamp()),
            network: &network,
            known_networks: &known_networks,
            failures: recent_failures,
            antifraud_flagged,
            now: now.unix_timestamp(),
        },
    );
    if !signals.is_empty() {
        let totp_enrolled = gateway
            .store
            .totp_enrolment(&customer)
            .await
            .map_err(unavailable)?
            .is_some_and(|enrolment| enrolment.confirmed);
        // The failure counts stay until the second factor is passed (`challenges::finish`):
        // a password alone must not wipe the `recent_failures` signal for the next try.
        // A customer with an authenticator app gets no SMS unless they ask for one
        // (`challenges::send_sms`, which reads the phone from here).
        let context = json!({
            "subject": customer.as_str(),
            "device_id": request.device_id,
            "failure_keys": &keys[..2],
            "sms_on_request": totp_enrolled,
            "phone": if totp_enrolled { credential.login.as_str() } else { "" },
        });
        let (challenge, code) = gateway
            .new_challenge(
                Purpose::Login,
                challenge::binding(Purpose::Login, customer.as_str(), &[]),
                context,
            )
            .await?;
        if !totp_enrolled {
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
        }
        let signal_names: Vec<&str> = signals.iter().map(Signal::as_str).collect();
        gateway
            .audit(
                "login_second_factor",
                customer.as_str(),
                &format!("{} {}", challenge.id, signal_names.join(",")),
                &ip,
                true,
            )
            .await;
        // Which signal fired stays in the audit log: telling a password holder would help
        // them avoid it next time. An unknown device is no secret to its holder.
        let reason = if signals.contains(&Signal::NewDevice) {
            "new_device"
        } else {
            "risk"
        };
        let methods: &[&str] = if totp_enrolled {
            &["totp", "sms"]
        } else {
            &["sms"]
        };
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "challenge_id": challenge.id,
                "reason": reason,
                "methods": methods,
                "expires_in": challenge::CODE_TTL_S,
            })),
        )
            .into_response());
    }
    for key in &keys[..2] {
        gateway
            .store
            .clear_failures(key)
            .await
            .map_err(unavailable)?;
    }
    // A known network is not written again: no store write on the usual login.
    if !known_networks.contains(&network) {
        gateway
            .store
            .remember_login_network(&customer, &network, kernel::now())
            .await
            .map_err(unavailable)?;
    }
    let tokens = gateway.open_session(&customer, &request.device_id).await?;
    metrics::LOGINS_OK.inc();
    gateway
        .audit("login", customer.as_str(), "", &ip, true)
        .await;
    Ok(Json(tokens).into_response())
}
