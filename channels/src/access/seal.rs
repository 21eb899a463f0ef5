//! Sealing small secrets at rest (customers' TOTP secrets): ChaCha20-Poly1305 under a
//! platform key, a random 96-bit nonce per seal, and the owner's id as associated data, so
//! a sealed secret copied to another customer's row does not open. Stored form:
//! `nonce || ciphertext || tag`.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Key length in bytes.
pub const KEY_LEN: usize = 32;

fn key(key: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .ok()
        .map(LessSafeKey::new)
}

/// Seals `secret` for `owner` with a caller-drawn `nonce` (from a CSPRNG, never reused).
/// `None` only for a key of the wrong length.
pub fn seal(
    key_bytes: &[u8],
    nonce: [u8; NONCE_LEN],
    owner: &str,
    secret: &[u8],
) -> Option<Vec<u8>> {
    let key = key(key_bytes)?;
    let mut in_out = secret.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(owner.as_bytes()),
        &mut in_out,
    )
    .ok()?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&in_out);
    Some(sealed)
}

/// The secret, if `sealed` was sealed under this key for this owner and is intact.
pub fn open(key_bytes: &[u8], owner: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    let key = key(key_bytes)?;
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = ciphertext.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut in_out)
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    #[test]
    fn round_trip_and_refusals() {
        let sealed = seal(&KEY, [1; NONCE_LEN], "c1", b"twenty-byte-secret!!").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"twenty"));
        assert_eq!(
            open(&KEY, "c1", &sealed).as_deref(),
            Some(&b"twenty-byte-secret!!"[..])
        );
        // Another owner, another key, a flipped bit, a truncation: nothing opens.
        assert_eq!(open(&KEY, "c2", &sealed), None);
        assert_eq!(open(&[8; KEY_LEN], "c1", &sealed), None);
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(open(&KEY, "c1", &flipped), None);
        assert_eq!(open(&KEY, "c1", &sealed[..5]), None);
        assert_eq!(open(&KEY[..16], "c1", &sealed), None);
        // Another nonce, another ciphertext for the same secret.
        let again = seal(&KEY, [2; NONCE_LEN], "c1", b"twenty-byte-secret!!").unwrap();
        assert_ne!(again, sealed);
    }
}
