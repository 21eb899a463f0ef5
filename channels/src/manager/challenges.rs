//! Confirmation of a challenge (registration, login, step-up, phone change), the SMS a
//! customer with an authenticator app asks for at login, and step-up with dynamic linking
//! (a code bound to one operation's amount and payee).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kernel::CustomerId;
use kernel::metrics;
use serde::Deserialize;
use serde_json::{Value, json};

use super::credentials::finish_phone_change;
use super::{ClientIp, JsonBody, body, challenge_problem, rate_limited, unavailable};
use crate::Gateway;
use crate::access::challenge::{self, Challenge, ChallengeError, Purpose};
use crate::access::risk;
use crate::auth::{Customer, MaybeCustomer};
use crate::problem::Problem;

#[derive(Deserialize)]
pub(crate) struct ConfirmRequest {
    code: String,
    /// For step-up: the operation as it is now (any change invalidates the code).
    #[serde(default)]
    operation: Option<Operation>,
    /// `sms` (the default: the challenge's own code) or `totp` (a login only, when the
    /// customer enrolled an authenticator app).
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Operation {
    operation: String,
    amount: kernel::Money,
    payee: String,
}

impl Operation {
    fn parts(&self) -> [String; 3] {
        [
            self.operation.clone(),
            format!(
                "{} {}",
                self.amount.amount_string(),
                self.amount.currency.code()
            ),
            self.payee.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({"operation": self.operation, "amount": self.amount, "payee": self.payee})
    }
}

pub(crate) async fn confirm(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    MaybeCustomer(caller): MaybeCustomer,
    Path(id): Path<String>,
    request: JsonBody<ConfirmRequest>,
) -> Result<Response, Problem> {
    let request = body(request)?;
    if id.len() > 64 {
        return Err(Problem::not_found());
    }
    let use_totp = match request.method.as_deref() {
        None | Some("sms") => false,
        Some("totp") => true,
        Some(_) => return Err(Problem::bad_request("method must be sms or totp")),
    };
    // A TOTP code is checked (and its time step spent) once, even if the loop runs again.
    let mut totp_accepted: Option<bool> = None;
    let now = kernel::now().unix_timestamp();
    // A lost compare-and-swap means another attempt ran at the same moment: reload and
    // verify again, so each attempt is counted exactly once.
    for _ in 0..5 {
        let Some(record) = gateway.store.challenge(&id).await.map_err(unavailable)? else {
            return Err(Problem::not_found());
        };
        let mut challenge: Challenge =
            serde_json::from_str(&record.state).map_err(|_| Problem::internal())?;
        let subject = challenge.context["subject"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let binding = match challenge.purpose {
            Purpose::Register | Purpose::Login => {
                challenge::binding(challenge.purpose, &subject, &[])
            }
            Purpose::PhoneChange => {
                // Only the customer it was issued to may confirm it: anyone else gets 404.
                let Some(caller) = &caller else {
                    return Err(Problem::unauthorized());
                };
                if caller.sub.as_str() != subject {
                    return Err(Problem::not_found());
                }
                let new_phone = challenge.context["new_phone"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                challenge::binding(Purpose::PhoneChange, &subject, &[&new_phone])
            }
            Purpose::StepUp => {
                // Only the customer it was issued to may confirm it: anyone else gets 404.
                let Some(caller) = &caller else {
                    return Err(Problem::unauthorized());
                };
                if caller.sub.as_str() != subject {
                    return Err(Problem::not_found());
                }
                let Some(operation) = &request.operation else {
                    return Err(Problem::bad_request(
                        "a step-up confirmation carries the operation it confirms",
                    ));
                };
                let parts = operation.parts();
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                challenge::binding(Purpose::StepUp, &subject, &parts)
            }
        };
        if use_totp && challenge.purpose != Purpose::Login {
            return Err(Problem::bad_request("a TOTP code confirms a login only"));
        }
        let mut verdict = if use_totp {
            match challenge.open_for_attempt(now) {
                Err(error) => Err(error),
                Ok(()) => {
                    let accepted = match totp_accepted {
                        Some(accepted) => accepted,
                        None => {
                            let accepted =
                                gateway.totp_factor(&subject, &request.code, now).await?;
                            totp_accepted = Some(accepted);
                            accepted
                        }
                    };
                    challenge.settle(accepted, &binding, now)
                }
            }
        } else {
            challenge.verify(&request.code, &binding, now)
        };
        // A decoy registration (unknown or already registered phone) never succeeds.
        if verdict.is_ok()
            && challenge.purpose == Purpose::Register
            && !challenge.context["eligible"].as_bool().unwrap_or(false)
        {
            verdict = Err(ChallengeError::InvalidCode);
        }
        let state = serde_json::to_string(&challenge).map_err(|_| Problem::internal())?;
        let changed = challenge.attempts != attempts_of(&record.state) || challenge.used;
        if changed
            && !gateway
                .store
                .update_challenge(&id, record.version, &state)
                .await
                .map_err(unavailable)?
        {
            continue;
        }
        if let Err(error) = verdict {
            gateway
                .audit(
                    &format!("confirm_{}", challenge.purpose.as_str()),
                    &subject,
                    &id,
                    &ip,
                    false,
                )
                .await;
            return Err(challenge_problem(error));
        }
        gateway
            .audit(
                &format!("confirm_{}", challenge.purpose.as_str()),
                &subject,
                &id,
                &ip,
                true,
            )
            .await;
        if challenge.purpose == Purpose::PhoneChange {
            let sid = caller.as_ref().map(|c| c.sid.clone()).unwrap_or_default();
            return finish_phone_change(&gateway, &challenge, &subject, &sid, &ip).await;
        }
        return finish(
            &gateway,
            &challenge,
            &subject,
            request.operation.as_ref(),
            &ip,
        )
        .await;
    }
    Err(Problem::unavailable("try again"))
}

/// `POST /v1/auth/challenges/{id}/sms`: a customer with an authenticator app, whose login
/// challenge sent no SMS, asks for the code by SMS after all. Only such a challenge, open
/// (not used, not expired, attempts left), qualifies; anything else is 404, so the path
/// tells nothing about other challenges. A new code replaces the unsent one, under the
/// challenge's own life and attempts (asking again buys no guesses), and the send is
/// rate-limited per phone like every other.
pub(crate) async fn send_sms(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    if id.len() > 64 {
        return Err(Problem::not_found());
    }
    let now = kernel::now().unix_timestamp();
    // A lost compare-and-swap means a confirmation or another request ran at the same
    // moment: reload and decide again.
    let mut charged = false;
    for _ in 0..5 {
        let Some(record) = gateway.store.challenge(&id).await.map_err(unavailable)? else {
            return Err(Problem::not_found());
        };
        let mut challenge: Challenge =
            serde_json::from_str(&record.state).map_err(|_| Problem::internal())?;
        let phone = challenge.context["phone"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let eligible = challenge.purpose == Purpose::Login
            && challenge.context["sms_on_request"].as_bool() == Some(true)
            && !phone.is_empty()
            && challenge.open_for_attempt(now).is_ok();
        if !eligible {
            return Err(Problem::not_found());
        }
        let subject = challenge.context["subject"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let customer = CustomerId::parse(&subject).map_err(|_| Problem::internal())?;
        // One send is charged once, however many times the loop runs.
        if !charged {
            if let Err(wait) = gateway.limits.sends.check(&format!("phone:{phone}")) {
                gateway
                    .audit("login_sms_requested", &subject, &id, &ip, false)
                    .await;
                return Err(rate_limited(wait));
            }
            charged = true;
        }
        let code = challenge.new_code(&mut rand::rngs::OsRng);
        // Each send is its own notification (the notifier drops a repeated request id).
        let sends = challenge.context["sms_sent"].as_u64().unwrap_or(0) + 1;
        challenge.context["sms_sent"] = json!(sends);
        let state = serde_json::to_string(&challenge).map_err(|_| Problem::internal())?;
        if !gateway
            .store
            .update_challenge(&id, record.version, &state)
            .await
            .map_err(unavailable)?
        {
            continue;
        }
        gateway.send_code(
            &customer,
            &phone,
            code,
            Purpose::Login,
            &format!("{id}-sms{sends}"),
        );
        gateway
            .audit("login_sms_requested", &subject, &id, &ip, true)
            .await;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "challenge_id": id,
                "expires_in": (challenge.expires_at - now).max(0),
            })),
        )
            .into_response());
    }
    Err(Problem::unavailable("try again"))
}

fn attempts_of(state: &str) -> u32 {
    serde_json::from_str::<Challenge>(state)
        .map(|c| c.attempts)
        .unwrap_or(u32::MAX)
}

async fn finish(
    gateway: &Gateway,
    challenge: &Challenge,
    subject: &str,
    operation: Option<&Operation>,
    ip: &str,
) -> Result<Response, Problem> {
    let customer = CustomerId::parse(subject).map_err(|_| Problem::internal())?;
    // A completed registration or login teaches the network it came from (risk rules).
    let remember_network = || async {
        gateway
            .store
            .remember_login_network(&customer, &risk::network_of(ip), kernel::now())
            .await
            .map_err(unavailable)
    };
    let device_id = challenge.context["device_id"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    match challenge.purpose {
        Purpose::Register => {
            let phone = challenge.context["phone"].as_str().unwrap_or_default();
            let hash = challenge.context["password_hash"]
                .as_str()
                .unwrap_or_default();
            let inserted = gateway
                .store
                .insert_credential(&kernel::store::Credential {
                    login: phone.to_owned(),
                    customer_id: customer.clone(),
                    password_hash: hash.to_owned(),
                })
                .await
                .map_err(unavailable)?;
            if !inserted {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "already_registered",
                    "this phone already has a login",
                ));
            }
            gateway
                .store
                .trust_device(&customer, &device_id, kernel::now())
                .await
                .map_err(unavailable)?;
            remember_network().await?;
            Ok(Json(gateway.open_session(&customer, &device_id).await?).into_response())
        }
        Purpose::Login => {
            // The login's and the device's failure counts end with the second factor.
            let failure_keys = challenge.context["failure_keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            for key in failure_keys {
                gateway
                    .store
                    .clear_failures(key)
                    .await
                    .map_err(unavailable)?;
            }
            gateway
                .store
                .trust_device(&customer, &device_id, kernel::now())
                .await
                .map_err(unavailable)?;
            remember_network().await?;
            metrics::LOGINS_OK.inc();
            Ok(Json(gateway.open_session(&customer, &device_id).await?).into_response())
        }
        Purpose::StepUp => Ok(Json(json!({
            "confirmed": operation.map(Operation::json).unwrap_or(Value::Null),
            "challenge_id": challenge.id,
        }))
        .into_response()),
        // Finished by `finish_phone_change` (it needs the caller's session).
        Purpose::PhoneChange => Err(Problem::internal()),
    }
}

/// `POST /v1/auth/step-up`: a challenge bound to one operation (its amount and payee). The
/// payments service calls the same path when a payment is `confirmation_required`.
pub(crate) async fn step_up(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    ClientIp(ip): ClientIp,
    request: JsonBody<Operation>,
) -> Result<Response, Problem> {
    let operation = body(request)?;
    if operation.operation.is_empty()
        || operation.operation.len() > 64
        || operation.payee.is_empty()
        || operation.payee.len() > 128
    {
        return Err(Problem::bad_request(
            "operation and payee must be 1 to 64/128 characters",
        ));
    }
    let customer = claims.sub.clone();
    let phone = gateway
        .store
        .abs_customer(&customer)
        .await
        .map_err(unavailable)?
        .map(|c| c.phone)
        .ok_or_else(Problem::not_found)?;
    if let Err(wait) = gateway.limits.sends.check(&format!("phone:{phone}")) {
        return Err(rate_limited(wait));
    }
    let parts = operation.parts();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let (challenge, code) = gateway
        .new_challenge(
            Purpose::StepUp,
            challenge::binding(Purpose::StepUp, customer.as_str(), &parts),
            json!({"subject": customer.as_str(), "operation": operation.json()}),
        )
        .await?;
    gateway.send_code(&customer, &phone, code, Purpose::StepUp, &challenge.id);
    gateway
        .audit(
            "step_up_started",
            customer.as_str(),
            &challenge.id,
            &ip,
            true,
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "confirmation_required",
            "challenge_id": challenge.id,
            "expires_in": challenge::CODE_TTL_S,
        })),
    )
        .into_response())
}
