//! The sqlx store for SQLite and PostgreSQL: the same SQL text (`$N` parameters work in
//! both), DDL with the two dialects' few differences.

use async_trait::async_trait;
use kernel::CustomerId;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::{NotifStoreError, NotifierStore, SendState};
use crate::model::{Channel, DeliveryOutcome, Device, Language, Platform, Preferences};

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// SQLite or PostgreSQL. Construct with a pool or a URL; [`SqlStore::migrate`] is idempotent
/// and also run by the URL constructors.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: Pool,
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
    "CREATE INDEX IF NOT EXISTS notif_queue_ready ON notif_queue (visible_at, priority, enqueued_at)",
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
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl SqlStore {
    pub async fn from_sqlite_pool(pool: SqlitePool) -> Result<Self, NotifStoreError> {
        let store = Self {
            pool: Pool::Sqlite(pool),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn from_pg_pool(pool: PgPool) -> Result<Self, NotifStoreError> {
        let store = Self {
            pool: Pool::Pg(pool),
        };
        store.migrate().await?;
        Ok(store)
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

    /// Leases up to `limit` visible items to `owner` for `lease_ms`, codes first.
    pub(crate) async fn queue_claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueueRow>, NotifStoreError> {
        let now = now_ms();
        let sql = "UPDATE notif_queue SET lease_owner = $1, visible_at = $2, attempts = attempts + 1 \
                   WHERE visible_at <= $3 AND id IN (SELECT id FROM notif_queue WHERE visible_at <= $3 \
                   ORDER BY priority, enqueued_at, id LIMIT $4) \
                   RETURNING id, payload, attempts, priority, enqueued_at";
        let rows = with_pool!(self, p => {
            let rows = sqlx::query(sql).bind(owner).bind(now + lease_ms).bind(now).bind(i64::from(limit))
                .fetch_all(p).await.map_err(db)?;
            rows.iter().map(|r| Ok((
                QueueRow {
                    id: r.try_get::<String, _>(0)?,
                    payload: r.try_get::<Vec<u8>, _>(1)?,
                    attempts: r.try_get::<i64, _>(2)? as u32,
                    priority: r.try_get::<i64, _>(3)?,
                },
                r.try_get::<i64, _>(4)?,
            ))).collect::<Result<Vec<_>, sqlx::Error>>().map_err(db)?
        });
        let mut rows = rows;
        rows.sort_by(|a, b| (a.0.priority, a.1, &a.0.id).cmp(&(b.0.priority, b.1, &b.0.id)));
        Ok(rows.into_iter().map(|(r, _)| r).collect())
    }

    /// Removes a finished item, if `owner` still holds its lease.
    pub(crate) async fn queue_ack(&self, id: &str, owner: &str) -> Result<(), NotifStoreError> {
        let sql = "DELETE FROM notif_queue WHERE id = $1 AND lease_owner = $2";
        with_pool!(self, p => sqlx::query(sql).bind(id).bind(owner).execute(p).await.map(|_| ()).map_err(db)?);
        Ok(())
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
        let sql = "INSERT INTO notif_sends (request_id, channel, state, at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (request_id, channel) DO NOTHING";
        with_pool!(self, p => sqlx::query(sql).bind(request_id).bind(channel.as_str()).bind(state.as_str())
            .bind(now_ms()).execute(p).await.map(|_| ()).map_err(db)?);
        Ok(())
    }

    async fn record_outcome(&self, outcome: &DeliveryOutcome) -> Result<(), NotifStoreError> {
        let sql = "INSERT INTO notif_outcomes (request_id, at, outcome) VALUES ($1, $2, $3)";
        let json = serde_json::to_string(outcome).map_err(corrupt)?;
        with_pool!(self, p => sqlx::query(sql).bind(&outcome.request_id).bind(now_ms()).bind(json)
            .execute(p).await.map(|_| ()).map_err(db)?);
        Ok(())
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
