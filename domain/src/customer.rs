//! A customer's state machine.

use std::collections::{BTreeMap, VecDeque};

use kernel::{Change, ChangeBody, CustomerId, FeedEvent, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// How many recent transactions per account the state keeps in memory. Older ones are
/// served from the journal (and, later, statements).
pub const RECENT_TRANSACTIONS_PER_ACCOUNT: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductKind {
    Account,
    Card,
    Deposit,
    Loan,
}

impl ProductKind {
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "account" => Some(Self::Account),
            "card" => Some(Self::Card),
            "deposit" => Some(Self::Deposit),
            "loan" => Some(Self::Loan),
            _ => None,
        }
    }
}

/// A product as the customer sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub kind: ProductKind,
    pub title: String,
    pub status: String,
    pub balance: Option<Money>,
    /// Kind-specific fields; for cards `pan_masked` (BIN + last 4), never a full PAN.
    pub details: Map<String, Value>,
}

/// A posted transaction, kept for the account's recent history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    pub amount: Money,
    pub balance: Money,
    pub description: String,
    pub mcc: Option<String>,
    pub counterparty: Option<String>,
}

/// The customer's profile and products as the ABS reports them at first activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub customer_id: CustomerId,
    pub name: String,
    pub phone: String,
    pub language: String,
    pub products: Vec<Product>,
}

/// The hot state of one customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    pub customer_id: CustomerId,
    pub name: String,
    pub phone: String,
    pub language: String,
    pub products: BTreeMap<String, Product>,
    pub recent: BTreeMap<String, VecDeque<Transaction>>,
    /// Seq of the newest event folded in.
    pub version: u64,
    /// Highest seq the customer marked read.
    pub read_seq: u64,
    /// Recent payments by id (see `payments.rs`).
    #[serde(default)]
    pub payments: BTreeMap<String, crate::payments::PaymentRecord>,
    /// Today's completed payment totals in minor units, by `day/operation/currency`
    /// (`*` for all operations).
    #[serde(default)]
    pub spent: BTreeMap<String, i64>,
    /// Payees the customer has paid (`payee_key`s of completed payments), for step-up.
    #[serde(default)]
    pub known_payees: std::collections::BTreeSet<String>,
    /// Payments held for a step-up confirmation, by challenge id (kept after they complete,
    /// so a replayed code is still recognised; the newest `HELD_PAYMENTS`).
    #[serde(default)]
    pub held: BTreeMap<String, crate::payments::PaymentOrder>,
    /// Saved payments by id (see `templates.rs`).
    #[serde(default)]
    pub templates: BTreeMap<String, crate::templates::Template>,
    /// Standing orders by id (see `autopay.rs`).
    #[serde(default)]
    pub autopayments: BTreeMap<String, crate::autopay::Autopayment>,
}

/// An event the rules want to record; the shell gives it a seq and commits it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    pub id: String,
    pub kind: &'static str,
    pub at: time::OffsetDateTime,
    pub data: Map<String, Value>,
    /// A notification to send about this event, committed with it (outbox).
    pub notify: Option<NotifyDraft>,
}

/// What the customer should be told, as template parameters of a notification kind.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyDraft {
    /// The notifier's kind: `transaction`, `payment_status`, `security_alert` ...
    pub kind: &'static str,
    pub params: Map<String, Value>,
}

impl EventDraft {
    /// An event with one data field and no notification (the saved/deleted records of
    /// templates and autopayments).
    pub fn single(
        id: String,
        kind: &'static str,
        at: time::OffsetDateTime,
        key: &str,
        value: Value,
    ) -> Self {
        let mut data = Map::new();
        data.insert(key.into(), value);
        Self {
            id,
            kind,
            at,
            data,
            notify: None,
        }
    }

    pub fn into_event(self, seq: u64) -> FeedEvent {
        FeedEvent {
            seq,
            id: self.id,
            kind: self.kind.to_owned(),
            at: self.at,
            data: self.data,
        }
    }
}

/// Why a change was refused; `code` is stable and goes to the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("change is for customer {0}, not this one")]
    WrongCustomer(String),
    #[error("customer has no product {0:?}")]
    UnknownProduct(String),
    #[error("product {0:?} has no balance")]
    NoBalance(String),
    #[error("currency {got} does not match the account's {expected}")]
    CurrencyMismatch { expected: String, got: String },
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::WrongCustomer(_) => "wrong_customer",
            Rejection::UnknownProduct(_) => "unknown_product",
            Rejection::NoBalance(_) => "no_balance",
            Rejection::CurrencyMismatch { .. } => "currency_mismatch",
        }
    }
}

impl CustomerState {
    pub fn new(profile: Profile) -> Self {
        Self {
            customer_id: profile.customer_id,
            name: profile.name,
            phone: profile.phone,
            language: profile.language,
            products: profile
                .products
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
            recent: BTreeMap::new(),
            version: 0,
            read_seq: 0,
            payments: BTreeMap::new(),
            spent: BTreeMap::new(),
            known_payees: Default::default(),
            held: BTreeMap::new(),
            templates: BTreeMap::new(),
            autopayments: BTreeMap::new(),
        }
    }

    pub fn unread(&self) -> u64 {
        self.version.saturating_sub(self.read_seq)
    }

    /// Decides what a change means for this customer: the events to record, or why not.
    pub fn decide(&self, change: &Change) -> Result<Vec<EventDraft>, Rejection> {
        if change.customer_id != self.customer_id {
            return Err(Rejection::WrongCustomer(change.customer_id.to_string()));
        }
        let mut data = Map::new();
        let mut notify = None;
        match &change.body {
            ChangeBody::TransactionPosted {
                account_id,
                amount,
                balance,
                description,
                mcc,
                counterparty,
            } => {
                self.check_balance_currency(account_id, balance)?;
                data.insert("account_id".into(), json!(account_id));
                data.insert("amount".into(), json!(amount));
                data.insert("balance".into(), json!(balance));
                data.insert("description".into(), json!(description));
                if let Some(mcc) = mcc {
                    data.insert("mcc".into(), json!(mcc));
                }
                if let Some(counterparty) = counterparty {
                    data.insert("counterparty".into(), json!(counterparty));
                }
                notify = Some(self.transaction_notice(
                    account_id,
                    amount,
                    balance,
                    description,
                    change.at,
                ));
            }
            ChangeBody::BalanceChanged {
                account_id,
                balance,
            } => {
                self.check_balance_currency(account_id, balance)?;
                data.insert("account_id".into(), json!(account_id));
                data.insert("balance".into(), json!(balance));
            }
            ChangeBody::ProductChanged {
                product_id,
                status,
                title,
                daily_limit,
            } => {
                let Some(product) = self.products.get(product_id) else {
                    return Err(Rejection::UnknownProduct(product_id.clone()));
                };
                notify = crate::products::card_blocked_alert(
                    product,
                    status.as_deref(),
                    &self.language,
                    change.at,
                );
                data.insert("product_id".into(), json!(product_id));
                if let Some(status) = status {
                    data.insert("status".into(), json!(status));
                }
                if let Some(title) = title {
                    data.insert("title".into(), json!(title));
                }
                if let Some(daily_limit) = daily_limit {
                    data.insert("daily_limit".into(), json!(daily_limit));
                }
            }
            ChangeBody::ProductOpened {
                product_id,
                product_kind,
                title,
                status,
                balance,
                details,
            } => {
                if ProductKind::parse(product_kind).is_none() {
                    return Err(Rejection::UnknownProduct(product_id.clone()));
                }
                // A product the state already holds (a republished change) records nothing.
                if self.products.contains_key(product_id) {
                    return Ok(vec![]);
                }
                data.insert("product_id".into(), json!(product_id));
                data.insert("product_kind".into(), json!(product_kind));
                data.insert("title".into(), json!(title));
                data.insert("status".into(), json!(status));
                data.insert("balance".into(), json!(balance));
                data.insert("details".into(), Value::Object(details.clone()));
            }
            ChangeBody::Notification {
                request_id,
                about,
                channel,
                status,
                reason,
            } => {
                data.insert("request_id".into(), json!(request_id));
                data.insert("about".into(), json!(about));
                if let Some(channel) = channel {
                    data.insert("channel".into(), json!(channel));
                }
                data.insert("status".into(), json!(status));
                if let Some(reason) = reason {
                    data.insert("reason".into(), json!(reason));
                }
            }
        }
        Ok(vec![EventDraft {
            id: change.id.clone(),
            kind: change.body.kind(),
            at: change.at,
            data,
            notify,
        }])
    }

    /// The `transaction` notification: the card tied to the account (masked by the
    /// notifier in every text anyway), else the account's title.
    fn transaction_notice(
        &self,
        account_id: &str,
        amount: &Money,
        balance: &Money,
        description: &str,
        at: time::OffsetDateTime,
    ) -> NotifyDraft {
        let card = self
            .products
            .values()
            .find(|p| {
                p.kind == ProductKind::Card
                    && p.details.get("account_id").and_then(Value::as_str) == Some(account_id)
            })
            .and_then(|card| card.details.get("pan_masked").and_then(Value::as_str))
            .map(str::to_owned)
            .or_else(|| self.products.get(account_id).map(|p| p.title.clone()))
            .unwrap_or_default();
        let mut params = Map::new();
        params.insert("amount".into(), json!(amount));
        params.insert("balance".into(), json!(balance));
        params.insert("description".into(), json!(description));
        params.insert("card".into(), json!(card));
        params.insert(
            "at".into(),
            json!(
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
        );
        NotifyDraft {
            kind: "transaction",
            params,
        }
    }

    fn check_balance_currency(&self, product_id: &str, balance: &Money) -> Result<(), Rejection> {
        let product = self
            .products
            .get(product_id)
            .ok_or_else(|| Rejection::UnknownProduct(product_id.to_owned()))?;
        let current = product
            .balance
            .ok_or_else(|| Rejection::NoBalance(product_id.to_owned()))?;
        if current.currency != balance.currency {
            return Err(Rejection::CurrencyMismatch {
                expected: current.currency.to_string(),
                got: balance.currency.to_string(),
            });
        }
        Ok(())
    }

    /// Folds a committed event into the state. Events of unknown kinds only advance the
    /// version: the journal may hold kinds that a newer node wrote.
    pub fn apply(&mut self, event: &FeedEvent) {
        self.version = self.version.max(event.seq);
        let text = |key: &str| {
            event
                .data
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let money = |key: &str| {
            event
                .data
                .get(key)
                .and_then(|v| serde_json::from_value::<Money>(v.clone()).ok())
        };
        match event.kind.as_str() {
            "balance_changed" => {
                if let (Some(account), Some(balance)) = (text("account_id"), money("balance"))
                    && let Some(product) = self.products.get_mut(&account)
                {
                    product.balance = Some(balance);
                }
            }
            "transaction_posted" => {
                let (Some(account), Some(amount), Some(balance)) =
                    (text("account_id"), money("amount"), money("balance"))
                else {
                    return;
                };
                if let Some(product) = self.products.get_mut(&account) {
                    product.balance = Some(balance);
                }
                let recent = self.recent.entry(account).or_default();
                recent.push_back(Transaction {
                    id: event.id.clone(),
                    seq: event.seq,
                    at: event.at,
                    amount,
                    balance,
                    description: text("description").unwrap_or_default(),
                    mcc: text("mcc"),
                    counterparty: text("counterparty"),
                });
                while recent.len() > RECENT_TRANSACTIONS_PER_ACCOUNT {
                    recent.pop_front();
                }
            }
            "payment_status" => self.apply_payment(event),
            "template_saved" | "template_deleted" => self.apply_template(event),
            "autopayment_saved" | "autopayment_deleted" => self.apply_autopayment(event),
            "product_opened" => {
                let kind = text("product_kind").and_then(|k| ProductKind::parse(&k));
                let balance = event
                    .data
                    .get("balance")
                    .and_then(|v| serde_json::from_value::<Money>(v.clone()).ok());
                if let (Some(id), Some(kind)) = (text("product_id"), kind)
                    && !self.products.contains_key(&id)
                {
                    let details = event
                        .data
                        .get("details")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    self.products.insert(
                        id.clone(),
                        Product {
                            id,
                            kind,
                            title: text("title").unwrap_or_default(),
                            status: text("status").unwrap_or_default(),
                            balance,
                            details,
                        },
                    );
                }
            }
            "product_changed" => {
                if let Some(product) = text("product_id").and_then(|id| self.products.get_mut(&id))
                {
                    if let Some(status) = text("status") {
                        product.status = status;
                    }
                    if let Some(title) = text("title") {
                        product.title = title;
                    }
                    if let Some(daily_limit) = event.data.get("daily_limit") {
                        product
                            .details
                            .insert("daily_limit".into(), daily_limit.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// Raises the read mark, never past the journal; returns the new mark.
    pub fn mark_read(&mut self, up_to_seq: u64) -> u64 {
        self.read_seq = self.read_seq.max(up_to_seq.min(self.version));
        self.read_seq
    }
}
