//! PAN masking: a card number is only ever shown as BIN + last 4 (`220000******1234`).
//!
//! [`mask_pans`] runs over every rendered text on every channel, so a PAN that slips into a
//! free-text parameter (a payment description, a counterparty) is masked too.

/// Masks a card number given on its own (digits with optional spaces or dashes).
/// Anything that is not 13 to 19 digits becomes `****`.
pub fn mask_pan(pan: &str) -> String {
    let digits: String = pan.chars().filter(char::is_ascii_digit).collect();
    let shape_ok = pan
        .chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-' || c == '*');
    if shape_ok && (13..=19).contains(&digits.len()) {
        format!(
            "{}{}{}",
            &digits[..6],
            "*".repeat(digits.len() - 10),
            &digits[digits.len() - 4..]
        )
    } else if shape_ok && pan.contains('*') {
        // Already masked upstream (e.g. "220000******1234").
        pan.to_owned()
    } else {
        "****".to_owned()
    }
}

/// Replaces every run of 13 to 19 digits (single spaces or dashes allowed between digits)
/// with its masked form. Longer digit runs are masked whole (never shown).
pub fn mask_pans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // Extend a run of digits with single separators between digits.
        let start = i;
        let mut end = i;
        let mut digits = 0;
        let mut j = i;
        while j < chars.len() {
            if chars[j].is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if (chars[j] == ' ' || chars[j] == '-')
                && j + 1 < chars.len()
                && chars[j + 1].is_ascii_digit()
                && j > start
                && chars[j - 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        let run: String = chars[start..end].iter().collect();
        if digits >= 13 {
            if digits <= 19 {
                out.push_str(&mask_pan(&run));
            } else {
                out.push_str(&"*".repeat(digits));
            }
        } else {
            out.push_str(&run);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_pans_in_any_shape() {
        let cases = [
            ("2200000000001234", "220000******1234"),
            (
                "Card 4111 1111 1111 1111 charged",
                "Card 411111******1111 charged",
            ),
            ("4111-1111-1111-1111.", "411111******1111."),
            (
                "PAN 5555555555554444, 1234567890123456789",
                "PAN 555555******4444, 123456*********6789",
            ),
            (
                "Amount 1 234,50 RUB on 04.12.2026",
                "Amount 1 234,50 RUB on 04.12.2026",
            ),
            ("code 123456", "code 123456"),
            (
                "account 40817810099910004312",
                "account ********************",
            ),
        ];
        for (raw, masked) in cases {
            assert_eq!(mask_pans(raw), masked, "{raw}");
        }
        assert_eq!(mask_pan("2200 0000 0000 1234"), "220000******1234");
        assert_eq!(mask_pan("220000******1234"), "220000******1234");
        assert_eq!(mask_pan("abc"), "****");
    }
}
