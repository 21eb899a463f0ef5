//! Data-driven checks of the interest and annuity rules. The expected figures were computed
//! independently with 60-digit decimal arithmetic (the same rounding rules, no fixed point).

use kernel::{Currency, Money};
use serde_json::json;
use time::macros::date;

use super::*;

fn rub(minor: i64) -> Money {
    Money::new(minor, Currency::RUB)
}

#[test]
fn rates_parse_into_basis_points_and_bad_ones_are_refused() {
    for (raw, bp) in [
        ("19.9", 1990),
        ("12.5", 1250),
        ("0", 0),
        ("7.25", 725),
        ("50", 5000),
    ] {
        assert_eq!(parse_rate_bp(raw), Ok(bp), "{raw}");
    }
    for bad in [
        "", ".", "1.", ".5", "50.01", "1.234", "-1", "1e2", "abc", "1000", "12,5",
    ] {
        assert_eq!(parse_rate_bp(bad), Err(TermsError::Rate), "{bad:?}");
    }
}

#[test]
fn simple_interest_rounds_half_up_once() {
    // (principal minor, rate bp, days, interest minor)
    let cases = [
        (50_000_000, 1250, 365, 6_250_000),
        (50_000_000, 1250, 731, 12_517_123),
        (100, 1000, 1, 0),
        (1_000_000, 1000, 73, 20_000),
        // 10_000 × 0.05 × 1 / 365 = 1.3699 → 1.
        (10_000, 500, 1, 1),
        // 365 × 5000 × 1 / 3_650_000 = 0.5 → rounds up to 1.
        (365, 5000, 1, 1),
        (50_000_000, 1250, -5, 0),
        (50_000_000, 0, 365, 0),
    ];
    for (principal, bp, days, expected) in cases {
        assert_eq!(
            simple_interest(rub(principal), bp, days),
            rub(expected),
            "{principal} at {bp}bp for {days} days"
        );
    }
}

#[test]
fn deposit_interest_accrues_up_to_the_end_only() {
    let details = json!({"rate": "12.5", "opened": "2025-12-31", "ends": "2027-12-31"});
    let terms = deposit_terms(details.as_object().unwrap(), rub(50_000_000)).unwrap();
    assert_eq!(terms.interest_expected(), rub(12_500_000));
    assert_eq!(terms.interest_accrued(date!(2025 - 12 - 31)), rub(0));
    assert_eq!(
        terms.interest_accrued(date!(2026 - 12 - 31)),
        rub(6_250_000)
    );
    assert_eq!(
        terms.interest_accrued(date!(2030 - 01 - 01)),
        rub(12_500_000)
    );
    assert_eq!(terms.interest_accrued(date!(2020 - 01 - 01)), rub(0));

    let backwards = json!({"rate": "12.5", "opened": "2027-12-31", "ends": "2025-12-31"});
    assert_eq!(
        deposit_terms(backwards.as_object().unwrap(), rub(1)),
        Err(TermsError::Period)
    );
    let no_rate = json!({"opened": "2025-12-31", "ends": "2027-12-31"});
    assert_eq!(
        deposit_terms(no_rate.as_object().unwrap(), rub(1)),
        Err(TermsError::Field("rate"))
    );
}

#[test]
fn months_are_added_clamping_to_the_last_day() {
    let cases = [
        (date!(2026 - 11 - 15), 1, date!(2026 - 12 - 15)),
        (date!(2026 - 11 - 15), 2, date!(2027 - 01 - 15)),
        (date!(2026 - 01 - 31), 1, date!(2026 - 02 - 28)),
        (date!(2028 - 01 - 31), 1, date!(2028 - 02 - 29)),
        (date!(2026 - 01 - 31), 3, date!(2026 - 04 - 30)),
        (date!(2026 - 12 - 31), 12, date!(2027 - 12 - 31)),
        (date!(2026 - 05 - 10), 360, date!(2056 - 05 - 10)),
    ];
    for (start, months, expected) in cases {
        assert_eq!(
            add_months(start, months),
            Some(expected),
            "{start} + {months}"
        );
    }
}

#[test]
fn annuity_schedules_match_the_reference_figures() {
    // (principal, rate bp, months, level payment, first (payment, principal, interest),
    //  last (payment, principal, interest), total interest)
    let cases = [
        (
            30_000_000,
            1990,
            36,
            1_113_380,
            (1_113_380, 615_880, 497_500),
            (1_113_357, 1_095_195, 18_162),
            10_081_657,
        ),
        (
            10_000_000,
            1200,
            12,
            888_488,
            (888_488, 788_488, 100_000),
            (888_485, 879_688, 8_797),
            661_853,
        ),
        (
            100_000,
            0,
            3,
            33_333,
            (33_333, 33_333, 0),
            (33_334, 33_334, 0),
            0,
        ),
        (100, 1000, 12, 9, (9, 8, 1), (7, 7, 0), 6),
        (
            123_456_789,
            2500,
            360,
            2_573_554,
            (2_573_554, 1_538, 2_572_016),
            (2_560_203, 2_507_954, 52_249),
            803_009_300,
        ),
        // At the largest rate and term the level payment is the first month's interest: the
        // principal is paid in the last instalment, which absorbs it.
        (
            5_000_000,
            5000,
            360,
            208_333,
            (208_333, 0, 208_333),
            (5_208_333, 5_000_000, 208_333),
            74_999_880,
        ),
    ];
    for (principal, bp, months, level, first, last, total_interest) in cases {
        let terms = LoanTerms::new(rub(principal), bp, months, date!(2026 - 11 - 15)).unwrap();
        let label = format!("{principal} at {bp}bp over {months}");
        assert_eq!(terms.annuity_payment(), rub(level), "{label}");
        let schedule = terms.schedule();
        assert_eq!(schedule.len(), months as usize, "{label}");
        let triple = |i: &Instalment| (i.payment.minor, i.principal.minor, i.interest.minor);
        assert_eq!(triple(&schedule[0]), first, "{label}");
        assert_eq!(triple(schedule.last().unwrap()), last, "{label}");
        assert_eq!(
            schedule.iter().map(|i| i.interest.minor).sum::<i64>(),
            total_interest,
            "{label}"
        );
        // The principal parts sum to the loan, the balance falls to zero and every
        // instalment but the last is the level payment.
        assert_eq!(
            schedule.iter().map(|i| i.principal.minor).sum::<i64>(),
            principal,
            "{label}"
        );
        assert_eq!(schedule.last().unwrap().balance_after, rub(0), "{label}");
        for (i, item) in schedule.iter().enumerate() {
            assert_eq!(item.number as usize, i + 1);
            assert_eq!(
                item.payment.minor,
                item.principal.minor + item.interest.minor
            );
            if i + 1 < schedule.len() {
                assert_eq!(item.payment, rub(level), "{label} #{}", i + 1);
            }
        }
    }
}

#[test]
fn loan_terms_out_of_bounds_are_refused() {
    let start = date!(2026 - 11 - 15);
    assert_eq!(
        LoanTerms::new(rub(0), 1990, 36, start),
        Err(TermsError::Principal)
    );
    assert_eq!(
        LoanTerms::new(rub(-5), 1990, 36, start),
        Err(TermsError::Principal)
    );
    assert_eq!(
        LoanTerms::new(rub(100), 5001, 36, start),
        Err(TermsError::Rate)
    );
    assert_eq!(
        LoanTerms::new(rub(100), 1990, 0, start),
        Err(TermsError::Term)
    );
    assert_eq!(
        LoanTerms::new(rub(100), 1990, 361, start),
        Err(TermsError::Term)
    );
    // The extreme accepted terms compute without overflow.
    let widest = LoanTerms::new(rub(i64::MAX / 4), 5000, 360, start).unwrap();
    assert_eq!(
        widest
            .schedule()
            .iter()
            .map(|i| i.principal.minor)
            .sum::<i64>(),
        i64::MAX / 4
    );
}

#[test]
fn next_payment_is_the_first_instalment_due_on_or_after_today() {
    let details = json!({
        "principal": {"amount": "300000.00", "currency": "RUB"},
        "rate": "19.9", "term_months": 36, "start_date": "2026-11-15",
    });
    let terms = loan_terms(details.as_object().unwrap()).unwrap();
    let cases = [
        (date!(2026 - 11 - 20), Some((1, "2026-12-15"))),
        (date!(2026 - 12 - 15), Some((1, "2026-12-15"))),
        (date!(2026 - 12 - 16), Some((2, "2027-01-15"))),
        (date!(2029 - 11 - 15), Some((36, "2029-11-15"))),
        (date!(2029 - 11 - 16), None),
    ];
    for (today, expected) in cases {
        let next = terms.next_payment(today);
        assert_eq!(
            next.as_ref().map(|n| (n.number, n.date.as_str())),
            expected,
            "{today}"
        );
    }
}

#[test]
fn products_are_annotated_consistently_with_the_schedule() {
    let mut products = json!({
        "accounts": [], "cards": [],
        "deposits": [{"id": "d1", "balance": {"amount": "500000.00", "currency": "RUB"},
                      "rate": "12.5", "opened": "2025-12-31", "ends": "2027-12-31"},
                     {"id": "d2", "balance": {"amount": "1.00", "currency": "RUB"}}],
        "loans": [{"id": "l1", "principal": {"amount": "300000.00", "currency": "RUB"},
                   "rate": "19.9", "term_months": 36, "start_date": "2026-11-15"},
                  {"id": "l2", "rate": "19.9"}],
    });
    let today = date!(2026 - 12 - 16);
    annotate(&mut products, today);
    assert_eq!(
        products["deposits"][0]["interest_expected"],
        json!({"amount": "125000.00", "currency": "RUB"})
    );
    assert_eq!(
        products["deposits"][0]["interest_accrued"],
        json!({"amount": "59931.51", "currency": "RUB"})
    );
    assert!(products["deposits"][1].get("interest_expected").is_none());
    assert_eq!(
        products["loans"][0]["next_payment"],
        json!({"date": "2027-01-15", "amount": {"amount": "11133.80", "currency": "RUB"}})
    );
    assert!(products["loans"][1].get("next_payment").is_none());

    let schedule = schedule_view(&products["loans"][0], today).unwrap();
    assert_eq!(
        schedule["next_payment"],
        products["loans"][0]["next_payment"]
    );
    assert_eq!(schedule["items"].as_array().unwrap().len(), 36);
    assert_eq!(schedule["items"][1]["date"], "2027-01-15");
    assert_eq!(
        schedule["payment"],
        json!({"amount": "11133.80", "currency": "RUB"})
    );
    assert_eq!(
        schedule_view(&products["loans"][1], today),
        Err(TermsError::Field("principal"))
    );
}

#[test]
fn only_a_card_becoming_blocked_raises_a_security_alert() {
    let product = |kind: crate::ProductKind, status: &str| crate::Product {
        id: "k1".into(),
        kind,
        title: "Debit card".into(),
        status: status.into(),
        balance: None,
        details: json!({"pan_masked": "220220******0001"})
            .as_object()
            .unwrap()
            .clone(),
    };
    let at = time::macros::datetime!(2026-12-05 10:00 UTC);
    let card = crate::ProductKind::Card;
    // (product kind, current status, new status, language, expected event text)
    let cases = [
        (
            card,
            "active",
            Some("blocked"),
            "en",
            Some("card 220220******0001 blocked"),
        ),
        (
            card,
            "active",
            Some("blocked"),
            "ru",
            Some("карта 220220******0001 заблокирована"),
        ),
        (
            card,
            "blocked",
            Some("blocked"),
            "en",
            Some("card 220220******0001 blocked"),
        ),
        (card, "blocked", Some("active"), "en", None),
        (card, "active", None, "en", None),
        (
            crate::ProductKind::Account,
            "active",
            Some("blocked"),
            "en",
            None,
        ),
    ];
    for (kind, current, new, language, expected) in cases {
        let alert = card_blocked_alert(&product(kind, current), new, language, at);
        assert_eq!(
            alert
                .as_ref()
                .map(|a| (a.kind, a.params["event"].as_str().unwrap())),
            expected.map(|text| ("security_alert", text)),
            "{kind:?} {current} -> {new:?} in {language}"
        );
        if let Some(alert) = alert {
            assert_eq!(alert.params["at"], "2026-12-05T10:00:00Z");
        }
    }
}

#[test]
fn a_card_daily_limit_is_positive_bounded_and_in_the_account_currency() {
    let usd = |minor| Money::new(minor, Currency::USD);
    let cases = [
        (rub(1), Currency::RUB, Ok(())),
        (rub(MAX_CARD_DAILY_LIMIT_MINOR), Currency::RUB, Ok(())),
        (
            rub(MAX_CARD_DAILY_LIMIT_MINOR + 1),
            Currency::RUB,
            Err(DailyLimitError::TooLarge),
        ),
        (rub(0), Currency::RUB, Err(DailyLimitError::NotPositive)),
        (rub(-5), Currency::RUB, Err(DailyLimitError::NotPositive)),
        (usd(100), Currency::RUB, Err(DailyLimitError::Currency)),
        (usd(100), Currency::USD, Ok(())),
    ];
    for (n, (limit, currency, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            check_card_daily_limit(limit, currency),
            expected,
            "case {n}"
        );
    }
}

#[test]
fn a_new_deposit_has_a_documented_term_and_minimum_in_the_account_currency() {
    let opened = date!(2026 - 01 - 31);
    let ok = new_deposit_terms(rub(10_000_000), 3, Currency::RUB, opened).unwrap();
    assert_eq!(ok.rate_bp, 1_400);
    assert_eq!(ok.ends, date!(2026 - 04 - 30));
    // 100 000.00 at 14% for 89 days: 3 413.70 (rounded half-up once).
    assert_eq!(ok.interest_expected(), rub(341_370));
    let twelve = new_deposit_terms(rub(100_000), 12, Currency::RUB, opened).unwrap();
    assert_eq!(
        (twelve.rate_bp, twelve.ends),
        (1_250, date!(2027 - 01 - 31))
    );
    let usd = Money::new(100_000, Currency::USD);
    let cases = [
        (rub(100_000), 1, Currency::RUB, NewDepositError::Term),
        (rub(100_000), 24, Currency::RUB, NewDepositError::Term),
        (rub(0), 6, Currency::RUB, NewDepositError::NotPositive),
        (rub(-1), 6, Currency::RUB, NewDepositError::NotPositive),
        (rub(99_999), 6, Currency::RUB, NewDepositError::BelowMinimum),
        (usd, 6, Currency::RUB, NewDepositError::Currency),
    ];
    for (n, (amount, term, currency, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            new_deposit_terms(amount, term, currency, opened),
            Err(expected),
            "case {n}"
        );
    }
    assert_eq!(NewDepositError::Term.field(), "term_months");
    assert_eq!(NewDepositError::BelowMinimum.field(), "amount");
}
