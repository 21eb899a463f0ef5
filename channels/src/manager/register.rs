//! Registration of an existing bank customer by phone or card number: a code by SMS, then
//! the login (the phone) with a password that meets the policy. Non-revealing: every
//! well-formed request does the same work and gets the same answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ClientIp, JsonBody, body, mask_phone, rate_limited, unavailable};
use crate::Gateway;
use crate::access::challenge::{self, Purpose};
use crate::access::policy;
use crate::auth::hash_password;
use crate::problem::Problem;

#[derive(Deserialize)]
pub(crate) struct RegisterRequest {
    /// Either this or `card_number`; an explicit `null` counts as given (and is refused).
    #[serde(default, deserialize_with = "present")]
    phone: Option<Value>,
    /// A card number, checked against the ABS; the login becomes the phone on file. Taken as
    /// any JSON value so that a wrong type is refused without echoing it.
    #[serde(default, deserialize_with = "present")]
    card_number: Option<Value>,
    password: String,
    #[serde(default)]
    device_id: Option<String>,
}

/// Who a registration is for, before eligibility: the ABS's customer (if any), the phone the
/// code goes to and that becomes the login, and labels safe to log.
struct Registrant {
    customer: Option<kernel::store::AbsCustomer>,
    phone: String,
    /// For the audit log: a masked phone or `card *1234`.
    label: String,
    /// For the send limit: the phone, or the card's keyed hash.
    limit_key: String,
    /// What the password must not contain.
    identifier: String,
}

/// A field that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

async fn registrant(gateway: &Gateway, request: &RegisterRequest) -> Result<Registrant, Problem> {
    match (&request.phone, &request.card_number) {
        (Some(phone), None) => {
            let Some(phone) = phone.as_str().filter(|p| policy::valid_phone(p)) else {
                return Err(Problem::bad_request("phone must be +<country><number>"));
            };
            let phone = phone.to_owned();
            Ok(Registrant {
                customer: None,
                label: mask_phone(&phone),
                limit_key: format!("phone:{phone}"),
                identifier: phone.clone(),
                phone,
            })
        }
        (None, Some(card)) => {
            let Some(pan) = card.as_str().and_then(abs::cards::normalize_pan) else {
                return Err(Problem::bad_request(
                    "card_number must be 13 to 19 digits with a valid check digit",
                ));
            };
            let key = abs::cards::pan_key(&*gateway.store)
                .await
                .map_err(unavailable)?;
            let customer = abs::cards::customer_by_pan(&*gateway.store, &key, &pan)
                .await
                .map_err(unavailable)?;
            let phone = customer
                .as_ref()
                .map(|c| c.phone.clone())
                .unwrap_or_default();
            Ok(Registrant {
                customer,
                phone,
                label: format!("card *{}", &pan[pan.len() - 4..]),
                limit_key: format!("card:{}", abs::cards::pan_hash(&key, &pan)),
                identifier: pan,
            })
        }
        _ => Err(Problem::bad_request(
            "give either phone or card_number, not both",
        )),
    }
}

pub(crate) async fn register(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    request: JsonBody<RegisterRequest>,
) -> Result<Response, Problem> {
    let request = body(request)?;
    let registrant = registrant(&gateway, &request).await?;
    if let Err(reason) = policy::check_password(&request.password, &registrant.identifier) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            reason,
        ));
    }
    let device_id = request.device_id.unwrap_or_else(|| "registration".into());
    if device_id.is_empty() || device_id.len() > 128 {
        return Err(Problem::bad_request(
            "device_id must be 1 to 128 characters",
        ));
    }
    if let Err(wait) = gateway.limits.sends.check(&registrant.limit_key) {
        return Err(rate_limited(wait));
    }
    // Eligible: the bank knows the phone (or card) as a customer's and it has no login yet.
    let customer = match registrant.customer {
        Some(customer) => Some(customer),
        None if request.card_number.is_none() => gateway
            .store
            .abs_customer_by_phone(&registrant.phone)
            .await
            .map_err(unavailable)?,
        None => None,
    };
    let phone = registrant.phone;
    let registered = gateway
        .store
        .credential(&phone)
        .await
        .map_err(unavailable)?
        .is_some();
    let eligible = customer.filter(|_| !registered);
    // The same argon2 work either way.
    let password = request.password;
    let password_hash = crate::auth::argon2_blocking(move || hash_password(&password))
        .await
        .ok_or_else(Problem::internal)?
        .map_err(|_| Problem::internal())?;
    let subject = eligible
        .as_ref()
        .map(|c| c.id.as_str().to_owned())
        .unwrap_or_default();
    let context = json!({
        "subject": subject,
        "phone": phone,
        "device_id": device_id,
        "password_hash": password_hash,
        "eligible": eligible.is_some(),
    });
    let (challenge, code) = gateway
        .new_challenge(
            Purpose::Register,
            challenge::binding(Purpose::Register, &subject, &[]),
            context,
        )
        .await?;
    let message = eligible.as_ref().map(|customer| {
        gateway.code_message(&customer.id, &phone, code, Purpose::Register, &challenge.id)
    });
    gateway
        .audit("register_started", &subject, &registrant.label, &ip, true)
        .await;
    // Last, and for every request: nothing sent for an unknown phone is the same step.
    gateway.send_queue.push(message);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"challenge_id": challenge.id, "expires_in": challenge::CODE_TTL_S})),
    )
        .into_response())
}
