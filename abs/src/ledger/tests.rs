//! Property tests of the ledger: random sequences of transfers, holds, FX, fees, replays and
//! closings (a small fixed-seed generator, so a failure reproduces exactly), checking after
//! every step that each currency sums to zero, no account is below its floor, a refused
//! step changed nothing and a replayed id changed nothing.

use super::*;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const RUB: Currency = Currency::RUB;
const USD: Currency = Currency::USD;

fn bank() -> Ledger {
    let mut ledger = Ledger::default();
    for (id, currency, balance) in [
        ("a1", RUB, 100_000),
        ("a2", RUB, 50_000),
        ("a3", RUB, 0),
        ("u1", USD, 10_000),
        ("u2", USD, 0),
    ] {
        ledger.open(Account::new(id, currency, AccountKind::Customer, 0));
        // Opening balances come from the bank's settlement account, double-entry too.
        if balance > 0 {
            let settlement = format!("settle-{currency}");
            if ledger.account(&settlement).is_none() {
                ledger.open(Account::new(
                    &settlement,
                    currency,
                    AccountKind::Settlement,
                    0,
                ));
            }
            ledger
                .post(
                    &format!("open-{id}"),
                    &transfer_legs(&settlement, id, Money::new(balance, currency), None),
                )
                .unwrap();
        }
    }
    let mut overdraft = Account::new("a4", RUB, AccountKind::Customer, 0);
    overdraft.floor_minor = -20_000;
    ledger.open(overdraft);
    for (id, currency, kind) in [
        ("income-RUB", RUB, AccountKind::Income),
        ("income-USD", USD, AccountKind::Income),
        ("pos-RUB", RUB, AccountKind::Position),
        ("pos-USD", USD, AccountKind::Position),
    ] {
        ledger.open(Account::new(id, currency, kind, 0));
    }
    ledger
}

fn balances(ledger: &Ledger) -> Vec<(String, i64, i64)> {
    ledger
        .accounts()
        .map(|a| (a.id.clone(), a.balance_minor, ledger.held(&a.id)))
        .collect()
}

fn check_invariants(ledger: &Ledger, step: &str) {
    for (currency, sum) in ledger.sums() {
        assert_eq!(sum, 0, "{currency} does not sum to zero after {step}");
    }
    for account in ledger.accounts() {
        let available = ledger.available(&account.id).unwrap();
        assert!(
            available >= account.floor_minor,
            "{} is below its floor ({available} < {}) after {step}",
            account.id,
            account.floor_minor
        );
    }
}

const RUB_ACCOUNTS: [&str; 4] = ["a1", "a2", "a3", "a4"];
const USD_ACCOUNTS: [&str; 2] = ["u1", "u2"];

#[test]
fn random_sequences_keep_sums_zero_floors_and_idempotency() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut ledger = bank();
        let mut done: Vec<(String, Vec<Leg>)> = vec![];
        let mut holds: Vec<String> = vec![];
        for step in 0..150 {
            let before = balances(&ledger);
            let id = format!("s{seed}-{step}");
            let what = rng.below(7);
            let result: Result<(), LedgerError> = match what {
                // Transfer in RUB, sometimes with a fee.
                0 | 1 => {
                    let from = *rng.pick(&RUB_ACCOUNTS);
                    let to = *rng.pick(&RUB_ACCOUNTS);
                    let amount = Money::new(1 + rng.below(80_000) as i64, RUB);
                    let fee_minor = fee(amount.minor, 0, rng.below(300) as i64, 0, Some(5_000));
                    let legs = transfer_legs(
                        from,
                        to,
                        amount,
                        Some(("income-RUB", Money::new(fee_minor, RUB))),
                    );
                    let r = ledger.post(&id, &legs).map(|_| ());
                    if r.is_ok() {
                        done.push((id.clone(), legs));
                    }
                    r
                }
                // FX either way through the positions.
                2 => {
                    let rub = *rng.pick(&RUB_ACCOUNTS);
                    let usd = *rng.pick(&USD_ACCOUNTS);
                    let rate = 80_000_000 + rng.below(20_000_000) as i64;
                    let legs = if rng.below(2) == 0 {
                        let amount = Money::new(1 + rng.below(50_000) as i64, RUB);
                        let got = convert(amount.minor, RUB, USD, 1_000_000_000_000 / rate);
                        let got = Money::new(got.unwrap(), USD);
                        fx_legs(rub, usd, amount, got, "pos-RUB", "pos-USD")
                    } else {
                        let amount = Money::new(1 + rng.below(5_000) as i64, USD);
                        let got = Money::new(convert(amount.minor, USD, RUB, rate).unwrap(), RUB);
                        fx_legs(usd, rub, amount, got, "pos-USD", "pos-RUB")
                    };
                    match ledger.post(&id, &legs) {
                        // A conversion too small to buy one minor unit has a zero leg.
                        Err(LedgerError::Empty) => Err(LedgerError::Empty),
                        r => {
                            if r.is_ok() {
                                done.push((id.clone(), legs));
                            }
                            r.map(|_| ())
                        }
                    }
                }
                // Hold.
                3 => {
                    let account = *rng.pick(&RUB_ACCOUNTS);
                    let r = ledger.authorize(&id, account, 1 + rng.below(60_000) as i64);
                    if r.is_ok() {
                        holds.push(id.clone());
                    }
                    r
                }
                // Capture or release a hold.
                4 if !holds.is_empty() => {
                    let index = rng.below(holds.len() as u64) as usize;
                    let hold = holds.swap_remove(index);
                    if rng.below(2) == 0 {
                        ledger.release(&hold)
                    } else {
                        let amount = 1 + rng.below(60_000) as i64;
                        let r = ledger.capture(&hold, "a3", amount).map(|_| ());
                        if r.is_err() {
                            holds.push(hold);
                        }
                        r
                    }
                }
                // Replay of an applied id: same legs change nothing, other legs conflict.
                5 if !done.is_empty() => {
                    let (old_id, legs) = rng.pick(&done).clone();
                    let replay = ledger.post(&old_id, &legs).unwrap();
                    assert!(replay.duplicate);
                    assert_eq!(balances(&ledger), before, "replay changed balances");
                    let mut other = legs.clone();
                    other.swap(0, 1);
                    assert_eq!(
                        ledger.post(&old_id, &other),
                        Err(LedgerError::IdempotencyConflict)
                    );
                    Ok(())
                }
                // An unbalanced set is refused.
                _ => {
                    let legs = vec![
                        Leg::new("a1", Money::new(-100, RUB)),
                        Leg::new("a2", Money::new(99, RUB)),
                    ];
                    let r = ledger.post(&id, &legs).map(|_| ());
                    assert_eq!(r, Err(LedgerError::Unbalanced(RUB)));
                    r
                }
            };
            if result.is_err() {
                assert_eq!(
                    balances(&ledger),
                    before,
                    "a refused step changed balances (seed {seed}, step {step}, {result:?})"
                );
            }
            check_invariants(&ledger, &format!("seed {seed} step {step}"));
        }
    }
}

#[test]
fn closed_accounts_refuse_and_nothing_changes() {
    let mut ledger = bank();
    ledger.close("a2");
    let before = balances(&ledger);
    let legs = transfer_legs("a1", "a2", Money::new(100, RUB), None);
    assert_eq!(
        ledger.post("x", &legs),
        Err(LedgerError::AccountClosed("a2".into()))
    );
    assert_eq!(balances(&ledger), before);
    // And the id stays free.
    ledger.open(Account::new("a2", RUB, AccountKind::Customer, 50_000));
    assert!(ledger.post("x", &legs).is_ok());
}

#[test]
fn overdraft_floor_and_holds() {
    let mut ledger = bank();
    // a4 has no money but a 200.00 overdraft.
    let legs = transfer_legs("a4", "a3", Money::new(20_000, RUB), None);
    assert!(ledger.post("od", &legs).is_ok());
    let legs = transfer_legs("a4", "a3", Money::new(1, RUB), None);
    assert_eq!(
        ledger.post("od2", &legs),
        Err(LedgerError::InsufficientFunds("a4".into()))
    );
    // A hold reserves: the rest of the balance is all that can move.
    ledger.authorize("h1", "a2", 40_000).unwrap();
    let legs = transfer_legs("a2", "a3", Money::new(10_001, RUB), None);
    assert!(matches!(
        ledger.post("t", &legs),
        Err(LedgerError::InsufficientFunds(_))
    ));
    let posted = ledger.capture("h1", "a3", 30_000).unwrap();
    assert_eq!(ledger.account("a2").unwrap().balance_minor, 20_000);
    assert_eq!(ledger.held("a2"), 0, "the uncaptured rest is released");
    assert!(!posted.duplicate);
    assert_eq!(ledger.release("h1"), Err(LedgerError::UnknownHold));
}

#[test]
fn fees_go_to_income() {
    let mut ledger = bank();
    let amount = Money::new(10_000, RUB);
    let fee_minor = fee(amount.minor, 0, 100, 3_000, None); // 1 %, at least 30.00
    assert_eq!(fee_minor, 3_000);
    let legs = transfer_legs(
        "a1",
        "a3",
        amount,
        Some(("income-RUB", Money::new(fee_minor, RUB))),
    );
    ledger.post("f", &legs).unwrap();
    assert_eq!(ledger.account("income-RUB").unwrap().balance_minor, 3_000);
    assert_eq!(ledger.account("a1").unwrap().balance_minor, 87_000);
    check_invariants(&ledger, "fee");
}

#[test]
fn fee_rounding_is_up_to_the_minor_unit_and_clamped() {
    // (amount, fixed, bp, min, max) → fee
    let cases = [
        (10_000, 0, 0, 0, None, 0),
        (10_000, 0, 150, 0, None, 150),
        (1, 0, 1, 0, None, 1),     // 0.0001 of a kopeck rounds up to one
        (333, 0, 100, 0, None, 4), // 3.33 → 4
        (100_000, 5_000, 50, 0, Some(5_200), 5_200),
        (100, 0, 10, 1_000, None, 1_000),
    ];
    for (amount, fixed, bp, min, max, expected) in cases {
        assert_eq!(
            fee(amount, fixed, bp, min, max),
            expected,
            "{amount} {bp}bp"
        );
    }
}

#[test]
fn fx_rounding_is_down_in_the_banks_favour() {
    let jpy = Currency::parse("JPY").unwrap();
    let kwd = Currency::parse("KWD").unwrap();
    // (amount, from, to, rate_e6) → converted
    let cases = [
        (10_000, USD, RUB, 92_500_000, Some(925_000)), // 100.00 USD at 92.50 = 9250.00 RUB
        (1, RUB, USD, 10_810, Some(0)),                // 0.01 RUB buys nothing
        (9_250, RUB, USD, 10_810, Some(99)),           // 92.50 RUB at 0.01081 = 0.9999 → 0.99
        (100, USD, jpy, 151_230_000, Some(151)),       // 1.00 USD at 151.23 → 151 JPY
        (1_000, jpy, USD, 6_612, Some(661)),           // 1000 JPY at 0.006612 = 6.612 → 6.61
        (1_000, USD, kwd, 307_000, Some(3_070)),       // 10.00 USD → 3.070 KWD
        (-1, USD, RUB, 1, None),
        (1, USD, RUB, 0, None),
        (i64::MAX, USD, RUB, i64::MAX, None),
    ];
    for (amount, from, to, rate, expected) in cases {
        let got = convert(amount, from, to, rate);
        assert_eq!(got, expected, "{amount} {from}->{to} at {rate}");
    }
}
