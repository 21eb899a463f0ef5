//! Customer ids and partitions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An opaque customer id as the bank's ABS assigns it.
///
/// Ids are 1 to 64 characters of `[A-Za-z0-9_-]`: they become NATS subject tokens
/// (`push.<customer_id>`), so dots, wildcards and whitespace are refused at the edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid customer id: must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct IdError;

impl CustomerId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let valid = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The partition this customer hashes into, out of `partitions`.
    pub fn partition(&self, partitions: u32) -> u32 {
        partition_of(&self.0, partitions)
    }
}

impl TryFrom<String> for CustomerId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerId> for String {
    fn from(value: CustomerId) -> Self {
        value.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The partition of a subject token, exactly as nats-server computes
/// `{{partition(n,1)}}` in a subject transform: FNV-1a (32 bit) of the token, modulo `n`.
///
/// Routing of commands and the server-side mapping of `abs.evt.*` must agree, so this
/// function is the single place the rule lives.
pub fn partition_of(token: &str, partitions: u32) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = token.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    });
    hash % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_subject_safe() {
        assert!(CustomerId::parse("c000001").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert_eq!(CustomerId::parse(bad), Err(IdError), "{bad:?}");
        }
    }

    #[test]
    fn partition_matches_fnv1a_reference_values() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c (published test vectors).
        assert_eq!(partition_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(partition_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(partition_of("foobar", u32::MAX), 0xbf9c_f968);
        assert!(partition_of("c000001", 16) < 16);
        assert_eq!(partition_of("anything", 0), 0);
    }
}
