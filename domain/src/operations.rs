//! Operation Studio definitions: payees and payment operations as data (one TOML file per
//! operation), parsed and validated here, purely. Loading from a folder, signatures and hot
//! reload are the gateway's (channels/src/studio.rs).
//!
//! A definition names its fields (type, validation, prefill source), its fee and limits
//! (in the definition's currency) and where it routes (an ABS command and the destination).
//! A broken definition is refused with its file and the offending field named.

use std::collections::BTreeMap;

use kernel::payment::Destination;
use kernel::{Currency, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::payments::Limits;

/// A definition problem, naming the file and the field (`fields[1].type`, `fee.max` ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct DefinitionError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// A field of a request that does not satisfy the definition (`invalid_field`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// The field types the forms know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    /// `+` and 11 to 15 digits.
    Phone,
    /// One of the customer's own products (prefilled from their accounts).
    Account,
    /// 20 digits (Russian account number).
    AccountNumber,
    /// Digits only, length bounded by `min_length`/`max_length`.
    Digits,
    /// One of `options`.
    Choice,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    pub title: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub options: Vec<String>,
    /// Where a form takes suggestions: `customer.accounts`, `customer.phone`,
    /// `reference.<name>`.
    #[serde(default)]
    pub prefill: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeDef {
    #[serde(default)]
    pub fixed: Option<String>,
    #[serde(default)]
    pub percent_bp: i64,
    #[serde(default)]
    pub min: Option<String>,
    #[serde(default)]
    pub max: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDef {
    #[serde(default)]
    pub per_payment: Option<String>,
    #[serde(default)]
    pub daily: Option<String>,
    /// A payment above this needs a step-up confirmation (default: the gateway's).
    #[serde(default)]
    pub confirm_above: Option<String>,
    /// Whether a first payment to a payee needs a step-up confirmation.
    #[serde(default)]
    pub confirm_new_payee: bool,
}

/// How the destination is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTo {
    /// The customer's own account named by `field`.
    OwnAccount,
    /// A customer of the bank by the phone in `field`.
    Phone,
    /// An account by the number in `field`.
    AccountNumber,
    /// The bank's settlement `account`, the payer's reference in `field`.
    Settlement,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingDef {
    /// The ABS command (`payment`: `abs.cmd.payment`).
    pub command: String,
    pub to: RouteTo,
    pub field: String,
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefinition {
    pub id: String,
    pub title: BTreeMap<String, String>,
    /// Currency of the fee and limits.
    pub currency: String,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
    #[serde(default)]
    pub fee: FeeDef,
    #[serde(default)]
    pub limits: LimitsDef,
    pub routing: RoutingDef,
}

/// A validated definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub raw: RawDefinition,
    pub currency: Currency,
    pub fee_fixed: i64,
    pub fee_min: i64,
    pub fee_max: Option<i64>,
    pub limits: Limits,
}

/// Languages every title must have.
pub const LANGUAGES: [&str; 2] = ["en", "ru"];

impl Definition {
    /// Parses and validates one definition file's text.
    pub fn parse(file: &str, text: &str) -> Result<Definition, DefinitionError> {
        let error = |field: &str, reason: String| DefinitionError {
            file: file.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let raw: RawDefinition = toml::from_str(text).map_err(|e| {
            // toml names the key it choked on in its message.
            error("(file)", e.message().to_owned())
        })?;
        let id_ok = !raw.id.is_empty()
            && raw.id.len() <= 64
            && raw
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
        if !id_ok {
            return Err(error("id", "must be 1 to 64 of a-z, 0-9, '.', '_'".into()));
        }
        let expected_file = format!("{}.toml", raw.id);
        if !file.ends_with(&expected_file) {
            return Err(error(
                "id",
                format!("must match the file name ({expected_file})"),
            ));
        }
        check_titles(&raw.title).map_err(|r| error("title", r))?;
        let currency =
            Currency::parse(&raw.currency).map_err(|e| error("currency", e.to_string()))?;
        let money = |field: &str, raw: &Option<String>| -> Result<Option<Money>, DefinitionError> {
            raw.as_deref()
                .map(|amount| {
                    Money::parse(amount, currency)
                        .map_err(|e| error(field, e.to_string()))
                        .and_then(|m| {
                            if m.minor < 0 {
                                Err(error(field, "must not be negative".into()))
                            } else {
                                Ok(m)
                            }
                        })
                })
                .transpose()
        };
        let mut names = std::collections::BTreeSet::new();
        for (i, field) in raw.fields.iter().enumerate() {
            let at = |key: &str| format!("fields[{i}].{key}");
            let name_ok = !field.name.is_empty()
                && field.name.len() <= 32
                && field
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(error(
                    &at("name"),
                    "must be 1 to 32 of a-z, 0-9, '_'".into(),
                ));
            }
            if !names.insert(field.name.clone()) {
                return Err(error(
                    &at("name"),
                    format!("{:?} appears twice", field.name),
                ));
            }
            check_titles(&field.title).map_err(|r| error(&at("title"), r))?;
            if let (Some(min), Some(max)) = (field.min_length, field.max_length)
                && min > max
            {
                return Err(error(&at("min_length"), "is above max_length".into()));
            }
            if field.max_length.is_some_and(|m| m == 0 || m > 256) {
                return Err(error(&at("max_length"), "must be 1 to 256".into()));
            }
            match field.kind {
                FieldType::Choice if field.options.is_empty() => {
                    return Err(error(&at("options"), "a choice needs options".into()));
                }
                FieldType::Choice => {}
                _ if !field.options.is_empty() => {
                    return Err(error(&at("options"), "only a choice has options".into()));
                }
                _ => {}
            }
            if let Some(prefill) = &field.prefill {
                let known = prefill == "customer.accounts"
                    || prefill == "customer.phone"
                    || prefill
                        .strip_prefix("reference.")
                        .is_some_and(|r| !r.is_empty());
                if !known {
                    return Err(error(
                        &at("prefill"),
                        format!(
                            "unknown source {prefill:?} (customer.accounts, customer.phone, reference.<name>)"
                        ),
                    ));
                }
            }
        }
        let fee_fixed = money("fee.fixed", &raw.fee.fixed)?.map_or(0, |m| m.minor);
        let fee_min = money("fee.min", &raw.fee.min)?.map_or(0, |m| m.minor);
        let fee_max = money("fee.max", &raw.fee.max)?.map(|m| m.minor);
        if !(0..=10_000).contains(&raw.fee.percent_bp) {
            return Err(error("fee.percent_bp", "must be 0 to 10000".into()));
        }
        if fee_max.is_some_and(|max| max < fee_min) {
            return Err(error("fee.max", "is below fee.min".into()));
        }
        let limits = Limits {
            per_payment: money("limits.per_payment", &raw.limits.per_payment)?,
            daily: money("limits.daily", &raw.limits.daily)?,
            customer_daily: None,
            confirm_above: money("limits.confirm_above", &raw.limits.confirm_above)?,
            confirm_new_payee: raw.limits.confirm_new_payee,
        };
        if raw.routing.command != "payment" {
            return Err(error(
                "routing.command",
                format!("unknown ABS command {:?} (payment)", raw.routing.command),
            ));
        }
        let Some(target) = raw.fields.iter().find(|f| f.name == raw.routing.field) else {
            return Err(error(
                "routing.field",
                format!("names no field ({:?})", raw.routing.field),
            ));
        };
        let fits = match raw.routing.to {
            RouteTo::OwnAccount => target.kind == FieldType::Account,
            RouteTo::Phone => target.kind == FieldType::Phone,
            RouteTo::AccountNumber => target.kind == FieldType::AccountNumber,
            RouteTo::Settlement => true,
        };
        if !fits {
            return Err(error(
                "routing.field",
                format!(
                    "a {:?} field cannot route to {:?}",
                    target.kind, raw.routing.to
                ),
            ));
        }
        match (&raw.routing.to, &raw.routing.account) {
            (RouteTo::Settlement, None) => {
                return Err(error(
                    "routing.account",
                    "a settlement needs its account".into(),
                ));
            }
            (RouteTo::Settlement, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(error(
                    "routing.account",
                    "only a settlement names an account".into(),
                ));
            }
        }
        Ok(Definition {
            raw,
            currency,
            fee_fixed,
            fee_min,
            fee_max,
            limits,
        })
    }

    pub fn id(&self) -> &str {
        &self.raw.id
    }

    /// The fee of a payment of `amount` (zero for another currency than the definition's
    /// when the definition has no fee at all; refused otherwise by the caller's check).
    pub fn fee(&self, amount: &Money) -> Money {
        if amount.currency != self.currency {
            return Money::new(0, amount.currency);
        }
        let minor = crate::payments::fee(
            amount.minor,
            self.fee_fixed,
            self.raw.fee.percent_bp,
            self.fee_min,
            self.fee_max,
        );
        Money::new(minor, amount.currency)
    }

    fn has_fee(&self) -> bool {
        self.fee_fixed > 0 || self.raw.fee.percent_bp > 0 || self.fee_min > 0
    }

    /// Checks a request's fields and builds the destination; the field is named on error.
    pub fn destination(
        &self,
        amount: &Money,
        fields: &Map<String, Value>,
    ) -> Result<Destination, FieldError> {
        let invalid = |field: &str, reason: &str| FieldError {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if amount.currency != self.currency && self.has_fee() {
            return Err(invalid(
                "amount",
                &format!("this operation is paid in {}", self.currency),
            ));
        }
        for name in fields.keys() {
            if !self.raw.fields.iter().any(|f| &f.name == name) {
                return Err(invalid(name, "is not a field of this operation"));
            }
        }
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for field in &self.raw.fields {
            let value = match fields.get(&field.name) {
                None | Some(Value::Null) if field.required => {
                    return Err(invalid(&field.name, "is required"));
                }
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.trim().to_owned(),
                Some(_) => return Err(invalid(&field.name, "must be a string")),
            };
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let ok = match field.kind {
                FieldType::Text => !value.is_empty(),
                FieldType::Phone => value
                    .strip_prefix('+')
                    .is_some_and(|d| digits(d) && (11..=15).contains(&d.len())),
                FieldType::Account => !value.is_empty() && value.len() <= 64,
                FieldType::AccountNumber => digits(&value) && value.len() == 20,
                FieldType::Digits => digits(&value),
                FieldType::Choice => field.options.contains(&value),
            };
            if !ok {
                return Err(invalid(
                    &field.name,
                    &format!("is not a valid {:?}", field.kind).to_lowercase(),
                ));
            }
            let length = value.chars().count();
            if field.min_length.is_some_and(|min| length < min)
                || field.max_length.is_some_and(|max| length > max)
            {
                return Err(invalid(&field.name, "has the wrong length"));
            }
            values.insert(field.name.as_str(), value);
        }
        let routed = values
            .get(self.raw.routing.field.as_str())
            .cloned()
            .unwrap_or_default();
        Ok(match self.raw.routing.to {
            RouteTo::OwnAccount => Destination::Account {
                account_id: routed,
                own: true,
            },
            RouteTo::Phone => Destination::Phone { phone: routed },
            RouteTo::AccountNumber => Destination::AccountNumber { number: routed },
            RouteTo::Settlement => Destination::Settlement {
                account_id: self.raw.routing.account.clone().unwrap_or_default(),
                reference: routed,
            },
        })
    }

    /// The catalogue entry in a language (`en` when the language has no text).
    pub fn to_json(&self, language: &str) -> Value {
        let text = |titles: &BTreeMap<String, String>| {
            titles
                .get(language)
                .or_else(|| titles.get("en"))
                .cloned()
                .unwrap_or_default()
        };
        let money = |minor: i64| Money::new(minor, self.currency);
        let fields: Vec<Value> = self
            .raw
            .fields
            .iter()
            .map(|f| {
                let mut item = json!({
                    "name": f.name,
                    "type": f.kind,
                    "title": text(&f.title),
                    "required": f.required,
                });
                if !f.options.is_empty() {
                    item["options"] = json!(f.options);
                }
                if let Some(prefill) = &f.prefill {
                    item["prefill"] = json!(prefill);
                }
                if let Some(min) = f.min_length {
                    item["min_length"] = json!(min);
                }
                if let Some(max) = f.max_length {
                    item["max_length"] = json!(max);
                }
                item
            })
            .collect();
        json!({
            "id": self.raw.id,
            "title": text(&self.raw.title),
            "currency": self.currency,
            "fields": fields,
            "fee": {
                "fixed": money(self.fee_fixed),
                "percent_bp": self.raw.fee.percent_bp,
                "min": money(self.fee_min),
                "max": self.fee_max.map(money),
            },
            "limits": {
                "per_payment": self.limits.per_payment,
                "daily": self.limits.daily,
            },
        })
    }
}

fn check_titles(titles: &BTreeMap<String, String>) -> Result<(), String> {
    for language in LANGUAGES {
        match titles.get(language) {
            Some(text) if !text.trim().is_empty() => {}
            _ => return Err(format!("needs a text in {language:?}")),
        }
    }
    Ok(())
}
