//! TOTP (RFC 6238, HMAC-SHA1, 6 digits, 30-second steps) for staff and customer second
//! factors, the base32 form and the `otpauth://` URI authenticator apps expect.
//! Hand-written: a few lines instead of a crate.

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const STEP_S: i64 = 30;

/// The code for the time step containing `unix`.
pub fn code_at(secret: &[u8], unix: i64) -> String {
    hotp(secret, (unix / STEP_S) as u64, 6)
}

/// Accepts the current step and one on either side (clock drift), in constant time per step.
pub fn verify(secret: &[u8], code: &str, unix: i64) -> bool {
    matching_step(secret, code, unix).is_some()
}

/// The time step whose code `code` is, among the current one and one on either side; the
/// caller records it so that a step is accepted once (a replayed code is refused).
pub fn matching_step(secret: &[u8], code: &str, unix: i64) -> Option<i64> {
    let mut found = None;
    for drift in [-1i64, 0, 1] {
        let step = unix / STEP_S + drift;
        let expected = code_at(secret, step * STEP_S);
        if super::challenge::constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

/// The URI authenticator apps read (usually from a QR code): `issuer:account`, base32 secret.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let label = percent_encode(&format!("{issuer}:{account}"));
    format!(
        "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits=6&period={STEP_S}",
        base32(secret),
        percent_encode(issuer)
    )
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = (hash[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(digits),
        width = digits as usize
    )
}

/// RFC 4648 base32 without padding.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA-1, last 6 of the 8 digits.
        let secret = b"12345678901234567890";
        for (time, code8) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
        ] {
            assert_eq!(hotp(secret, (time / STEP_S) as u64, 8), code8);
            assert_eq!(code_at(secret, time), &code8[2..]);
        }
    }

    #[test]
    fn verify_allows_one_step_of_drift() {
        let secret = b"12345678901234567890";
        let code = code_at(secret, 1_000_000);
        assert!(verify(secret, &code, 1_000_000));
        assert!(verify(secret, &code, 1_000_000 + STEP_S));
        assert!(!verify(secret, &code, 1_000_000 + 3 * STEP_S));
        assert!(!verify(secret, "000000x", 1_000_000));
    }

    #[test]
    fn the_matching_step_is_reported_for_replay_checks() {
        let secret = b"12345678901234567890";
        let now = 1_000_005;
        let step = now / STEP_S;
        assert_eq!(
            matching_step(secret, &code_at(secret, now), now),
            Some(step)
        );
        assert_eq!(
            matching_step(secret, &code_at(secret, now - STEP_S), now),
            Some(step - 1)
        );
        assert_eq!(
            matching_step(secret, &code_at(secret, now + STEP_S), now),
            Some(step + 1)
        );
        assert_eq!(
            matching_step(secret, &code_at(secret, now - 2 * STEP_S), now),
            None
        );
    }

    #[test]
    fn otpauth_uri_has_the_label_secret_and_issuer() {
        assert_eq!(
            otpauth_uri("Arbat Bank", "+79990000101", b"foobar"),
            "otpauth://totp/Arbat%20Bank%3A%2B79990000101?secret=MZXW6YTBOI&issuer=Arbat%20Bank\
             &algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn base32_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), output);
        }
    }
}
