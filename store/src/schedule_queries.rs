// The autopayment schedule index (`autopay_schedule`, migration 6): when each clock-driven
// autopayment runs next. `include!`d into `mod queries` after queries.rs (same `Conn`).

use kernel::store::{DueRun, ScheduleWrite};

/// Applies a commit's schedule changes inside its transaction.
pub(crate) async fn schedule_write(
    c: &mut Conn,
    customer: &str,
    writes: &[ScheduleWrite],
) -> Result<(), StoreError> {
    for write in writes {
        match write.next_run_ms {
            Some(next_run_ms) => {
                sqlx::query(
                    "INSERT INTO autopay_schedule
                         (customer_id, autopayment_id, partition_no, next_run_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (customer_id, autopayment_id)
                     DO UPDATE SET partition_no = $3, next_run_ms = $4",
                )
                .bind(customer)
                .bind(&write.autopayment_id)
                .bind(i64::from(write.partition))
                .bind(next_run_ms)
                .execute(&mut *c)
                .await
                .map_err(db_err)?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM autopay_schedule WHERE customer_id = $1 AND autopayment_id = $2",
                )
                .bind(customer)
                .bind(&write.autopayment_id)
                .execute(&mut *c)
                .await
                .map_err(db_err)?;
            }
        }
    }
    Ok(())
}

pub(crate) async fn schedule_due(
    c: &mut Conn,
    partitions: &[u32],
    now_ms: i64,
    max: u32,
) -> Result<Vec<DueRun>, StoreError> {
    let mut due = Vec::new();
    for chunk in partitions.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT customer_id, autopayment_id, next_run_ms FROM autopay_schedule
             WHERE next_run_ms <= $1 AND partition_no IN ({})
             ORDER BY next_run_ms ASC LIMIT $2",
            placeholders(3, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(now_ms).bind(limit(max));
        for partition in chunk {
            query = query.bind(i64::from(*partition));
        }
        for row in query.fetch_all(&mut *c).await.map_err(db_err)? {
            let customer: String = col(&row, 0)?;
            due.push(DueRun {
                customer_id: customer_from_db(customer)?,
                autopayment_id: col(&row, 1)?,
                next_run_ms: col(&row, 2)?,
            });
        }
    }
    due.sort_by_key(|run| run.next_run_ms);
    due.truncate(max as usize);
    Ok(due)
}

pub(crate) async fn schedule_advance(
    c: &mut Conn,
    customer: &str,
    autopayment_id: &str,
    due_ms: i64,
    next_run_ms: Option<i64>,
) -> Result<bool, StoreError> {
    let query = match next_run_ms {
        Some(next_run_ms) => sqlx::query(
            "UPDATE autopay_schedule SET next_run_ms = $4
             WHERE customer_id = $1 AND autopayment_id = $2 AND next_run_ms = $3",
        )
        .bind(customer)
        .bind(autopayment_id)
        .bind(due_ms)
        .bind(next_run_ms),
        None => sqlx::query(
            "DELETE FROM autopay_schedule
             WHERE customer_id = $1 AND autopayment_id = $2 AND next_run_ms = $3",
        )
        .bind(customer)
        .bind(autopayment_id)
        .bind(due_ms),
    };
    let updated = query
        .execute(&mut *c)
        .await
        .map_err(db_err)?
        .rows_affected();
    Ok(updated > 0)
}
