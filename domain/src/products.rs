//! Deposit interest and loan annuity schedules: pure arithmetic over a product's terms.
//!
//! Money stays in integer minor units. Rates are annual percentages with at most two fraction
//! digits ("19.9", "12.5"), held as hundredths of a percent (basis points). Every rounding is
//! half-up to the minor unit, and the rules are:
//!
//! - **Deposit interest** is simple interest on the deposit's balance, actual/365:
//!   `balance × rate × days / 365`, rounded once. `interest_expected` counts the days from
//!   `opened` to `ends`; `interest_accrued` counts them up to today (never past `ends`).
//! - **Loan instalments** are an annuity: `payment = P·r·(1+r)^n / ((1+r)^n − 1)` with the
//!   monthly rate `r = rate / 12`, computed in fixed point (15 decimal places) and rounded to
//!   the minor unit. Each month's interest is `balance × rate / 12` rounded exactly; the
//!   principal part is the payment minus that interest. The last instalment pays whatever
//!   principal is left, so it absorbs every rounding and the principal parts sum to the loan.
//!   Instalment `k` falls `k` months after the start date, on the start's day of the month
//!   or the month's last day when shorter.

use kernel::Money;
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::{Date, Month};

/// The largest annual rate a schedule is computed for, in basis points (50%).
pub const MAX_RATE_BP: u32 = 5_000;
/// The longest loan term a schedule is computed for, in months (30 years).
pub const MAX_TERM_MONTHS: u32 = 360;

/// Fixed-point scale of the annuity factor.
const SCALE: i128 = 1_000_000_000_000_000;
/// Basis points per unit, times 12 months: `bp / MONTHLY_BP_DIVISOR` is the monthly rate.
const MONTHLY_BP_DIVISOR: i128 = 10_000 * 12;

/// Why a product's terms cannot be computed with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    #[error("`{0}` is missing or malformed")]
    Field(&'static str),
    #[error("rate must be between 0 and 50 percent with at most two fraction digits")]
    Rate,
    #[error("term must be between 1 and 360 months")]
    Term,
    #[error("principal must be positive")]
    Principal,
    #[error("the deposit ends before it opens")]
    Period,
}

/// Parses an annual percentage such as `"19.9"` into basis points.
pub fn parse_rate_bp(rate: &str) -> Result<u32, TermsError> {
    let (whole, fraction) = match rate.split_once('.') {
        Some((_, "")) => return Err(TermsError::Rate),
        Some(parts) => parts,
        None => (rate, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.len() > 2 || !(fraction.is_empty() || digits(fraction)) {
        return Err(TermsError::Rate);
    }
    let whole: u32 = whole.parse().map_err(|_| TermsError::Rate)?;
    let mut fraction_bp: u32 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| TermsError::Rate)?
    };
    if fraction.len() == 1 {
        fraction_bp *= 10;
    }
    let bp = whole * 100 + fraction_bp;
    if bp > MAX_RATE_BP {
        return Err(TermsError::Rate);
    }
    Ok(bp)
}

/// `numerator / denominator` rounded half-up; both non-negative, denominator positive.
fn div_half_up(numerator: i128, denominator: i128) -> i128 {
    (numerator + denominator / 2) / denominator
}

/// Simple interest, actual/365, on `principal` at `rate_bp` for `days` (negative days count
/// as none).
pub fn simple_interest(principal: Money, rate_bp: u32, days: i64) -> Money {
    let days = i128::from(days.max(0));
    let numerator = i128::from(principal.minor.max(0)) * i128::from(rate_bp) * days;
    let minor = div_half_up(numerator, 10_000 * 365);
    Money::new(i64::try_from(minor).unwrap_or(i64::MAX), principal.currency)
}

/// The date `months` months after `start`, on the same day or the month's last day.
pub fn add_months(start: Date, months: u32) -> Option<Date> {
    let zero_based = i64::from(start.month() as u8) - 1 + i64::from(months);
    let year = i32::try_from(i64::from(start.year()) + zero_based / 12).ok()?;
    let month = Month::try_from(u8::try_from(zero_based % 12 + 1).ok()?).ok()?;
    let day = start.day().min(month.length(year));
    Date::from_calendar_date(year, month, day).ok()
}

/// A deposit's terms as the ABS records them in the product's details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepositTerms {
    pub principal: Money,
    pub rate_bp: u32,
    pub opened: Date,
    pub ends: Date,
}

impl DepositTerms {
    /// Interest for the whole term.
    pub fn interest_expected(&self) -> Money {
        simple_interest(
            self.principal,
            self.rate_bp,
            (self.ends - self.opened).whole_days(),
        )
    }

    /// Interest earned from opening up to `today`, never past the end of the term.
    pub fn interest_accrued(&self, today: Date) -> Money {
        let until = today.min(self.ends);
        simple_interest(
            self.principal,
            self.rate_bp,
            (until - self.opened).whole_days(),
        )
    }
}

/// A loan's terms as the ABS records them in the product's details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoanTerms {
    pub principal: Money,
    pub rate_bp: u32,
    pub term_months: u32,
    pub start_date: Date,
}

/// One instalment of a loan schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instalment {
    pub number: u32,
    pub date: String,
    pub payment: Money,
    pub principal: Money,
    pub interest: Money,
    pub balance_after: Money,
    #[serde(skip)]
    pub due: Date,
}

impl LoanTerms {
    pub fn new(
        principal: Money,
        rate_bp: u32,
        term_months: u32,
        start_date: Date,
    ) -> Result<Self, TermsError> {
        if principal.minor <= 0 {
            return Err(TermsError::Principal);
        }
        if rate_bp > MAX_RATE_BP {
            return Err(TermsError::Rate);
        }
        if !(1..=MAX_TERM_MONTHS).contains(&term_months) {
            return Err(TermsError::Term);
        }
        Ok(Self {
            principal,
            rate_bp,
            term_months,
            start_date,
        })
    }

    /// The level instalment before the last one absorbs the rounding.
    pub fn annuity_payment(&self) -> Money {
        let principal = i128::from(self.principal.minor);
        let n = i128::from(self.term_months);
        let minor = if self.rate_bp == 0 {
            div_half_up(principal, n)
        } else {
            let monthly = i128::from(self.rate_bp) * SCALE / MONTHLY_BP_DIVISOR;
            let growth = SCALE + monthly;
            let mut compounded = SCALE;
            for _ in 0..self.term_months {
                compounded = compounded * growth / SCALE;
            }
            let factor = monthly * compounded / (compounded - SCALE);
            div_half_up(principal * factor, SCALE)
        };
        Money::new(
            i64::try_from(minor).unwrap_or(i64::MAX),
            self.principal.currency,
        )
    }

    /// Every instalment in order; the principal parts sum to the principal.
    pub fn schedule(&self) -> Vec<Instalment> {
        let currency = self.principal.currency;
        let money = |minor: i128| Money::new(i64::try_from(minor).unwrap_or(i64::MAX), currency);
        let level = i128::from(self.annuity_payment().minor);
        let mut balance = i128::from(self.principal.minor);
        let mut items = Vec::with_capacity(self.term_months as usize);
        for number in 1..=self.term_months {
            let interest = div_half_up(balance * i128::from(self.rate_bp), MONTHLY_BP_DIVISOR);
            let principal = if number == self.term_months {
                balance
            } else {
                (level - interest).clamp(0, balance)
            };
            balance -= principal;
            let due = add_months(self.start_date, number).unwrap_or(Date::MAX);
            items.push(Instalment {
                number,
                date: iso_date(due),
                payment: money(principal + interest),
                principal: money(principal),
                interest: money(interest),
                balance_after: money(balance),
                due,
            });
        }
        items
    }

    /// The first instalment due on or after `today`, if any is left.
    pub fn next_payment(&self, today: Date) -> Option<Instalment> {
        self.schedule().into_iter().find(|item| item.due >= today)
    }
}

fn iso_date(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        date.month() as u8,
        date.day()
    )
}

fn parse_date(raw: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(raw, format).ok()
}

fn date_field(details: &Map<String, Value>, name: &'static str) -> Result<Date, TermsError> {
    details
        .get(name)
        .and_then(Value::as_str)
        .and_then(parse_date)
        .ok_or(TermsError::Field(name))
}

fn rate_field(details: &Map<String, Value>) -> Result<u32, TermsError> {
    parse_rate_bp(
        details
            .get("rate")
            .and_then(Value::as_str)
            .ok_or(TermsError::Field("rate"))?,
    )
}

/// A deposit's terms from its product details (`rate`, `opened`, `ends`) and balance.
pub fn deposit_terms(
    details: &Map<String, Value>,
    balance: Money,
) -> Result<DepositTerms, TermsError> {
    let terms = DepositTerms {
        principal: balance,
        rate_bp: rate_field(details)?,
        opened: date_field(details, "opened")?,
        ends: date_field(details, "ends")?,
    };
    if terms.ends < terms.opened {
        return Err(TermsError::Period);
    }
    Ok(terms)
}

/// A loan's terms from its product details (`principal`, `rate`, `term_months`, `start_date`).
pub fn loan_terms(details: &Map<String, Value>) -> Result<LoanTerms, TermsError> {
    let principal: Money = details
        .get("principal")
        .cloned()
        .and_then(|raw| serde_json::from_value(raw).ok())
        .ok_or(TermsError::Field("principal"))?;
    let term_months = details
        .get("term_months")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .ok_or(TermsError::Field("term_months"))?;
    LoanTerms::new(
        principal,
        rate_field(details)?,
        term_months,
        date_field(details, "start_date")?,
    )
}

/// The `GET /v1/loans/{id}/schedule` body for a loan item of `GET /v1/products`.
pub fn schedule_view(loan: &Value, today: Date) -> Result<Value, TermsError> {
    let details = loan.as_object().ok_or(TermsError::Field("details"))?;
    let terms = loan_terms(details)?;
    let items = terms.schedule();
    let next = items.iter().find(|item| item.due >= today).cloned();
    Ok(json!({
        "loan_id": loan["id"],
        "principal": terms.principal,
        "rate": details["rate"],
        "term_months": terms.term_months,
        "start_date": iso_date(terms.start_date),
        "payment": terms.annuity_payment(),
        "items": items,
        "next_payment": next.map(|item| json!({"date": item.date, "amount": item.payment})),
    }))
}

/// Adds what is computed from terms to a `GET /v1/products` body: a deposit's
/// `interest_expected` and `interest_accrued`, a loan's `next_payment` from its schedule.
/// Products whose terms the ABS did not record are left as they are.
pub fn annotate(products: &mut Value, today: Date) {
    if let Some(deposits) = products.get_mut("deposits").and_then(Value::as_array_mut) {
        for deposit in deposits.iter_mut() {
            let balance: Option<Money> = serde_json::from_value(deposit["balance"].clone()).ok();
            let Some(item) = deposit.as_object_mut() else {
                continue;
            };
            if let Some(Ok(terms)) = balance.map(|balance| deposit_terms(item, balance)) {
                item.insert("interest_expected".into(), json!(terms.interest_expected()));
                item.insert(
                    "interest_accrued".into(),
                    json!(terms.interest_accrued(today)),
                );
            }
        }
    }
    if let Some(loans) = products.get_mut("loans").and_then(Value::as_array_mut) {
        for loan in loans.iter_mut() {
            let Some(item) = loan.as_object_mut() else {
                continue;
            };
            if let Ok(terms) = loan_terms(item) {
                let next = terms
                    .next_payment(today)
                    .map(|next| json!({"date": next.date, "amount": next.payment}));
                item.insert("next_payment".into(), next.unwrap_or(Value::Null));
            }
        }
    }
}

/// Deposit rates per term (months → annual percent): the reference bank's documented offer.
pub const DEPOSIT_RATES: [(u32, &str); 3] = [(3, "14.0"), (6, "13.5"), (12, "12.5")];
/// The smallest deposit, in minor units of its account's currency (1 000.00).
pub const MIN_DEPOSIT_MINOR: i64 = 100_000;

/// Why a deposit cannot be opened as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NewDepositError {
    #[error("term_months must be 3, 6 or 12")]
    Term,
    #[error("amount must be positive")]
    NotPositive,
    #[error("amount must be at least 1000.00")]
    BelowMinimum,
    #[error("amount must be in the account's currency")]
    Currency,
}

impl NewDepositError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            NewDepositError::Term => "term_months",
            _ => "amount",
        }
    }
}

/// A new deposit's terms: `amount` from an account in `account_currency` for `term_months`
/// (3, 6 or 12, at the rate of [`DEPOSIT_RATES`]), opened on `opened`, ending `term_months`
/// later (the same day, or the month's last).
pub fn new_deposit_terms(
    amount: Money,
    term_months: u32,
    account_currency: kernel::Currency,
    opened: Date,
) -> Result<DepositTerms, NewDepositError> {
    let rate = DEPOSIT_RATES
        .iter()
        .find(|(term, _)| *term == term_months)
        .map(|(_, rate)| *rate)
        .ok_or(NewDepositError::Term)?;
    if amount.minor <= 0 {
        return Err(NewDepositError::NotPositive);
    }
    if amount.currency != account_currency {
        return Err(NewDepositError::Currency);
    }
    if amount.minor < MIN_DEPOSIT_MINOR {
        return Err(NewDepositError::BelowMinimum);
    }
    Ok(DepositTerms {
        principal: amount,
        rate_bp: parse_rate_bp(rate).map_err(|_| NewDepositError::Term)?,
        opened,
        ends: add_months(opened, term_months).ok_or(NewDepositError::Term)?,
    })
}

/// A date as `YYYY-MM-DD`.
pub fn iso(date: Date) -> String {
    iso_date(date)
}

/// The largest daily limit a card may have, in minor units of its account's currency
/// (1 000 000.00 RUB).
pub const MAX_CARD_DAILY_LIMIT_MINOR: i64 = 100_000_000;

/// Why a card's daily limit is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DailyLimitError {
    #[error("the limit must be positive")]
    NotPositive,
    #[error("the limit must be at most 1000000.00 in the card's currency")]
    TooLarge,
    #[error("the limit must be in the card's account currency")]
    Currency,
}

/// Checks a card's new daily limit against its account's currency: positive, in that
/// currency, at most [`MAX_CARD_DAILY_LIMIT_MINOR`].
pub fn check_card_daily_limit(
    limit: Money,
    account_currency: kernel::Currency,
) -> Result<(), DailyLimitError> {
    if limit.currency != account_currency {
        return Err(DailyLimitError::Currency);
    }
    if limit.minor <= 0 {
        return Err(DailyLimitError::NotPositive);
    }
    if limit.minor > MAX_CARD_DAILY_LIMIT_MINOR {
        return Err(DailyLimitError::TooLarge);
    }
    Ok(())
}

/// The `security_alert` a card's block raises (an unblock and other products say nothing).
/// The ABS publishes a status only when it changes, so each block alerts once; the state's
/// own status is not consulted because an actor activated after the ABS's write already
/// holds the new status. The text names the masked card in the customer's language (`ru`,
/// else English).
pub fn card_blocked_alert(
    product: &crate::Product,
    new_status: Option<&str>,
    language: &str,
    at: time::OffsetDateTime,
) -> Option<crate::customer::NotifyDraft> {
    if product.kind != crate::ProductKind::Card || new_status != Some("blocked") {
        return None;
    }
    let card = product
        .details
        .get("pan_masked")
        .and_then(Value::as_str)
        .unwrap_or(&product.title);
    let event = if language == "ru" {
        format!("карта {card} заблокирована")
    } else {
        format!("card {card} blocked")
    };
    let mut params = Map::new();
    params.insert("event".into(), json!(event));
    params.insert(
        "at".into(),
        json!(
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ),
    );
    Some(crate::customer::NotifyDraft {
        kind: "security_alert",
        params,
    })
}

#[cfg(test)]
mod tests;
