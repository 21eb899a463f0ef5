//! The sqlx store for SQLite and PostgreSQL: the same SQL text (`$N` parameters work in
//! both), DDL with the two dialects' few differences.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kernel::CustomerId;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::{mpsc, oneshot};

use super::{NotifStoreError, NotifierStore, Prefetched, SendState};
use crate::model::{Channel, DeliveryOutcome, Device, Language, Platform, Preferences};

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// SQLite or PostgreSQL. Construct with a pool or a URL; [`SqlStore::migrate`] is idempotent
/// and also run by the URL constructors.
///
/// Send records, outcomes and queue acks go through a group-commit writer: each call still
/// returns only once its rows are committed, but the calls that arrive while a transaction
/// runs share the next one (multi-row statements), so a busy worker pays one commit for
/// many sends instead of three statements each.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: Pool,
    writer: Arc<Writer>,
}

/// One row a caller waits to see committed.
#[derive(Debug)]
enum Write {
    Send {
        request_id: String,
        channel: Channel,
        state: SendState,
        at: i64,
    },
    Outcome {
        request_id: String,
        at: i64,
        json: String,
    },
    Ack {
        id: String,
        owner: Arc<str>,
    },
}

/// A queue claim run inside a group commit (so that in file-backed SQLite a claim does not
/// cost a commit, i.e. an fsync, of its own).
struct Claim {
    owner: String,
    lease_ms: i64,
    limit: u32,
    rows: oneshot::Sender<Result<Vec<QueueRow>, NotifStoreError>>,
}

struct Op {
    writes: Vec<Write>,
    done: Option<oneshot::Sender<Result<(), NotifStoreError>>>,
    claim: Option<Claim>,
}

/// The group-commit writer's mailbox; its task is started on first use (in the caller's
/// runtime) and ends when the last [`SqlStore`] clone is dropped.
#[derive(Default)]
struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Op>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// Rows per multi-row statement (well under SQLite's and PostgreSQL's parameter limits).
const ROWS_PER_STATEMENT: usize = 200;
/// Writes one group commit takes at most.
const MAX_GROUP: usize = 1024;

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` parameters from `$first`.
fn values(first: usize, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * cols + c).to_string());
        }
        out.push(')');
    }
    out
}

/// `$first, $first+1, ...` for an `IN (...)` list.
fn list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

macro_rules! with_pool {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Pg($pool) => $body,
        }
    };
}

fn db(e: sqlx::Error) -> NotifStoreError {
    NotifStoreError::Unavailable(e.to_string())
}

const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS notif_preferences (customer_id TEXT PRIMARY KEY, prefs TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notif_devices (token TEXT PRIMARY KEY, customer_id TEXT NOT NULL, \
     platform TEXT NOT NULL, language TEXT, created_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS notif_devices_customer ON notif_devices (customer_id)",
    "CREATE TABLE IF NOT EXISTS notif_sends (request_id TEXT NOT NULL, channel TEXT NOT NULL, \
     state TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (request_id, channel))",
    "CREATE TABLE IF NOT EXISTS notif_outcomes (request_id TEXT NOT NULL, at BIGINT NOT NULL, \
     outcome TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS notif_outcomes_request ON notif_outcomes (request_id)",
    "CREATE TABLE IF NOT EXISTS notif_code_caps (customer_id TEXT NOT NULL, window_start BIGINT NOT NULL, \
     count BIGINT NOT NULL, PRIMARY KEY (customer_id, window_start))",
    "CREATE TABLE IF NOT EXISTS notif_queue (id TEXT PRIMARY KEY, priority BIGINT NOT NULL, \
     payload {blob} NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, visible_at BIGINT NOT NULL, \
     lease_owner TEXT, enqueued_at BIGINT NOT NULL)",
    // A claim walks this index in order and stops after its batch (ready rows come first
    // within a priority); the former (visible_at, priority, enqueued_at) index made every
    // claim sort the whole ready backlog.
    "DROP INDEX IF EXISTS notif_queue_ready",
    "CREATE INDEX IF NOT EXISTS notif_queue_claim ON notif_queue (priority, visible_at)",
    "CREATE TABLE IF NOT EXISTS notif_dead (id TEXT NOT NULL, payload {blob} NOT NULL, reason TEXT NOT NULL, \
     attempts BIGINT NOT NULL, at BIGINT NOT NULL)",
];

/// A claimed queue item.
#[derive(Clone, Debug)]
pub(crate) struct QueueRow {
    pub id: String,
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub priority: i64,
    pub enqueued_at: i64,
}

/// Leases up to `$4` visible items to `$1` until `$2` (`$3` = now): codes first, then in the
/// order they became ready (enqueued, or due again after a retry delay). The outer
/// `visible_at <= $3` makes a claim exclusive: in PostgreSQL a concurrent claimer that picked
/// the same row re-checks it after our commit and skips it (and SKIP LOCKED lets it pick
/// other rows instead of waiting); SQLite has one writer.
fn claim_sql(pool: &Pool) -> &'static str {
    match pool {
        Pool::Sqlite(_) => {
            "UPDATE notif_queue SET lease_owner = $1, visible_at = $2, attempts = attempts + 1 \
             WHERE visible_at <= $3 AND id IN (SELECT id FROM notif_queue WHERE visible_at <= $3 \
             ORDER BY priority, visible_at LIMIT $4) \
             RETURNING id, payload, attempts, priority, enqueued_at"
        }
        Pool::Pg(_) => {
            "UPDATE notif_queue SET lease_owner = $1, visible_at = $2, attempts = attempts + 1 \
             WHERE visible_at <= $3 AND id IN (SELECT id FROM notif_queue WHERE visible_at <= $3 \
             ORDER BY priority, visible_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, payload, attempts, priority, enqueued_at"
        }
    }
}

async fn run_writer(pool: Pool, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut ops = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut rows = first.writes.len();
        ops.push(first);
        // Let the sends finishing right now join this group rather than the next one.
        tokio::task::yield_now().await;
        // Everything that queued up while the previous group committed joins this one.
        while rows < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => {
                    rows += op.writes.len();
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        match commit(&pool, &ops).await {
            Ok(rows) => reply(ops.drain(..), Ok(()), rows),
            Err(e) if ops.len() == 1 => reply(ops.drain(..), Err(e), Vec::new()),
            Err(_) => {
                // One bad write must not fail the others: commit each on its own.
                for op in ops.drain(..) {
                    let one = [op];
                    let result = commit(&pool, &one).await;
                    let [op] = one;
                    match result {
                        Ok(rows) => reply(std::iter::once(op), Ok(()), rows),
                        Err(e) => reply(std::iter::once(op), Err(e), Vec::new()),
                    }
                }
            }
        }
    }
}

/// Tells each op of a group how it went; `claimed` holds the claims' rows in order.
fn reply(
    ops: impl Iterator<Item = Op>,
    status: Result<(), NotifStoreError>,
    claimed: Vec<Vec<QueueRow>>,
) {
    let mut claimed = claimed.into_iter();
    for op in ops {
        if let Some(done) = op.done {
            let _ = done.send(status.clone());
        }
        if let Some(claim) = op.claim {
            let rows = status.clone().map(|()| claimed.next().unwrap_or_default());
            let _ = claim.rows.send(rows);
        }
    }
}

/// One transaction for a group: multi-row inserts of send records and outcomes, the acks
/// (deletes by lease owner), then the claims; returns each claim's rows in order.
async fn commit(pool: &Pool, ops: &[Op]) -> Result<Vec<Vec<QueueRow>>, NotifStoreError> {
    let claims: Vec<&Claim> = ops.iter().filter_map(|op| op.claim.as_ref()).collect();
    let mut claimed = Vec::with_capacity(claims.len());
    let mut sends = Vec::new();
    let mut outcomes = Vec::new();
    let mut acks: HashMap<&str, Vec<&str>> = HashMap::new();
    for write in ops.iter().flat_map(|op| &op.writes) {
        match write {
            Write::Send {
                request_id,
                channel,
                state,
                at,
            } => sends.push((request_id.as_str(), channel.as_str(), state.as_str(), *at)),
            Write::Outcome {
                request_id,
                at,
                json,
            } => outcomes.push((request_id.as_str(), *at, json.as_str())),
            Write::Ack { id, owner } => acks.entry(owner).or_default().push(id.as_str()),
        }
    }
    macro_rules! run {
        ($p:ident) => {{
            let mut tx = $p.begin().await.map_err(db)?;
            for chunk in sends.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO notif_sends (request_id, channel, state, at) VALUES {} \
                     ON CONFLICT (request_id, channel) DO NOTHING",
                    values(1, chunk.len(), 4)
                );
                let mut q = sqlx::query(&sql);
                for (id, channel, state, at) in chunk {
                    q = q.bind(*id).bind(*channel).bind(*state).bind(*at);
                }
                q.execute(&mut *tx).await.map_err(db)?;
            }
            for chunk in outcomes.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO notif_outcomes (request_id, at, outcome) VALUES {}",
                    values(1, chunk.len(), 3)
                );
                let mut q = sqlx::query(&sql);
                for (id, at, json) in chunk {
                    q = q.bind(*id).bind(*at).bind(*json);
                }
                q.execute(&mut *tx).await.map_err(db)?;
            }
            for (owner, ids) in &acks {
                for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                    let sql = format!(
                        "DELETE FROM notif_queue WHERE lease_owner = $1 AND id IN ({})",
                        list(2, chunk.len())
                    );
                    let mut q = sqlx::query(&sql).bind(*owner);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    q.execute(&mut *tx).await.map_err(db)?;
                }
            }
            if !claims.is_empty() {
                let sql = claim_sql(pool);
                let now = now_ms();
                for claim in &claims {
                    let rows = sqlx::query(sql)
                        .bind(&claim.owner)
                        .bind(now + claim.lease_ms)
                        .bind(now)
                        .bind(i64::from(claim.limit))
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db)?;
                    let rows = rows
                        .iter()
                        .map(|r| {
                            Ok(QueueRow {
                                id: r.try_get::<String, _>(0)?,
                                payload: r.try_get::<Vec<u8>, _>(1)?,
                                attempts: r.try_get::<i64, _>(2)? as u32,
                                priority: r.try_get::<i64, _>(3)?,
                                enqueued_at: r.try_get::<i64, _>(4)?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(db)?;
                    claimed.push(rows);
                }
            }
            tx.commit().await.map_err(db)?;
            Ok(claimed)
        }};
    }
    match pool {
        Pool::Sqlite(p) => run!(p),
        Pool::Pg(p) => run!(p),
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl SqlStore {
    pub async fn from_sqlite_pool(pool: SqlitePool) -> Result<Self, NotifStoreError> {
        let store = Self {
            pool: Pool::Sqlite(pool),
            writer: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn from_pg_pool(pool: PgPool) -> Result<Self, NotifStoreError> {
        let store = Self {
            pool: Pool::Pg(pool),
            writer: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Hands `writes` to the group-commit writer and waits until they are committed.
    async fn write(&self, writes: Vec<Write>) -> Result<(), NotifStoreError> {
        let (done, rx) = oneshot::channel();
        self.submit(Op {
            writes,
            done: Some(done),
            claim: None,
        });
        rx.await.unwrap_or_else(|_| {
            Err(NotifStoreError::Unavailable(
                "the notifier store writer stopped".into(),
            ))
        })
    }

    fn submit(&self, op: Op) {
        {
            let mut tx = self.writer.tx.lock().unwrap_or_else(|e| e.into_inner());
            let unsent = match tx.as_ref() {
                Some(sender) => sender.send(op).err().map(|e| e.0),
                None => Some(op),
            };
            // First use, or the writer's runtime is gone: start one in this runtime.
            if let Some(op) = unsent {
                let (sender, receiver) = mpsc::unbounded_channel();
                let _ = sender.send(op);
                tokio::spawn(run_writer(self.pool.clone(), receiver));
                *tx = Some(sender);
            }
        }
    }

    /// `sqlite://path` (created if missing, WAL), `sqlite::memory:`, or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self, NotifStoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .connect(url)
                .await
                .map_err(db)?;
            Self::from_pg_pool(pool).await
        } else {
            let options: SqliteConnectOptions = url
                .parse::<SqliteConnectOptions>()
                .map_err(db)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            let memory = url.contains(":memory:");
            let pool = SqlitePoolOptions::new()
                .max_connections(if memory { 1 } else { 4 })
                .connect_with(options)
                .await
                .map_err(db)?;
            Self::from_sqlite_pool(pool).await
        }
    }

    /// Creates the `notif_` tables when missing (safe to run on every start, on every node).
    pub async fn migrate(&self) -> Result<(), NotifStoreError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                for ddl in DDL {
                    sqlx::query(&ddl.replace("{blob}", "BLOB"))
                        .execute(pool)
                        .await
                        .map_err(db)?;
                }
            }
            Pool::Pg(pool) => {
                // Concurrent CREATE ... IF NOT EXISTS can collide in PostgreSQL: serialize.
                let mut tx = pool.begin().await.map_err(db)?;
                sqlx::query("SELECT pg_advisory_xact_lock(7366151)")
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for ddl in DDL {
                    sqlx::query(&ddl.replace("{blob}", "BYTEA"))
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
            }
        }
        Ok(())
    }

    // ----- the embedded work queue -----

    /// Adds an item unless its id is already queued; returns whether it was added.
    pub(crate) async fn queue_push(
        &self,
        id: &str,
        priority: i64,
        payload: &[u8],
    ) -> Result<bool, NotifStoreError> {
        let now = now_ms();
        let sql = "INSERT INTO notif_queue (id, priority, payload, attempts, visible_at, lease_owner, enqueued_at) \
                   VALUES ($1, $2, $3, 0, $4, NULL, $4) ON CONFLICT (id) DO NOTHING";
        let done = with_pool!(self, p => sqlx::query(sql).bind(id).bind(priority).bind(payload).bind(now)
            .execute(p).await.map_err(db)?.rows_affected());
        Ok(done == 1)
    }

    /// Leases up to `limit` visible items to `owner` for `lease_ms` (see [`claim_sql`]), in
    /// the writer's next group commit.
    pub(crate) async fn queue_claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueueRow>, NotifStoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op {
            writes: Vec::new(),
            done: None,
            claim: Some(Claim {
                owner: owner.to_owned(),
                lease_ms,
                limit,
                rows: tx,
            }),
        });
        let mut rows = rx.await.unwrap_or_else(|_| {
            Err(NotifStoreError::Unavailable(
                "the notifier store writer stopped".into(),
            ))
        })?;
        rows.sort_by(|a, b| {
            (a.priority, a.enqueued_at, &a.id).cmp(&(b.priority, b.enqueued_at, &b.id))
        });
        Ok(rows)
    }

    /// Removes a finished item, if `owner` still holds its lease (group-committed with other
    /// acks and send records).
    pub(crate) async fn queue_ack(
        &self,
        id: &str,
        owner: &Arc<str>,
    ) -> Result<(), NotifStoreError> {
        self.write(vec![Write::Ack {
            id: id.to_owned(),
            owner: owner.clone(),
        }])
        .await
    }

    /// Makes an item visible again after `delay_ms`.
    pub(crate) async fn queue_retry(
        &self,
        id: &str,
        owner: &str,
        delay_ms: i64,
    ) -> Result<(), NotifStoreError> {
        let sql = "UPDATE notif_queue SET lease_owner = NULL, visible_at = $3 WHERE id = $1 AND lease_owner = $2";
        with_pool!(self, p => sqlx::query(sql).bind(id).bind(owner).bind(now_ms() + delay_ms).execute(p).await.map(|_| ()).map_err(db)?);
        Ok(())
    }

    /// Moves an item to the dead-letter table with its reason.
    pub(crate) async fn queue_dead(
        &self,
        id: &str,
        owner: &str,
        reason: &str,
    ) -> Result<(), NotifStoreError> {
        let insert = "INSERT INTO notif_dead (id, payload, reason, attempts, at) \
                      SELECT id, payload, $3, attempts, $4 FROM notif_queue WHERE id = $1 AND lease_owner = $2";
        let delete = "DELETE FROM notif_queue WHERE id = $1 AND lease_owner = $2";
        with_pool!(self, p => {
            let mut tx = p.begin().await.map_err(db)?;
            sqlx::query(insert).bind(id).bind(owner).bind(reason).bind(now_ms()).execute(&mut *tx).await.map_err(db)?;
            sqlx::query(delete).bind(id).bind(owner).execute(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
        });
        Ok(())
    }

    /// Dead letters, oldest first: `(id, payload, reason)`.
    pub async fn dead_letters(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>, String)>, NotifStoreError> {
        let sql = "SELECT id, payload, reason FROM notif_dead ORDER BY at, id LIMIT $1";
        with_pool!(self, p => {
            let rows = sqlx::query(sql).bind(i64::from(limit)).fetch_all(p).await.map_err(db)?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>().map_err(db)
        })
    }

    /// Makes every leased item visible again at once. Only for a queue that one process owns
    /// (embedded mode) at its start: any lease then belongs to a previous, dead incarnation,
    /// so waiting for the leases to time out would only delay notifications.
    pub async fn queue_release_all(&self) -> Result<u64, NotifStoreError> {
        let sql = "UPDATE notif_queue SET lease_owner = NULL, visible_at = $1 WHERE lease_owner IS NOT NULL";
        let now = now_ms();
        with_pool!(self, p => {
            let done = sqlx::query(sql).bind(now).execute(p).await.map_err(db)?;
            Ok(done.rows_affected())
        })
    }

    /// Items still queued (leased or not).
    pub async fn queue_len(&self) -> Result<u64, NotifStoreError> {
        let sql = "SELECT COUNT(*) FROM notif_queue";
        with_pool!(self, p => {
            let n: i64 = sqlx::query(sql).fetch_one(p).await.map_err(db)?.try_get(0).map_err(db)?;
            Ok(n as u64)
        })
    }
}

fn corrupt(e: impl std::fmt::Display) -> NotifStoreError {
    NotifStoreError::Corrupt(e.to_string())
}

#[async_trait]
impl NotifierStore for SqlStore {
    async fn preferences(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<Preferences>, NotifStoreError> {
        let sql = "SELECT prefs FROM notif_preferences WHERE customer_id = $1";
        let raw: Option<String> = with_pool!(self, p => sqlx::query(sql).bind(customer.as_str())
            .fetch_optional(p).await.map_err(db)?.map(|r| r.try_get(0)).transpose().map_err(db)?);
        raw.map(|r| serde_json::from_str(&r).map_err(corrupt))
            .transpose()
    }

    async fn put_preferences(
        &self,
        customer: &CustomerId,
        prefs: &Preferences,
    ) -> Result<(), NotifStoreError> {
        let sql = "INSERT INTO notif_preferences (customer_id, prefs) VALUES ($1, $2) \
                   ON CONFLICT (customer_id) DO UPDATE SET prefs = excluded.prefs";
        let json = serde_json::to_string(prefs).map_err(corrupt)?;
        with_pool!(self, p => sqlx::query(sql).bind(customer.as_str()).bind(json).execute(p).await.map(|_| ()).map_err(db)?);
        Ok(())
    }

    async fn devices(&self, customer: &CustomerId) -> Result<Vec<Device>, NotifStoreError> {
        let sql = "SELECT platform, token, language FROM notif_devices WHERE customer_id = $1 ORDER BY created_at, token";
        let rows: Vec<(String, String, Option<String>)> = with_pool!(self, p => {
            let rows = sqlx::query(sql).bind(customer.as_str()).fetch_all(p).await.map_err(db)?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>().map_err(db)?
        });
        rows.into_iter()
            .map(|(platform, token, language)| {
                Ok(Device {
                    platform: Platform::parse(&platform)
                        .ok_or_else(|| corrupt(format!("platform {platform:?}")))?,
                    token,
                    language: language.as_deref().and_then(Language::parse),
                })
            })
            .collect()
    }

    async fn upsert_device(
        &self,
        customer: &CustomerId,
        device: &Device,
    ) -> Result<(), NotifStoreError> {
        let sql = "INSERT INTO notif_devices (token, customer_id, platform, language, created_at) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO UPDATE SET customer_id = excluded.customer_id, \
                   platform = excluded.platform, language = excluded.language";
        let language = device.language.map(|l| l.as_str());
        with_pool!(self, p => sqlx::query(sql).bind(&device.token).bind(customer.as_str())
            .bind(device.platform.as_str()).bind(language).bind(now_ms()).execute(p).await.map(|_| ()).map_err(db)?);
        Ok(())
    }

    async fn remove_device(
        &self,
        customer: &CustomerId,
        token: &str,
    ) -> Result<bool, NotifStoreError> {
        let sql = "DELETE FROM notif_devices WHERE customer_id = $1 AND token = $2";
        let n = with_pool!(self, p => sqlx::query(sql).bind(customer.as_str()).bind(token)
            .execute(p).await.map_err(db)?.rows_affected());
        Ok(n > 0)
    }

    async fn send_state(
        &self,
        request_id: &str,
        channel: Channel,
    ) -> Result<Option<SendState>, NotifStoreError> {
        let sql = "SELECT state FROM notif_sends WHERE request_id = $1 AND channel = $2";
        let raw: Option<String> = with_pool!(self, p => sqlx::query(sql).bind(request_id).bind(channel.as_str())
            .fetch_optional(p).await.map_err(db)?.map(|r| r.try_get(0)).transpose().map_err(db)?);
        raw.map(|s| SendState::parse(&s).ok_or_else(|| corrupt(format!("send state {s:?}"))))
            .transpose()
    }

    async fn record_send(
        &self,
        request_id: &str,
        channel: Channel,
        state: SendState,
    ) -> Result<(), NotifStoreError> {
        self.write(vec![Write::Send {
            request_id: request_id.to_owned(),
            channel,
            state,
            at: now_ms(),
        }])
        .await
    }

    async fn record_outcome(&self, outcome: &DeliveryOutcome) -> Result<(), NotifStoreError> {
        let json = serde_json::to_string(outcome).map_err(corrupt)?;
        self.write(vec![Write::Outcome {
            request_id: outcome.request_id.clone(),
            at: now_ms(),
            json,
        }])
        .await
    }

    async fn record_final(
        &self,
        request_id: &str,
        channel: Channel,
        state: SendState,
        outcome: &DeliveryOutcome,
    ) -> Result<(), NotifStoreError> {
        let json = serde_json::to_string(outcome).map_err(corrupt)?;
        let at = now_ms();
        self.write(vec![
            Write::Send {
                request_id: request_id.to_owned(),
                channel,
                state,
                at,
            },
            Write::Outcome {
                request_id: outcome.request_id.clone(),
                at,
                json,
            },
        ])
        .await
    }

    async fn prefetch(
        &self,
        customers: &[CustomerId],
        request_ids: &[String],
    ) -> Result<Prefetched, NotifStoreError> {
        let by_name: HashMap<&str, &CustomerId> =
            customers.iter().map(|c| (c.as_str(), c)).collect();
        let mut names: Vec<&str> = by_name.keys().copied().collect();
        names.sort_unstable();
        let mut ids: Vec<&str> = request_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Prefetched::default();
        let mut prefs_rows: Vec<(String, String)> = Vec::new();
        let mut device_rows: Vec<(String, String, String, Option<String>)> = Vec::new();
        let mut send_rows: Vec<(String, String, String)> = Vec::new();
        with_pool!(self, p => {
            let mut conn = p.acquire().await.map_err(db)?;
            for chunk in names.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT customer_id, prefs FROM notif_preferences WHERE customer_id IN ({})",
                    list(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for c in chunk {
                    q = q.bind(*c);
                }
                for r in q.fetch_all(&mut *conn).await.map_err(db)? {
                    prefs_rows.push((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?));
                }
                let sql = format!(
                    "SELECT customer_id, platform, token, language FROM notif_devices \
                     WHERE customer_id IN ({}) ORDER BY created_at, token",
                    list(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for c in chunk {
                    q = q.bind(*c);
                }
                for r in q.fetch_all(&mut *conn).await.map_err(db)? {
                    device_rows.push((
                        r.try_get(0).map_err(db)?,
                        r.try_get(1).map_err(db)?,
                        r.try_get(2).map_err(db)?,
                        r.try_get(3).map_err(db)?,
                    ));
                }
            }
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT request_id, channel, state FROM notif_sends WHERE request_id IN ({})",
                    list(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                for r in q.fetch_all(&mut *conn).await.map_err(db)? {
                    send_rows.push((
                        r.try_get(0).map_err(db)?,
                        r.try_get(1).map_err(db)?,
                        r.try_get(2).map_err(db)?,
                    ));
                }
            }
        });
        for (customer, prefs) in prefs_rows {
            if let Some(c) = by_name.get(customer.as_str()) {
                out.preferences
                    .insert((*c).clone(), serde_json::from_str(&prefs).map_err(corrupt)?);
            }
        }
        for (customer, platform, token, language) in device_rows {
            if let Some(c) = by_name.get(customer.as_str()) {
                out.devices.entry((*c).clone()).or_default().push(Device {
                    platform: Platform::parse(&platform)
                        .ok_or_else(|| corrupt(format!("platform {platform:?}")))?,
                    token,
                    language: language.as_deref().and_then(Language::parse),
                });
            }
        }
        for (request_id, channel, state) in send_rows {
            let channel =
                Channel::parse(&channel).ok_or_else(|| corrupt(format!("channel {channel:?}")))?;
            let state =
                SendState::parse(&state).ok_or_else(|| corrupt(format!("send state {state:?}")))?;
            out.sends.insert((request_id, channel), state);
        }
        Ok(out)
    }

    async fn outcomes(&self, request_id: &str) -> Result<Vec<DeliveryOutcome>, NotifStoreError> {
        let sql = "SELECT outcome FROM notif_outcomes WHERE request_id = $1 ORDER BY at";
        let rows: Vec<String> = with_pool!(self, p => {
            let rows = sqlx::query(sql).bind(request_id).fetch_all(p).await.map_err(db)?;
            rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, sqlx::Error>>().map_err(db)?
        });
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(corrupt))
            .collect()
    }

    async fn count_code(
        &self,
        customer: &CustomerId,
        window_start: i64,
    ) -> Result<u32, NotifStoreError> {
        let sql = "INSERT INTO notif_code_caps (customer_id, window_start, count) VALUES ($1, $2, 1) \
                   ON CONFLICT (customer_id, window_start) DO UPDATE SET count = notif_code_caps.count + 1 \
                   RETURNING count";
        let n: i64 = with_pool!(self, p => sqlx::query(sql).bind(customer.as_str()).bind(window_start)
            .fetch_one(p).await.map_err(db)?.try_get(0).map_err(db)?);
        Ok(n as u32)
    }
}
