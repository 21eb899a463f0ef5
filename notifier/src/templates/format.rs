//! Amounts and dates as each language writes them.

use kernel::Money;
use time::{OffsetDateTime, UtcOffset};

use crate::model::Language;

/// `−1 234,50 ₽` in Russian, `−RUB 1,234.50` in English.
pub fn format_money(money: &Money, language: Language) -> String {
    let text = money.amount_string();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let (group, decimal) = match language {
        Language::Ru => (' ', ','),
        Language::En => (',', '.'),
    };
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(group);
        }
        grouped.push(c);
    }
    if !fraction.is_empty() {
        grouped.push(decimal);
        grouped.push_str(fraction);
    }
    let sign = if negative { "−" } else { "" };
    let code = money.currency.code();
    match language {
        Language::Ru => {
            let symbol = match code {
                "RUB" => "₽",
                "USD" => "$",
                "EUR" => "€",
                other => other,
            };
            format!("{sign}{grouped} {symbol}")
        }
        Language::En => format!("{sign}{code} {grouped}"),
    }
}

/// `04.12.2026 13:05` in Russian, `4 Dec 2026, 13:05` in English, at the customer's offset.
pub fn format_datetime(at: OffsetDateTime, language: Language, utc_offset_minutes: i16) -> String {
    let offset =
        UtcOffset::from_whole_seconds(i32::from(utc_offset_minutes) * 60).unwrap_or(UtcOffset::UTC);
    let local = at.to_offset(offset);
    match language {
        Language::Ru => format!(
            "{:02}.{:02}.{} {:02}:{:02}",
            local.day(),
            u8::from(local.month()),
            local.year(),
            local.hour(),
            local.minute()
        ),
        Language::En => {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            format!(
                "{} {} {}, {:02}:{:02}",
                local.day(),
                MONTHS[usize::from(u8::from(local.month())) - 1],
                local.year(),
                local.hour(),
                local.minute()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::Currency;

    #[test]
    fn money_by_language() {
        let cases = [
            (
                Money::new(123_450, Currency::RUB),
                "1 234,50 ₽",
                "RUB 1,234.50",
            ),
            (Money::new(-5, Currency::USD), "−0,05 $", "−USD 0.05"),
            (
                Money::new(100_000_000, Currency::EUR),
                "1 000 000,00 €",
                "EUR 1,000,000.00",
            ),
            (
                Money::new(500, Currency::parse("JPY").unwrap()),
                "500 JPY",
                "JPY 500",
            ),
        ];
        for (money, ru, en) in cases {
            assert_eq!(format_money(&money, Language::Ru), ru);
            assert_eq!(format_money(&money, Language::En), en);
        }
    }

    #[test]
    fn dates_by_language_and_offset() {
        let at = time::macros::datetime!(2026-12-31 22:30 UTC);
        assert_eq!(format_datetime(at, Language::Ru, 180), "01.01.2027 01:30");
        assert_eq!(format_datetime(at, Language::En, -60), "31 Dec 2026, 21:30");
    }
}
