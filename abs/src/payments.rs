//! `abs.cmd.payment`: a payment order turned into a balanced posting set (fees to the
//! bank's income, FX through its positions), written atomically by the store and published
//! as Cache Control changes to every customer it touches.

use kernel::change::{ChangeSink, SinkError};
use kernel::payment::{CommandError, Destination, PaymentCommand, PaymentReceipt};
use kernel::store::{AbsLeg, AbsProduct, AbsTransfer, StoreError};
use kernel::{Change, ChangeBody, Currency, CustomerId, Money};
use serde_json::Value;

use crate::Abs;
use crate::ledger::{self, Leg};

/// The bank's fee income account in a currency.
pub fn income_account(currency: Currency) -> String {
    format!("income-{currency}")
}

/// The bank's currency position account.
pub fn position_account(currency: Currency) -> String {
    format!("pos-{currency}")
}

/// Attempts to hand the changes to the sink before giving up (logged).
const PUBLISH_ATTEMPTS: u32 = 5;

fn err(code: &str, detail: impl Into<String>) -> CommandError {
    CommandError::new(code, detail)
}

pub(crate) fn store_err(error: StoreError) -> CommandError {
    match error {
        StoreError::NotFound => err("account_not_found", "no such account"),
        StoreError::Refused(code) => err(code, code.replace('_', " ")),
        other => err("unavailable", other.to_string()),
    }
}

/// The floor of a product: customers' accounts may not go negative (an `overdraft` in the
/// details lowers it), the bank's own accounts and loans have none.
pub(crate) fn floor(product: &AbsProduct) -> i64 {
    match product.kind.as_str() {
        "internal" | "loan" => i64::MIN,
        _ => product
            .details
            .get("overdraft_minor")
            .and_then(Value::as_i64)
            .map_or(0, |overdraft| -overdraft.abs()),
    }
}

fn currency_of(product: &AbsProduct) -> Result<Currency, CommandError> {
    Currency::parse(&product.currency).map_err(|_| err("unavailable", "bad account currency"))
}

impl Abs {
    /// Executes a payment order (idempotent by its id).
    pub async fn pay(&self, command: &PaymentCommand) -> Result<PaymentReceipt, CommandError> {
        self.pay_or_capture(command, None).await
    }

    /// A payment order, or (with `hold_id`) the capture of a hold: the same transfer,
    /// written by `abs_capture` so the debit is at most the hold and the hold ends with it.
    pub(crate) async fn pay_or_capture(
        &self,
        command: &PaymentCommand,
        hold_id: Option<&str>,
    ) -> Result<PaymentReceipt, CommandError> {
        if command.id.is_empty() || command.id.len() > 100 {
            return Err(err("invalid_command", "id must be 1 to 100 characters"));
        }
        if command.amount.minor <= 0 {
            return Err(err("invalid_command", "amount must be positive"));
        }
        if let Some(fee) = command.fee
            && (fee.minor < 0 || fee.currency != command.amount.currency)
        {
            return Err(err(
                "invalid_command",
                "fee must be non-negative, in the amount's currency",
            ));
        }
        let store = &self.store;
        let not_found = || err("account_not_found", "no such account");
        // The payer's account: theirs, active; a card pays from its account unless blocked.
        let mut from = store
            .abs_account(&command.from)
            .await
            .map_err(store_err)?
            .filter(|p| p.customer_id == command.customer_id)
            .ok_or_else(not_found)?;
        if from.kind == "card" {
            if from.status == "blocked" {
                return Err(err("card_blocked", "the card is blocked"));
            }
            if from.status != "active" {
                return Err(err("account_closed", "the card is not active"));
            }
            let account = from
                .details
                .get("account_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            from = store
                .abs_account(&account)
                .await
                .map_err(store_err)?
                .filter(|p| p.customer_id == command.customer_id)
                .ok_or_else(not_found)?;
        }
        if from.kind != "account" && from.kind != "deposit" {
            return Err(err("invalid_command", "payments leave from an account"));
        }
        if from.status != "active" {
            return Err(err("account_closed", "the account is closed"));
        }
        let from_currency = currency_of(&from)?;
        if from_currency != command.amount.currency {
            return Err(err(
                "currency_mismatch",
                "amount is not in the account's currency",
            ));
        }
        let to = self.destination(command, from_currency).await?;
        if to.id == from.id {
            return Err(err("invalid_command", "the payee is the paying account"));
        }
        if to.status != "active" {
            return Err(err("account_closed", "the payee's account is closed"));
        }
        let to_currency = currency_of(&to)?;

        // The legs, planned by the pure ledger.
        let fee = command.fee.filter(|f| f.minor > 0);
        let income = income_account(from_currency);
        // A quoted conversion: the quote's terms, if it is this customer's, intact, unexpired
        // and for exactly this amount and pair.
        let quote = match &command.quote {
            Some(token) => {
                let quote = self
                    .check_quote(&command.customer_id, token)
                    .await
                    .map_err(|failure| match failure {
                        crate::QuoteFailure::Quote(e) => err(e.code(), e.to_string()),
                        crate::QuoteFailure::Abs(e) => err("unavailable", e.to_string()),
                    })?;
                if quote.amount != command.amount || quote.credited.currency != to_currency {
                    return Err(err(
                        "quote_mismatch",
                        "the quote is for another amount or currency pair",
                    ));
                }
                Some(quote)
            }
            None => None,
        };
        let (mut legs, credited, rate_e6) = if to_currency == from_currency {
            (
                ledger::transfer_legs(&from.id, &to.id, command.amount, None),
                None,
                None,
            )
        } else {
            let (rate, converted) = match &quote {
                Some(quote) => (quote.rate_e6, quote.credited.minor),
                None => {
                    let rate =
                        crate::rates::customer_rate(&self.rates(), from_currency, to_currency)
                            .ok_or_else(|| {
                                err("currency_mismatch", "the bank does not convert this pair")
                            })?;
                    let converted =
                        ledger::convert(command.amount.minor, from_currency, to_currency, rate)
                            .filter(|minor| *minor > 0)
                            .ok_or_else(|| err("invalid_command", "amount too small to convert"))?;
                    (rate, converted)
                }
            };
            let converted = Money::new(converted, to_currency);
            (
                ledger::fx_legs(
                    &from.id,
                    &to.id,
                    command.amount,
                    converted,
                    &position_account(from_currency),
                    &position_account(to_currency),
                ),
                Some(converted),
                Some(rate),
            )
        };
        if let Some(fee) = fee {
            legs.push(Leg::new(&from.id, Money::new(-fee.minor, fee.currency)));
            legs.push(Leg::new(&income, fee));
        }
        let floors = |id: &str| {
            if id == from.id {
                floor(&from)
            } else if id == to.id {
                floor(&to)
            } else {
                i64::MIN
            }
        };
        let payer = store
            .abs_customer(&command.customer_id)
            .await
            .map_err(store_err)?
            .map(|c| c.name);
        let payee = if to.kind == "internal" || to.customer_id == command.customer_id {
            None
        } else {
            store
                .abs_customer(&to.customer_id)
                .await
                .map_err(store_err)?
                .map(|c| c.name)
        };
        let transfer = AbsTransfer {
            id: command.id.clone(),
            legs: legs
                .iter()
                .map(|leg| AbsLeg {
                    account_id: leg.account_id.clone(),
                    amount_minor: leg.amount_minor,
                    currency: leg.currency.code().to_owned(),
                    floor_minor: floors(&leg.account_id),
                })
                .collect(),
            description: command.description.clone(),
            counterparty: payee.clone(),
        };
        let result = match hold_id {
            Some(hold_id) => store.abs_capture(hold_id, &transfer).await,
            None => store.abs_transfer(&transfer).await,
        }
        .map_err(|e| match e {
            StoreError::NotFound if hold_id.is_some() => err("hold_not_found", "no such hold"),
            other => store_err(other),
        })?;

        // Changes for every customer leg: a transaction per leg, then each account's balance.
        let fee_legs = if fee.is_some() { 2 } else { 0 };
        let mut changes = vec![];
        let mut balances: Vec<(CustomerId, String, Money)> = vec![];
        for (ord, leg) in result.legs.iter().enumerate() {
            if leg.kind == "internal" {
                continue;
            }
            let currency = Currency::parse(&leg.currency)
                .map_err(|_| err("unavailable", "bad leg currency"))?;
            let balance = Money::new(leg.balance_minor, currency);
            let is_fee = ord >= result.legs.len() - fee_legs;
            let incoming = leg.customer_id != command.customer_id;
            let description = if is_fee {
                format!("Fee: {}", command.description)
            } else {
                command.description.clone()
            };
            changes.push(Change {
                id: format!("tx-{}-{ord}", command.id),
                customer_id: leg.customer_id.clone(),
                at: result.at,
                body: ChangeBody::TransactionPosted {
                    account_id: leg.account_id.clone(),
                    amount: Money::new(leg.amount_minor, currency),
                    balance,
                    description,
                    mcc: None,
                    counterparty: if incoming {
                        payer.clone()
                    } else {
                        payee.clone()
                    },
                },
            });
            match balances.iter_mut().find(|(_, id, _)| *id == leg.account_id) {
                Some(entry) => entry.2 = balance,
                None => balances.push((leg.customer_id.clone(), leg.account_id.clone(), balance)),
            }
        }
        for (customer_id, account_id, balance) in balances {
            changes.push(Change {
                id: format!("bal-{}-{account_id}", command.id),
                customer_id,
                at: result.at,
                body: ChangeBody::BalanceChanged {
                    account_id,
                    balance,
                },
            });
        }
        // Published in the background: the ordering customer's actor is waiting for this
        // answer (it commits its own changes with the payment), and a local sink would queue
        // behind it. A repeated command publishes the same ids again; actors drop duplicates.
        let sink = self.sink.clone();
        let published = changes.clone();
        tokio::spawn(async move { publish(sink, published).await });
        Ok(PaymentReceipt {
            transfer_id: command.id.clone(),
            changes,
            credited,
            rate_e6,
            payee,
            duplicate: result.duplicate,
        })
    }

    async fn destination(
        &self,
        command: &PaymentCommand,
        currency: Currency,
    ) -> Result<AbsProduct, CommandError> {
        let store = &self.store;
        let payee_not_found = || err("payee_not_found", "no such payee");
        match &command.to {
            Destination::Account { account_id, own } => {
                let account = store.abs_account(account_id).await.map_err(store_err)?;
                let account = match account {
                    Some(a) if *own && a.customer_id != command.customer_id => None,
                    other => other,
                };
                account
                    .filter(|a| a.kind == "account" || a.kind == "deposit")
                    .ok_or_else(|| {
                        if *own {
                            err("account_not_found", "no such account")
                        } else {
                            payee_not_found()
                        }
                    })
            }
            Destination::Phone { phone } => {
                let customer = store
                    .abs_customer_by_phone(phone)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(payee_not_found)?;
                let accounts: Vec<AbsProduct> = store
                    .abs_products(&customer.id)
                    .await
                    .map_err(store_err)?
                    .into_iter()
                    .filter(|p| p.kind == "account" && p.status == "active")
                    .collect();
                let same = accounts
                    .iter()
                    .position(|a| a.currency == currency.code())
                    .unwrap_or(0);
                accounts.into_iter().nth(same).ok_or_else(payee_not_found)
            }
            Destination::AccountNumber { number } => {
                let id = crate::demo::account_by_number(number).ok_or_else(payee_not_found)?;
                store
                    .abs_account(&id)
                    .await
                    .map_err(store_err)?
                    .filter(|a| {
                        a.details.get("number").and_then(Value::as_str) == Some(number.as_str())
                    })
                    .ok_or_else(payee_not_found)
            }
            Destination::Settlement { account_id, .. } => store
                .abs_account(account_id)
                .await
                .map_err(store_err)?
                .filter(|a| a.kind == "internal" && a.id.starts_with("settle-"))
                .ok_or_else(payee_not_found),
        }
    }
}

async fn publish(sink: std::sync::Arc<dyn ChangeSink>, changes: Vec<Change>) {
    let mut backoff = std::time::Duration::from_millis(50);
    for _ in 0..PUBLISH_ATTEMPTS {
        match sink.submit(changes.clone()).await {
            Ok(_) => return,
            Err(SinkError::UnknownCustomer(customer)) => {
                tracing::warn!(%customer, "payment changes for an unknown customer");
                return;
            }
            Err(SinkError::Unavailable(error)) => {
                tracing::warn!(%error, "publishing payment changes; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    tracing::error!("payment changes not published; a repeated command publishes them again");
}
