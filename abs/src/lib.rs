//! The reference ABS: the bank's core system as Arbat sees it, in-process by default.
//!
//! # Layout
//!
//! - [`demo`]: the demo customers and their products (API.md "Demo data").
//! - [`cards`]: card numbers kept as keyed hashes (registration by card number).
//! - [`Abs`]: postings to accounts (idempotent by posting id) that publish Cache Control
//!   changes through a [`ChangeSink`] exactly as a bank's ABS adapter would, and the
//!   request/reply commands on `abs.cmd.*` that customer actors use at first activation.
//!
//! - [`ledger`]: the double-entry rules as a pure core (balanced posting sets, floors,
//!   holds, fees, FX rounding), property-tested; the store writes the same rules atomically.
//! - payments.rs: `abs.cmd.payment`, a payment order turned into a balanced transfer and
//!   published as Cache Control changes to every customer it touches.
//! - [`rates`]: buy/sell rates per currency pair, changed live (`Abs::set_rates`, published
//!   on `abs.rates`; every node's ABS follows, `Abs::follow_rates`).
//! - [`holds`]: `abs.cmd.hold.authorize` / `capture` / `release` (card processing), persisted
//!   by the store; a capture is published like a payment.
//! - `deposits`: `abs.cmd.deposit.open`, a deposit product and its funding transfer in one
//!   store transaction.
//! - [`products`]: `abs.cmd.card.block` / `unblock` / `limits`: a card's status in the store, published
//!   as `product_changed`.
//! - [`quotes`]: HMAC-signed quotes (a rate promised to one customer for a short time),
//!   honoured by `abs.cmd.payment` when a conversion carries one.
//!
//! The ABS keeps its own tables in the node's store ([`AbsStore`]).

use std::sync::Arc;

use bytes::Bytes;
use domain::{Product, ProductKind, Profile};
use futures::StreamExt;
use kernel::bus::{Bus, subjects};
use kernel::change::{ChangeSink, SinkError};
use kernel::store::{AbsPosting, AbsProduct, AbsStore, Store, StoreError};
use kernel::{Change, ChangeBody, Currency, CustomerId, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod cards;
pub mod demo;
mod deposits;
pub mod holds;
pub mod ledger;
mod payments;
pub mod products;
pub mod quotes;
pub mod rates;

pub use payments::{income_account, position_account};

/// A posting request as the admin endpoint and the CLI send it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostingRequest {
    /// Idempotency: the same id posts once.
    pub id: String,
    pub account_id: String,
    pub amount: Money,
    pub description: String,
    #[serde(default)]
    pub mcc: Option<String>,
    #[serde(default)]
    pub counterparty: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostingOutcome {
    pub customer_id: CustomerId,
    pub balance: Money,
    pub duplicate: bool,
    /// Ids of the Cache Control changes published for this posting.
    pub change_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbsError {
    #[error("no such account")]
    UnknownAccount,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("invalid posting: {0}")]
    Invalid(String),
    #[error("ABS unavailable: {0}")]
    Unavailable(String),
}

impl AbsError {
    pub fn code(&self) -> &'static str {
        match self {
            AbsError::UnknownAccount => "unknown_account",
            AbsError::InsufficientFunds => "insufficient_funds",
            AbsError::Invalid(_) => "invalid_posting",
            AbsError::Unavailable(_) => "unavailable",
        }
    }
}

/// Why a quote was not given or not honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteFailure {
    #[error(transparent)]
    Quote(#[from] quotes::QuoteError),
    #[error(transparent)]
    Abs(AbsError),
}

/// The reference ABS.
#[derive(Clone)]
pub struct Abs {
    store: Arc<dyn Store>,
    sink: Arc<dyn ChangeSink>,
    /// The rates the bank quotes now, replaced whole when they change (see `rates`).
    rates: Arc<std::sync::RwLock<rates::RateSet>>,
    /// The HMAC key of quotes, from the store's secrets (the same on every node).
    quote_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    quote_validity: time::Duration,
}

/// Which `abs.cmd.*` a request came on.
#[derive(Clone, Copy, Debug)]
enum Command {
    Customer,
    Payment,
    Hold(holds::HoldOp),
    Card(products::CardOp),
    CardLimits,
    DepositOpen,
}

/// How often a node re-reads the stored rates (a safety net for a lost `abs.rates` message).
const RATES_RELOAD: std::time::Duration = std::time::Duration::from_secs(10);

/// Commands served at once per node; more wait on the bus.
const COMMAND_CONCURRENCY: usize = 256;

impl Abs {
    pub fn new(store: Arc<dyn Store>, sink: Arc<dyn ChangeSink>) -> Self {
        Self {
            store,
            sink,
            rates: Arc::new(std::sync::RwLock::new(rates::RateSet::demo())),
            quote_key: Arc::new(tokio::sync::OnceCell::new()),
            quote_validity: quotes::DEFAULT_VALIDITY,
        }
    }

    /// How long the quotes this ABS issues hold.
    pub fn with_quote_validity(mut self, validity: time::Duration) -> Self {
        self.quote_validity = validity;
        self
    }

    /// The rates the bank quotes now.
    pub fn rates(&self) -> Arc<Vec<ledger::Rate>> {
        self.current_rates().rates
    }

    fn current_rates(&self) -> rates::RateSet {
        // A poisoned lock still holds a whole set (it is replaced, never edited in place).
        self.rates
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Adopts `set` if it is newer than the current one; whether it did.
    fn adopt_rates(&self, set: rates::RateSet) -> bool {
        let mut current = self
            .rates
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if set.version > current.version {
            *current = set;
            true
        } else {
            false
        }
    }

    /// The treasury sets new rates: checked (pure, `rates::validate`), stored, adopted here
    /// and published on `abs.rates` so every node's ABS follows at once.
    pub async fn set_rates(
        &self,
        bus: &dyn Bus,
        new: Vec<ledger::Rate>,
    ) -> Result<rates::RateSet, AbsError> {
        rates::validate(&new).map_err(|e| AbsError::Invalid(e.to_string()))?;
        // Versions are times, kept increasing even if the clock steps back.
        let now_ms = i64::try_from(kernel::now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let version = now_ms.max(self.current_rates().version + 1);
        let set = rates::RateSet {
            version,
            rates: Arc::new(new),
        };
        // Stored first (the system of record: a restarted node reads it), then published.
        let body = set.to_json().to_string();
        let saved = self
            .store
            .abs_save_rate_set(version, &body)
            .await
            .map_err(|e| AbsError::Unavailable(e.to_string()))?;
        if !saved {
            return Err(AbsError::Invalid(
                "a newer rate set was saved meanwhile".into(),
            ));
        }
        self.adopt_rates(set.clone());
        // A lost message is caught up by the periodic reload in `follow_rates`.
        if let Err(error) = bus.publish(subjects::ABS_RATES, Bytes::from(body)).await {
            tracing::warn!(%error, "rates saved but not published; nodes reload them");
        }
        Ok(set)
    }

    /// Follows the rates: the stored set at start, every set published on `abs.rates` (any
    /// node's change) at once, and the stored set again every `RATES_RELOAD` in case a
    /// message was lost. Runs until the bus closes.
    pub async fn follow_rates(self, bus: Arc<dyn Bus>) -> Result<(), kernel::bus::BusError> {
        let mut changes = bus.subscribe(subjects::ABS_RATES).await?;
        let mut reload = tokio::time::interval(RATES_RELOAD);
        loop {
            tokio::select! {
                _ = reload.tick() => self.reload_rates().await,
                message = changes.next() => {
                    let Some(message) = message else { return Ok(()) };
                    match rates::RateSet::from_json(&message.payload) {
                        Some(set) => {
                            if self.adopt_rates(set) {
                                tracing::info!("rates changed");
                            }
                        }
                        None => tracing::warn!("ignored a malformed rate set on abs.rates"),
                    }
                }
            }
        }
    }

    /// Adopts the stored rate set if it is newer than the current one.
    async fn reload_rates(&self) {
        match self.store.abs_rate_set().await {
            Ok(Some((_, body))) => match rates::RateSet::from_json(body.as_bytes()) {
                Some(set) => {
                    self.adopt_rates(set);
                }
                None => tracing::warn!("the stored rate set is malformed"),
            },
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "rates not reloaded"),
        }
    }

    async fn quote_key(&self) -> Result<&[u8], AbsError> {
        self.quote_key
            .get_or_try_init(|| async {
                let mut candidate = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut candidate);
                self.store.secret("abs_quote_key", &candidate).await
            })
            .await
            .map(Vec::as_slice)
            .map_err(|e| AbsError::Unavailable(e.to_string()))
    }

    /// A quote for `customer` to convert `amount` into `to` at the current rate: the quote
    /// and its signed token (its id).
    pub async fn quote(
        &self,
        customer: &CustomerId,
        amount: Money,
        to: Currency,
    ) -> Result<(quotes::Quote, String), QuoteFailure> {
        let key = self.quote_key().await.map_err(QuoteFailure::Abs)?;
        let mut nonce = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let nonce = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let quote = quotes::Quote::price(
            &self.rates(),
            customer.clone(),
            amount,
            to,
            nonce,
            kernel::now(),
            self.quote_validity,
        )
        .map_err(QuoteFailure::Quote)?;
        let token = quote.sign(key);
        Ok((quote, token))
    }

    /// Checks a quote token for `customer` now.
    pub(crate) async fn check_quote(
        &self,
        customer: &CustomerId,
        token: &str,
    ) -> Result<quotes::Quote, QuoteFailure> {
        let key = self.quote_key().await.map_err(QuoteFailure::Abs)?;
        quotes::Quote::verify(key, token, customer, kernel::now()).map_err(QuoteFailure::Quote)
    }

    /// Posts to an account and publishes `transaction_posted` and `balance_changed`.
    ///
    /// A repeated posting id moves no money and publishes the same change ids again, so a
    /// caller that lost the answer can retry safely (the platform drops the duplicates).
    pub async fn post(&self, request: &PostingRequest) -> Result<PostingOutcome, AbsError> {
        if request.id.is_empty() || request.id.len() > 100 || request.amount.minor == 0 {
            return Err(AbsError::Invalid(
                "id must be 1 to 100 characters and amount non-zero".into(),
            ));
        }
        let products = self
            .store
            .abs_products_of_account(&request.account_id)
            .await;
        let product = products.map_err(|e| AbsError::Unavailable(e.to_string()))?;
        let Some(product) = product else {
            return Err(AbsError::UnknownAccount);
        };
        if product.currency != request.amount.currency.code() {
            return Err(AbsError::Invalid(
                "currency differs from the account's".into(),
            ));
        }
        let floor_minor = if product.kind == "loan" { i64::MIN } else { 0 };
        let posting = AbsPosting {
            id: request.id.clone(),
            account_id: request.account_id.clone(),
            amount_minor: request.amount.minor,
            floor_minor,
            description: request.description.clone(),
            mcc: request.mcc.clone(),
            counterparty: request.counterparty.clone(),
        };
        let result = self.store.abs_post(&posting).await.map_err(|e| match e {
            StoreError::NotFound => AbsError::UnknownAccount,
            StoreError::Refused(_) => AbsError::InsufficientFunds,
            other => AbsError::Unavailable(other.to_string()),
        })?;
        let currency =
            Currency::parse(&result.currency).map_err(|e| AbsError::Unavailable(e.to_string()))?;
        let balance = Money::new(result.balance_minor, currency);
        let changes = vec![
            Change {
                id: format!("tx-{}", request.id),
                customer_id: result.customer_id.clone(),
                at: result.at,
                body: ChangeBody::TransactionPosted {
                    account_id: request.account_id.clone(),
                    amount: request.amount,
                    balance,
                    description: request.description.clone(),
                    mcc: request.mcc.clone(),
                    counterparty: request.counterparty.clone(),
                },
            },
            Change {
                id: format!("bal-{}", request.id),
                customer_id: result.customer_id.clone(),
                at: result.at,
                body: ChangeBody::BalanceChanged {
                    account_id: request.account_id.clone(),
                    balance,
                },
            },
        ];
        let change_ids = changes.iter().map(|c| c.id.clone()).collect();
        self.sink.submit(changes).await.map_err(|e| match e {
            SinkError::UnknownCustomer(c) => AbsError::Invalid(format!("unknown customer {c}")),
            SinkError::Unavailable(m) => AbsError::Unavailable(m),
        })?;
        Ok(PostingOutcome {
            customer_id: result.customer_id,
            balance,
            duplicate: result.duplicate,
            change_ids,
        })
    }

    /// The customer's profile and products, as actors ask for them at first activation.
    pub async fn profile(&self, id: &CustomerId) -> Result<Option<Profile>, StoreError> {
        let Some(customer) = self.store.abs_customer(id).await? else {
            return Ok(None);
        };
        let products = self.store.abs_products(id).await?;
        Ok(Some(Profile {
            customer_id: customer.id,
            name: customer.name,
            phone: customer.phone,
            language: customer.language,
            products: products.into_iter().filter_map(to_product).collect(),
        }))
    }

    /// Answers `abs.cmd.customer.get`, `abs.cmd.payment`, `abs.cmd.hold.*` and `abs.cmd.card.*`
    /// on the bus
    /// until the bus closes. Every node runs it in a queue group, so any node's ABS answers.
    pub async fn serve(self, bus: Arc<dyn Bus>) -> Result<(), kernel::bus::BusError> {
        let customers = bus
            .queue_subscribe(&subjects::abs_command("customer.get"), "abs")
            .await?
            .map(|m| (Command::Customer, m));
        let payments = bus
            .queue_subscribe(&subjects::abs_command("payment"), "abs")
            .await?
            .map(|m| (Command::Payment, m));
        let mut holds = Vec::new();
        for (name, op) in [
            ("hold.authorize", holds::HoldOp::Authorize),
            ("hold.capture", holds::HoldOp::Capture),
            ("hold.release", holds::HoldOp::Release),
        ] {
            let subscription = bus
                .queue_subscribe(&subjects::abs_command(name), "abs")
                .await?;
            holds.push(subscription.map(move |m| (Command::Hold(op), m)));
        }
        let mut cards = Vec::new();
        for (name, op) in [
            ("card.block", products::CardOp::Block),
            ("card.unblock", products::CardOp::Unblock),
        ] {
            let subscription = bus
                .queue_subscribe(&subjects::abs_command(name), "abs")
                .await?;
            cards.push(subscription.map(move |m| (Command::Card(op), m)));
        }
        let card_limits = bus
            .queue_subscribe(&subjects::abs_command("card.limits"), "abs")
            .await?
            .map(|m| (Command::CardLimits, m));
        let deposit_open = bus
            .queue_subscribe(&subjects::abs_command("deposit.open"), "abs")
            .await?
            .map(|m| (Command::DepositOpen, m));
        let mut requests = futures::stream::select(
            futures::stream::select(customers, payments),
            futures::stream::select(
                futures::stream::select_all(holds),
                futures::stream::select(
                    futures::stream::select_all(cards),
                    futures::stream::select(card_limits, deposit_open),
                ),
            ),
        );
        let limit = Arc::new(tokio::sync::Semaphore::new(COMMAND_CONCURRENCY));
        while let Some((command, message)) = requests.next().await {
            let Some(reply) = message.reply else { continue };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let abs = self.clone();
            let bus = bus.clone();
            tokio::spawn(async move {
                let answer = match command {
                    Command::Payment => abs.answer_payment(&message.payload).await,
                    Command::Customer => abs.answer_customer_get(&message.payload).await,
                    Command::Hold(op) => abs.answer_hold(op, &message.payload).await,
                    Command::Card(op) => abs.answer_card(op, &message.payload).await,
                    Command::CardLimits => abs.answer_card_limits(&message.payload).await,
                    Command::DepositOpen => abs.answer_deposit_open(&message.payload).await,
                };
                let _ = bus.publish(&reply, Bytes::from(answer.to_string())).await;
                drop(permit);
            });
        }
        Ok(())
    }

    async fn answer_payment(&self, payload: &[u8]) -> Value {
        let reply = match serde_json::from_slice::<kernel::payment::PaymentCommand>(payload) {
            Err(e) => kernel::payment::CommandReply::Err(kernel::payment::CommandError::new(
                "invalid_command",
                e.to_string(),
            )),
            Ok(command) => match self.pay(&command).await {
                Ok(receipt) => kernel::payment::CommandReply::Ok(receipt),
                Err(error) => kernel::payment::CommandReply::Err(error),
            },
        };
        serde_json::to_value(reply).unwrap_or(Value::Null)
    }

    async fn answer_customer_get(&self, payload: &[u8]) -> Value {
        #[derive(Deserialize)]
        struct Ask {
            customer_id: CustomerId,
        }
        let error = |code: &str, detail: &str| json!({"err": {"code": code, "detail": detail}});
        let Ok(ask) = serde_json::from_slice::<Ask>(payload) else {
            return error("bad_request", "expected {\"customer_id\"}");
        };
        match self.profile(&ask.customer_id).await {
            Ok(Some(profile)) => json!({"ok": profile}),
            Ok(None) => error("not_found", "no such customer"),
            Err(e) => error("unavailable", &e.to_string()),
        }
    }
}

fn to_product(product: AbsProduct) -> Option<Product> {
    let kind = ProductKind::parse(&product.kind)?;
    let currency = Currency::parse(&product.currency).ok()?;
    let balance = match kind {
        ProductKind::Card => None,
        _ => Some(Money::new(product.balance_minor, currency)),
    };
    let details = match product.details {
        Value::Object(map) => map,
        _ => Default::default(),
    };
    Some(Product {
        id: product.id,
        kind,
        title: product.title,
        status: product.status,
        balance,
        details,
    })
}

/// Lookup of one account's product, by scanning the owner's products (the account id
/// carries the customer number in the demo data; a real ABS indexes it).
#[async_trait::async_trait]
trait AccountLookup {
    async fn abs_products_of_account(
        &self,
        account_id: &str,
    ) -> Result<Option<AbsProduct>, StoreError>;
}

#[async_trait::async_trait]
impl<S: AbsStore + ?Sized> AccountLookup for S {
    async fn abs_products_of_account(
        &self,
        account_id: &str,
    ) -> Result<Option<AbsProduct>, StoreError> {
        let Some(owner) = demo::owner_of_product(account_id) else {
            return Ok(None);
        };
        Ok(self
            .abs_products(&owner)
            .await?
            .into_iter()
            .find(|p| p.id == account_id))
    }
}
