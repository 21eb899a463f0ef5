//! Money in integer minor units with an ISO 4217 currency. Never floats.
//!
//! The wire form (API.md) is `{"amount": "1234.50", "currency": "RUB"}`: the amount is a
//! decimal string with exactly the currency's number of fraction digits or fewer.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 alphabetic code: three upper-case ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// An amount of money: `minor` units (kopecks, cents) of `currency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be a three-letter ISO 4217 code")]
    Currency,
    #[error("amount must be a decimal string such as \"1234.50\" with at most {0} fraction digits")]
    Amount(u8),
    #[error("amount is out of range")]
    Overflow,
    #[error("currencies differ")]
    CurrencyMismatch,
}

impl Currency {
    pub const RUB: Currency = Currency(*b"RUB");
    pub const USD: Currency = Currency(*b"USD");
    pub const EUR: Currency = Currency(*b"EUR");

    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let bytes: [u8; 3] = code
            .as_bytes()
            .try_into()
            .map_err(|_| MoneyError::Currency)?;
        if bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Self(bytes))
        } else {
            Err(MoneyError::Currency)
        }
    }

    pub fn code(&self) -> &str {
        // The constructor admits ASCII upper-case letters only.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Fraction digits of the currency (ISO 4217 minor unit).
    pub fn exponent(&self) -> u8 {
        match &self.0 {
            b"JPY" | b"KRW" | b"VND" | b"CLP" | b"ISK" | b"UGX" => 0,
            b"BHD" | b"KWD" | b"OMR" | b"JOD" | b"TND" | b"IQD" | b"LYD" => 3,
            _ => 2,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Parses a decimal string such as `"-1234.5"` into minor units of `currency`.
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        let exponent = currency.exponent();
        let invalid = MoneyError::Amount(exponent);
        let (negative, digits) = match amount.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, amount),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (digits, ""),
        };
        let well_formed = !whole.is_empty()
            && whole.len() <= 18
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && fraction.len() <= usize::from(exponent)
            && !(digits.contains('.') && fraction.is_empty());
        if !well_formed {
            return Err(invalid);
        }
        let scale = 10_i64.pow(u32::from(exponent));
        let whole: i64 = whole.parse().map_err(|_| MoneyError::Overflow)?;
        let mut fraction_minor: i64 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| invalid.clone())?
        };
        for _ in fraction.len()..usize::from(exponent) {
            fraction_minor *= 10;
        }
        let magnitude = whole
            .checked_mul(scale)
            .and_then(|m| m.checked_add(fraction_minor))
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::new(
            if negative { -magnitude } else { magnitude },
            currency,
        ))
    }

    /// The decimal string of the wire form, always with the currency's fraction digits.
    pub fn amount_string(&self) -> String {
        let exponent = u32::from(self.currency.exponent());
        let sign = if self.minor < 0 { "-" } else { "" };
        let magnitude = self.minor.unsigned_abs();
        if exponent == 0 {
            return format!("{sign}{magnitude}");
        }
        let scale = 10_u64.pow(exponent);
        format!(
            "{sign}{}.{:0width$}",
            magnitude / scale,
            magnitude % scale,
            width = exponent as usize
        )
    }

    pub fn checked_add(&self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch);
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_string(), self.currency)
    }
}

#[derive(Serialize, Deserialize)]
struct MoneyWire {
    amount: String,
    currency: String,
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoneyWire {
            amount: self.amount_string(),
            currency: self.currency.code().to_owned(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = MoneyWire::deserialize(deserializer)?;
        let currency = Currency::parse(&wire.currency).map_err(serde::de::Error::custom)?;
        Money::parse(&wire.amount, currency).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let cases = [
            ("1234.50", Currency::RUB, 123_450, "1234.50"),
            ("1234.5", Currency::RUB, 123_450, "1234.50"),
            ("-0.01", Currency::RUB, -1, "-0.01"),
            ("7", Currency::USD, 700, "7.00"),
            ("500", Currency::parse("JPY").unwrap(), 500, "500"),
            ("1.234", Currency::parse("KWD").unwrap(), 1234, "1.234"),
        ];
        for (raw, currency, minor, shown) in cases {
            let money = Money::parse(raw, currency).unwrap();
            assert_eq!(money.minor, minor, "{raw}");
            assert_eq!(money.amount_string(), shown, "{raw}");
        }
    }

    #[test]
    fn refuses_malformed_amounts() {
        for bad in [
            "",
            "-",
            ".5",
            "1.",
            "1.234",
            "1e5",
            "1,00",
            " 1",
            "+1",
            "0x10",
            "99999999999999999999",
        ] {
            assert!(Money::parse(bad, Currency::RUB).is_err(), "{bad:?}");
        }
        assert!(Currency::parse("rub").is_err());
        assert!(Currency::parse("RUBL").is_err());
    }

    #[test]
    fn json_wire_form() {
        let money: Money = serde_json::from_str(r#"{"amount":"10.05","currency":"EUR"}"#).unwrap();
        assert_eq!(money, Money::new(1005, Currency::EUR));
        assert_eq!(
            serde_json::to_string(&money).unwrap(),
            r#"{"amount":"10.05","currency":"EUR"}"#
        );
        assert!(serde_json::from_str::<Money>(r#"{"amount":10.05,"currency":"EUR"}"#).is_err());
    }
}
