//! Read models served from the hot state.

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::customer::{CustomerState, ProductKind, Transaction};

/// `GET /v1/products`: products grouped by kind.
pub fn products(state: &CustomerState) -> Value {
    let mut groups = [vec![], vec![], vec![], vec![]];
    for product in state.products.values() {
        let mut item = product.details.clone();
        item.insert("id".into(), json!(product.id));
        item.insert("title".into(), json!(product.title));
        item.insert("status".into(), json!(product.status));
        if let Some(balance) = product.balance {
            item.insert("balance".into(), json!(balance));
        }
        let slot = match product.kind {
            ProductKind::Account => 0,
            ProductKind::Card => 1,
            ProductKind::Deposit => 2,
            ProductKind::Loan => 3,
        };
        groups[slot].push(Value::Object(item));
    }
    let [accounts, cards, deposits, loans] = groups;
    json!({"accounts": accounts, "cards": cards, "deposits": deposits, "loans": loans})
}

/// A page request over an account's transactions, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransactionQuery {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    /// Only transactions with a seq below this (the previous page's `next_cursor`).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// A page of transactions and the cursor of the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct TransactionPage {
    pub items: Vec<Transaction>,
    pub next_cursor: Option<u64>,
}

/// `GET /v1/accounts/{id}/transactions` from the recent window; `None` if the customer has
/// no such product (the caller answers 404 without saying whose it might be).
pub fn transactions(
    state: &CustomerState,
    account_id: &str,
    query: &TransactionQuery,
) -> Option<TransactionPage> {
    state.products.get(account_id)?;
    let limit = query.limit.clamp(1, 100);
    let mut matching = state
        .recent
        .get(account_id)
        .into_iter()
        .flatten()
        .rev()
        .filter(|t| query.before_seq.is_none_or(|before| t.seq < before))
        .filter(|t| query.from.is_none_or(|from| t.at >= from))
        .filter(|t| query.to.is_none_or(|to| t.at < to));
    let items: Vec<Transaction> = matching.by_ref().take(limit).cloned().collect();
    let next_cursor = match (items.last(), matching.next()) {
        (Some(last), Some(_)) => Some(last.seq),
        _ => None,
    };
    Some(TransactionPage { items, next_cursor })
}

impl Transaction {
    pub fn to_json(&self) -> Value {
        let mut item = json!({
            "id": self.id,
            "seq": self.seq,
            "at": self.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "amount": self.amount,
            "balance": self.balance,
            "description": self.description,
        });
        if let Some(mcc) = &self.mcc {
            item["mcc"] = json!(mcc);
        }
        if let Some(counterparty) = &self.counterparty {
            item["counterparty"] = json!(counterparty);
        }
        item
    }
}
