//! The durable store: the system of record for customer journals, feeds, the outbox,
//! credentials and the reference ABS. SQLite (embedded) or PostgreSQL (cluster), store crate.
//!
//! Three small traits, one per concern, joined by [`Store`]. Acknowledged means durable:
//! a method returns `Ok` only after the database committed.

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::{CustomerId, FeedEvent};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The customer's journal is not at the expected version: another writer got there first.
    #[error("journal version conflict")]
    VersionConflict,
    /// A unique key already exists.
    #[error("already exists")]
    Duplicate,
    #[error("not found")]
    NotFound,
    /// A rule of the data refused the write (e.g. a balance below its floor).
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A customer actor's serialised state at a journal version.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    pub state: serde_json::Value,
}

/// What the store knows about a customer's journal.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomerRecord {
    /// Seq of the newest journal event (0: none yet).
    pub version: u64,
    /// Highest seq the customer marked read.
    pub read_seq: u64,
    pub snapshot: Option<Snapshot>,
}

/// A message to publish once the transaction that produced it has committed.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxMessage {
    pub subject: String,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// One atomic step of a customer's journal.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    pub customer_id: CustomerId,
    /// The version the writer last saw; the commit fails with `VersionConflict` otherwise.
    /// 0 for a customer with no journal yet.
    pub expected_version: u64,
    /// New events, seqs `expected_version + 1 ..` contiguous.
    pub events: Vec<FeedEvent>,
    /// Ids of the changes consumed by this commit (including those that produced no event).
    pub change_ids: Vec<String>,
    pub snapshot: Option<Snapshot>,
    pub outbox: Vec<OutboxMessage>,
}

/// Customer journals, feeds and the outbox.
#[async_trait]
pub trait JournalStore: Send + Sync + 'static {
    async fn load_customer(&self, id: &CustomerId) -> Result<Option<CustomerRecord>, StoreError>;
    /// Events with `seq > after_seq`, oldest first, at most `limit`.
    async fn journal_after(
        &self,
        id: &CustomerId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError>;
    /// Events with `seq < before_seq` (or the newest when `None`), newest first, at most `limit`.
    async fn feed_page(
        &self,
        id: &CustomerId,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError>;
    /// Which of `change_ids` were already consumed by a commit of this customer.
    async fn applied_changes(
        &self,
        id: &CustomerId,
        change_ids: &[String],
    ) -> Result<Vec<String>, StoreError>;
    /// Atomically checks the version, appends events, records change ids, saves the snapshot
    /// and enqueues the outbox. Returns the outbox row ids in order.
    async fn commit(&self, commit: Commit) -> Result<Vec<i64>, StoreError>;
    /// Raises the read mark (never lowers it, never past the journal); returns the new mark.
    async fn mark_read(&self, id: &CustomerId, up_to_seq: u64) -> Result<u64, StoreError>;
    /// The oldest outbox rows, at most `limit`.
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;
    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    pub login: String,
    pub customer_id: CustomerId,
    /// PHC string (argon2id).
    pub password_hash: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub customer_id: CustomerId,
    pub device_id: String,
    pub created_at: OffsetDateTime,
    pub revoked: bool,
}

/// Credentials, sessions and platform secrets.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    async fn credential(&self, login: &str) -> Result<Option<Credential>, StoreError>;
    /// Inserts the credential unless the login exists; returns whether it was inserted.
    async fn insert_credential(&self, credential: &Credential) -> Result<bool, StoreError>;
    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn revoke_session(&self, id: &str) -> Result<(), StoreError>;
    /// Returns the secret stored under `name`, storing `candidate` first if there is none,
    /// so every node of a cluster ends up with the same value.
    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct AbsCustomer {
    pub id: CustomerId,
    pub phone: String,
    pub name: String,
    pub language: String,
}

/// A product held by the reference ABS. `kind` is `account`, `card`, `deposit` or `loan`.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsProduct {
    pub id: String,
    pub customer_id: CustomerId,
    pub kind: String,
    pub title: String,
    pub status: String,
    pub currency: String,
    pub balance_minor: i64,
    /// Kind-specific fields (masked PAN, rate, schedule ...).
    pub details: serde_json::Value,
}

/// A posting to one ABS account, idempotent by `id`.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsPosting {
    pub id: String,
    pub account_id: String,
    pub amount_minor: i64,
    /// The balance may not end below this (0: no overdraft).
    pub floor_minor: i64,
    pub description: String,
    pub mcc: Option<String>,
    pub counterparty: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AbsPostingResult {
    pub customer_id: CustomerId,
    pub currency: String,
    pub balance_minor: i64,
    pub at: OffsetDateTime,
    /// True when this posting id was already applied; the result is the first one's.
    pub duplicate: bool,
}

/// One leg of a double-entry transfer: `amount_minor` added to the account (negative: a
/// debit), in the account's currency.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsLeg {
    pub account_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// A debit may not take the balance below this (`i64::MIN`: the bank's own accounts).
    pub floor_minor: i64,
}

/// A multi-leg posting set, all or nothing, idempotent by `id`.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsTransfer {
    pub id: String,
    /// At least two legs, none zero, summing to zero per currency.
    pub legs: Vec<AbsLeg>,
    pub description: String,
    pub counterparty: Option<String>,
}

/// A leg as written, with its account's owner and the balance after it.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsLegResult {
    pub account_id: String,
    pub customer_id: CustomerId,
    pub kind: String,
    pub currency: String,
    pub amount_minor: i64,
    pub balance_minor: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AbsTransferResult {
    pub legs: Vec<AbsLegResult>,
    pub at: OffsetDateTime,
    /// True when this transfer id was already applied; the result is the first one's.
    pub duplicate: bool,
}

/// The reference ABS's own tables: customers, products (accounts with balances) and the
/// double-entry ledger of transfers (`abs_transfer`), plus single-leg admin postings.
#[async_trait]
pub trait AbsStore: Send + Sync + 'static {
    /// Inserts the customer and products unless the customer exists (idempotent seeding).
    async fn abs_seed(
        &self,
        customer: &AbsCustomer,
        products: &[AbsProduct],
    ) -> Result<bool, StoreError>;
    async fn abs_customer(&self, id: &CustomerId) -> Result<Option<AbsCustomer>, StoreError>;
    async fn abs_customer_by_phone(&self, phone: &str) -> Result<Option<AbsCustomer>, StoreError>;
    async fn abs_products(&self, id: &CustomerId) -> Result<Vec<AbsProduct>, StoreError>;
    /// Applies the posting atomically: `NotFound` for an unknown account,
    /// `Refused("insufficient_funds")` below the floor, the first result on a repeated id.
    async fn abs_post(&self, posting: &AbsPosting) -> Result<AbsPostingResult, StoreError>;
    /// One product (account) by id.
    async fn abs_account(&self, id: &str) -> Result<Option<AbsProduct>, StoreError>;
    /// Applies every leg or none, in one transaction: `NotFound` for an unknown account,
    /// `Refused` with `unbalanced` (legs not summing to zero per currency or a zero leg),
    /// `currency_mismatch`, `account_closed` (status not `active`), `insufficient_funds`
    /// (a debit below its floor), `idempotency_conflict` (the id was used with other legs);
    /// the first result on a repeated id.
    async fn abs_transfer(&self, transfer: &AbsTransfer) -> Result<AbsTransferResult, StoreError>;
    /// The sum of every transfer leg per currency (zero for each, always).
    async fn abs_ledger_sums(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Sets a product's status (`active`, `blocked`, `closed`).
    async fn abs_set_status(&self, id: &str, status: &str) -> Result<(), StoreError>;
}

/// Everything a node needs from its store.
pub trait Store: JournalStore + AuthStore + AbsStore {}
impl<T: JournalStore + AuthStore + AbsStore> Store for T {}
