//! Currency rates of the reference ABS: a buy/sell spread per pair, fixed-point 10^6
//! (see [`crate::ledger`] for the rounding rule).

use std::sync::Arc;

use kernel::Currency;
use serde_json::{Value, json};

use crate::ledger::{RATE_SCALE, Rate};

/// The demo rates (quote per base). A bank's ABS adapter would serve its treasury's.
pub fn demo_rates() -> Vec<Rate> {
    let eur = Currency::EUR;
    vec![
        Rate {
            base: Currency::USD,
            quote: Currency::RUB,
            buy_e6: 90_000_000,
            sell_e6: 95_000_000,
        },
        Rate {
            base: eur,
            quote: Currency::RUB,
            buy_e6: 98_000_000,
            sell_e6: 104_000_000,
        },
        Rate {
            base: eur,
            quote: Currency::USD,
            buy_e6: 1_060_000,
            sell_e6: 1_120_000,
        },
    ]
}

/// The rate at which `from` converts into `to` for a customer, spread included: selling
/// the base the customer gets the bank's buy rate; buying it the customer pays the sell
/// rate (the inverse, rounded down). `None` for a pair the bank does not quote.
pub fn customer_rate(rates: &[Rate], from: Currency, to: Currency) -> Option<i64> {
    rates.iter().find_map(|rate| {
        if rate.base == from && rate.quote == to {
            Some(rate.buy_e6)
        } else if rate.base == to && rate.quote == from {
            i64::try_from(RATE_SCALE * RATE_SCALE / i128::from(rate.sell_e6)).ok()
        } else {
            None
        }
    })
}

pub(crate) fn decimal(rate_e6: i64) -> String {
    format!("{}.{:06}", rate_e6 / 1_000_000, rate_e6 % 1_000_000)
}

/// The rates at one moment, as the ABS holds and publishes them: `version` orders the
/// sets (a node keeps the newest it has seen), `rates` is replaced whole.
#[derive(Clone, Debug, PartialEq)]
pub struct RateSet {
    pub version: i64,
    pub rates: Arc<Vec<Rate>>,
}

impl RateSet {
    /// The demo rates, version 0 (any change replaces them).
    pub fn demo() -> Self {
        Self {
            version: 0,
            rates: Arc::new(demo_rates()),
        }
    }

    /// The bus and stored form (`abs.rates`, `abs_rate_sets`): `{"version", "items": [...]}`.
    pub fn to_json(&self) -> Value {
        let mut value = rates_json(&self.rates);
        value["version"] = json!(self.version);
        value
    }

    /// Parses and checks the bus form; `None` if it is malformed or breaks a rule.
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let version = value.get("version")?.as_i64()?;
        let rates = parse_items(value.get("items")?).ok()?;
        validate(&rates).ok()?;
        Some(Self {
            version,
            rates: Arc::new(rates),
        })
    }
}

/// Why a rate set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RateError {
    pub field: String,
    pub reason: &'static str,
}

/// Most pairs a rate set holds.
pub const MAX_PAIRS: usize = 64;

/// Parses `[{"base": "USD", "quote": "RUB", "buy": "90.00", "sell": "95.00"}]` (decimal
/// strings, at most 6 decimals).
pub fn parse_items(items: &Value) -> Result<Vec<Rate>, RateError> {
    let err = |field: String, reason| RateError { field, reason };
    let items = items
        .as_array()
        .ok_or_else(|| err("items".into(), "must be an array"))?;
    if items.len() > MAX_PAIRS {
        return Err(err("items".into(), "too many pairs"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| format!("items[{i}].{name}");
            let currency = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .and_then(|c| Currency::parse(c).ok())
                    .ok_or_else(|| err(field(name), "is not a currency code"))
            };
            let rate = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .and_then(parse_rate)
                    .ok_or_else(|| err(field(name), "is not a decimal rate (at most 6 decimals)"))
            };
            Ok(Rate {
                base: currency("base")?,
                quote: currency("quote")?,
                buy_e6: rate("buy")?,
                sell_e6: rate("sell")?,
            })
        })
        .collect()
}

/// `"90.5"` → 90_500_000; at most 6 decimals, at most 10^9, no sign.
pub fn parse_rate(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || whole.len() > 9
        || fraction.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    Some(whole * 1_000_000 + fraction)
}

/// The rules of a rate set: positive rates, the bank buys at most at what it sells, a pair
/// of two different currencies, each pair (in either direction) once.
pub fn validate(rates: &[Rate]) -> Result<(), RateError> {
    let err = |i: usize, name: &str, reason| RateError {
        field: format!("items[{i}].{name}"),
        reason,
    };
    for (i, rate) in rates.iter().enumerate() {
        if rate.base == rate.quote {
            return Err(err(i, "quote", "must differ from base"));
        }
        if rate.buy_e6 <= 0 {
            return Err(err(i, "buy", "must be positive"));
        }
        if rate.sell_e6 < rate.buy_e6 {
            return Err(err(i, "sell", "must not be below buy"));
        }
        let same_pair = rates[..i].iter().any(|other| {
            (other.base, other.quote) == (rate.base, rate.quote)
                || (other.base, other.quote) == (rate.quote, rate.base)
        });
        if same_pair {
            return Err(err(i, "base", "the pair is listed twice"));
        }
    }
    Ok(())
}

/// `GET /v1/rates`.
pub fn rates_json(rates: &[Rate]) -> Value {
    json!({"items": rates.iter().map(|r| json!({
        "base": r.base,
        "quote": r.quote,
        "buy": decimal(r.buy_e6),
        "sell": decimal(r.sell_e6),
    })).collect::<Vec<_>>()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_in_both_directions() {
        let rates = demo_rates();
        assert_eq!(
            customer_rate(&rates, Currency::USD, Currency::RUB),
            Some(90_000_000)
        );
        // 1 / 95 = 0.010526 (rounded down)
        assert_eq!(
            customer_rate(&rates, Currency::RUB, Currency::USD),
            Some(10_526)
        );
        assert_eq!(customer_rate(&rates, Currency::RUB, Currency::RUB), None);
        assert_eq!(rates_json(&rates)["items"][0]["sell"], "95.000000");
    }

    #[test]
    fn a_rate_set_round_trips_the_bus_form() {
        let set = RateSet {
            version: 7,
            rates: Arc::new(demo_rates()),
        };
        let bytes = set.to_json().to_string();
        assert_eq!(RateSet::from_json(bytes.as_bytes()), Some(set));
        assert_eq!(RateSet::from_json(b"{}"), None);
        assert_eq!(RateSet::from_json(b"not json"), None);
    }

    #[test]
    fn rates_parse_as_decimals() {
        let cases = [
            ("90", Some(90_000_000)),
            ("90.5", Some(90_500_000)),
            ("0.010526", Some(10_526)),
            ("1.0000001", None),
            ("-1", None),
            ("", None),
            (".5", None),
            ("1e3", None),
            ("1234567890", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rate(text), expected, "{text}");
        }
    }

    #[test]
    fn bad_rate_sets_are_refused_with_the_field() {
        let rate = |base, quote, buy, sell| Rate {
            base,
            quote,
            buy_e6: buy,
            sell_e6: sell,
        };
        let (usd, rub) = (Currency::USD, Currency::RUB);
        let cases = [
            (vec![rate(usd, usd, 1, 2)], "items[0].quote"),
            (vec![rate(usd, rub, 0, 2)], "items[0].buy"),
            (vec![rate(usd, rub, 3, 2)], "items[0].sell"),
            (
                vec![rate(usd, rub, 1, 2), rate(rub, usd, 1, 2)],
                "items[1].base",
            ),
        ];
        for (rates, field) in cases {
            assert_eq!(validate(&rates).unwrap_err().field, field);
        }
        assert!(validate(&demo_rates()).is_ok());
        let bad = json!([{"base": "USD", "quote": "rub", "buy": "1", "sell": "2"}]);
        assert_eq!(parse_items(&bad).unwrap_err().field, "items[0].quote");
    }
}
