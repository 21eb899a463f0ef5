//! Quotes: the bank's promise to convert an amount between two currencies at a rate, for a
//! short time, to one customer. Pure: the caller passes the key and the time.
//!
//! A quote is not stored: it is a token `q1.<payload>.<mac>` (base64url), the payload the
//! quote's JSON and the mac its HMAC-SHA256 under the ABS's quote key (kept in the store's
//! secrets, so every node issues and checks the same quotes). Any change to the token fails
//! the mac; a token of another customer, or after `expires_at`, is refused. That a quote is
//! used once is the customer actor's rule (`domain::payments`): its payments remember the
//! quote id that paid them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kernel::{Currency, CustomerId, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::ledger::{self, Rate};

/// How long a quote holds by default.
pub const DEFAULT_VALIDITY: time::Duration = time::Duration::seconds(30);

/// Longest token accepted (a quote is about 300 characters).
const MAX_TOKEN: usize = 1024;

/// What a quote promises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Random, so that two quotes of the same terms are two quotes.
    pub nonce: String,
    pub customer_id: CustomerId,
    /// Sold by the customer (debited from the paying account).
    pub amount: Money,
    /// Received by the customer at `rate_e6`.
    pub credited: Money,
    /// Quote currency per base, fixed point 10^6, spread included (see `rates`).
    pub rate_e6: i64,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why a quote is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// Malformed, altered, or another customer's: all look the same.
    #[error("no such quote")]
    NotFound,
    #[error("the quote has expired")]
    Expired,
    /// The bank does not convert the pair, or the amount is too small to convert.
    #[error("{0}")]
    Unquotable(&'static str),
}

impl QuoteError {
    pub fn code(&self) -> &'static str {
        match self {
            QuoteError::NotFound => "quote_not_found",
            QuoteError::Expired => "quote_expired",
            QuoteError::Unquotable(_) => "currency_mismatch",
        }
    }
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Quote {
    /// Prices `amount` into `to` at the bank's current customer rate (rounded down, see the
    /// ledger), valid for `validity` from `now`.
    pub fn price(
        rates: &[Rate],
        customer_id: CustomerId,
        amount: Money,
        to: Currency,
        nonce: String,
        now: OffsetDateTime,
        validity: time::Duration,
    ) -> Result<Quote, QuoteError> {
        if amount.minor <= 0 {
            return Err(QuoteError::Unquotable("the amount must be positive"));
        }
        let rate_e6 = crate::rates::customer_rate(rates, amount.currency, to).ok_or(
            QuoteError::Unquotable("the bank does not convert this pair"),
        )?;
        let credited = ledger::convert(amount.minor, amount.currency, to, rate_e6)
            .filter(|minor| *minor > 0)
            .ok_or(QuoteError::Unquotable("the amount is too small to convert"))?;
        Ok(Quote {
            nonce,
            customer_id,
            amount,
            credited: Money::new(credited, to),
            rate_e6,
            expires_at_ms: unix_ms(now + validity),
        })
    }

    /// The signed token: the quote's id.
    pub fn sign(&self, key: &[u8]) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default());
        format!(
            "q1.{payload}.{}",
            URL_SAFE_NO_PAD.encode(mac(key, &payload))
        )
    }

    /// The quote behind `token`, if it is intact, `customer`'s, and not expired at `now`.
    pub fn verify(
        key: &[u8],
        token: &str,
        customer: &CustomerId,
        now: OffsetDateTime,
    ) -> Result<Quote, QuoteError> {
        if token.len() > MAX_TOKEN {
            return Err(QuoteError::NotFound);
        }
        let mut parts = token.split('.');
        let (Some("q1"), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(QuoteError::NotFound);
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| QuoteError::NotFound)?;
        let mut check = Hmac::<Sha256>::new_from_slice(key).map_err(|_| QuoteError::NotFound)?;
        check.update(payload.as_bytes());
        check.verify_slice(&tag).map_err(|_| QuoteError::NotFound)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| QuoteError::NotFound)?;
        let quote: Quote = serde_json::from_slice(&bytes).map_err(|_| QuoteError::NotFound)?;
        if &quote.customer_id != customer {
            return Err(QuoteError::NotFound);
        }
        if unix_ms(now) >= quote.expires_at_ms {
            return Err(QuoteError::Expired);
        }
        Ok(quote)
    }

    /// The API's view (`POST /v1/quotes`), with its token as the id.
    pub fn answer(&self, token: &str) -> Value {
        let expires_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.expires_at_ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
        json!({
            "id": token,
            "amount": self.amount,
            "credited": self.credited,
            "rate": crate::rates::decimal(self.rate_e6),
            "expires_at": expires_at,
        })
    }
}

fn mac(key: &[u8], payload: &str) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(payload.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
// Amounts are written as major_minor (`100_00` is 100.00) so they read like money.
#[allow(clippy::inconsistent_digit_grouping)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn customer(n: &str) -> CustomerId {
        CustomerId::parse(n).unwrap()
    }

    fn quote(now: OffsetDateTime) -> Quote {
        Quote::price(
            &crate::rates::demo_rates(),
            customer("c1"),
            Money::new(100_00, Currency::USD),
            Currency::RUB,
            "n1".into(),
            now,
            DEFAULT_VALIDITY,
        )
        .unwrap()
    }

    #[test]
    fn a_quote_prices_at_the_customer_rate_rounded_down() {
        let now = datetime!(2026-12-04 12:00 UTC);
        let q = quote(now);
        // Selling USD: the bank's buy rate, 90.000000.
        assert_eq!(
            (q.rate_e6, q.credited),
            (90_000_000, Money::new(9_000_00, Currency::RUB))
        );
        // Buying USD with 100.00 RUB: 1 / 95 = 0.010526 → 1.0526 USD, rounded down to 1.05.
        let back = Quote::price(
            &crate::rates::demo_rates(),
            customer("c1"),
            Money::new(100_00, Currency::RUB),
            Currency::USD,
            "n2".into(),
            now,
            DEFAULT_VALIDITY,
        )
        .unwrap();
        assert_eq!(back.credited, Money::new(1_05, Currency::USD));
        assert_eq!(q.answer("t")["expires_at"], "2026-12-04T12:00:30Z");
    }

    #[test]
    fn unquotable_requests_are_refused() {
        let now = datetime!(2026-12-04 12:00 UTC);
        let price = |minor: i64, from: Currency, to: Currency| {
            Quote::price(
                &crate::rates::demo_rates(),
                customer("c1"),
                Money::new(minor, from),
                to,
                "n".into(),
                now,
                DEFAULT_VALIDITY,
            )
        };
        assert!(matches!(
            price(0, Currency::USD, Currency::RUB),
            Err(QuoteError::Unquotable(_))
        ));
        assert!(matches!(
            price(100, Currency::RUB, Currency::RUB),
            Err(QuoteError::Unquotable(_))
        ));
        // 0.01 RUB is less than a cent.
        assert!(matches!(
            price(1, Currency::RUB, Currency::USD),
            Err(QuoteError::Unquotable(_))
        ));
    }

    #[test]
    fn only_an_intact_unexpired_own_quote_verifies() {
        let now = datetime!(2026-12-04 12:00 UTC);
        let q = quote(now);
        let token = q.sign(KEY);
        let c1 = customer("c1");
        assert_eq!(Quote::verify(KEY, &token, &c1, now), Ok(q.clone()));
        let cases: Vec<(&str, String, CustomerId, OffsetDateTime, QuoteError)> = vec![
            (
                "expired",
                token.clone(),
                c1.clone(),
                now + DEFAULT_VALIDITY,
                QuoteError::Expired,
            ),
            (
                "foreign",
                token.clone(),
                customer("c2"),
                now,
                QuoteError::NotFound,
            ),
            (
                "other key",
                q.sign(b"another key"),
                c1.clone(),
                now,
                QuoteError::NotFound,
            ),
            (
                "garbage",
                "q1.x.y".into(),
                c1.clone(),
                now,
                QuoteError::NotFound,
            ),
            (
                "empty",
                String::new(),
                c1.clone(),
                now,
                QuoteError::NotFound,
            ),
            (
                "too long",
                "q".repeat(MAX_TOKEN + 1),
                c1.clone(),
                now,
                QuoteError::NotFound,
            ),
        ];
        for (name, token, who, at, expected) in cases {
            assert_eq!(
                Quote::verify(KEY, &token, &who, at),
                Err(expected),
                "{name}"
            );
        }
        // Altered terms (a better rate) with the old mac.
        let mut better = q.clone();
        better.rate_e6 = 99_000_000;
        let altered_payload = better.sign(KEY).split('.').nth(1).unwrap().to_owned();
        let tag = token.split('.').nth(2).unwrap();
        let altered = format!("q1.{altered_payload}.{tag}");
        assert_eq!(
            Quote::verify(KEY, &altered, &c1, now),
            Err(QuoteError::NotFound)
        );
    }
}
