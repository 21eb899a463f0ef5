//! The reference ledger as a pure core: double-entry accounts and posting sets in integer
//! minor units, holds, fees to the bank's income account and FX through position accounts.
//! No I/O: the store (`AbsStore::abs_transfer`) persists the same rules atomically, and
//! [`Abs`](crate::Abs) plans the legs here before it asks the store to write them.
//!
//! # Rules
//!
//! - A posting set is a list of legs (account, signed amount, currency). It must balance:
//!   **per currency**, its legs sum to zero. So the sum of all postings of the ledger is
//!   zero in every currency, always.
//! - Every account has a floor: a balance it may never end below. Customer accounts have 0
//!   (or their overdraft, negative); the bank's own accounts (income, FX position,
//!   settlement) have none (`i64::MIN`). A set that would take any account below its floor
//!   is refused whole.
//! - A hold reserves money: the *available* amount is `balance - held`, and it is what the
//!   floor is checked against. A hold is captured (turned into a posting set of at most the
//!   held amount) or released.
//! - Idempotency: a posting set or hold id is applied once; the same id with the same legs
//!   answers the first outcome again, with other legs it is refused (`idempotency_conflict`).
//!
//! # FX rounding (documented and tested)
//!
//! A rate is a fixed-point number with [`RATE_SCALE`] (10^6) as its unit: `rate_e6` major
//! units of the quote currency per major unit of the base. Converting `a` minor units of the
//! base gives `floor(a × rate_e6 × 10^e_quote / (10^6 × 10^e_base))` minor units of the
//! quote (`e` = the currency's exponent), **rounded down, in the bank's favour**, computed in
//! `i128` so it never overflows silently. The customer never receives a fraction of a minor
//! unit more than the rate gives; what the rounding keeps stays in the bank's position
//! accounts, each currency still summing to zero.

use std::collections::BTreeMap;

use kernel::{Currency, Money};
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// The unit of a fixed-point rate: `rate_e6 = 1_000_000` means 1:1.
pub const RATE_SCALE: i128 = 1_000_000;

/// What an account is for; decides its default floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A customer's account (current, deposit, card account).
    Customer,
    /// The bank's fee income, one per currency.
    Income,
    /// The bank's currency position, one per currency: FX goes through it.
    Position,
    /// Settlement with billers, operators, the treasury.
    Settlement,
}

impl AccountKind {
    /// The default floor: customers cannot go negative, the bank's own accounts can.
    pub fn default_floor(self) -> i64 {
        match self {
            AccountKind::Customer => 0,
            _ => i64::MIN,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub currency: Currency,
    pub kind: AccountKind,
    pub floor_minor: i64,
    pub balance_minor: i64,
    pub closed: bool,
}

impl Account {
    pub fn new(id: &str, currency: Currency, kind: AccountKind, balance_minor: i64) -> Self {
        Self {
            id: id.to_owned(),
            currency,
            kind,
            floor_minor: kind.default_floor(),
            balance_minor,
            closed: false,
        }
    }
}

/// One side of a posting: `amount_minor` added to the account (negative: a debit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub account_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Leg {
    pub fn new(account_id: &str, money: Money) -> Self {
        Self {
            account_id: account_id.to_owned(),
            amount_minor: money.minor,
            currency: money.currency,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("no such account {0:?}")]
    UnknownAccount(String),
    #[error("account {0:?} is closed")]
    AccountClosed(String),
    #[error("insufficient funds on {0:?}")]
    InsufficientFunds(String),
    #[error("the legs do not sum to zero in {0}")]
    Unbalanced(Currency),
    #[error("leg currency differs from account {0:?}")]
    CurrencyMismatch(String),
    #[error("a posting set needs at least two legs, none of them zero")]
    Empty,
    #[error("amount out of range")]
    Overflow,
    #[error("this id was used with another request")]
    IdempotencyConflict,
    #[error("no such hold")]
    UnknownHold,
    #[error("capture exceeds the hold")]
    CaptureExceedsHold,
}

impl LedgerError {
    /// The stable code (the same the store's `Refused` carries).
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::UnknownAccount(_) => "account_not_found",
            LedgerError::AccountClosed(_) => "account_closed",
            LedgerError::InsufficientFunds(_) => "insufficient_funds",
            LedgerError::Unbalanced(_) => "unbalanced",
            LedgerError::CurrencyMismatch(_) => "currency_mismatch",
            LedgerError::Empty => "invalid_posting",
            LedgerError::Overflow => "amount_out_of_range",
            LedgerError::IdempotencyConflict => "idempotency_conflict",
            LedgerError::UnknownHold => "hold_not_found",
            LedgerError::CaptureExceedsHold => "capture_exceeds_hold",
        }
    }
}

/// Checks the shape of a posting set: legs non-zero and balanced per currency.
pub fn check_balanced(legs: &[Leg]) -> Result<(), LedgerError> {
    if legs.len() < 2 || legs.iter().any(|l| l.amount_minor == 0) {
        return Err(LedgerError::Empty);
    }
    let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
    for leg in legs {
        *sums.entry(leg.currency).or_default() += i128::from(leg.amount_minor);
    }
    match sums.into_iter().find(|(_, sum)| *sum != 0) {
        Some((currency, _)) => Err(LedgerError::Unbalanced(currency)),
        None => Ok(()),
    }
}

/// A rate between two currencies with the bank's spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub base: Currency,
    pub quote: Currency,
    /// What the bank pays in quote per base (the customer sells base).
    pub buy_e6: i64,
    /// What the bank charges in quote per base (the customer buys base).
    pub sell_e6: i64,
}

/// Converts `amount_minor` of `from` into minor units of `to` at `rate_e6` (quote per base,
/// `from` being the base), rounded down (see the module docs).
pub fn convert(amount_minor: i64, from: Currency, to: Currency, rate_e6: i64) -> Option<i64> {
    if amount_minor < 0 || rate_e6 <= 0 {
        return None;
    }
    let scale_from = 10_i128.pow(u32::from(from.exponent()));
    let scale_to = 10_i128.pow(u32::from(to.exponent()));
    let numerator = i128::from(amount_minor)
        .checked_mul(i128::from(rate_e6))?
        .checked_mul(scale_to)?;
    let result = numerator / (RATE_SCALE * scale_from);
    i64::try_from(result).ok()
}

/// The legs of a transfer of `amount` from one account to another of the same currency,
/// with an optional fee (debited from the payer, credited to `income`).
pub fn transfer_legs(from: &str, to: &str, amount: Money, fee: Option<(&str, Money)>) -> Vec<Leg> {
    let mut legs = vec![
        Leg::new(from, Money::new(-amount.minor, amount.currency)),
        Leg::new(to, amount),
    ];
    if let Some((income, fee)) = fee.filter(|(_, fee)| fee.minor > 0) {
        legs.push(Leg::new(from, Money::new(-fee.minor, fee.currency)));
        legs.push(Leg::new(income, fee));
    }
    legs
}

/// The legs of an FX transfer: `amount` leaves `from` into the bank's position in its
/// currency, `converted` leaves the bank's position in the other currency into `to`.
/// Each currency balances on its own.
pub fn fx_legs(
    from: &str,
    to: &str,
    amount: Money,
    converted: Money,
    position_from: &str,
    position_to: &str,
) -> Vec<Leg> {
    vec![
        Leg::new(from, Money::new(-amount.minor, amount.currency)),
        Leg::new(position_from, amount),
        Leg::new(
            position_to,
            Money::new(-converted.minor, converted.currency),
        ),
        Leg::new(to, converted),
    ]
}

pub use domain::payments::fee;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub account_id: String,
    pub amount_minor: i64,
}

/// The outcome of a posting set: each leg's account balance after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub balances: Vec<(String, i64)>,
    pub duplicate: bool,
}

/// An in-memory ledger with the full rules; the model the store is tested against.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    accounts: BTreeMap<String, Account>,
    holds: BTreeMap<String, Hold>,
    applied: BTreeMap<String, (Vec<Leg>, Posted)>,
    /// Every leg ever posted, for the sum check.
    journal: Vec<Leg>,
}

impl Ledger {
    pub fn open(&mut self, account: Account) {
        self.accounts.insert(account.id.clone(), account);
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn close(&mut self, id: &str) {
        if let Some(account) = self.accounts.get_mut(id) {
            account.closed = true;
        }
    }

    pub fn held(&self, id: &str) -> i64 {
        self.holds
            .values()
            .filter(|h| h.account_id == id)
            .map(|h| h.amount_minor)
            .sum()
    }

    /// Balance less what holds reserve.
    pub fn available(&self, id: &str) -> Option<i64> {
        let account = self.accounts.get(id)?;
        account.balance_minor.checked_sub(self.held(id))
    }

    /// Sum of every posted leg per currency: zero for each, always.
    pub fn sums(&self) -> BTreeMap<Currency, i128> {
        let mut sums = BTreeMap::new();
        for leg in &self.journal {
            *sums.entry(leg.currency).or_default() += i128::from(leg.amount_minor);
        }
        sums
    }

    /// Applies a posting set whole or not at all.
    pub fn post(&mut self, id: &str, legs: &[Leg]) -> Result<Posted, LedgerError> {
        self.post_excluding_hold(id, legs, None)
    }

    fn post_excluding_hold(
        &mut self,
        id: &str,
        legs: &[Leg],
        released: Option<&Hold>,
    ) -> Result<Posted, LedgerError> {
        if let Some((first_legs, outcome)) = self.applied.get(id) {
            if first_legs != legs {
                return Err(LedgerError::IdempotencyConflict);
            }
            return Ok(Posted {
                duplicate: true,
                ..outcome.clone()
            });
        }
        check_balanced(legs)?;
        // Net effect per account, then check each against its floor (less holds).
        let mut net: BTreeMap<&str, i64> = BTreeMap::new();
        for leg in legs {
            let account = self
                .accounts
                .get(&leg.account_id)
                .ok_or_else(|| LedgerError::UnknownAccount(leg.account_id.clone()))?;
            if account.closed {
                return Err(LedgerError::AccountClosed(leg.account_id.clone()));
            }
            if account.currency != leg.currency {
                return Err(LedgerError::CurrencyMismatch(leg.account_id.clone()));
            }
            let entry = net.entry(leg.account_id.as_str()).or_default();
            *entry = entry
                .checked_add(leg.amount_minor)
                .ok_or(LedgerError::Overflow)?;
        }
        let mut after: BTreeMap<String, i64> = BTreeMap::new();
        for (id, delta) in &net {
            let account = &self.accounts[*id];
            let balance = account
                .balance_minor
                .checked_add(*delta)
                .ok_or(LedgerError::Overflow)?;
            let mut held = self.held(id);
            if let Some(hold) = released.filter(|h| h.account_id == *id) {
                held -= hold.amount_minor;
            }
            let available = balance.checked_sub(held).ok_or(LedgerError::Overflow)?;
            if *delta < 0 && available < account.floor_minor {
                return Err(LedgerError::InsufficientFunds((*id).to_owned()));
            }
            after.insert((*id).to_owned(), balance);
        }
        for (id, balance) in &after {
            if let Some(account) = self.accounts.get_mut(id) {
                account.balance_minor = *balance;
            }
        }
        self.journal.extend(legs.iter().cloned());
        let posted = Posted {
            balances: legs
                .iter()
                .map(|l| (l.account_id.clone(), after[&l.account_id]))
                .collect(),
            duplicate: false,
        };
        self.applied
            .insert(id.to_owned(), (legs.to_vec(), posted.clone()));
        Ok(posted)
    }

    /// Reserves `amount_minor` on the account; refused when it would take the available
    /// amount below the floor. Idempotent by id.
    pub fn authorize(
        &mut self,
        hold_id: &str,
        account_id: &str,
        amount_minor: i64,
    ) -> Result<(), LedgerError> {
        if let Some(hold) = self.holds.get(hold_id) {
            return if hold.account_id == account_id && hold.amount_minor == amount_minor {
                Ok(())
            } else {
                Err(LedgerError::IdempotencyConflict)
            };
        }
        if amount_minor <= 0 {
            return Err(LedgerError::Empty);
        }
        let account = self
            .accounts
            .get(account_id)
            .ok_or_else(|| LedgerError::UnknownAccount(account_id.to_owned()))?;
        if account.closed {
            return Err(LedgerError::AccountClosed(account_id.to_owned()));
        }
        let available = self.available(account_id).ok_or(LedgerError::Overflow)?;
        if available
            .checked_sub(amount_minor)
            .is_none_or(|left| left < account.floor_minor)
        {
            return Err(LedgerError::InsufficientFunds(account_id.to_owned()));
        }
        self.holds.insert(
            hold_id.to_owned(),
            Hold {
                account_id: account_id.to_owned(),
                amount_minor,
            },
        );
        Ok(())
    }

    /// Turns a hold into a posting of `amount_minor` (at most the hold) to `to`; the rest
    /// of the hold is released.
    pub fn capture(
        &mut self,
        hold_id: &str,
        to: &str,
        amount_minor: i64,
    ) -> Result<Posted, LedgerError> {
        let hold = self
            .holds
            .get(hold_id)
            .cloned()
            .ok_or(LedgerError::UnknownHold)?;
        if amount_minor <= 0 || amount_minor > hold.amount_minor {
            return Err(LedgerError::CaptureExceedsHold);
        }
        let currency = self.accounts[&hold.account_id].currency;
        let legs = transfer_legs(
            &hold.account_id,
            to,
            Money::new(amount_minor, currency),
            None,
        );
        let posted = self.post_excluding_hold(&format!("capture-{hold_id}"), &legs, Some(&hold))?;
        self.holds.remove(hold_id);
        Ok(posted)
    }

    pub fn release(&mut self, hold_id: &str) -> Result<(), LedgerError> {
        self.holds
            .remove(hold_id)
            .map(|_| ())
            .ok_or(LedgerError::UnknownHold)
    }
}
