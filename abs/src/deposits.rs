//! `abs.cmd.deposit.open`: the reference ABS opens a deposit from one of the customer's
//! accounts. The deposit product and the ONE ledger transfer that funds it (account debited,
//! deposit credited; the legs sum to zero) are written in one store transaction
//! (`AbsStore::abs_open_product`), so a crash leaves neither or both. The deposit's id is
//! derived from the customer and the client's idempotency key, so a retry finds the same
//! deposit and moves no money again; the changes (`product_opened`, then each leg's
//! `transaction_posted` and `balance_changed`) are published again under the same ids, which
//! the actors drop as duplicates.
//!
//! Request: `{"customer_id", "from", "amount": money, "term_months", "key"}`. Reply:
//! `{"ok": {"id", "from", "amount", "term_months", "rate", "opened", "ends",
//! "interest_expected"}}` or `{"err": {"code", "detail"}}` with `code` one of
//! `account_not_found` (no such account, another customer's, or not an account),
//! `account_closed`, `insufficient_funds`, `invalid_field` (term, amount, currency; `field`
//! names it), `limit_exceeded` (too many deposits), `idempotency_conflict` (the key opened
//! another deposit), `bad_request`, `unavailable`.

use kernel::store::{AbsLeg, AbsProduct, AbsTransfer, StoreError};
use kernel::{Change, ChangeBody, Currency, CustomerId, Money};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Abs;

/// Open deposits a customer may hold; beyond, opening one is `limit_exceeded` (the customer's
/// state holds every product).
pub const MAX_DEPOSITS_PER_CUSTOMER: usize = 20;

#[derive(Deserialize)]
struct OpenDeposit {
    customer_id: CustomerId,
    from: String,
    amount: Money,
    term_months: u32,
    key: String,
}

fn refuse(code: &str, detail: impl Into<String>, field: Option<&str>) -> Value {
    let mut err = json!({"code": code, "detail": detail.into()});
    if let Some(field) = field {
        err["field"] = json!(field);
    }
    json!({ "err": err })
}

/// The deposit's id: stable for a customer and key.
fn deposit_id(customer_id: &CustomerId, key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(customer_id.as_str())
        .chain_update([0u8])
        .chain_update(key)
        .finalize();
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("dep-{hex}")
}

impl Abs {
    pub(crate) async fn answer_deposit_open(&self, payload: &[u8]) -> Value {
        let Ok(command) = serde_json::from_slice::<OpenDeposit>(payload) else {
            return refuse(
                "bad_request",
                "expected {\"customer_id\", \"from\", \"amount\", \"term_months\", \"key\"}",
                None,
            );
        };
        self.open_deposit(&command)
            .await
            .unwrap_or_else(|refusal| refusal)
    }

    async fn open_deposit(&self, command: &OpenDeposit) -> Result<Value, Value> {
        if command.key.is_empty() || command.key.len() > 255 || command.from.len() > 64 {
            return Err(refuse(
                "bad_request",
                "account id or key out of bounds",
                None,
            ));
        }
        let unavailable = |e: StoreError| refuse("unavailable", e.to_string(), None);
        let not_found = || refuse("account_not_found", "no such account", None);
        let store = &self.store;
        let account = store
            .abs_account(&command.from)
            .await
            .map_err(unavailable)?
            .filter(|p| p.customer_id == command.customer_id && p.kind == "account")
            .ok_or_else(not_found)?;
        if account.status != "active" {
            return Err(refuse("account_closed", "the account is not active", None));
        }
        let currency = Currency::parse(&account.currency)
            .map_err(|_| refuse("unavailable", "the account's currency is unknown", None))?;
        let id = deposit_id(&command.customer_id, &command.key);
        let existing = store.abs_account(&id).await.map_err(unavailable)?;
        // A retry's deposit is dated as it was opened; a new one today.
        let opened = existing
            .as_ref()
            .and_then(|d| d.details.get("opened"))
            .and_then(Value::as_str)
            .and_then(|raw| {
                time::Date::parse(
                    raw,
                    time::macros::format_description!("[year]-[month]-[day]"),
                )
                .ok()
            })
            .unwrap_or_else(|| kernel::now().date());
        let terms = domain::products::new_deposit_terms(
            command.amount,
            command.term_months,
            currency,
            opened,
        )
        .map_err(|e| refuse("invalid_field", e.to_string(), Some(e.field())))?;
        if existing.is_none() {
            let held = store
                .abs_products(&command.customer_id)
                .await
                .map_err(unavailable)?
                .iter()
                .filter(|p| p.kind == "deposit" && p.status != "closed")
                .count();
            if held >= MAX_DEPOSITS_PER_CUSTOMER {
                return Err(refuse(
                    "limit_exceeded",
                    format!("at most {MAX_DEPOSITS_PER_CUSTOMER} deposits"),
                    None,
                ));
            }
        }
        let rate = domain::products::DEPOSIT_RATES
            .iter()
            .find(|(term, _)| *term == command.term_months)
            .map(|(_, rate)| *rate)
            .unwrap_or_default();
        let details = json!({
            "rate": rate,
            "opened": domain::products::iso(terms.opened),
            "ends": domain::products::iso(terms.ends),
            "term_months": command.term_months,
            "account_id": command.from,
        });
        let title = format!("Deposit, {} months", command.term_months);
        let product = AbsProduct {
            id: id.clone(),
            customer_id: command.customer_id.clone(),
            kind: "deposit".into(),
            title: title.clone(),
            status: "active".into(),
            currency: account.currency.clone(),
            balance_minor: 0,
            details: details.clone(),
        };
        let transfer = AbsTransfer {
            id: format!("open-{id}"),
            legs: vec![
                AbsLeg {
                    account_id: command.from.clone(),
                    amount_minor: -command.amount.minor,
                    currency: account.currency.clone(),
                    floor_minor: crate::payments::floor(&account),
                },
                AbsLeg {
                    account_id: id.clone(),
                    amount_minor: command.amount.minor,
                    currency: account.currency.clone(),
                    floor_minor: 0,
                },
            ],
            description: title.clone(),
            counterparty: None,
        };
        let result = store
            .abs_open_product(&product, &transfer)
            .await
            .map_err(|e| match e {
                StoreError::Refused("insufficient_funds") => refuse(
                    "insufficient_funds",
                    "not enough money on the account",
                    None,
                ),
                StoreError::Refused("account_closed") => {
                    refuse("account_closed", "the account is not active", None)
                }
                StoreError::Refused("idempotency_conflict") => refuse(
                    "idempotency_conflict",
                    "this Idempotency-Key opened another deposit",
                    None,
                ),
                other => unavailable(other),
            })?;

        // The product first, in a submission of its own (an actor decides a batch against its
        // state before the batch), so the actor knows the deposit when its posting arrives.
        let zero = Money::new(0, currency);
        let opened_change = Change {
            id: format!("opened-{id}"),
            customer_id: command.customer_id.clone(),
            at: result.at,
            body: ChangeBody::ProductOpened {
                product_id: id.clone(),
                product_kind: "deposit".into(),
                title: title.clone(),
                status: "active".into(),
                balance: zero,
                details: details.as_object().cloned().unwrap_or_default(),
            },
        };
        self.sink
            .submit(vec![opened_change])
            .await
            .map_err(|e| refuse("unavailable", e.to_string(), None))?;
        let mut changes = vec![];
        for (ord, leg) in result.legs.iter().enumerate() {
            let balance = Money::new(leg.balance_minor, currency);
            changes.push(Change {
                id: format!("tx-{}-{ord}", transfer.id),
                customer_id: leg.customer_id.clone(),
                at: result.at,
                body: ChangeBody::TransactionPosted {
                    account_id: leg.account_id.clone(),
                    amount: Money::new(leg.amount_minor, currency),
                    balance,
                    description: title.clone(),
                    mcc: None,
                    counterparty: None,
                },
            });
            changes.push(Change {
                id: format!("bal-{}-{}", transfer.id, leg.account_id),
                customer_id: leg.customer_id.clone(),
                at: result.at,
                body: ChangeBody::BalanceChanged {
                    account_id: leg.account_id.clone(),
                    balance,
                },
            });
        }
        self.sink
            .submit(changes)
            .await
            .map_err(|e| refuse("unavailable", e.to_string(), None))?;
        Ok(json!({"ok": {
            "id": id,
            "from": command.from,
            "amount": command.amount,
            "term_months": command.term_months,
            "rate": rate,
            "opened": domain::products::iso(terms.opened),
            "ends": domain::products::iso(terms.ends),
            "interest_expected": terms.interest_expected(),
        }}))
    }
}
