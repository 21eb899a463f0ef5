//! Password hashing and the bearer-token extractors (customer, optional customer).
//! The login itself is in manager.rs; staff tokens in staff.rs.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString};
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::Gateway;
use crate::manager::{client_ip, rate_limited};
use crate::problem::Problem;
use crate::tokens::Claims;

/// Password hashings and verifications running at once (one per core).
static PASSWORD_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    });

/// Runs argon2 work off the async workers, at most one per core: it is deliberately slow and
/// takes 19 MiB per hash, so a burst of logins must neither stall the node nor balloon its
/// memory. `None` if the work could not run.
pub(crate) async fn argon2_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let _slot = PASSWORD_SLOTS.acquire().await.ok()?;
    tokio::task::spawn_blocking(work).await.ok()
}

/// Hashes a password with argon2id (the crate's defaults: m = 19 MiB, t = 2, p = 1, the
/// OWASP minimum) and a random salt (PHC string).
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

/// The authenticated customer of a request.
pub(crate) struct Customer(pub Claims);

/// A customer when the request carries a valid customer token (challenge confirmation
/// serves both anonymous login/registration and authenticated step-up).
pub(crate) struct MaybeCustomer(pub Option<Claims>);

impl Gateway {
    /// Verifies a bearer token for the customer scope: signature and expiry, the scope, and
    /// that its session was not revoked (the node's revoked set; see revocations.rs).
    pub(crate) fn verify_customer_token(&self, token: &str) -> Result<Claims, Problem> {
        let claims = self
            .tokens
            .verify(token, kernel::now().unix_timestamp())
            .map_err(|_| Problem::unauthorized())?;
        if claims.scope != "customer" {
            return Err(Problem::forbidden());
        }
        if self.revocations.is_revoked(&claims.sid) {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "session_revoked",
                "this session has ended; log in again",
            ));
        }
        Ok(claims)
    }

    /// Audits a refused authorization (every one, as the issue asks) in the background.
    pub(crate) fn audit_refusal(self: &Arc<Self>, parts: &Parts, problem: &Problem) {
        let gateway = self.clone();
        let ip = client_ip(&parts.extensions);
        let subject = format!("{} {} {}", parts.method, parts.uri.path(), problem.code);
        tokio::spawn(async move {
            gateway
                .audit("authz_refused", "", &subject, &ip, false)
                .await;
        });
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
        let verified = bearer(parts)
            .ok_or_else(Problem::unauthorized)
            .and_then(|token| gateway.verify_customer_token(token));
        let claims = match verified {
            Ok(claims) => claims,
            Err(problem) => {
                gateway.audit_refusal(parts, &problem);
                return Err(problem);
            }
        };
        gateway
            .limits
            .customer
            .check(claims.sub.as_str())
            .map_err(rate_limited)?;
        Ok(Customer(claims))
    }
}

impl FromRequestParts<Arc<Gateway>> for MaybeCustomer {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Problem> {
        match bearer(parts) {
            None => Ok(MaybeCustomer(None)),
            Some(_) => Customer::from_request_parts(parts, gateway)
                .await
                .map(|Customer(claims)| MaybeCustomer(Some(claims))),
        }
    }
}
