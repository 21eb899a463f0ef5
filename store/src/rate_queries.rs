// The reference ABS's current rate set (`abs_rate_sets`, migration 6): one row, replaced
// only by a newer version. `include!`d into `mod queries` after queries.rs.

/// The single row's key.
const RATE_SET_ROW: i64 = 1;

pub(crate) async fn abs_rate_set(c: &mut Conn) -> Result<Option<(i64, String)>, StoreError> {
    let row = sqlx::query("SELECT version, body FROM abs_rate_sets WHERE id = $1")
        .bind(RATE_SET_ROW)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?;
    row.map(|row| Ok((col(&row, 0)?, col(&row, 1)?)))
        .transpose()
}

pub(crate) async fn abs_save_rate_set(
    c: &mut Conn,
    version: i64,
    body: &str,
) -> Result<bool, StoreError> {
    // One statement: a concurrent older writer matches nothing in the conflict update.
    let written = sqlx::query(
        "INSERT INTO abs_rate_sets (id, version, body) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET version = $2, body = $3
         WHERE abs_rate_sets.version < $2",
    )
    .bind(RATE_SET_ROW)
    .bind(version)
    .bind(body)
    .execute(&mut *c)
    .await
    .map_err(db_err)?
    .rows_affected();
    Ok(written > 0)
}
