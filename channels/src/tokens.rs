//! Signed access tokens the gateway verifies without a store round trip.
//!
//! Form: `v1.<kid>.<claims>.<mac>` with base64url (no padding) JSON claims and an
//! HMAC-SHA256 over `v1.<kid>.<claims>`. Keys have ids so that rotation can accept old
//! keys until their tokens expire; the key lives in the store, shared by every node.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kernel::CustomerId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What an access token says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: CustomerId,
    /// Session id: revocation and the session list hang on it.
    pub sid: String,
    /// `customer` or `staff`: a token opens only the endpoints of its scope.
    pub scope: String,
    /// The staff role (`support`, `marketing`, `operations`, `security`); none for customers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

#[derive(Clone)]
pub struct TokenKeys {
    current: String,
    keys: HashMap<String, Vec<u8>>,
}

impl TokenKeys {
    pub fn new(kid: &str, secret: Vec<u8>) -> Self {
        Self {
            current: kid.to_owned(),
            keys: HashMap::from([(kid.to_owned(), secret)]),
        }
    }

    /// Accepts tokens signed by an older key (rotation) without signing new ones with it.
    pub fn also_accept(mut self, kid: &str, secret: Vec<u8>) -> Self {
        self.keys.insert(kid.to_owned(), secret);
        self
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("v1.{}.{body}", self.current);
        let mac = self.mac(&self.current, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.splitn(3, '.');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        let mut verifier = HmacSha256::new_from_slice(key).map_err(|_| TokenError::UnknownKey)?;
        verifier.update(signed.as_bytes());
        verifier
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadSignature)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn mac(&self, kid: &str, data: &[u8]) -> Vec<u8> {
        let key = self.keys.get(kid).map(Vec::as_slice).unwrap_or_default();
        let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| {
            HmacSha256::new_from_slice(b"-")
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
        });
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: CustomerId::parse("c1").unwrap(),
            sid: "s1".into(),
            scope: "customer".into(),
            role: None,
            iat: 0,
            exp,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let keys = TokenKeys::new("k1", vec![7; 32]);
        let token = keys.sign(&claims(100));
        assert_eq!(keys.verify(&token, 50).unwrap(), claims(100));
        assert_eq!(keys.verify(&token, 100), Err(TokenError::Expired));
    }

    #[test]
    fn refuses_forgeries() {
        let keys = TokenKeys::new("k1", vec![7; 32]);
        let token = keys.sign(&claims(100));
        let other = TokenKeys::new("k1", vec![8; 32]);
        assert_eq!(other.verify(&token, 0), Err(TokenError::BadSignature));
        // Claims swapped under an intact MAC.
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(999_999)).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("v1.k1.{forged_body}.{}", parts[3]);
        assert_eq!(keys.verify(&forged, 0), Err(TokenError::BadSignature));
        assert_eq!(keys.verify("garbage", 0), Err(TokenError::Malformed));
        assert_eq!(
            keys.verify("v1.k9.e30.AAAA", 0),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn rotation_accepts_old_keys() {
        let old = TokenKeys::new("k1", vec![1; 32]);
        let token = old.sign(&claims(100));
        let rotated = TokenKeys::new("k2", vec![2; 32]).also_accept("k1", vec![1; 32]);
        assert!(rotated.verify(&token, 0).is_ok());
        assert!(rotated.sign(&claims(100)).starts_with("v1.k2."));
    }
}
