//! Clock-driven autopayments (monthly, weekly), the pure part of their execution.
//!
//! The schedule index in the store (`customer → autopayment → next run`) is derived from the
//! journal: [`schedule_change`] turns an `autopayment_saved` / `autopayment_deleted` event
//! into the index write committed with it. A node's scheduler finds due rows and asks the
//! customer's actor, which decides with [`CustomerState::scheduled_run`] what the due run
//! is: the payment of the period the run belongs to (idempotent by its run key), or nothing
//! when that period's run is already recorded, and when the autopayment runs next.

use kernel::FeedEvent;
use serde_json::Value;
use time::OffsetDateTime;

use crate::autopay::{Autopayment, Schedule};
use crate::customer::CustomerState;
use crate::payments::PaymentOrder;

/// What a due run of a clock-driven autopayment is, decided from the state.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduledRun {
    /// No such autopayment (deleted), or not a clock-driven one: drop it from the index.
    Gone,
    /// This period's run is already recorded (completed or refused): only move the index on.
    AlreadyRun { next_run_ms: i64 },
    /// Pay `order` (its id is the run key of the period), then move the index on.
    Run {
        order: Box<PaymentOrder>,
        next_run_ms: i64,
    },
}

/// The index write an event causes: `Some((autopayment id, next run or None = remove))`.
/// Only clock-driven schedules are indexed; balance triggers run on balance changes.
pub fn schedule_change(event: &FeedEvent) -> Option<(String, Option<i64>)> {
    match event.kind.as_str() {
        "autopayment_saved" => {
            let autopayment: Autopayment =
                serde_json::from_value(event.data.get("autopayment")?.clone()).ok()?;
            let next = autopayment.schedule.next_run(event.at)?;
            Some((autopayment.id, Some(unix_ms(next))))
        }
        "autopayment_deleted" => {
            let id = event.data.get("autopayment_id").and_then(Value::as_str)?;
            Some((id.to_owned(), None))
        }
        _ => None,
    }
}

impl CustomerState {
    /// The run of `autopayment_id` that fell due at `due_at` (the index's next run), seen
    /// at `now`. The run belongs to the period of `due_at`, so a run that is late (a node
    /// was down) still pays that period once; periods missed entirely are not paid twice
    /// over, the index moves to the first run after `now`.
    pub fn scheduled_run(
        &self,
        autopayment_id: &str,
        due_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> ScheduledRun {
        let Some(autopayment) = self.autopayments.get(autopayment_id) else {
            return ScheduledRun::Gone;
        };
        if matches!(autopayment.schedule, Schedule::Balance { .. }) {
            return ScheduledRun::Gone;
        }
        let Some(next) = autopayment.schedule.next_run(now.max(due_at)) else {
            return ScheduledRun::Gone;
        };
        let next_run_ms = unix_ms(next);
        let order = autopayment.run_order(&autopayment.schedule.period(due_at));
        // A `pending` run (the ABS did not answer) is asked again: the ABS applies its id
        // at most once, so this completes it rather than paying twice.
        let recorded = self
            .payments
            .get(&order.payment_id)
            .is_some_and(|p| p.status != "pending");
        if recorded {
            ScheduledRun::AlreadyRun { next_run_ms }
        } else {
            ScheduledRun::Run {
                order: Box::new(order),
                next_run_ms,
            }
        }
    }
}

/// Unix milliseconds of a time (saturating; schedules are within years of now).
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autopay::tests_support::{fold, monthly, state_with};
    use time::macros::datetime;

    #[test]
    fn saving_indexes_the_next_run_and_deleting_removes_it() {
        let at = datetime!(2026-12-04 13:00 UTC);
        let mut state = state_with(100_000);
        let saved = CustomerState::autopayment_saved(&monthly("ap1", 1), at).into_event(1);
        assert_eq!(
            schedule_change(&saved),
            Some((
                "ap1".to_owned(),
                Some(unix_ms(datetime!(2027-01-01 00:00 UTC)))
            ))
        );
        state.apply(&saved);
        let deleted = CustomerState::autopayment_deleted("ap1", at).into_event(2);
        assert_eq!(schedule_change(&deleted), Some(("ap1".to_owned(), None)));
        // Balance triggers and other events are not indexed.
        let mut trigger = monthly("ap2", 1);
        trigger.schedule = Schedule::Balance {
            account: "a1".into(),
            below_minor: 100,
        };
        let saved = CustomerState::autopayment_saved(&trigger, at).into_event(3);
        assert_eq!(schedule_change(&saved), None);
    }

    /// Data-driven: (schedule day, due at, now, expected run key or None, next run).
    #[test]
    fn a_due_run_pays_its_period_once_and_moves_on() {
        let cases = [
            // On time: the December run, next in January.
            (
                4,
                datetime!(2026-12-04 00:00 UTC),
                datetime!(2026-12-04 00:00:01 UTC),
                "autopay:ap1:2026-12",
                datetime!(2027-01-04 00:00 UTC),
            ),
            // Late by two months (nodes down): the period it fell due in, next after now.
            (
                31,
                datetime!(2026-09-30 00:00 UTC),
                datetime!(2026-12-01 10:00 UTC),
                "autopay:ap1:2026-09",
                datetime!(2026-12-31 00:00 UTC),
            ),
            // Made due early (the index moved into the past): this month's period.
            (
                1,
                datetime!(2026-12-04 12:00 UTC),
                datetime!(2026-12-04 12:00:01 UTC),
                "autopay:ap1:2026-12",
                datetime!(2027-01-01 00:00 UTC),
            ),
        ];
        for (day, due_at, now, key, next) in cases {
            let mut state = state_with(100_000);
            state.apply(
                &CustomerState::autopayment_saved(&monthly("ap1", day), due_at).into_event(1),
            );
            match state.scheduled_run("ap1", due_at, now) {
                ScheduledRun::Run { order, next_run_ms } => {
                    assert_eq!(order.payment_id, key);
                    assert!(order.confirmed);
                    assert_eq!(next_run_ms, unix_ms(next));
                    // Recorded (here: refused): the same due run is not paid again.
                    let failed =
                        CustomerState::autopayment_failed(&order, "insufficient_funds", now);
                    fold(&mut state, failed);
                    assert_eq!(
                        state.scheduled_run("ap1", due_at, now),
                        ScheduledRun::AlreadyRun {
                            next_run_ms: unix_ms(next)
                        }
                    );
                }
                other => panic!("{key}: expected a run, got {other:?}"),
            }
        }
    }

    #[test]
    fn deleted_or_unknown_autopayments_leave_the_index() {
        let at = datetime!(2026-12-04 00:00 UTC);
        let mut state = state_with(100_000);
        assert_eq!(state.scheduled_run("nope", at, at), ScheduledRun::Gone);
        state.apply(&CustomerState::autopayment_saved(&monthly("ap1", 4), at).into_event(1));
        state.apply(&CustomerState::autopayment_deleted("ap1", at).into_event(2));
        assert_eq!(state.scheduled_run("ap1", at, at), ScheduledRun::Gone);
    }

    #[test]
    fn weekly_runs_use_the_iso_week() {
        let due = datetime!(2026-12-04 00:00 UTC); // a Friday, ISO week 49
        let mut state = state_with(100_000);
        let mut weekly = monthly("ap1", 1);
        weekly.schedule = Schedule::Weekly { weekday: 4 };
        state.apply(&CustomerState::autopayment_saved(&weekly, due).into_event(1));
        match state.scheduled_run("ap1", due, due) {
            ScheduledRun::Run { order, next_run_ms } => {
                assert_eq!(order.payment_id, "autopay:ap1:2026-W49");
                assert_eq!(next_run_ms, unix_ms(datetime!(2026-12-11 00:00 UTC)));
            }
            other => panic!("expected a run, got {other:?}"),
        }
    }
}
