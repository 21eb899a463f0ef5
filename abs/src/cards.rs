//! Card numbers at the reference ABS, for registration by card: the ABS keeps an HMAC-SHA256
//! of each card's full PAN under its own key (a platform secret, `abs_pan_key`), never the PAN.
//! Pure helpers (format and Luhn checks, the keyed hash) and the lookup.

use hmac::{Hmac, Mac};
use kernel::store::{AbsCustomer, Store, StoreError};
use rand::RngCore;
use sha2::Sha256;

/// The ABS's PAN key, shared by every node through the store's secrets.
pub const PAN_KEY: &str = "abs_pan_key";

/// The digits of a card number as typed (spaces and dashes allowed), when it is 13 to 19
/// digits with a valid Luhn check digit.
pub fn normalize_pan(input: &str) -> Option<String> {
    if input.len() > 32 {
        return None;
    }
    let digits: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let ok = (13..=19).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && luhn_valid(&digits);
    ok.then_some(digits)
}

/// The Luhn (mod 10) check over a string of ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The keyed hash the ABS stores for a PAN (hex).
pub fn pan_hash(key: &[u8], pan: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(pan.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The ABS's PAN key (created once, the same on every node).
pub async fn pan_key(store: &dyn Store) -> Result<Vec<u8>, StoreError> {
    let mut candidate = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut candidate);
    store.secret(PAN_KEY, &candidate).await
}

/// The customer holding the card with this (normalized) PAN; the same work whether or not
/// one does (one keyed hash, one indexed read).
pub async fn customer_by_pan(
    store: &dyn Store,
    key: &[u8],
    pan: &str,
) -> Result<Option<AbsCustomer>, StoreError> {
    store.abs_customer_by_card(&pan_hash(key, pan)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_checked() {
        let cases = [
            ("4111111111111111", Some("4111111111111111")),
            ("4111 1111 1111 1111", Some("4111111111111111")),
            ("4111-1111-1111-1111", Some("4111111111111111")),
            ("4111111111111112", None),
            ("411111111111", None),
            ("41111111111111111111", None),
            ("4111a11111111111", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_pan(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn the_hash_is_keyed() {
        let pan = "4111111111111111";
        assert_eq!(pan_hash(b"k1", pan), pan_hash(b"k1", pan));
        assert_ne!(pan_hash(b"k1", pan), pan_hash(b"k2", pan));
        assert_eq!(pan_hash(b"k1", pan).len(), 64);
        assert!(!pan_hash(b"k1", pan).contains(pan));
    }
}
