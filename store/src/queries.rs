// The store's queries, written once for both backends.
//
// Not a module of its own: sqlite.rs and postgres.rs each `include!` this file inside a
// `mod queries` that defines `Conn` (the backend's connection type) and `FOR_UPDATE` (the
// row-lock clause: PostgreSQL needs it, SQLite's single writer does not and rejects it).
// Including rather than going generic over `sqlx::Database` keeps every function concrete,
// so no higher-ranked trait bounds leak into the async (Send) futures.
//
// The SQL is the common subset: `$n` placeholders, `ON CONFLICT`, `RETURNING`.
// Every function runs on a connection that is already inside the caller's transaction
// (PostgreSQL) or savepoint (SQLite group commit), so multi-statement writes are atomic.

use std::collections::HashSet;

use kernel::store::{
    AbsCustomer, AbsLegResult, AbsPosting, AbsPostingResult, AbsProduct, AbsTransfer,
    AbsTransferResult, AuditEntry, ChallengeRecord, Commit, Credential, CustomerRecord, LockState,
    LockoutPolicy, OutboxRow, SessionRecord, Snapshot, StaffAccount, StoreError, TotpEnrolment,
};
use kernel::{CustomerId, FeedEvent};
use sqlx::Row;
use time::OffsetDateTime;

use crate::convert::{
    col, customer_from_db, db_err, duplicate_means, json_object_from_db, json_value_from_db, limit,
    seq_bound, seq_from_db, seq_to_db, time_from_db, time_to_db,
};

/// Most values bound in one `IN (...)` list (SQLite allows 32766 parameters per statement).
const IN_CHUNK: usize = 500;

/// `$first, $first+1, ...` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- journal ----------------------------------------------------------------------------

pub(crate) async fn load_customer(
    c: &mut Conn,
    id: &str,
) -> Result<Option<CustomerRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT version, read_seq, snapshot_version, snapshot_state FROM customers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let snapshot_version: Option<i64> = col(&row, 2)?;
    let snapshot_state: Option<String> = col(&row, 3)?;
    let snapshot = match (snapshot_version, snapshot_state) {
        (Some(version), Some(state)) => Some(Snapshot {
            version: seq_from_db(version)?,
            state: json_value_from_db(&state)?,
        }),
        (None, None) => None,
        _ => return Err(StoreError::Corrupt("half-stored snapshot".into())),
    };
    Ok(Some(CustomerRecord {
        version: seq_from_db(col(&row, 0)?)?,
        read_seq: seq_from_db(col(&row, 1)?)?,
        snapshot,
    }))
}

fn event_from_row<R: Row>(row: &R) -> Result<FeedEvent, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let data: String = col(row, 4)?;
    Ok(FeedEvent {
        seq: seq_from_db(col(row, 0)?)?,
        id: col(row, 1)?,
        kind: col(row, 2)?,
        at: time_from_db(col(row, 3)?)?,
        data: json_object_from_db(&data)?,
    })
}

pub(crate) async fn journal_after(
    c: &mut Conn,
    id: &str,
    after_seq: u64,
    max: u32,
) -> Result<Vec<FeedEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, event_id, kind, at_ms, data FROM journal
         WHERE customer_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
    )
    .bind(id)
    .bind(seq_bound(after_seq))
    .bind(limit(max))
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn feed_page(
    c: &mut Conn,
    id: &str,
    before_seq: Option<u64>,
    max: u32,
) -> Result<Vec<FeedEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, event_id, kind, at_ms, data FROM journal
         WHERE customer_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(id)
    .bind(before_seq.map_or(i64::MAX, seq_bound))
    .bind(limit(max))
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn applied_changes(
    c: &mut Conn,
    id: &str,
    change_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut applied = HashSet::new();
    for chunk in change_ids.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT change_id FROM applied_changes WHERE customer_id = $1 AND change_id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(id);
        for change_id in chunk {
            query = query.bind(change_id);
        }
        for row in query.fetch_all(&mut *c).await.map_err(db_err)? {
            applied.insert(col::<_, String>(&row, 0)?);
        }
    }
    // In the caller's order, each once.
    Ok(change_ids
        .iter()
        .filter(|id| applied.remove(id.as_str()))
        .cloned()
        .collect())
}

/// Checks the commit's shape before touching the database.
pub(crate) fn validate_commit(commit: &Commit) -> Result<(), StoreError> {
    for (offset, event) in commit.events.iter().enumerate() {
        let expected = commit
            .expected_version
            .checked_add(offset as u64 + 1)
            .ok_or_else(|| StoreError::Corrupt("sequence number out of range".into()))?;
        if event.seq != expected {
            return Err(StoreError::Corrupt(format!(
                "event seq {} where {expected} was due: seqs must continue the journal",
                event.seq
            )));
        }
    }
    Ok(())
}

pub(crate) async fn commit(c: &mut Conn, commit: &Commit) -> Result<Vec<i64>, StoreError> {
    validate_commit(commit)?;
    let customer = commit.customer_id.as_str();
    let expected = seq_to_db(commit.expected_version)?;
    let new_version = seq_to_db(commit.expected_version + commit.events.len() as u64)?;
    let (snapshot_version, snapshot_state) = match &commit.snapshot {
        Some(snapshot) => (
            Some(seq_to_db(snapshot.version)?),
            Some(snapshot.state.to_string()),
        ),
        None => (None, None),
    };

    // The version check and the bump are one conditional UPDATE: under PostgreSQL a concurrent
    // writer blocks on the row lock, then re-checks the version and matches nothing.
    let updated = sqlx::query(
        "UPDATE customers SET version = $3,
             snapshot_version = COALESCE($4, snapshot_version),
             snapshot_state = COALESCE($5, snapshot_state)
         WHERE id = $1 AND version = $2",
    )
    .bind(customer)
    .bind(expected)
    .bind(new_version)
    .bind(snapshot_version)
    .bind(snapshot_state.as_deref())
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    if updated == 0 {
        if expected != 0 {
            return Err(StoreError::VersionConflict);
        }
        // First commit: the primary key settles a race between two first commits.
        sqlx::query(
            "INSERT INTO customers (id, version, read_seq, snapshot_version, snapshot_state)
             VALUES ($1, $2, 0, $3, $4)",
        )
        .bind(customer)
        .bind(new_version)
        .bind(snapshot_version)
        .bind(snapshot_state.as_deref())
        .execute(&mut *c)
        .await
        .map_err(db_err)
        .map_err(duplicate_means(StoreError::VersionConflict))?;
    }

    // Multi-row inserts: a commit costs a handful of round trips however many events,
    // change ids and outbox rows it carries.
    for events in commit.events.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO journal (customer_id, seq, event_id, kind, at_ms, data) VALUES {}",
            values_rows(events.len(), 6)
        );
        let mut query = sqlx::query(&sql);
        for event in events {
            query = query
                .bind(customer)
                .bind(seq_to_db(event.seq)?)
                .bind(&event.id)
                .bind(&event.kind)
                .bind(time_to_db(event.at)?)
                .bind(serde_json::Value::Object(event.data.clone()).to_string());
        }
        query
            .execute(&mut *c)
            .await
            .map_err(db_err)
            // The version matched, so an event at this seq means journal and version disagree.
            .map_err(duplicate_means(StoreError::Corrupt(
                "journal holds events past its version".into(),
            )))?;
    }

    for change_ids in commit.change_ids.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO applied_changes (customer_id, change_id, version) VALUES {}",
            values_rows(change_ids.len(), 3)
        );
        let mut query = sqlx::query(&sql);
        for change_id in change_ids {
            query = query.bind(customer).bind(change_id).bind(new_version);
        }
        query.execute(&mut *c).await.map_err(db_err)?;
    }

    schedule_write(c, customer, &commit.schedules).await?;

    let mut outbox_ids = Vec::with_capacity(commit.outbox.len());
    for messages in commit.outbox.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO outbox (subject, payload) VALUES {} RETURNING id",
            values_rows(messages.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for message in messages {
            query = query.bind(&message.subject).bind(&message.payload);
        }
        let rows = query.fetch_all(&mut *c).await.map_err(db_err)?;
        let mut ids = rows
            .iter()
            .map(|row| col(row, 0))
            .collect::<Result<Vec<i64>, _>>()?;
        // Ids grow in the order of the VALUES list on both backends; RETURNING itself
        // promises no order, so sort to give the caller its rows' ids in order.
        ids.sort_unstable();
        outbox_ids.extend(ids);
    }
    Ok(outbox_ids)
}

/// Rows per multi-row INSERT, well under both backends' parameter limits (6 per row at most).
const ROWS_PER_INSERT: usize = 500;

/// `($1, $2, $3), ($4, $5, $6), ...`: `rows` tuples of `width` placeholders.
fn values_rows(rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * width + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

pub(crate) async fn mark_read(c: &mut Conn, id: &str, up_to_seq: u64) -> Result<u64, StoreError> {
    // max(read_seq, min(up_to, version)), spelled portably.
    let row = sqlx::query(
        "UPDATE customers SET read_seq = CASE
             WHEN $2 <= read_seq THEN read_seq
             WHEN $2 >= version THEN version
             ELSE $2 END
         WHERE id = $1 RETURNING read_seq",
    )
    .bind(id)
    .bind(seq_bound(up_to_seq))
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => seq_from_db(col(&row, 0)?),
        // No journal: version 0, so the mark clamps to 0.
        None => Ok(0),
    }
}

pub(crate) async fn outbox_pending(c: &mut Conn, max: u32) -> Result<Vec<OutboxRow>, StoreError> {
    let rows = sqlx::query("SELECT id, subject, payload FROM outbox ORDER BY id ASC LIMIT $1")
        .bind(limit(max))
        .fetch_all(&mut *c)
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(OutboxRow {
                id: col(row, 0)?,
                subject: col(row, 1)?,
                payload: col(row, 2)?,
            })
        })
        .collect()
}

pub(crate) async fn outbox_delete(c: &mut Conn, ids: &[i64]) -> Result<(), StoreError> {
    for chunk in ids.chunks(IN_CHUNK) {
        let sql = format!(
            "DELETE FROM outbox WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut *c).await.map_err(db_err)?;
    }
    Ok(())
}

// ---- auth -------------------------------------------------------------------------------

pub(crate) async fn credential(
    c: &mut Conn,
    login: &str,
) -> Result<Option<Credential>, StoreError> {
    let row =
        sqlx::query("SELECT login, customer_id, password_hash FROM credentials WHERE login = $1")
            .bind(login)
            .fetch_optional(&mut *c)
            .await
            .map_err(db_err)?;
    row.map(|row| {
        Ok(Credential {
            login: col(&row, 0)?,
            customer_id: customer_from_db(col(&row, 1)?)?,
            password_hash: col(&row, 2)?,
        })
    })
    .transpose()
}

pub(crate) async fn insert_credential(
    c: &mut Conn,
    credential: &Credential,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO credentials (login, customer_id, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (login) DO NOTHING",
    )
    .bind(&credential.login)
    .bind(credential.customer_id.as_str())
    .bind(&credential.password_hash)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(inserted == 1)
}

const SESSION_COLUMNS: &str = "id, customer_id, device_id, created_at_ms, revoked, refresh_hash, \
     generation, last_used_at_ms, scope";

pub(crate) async fn create_session(
    c: &mut Conn,
    session: &SessionRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sessions (id, customer_id, device_id, created_at_ms, revoked,
             refresh_hash, generation, last_used_at_ms, scope)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&session.id)
    .bind(session.customer_id.as_str())
    .bind(&session.device_id)
    .bind(time_to_db(session.created_at)?)
    .bind(session.revoked)
    .bind(&session.refresh_hash)
    .bind(seq_to_db(session.generation)?)
    .bind(time_to_db(session.last_used_at)?)
    .bind(&session.scope)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn session_from_row<R: Row>(row: &R) -> Result<SessionRecord, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SessionRecord {
        id: col(row, 0)?,
        customer_id: customer_from_db(col(row, 1)?)?,
        device_id: col(row, 2)?,
        created_at: time_from_db(col(row, 3)?)?,
        revoked: col(row, 4)?,
        refresh_hash: col(row, 5)?,
        generation: seq_from_db(col(row, 6)?)?,
        last_used_at: time_from_db(col(row, 7)?)?,
        scope: col(row, 8)?,
    })
}

pub(crate) async fn session(c: &mut Conn, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(session_from_row)
        .transpose()
}

pub(crate) async fn sessions_of(
    c: &mut Conn,
    customer: &str,
) -> Result<Vec<SessionRecord>, StoreError> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions
         WHERE customer_id = $1 AND scope = 'customer' AND NOT revoked
         ORDER BY created_at_ms DESC, id DESC LIMIT 100"
    );
    let rows = sqlx::query(&sql)
        .bind(customer)
        .fetch_all(&mut *c)
        .await
        .map_err(db_err)?;
    rows.iter().map(session_from_row).collect()
}

pub(crate) async fn staff_sessions(
    c: &mut Conn,
    max: u32,
) -> Result<Vec<SessionRecord>, StoreError> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE scope = 'staff' AND NOT revoked
         ORDER BY created_at_ms DESC, id DESC LIMIT $1"
    );
    let rows = sqlx::query(&sql)
        .bind(limit(max))
        .fetch_all(&mut *c)
        .await
        .map_err(db_err)?;
    rows.iter().map(session_from_row).collect()
}

/// Revoking twice is fine (the first time is kept); revoking an unknown session is `NotFound`.
pub(crate) async fn revoke_session(c: &mut Conn, id: &str) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE sessions SET revoked = TRUE, revoked_at_ms = COALESCE(revoked_at_ms, $2)
         WHERE id = $1",
    )
    .bind(id)
    .bind(time_to_db(kernel::now())?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Compare-and-swap on the refresh hash: of two uses of one token, one wins.
pub(crate) async fn rotate_refresh(
    c: &mut Conn,
    id: &str,
    old_hash: &str,
    new_hash: &str,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE sessions SET refresh_hash = $3, generation = generation + 1, last_used_at_ms = $4
         WHERE id = $1 AND refresh_hash = $2 AND refresh_hash <> '' AND NOT revoked",
    )
    .bind(id)
    .bind(old_hash)
    .bind(new_hash)
    .bind(time_to_db(now)?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn revoked_since(
    c: &mut Conn,
    since: OffsetDateTime,
) -> Result<Vec<(String, CustomerId)>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, customer_id FROM sessions WHERE revoked_at_ms >= $1
         ORDER BY revoked_at_ms DESC LIMIT 1000000",
    )
    .bind(time_to_db(since)?)
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| Ok((col(row, 0)?, customer_from_db(col(row, 1)?)?)))
        .collect()
}

pub(crate) async fn set_password(
    c: &mut Conn,
    login: &str,
    password_hash: &str,
) -> Result<(), StoreError> {
    let updated = sqlx::query("UPDATE credentials SET password_hash = $2 WHERE login = $1")
        .bind(login)
        .bind(password_hash)
        .execute(&mut *c)
        .await
        .map_err(db_err)?
        .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

// ---- challenges, lockouts, devices, audit, staff --------------------------------------

pub(crate) async fn insert_challenge(
    c: &mut Conn,
    challenge: &ChallengeRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO challenges (id, state, expires_at_ms, version) VALUES ($1, $2, $3, $4)",
    )
    .bind(&challenge.id)
    .bind(&challenge.state)
    .bind(time_to_db(challenge.expires_at)?)
    .bind(seq_to_db(challenge.version)?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    // Housekeeping: challenges long past their life are of no use to anyone.
    sqlx::query("DELETE FROM challenges WHERE expires_at_ms < $1")
        .bind(time_to_db(kernel::now() - time::Duration::days(1))?)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn challenge(
    c: &mut Conn,
    id: &str,
) -> Result<Option<ChallengeRecord>, StoreError> {
    let row = sqlx::query("SELECT id, state, expires_at_ms, version FROM challenges WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?;
    row.map(|row| {
        Ok(ChallengeRecord {
            id: col(&row, 0)?,
            state: col(&row, 1)?,
            expires_at: time_from_db(col(&row, 2)?)?,
            version: seq_from_db(col(&row, 3)?)?,
        })
    })
    .transpose()
}

pub(crate) async fn update_challenge(
    c: &mut Conn,
    id: &str,
    expected_version: u64,
    state: &str,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE challenges SET state = $3, version = version + 1 WHERE id = $1 AND version = $2",
    )
    .bind(id)
    .bind(seq_to_db(expected_version)?)
    .bind(state)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn lock_state(c: &mut Conn, key: &str) -> Result<LockState, StoreError> {
    let sql =
        format!("SELECT failures, locked_until_ms FROM auth_failures WHERE key = $1{FOR_UPDATE}");
    let row = sqlx::query(&sql)
        .bind(key)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(LockState::default());
    };
    let failures: i64 = col(&row, 0)?;
    let locked_until: Option<i64> = col(&row, 1)?;
    Ok(LockState {
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        locked_until: locked_until.map(time_from_db).transpose()?,
    })
}

/// Read, apply the pure policy, write: atomic because the row is created first and then
/// locked (PostgreSQL) or the single writer holds the database (SQLite).
pub(crate) async fn record_failure(
    c: &mut Conn,
    key: &str,
    policy: LockoutPolicy,
    now: OffsetDateTime,
) -> Result<LockState, StoreError> {
    sqlx::query(
        "INSERT INTO auth_failures (key, failures, locked_until_ms) VALUES ($1, 0, NULL)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    let next = lock_state(c, key).await?.after_failure(policy, now);
    sqlx::query("UPDATE auth_failures SET failures = $2, locked_until_ms = $3 WHERE key = $1")
        .bind(key)
        .bind(i64::from(next.failures))
        .bind(next.locked_until.map(time_to_db).transpose()?)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    Ok(next)
}

pub(crate) async fn clear_failures(c: &mut Conn, key: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM auth_failures WHERE key = $1")
        .bind(key)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn trust_device(
    c: &mut Conn,
    customer: &str,
    device_id: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO trusted_devices (customer_id, device_id, created_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (customer_id, device_id) DO UPDATE SET created_at_ms = excluded.created_at_ms",
    )
    .bind(customer)
    .bind(device_id)
    .bind(time_to_db(now)?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn is_trusted_device(
    c: &mut Conn,
    customer: &str,
    device_id: &str,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT 1 FROM trusted_devices WHERE customer_id = $1 AND device_id IN ($2, '*')",
    )
    .bind(customer)
    .bind(device_id)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(row.is_some())
}

pub(crate) async fn device_trusted_at(
    c: &mut Conn,
    customer: &str,
    device_id: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let row = sqlx::query(
        "SELECT MAX(created_at_ms) FROM trusted_devices
         WHERE customer_id = $1 AND device_id IN ($2, '*')",
    )
    .bind(customer)
    .bind(device_id)
    .fetch_one(&mut *c)
    .await
    .map_err(db_err)?;
    let at: Option<i64> = col(&row, 0)?;
    at.map(time_from_db).transpose()
}

pub(crate) async fn login_networks(
    c: &mut Conn,
    customer: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT network FROM login_networks WHERE customer_id = $1
         ORDER BY last_seen_ms DESC, network LIMIT 100",
    )
    .bind(customer)
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter().map(|row| col(row, 0)).collect()
}

pub(crate) async fn remember_login_network(
    c: &mut Conn,
    customer: &str,
    network: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO login_networks (customer_id, network, last_seen_ms) VALUES ($1, $2, $3)
         ON CONFLICT (customer_id, network) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
    )
    .bind(customer)
    .bind(network)
    .bind(time_to_db(now)?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn set_risk_flag(
    c: &mut Conn,
    customer: &str,
    until: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO risk_flags (customer_id, until_ms) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE SET until_ms = excluded.until_ms",
    )
    .bind(customer)
    .bind(time_to_db(until)?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn risk_flag(
    c: &mut Conn,
    customer: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let row = sqlx::query("SELECT until_ms FROM risk_flags WHERE customer_id = $1")
        .bind(customer)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?;
    row.map(|row| time_from_db(col(&row, 0)?)).transpose()
}

pub(crate) async fn totp_enrolment(
    c: &mut Conn,
    customer: &str,
) -> Result<Option<TotpEnrolment>, StoreError> {
    let row = sqlx::query(
        "SELECT customer_id, sealed_secret, confirmed, last_step, created_at_ms
         FROM customer_totp WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?;
    row.map(|row| {
        Ok(TotpEnrolment {
            customer_id: customer_from_db(col(&row, 0)?)?,
            sealed_secret: col(&row, 1)?,
            confirmed: col(&row, 2)?,
            last_step: col(&row, 3)?,
            created_at: time_from_db(col(&row, 4)?)?,
        })
    })
    .transpose()
}

/// Inserts, or replaces an unconfirmed enrolment; a confirmed one is left alone.
pub(crate) async fn start_totp(
    c: &mut Conn,
    enrolment: &TotpEnrolment,
) -> Result<bool, StoreError> {
    let written = sqlx::query(
        "INSERT INTO customer_totp (customer_id, sealed_secret, confirmed, last_step, created_at_ms)
         VALUES ($1, $2, FALSE, $3, $4)
         ON CONFLICT (customer_id) DO UPDATE SET sealed_secret = excluded.sealed_secret,
             last_step = excluded.last_step, created_at_ms = excluded.created_at_ms
         WHERE NOT customer_totp.confirmed",
    )
    .bind(enrolment.customer_id.as_str())
    .bind(&enrolment.sealed_secret)
    .bind(enrolment.last_step)
    .bind(time_to_db(enrolment.created_at)?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(written == 1)
}

pub(crate) async fn confirm_totp(
    c: &mut Conn,
    customer: &str,
    sealed_secret: &[u8],
    step: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE customer_totp SET confirmed = TRUE, last_step = $3
         WHERE customer_id = $1 AND sealed_secret = $2 AND NOT confirmed",
    )
    .bind(customer)
    .bind(sealed_secret)
    .bind(step)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(updated == 1)
}

/// Compare-and-set on the last step: of two uses of one code, one wins.
pub(crate) async fn use_totp_step(
    c: &mut Conn,
    customer: &str,
    step: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE customer_totp SET last_step = $2
         WHERE customer_id = $1 AND confirmed AND last_step < $2",
    )
    .bind(customer)
    .bind(step)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn delete_totp(c: &mut Conn, customer: &str) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM customer_totp WHERE customer_id = $1")
        .bind(customer)
        .execute(&mut *c)
        .await
        .map_err(db_err)?
        .rows_affected();
    Ok(deleted == 1)
}

pub(crate) async fn audit_append(c: &mut Conn, entry: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at_ms, kind, actor, subject, ip, outcome)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(time_to_db(entry.at)?)
    .bind(&entry.kind)
    .bind(&entry.actor)
    .bind(&entry.subject)
    .bind(&entry.ip)
    .bind(&entry.outcome)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn audit_recent(c: &mut Conn, max: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT at_ms, kind, actor, subject, ip, outcome FROM audit_log ORDER BY id DESC LIMIT $1",
    )
    .bind(limit(max))
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                at: time_from_db(col(row, 0)?)?,
                kind: col(row, 1)?,
                actor: col(row, 2)?,
                subject: col(row, 3)?,
                ip: col(row, 4)?,
                outcome: col(row, 5)?,
            })
        })
        .collect()
}

pub(crate) async fn insert_staff(c: &mut Conn, account: &StaffAccount) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO staff_accounts (login, role, password_hash, totp_secret) VALUES ($1, $2, $3, $4)
         ON CONFLICT (login) DO NOTHING",
    )
    .bind(&account.login)
    .bind(&account.role)
    .bind(&account.password_hash)
    .bind(&account.totp_secret)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(inserted == 1)
}

/// Compare-and-set on a staff account's last accepted TOTP step: of two logins with one
/// code, one wins; an older step never passes.
pub(crate) async fn use_staff_totp_step(
    c: &mut Conn,
    login: &str,
    step: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE staff_accounts SET totp_last_step = $2 WHERE login = $1 AND totp_last_step < $2",
    )
    .bind(login)
    .bind(step)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(updated == 1)
}

pub(crate) async fn staff(c: &mut Conn, login: &str) -> Result<Option<StaffAccount>, StoreError> {
    let row = sqlx::query(
        "SELECT login, role, password_hash, totp_secret FROM staff_accounts WHERE login = $1",
    )
    .bind(login)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?;
    row.map(|row| {
        Ok(StaffAccount {
            login: col(&row, 0)?,
            role: col(&row, 1)?,
            password_hash: col(&row, 2)?,
            totp_secret: col(&row, 3)?,
        })
    })
    .transpose()
}

/// Get-or-insert. `ON CONFLICT DO NOTHING` makes a racing insert wait for the winner and then
/// do nothing; the SELECT after it reads whichever value won.
pub(crate) async fn secret(
    c: &mut Conn,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(candidate)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *c)
        .await
        .map_err(db_err)?;
    col(&row, 0)
}

// ---- reference ABS ----------------------------------------------------------------------

pub(crate) async fn abs_seed(
    c: &mut Conn,
    customer: &AbsCustomer,
    products: &[AbsProduct],
) -> Result<bool, StoreError> {
    if products.iter().any(|p| p.customer_id != customer.id) {
        return Err(StoreError::Refused("product_of_another_customer"));
    }
    let inserted = sqlx::query(
        "INSERT INTO abs_customers (id, phone, name, language) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(customer.id.as_str())
    .bind(&customer.phone)
    .bind(&customer.name)
    .bind(&customer.language)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    for (ord, product) in products.iter().enumerate() {
        sqlx::query(
            "INSERT INTO abs_products
                 (id, customer_id, ord, kind, title, status, currency, balance_minor, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&product.id)
        .bind(customer.id.as_str())
        .bind(ord as i64)
        .bind(&product.kind)
        .bind(&product.title)
        .bind(&product.status)
        .bind(&product.currency)
        .bind(product.balance_minor)
        .bind(product.details.to_string())
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    }
    Ok(true)
}

fn abs_customer_from_row<R: Row>(row: &R) -> Result<AbsCustomer, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AbsCustomer {
        id: customer_from_db(col(row, 0)?)?,
        phone: col(row, 1)?,
        name: col(row, 2)?,
        language: col(row, 3)?,
    })
}

pub(crate) async fn abs_customer(
    c: &mut Conn,
    id: &str,
) -> Result<Option<AbsCustomer>, StoreError> {
    sqlx::query("SELECT id, phone, name, language FROM abs_customers WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(abs_customer_from_row)
        .transpose()
}

pub(crate) async fn abs_customer_by_phone(
    c: &mut Conn,
    phone: &str,
) -> Result<Option<AbsCustomer>, StoreError> {
    sqlx::query("SELECT id, phone, name, language FROM abs_customers WHERE phone = $1")
        .bind(phone)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(abs_customer_from_row)
        .transpose()
}

pub(crate) async fn abs_set_card_pan(
    c: &mut Conn,
    card_id: &str,
    customer: &str,
    pan_hash: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO abs_card_pans (pan_hash, card_id, customer_id) VALUES ($1, $2, $3)
         ON CONFLICT (pan_hash) DO NOTHING",
    )
    .bind(pan_hash)
    .bind(card_id)
    .bind(customer)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn abs_customer_by_card(
    c: &mut Conn,
    pan_hash: &str,
) -> Result<Option<AbsCustomer>, StoreError> {
    sqlx::query(
        "SELECT c.id, c.phone, c.name, c.language FROM abs_card_pans p
         JOIN abs_customers c ON c.id = p.customer_id WHERE p.pan_hash = $1",
    )
    .bind(pan_hash)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?
    .as_ref()
    .map(abs_customer_from_row)
    .transpose()
}

/// Moves a customer's phone on file and login to `new`, unless another customer or login
/// has it (false).
pub(crate) async fn change_phone(
    c: &mut Conn,
    customer: &str,
    old: &str,
    new: &str,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "SELECT 1 FROM abs_customers WHERE phone = $1
         UNION ALL SELECT 1 FROM credentials WHERE login = $1",
    )
    .bind(new)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?
    .is_some();
    if taken {
        return Ok(false);
    }
    let moved = sqlx::query("UPDATE abs_customers SET phone = $2 WHERE id = $1 AND phone = $3")
        .bind(customer)
        .bind(new)
        .bind(old)
        .execute(&mut *c)
        .await
        .map_err(db_err)?
        .rows_affected();
    if moved == 0 {
        return Err(StoreError::NotFound);
    }
    sqlx::query("UPDATE credentials SET login = $3 WHERE login = $2 AND customer_id = $1")
        .bind(customer)
        .bind(old)
        .bind(new)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    Ok(true)
}

fn abs_product_from_row<R: Row>(row: &R) -> Result<AbsProduct, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let details: String = col(row, 7)?;
    Ok(AbsProduct {
        id: col(row, 0)?,
        customer_id: customer_from_db(col(row, 1)?)?,
        kind: col(row, 2)?,
        title: col(row, 3)?,
        status: col(row, 4)?,
        currency: col(row, 5)?,
        balance_minor: col(row, 6)?,
        details: json_value_from_db(&details)?,
    })
}

pub(crate) async fn abs_products(c: &mut Conn, id: &str) -> Result<Vec<AbsProduct>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, customer_id, kind, title, status, currency, balance_minor, details
         FROM abs_products WHERE customer_id = $1 ORDER BY ord ASC, id ASC",
    )
    .bind(id)
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter().map(abs_product_from_row).collect()
}

pub(crate) async fn abs_account(c: &mut Conn, id: &str) -> Result<Option<AbsProduct>, StoreError> {
    sqlx::query(
        "SELECT id, customer_id, kind, title, status, currency, balance_minor, details
         FROM abs_products WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?
    .as_ref()
    .map(abs_product_from_row)
    .transpose()
}

pub(crate) async fn abs_set_status(c: &mut Conn, id: &str, status: &str) -> Result<(), StoreError> {
    let updated = sqlx::query("UPDATE abs_products SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&mut *c)
        .await
        .map_err(db_err)?
        .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub(crate) async fn abs_open_product(
    c: &mut Conn,
    product: &AbsProduct,
    transfer: &AbsTransfer,
) -> Result<AbsTransferResult, StoreError> {
    if let Some(held) = abs_account(c, &product.id).await? {
        if held.customer_id != product.customer_id {
            return Err(StoreError::Refused("idempotency_conflict"));
        }
        let fingerprint = transfer_fingerprint(transfer);
        return match abs_transfer_result(c, &transfer.id).await? {
            Some((first, result)) if first == fingerprint => Ok(result),
            _ => Err(StoreError::Refused("idempotency_conflict")),
        };
    }
    sqlx::query(
        "INSERT INTO abs_products
             (id, customer_id, ord, kind, title, status, currency, balance_minor, details)
         VALUES ($1, $2,
                 (SELECT COALESCE(MAX(ord), 0) + 1 FROM abs_products WHERE customer_id = $2),
                 $3, $4, $5, $6, 0, $7)",
    )
    .bind(&product.id)
    .bind(product.customer_id.as_str())
    .bind(&product.kind)
    .bind(&product.title)
    .bind(&product.status)
    .bind(&product.currency)
    .bind(product.details.to_string())
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    abs_transfer(c, transfer).await
}

pub(crate) async fn abs_set_details(
    c: &mut Conn,
    id: &str,
    details: &str,
) -> Result<(), StoreError> {
    let updated = sqlx::query("UPDATE abs_products SET details = $2 WHERE id = $1")
        .bind(id)
        .bind(details)
        .execute(&mut *c)
        .await
        .map_err(db_err)?
        .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// What identifies a transfer's content, so a reused id with other legs is refused.
fn transfer_fingerprint(transfer: &AbsTransfer) -> String {
    transfer
        .legs
        .iter()
        .map(|l| format!("{}:{}:{}", l.account_id, l.amount_minor, l.currency))
        .collect::<Vec<_>>()
        .join(";")
}

/// The shape check of a transfer, before any I/O: legs non-zero, balanced per currency.
pub(crate) fn validate_transfer(transfer: &AbsTransfer) -> Result<(), StoreError> {
    if transfer.id.is_empty() || transfer.id.len() > 128 {
        return Err(StoreError::Refused("invalid_posting"));
    }
    if transfer.legs.len() < 2 || transfer.legs.iter().any(|l| l.amount_minor == 0) {
        return Err(StoreError::Refused("unbalanced"));
    }
    let mut sums: std::collections::BTreeMap<&str, i128> = Default::default();
    for leg in &transfer.legs {
        *sums.entry(leg.currency.as_str()).or_default() += i128::from(leg.amount_minor);
    }
    if sums.values().any(|sum| *sum != 0) {
        return Err(StoreError::Refused("unbalanced"));
    }
    Ok(())
}

/// The result of an already applied transfer, if `id` was applied, with its fingerprint.
pub(crate) async fn abs_transfer_result(
    c: &mut Conn,
    id: &str,
) -> Result<Option<(String, AbsTransferResult)>, StoreError> {
    let Some(head) = sqlx::query("SELECT fingerprint, at_ms FROM abs_transfers WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT l.account_id, a.customer_id, a.kind, l.currency, l.amount_minor,
                l.balance_after_minor
         FROM abs_legs l JOIN abs_products a ON a.id = l.account_id
         WHERE l.transfer_id = $1 ORDER BY l.ord ASC",
    )
    .bind(id)
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    let legs = rows
        .iter()
        .map(|row| {
            Ok(AbsLegResult {
                account_id: col(row, 0)?,
                customer_id: customer_from_db(col(row, 1)?)?,
                kind: col(row, 2)?,
                currency: col(row, 3)?,
                amount_minor: col(row, 4)?,
                balance_minor: col(row, 5)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some((
        col(&head, 0)?,
        AbsTransferResult {
            legs,
            at: time_from_db(col(&head, 1)?)?,
            duplicate: true,
        },
    )))
}

/// Applies a transfer: every leg or none. Accounts are locked in id order (PostgreSQL), so
/// two transfers over the same accounts cannot deadlock. A racing duplicate that gets past
/// the first check fails on the primary key with `Duplicate`; the caller reads the winner.
pub(crate) async fn abs_transfer(
    c: &mut Conn,
    transfer: &AbsTransfer,
) -> Result<AbsTransferResult, StoreError> {
    abs_transfer_releasing(c, transfer, None).await
}

/// A transfer that also ends a hold of `(account, amount)` (a capture): the funds check
/// does not count that hold as reserved, and the account's reserved total drops by it in the
/// same row update as its balance. Account rows are still locked in id order only.
pub(crate) async fn abs_transfer_releasing(
    c: &mut Conn,
    transfer: &AbsTransfer,
    released: Option<(&str, i64)>,
) -> Result<AbsTransferResult, StoreError> {
    validate_transfer(transfer)?;
    let fingerprint = transfer_fingerprint(transfer);
    if let Some((first, result)) = abs_transfer_result(c, &transfer.id).await? {
        if first != fingerprint {
            return Err(StoreError::Refused("idempotency_conflict"));
        }
        return Ok(result);
    }
    // Net effect and tightest floor per account.
    let mut net: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for leg in &transfer.legs {
        let entry = net
            .entry(leg.account_id.as_str())
            .or_insert((0, leg.floor_minor));
        entry.0 = entry
            .0
            .checked_add(leg.amount_minor)
            .ok_or(StoreError::Refused("amount_out_of_range"))?;
        entry.1 = entry.1.max(leg.floor_minor);
    }
    let sql = format!(
        "SELECT customer_id, kind, currency, balance_minor, status, held_minor FROM abs_products
         WHERE id = $1{FOR_UPDATE}"
    );
    // account → (customer, kind, currency, balance after)
    let mut after: std::collections::BTreeMap<&str, (CustomerId, String, String, i64)> =
        Default::default();
    for (account_id, (delta, floor)) in &net {
        let Some(row) = sqlx::query(&sql)
            .bind(*account_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(db_err)?
        else {
            return Err(StoreError::NotFound);
        };
        let customer_id = customer_from_db(col(&row, 0)?)?;
        let kind: String = col(&row, 1)?;
        let currency: String = col(&row, 2)?;
        let balance: i64 = col(&row, 3)?;
        let status: String = col(&row, 4)?;
        if status != "active" {
            return Err(StoreError::Refused("account_closed"));
        }
        if transfer
            .legs
            .iter()
            .any(|l| l.account_id == *account_id && l.currency != currency)
        {
            return Err(StoreError::Refused("currency_mismatch"));
        }
        let balance_after = balance
            .checked_add(*delta)
            .ok_or(StoreError::Refused("amount_out_of_range"))?;
        // A debit is checked against the available balance: what holds reserve is spoken for.
        let mut held: i64 = col(&row, 5)?;
        if let Some((_, amount)) = released.filter(|(id, _)| id == account_id) {
            held = held.saturating_sub(amount);
        }
        if *delta < 0 && balance_after.saturating_sub(held) < *floor {
            return Err(StoreError::Refused("insufficient_funds"));
        }
        after.insert(account_id, (customer_id, kind, currency, balance_after));
    }
    let at = kernel::now();
    sqlx::query(
        "INSERT INTO abs_transfers (id, fingerprint, at_ms, description, counterparty)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&transfer.id)
    .bind(&fingerprint)
    .bind(time_to_db(at)?)
    .bind(&transfer.description)
    .bind(transfer.counterparty.as_deref())
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    for (account_id, (_, _, _, balance_after)) in &after {
        let released_here = released
            .filter(|(id, _)| id == account_id)
            .map_or(0, |(_, amount)| amount);
        sqlx::query(
            "UPDATE abs_products SET balance_minor = $2, held_minor = held_minor - $3
             WHERE id = $1",
        )
        .bind(*account_id)
        .bind(*balance_after)
        .bind(released_here)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    }
    // Each leg records the balance after the whole set (a set touching one account twice,
    // a payment and its fee, shows the final balance on both).
    let mut legs = Vec::with_capacity(transfer.legs.len());
    for (ord, leg) in transfer.legs.iter().enumerate() {
        let (customer_id, kind, currency, balance_after) = &after[leg.account_id.as_str()];
        sqlx::query(
            "INSERT INTO abs_legs
                 (transfer_id, ord, account_id, currency, amount_minor, balance_after_minor)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&transfer.id)
        .bind(ord as i64)
        .bind(&leg.account_id)
        .bind(currency)
        .bind(leg.amount_minor)
        .bind(*balance_after)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
        legs.push(AbsLegResult {
            account_id: leg.account_id.clone(),
            customer_id: customer_id.clone(),
            kind: kind.clone(),
            currency: currency.clone(),
            amount_minor: leg.amount_minor,
            balance_minor: *balance_after,
        });
    }
    Ok(AbsTransferResult {
        legs,
        at,
        duplicate: false,
    })
}

pub(crate) async fn abs_ledger_sums(c: &mut Conn) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT currency, CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM abs_legs
         GROUP BY currency ORDER BY currency",
    )
    .fetch_all(&mut *c)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|row| Ok((col(row, 0)?, col(row, 1)?)))
        .collect()
}

/// The result of an already applied posting, if `posting_id` was applied.
pub(crate) async fn abs_posting_result(
    c: &mut Conn,
    posting_id: &str,
) -> Result<Option<AbsPostingResult>, StoreError> {
    let row = sqlx::query(
        "SELECT a.customer_id, a.currency, p.balance_after_minor, p.at_ms
         FROM abs_postings p JOIN abs_products a ON a.id = p.account_id WHERE p.id = $1",
    )
    .bind(posting_id)
    .fetch_optional(&mut *c)
    .await
    .map_err(db_err)?;
    row.map(|row| {
        Ok(AbsPostingResult {
            customer_id: customer_from_db(col(&row, 0)?)?,
            currency: col(&row, 1)?,
            balance_minor: col(&row, 2)?,
            at: time_from_db(col(&row, 3)?)?,
            duplicate: true,
        })
    })
    .transpose()
}

/// Applies a posting. A racing duplicate that gets past the first check (PostgreSQL only)
/// fails on the posting's primary key with `Duplicate`; the caller then reads the winner.
pub(crate) async fn abs_post(
    c: &mut Conn,
    posting: &AbsPosting,
) -> Result<AbsPostingResult, StoreError> {
    if let Some(first) = abs_posting_result(c, &posting.id).await? {
        return Ok(first);
    }
    let sql = format!(
        "SELECT customer_id, currency, balance_minor FROM abs_products WHERE id = $1{FOR_UPDATE}"
    );
    let Some(account) = sqlx::query(&sql)
        .bind(&posting.account_id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
    else {
        return Err(StoreError::NotFound);
    };
    let customer_id: CustomerId = customer_from_db(col(&account, 0)?)?;
    let currency: String = col(&account, 1)?;
    let balance: i64 = col(&account, 2)?;
    let Some(balance_after) = balance.checked_add(posting.amount_minor) else {
        return Err(StoreError::Refused("amount_out_of_range"));
    };
    if balance_after < posting.floor_minor {
        return Err(StoreError::Refused("insufficient_funds"));
    }
    let at = kernel::now();
    sqlx::query("UPDATE abs_products SET balance_minor = $2 WHERE id = $1")
        .bind(&posting.account_id)
        .bind(balance_after)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    sqlx::query(
        "INSERT INTO abs_postings
             (id, account_id, amount_minor, balance_after_minor, at_ms, description, mcc, counterparty)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&posting.id)
    .bind(&posting.account_id)
    .bind(posting.amount_minor)
    .bind(balance_after)
    .bind(time_to_db(at)?)
    .bind(&posting.description)
    .bind(posting.mcc.as_deref())
    .bind(posting.counterparty.as_deref())
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    Ok(AbsPostingResult {
        customer_id,
        currency,
        balance_minor: balance_after,
        at,
        duplicate: false,
    })
}
