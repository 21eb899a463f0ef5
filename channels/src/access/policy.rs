//! Pure access rules: the password policy, phone format, and when a payment needs step-up.

/// The password policy (documented in README "Access Manager"): 10 to 128 characters, at
/// least one letter and one digit, not containing the phone's digits, not a known-weak one.
pub fn check_password(password: &str, phone: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if length < 10 {
        return Err("the password must have at least 10 characters");
    }
    if length > 128 {
        return Err("the password must have at most 128 characters");
    }
    if !password.chars().any(char::is_alphabetic) || !password.chars().any(|c| c.is_ascii_digit()) {
        return Err("the password must contain letters and digits");
    }
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 7 && password.contains(&digits[digits.len() - 7..]) {
        return Err("the password must not contain the phone number");
    }
    const WEAK: [&str; 4] = ["password1", "qwerty1234", "1234567890a", "arbat-demo"];
    if WEAK.iter().any(|weak| password.eq_ignore_ascii_case(weak)) {
        return Err("this password is too common");
    }
    Ok(())
}

/// `+` and 10 to 15 digits (E.164).
pub fn valid_phone(phone: &str) -> bool {
    phone
        .strip_prefix('+')
        .is_some_and(|d| (10..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a payment needs a confirmation code, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepUpReason {
    AboveLimit,
    NewPayee,
    Antifraud,
}

impl StepUpReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepUpReason::AboveLimit => "above_limit",
            StepUpReason::NewPayee => "new_payee",
            StepUpReason::Antifraud => "antifraud",
        }
    }
}

/// A payment above `limit_minor`, to a payee never paid before, or flagged by antifraud
/// returns `confirmation_required`; the antifraud flag wins, then the new payee.
pub fn step_up(
    amount_minor: i64,
    limit_minor: i64,
    known_payee: bool,
    flagged: bool,
) -> Option<StepUpReason> {
    if flagged {
        Some(StepUpReason::Antifraud)
    } else if !known_payee {
        Some(StepUpReason::NewPayee)
    } else if amount_minor > limit_minor {
        Some(StepUpReason::AboveLimit)
    } else {
        None
    }
}

#[cfg(test)]
// Amounts are written as major_minor (`1000_00` is 1000.00) so they read like money.
#[allow(clippy::inconsistent_digit_grouping)]
mod tests {
    use super::*;

    #[test]
    fn password_policy() {
        let phone = "+79990000101";
        for (password, ok) in [
            ("correct-horse-7", true),
            ("short1", false),
            ("onlyletterslong", false),
            ("12345678901234", false),
            ("x9990000101yz", false),
            ("ARBAT-DEMO", false),
            ("Password1", false),
            (&"a1".repeat(65), false),
            ("пароль-надёжный-7", true),
        ] {
            assert_eq!(check_password(password, phone).is_ok(), ok, "{password}");
        }
    }

    #[test]
    fn phones() {
        assert!(valid_phone("+79990000001"));
        for bad in [
            "79990000001",
            "+7999",
            "+7999000000a",
            "",
            "+1234567890123456",
        ] {
            assert!(!valid_phone(bad), "{bad}");
        }
    }

    #[test]
    fn step_up_rules() {
        let cases = [
            (100_00, 1000_00, true, false, None),
            (1000_00, 1000_00, true, false, None),
            (
                1000_01,
                1000_00,
                true,
                false,
                Some(StepUpReason::AboveLimit),
            ),
            (1_00, 1000_00, false, false, Some(StepUpReason::NewPayee)),
            (1_00, 1000_00, true, true, Some(StepUpReason::Antifraud)),
            (5000_00, 1000_00, false, true, Some(StepUpReason::Antifraud)),
        ];
        for (amount, limit, known, flagged, expected) in cases {
            assert_eq!(step_up(amount, limit, known, flagged), expected);
        }
    }
}
