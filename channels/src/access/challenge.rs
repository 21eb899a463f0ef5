//! One-time-code challenges: one model for registration, login and step-up (pure).
//!
//! A challenge holds a 6-digit code drawn from the OS CSPRNG, kept only as an HMAC-SHA256
//! under a per-challenge salt and compared in constant time. It lives 5 minutes, takes 5
//! attempts, succeeds once, and is bound to what it confirms: the binding is a SHA-256 over
//! the purpose, the subject and (for step-up) the operation's amount and payee, so a code
//! for one operation or amount never confirms another. The store keeps the serialised
//! challenge and updates it with a version check, so two nodes cannot both accept a code.

use hmac::{Hmac, Mac};
use rand::{CryptoRng, Rng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a code can be used.
pub const CODE_TTL_S: i64 = 300;
/// Attempts per challenge; the next one is refused whatever the code.
pub const MAX_ATTEMPTS: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Register,
    Login,
    StepUp,
    /// A new phone number, confirmed by a code sent to it.
    PhoneChange,
}

impl Purpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::Login => "login",
            Purpose::StepUp => "step_up",
            Purpose::PhoneChange => "phone_change",
        }
    }
}

/// Why a code was refused. Each is a stable problem `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the code is wrong")]
    InvalidCode,
    #[error("the code has expired")]
    Expired,
    #[error("too many attempts")]
    TooManyAttempts,
    #[error("the code was already used")]
    AlreadyUsed,
    /// The code is right for another operation (amount, payee, purpose).
    #[error("the code was issued for another operation")]
    WrongOperation,
}

impl ChallengeError {
    pub fn code(&self) -> &'static str {
        match self {
            ChallengeError::InvalidCode => "invalid_code",
            ChallengeError::Expired => "code_expired",
            ChallengeError::TooManyAttempts => "too_many_attempts",
            ChallengeError::AlreadyUsed => "code_used",
            ChallengeError::WrongOperation => "operation_mismatch",
        }
    }
}

/// What a challenge is bound to: the hash of purpose, subject and operation.
pub fn binding(purpose: Purpose, subject: &str, operation: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in std::iter::once(purpose.as_str())
        .chain(std::iter::once(subject))
        .chain(operation.iter().copied())
    {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex(&hash.finalize())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    pub id: String,
    pub purpose: Purpose,
    pub binding: String,
    salt: String,
    code_mac: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    pub attempts: u32,
    pub used: bool,
    /// What the Access Manager needs after success (who, which device, the new password's
    /// hash, the operation); never the code.
    pub context: serde_json::Value,
}

impl Challenge {
    /// A new challenge and its code (which goes to the customer, never to the store).
    pub fn issue<R: RngCore + CryptoRng>(
        id: String,
        purpose: Purpose,
        binding: String,
        context: serde_json::Value,
        now: i64,
        rng: &mut R,
    ) -> (Challenge, String) {
        let mut challenge = Challenge {
            id,
            purpose,
            binding,
            salt: String::new(),
            code_mac: String::new(),
            created_at: now,
            expires_at: now + CODE_TTL_S,
            attempts: 0,
            used: false,
            context,
        };
        let code = challenge.new_code(rng);
        (challenge, code)
    }

    /// Draws a fresh code (under a fresh salt) in place of the current one, which stops
    /// working; the life, the attempts made and the binding stay as they are, so asking for
    /// another code never buys more time or more guesses. A login challenge of a customer
    /// with an authenticator app sends its SMS only when asked, with a code drawn here.
    pub fn new_code<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> String {
        let code = format!("{:06}", rng.gen_range(0..1_000_000u32));
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        self.salt = hex(&salt);
        self.code_mac = hex(&mac(&self.salt, &code));
        code
    }

    /// Checks `code` for the operation `binding` at `now`. Every call that gets past the
    /// used/expired/exhausted checks counts an attempt (also a right code for the wrong
    /// operation); success marks the challenge used. The caller persists `self` either way.
    pub fn verify(&mut self, code: &str, binding: &str, now: i64) -> Result<(), ChallengeError> {
        let code_ok = self.code_matches(code);
        self.settle(code_ok, binding, now)
    }

    /// Whether an attempt may be made now (not used, not expired, attempts left); changes
    /// nothing. A caller checking a factor with side effects of its own (a TOTP step that is
    /// spent once accepted) asks this first.
    pub fn open_for_attempt(&self, now: i64) -> Result<(), ChallengeError> {
        if self.used {
            return Err(ChallengeError::AlreadyUsed);
        }
        if now >= self.expires_at {
            return Err(ChallengeError::Expired);
        }
        if self.attempts >= MAX_ATTEMPTS {
            return Err(ChallengeError::TooManyAttempts);
        }
        Ok(())
    }

    /// Counts one attempt whose factor was `factor_ok`: this challenge's own code (see
    /// [`Challenge::verify`]) or another factor the caller checked (a TOTP code, for a
    /// login). The same limits apply whichever factor was used.
    pub fn settle(
        &mut self,
        factor_ok: bool,
        binding: &str,
        now: i64,
    ) -> Result<(), ChallengeError> {
        self.open_for_attempt(now)?;
        self.attempts += 1;
        if !factor_ok {
            return Err(ChallengeError::InvalidCode);
        }
        if !constant_time_eq(binding.as_bytes(), self.binding.as_bytes()) {
            // The operation changed since the code was sent: the code is spent.
            self.used = true;
            return Err(ChallengeError::WrongOperation);
        }
        self.used = true;
        Ok(())
    }

    /// Whether `code` is this challenge's code (constant time; no state changes).
    fn code_matches(&self, code: &str) -> bool {
        let expected = unhex(&self.code_mac);
        let mut verifier = HmacSha256::new_from_slice(self.salt.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        verifier.update(code.as_bytes());
        code.len() == 6 && verifier.verify_slice(&expected).is_ok()
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(salt: &str, code: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(salt.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const T0: i64 = 1_000_000;

    fn issue(operation: &[&str]) -> (Challenge, String) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        Challenge::issue(
            "ch1".into(),
            Purpose::StepUp,
            binding(Purpose::StepUp, "c1", operation),
            serde_json::Value::Null,
            T0,
            &mut rng,
        )
    }

    fn other(code: &str) -> String {
        format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
    }

    #[test]
    fn codes_are_six_digits_and_never_stored() {
        let mut rng = rand::rngs::OsRng;
        for _ in 0..200 {
            let (challenge, code) = Challenge::issue(
                "x".into(),
                Purpose::Login,
                "b".into(),
                serde_json::Value::Null,
                T0,
                &mut rng,
            );
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
            let stored = serde_json::to_string(&challenge).unwrap();
            assert!(!stored.contains(&format!("\"{code}\"")));
        }
    }

    /// Each case: a list of (seconds after issue, which code, which operation) and the
    /// expected answers in order.
    #[test]
    fn rules() {
        #[derive(Clone, Copy)]
        enum Code {
            Right,
            Wrong,
        }
        let op = ["transfer.phone", "1500.00 RUB", "+79990000002"];
        let more = ["transfer.phone", "1500.01 RUB", "+79990000002"];
        let payee = ["transfer.phone", "1500.00 RUB", "+79990000003"];
        type Step<'a> = (i64, Code, &'a [&'a str], Result<(), ChallengeError>);
        let cases: Vec<(&str, Vec<Step>)> = vec![
            ("right code once", vec![(10, Code::Right, &op, Ok(()))]),
            (
                "replayed code",
                vec![
                    (10, Code::Right, &op, Ok(())),
                    (11, Code::Right, &op, Err(ChallengeError::AlreadyUsed)),
                ],
            ),
            (
                "expired code",
                vec![(CODE_TTL_S, Code::Right, &op, Err(ChallengeError::Expired))],
            ),
            (
                "last second is fine",
                vec![(CODE_TTL_S - 1, Code::Right, &op, Ok(()))],
            ),
            (
                "sixth attempt refused even with the right code",
                vec![
                    (1, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (2, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (3, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (4, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (5, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (6, Code::Right, &op, Err(ChallengeError::TooManyAttempts)),
                ],
            ),
            (
                "fifth attempt may succeed",
                vec![
                    (1, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (2, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (3, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (4, Code::Wrong, &op, Err(ChallengeError::InvalidCode)),
                    (5, Code::Right, &op, Ok(())),
                ],
            ),
            (
                "code for another amount",
                vec![
                    (1, Code::Right, &more, Err(ChallengeError::WrongOperation)),
                    // Any change to the operation spends the code.
                    (2, Code::Right, &op, Err(ChallengeError::AlreadyUsed)),
                ],
            ),
            (
                "code for another payee",
                vec![(1, Code::Right, &payee, Err(ChallengeError::WrongOperation))],
            ),
        ];
        for (name, steps) in cases {
            let (mut challenge, code) = issue(&op);
            for (n, (after, which, operation, expected)) in steps.into_iter().enumerate() {
                let given = match which {
                    Code::Right => code.clone(),
                    Code::Wrong => other(&code),
                };
                let bound = binding(Purpose::StepUp, "c1", operation);
                assert_eq!(
                    challenge.verify(&given, &bound, T0 + after),
                    expected,
                    "{name}, step {n}"
                );
            }
        }
    }

    #[test]
    fn purpose_and_subject_are_bound() {
        let (mut challenge, code) = issue(&[]);
        let login = binding(Purpose::Login, "c1", &[]);
        assert_eq!(
            challenge.verify(&code, &login, T0),
            Err(ChallengeError::WrongOperation)
        );
        let (mut challenge, code) = issue(&[]);
        let someone_else = binding(Purpose::StepUp, "c2", &[]);
        assert_eq!(
            challenge.verify(&code, &someone_else, T0),
            Err(ChallengeError::WrongOperation)
        );
        assert_ne!(
            binding(Purpose::Login, "ab", &["c"]),
            binding(Purpose::Login, "a", &["bc"])
        );
    }

    #[test]
    fn survives_serialisation() {
        let (challenge, code) = issue(&[]);
        let mut back: Challenge =
            serde_json::from_str(&serde_json::to_string(&challenge).unwrap()).unwrap();
        assert_eq!(back, challenge);
        let bound = binding(Purpose::StepUp, "c1", &[]);
        assert_eq!(back.verify(&code, &bound, T0), Ok(()));
    }

    #[test]
    fn another_factor_counts_against_the_same_attempts() {
        let bound = binding(Purpose::StepUp, "c1", &[]);
        let (mut challenge, _) = issue(&[]);
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(
                challenge.settle(false, &bound, T0),
                Err(ChallengeError::InvalidCode)
            );
        }
        assert_eq!(
            challenge.open_for_attempt(T0),
            Err(ChallengeError::TooManyAttempts)
        );
        assert_eq!(
            challenge.settle(true, &bound, T0),
            Err(ChallengeError::TooManyAttempts)
        );
        let (mut challenge, _) = issue(&[]);
        assert_eq!(challenge.open_for_attempt(T0), Ok(()));
        assert_eq!(challenge.settle(true, &bound, T0), Ok(()));
        assert_eq!(
            challenge.open_for_attempt(T0),
            Err(ChallengeError::AlreadyUsed)
        );
        assert_eq!(
            challenge.open_for_attempt(T0 + CODE_TTL_S),
            Err(ChallengeError::AlreadyUsed)
        );
        let (challenge, _) = issue(&[]);
        assert_eq!(
            challenge.open_for_attempt(T0 + CODE_TTL_S),
            Err(ChallengeError::Expired)
        );
    }

    #[test]
    fn a_new_code_replaces_the_old_one_and_keeps_the_attempts_and_the_life() {
        let bound = binding(Purpose::StepUp, "c1", &[]);
        let (mut challenge, old_code) = issue(&[]);
        assert_eq!(
            challenge.verify(&other(&old_code), &bound, T0),
            Err(ChallengeError::InvalidCode)
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut new_code = challenge.new_code(&mut rng);
        while new_code == old_code {
            new_code = challenge.new_code(&mut rng);
        }
        assert_eq!(challenge.attempts, 1);
        assert_eq!(challenge.expires_at, T0 + CODE_TTL_S);
        assert_eq!(
            challenge.verify(&old_code, &bound, T0),
            Err(ChallengeError::InvalidCode)
        );
        assert_eq!(challenge.attempts, 2);
        assert_eq!(
            challenge.verify(&new_code, &bound, T0 + CODE_TTL_S),
            Err(ChallengeError::Expired)
        );
        assert_eq!(challenge.verify(&new_code, &bound, T0 + 1), Ok(()));
    }

    #[test]
    fn malformed_codes_are_just_wrong() {
        let bound = binding(Purpose::StepUp, "c1", &[]);
        for given in ["", "12345", "1234567", "abcdef", "12345\u{0}"] {
            let (mut challenge, _) = issue(&[]);
            assert_eq!(
                challenge.verify(given, &bound, T0),
                Err(ChallengeError::InvalidCode)
            );
        }
    }
}
