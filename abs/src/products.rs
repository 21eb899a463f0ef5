//! `abs.cmd.card.block` / `abs.cmd.card.unblock`: the reference ABS changes a card's status in
//! its store and publishes a `product_changed` Cache Control change to the card's customer, so
//! the customer actor's state, the feed and the live socket all see it.
//!
//! Request: `{"customer_id", "card_id", "key"}` (`key`: the client's idempotency key). Reply:
//! `{"ok": {"id", "status"}}` or `{"err": {"code", "detail"}}` with `code` one of `not_found`
//! (no such card, or another customer's), `card_closed` (neither active nor blocked),
//! `bad_request`, `unavailable`. Setting the status a card already has is not an error: the
//! answer is the same and nothing is published, so only real transitions reach the feed (and
//! a block's security alert is sent once). The change id is derived from the card, the status
//! and the key, so a retried command is journaled once.

use kernel::{Change, ChangeBody, CustomerId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Abs;

/// What a card command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardOp {
    Block,
    Unblock,
}

impl CardOp {
    /// The status the card has afterwards.
    pub fn status(self) -> &'static str {
        match self {
            CardOp::Block => "blocked",
            CardOp::Unblock => "active",
        }
    }
}

/// A refused card command, with the stable code the gateway maps to a problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CardError {
    pub code: &'static str,
    pub detail: String,
}

fn refuse(code: &'static str, detail: impl Into<String>) -> CardError {
    CardError {
        code,
        detail: detail.into(),
    }
}

#[derive(Deserialize)]
struct CardCommand {
    customer_id: CustomerId,
    card_id: String,
    key: String,
}

impl Abs {
    /// Sets a card's status (see the module documentation) and returns it.
    pub async fn set_card_status(
        &self,
        customer_id: &CustomerId,
        card_id: &str,
        key: &str,
        op: CardOp,
    ) -> Result<&'static str, CardError> {
        if card_id.is_empty() || card_id.len() > 64 || key.is_empty() || key.len() > 255 {
            return Err(refuse("bad_request", "card id or key out of bounds"));
        }
        let unavailable = |e: kernel::store::StoreError| refuse("unavailable", e.to_string());
        let card = self
            .store
            .abs_account(card_id)
            .await
            .map_err(unavailable)?
            .filter(|p| &p.customer_id == customer_id && p.kind == "card")
            .ok_or_else(|| refuse("not_found", "no such card"))?;
        if card.status != "active" && card.status != "blocked" {
            return Err(refuse("card_closed", "the card is closed"));
        }
        let status = op.status();
        if card.status == status {
            return Ok(status);
        }
        // The change goes first, the store second: a crash between them leaves the old status
        // in the store, so the client's retry (no answer yet) submits the same change id again
        // (dropped as a duplicate) and writes the status. Meanwhile the customer's state is
        // ahead of the store, which errs on the safe side for either command: the actor refuses
        // a blocked card's payments, the ABS those of a card it still holds blocked.
        let change = Change {
            id: format!("card-{card_id}-{status}-{key}"),
            customer_id: customer_id.clone(),
            at: kernel::now(),
            body: ChangeBody::ProductChanged {
                product_id: card_id.to_owned(),
                status: Some(status.to_owned()),
                title: None,
            },
        };
        self.sink
            .submit(vec![change])
            .await
            .map_err(|e| refuse("unavailable", e.to_string()))?;
        self.store
            .abs_set_status(card_id, status)
            .await
            .map_err(unavailable)?;
        Ok(status)
    }

    pub(crate) async fn answer_card(&self, op: CardOp, payload: &[u8]) -> Value {
        let error = |e: CardError| json!({"err": {"code": e.code, "detail": e.detail}});
        let Ok(command) = serde_json::from_slice::<CardCommand>(payload) else {
            return error(refuse(
                "bad_request",
                "expected {\"customer_id\", \"card_id\", \"key\"}",
            ));
        };
        match self
            .set_card_status(&command.customer_id, &command.card_id, &command.key, op)
            .await
        {
            Ok(status) => json!({"ok": {"id": command.card_id, "status": status}}),
            Err(e) => error(e),
        }
    }
}
