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
    /// Changes to the index of clock-driven autopayments, written in the same transaction as
    /// the `autopayment_saved` / `autopayment_deleted` events that cause them.
    pub schedules: Vec<ScheduleWrite>,
}

/// One change to the autopayment schedule index (`customer → next run`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleWrite {
    pub autopayment_id: String,
    /// The customer's partition, so that each node scans only the partitions it owns.
    pub partition: u32,
    /// The next run (Unix ms); `None` removes the autopayment from the index.
    pub next_run_ms: Option<i64>,
}

/// A row of the schedule index whose run is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueRun {
    pub customer_id: CustomerId,
    pub autopayment_id: String,
    pub next_run_ms: i64,
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

    /// The oldest due runs (`next_run_ms <= now_ms`) of the given partitions, at most `limit`.
    async fn schedule_due(
        &self,
        partitions: &[u32],
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<DueRun>, StoreError>;
    /// Moves a run from `due_ms` to `next_run_ms` (`None`: removes the row); a no-op (false)
    /// when the row is gone or was already moved, so a repeated or late write never undoes
    /// a newer one.
    async fn schedule_advance(
        &self,
        customer: &CustomerId,
        autopayment_id: &str,
        due_ms: i64,
        next_run_ms: Option<i64>,
    ) -> Result<bool, StoreError>;
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
    /// SHA-256 (hex) of the current refresh token's secret; "" when the session has none.
    pub refresh_hash: String,
    /// How many times the refresh token was rotated.
    pub generation: u64,
    /// Last login or refresh: the idle timeout counts from here.
    pub last_used_at: OffsetDateTime,
    /// `customer` or `staff` (then `customer_id` holds the staff login).
    pub scope: String,
}

impl SessionRecord {
    /// A fresh, unrevoked session whose refresh token hashes to `refresh_hash`.
    pub fn new(
        id: String,
        customer_id: CustomerId,
        device_id: String,
        refresh_hash: String,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            id,
            customer_id,
            device_id,
            created_at: now,
            revoked: false,
            refresh_hash,
            generation: 0,
            last_used_at: now,
            scope: "customer".into(),
        }
    }

    /// A fresh staff session: `login` is the staff member's.
    pub fn staff(id: String, login: CustomerId, refresh_hash: String, now: OffsetDateTime) -> Self {
        Self {
            scope: "staff".into(),
            ..Self::new(id, login, "staff".into(), refresh_hash, now)
        }
    }
}

/// A customer's TOTP second factor. The secret is sealed by the Access Manager before it
/// gets here; the store never sees it in clear.
#[derive(Clone, Debug, PartialEq)]
pub struct TotpEnrolment {
    pub customer_id: CustomerId,
    pub sealed_secret: Vec<u8>,
    /// False until a first valid code confirmed the enrolment.
    pub confirmed: bool,
    /// The last TOTP time step accepted: a step is accepted once.
    pub last_step: i64,
    pub created_at: OffsetDateTime,
}

/// A one-time-code challenge as the store keeps it. The Access Manager owns `state` (its
/// own JSON: hashed code, attempts, binding ...); the store guards concurrent updates with
/// `version` so a code can be used once even when two nodes verify it at the same moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ChallengeRecord {
    pub id: String,
    pub state: String,
    pub expires_at: OffsetDateTime,
    pub version: u64,
}

/// How many failures lock a key, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub lock_for: time::Duration,
}

/// Failure counter of one key (a login, a device, an IP, a staff account).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    pub failures: u32,
    pub locked_until: Option<OffsetDateTime>,
}

impl LockState {
    /// Whether the key is locked at `now`.
    pub fn locked(&self, now: OffsetDateTime) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// The state after one more failure at `now` (pure). A lock that has ended starts a
    /// fresh count; reaching `max_failures` locks the key for `lock_for`.
    pub fn after_failure(self, policy: LockoutPolicy, now: OffsetDateTime) -> LockState {
        let fresh = self.locked_until.is_some_and(|until| now >= until);
        let failures = if fresh {
            1
        } else {
            self.failures.saturating_add(1)
        };
        let locked_until = if failures >= policy.max_failures {
            Some(if self.locked(now) {
                self.locked_until.unwrap_or(now + policy.lock_for)
            } else {
                now + policy.lock_for
            })
        } else if fresh {
            None
        } else {
            self.locked_until
        };
        LockState {
            failures,
            locked_until,
        }
    }
}

/// One line of the audit log: every authentication event and every refused authorization.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub at: OffsetDateTime,
    /// `login`, `login_refused`, `register`, `refresh_reuse`, `authz_refused` ...
    pub kind: String,
    /// Who acted: a customer id, a staff login, or "" when unknown.
    pub actor: String,
    /// What it was about (a session id, a path, a masked phone).
    pub subject: String,
    pub ip: String,
    pub outcome: String,
}

/// A back-office account.
#[derive(Clone, Debug, PartialEq)]
pub struct StaffAccount {
    pub login: String,
    /// `support`, `marketing`, `operations` or `security`.
    pub role: String,
    pub password_hash: String,
    /// The TOTP secret (second factor).
    pub totp_secret: Vec<u8>,
}

/// Credentials, sessions, challenges, lockouts, trusted devices, the audit log, staff
/// accounts and platform secrets.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    async fn credential(&self, login: &str) -> Result<Option<Credential>, StoreError>;
    /// Inserts the credential unless the login exists; returns whether it was inserted.
    async fn insert_credential(&self, credential: &Credential) -> Result<bool, StoreError>;
    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Marks the session revoked (at `now`); twice is fine, an unknown id is `NotFound`.
    async fn revoke_session(&self, id: &str) -> Result<(), StoreError>;
    /// A customer's sessions that are not revoked, newest first (at most 100); never staff
    /// sessions.
    async fn sessions_of(&self, customer: &CustomerId) -> Result<Vec<SessionRecord>, StoreError>;
    /// Staff sessions that are not revoked, newest first (at most `limit`).
    async fn staff_sessions(&self, limit: u32) -> Result<Vec<SessionRecord>, StoreError>;
    /// Rotates the refresh token if, and only if, the session is live and its current hash is
    /// `old_hash`: returns false otherwise (a reused or concurrently used token).
    async fn rotate_refresh(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Sessions revoked at or after `since`: (session id, customer id). Fills a starting
    /// node's revoked set so tokens of sessions revoked before it started stay refused.
    async fn revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(String, CustomerId)>, StoreError>;
    /// Replaces the password hash of an existing login (`NotFound` otherwise).
    async fn set_password(&self, login: &str, password_hash: &str) -> Result<(), StoreError>;
    /// Moves the customer's phone on file (reference ABS) and login from `old` to `new` in
    /// one transaction; false when another customer or login already has `new`.
    async fn change_phone(
        &self,
        customer: &CustomerId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    async fn insert_challenge(&self, challenge: &ChallengeRecord) -> Result<(), StoreError>;
    async fn challenge(&self, id: &str) -> Result<Option<ChallengeRecord>, StoreError>;
    /// Replaces the state if the stored version is still `expected_version` (then bumps it);
    /// returns whether it did.
    async fn update_challenge(
        &self,
        id: &str,
        expected_version: u64,
        state: &str,
    ) -> Result<bool, StoreError>;

    /// The failure counter of `key` (default when none).
    async fn lock_state(&self, key: &str) -> Result<LockState, StoreError>;
    /// Atomically counts one failure of `key` under `policy`; returns the new state.
    async fn record_failure(
        &self,
        key: &str,
        policy: LockoutPolicy,
        now: OffsetDateTime,
    ) -> Result<LockState, StoreError>;
    async fn clear_failures(&self, key: &str) -> Result<(), StoreError>;

    /// Remembers a device as trusted for the customer from `now` (idempotent; trusting again
    /// renews the trust). Device `*` trusts all.
    async fn trust_device(
        &self,
        customer: &CustomerId,
        device_id: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    async fn is_trusted_device(
        &self,
        customer: &CustomerId,
        device_id: &str,
    ) -> Result<bool, StoreError>;
    /// When the device was (last) trusted for the customer, if it is; `*` counts too.
    async fn device_trusted_at(
        &self,
        customer: &CustomerId,
        device_id: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// The IP networks the customer completed a login from, most recent first (at most 100).
    async fn login_networks(&self, customer: &CustomerId) -> Result<Vec<String>, StoreError>;
    /// Remembers a completed login from `network` (idempotent; renews its time).
    async fn remember_login_network(
        &self,
        customer: &CustomerId,
        network: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Flags the customer as risky until `until` (antifraud, set by the security staff):
    /// logins need a second factor meanwhile. A time in the past clears the flag.
    async fn set_risk_flag(
        &self,
        customer: &CustomerId,
        until: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Until when the customer is flagged, if ever (possibly in the past).
    async fn risk_flag(&self, customer: &CustomerId) -> Result<Option<OffsetDateTime>, StoreError>;

    async fn totp_enrolment(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<TotpEnrolment>, StoreError>;
    /// Stores an unconfirmed enrolment, replacing an unconfirmed one; false (and nothing
    /// changes) while a confirmed one exists.
    async fn start_totp(&self, enrolment: &TotpEnrolment) -> Result<bool, StoreError>;
    /// Confirms the unconfirmed enrolment whose sealed secret is `sealed_secret`, recording
    /// `step` as used; false when there is no such enrolment (replaced or already confirmed).
    async fn confirm_totp(
        &self,
        customer: &CustomerId,
        sealed_secret: &[u8],
        step: i64,
    ) -> Result<bool, StoreError>;
    /// Records `step` as used if the enrolment is confirmed and `step` is later than the last
    /// used one; false means a replayed (or older) step.
    async fn use_totp_step(&self, customer: &CustomerId, step: i64) -> Result<bool, StoreError>;
    /// Removes the enrolment; returns whether there was one.
    async fn delete_totp(&self, customer: &CustomerId) -> Result<bool, StoreError>;

    /// Appends to the audit log (which has no update or delete).
    async fn audit_append(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest audit entries, newest first.
    async fn audit_recent(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Inserts the account unless the login exists; returns whether it was inserted.
    async fn insert_staff(&self, account: &StaffAccount) -> Result<bool, StoreError>;
    async fn staff(&self, login: &str) -> Result<Option<StaffAccount>, StoreError>;
    /// Records `step` as the staff account's last accepted TOTP step if it is later than the
    /// recorded one (compare-and-set); false means a replayed (or older) step or no account.
    async fn use_staff_totp_step(&self, login: &str, step: i64) -> Result<bool, StoreError>;
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

/// An authorization: `amount_minor` of an account reserved until it is captured (a transfer
/// of at most that much) or released. Idempotent by `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsHold {
    pub id: String,
    pub account_id: String,
    /// Positive, in the account's currency.
    pub amount_minor: i64,
    /// The available balance (balance less holds) may not fall below this.
    pub floor_minor: i64,
}

/// What an authorization left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsHoldResult {
    /// The account's balance less every active hold, after this one.
    pub available_minor: i64,
    /// True when this hold id was already authorized (nothing changed).
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
    /// Records cards' full-PAN hashes (HMAC under the ABS's key; never the PAN) for
    /// registration by card number, as (card id, customer, hash), in one write. Idempotent.
    async fn abs_set_card_pans(
        &self,
        cards: &[(String, CustomerId, String)],
    ) -> Result<(), StoreError>;
    /// The customer whose card has this PAN hash.
    async fn abs_customer_by_card(&self, pan_hash: &str)
    -> Result<Option<AbsCustomer>, StoreError>;
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
    /// Opens `product` (balance zero) and applies `transfer` (which funds it) in one
    /// transaction: both or neither. A product id already held answers the transfer's first
    /// result (`duplicate`), or `Refused("idempotency_conflict")` when that product is
    /// another customer's or its transfer is another. Refusals as for `abs_transfer`.
    async fn abs_open_product(
        &self,
        product: &AbsProduct,
        transfer: &AbsTransfer,
    ) -> Result<AbsTransferResult, StoreError>;
    /// Replaces a product's details (kind-specific fields, e.g. a card's `daily_limit`);
    /// `NotFound` for an unknown product.
    async fn abs_set_details(
        &self,
        id: &str,
        details: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Reserves money: refused (`Refused`) with `insufficient_funds` when the available
    /// balance (balance less active holds) would fall below the floor, `account_closed`,
    /// `idempotency_conflict` (the id was used for another account or amount); `NotFound`
    /// for an unknown account. Transfers (`abs_transfer`) check their debits against the
    /// available balance too.
    async fn abs_hold(&self, hold: &AbsHold) -> Result<AbsHoldResult, StoreError>;
    /// Captures a hold with `transfer` in one transaction: the transfer's debit of the held
    /// account is at most the hold (`capture_exceeds_hold`), the hold ends (its rest is
    /// released). A repeated capture with the same transfer answers the first result;
    /// `hold_captured` / `hold_released` when it ended otherwise; `NotFound` if unknown.
    async fn abs_capture(
        &self,
        hold_id: &str,
        transfer: &AbsTransfer,
    ) -> Result<AbsTransferResult, StoreError>;
    /// Releases a hold; `Ok(false)` if it was already released (idempotent),
    /// `hold_captured` if it was captured, `NotFound` if unknown.
    async fn abs_release(&self, hold_id: &str) -> Result<bool, StoreError>;
    /// The current rate set (its version and its JSON), if the treasury ever set one.
    async fn abs_rate_set(&self) -> Result<Option<(i64, String)>, StoreError>;
    /// Saves a rate set if its version is newer than the stored one; whether it did.
    async fn abs_save_rate_set(&self, version: i64, body: &str) -> Result<bool, StoreError>;
}

/// Everything a node needs from its store.
pub trait Store: JournalStore + AuthStore + AbsStore {}
impl<T: JournalStore + AuthStore + AbsStore> Store for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_counts_locks_and_ends() {
        let policy = LockoutPolicy {
            max_failures: 3,
            lock_for: time::Duration::seconds(60),
        };
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let mut state = LockState::default();
        for n in 1..=2 {
            state = state.after_failure(policy, t0);
            assert_eq!(state.failures, n);
            assert!(!state.locked(t0));
        }
        state = state.after_failure(policy, t0);
        assert!(state.locked(t0));
        assert!(state.locked(t0 + time::Duration::seconds(59)));
        // More failures while locked do not extend the lock.
        let again = state.after_failure(policy, t0 + time::Duration::seconds(30));
        assert_eq!(again.locked_until, state.locked_until);
        // After the lock: unlocked, and the next failure starts a fresh count.
        let later = t0 + time::Duration::seconds(60);
        assert!(!state.locked(later));
        let fresh = state.after_failure(policy, later);
        assert_eq!(fresh.failures, 1);
        assert!(!fresh.locked(later));
    }
}
