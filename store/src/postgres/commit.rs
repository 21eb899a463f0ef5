//! The live path's journal commit on PostgreSQL in one statement.
//!
//! The general commit (queries.rs) is a transaction of its own: BEGIN, the version bump,
//! one INSERT each for the journal, the change ids and the outbox, COMMIT — six round trips,
//! each parsed, planned and executed by the server and driven by sqlx on our side. On the
//! live path that is most of a change's cost. A single statement is atomic by itself in
//! PostgreSQL, so the same writes go as one statement of data-modifying CTEs: the inserts
//! read the bump's `RETURNING`, so they add rows only when the version matched, and any
//! failure (a change id consumed before, a journal seq taken) aborts the whole statement.
//! Fencing is unchanged: a concurrent writer of the same customer blocks on the row lock,
//! then re-checks the version and matches nothing, so its inserts add nothing.
//!
//! Commits this statement cannot express go the general way: a customer's first commit
//! (its row does not exist yet) and commits that also move the autopayment schedule.

use kernel::store::{Commit, StoreError};
use sqlx::PgConnection;

use crate::convert::{col, db_err, seq_to_db, time_to_db};

/// The PostgreSQL constraint naming the journal's primary key (`customer_id`, `seq`).
const JOURNAL_KEY: &str = "journal_pkey";

const COMMIT_SQL: &str = "
WITH bumped AS (
    UPDATE customers SET version = $3,
        snapshot_version = COALESCE($4, snapshot_version),
        snapshot_state = COALESCE($5, snapshot_state)
    WHERE id = $1 AND version = $2
    RETURNING id
), journaled AS (
    INSERT INTO journal (customer_id, seq, event_id, kind, at_ms, data)
    SELECT $1, e.seq, e.event_id, e.kind, e.at_ms, e.data
    FROM unnest($6::BIGINT[], $7::TEXT[], $8::TEXT[], $9::BIGINT[], $10::TEXT[])
        AS e(seq, event_id, kind, at_ms, data)
    WHERE EXISTS (SELECT 1 FROM bumped)
), applied AS (
    INSERT INTO applied_changes (customer_id, change_id, version)
    SELECT $1, a.change_id, $3
    FROM unnest($11::TEXT[]) AS a(change_id)
    WHERE EXISTS (SELECT 1 FROM bumped)
), queued AS (
    INSERT INTO outbox (subject, payload)
    SELECT o.subject, o.payload
    FROM unnest($12::TEXT[], $13::BYTEA[]) WITH ORDINALITY AS o(subject, payload, ord)
    WHERE EXISTS (SELECT 1 FROM bumped)
    ORDER BY o.ord
    RETURNING id
)
SELECT (SELECT count(*) FROM bumped), ARRAY(SELECT id FROM queued ORDER BY id)";

/// Whether [`commit_in_one_statement`] can write `commit`.
pub(super) fn fits_one_statement(commit: &Commit) -> bool {
    commit.expected_version > 0 && commit.schedules.is_empty()
}

/// Writes a validated commit (see [`fits_one_statement`]) outside any transaction: the
/// statement commits, durably, before this returns. The outbox ids come back in the order
/// of `commit.outbox` (ids grow in insertion order, which follows the array's).
pub(super) async fn commit_in_one_statement(
    c: &mut PgConnection,
    commit: &Commit,
) -> Result<Vec<i64>, StoreError> {
    let expected = seq_to_db(commit.expected_version)?;
    let new_version = seq_to_db(commit.expected_version + commit.events.len() as u64)?;
    let (snapshot_version, snapshot_state) = match &commit.snapshot {
        Some(snapshot) => (
            Some(seq_to_db(snapshot.version)?),
            Some(snapshot.state.to_string()),
        ),
        None => (None, None),
    };
    let count = commit.events.len();
    let (mut seqs, mut event_ids, mut kinds, mut at_ms, mut data) = (
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
        Vec::with_capacity(count),
    );
    for event in &commit.events {
        seqs.push(seq_to_db(event.seq)?);
        event_ids.push(event.id.as_str());
        kinds.push(event.kind.as_str());
        at_ms.push(time_to_db(event.at)?);
        data.push(serde_json::Value::Object(event.data.clone()).to_string());
    }
    let change_ids: Vec<&str> = commit.change_ids.iter().map(String::as_str).collect();
    let subjects: Vec<&str> = commit.outbox.iter().map(|m| m.subject.as_str()).collect();
    let payloads: Vec<&[u8]> = commit.outbox.iter().map(|m| m.payload.as_slice()).collect();

    let row = sqlx::query(COMMIT_SQL)
        .bind(commit.customer_id.as_str())
        .bind(expected)
        .bind(new_version)
        .bind(snapshot_version)
        .bind(snapshot_state.as_deref())
        .bind(&seqs)
        .bind(&event_ids)
        .bind(&kinds)
        .bind(&at_ms)
        .bind(&data)
        .bind(&change_ids)
        .bind(&subjects)
        .bind(&payloads)
        .fetch_one(&mut *c)
        .await
        .map_err(|error| {
            let journal_taken = matches!(
                &error,
                sqlx::Error::Database(db) if db.constraint() == Some(JOURNAL_KEY)
            );
            if journal_taken {
                // The version matched, so an event at this seq means journal and version
                // disagree.
                StoreError::Corrupt("journal holds events past its version".into())
            } else {
                db_err(error)
            }
        })?;
    let bumped: i64 = col(&row, 0)?;
    if bumped == 0 {
        return Err(StoreError::VersionConflict);
    }
    col(&row, 1)
}
