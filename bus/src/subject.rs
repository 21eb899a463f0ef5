//! Subject grammar and matching, shared by both backends so that they refuse exactly the
//! same subjects (NATS itself is lenient about some of these; we are not).
//!
//! A subject is one or more dot-separated tokens, each non-empty and free of whitespace.
//! In a subscription a token that is exactly `*` matches one token and a token that is
//! exactly `>` matches one or more trailing tokens (so it must be last). A token that merely
//! contains `*` or `>` (`a*`) is refused everywhere: NATS would treat it as a literal, which
//! is never what a caller meant, and customer ids cannot contain those characters anyway.

use kernel::bus::BusError;

/// One token of a subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Literal(Box<str>),
    /// `*`
    One,
    /// `>`
    Rest,
}

/// Longest subject accepted; far above anything Arbat builds, well below NATS's control line.
const MAX_SUBJECT_LEN: usize = 1024;

fn invalid(subject: &str) -> BusError {
    BusError::InvalidSubject(subject.chars().take(MAX_SUBJECT_LEN).collect())
}

/// Checks the shared token rules; returns whether the subject contains wildcards.
fn check(subject: &str) -> Result<bool, BusError> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
        return Err(invalid(subject));
    }
    let mut wildcard = false;
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(invalid(subject));
        }
        match token {
            "*" => wildcard = true,
            ">" if tokens.peek().is_none() => wildcard = true,
            _ if token.contains(['*', '>']) => return Err(invalid(subject)),
            _ => {}
        }
    }
    Ok(wildcard)
}

/// A subject one can publish (or send a request) to: no wildcards.
pub(crate) fn validate_publish(subject: &str) -> Result<(), BusError> {
    match check(subject)? {
        false => Ok(()),
        true => Err(invalid(subject)),
    }
}

/// A subscription pattern; returns whether it has wildcards.
pub(crate) fn validate_pattern(pattern: &str) -> Result<bool, BusError> {
    check(pattern)
}

/// A queue group name: one non-empty token without whitespace or wildcards.
pub(crate) fn validate_group(group: &str) -> Result<(), BusError> {
    if group.is_empty()
        || group.len() > MAX_SUBJECT_LEN
        || group
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
    {
        return Err(invalid(group));
    }
    Ok(())
}

/// Parses an already validated pattern.
pub(crate) fn parse_pattern(pattern: &str) -> Vec<Token> {
    pattern
        .split('.')
        .map(|token| match token {
            "*" => Token::One,
            ">" => Token::Rest,
            literal => Token::Literal(literal.into()),
        })
        .collect()
}

/// Whether a literal subject matches a parsed pattern.
pub(crate) fn matches(pattern: &[Token], subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for expected in pattern {
        match (expected, tokens.next()) {
            (_, None) => return false,
            (Token::Rest, Some(_)) => return true,
            (Token::One, Some(_)) => {}
            (Token::Literal(literal), Some(token)) => {
                if **literal != *token {
                    return false;
                }
            }
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, subject: &str) -> bool {
        validate_pattern(pattern).unwrap();
        validate_publish(subject).unwrap();
        matches(&parse_pattern(pattern), subject)
    }

    #[test]
    fn matches_like_nats() {
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b", "a"));
        assert!(m("a.*", "a.b"));
        assert!(!m("a.*", "a.b.c"));
        assert!(!m("a.*", "a"));
        assert!(m("*.b", "a.b"));
        assert!(m("a.*.c", "a.x.c"));
        assert!(!m("a.*.c", "a.x.d"));
        assert!(m("a.>", "a.b"));
        assert!(m("a.>", "a.b.c.d"));
        assert!(!m("a.>", "a"));
        assert!(m(">", "a"));
        assert!(m("*.>", "a.b"));
        assert!(!m("*.>", "a"));
        assert!(!m("push.c1", "push.c10"));
    }

    #[test]
    fn refuses_bad_subjects() {
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a\tb", "a*", "a.b>", "a.>.b", ">.a",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad:?}");
        }
        for bad in ["a.*", "a.>", "*", ">"] {
            assert!(validate_publish(bad).is_err(), "{bad:?}");
            assert_eq!(validate_pattern(bad), Ok(true));
        }
        assert_eq!(validate_pattern("a.b"), Ok(false));
        assert!(validate_group("workers").is_ok());
        for bad in ["", "a b", "g*"] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }
}
