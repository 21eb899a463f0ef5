//! Autopayment schedules, the pure core: when a schedule runs next and which period a run
//! belongs to. The period makes each run idempotent: the payment's idempotency key is the
//! autopayment id plus the period, so a retried or repeated run (a node killed mid-run, a
//! redelivered trigger) finds the same payment id and never pays twice.
//!
//! Pure: the caller passes the time. Runs are at 00:00 UTC of their day.
//!
//! Autopayments are journaled in the customer's state (`autopayment_saved` /
//! `autopayment_deleted`), like templates. Balance triggers are executed by the customer's
//! actor when it folds a balance change (see `triggered`); the clock-driven kinds are
//! validated and computed here but not executed yet (see docs/payments.md).

use kernel::{FeedEvent, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::{Date, Month, OffsetDateTime, Time, Weekday};

use crate::customer::{CustomerState, EventDraft, NotifyDraft};
use crate::payments::PaymentOrder;

/// Most autopayments one customer keeps.
pub const AUTOPAYMENTS_PER_CUSTOMER: usize = 20;

/// A standing order: the payment (as validated when it was saved) and when it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Autopayment {
    pub id: String,
    pub name: String,
    pub schedule: Schedule,
    /// The payment of every run (its id and hash are set per run).
    pub order: PaymentOrder,
    pub body_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Autopayment {
    /// The API's view.
    pub fn answer(&self) -> Value {
        let schedule = match &self.schedule {
            Schedule::Balance {
                account,
                below_minor,
            } => json!({"kind": "balance", "account": account,
                "below": Money::new(*below_minor, self.order.amount.currency)}),
            other => json!(other),
        };
        json!({
            "id": self.id,
            "name": self.name,
            "schedule": schedule,
            "operation": self.order.operation,
            "from": self.order.from,
            "amount": self.order.amount,
            "created_at": self.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }

    /// The payment of the run in `period`: its id is the run key, so a repeated run of the
    /// same period finds the same payment (the state, and the ABS, apply an id once).
    pub fn run_order(&self, period: &str) -> PaymentOrder {
        PaymentOrder {
            payment_id: run_key(&self.id, period),
            body_hash: format!("autopay:{}", self.body_hash),
            confirmed: true,
            ..self.order.clone()
        }
    }
}

/// Why an autopayment is refused; nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutopaymentRejection {
    #[error("no such account")]
    AccountNotFound,
    #[error("the threshold is not in the account's currency")]
    CurrencyMismatch,
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyConflict,
    #[error("at most {AUTOPAYMENTS_PER_CUSTOMER} autopayments")]
    TooMany,
}

impl AutopaymentRejection {
    pub fn code(&self) -> &'static str {
        match self {
            AutopaymentRejection::AccountNotFound => "account_not_found",
            AutopaymentRejection::CurrencyMismatch => "currency_mismatch",
            AutopaymentRejection::IdempotencyConflict => "idempotency_conflict",
            AutopaymentRejection::TooMany => "limit_exceeded",
        }
    }
}

impl CustomerState {
    /// Checks a new autopayment: idempotency, the accounts are the customer's, the bound.
    /// `Ok(Some(answer))` is a replay.
    pub fn check_autopayment(
        &self,
        autopayment: &Autopayment,
    ) -> Result<Option<Value>, AutopaymentRejection> {
        if let Some(known) = self.autopayments.get(&autopayment.id) {
            if known.body_hash != autopayment.body_hash {
                return Err(AutopaymentRejection::IdempotencyConflict);
            }
            return Ok(Some(known.answer()));
        }
        if !self.products.contains_key(&autopayment.order.from) {
            return Err(AutopaymentRejection::AccountNotFound);
        }
        if let Schedule::Balance { account, .. } = &autopayment.schedule {
            let watched = self
                .products
                .get(account)
                .ok_or(AutopaymentRejection::AccountNotFound)?;
            if watched
                .balance
                .is_some_and(|b| b.currency != autopayment.order.amount.currency)
            {
                return Err(AutopaymentRejection::CurrencyMismatch);
            }
        }
        if self.autopayments.len() >= AUTOPAYMENTS_PER_CUSTOMER {
            return Err(AutopaymentRejection::TooMany);
        }
        Ok(None)
    }

    /// The balance-triggered runs due now: the watched account is below its threshold and
    /// this period's run has not been recorded yet.
    pub fn triggered(&self, now: OffsetDateTime) -> Vec<PaymentOrder> {
        self.autopayments
            .values()
            .filter(|a| match &a.schedule {
                Schedule::Balance {
                    account,
                    below_minor,
                } => self
                    .products
                    .get(account)
                    .and_then(|p| p.balance)
                    .is_some_and(|b| b.minor < *below_minor),
                _ => false,
            })
            .map(|a| a.run_order(&a.schedule.period(now)))
            .filter(|order| !self.payments.contains_key(&order.payment_id))
            .collect()
    }

    /// The `payment_status` `rejected` event of an autopayment run the rules or the ABS
    /// refused (`code`), with a notification: the customer learns that it did not happen.
    pub fn autopayment_failed(order: &PaymentOrder, code: &str, at: OffsetDateTime) -> EventDraft {
        let mut draft = Self::payment_event(order, "rejected", at, None, None, None);
        draft.data.insert("code".into(), json!(code));
        let mut params = Map::new();
        // The notifier's `payment_status` template: amount (money), status, payee.
        params.insert("amount".into(), json!(order.amount));
        params.insert("status".into(), json!("rejected"));
        params.insert(
            "payee".into(),
            json!(
                crate::payments::payee_key(&order.to).unwrap_or_else(|| order.description.clone())
            ),
        );
        draft.notify = Some(NotifyDraft {
            kind: "payment_status",
            params,
        });
        draft
    }

    /// The `autopayment_saved` event.
    pub fn autopayment_saved(autopayment: &Autopayment, at: OffsetDateTime) -> EventDraft {
        EventDraft::single(
            format!("{}-saved", autopayment.id),
            "autopayment_saved",
            at,
            "autopayment",
            json!(autopayment),
        )
    }

    /// The `autopayment_deleted` event.
    pub fn autopayment_deleted(id: &str, at: OffsetDateTime) -> EventDraft {
        EventDraft::single(
            format!("{id}-deleted"),
            "autopayment_deleted",
            at,
            "autopayment_id",
            json!(id),
        )
    }

    /// Folds `autopayment_saved` / `autopayment_deleted`.
    pub(crate) fn apply_autopayment(&mut self, event: &FeedEvent) {
        match event.kind.as_str() {
            "autopayment_saved" => {
                if let Some(a) = event
                    .data
                    .get("autopayment")
                    .and_then(|a| serde_json::from_value::<Autopayment>(a.clone()).ok())
                    && (self.autopayments.len() < AUTOPAYMENTS_PER_CUSTOMER
                        || self.autopayments.contains_key(&a.id))
                {
                    self.autopayments.insert(a.id.clone(), a);
                }
            }
            "autopayment_deleted" => {
                if let Some(id) = event.data.get("autopayment_id").and_then(Value::as_str) {
                    self.autopayments.remove(id);
                }
            }
            _ => {}
        }
    }
}

/// When an autopayment runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Every month on `day` (1 to 31; in a shorter month, on its last day).
    Monthly { day: u8 },
    /// Every week on `weekday` (0 = Monday … 6 = Sunday).
    Weekly { weekday: u8 },
    /// When the balance of `account` falls below `below_minor`: at most once a day (UTC).
    Balance { account: String, below_minor: i64 },
}

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl Schedule {
    /// Checks the schedule's numbers.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match self {
            Schedule::Monthly { day } if !(1..=31).contains(day) => Err(ScheduleError {
                field: "schedule.day",
                reason: "must be 1 to 31",
            }),
            Schedule::Weekly { weekday } if *weekday > 6 => Err(ScheduleError {
                field: "schedule.weekday",
                reason: "must be 0 (Monday) to 6 (Sunday)",
            }),
            Schedule::Balance { account, .. } if account.is_empty() || account.len() > 64 => {
                Err(ScheduleError {
                    field: "schedule.account",
                    reason: "is not an account id",
                })
            }
            Schedule::Balance { below_minor, .. } if *below_minor <= 0 => Err(ScheduleError {
                field: "schedule.below",
                reason: "must be positive",
            }),
            _ => Ok(()),
        }
    }

    /// The first scheduled run strictly after `after` (None for balance triggers, which run
    /// on a balance change, not on a clock).
    pub fn next_run(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = after.to_offset(time::UtcOffset::UTC);
        let midnight = |date: Date| date.with_time(Time::MIDNIGHT).assume_utc();
        match self {
            Schedule::Monthly { day } => {
                let (mut year, mut month) = (after.year(), after.month());
                // At most two months ahead: this month's run or the next one's.
                for _ in 0..3 {
                    let run = midnight(run_day(year, month, *day)?);
                    if run > after {
                        return Some(run);
                    }
                    (year, month) = if month == Month::December {
                        (year + 1, Month::January)
                    } else {
                        (year, month.next())
                    };
                }
                None
            }
            Schedule::Weekly { weekday } => {
                let target = weekday_of(*weekday)?;
                let mut date = after.date();
                for _ in 0..8 {
                    if date.weekday() == target && midnight(date) > after {
                        return Some(midnight(date));
                    }
                    date = date.next_day()?;
                }
                None
            }
            Schedule::Balance { .. } => None,
        }
    }

    /// The period a run at `at` belongs to: `2026-12` (monthly), `2026-W49` (weekly, ISO
    /// week), `2026-12-04` (balance trigger: at most once a day).
    pub fn period(&self, at: OffsetDateTime) -> String {
        let at = at.to_offset(time::UtcOffset::UTC);
        match self {
            Schedule::Monthly { .. } => format!("{:04}-{:02}", at.year(), u8::from(at.month())),
            Schedule::Weekly { .. } => {
                let (year, week, _) = at.date().to_iso_week_date();
                format!("{year:04}-W{week:02}")
            }
            Schedule::Balance { .. } => format!(
                "{:04}-{:02}-{:02}",
                at.year(),
                u8::from(at.month()),
                at.day()
            ),
        }
    }
}

/// The idempotency key of one run: the autopayment id and the period.
pub fn run_key(autopayment_id: &str, period: &str) -> String {
    format!("autopay:{autopayment_id}:{period}")
}

fn run_day(year: i32, month: Month, day: u8) -> Option<Date> {
    let last = month.length(year);
    Date::from_calendar_date(year, month, day.min(last)).ok()
}

fn weekday_of(n: u8) -> Option<Weekday> {
    Some(match n {
        0 => Weekday::Monday,
        1 => Weekday::Tuesday,
        2 => Weekday::Wednesday,
        3 => Weekday::Thursday,
        4 => Weekday::Friday,
        5 => Weekday::Saturday,
        6 => Weekday::Sunday,
        _ => return None,
    })
}

/// Whether a run is due at `now` for a schedule last run at `last` (or created then).
pub fn due(schedule: &Schedule, last: OffsetDateTime, now: OffsetDateTime) -> bool {
    schedule.next_run(last).is_some_and(|run| run <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn monthly_runs_on_the_day_clamped_to_short_months() {
        let s = Schedule::Monthly { day: 31 };
        assert_eq!(
            s.next_run(datetime!(2026-01-15 10:00 UTC)),
            Some(datetime!(2026-01-31 00:00 UTC))
        );
        // February has no 31st: its last day.
        assert_eq!(
            s.next_run(datetime!(2026-01-31 00:00 UTC)),
            Some(datetime!(2026-02-28 00:00 UTC))
        );
        assert_eq!(
            s.next_run(datetime!(2028-02-01 00:00 UTC)),
            Some(datetime!(2028-02-29 00:00 UTC))
        );
        // Year end.
        let s = Schedule::Monthly { day: 5 };
        assert_eq!(
            s.next_run(datetime!(2026-12-05 00:00:01 UTC)),
            Some(datetime!(2027-01-05 00:00 UTC))
        );
    }

    #[test]
    fn weekly_runs_on_the_weekday_strictly_after() {
        // 2026-12-04 is a Friday.
        let friday = Schedule::Weekly { weekday: 4 };
        assert_eq!(
            friday.next_run(datetime!(2026-12-04 00:00 UTC)),
            Some(datetime!(2026-12-11 00:00 UTC))
        );
        assert_eq!(
            friday.next_run(datetime!(2026-12-03 23:59 UTC)),
            Some(datetime!(2026-12-04 00:00 UTC))
        );
        let monday = Schedule::Weekly { weekday: 0 };
        assert_eq!(
            monday.next_run(datetime!(2026-12-04 12:00 UTC)),
            Some(datetime!(2026-12-07 00:00 UTC))
        );
    }

    #[test]
    fn periods_make_runs_idempotent() {
        let at = datetime!(2026-12-04 13:00 UTC);
        assert_eq!(Schedule::Monthly { day: 4 }.period(at), "2026-12");
        assert_eq!(Schedule::Weekly { weekday: 4 }.period(at), "2026-W49");
        // ISO week 1 of 2027 starts on Monday 2027-01-04; 2027-01-01 is in 2026-W53.
        assert_eq!(
            Schedule::Weekly { weekday: 4 }.period(datetime!(2027-01-01 00:00 UTC)),
            "2026-W53"
        );
        let balance = Schedule::Balance {
            account: "a1".into(),
            below_minor: 100,
        };
        assert_eq!(balance.period(at), "2026-12-04");
        assert_eq!(balance.next_run(at), None);
        // Two runs in one period share the key; the next period does not.
        let monthly = Schedule::Monthly { day: 4 };
        assert_eq!(
            run_key("ap1", &monthly.period(datetime!(2026-12-04 00:00 UTC))),
            run_key("ap1", &monthly.period(datetime!(2026-12-31 23:59 UTC)))
        );
        assert_ne!(
            run_key("ap1", &monthly.period(datetime!(2026-12-04 00:00 UTC))),
            run_key("ap1", &monthly.period(datetime!(2027-01-04 00:00 UTC)))
        );
        assert!(due(&monthly, datetime!(2026-11-04 00:00 UTC), at));
        assert!(!due(&monthly, datetime!(2026-12-04 00:00 UTC), at));
    }

    use super::tests_support::{fold, state_with};

    fn top_up() -> Autopayment {
        Autopayment {
            schedule: Schedule::Balance {
                account: "a1".into(),
                below_minor: 10_000,
            },
            ..super::tests_support::monthly("apm-1", 1)
        }
    }

    #[test]
    fn a_balance_trigger_fires_below_the_threshold_once_per_day() {
        let now = datetime!(2026-12-04 13:00 UTC);
        let mut above = state_with(10_000);
        fold(&mut above, CustomerState::autopayment_saved(&top_up(), now));
        assert!(above.triggered(now).is_empty());
        let mut below = state_with(9_999);
        fold(&mut below, CustomerState::autopayment_saved(&top_up(), now));
        let runs = below.triggered(now);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].payment_id, "autopay:apm-1:2026-12-04");
        assert!(runs[0].confirmed);
        // Recorded (here: refused and reported): not again today, again tomorrow.
        let failed = CustomerState::autopayment_failed(&runs[0], "insufficient_funds", now);
        assert_eq!(failed.notify.as_ref().unwrap().kind, "payment_status");
        fold(&mut below, failed);
        assert_eq!(below.payments[&runs[0].payment_id].status, "rejected");
        assert!(below.triggered(now).is_empty());
        assert_eq!(below.triggered(datetime!(2026-12-05 00:00 UTC)).len(), 1);
        // Deleted: never again.
        fold(&mut below, CustomerState::autopayment_deleted("apm-1", now));
        assert!(below.triggered(datetime!(2026-12-06 00:00 UTC)).is_empty());
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(Schedule::Monthly { day: 0 }.validate().is_err());
        assert!(Schedule::Monthly { day: 32 }.validate().is_err());
        assert!(Schedule::Weekly { weekday: 7 }.validate().is_err());
        assert!(
            Schedule::Balance {
                account: "a1".into(),
                below_minor: 0
            }
            .validate()
            .is_err()
        );
        assert!(Schedule::Monthly { day: 31 }.validate().is_ok());
    }
}

/// Builders shared by the autopayment tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn state_with(balance: i64) -> CustomerState {
        use crate::customer::{Product, ProductKind, Profile};
        use kernel::{Currency, CustomerId};
        let product = |id: &str, minor: i64| Product {
            id: id.into(),
            kind: ProductKind::Account,
            title: id.into(),
            status: "active".into(),
            balance: Some(Money::new(minor, Currency::RUB)),
            details: Map::new(),
        };
        CustomerState::new(Profile {
            customer_id: CustomerId::parse("c1").unwrap(),
            name: "Anna".into(),
            phone: "+79990000001".into(),
            language: "en".into(),
            products: vec![product("a1", balance), product("a2", 10_000_000)],
        })
    }

    /// `a2` pays 50.00 RUB to the own account `a1` on `day` of every month.
    pub(crate) fn monthly(id: &str, day: u8) -> Autopayment {
        use kernel::Currency;
        use kernel::payment::Destination;
        Autopayment {
            id: id.into(),
            name: "card".into(),
            schedule: Schedule::Monthly { day },
            order: PaymentOrder {
                payment_id: String::new(),
                body_hash: String::new(),
                operation: "transfer.own".into(),
                from: "a2".into(),
                to: Destination::Account {
                    account_id: "a1".into(),
                    own: true,
                },
                amount: Money::new(5_000, Currency::RUB),
                fee: Money::new(0, Currency::RUB),
                limits: Default::default(),
                description: String::new(),
                confirmed: false,
                quote: None,
            },
            body_hash: "h".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    pub(crate) fn fold(state: &mut CustomerState, draft: EventDraft) {
        let event = FeedEvent {
            seq: state.version + 1,
            id: draft.id,
            kind: draft.kind.into(),
            at: draft.at,
            data: draft.data,
        };
        state.apply(&event);
    }
}
