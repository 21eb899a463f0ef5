// The reference ABS's holds (`abs_holds`, migration 6): authorize → capture / release.
// `include!`d into `mod queries` after queries.rs (same `Conn`, `FOR_UPDATE`, helpers).

use kernel::store::{AbsHold, AbsHoldResult};

/// Moves an account's reserved total (`abs_products.held_minor`) by `delta`.
async fn add_held(c: &mut Conn, account_id: &str, delta: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE abs_products SET held_minor = held_minor + $2 WHERE id = $1")
        .bind(account_id)
        .bind(delta)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn abs_hold(c: &mut Conn, hold: &AbsHold) -> Result<AbsHoldResult, StoreError> {
    if hold.amount_minor <= 0 || hold.id.is_empty() {
        return Err(StoreError::Refused("amount_out_of_range"));
    }
    // The account row first (locked on PostgreSQL): holds and transfers of one account
    // apply one after another, so two authorizations cannot both take the last money.
    let sql = format!(
        "SELECT balance_minor, status, held_minor FROM abs_products WHERE id = $1{FOR_UPDATE}"
    );
    let Some(account) = sqlx::query(&sql)
        .bind(&hold.account_id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
    else {
        return Err(StoreError::NotFound);
    };
    let balance: i64 = col(&account, 0)?;
    let status: String = col(&account, 1)?;
    let held: i64 = col(&account, 2)?;
    let existing = sqlx::query("SELECT account_id, amount_minor FROM abs_holds WHERE id = $1")
        .bind(&hold.id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?;
    if let Some(existing) = existing {
        let account_id: String = col(&existing, 0)?;
        let amount_minor: i64 = col(&existing, 1)?;
        if account_id != hold.account_id || amount_minor != hold.amount_minor {
            return Err(StoreError::Refused("idempotency_conflict"));
        }
        return Ok(AbsHoldResult {
            available_minor: balance.saturating_sub(held),
            duplicate: true,
        });
    }
    if status != "active" {
        return Err(StoreError::Refused("account_closed"));
    }
    let available = balance
        .saturating_sub(held)
        .checked_sub(hold.amount_minor)
        .ok_or(StoreError::Refused("amount_out_of_range"))?;
    if available < hold.floor_minor {
        return Err(StoreError::Refused("insufficient_funds"));
    }
    sqlx::query(
        "INSERT INTO abs_holds (id, account_id, amount_minor, state, transfer_id, at_ms)
         VALUES ($1, $2, $3, 'held', NULL, $4)",
    )
    .bind(&hold.id)
    .bind(&hold.account_id)
    .bind(hold.amount_minor)
    .bind(time_to_db(kernel::now())?)
    .execute(&mut *c)
    .await
    .map_err(db_err)?;
    add_held(c, &hold.account_id, hold.amount_minor).await?;
    Ok(AbsHoldResult {
        available_minor: available,
        duplicate: false,
    })
}

/// The hold's account, amount, state and capturing transfer, locked for the caller.
async fn hold_row(
    c: &mut Conn,
    hold_id: &str,
) -> Result<(String, i64, String, Option<String>), StoreError> {
    let sql = format!(
        "SELECT account_id, amount_minor, state, transfer_id FROM abs_holds WHERE id = $1{FOR_UPDATE}"
    );
    let row = sqlx::query(&sql)
        .bind(hold_id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db_err)?
        .ok_or(StoreError::NotFound)?;
    Ok((col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?))
}

pub(crate) async fn abs_capture(
    c: &mut Conn,
    hold_id: &str,
    transfer: &AbsTransfer,
) -> Result<AbsTransferResult, StoreError> {
    validate_transfer(transfer)?;
    let (account_id, amount_minor, state, captured_by) = hold_row(c, hold_id).await?;
    match state.as_str() {
        "released" => return Err(StoreError::Refused("hold_released")),
        "captured" if captured_by.as_deref() == Some(transfer.id.as_str()) => {
            // The same capture again: the transfer answers its first result.
            return abs_transfer(c, transfer).await;
        }
        "captured" => return Err(StoreError::Refused("hold_captured")),
        _ => {}
    }
    let debit: i64 = transfer
        .legs
        .iter()
        .filter(|leg| leg.account_id == account_id && leg.amount_minor < 0)
        .map(|leg| leg.amount_minor.saturating_neg())
        .fold(0i64, i64::saturating_add);
    if debit == 0 || debit > amount_minor {
        return Err(StoreError::Refused("capture_exceeds_hold"));
    }
    // The hold ends with the transfer: its funds check does not count the hold, and the
    // account's reserved total drops in the transfer's own row update (no extra row lock out
    // of id order). If the transfer is refused, the whole write rolls back.
    sqlx::query("UPDATE abs_holds SET state = 'captured', transfer_id = $2 WHERE id = $1")
        .bind(hold_id)
        .bind(&transfer.id)
        .execute(&mut *c)
        .await
        .map_err(db_err)?;
    abs_transfer_releasing(c, transfer, Some((&account_id, amount_minor))).await
}

pub(crate) async fn abs_release(c: &mut Conn, hold_id: &str) -> Result<bool, StoreError> {
    let (account_id, amount_minor, state, _) = hold_row(c, hold_id).await?;
    match state.as_str() {
        "released" => Ok(false),
        "captured" => Err(StoreError::Refused("hold_captured")),
        _ => {
            sqlx::query("UPDATE abs_holds SET state = 'released' WHERE id = $1")
                .bind(hold_id)
                .execute(&mut *c)
                .await
                .map_err(db_err)?;
            add_held(c, &account_id, -amount_minor).await?;
            Ok(true)
        }
    }
}
