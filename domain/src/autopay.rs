//! Autopayment schedules, the pure core: when a schedule runs next and which period a run
//! belongs to. The period makes each run idempotent: the payment's idempotency key is the
//! autopayment id plus the period, so a retried or repeated run (a node killed mid-run, a
//! redelivered trigger) finds the same payment id and never pays twice.
//!
//! Pure: the caller passes the time. Runs are at 00:00 UTC of their day.
//! (The endpoints and the executing shell are not built yet; see docs/payments.md.)

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time, Weekday};

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
