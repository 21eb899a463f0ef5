//! Mapping between Rust values and stored columns, and sqlx errors to [`StoreError`].
//!
//! Every conversion out of the database is checked: a row we cannot read back is
//! `Corrupt`, never a panic. Errors keep SQL text and server messages out of what
//! callers see; the detail goes to the log instead.

use kernel::CustomerId;
use kernel::store::StoreError;
use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;

/// Maps a sqlx error to the store's vocabulary. Callers remap `Duplicate` where a unique
/// key means something more specific (a version conflict, a repeated posting).
pub(crate) fn db_err(error: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &error {
        E::Database(db) if db.is_unique_violation() => StoreError::Duplicate,
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            let is_sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            // SQLite reports extended result codes; the primary code is the low byte.
            let sqlite_primary = code.parse::<i32>().map(|c| c & 0xff).ok();
            match code.as_ref() {
                // SQLite BUSY / LOCKED: another writer held the file past the busy timeout.
                _ if is_sqlite && matches!(sqlite_primary, Some(5 | 6)) => {
                    StoreError::Unavailable("database busy".into())
                }
                // PostgreSQL serialization failure / deadlock: safe to retry.
                "40001" | "40P01" if !is_sqlite => {
                    StoreError::Unavailable("database contention, retry".into())
                }
                _ if db.is_foreign_key_violation() || db.is_check_violation() => {
                    tracing::warn!(%error, "store constraint violation");
                    StoreError::Refused("constraint_violation")
                }
                _ => {
                    tracing::warn!(%error, "store database error");
                    StoreError::Unavailable("database error".into())
                }
            }
        }
        E::RowNotFound => StoreError::NotFound,
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => {
            tracing::error!(%error, "undecodable stored row");
            StoreError::Corrupt("undecodable row".into())
        }
        _ => {
            tracing::warn!(%error, "store unreachable");
            StoreError::Unavailable("database unreachable".into())
        }
    }
}

/// `Duplicate` becomes `instead`; other errors pass through.
pub(crate) fn duplicate_means(instead: StoreError) -> impl FnOnce(StoreError) -> StoreError {
    move |error| match error {
        StoreError::Duplicate => instead,
        other => other,
    }
}

/// Reads column `index`, mapping failure (wrong type, NULL where none allowed) to `Corrupt`.
pub(crate) fn col<'r, R, T>(row: &'r R, index: usize) -> Result<T, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(index).map_err(db_err)
}

/// Seqs and versions are u64 in Rust and BIGINT in the database.
pub(crate) fn seq_to_db(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt("sequence number out of range".into()))
}

pub(crate) fn seq_from_db(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt("negative sequence number".into()))
}

/// A query bound (`seq > x`, `seq < x`) saturates instead of failing: a bound past the
/// largest storable seq simply matches everything or nothing.
pub(crate) fn seq_bound(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Times are stored as Unix milliseconds (BIGINT): exact, portable and sortable.
/// Sub-millisecond parts are dropped; `kernel::now()` never has any.
pub(crate) fn time_to_db(at: OffsetDateTime) -> Result<i64, StoreError> {
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| StoreError::Corrupt("timestamp out of range".into()))
}

pub(crate) fn time_from_db(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Corrupt("timestamp out of range".into()))
}

pub(crate) fn customer_from_db(id: String) -> Result<CustomerId, StoreError> {
    CustomerId::try_from(id).map_err(|_| StoreError::Corrupt("invalid stored customer id".into()))
}

pub(crate) fn json_value_from_db(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt("invalid stored JSON".into()))
}

pub(crate) fn json_object_from_db(
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt("invalid stored JSON object".into()))
}

/// Row limits arrive as u32; the database wants BIGINT.
pub(crate) fn limit(limit: u32) -> i64 {
    i64::from(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_at_millisecond_precision() {
        let now = kernel::now();
        assert_eq!(time_from_db(time_to_db(now).unwrap()).unwrap(), now);
        let before_epoch = OffsetDateTime::from_unix_timestamp_nanos(-1_500_000).unwrap();
        assert_eq!(time_to_db(before_epoch).unwrap(), -2);
        assert!(time_from_db(i64::MAX).is_err());
    }

    #[test]
    fn seqs_refuse_out_of_range_values() {
        assert!(seq_to_db(u64::MAX).is_err());
        assert!(seq_from_db(-1).is_err());
        assert_eq!(seq_bound(u64::MAX), i64::MAX);
    }
}
