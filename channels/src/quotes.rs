//! `POST /v1/quotes`: the bank's rate for one conversion, promised to the caller for a short
//! time (`ARBAT_QUOTE_TTL_S`, 30 s by default). The quote is a signed token of the reference
//! ABS (abs::quotes), so any node honours it: `POST /v1/conversions` with `"quote"` converts
//! at its rate if it is the caller's, unexpired, for the same amount and pair, and unused.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use kernel::{Currency, Money};
use serde::Deserialize;
use serde_json::Value;

use crate::Gateway;
use crate::auth::Customer;
use crate::payments::{invalid_field, parse_body};
use crate::problem::Problem;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteBody {
    /// What the customer sells (debited from the paying account, in its currency).
    amount: Money,
    /// The currency the customer receives.
    to_currency: Currency,
}

/// `POST /v1/quotes` → 201 `{"id", "amount", "credited", "rate", "expires_at"}`.
pub(crate) async fn quote(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let abs = gateway.abs.as_ref().ok_or_else(Problem::not_found)?;
    let request: QuoteBody = serde_json::from_value(parse_body(&body)?).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        )
    })?;
    if request.amount.minor <= 0 {
        return Err(invalid_field("amount", "must be positive"));
    }
    match abs
        .quote(&claims.sub, request.amount, request.to_currency)
        .await
    {
        Ok((quote, token)) => Ok((StatusCode::CREATED, Json(quote.answer(&token)))),
        Err(abs::QuoteFailure::Quote(error)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
            error.to_string(),
        )),
        Err(abs::QuoteFailure::Abs(error)) => {
            tracing::warn!(%error, "quote key unavailable");
            Err(Problem::unavailable("quotes are unavailable right now"))
        }
    }
}
