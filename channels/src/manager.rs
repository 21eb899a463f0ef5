//! The Access Manager's HTTP shell: registration, login with a second factor on new devices,
//! refresh rotation with reuse detection, logout, sessions, step-up and password change.
//! The rules live in `access/` (pure) and `kernel::store::LockState`; this file does I/O.
//!
//! Non-revealing by construction: login answers 401 `invalid_credentials` whatever failed,
//! and an unknown login costs one argon2 verification like a known one; registration answers
//! 202 with a challenge for every well-formed phone and does the same work (an argon2 hash, a
//! challenge write) whether or not the bank knows it, only sending nothing when it does not.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::PasswordHash;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kernel::CustomerId;
use kernel::bus::subjects;
use kernel::metrics;
use kernel::store::{AuditEntry, ChallengeRecord, LockState, SessionRecord};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::access::challenge::{self, Challenge, ChallengeError, Purpose};
use crate::access::policy;
use crate::auth::{Customer, MaybeCustomer, hash_password};
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

    /// A new session with its tokens (the refresh token is returned once, stored hashed).
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
        Ok(self.tokens_for(&session, refresh))
    }

    fn tokens_for(&self, session: &SessionRecord, refresh: String) -> Value {
        let now = kernel::now().unix_timestamp();
        let ttl = self.config.access_token_ttl.as_secs() as i64;
        let claims = Claims {
            sub: session.customer_id.clone(),
            sid: session.id.clone(),
            scope: "customer".into(),
            role: None,
            iat: now,
            exp: now + ttl,
        };
        json!({
            "access_token": self.tokens.sign(&claims),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": ttl,
        })
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

    /// Queues a code by SMS through the notifier (off the request path, so that sending or
    /// not sending takes no visible time).
    fn send_code(
        &self,
        customer: &CustomerId,
        phone: &str,
        code: String,
        purpose: Purpose,
        id: &str,
    ) {
        let Some(queue) = self.queue.clone() else {
            tracing::warn!("no notifier queue: code not sent");
            return;
        };
        let mut request = notifier::NotificationRequest::new(
            format!("code-{id}"),
            customer.clone(),
            notifier::Kind::Code,
            json!({"code": code, "purpose": purpose.as_str()}),
        );
        request.phone = Some(phone.to_owned());
        tokio::spawn(async move {
            if let Err(error) = queue.enqueue(&request).await {
                tracing::warn!(%error, "code not queued");
            }
        });
    }

    fn notify_security(&self, customer: &CustomerId, phone: &str, event: &str) {
        let Some(queue) = self.queue.clone() else {
            return;
        };
        let now = kernel::now();
        let at = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut request = notifier::NotificationRequest::new(
            format!("sec-{}", uuid::Uuid::new_v4()),
            customer.clone(),
            notifier::Kind::SecurityAlert,
            json!({"event": event, "at": at}),
        );
        request.phone = Some(phone.to_owned());
        tokio::spawn(async move {
            if let Err(error) = queue.enqueue(&request).await {
                tracing::warn!(%error, "security alert not queued");
            }
        });
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

    async fn lock_check(&self, keys: &[String]) -> Result<(), Problem> {
        let now = kernel::now();
        for key in keys {
            let state: LockState = self.store.lock_state(key).await.map_err(unavailable)?;
            if state.locked(now) {
                let until = state.locked_until.unwrap_or(now);
                return Err(locked_out((until - now).whole_seconds() + 1));
            }
        }
        Ok(())
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

// ---- registration ------------------------------------------------------------------------

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
    if let Some(customer) = &eligible {
        gateway.send_code(&customer.id, &phone, code, Purpose::Register, &challenge.id);
    }
    gateway
        .audit("register_started", &subject, &registrant.label, &ip, true)
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"challenge_id": challenge.id, "expires_in": challenge::CODE_TTL_S})),
    )
        .into_response())
}

// ---- login ---------------------------------------------------------------------------------

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

/// Verifies a password against its PHC string.
///
/// The argon2 working memory (19 MiB with the default parameters) comes from a buffer kept
/// per password thread instead of a fresh allocation per login: the allocator did not give
/// the freed buffers back, and a node grew by 19 MiB per login until its arenas were full.
pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    thread_local! {
        static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = parsed
        .version
        .map(argon2::Version::try_from)
        .transpose()
        .ok()
        .flatten()
        .unwrap_or_default();
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks_needed = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut computed = [0u8; 64];
    let Some(out) = computed.get_mut(..expected.len()) else {
        return false;
    };
    let hashed = BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        if blocks.len() < blocks_needed {
            blocks.resize(blocks_needed, argon2::Block::default());
        }
        argon2.hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            out,
            &mut blocks[..blocks_needed],
        )
    });
    if hashed.is_err() {
        return false;
    }
    // `Output` compares in constant time.
    argon2::password_hash::Output::new(out).is_ok_and(|output| output == expected)
}

pub(crate) fn rate_limited(retry_after: u64) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down",
    )
    .retry_after(retry_after)
}

// ---- challenges ------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct ConfirmRequest {
    code: String,
    /// For step-up: the operation as it is now (any change invalidates the code).
    #[serde(default)]
    operation: Option<Operation>,
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
        let mut verdict = challenge.verify(&request.code, &binding, now);
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
        return finish(&gateway, &challenge, &subject, request.operation.as_ref()).await;
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
) -> Result<Response, Problem> {
    let customer = CustomerId::parse(subject).map_err(|_| Problem::internal())?;
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
            Ok(Json(gateway.open_session(&customer, &device_id).await?).into_response())
        }
        Purpose::Login => {
            gateway
                .store
                .trust_device(&customer, &device_id, kernel::now())
                .await
                .map_err(unavailable)?;
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

// ---- tokens and sessions -----------------------------------------------------------------------

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
    let mut parts = token.splitn(3, '.');
    let (Some("rt1"), Some(sid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Problem::unauthorized());
    };
    if token.len() > 256 {
        return Err(Problem::unauthorized());
    }
    let Some(session) = gateway.store.session(sid).await.map_err(unavailable)? else {
        return Err(Problem::unauthorized());
    };
    if session.revoked {
        gateway
            .audit("refresh", session.customer_id.as_str(), sid, &ip, false)
            .await;
        return Err(session_revoked());
    }
    let now = kernel::now();
    let presented = token_hash(&token);
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
    Ok(Json(gateway.tokens_for(&session, next)).into_response())
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
    let Some(session) = session.filter(|s| s.customer_id == claims.sub && !s.revoked) else {
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

// ---- password change -------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
    #[serde(default)]
    end_other_sessions: bool,
}

/// Re-authentication by the current password before a sensitive change: counts a failure
/// toward the login's lockout and audits it as `action`. Returns the phone on file (the login).
async fn reauthenticate(
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

async fn finish_phone_change(
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

#[cfg(test)]
mod password_tests {
    use super::verify_password;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn verification_matches_the_argon2_crate() {
        let hash = crate::auth::hash_password("correct horse 42").unwrap();
        assert!(verify_password(&hash, "correct horse 42"));
        assert!(!verify_password(&hash, "correct horse 43"));
        // Other parameters and variants are read from the PHC string.
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0c2FsdA").unwrap();
        let params = argon2::Params::new(1024, 3, 1, Some(24)).unwrap();
        let argon2i =
            argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params);
        let other = argon2i.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(verify_password(&other, "pw"));
        assert!(!verify_password(&other, "pW"));
        assert!(!verify_password("not a phc string", "pw"));
        assert!(!verify_password("", ""));
    }
}
