//! Password hashing and verification (argon2id) and the bearer-token extractors (customer,
//! optional customer).
//! The login itself is in manager/login.rs; staff tokens in staff/.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::Gateway;
use crate::manager::{client_ip, rate_limited};
use crate::problem::Problem;
use crate::tokens::Claims;

/// A job for the password threads.
type PasswordJob = Box<dyn FnOnce() + Send>;

/// Password hashing runs on a small fixed pool of threads, one per core. argon2 is
/// deliberately slow and takes 19 MiB per hash: off the async workers it cannot stall the
/// node, and on a fixed set of threads the allocator keeps at most one such buffer per
/// thread (on tokio's growing blocking pool every new thread kept its own, and a burst of
/// logins left the node hundreds of MiB larger). The queue is bounded: past it, shed.
static PASSWORD_POOL: std::sync::LazyLock<Option<std::sync::mpsc::SyncSender<PasswordJob>>> =
    std::sync::LazyLock::new(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<PasswordJob>(1024);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for n in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("arbat-password-{n}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if spawned.is_err() {
                return None;
            }
        }
        Some(tx)
    });

/// Runs argon2 work on the password threads; `None` if it could not run.
pub(crate) async fn argon2_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let job: PasswordJob = Box::new(move || {
        let _ = done_tx.send(work());
    });
    // A full queue sheds the request (the caller answers 503): a login flood must not queue
    // without bound.
    PASSWORD_POOL.as_ref()?.try_send(job).ok()?;
    done_rx.await.ok()
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
