//! Password login and the bearer-token extractor.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use kernel::metrics;
use kernel::store::SessionRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::problem::Problem;
use crate::tokens::Claims;

/// Password verifications running at once (one per core).
static PASSWORD_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
});

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash verified when the login is unknown, so that an unknown login costs the same
/// time as a wrong password and timing does not reveal which logins exist.
#[derive(Clone)]
pub struct DummyHash(pub String);

impl DummyHash {
    pub fn generate() -> Self {
        Self(hash_password("arbat-dummy-password").unwrap_or_default())
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginRequest {
    login: String,
    password: String,
    device_id: String,
}

fn invalid_credentials() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "login or password is wrong",
    )
}

pub(crate) async fn login(
    State(gateway): State<Arc<Gateway>>,
    body: Result<Json<LoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    if request.login.is_empty() || request.login.len() > 64 || request.password.len() > 256 {
        return Err(invalid_credentials());
    }
    if request.device_id.is_empty() || request.device_id.len() > 128 {
        return Err(Problem::bad_request(
            "device_id must be 1 to 128 characters",
        ));
    }
    let credential = gateway
        .store
        .credential(&request.login)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    let hash = credential
        .as_ref()
        .map(|c| c.password_hash.clone())
        .unwrap_or_else(|| gateway.dummy_hash.0.clone());
    let password = request.password;
    // argon2 is deliberately slow and takes 19 MiB per hash: keep it off the async workers
    // and run at most one per core, so a burst of logins cannot balloon the node's memory.
    let Ok(_slot) = PASSWORD_SLOTS.acquire().await else {
        return Err(Problem::unavailable("try again"));
    };
    let verified = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    let Some(credential) = credential.filter(|_| verified) else {
        metrics::LOGINS_FAILED.inc();
        return Err(invalid_credentials());
    };
    let now = kernel::now();
    let session = SessionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        customer_id: credential.customer_id.clone(),
        device_id: request.device_id,
        created_at: now,
        revoked: false,
    };
    gateway
        .store
        .create_session(&session)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    let ttl = gateway.config.access_token_ttl.as_secs() as i64;
    let claims = Claims {
        sub: credential.customer_id,
        sid: session.id,
        scope: "customer".into(),
        iat: now.unix_timestamp(),
        exp: now.unix_timestamp() + ttl,
    };
    metrics::LOGINS_OK.inc();
    Ok(Json(json!({
        "access_token": gateway.tokens.sign(&claims),
        "token_type": "Bearer",
        "expires_in": ttl,
    })))
}

/// The authenticated customer of a request.
pub(crate) struct Customer(pub Claims);

impl Gateway {
    /// Verifies a bearer token for the customer scope.
    pub(crate) fn verify_customer_token(&self, token: &str) -> Result<Claims, Problem> {
        let claims = self
            .tokens
            .verify(token, kernel::now().unix_timestamp())
            .map_err(|_| Problem::unauthorized())?;
        if claims.scope != "customer" {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token cannot be used here",
            ));
        }
        Ok(claims)
    }
}

pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl FromRequestParts<Arc<Gateway>> for Customer {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Problem> {
        let token = bearer(parts).ok_or_else(Problem::unauthorized)?;
        gateway.verify_customer_token(token).map(Customer)
    }
}
