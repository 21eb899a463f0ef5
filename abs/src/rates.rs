//! Currency rates of the reference ABS: a buy/sell spread per pair, fixed-point 10^6
//! (see [`crate::ledger`] for the rounding rule).

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

fn decimal(rate_e6: i64) -> String {
    format!("{}.{:06}", rate_e6 / 1_000_000, rate_e6 % 1_000_000)
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
}
