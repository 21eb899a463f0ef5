//! Customer reads. Transactions come from the actor's memory (products: `products.rs`); the feed
//! pages come from the store's journal, the unread count from the actor.

use std::sync::Arc;

use actors::CustomerRequest;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Gateway;
use crate::auth::Customer;
use crate::problem::Problem;

pub(crate) async fn me(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
) -> Result<Json<Value>, Problem> {
    let mut me = gateway.node.call(&claims.sub, CustomerRequest::Me).await?;
    // The phone on file can change (`POST /v1/me/phone`) after the actor loaded its profile,
    // and no Cache Control change carries it yet: the ABS's record is the truth.
    if let Ok(Some(abs)) = gateway.store.abs_customer(&claims.sub).await
        && let Some(object) = me.as_object_mut()
    {
        object.insert("phone".into(), Value::String(abs.phone));
    }
    Ok(Json(me))
}

#[derive(Deserialize)]
pub(crate) struct TransactionParams {
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<OffsetDateTime>, Problem> {
    raw.map(|raw| {
        OffsetDateTime::parse(raw, &Rfc3339)
            .map_err(|_| Problem::bad_request(format!("`{name}` must be an RFC 3339 time")))
    })
    .transpose()
}

fn parse_cursor(raw: Option<&str>) -> Result<Option<u64>, Problem> {
    raw.map(|raw| {
        raw.parse::<u64>()
            .map_err(|_| Problem::bad_request("`cursor` is not a cursor from this API"))
    })
    .transpose()
}

fn parse_limit(limit: Option<u32>, default: u32) -> Result<u32, Problem> {
    match limit.unwrap_or(default) {
        limit @ 1..=100 => Ok(limit),
        _ => Err(Problem::bad_request("`limit` must be between 1 and 100")),
    }
}

pub(crate) async fn transactions(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    Path(account_id): Path<String>,
    params: Result<Query<TransactionParams>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(params) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    if account_id.len() > 64 {
        return Err(Problem::not_found());
    }
    let request = CustomerRequest::Transactions {
        account_id,
        from: parse_time("from", params.from.as_deref())?,
        to: parse_time("to", params.to.as_deref())?,
        before_seq: parse_cursor(params.cursor.as_deref())?,
        limit: parse_limit(params.limit, 50)?,
    };
    Ok(Json(gateway.node.call(&claims.sub, request).await?))
}

#[derive(Deserialize)]
pub(crate) struct FeedParams {
    cursor: Option<String>,
    limit: Option<u32>,
}

pub(crate) async fn feed(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    params: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let Query(params) = params.map_err(|e| Problem::bad_request(e.body_text()))?;
    let before = parse_cursor(params.cursor.as_deref())?;
    let limit = parse_limit(params.limit, 50)?;
    let head = gateway
        .node
        .call(&claims.sub, CustomerRequest::FeedHead)
        .await?;
    let items = gateway
        .store
        .feed_page(&claims.sub, before, limit)
        .await
        .map_err(|_| Problem::unavailable("try again"))?;
    let next_cursor = match items.last() {
        Some(last) if items.len() == limit as usize && last.seq > 1 => Some(last.seq.to_string()),
        _ => None,
    };
    Ok(Json(json!({
        "items": items,
        "next_cursor": next_cursor,
        "head": head["head"],
        "unread": head["unread"],
    })))
}

#[derive(Deserialize)]
pub(crate) struct ReadRequest {
    up_to_seq: u64,
}

pub(crate) async fn feed_read(
    State(gateway): State<Arc<Gateway>>,
    Customer(claims): Customer,
    body: Result<Json<ReadRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let request = CustomerRequest::MarkRead {
        up_to_seq: request.up_to_seq,
    };
    Ok(Json(gateway.node.call(&claims.sub, request).await?))
}
