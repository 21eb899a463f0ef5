//! Payment templates: a customer's saved payments (operation, paying account, fields and
//! optionally the amount), shared by every channel.
//!
//! Durable in the customer's journal: `template_saved` and `template_deleted` events folded
//! into the state (so they survive passivation and failover, like payments). Pure: the
//! caller passes the time. A template's id is derived from the customer and the
//! `Idempotency-Key` that created it; the body's hash travels with it, so a repeat answers
//! the same template and a reuse with another body is `idempotency_conflict`.

use kernel::{FeedEvent, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::customer::{CustomerState, EventDraft};

/// Most templates one customer keeps.
pub const TEMPLATES_PER_CUSTOMER: usize = 100;

/// A saved payment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub operation: String,
    pub from: String,
    #[serde(default)]
    pub amount: Option<Money>,
    #[serde(default)]
    pub fields: Map<String, Value>,
    pub body_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Template {
    /// The API's view (`GET /v1/templates`, `POST /v1/templates`).
    pub fn answer(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "operation": self.operation,
            "from": self.from,
            "amount": self.amount,
            "fields": self.fields,
            "created_at": self.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }
}

/// Why a template is refused; nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateRejection {
    #[error("no such account")]
    AccountNotFound,
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyConflict,
    #[error("at most {TEMPLATES_PER_CUSTOMER} templates")]
    TooMany,
}

impl TemplateRejection {
    pub fn code(&self) -> &'static str {
        match self {
            TemplateRejection::AccountNotFound => "account_not_found",
            TemplateRejection::IdempotencyConflict => "idempotency_conflict",
            TemplateRejection::TooMany => "limit_exceeded",
        }
    }
}

/// What to do with a new template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplateCheck {
    Save,
    /// The same request again: the template it created.
    Replay(Value),
}

impl CustomerState {
    /// Checks a template: idempotency, the paying product is the customer's, the bound.
    pub fn check_template(&self, template: &Template) -> Result<TemplateCheck, TemplateRejection> {
        if let Some(known) = self.templates.get(&template.id) {
            if known.body_hash != template.body_hash {
                return Err(TemplateRejection::IdempotencyConflict);
            }
            return Ok(TemplateCheck::Replay(known.answer()));
        }
        if !self.products.contains_key(&template.from) {
            return Err(TemplateRejection::AccountNotFound);
        }
        if self.templates.len() >= TEMPLATES_PER_CUSTOMER {
            return Err(TemplateRejection::TooMany);
        }
        Ok(TemplateCheck::Save)
    }

    /// The `template_saved` event.
    pub fn template_saved(template: &Template, at: OffsetDateTime) -> EventDraft {
        EventDraft::single(
            format!("{}-saved", template.id),
            "template_saved",
            at,
            "template",
            json!(template),
        )
    }

    /// The `template_deleted` event.
    pub fn template_deleted(id: &str, at: OffsetDateTime) -> EventDraft {
        EventDraft::single(
            format!("{id}-deleted"),
            "template_deleted",
            at,
            "template_id",
            json!(id),
        )
    }

    /// Folds `template_saved` / `template_deleted`.
    pub(crate) fn apply_template(&mut self, event: &FeedEvent) {
        match event.kind.as_str() {
            "template_saved" => {
                if let Some(template) = event
                    .data
                    .get("template")
                    .and_then(|t| serde_json::from_value::<Template>(t.clone()).ok())
                    && (self.templates.len() < TEMPLATES_PER_CUSTOMER
                        || self.templates.contains_key(&template.id))
                {
                    self.templates.insert(template.id.clone(), template);
                }
            }
            "template_deleted" => {
                if let Some(id) = event.data.get("template_id").and_then(Value::as_str) {
                    self.templates.remove(id);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::{Product, ProductKind, Profile};
    use kernel::{Currency, CustomerId};

    fn state() -> CustomerState {
        CustomerState::new(Profile {
            customer_id: CustomerId::parse("c1").unwrap(),
            name: "Anna".into(),
            phone: "+79990000001".into(),
            language: "en".into(),
            products: vec![Product {
                id: "a1".into(),
                kind: ProductKind::Account,
                title: "a1".into(),
                status: "active".into(),
                balance: Some(Money::new(100, Currency::RUB)),
                details: Map::new(),
            }],
        })
    }

    fn template(id: &str, from: &str, hash: &str) -> Template {
        Template {
            id: id.into(),
            name: "rent".into(),
            operation: "transfer.phone".into(),
            from: from.into(),
            amount: Some(Money::new(100, Currency::RUB)),
            fields: Map::new(),
            body_hash: hash.into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn fold(state: &mut CustomerState, draft: EventDraft) {
        let event = FeedEvent {
            seq: state.version + 1,
            id: draft.id,
            kind: draft.kind.into(),
            at: draft.at,
            data: draft.data,
        };
        state.apply(&event);
    }

    #[test]
    fn templates_save_replay_conflict_delete_and_stay_bounded() {
        let mut state = state();
        let at = OffsetDateTime::UNIX_EPOCH;
        let t = template("t1", "a1", "h");
        assert_eq!(state.check_template(&t), Ok(TemplateCheck::Save));
        assert_eq!(
            state.check_template(&template("t2", "a9", "h")),
            Err(TemplateRejection::AccountNotFound)
        );
        fold(&mut state, CustomerState::template_saved(&t, at));
        assert_eq!(
            state.check_template(&t),
            Ok(TemplateCheck::Replay(t.answer()))
        );
        assert_eq!(
            state.check_template(&template("t1", "a1", "other")),
            Err(TemplateRejection::IdempotencyConflict)
        );
        fold(&mut state, CustomerState::template_deleted("t1", at));
        assert!(state.templates.is_empty());
        for i in 0..TEMPLATES_PER_CUSTOMER {
            let t = template(&format!("x{i}"), "a1", "h");
            fold(&mut state, CustomerState::template_saved(&t, at));
        }
        assert_eq!(
            state.check_template(&template("y", "a1", "h")),
            Err(TemplateRejection::TooMany)
        );
    }
}
