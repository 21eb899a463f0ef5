//! Templates are data: one TOML document of texts per kind and language, loaded at start
//! and validated (a placeholder naming an undeclared parameter is refused at load).
//!
//! Rendering formats each parameter by its declared type for the language (money, dates,
//! masked PANs) and masks PANs in the finished text once more.

mod format;

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use crate::mask::{mask_pan, mask_pans};
use crate::model::{Kind, Language};
pub use format::{format_datetime, format_money};

/// The set shipped with the crate (Russian and English for every kind).
pub const DEFAULT_TEMPLATES: &str = include_str!("default.toml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    Text,
    Money,
    Pan,
    Datetime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("templates are not valid TOML: {0}")]
    Syntax(String),
    #[error("unknown kind {0:?} in templates")]
    UnknownKind(String),
    #[error("kind {0} has no templates")]
    MissingKind(&'static str),
    #[error("kind {kind} has no {language} text")]
    MissingLanguage {
        kind: &'static str,
        language: &'static str,
    },
    #[error("template {kind}.{language}.{field} references undeclared parameter {param:?}")]
    UndeclaredParam {
        kind: &'static str,
        language: &'static str,
        field: &'static str,
        param: String,
    },
    #[error("template {kind}.{language}.{field} has an unclosed placeholder")]
    Unclosed {
        kind: &'static str,
        language: &'static str,
        field: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("missing parameter {0:?}")]
    MissingParam(String),
    #[error("parameter {name:?} is not a valid {expected}")]
    BadParam {
        name: String,
        expected: &'static str,
    },
}

/// One rendered notification, ready for any channel. PANs are masked in every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub language: Language,
    pub title: String,
    pub body: String,
    pub sms: String,
}

#[derive(Deserialize)]
struct RawKind {
    #[serde(default)]
    params: BTreeMap<String, ParamType>,
    #[serde(flatten)]
    languages: BTreeMap<String, RawText>,
}

#[derive(Deserialize)]
struct RawText {
    title: String,
    body: String,
    #[serde(default)]
    sms: Option<String>,
}

#[derive(Clone, Debug)]
struct Text {
    title: Vec<Piece>,
    body: Vec<Piece>,
    sms: Option<Vec<Piece>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Literal(String),
    Param(String),
}

#[derive(Clone, Debug)]
struct KindTemplates {
    params: BTreeMap<String, ParamType>,
    texts: HashMap<Language, Text>,
}

/// The validated template set.
#[derive(Clone, Debug)]
pub struct Templates {
    kinds: HashMap<Kind, KindTemplates>,
    default_language: Language,
}

impl Templates {
    /// Loads and validates a template document; every kind needs Russian and English.
    pub fn load(toml_text: &str, default_language: Language) -> Result<Self, TemplateError> {
        let raw: BTreeMap<String, RawKind> =
            toml::from_str(toml_text).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let mut kinds = HashMap::new();
        for (name, raw_kind) in raw {
            let kind =
                Kind::parse(&name).ok_or_else(|| TemplateError::UnknownKind(name.clone()))?;
            let mut texts = HashMap::new();
            for (lang_name, raw_text) in raw_kind.languages {
                let language = Language::parse(&lang_name)
                    .filter(|l| l.as_str() == lang_name)
                    .ok_or_else(|| {
                        TemplateError::Syntax(format!("unknown language {lang_name:?}"))
                    })?;
                let check = |field: &'static str, text: &str| {
                    let pieces = parse_pieces(text).ok_or(TemplateError::Unclosed {
                        kind: kind.as_str(),
                        language: language.as_str(),
                        field,
                    })?;
                    for piece in &pieces {
                        if let Piece::Param(p) = piece
                            && !raw_kind.params.contains_key(p)
                        {
                            return Err(TemplateError::UndeclaredParam {
                                kind: kind.as_str(),
                                language: language.as_str(),
                                field,
                                param: p.clone(),
                            });
                        }
                    }
                    Ok(pieces)
                };
                let text = Text {
                    title: check("title", &raw_text.title)?,
                    body: check("body", &raw_text.body)?,
                    sms: raw_text
                        .sms
                        .as_deref()
                        .map(|s| check("sms", s))
                        .transpose()?,
                };
                texts.insert(language, text);
            }
            for language in [Language::Ru, Language::En] {
                if !texts.contains_key(&language) {
                    return Err(TemplateError::MissingLanguage {
                        kind: kind.as_str(),
                        language: language.as_str(),
                    });
                }
            }
            kinds.insert(
                kind,
                KindTemplates {
                    params: raw_kind.params,
                    texts,
                },
            );
        }
        for kind in Kind::ALL {
            if !kinds.contains_key(&kind) {
                return Err(TemplateError::MissingKind(kind.as_str()));
            }
        }
        Ok(Self {
            kinds,
            default_language,
        })
    }

    pub fn builtin() -> Self {
        Self::load(DEFAULT_TEMPLATES, Language::Ru).expect("the built-in templates are valid")
    }

    pub fn default_language(&self) -> Language {
        self.default_language
    }

    /// Renders a kind in a language with the customer's UTC offset (minutes) for dates.
    pub fn render(
        &self,
        kind: Kind,
        language: Option<Language>,
        params: &serde_json::Map<String, Value>,
        utc_offset_minutes: i16,
    ) -> Result<Rendered, RenderError> {
        let templates = &self.kinds[&kind];
        let language = language.unwrap_or(self.default_language);
        let text = templates
            .texts
            .get(&language)
            .or_else(|| templates.texts.get(&self.default_language))
            .expect("validated at load");
        let mut values = HashMap::new();
        for (name, ty) in &templates.params {
            let value = params
                .get(name)
                .ok_or_else(|| RenderError::MissingParam(name.clone()))?;
            values.insert(
                name.as_str(),
                format_param(name, *ty, value, language, utc_offset_minutes)?,
            );
        }
        let fill = |pieces: &[Piece]| {
            let mut out = String::new();
            for piece in pieces {
                match piece {
                    Piece::Literal(l) => out.push_str(l),
                    Piece::Param(p) => out.push_str(&values[p.as_str()]),
                }
            }
            mask_pans(&out)
        };
        let body = fill(&text.body);
        Ok(Rendered {
            language,
            title: fill(&text.title),
            sms: text
                .sms
                .as_deref()
                .map(fill)
                .unwrap_or_else(|| body.clone()),
            body,
        })
    }
}

fn format_param(
    name: &str,
    ty: ParamType,
    value: &Value,
    language: Language,
    utc_offset_minutes: i16,
) -> Result<String, RenderError> {
    let bad = |expected| RenderError::BadParam {
        name: name.to_owned(),
        expected,
    };
    match ty {
        ParamType::Text => match value {
            Value::String(s) => Ok(s.chars().filter(|c| !c.is_control()).take(500).collect()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(bad("text")),
        },
        ParamType::Money => {
            let money: kernel::Money =
                serde_json::from_value(value.clone()).map_err(|_| bad("money"))?;
            Ok(format_money(&money, language))
        }
        ParamType::Pan => value
            .as_str()
            .map(mask_pan)
            .ok_or_else(|| bad("card number")),
        ParamType::Datetime => {
            let at = value
                .as_str()
                .and_then(|s| {
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .ok_or_else(|| bad("RFC 3339 time"))?;
            Ok(format_datetime(at, language, utc_offset_minutes))
        }
    }
}

/// Splits `"a {b} c"` into pieces; `None` for an unclosed or empty placeholder.
fn parse_pieces(text: &str) -> Option<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}')? + open;
        let name = rest[open + 1..close].trim();
        if name.is_empty() || name.contains('{') {
            return None;
        }
        pieces.push(Piece::Param(name.to_owned()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn builtin_set_loads() {
        let t = Templates::builtin();
        assert_eq!(t.default_language(), Language::Ru);
    }

    #[test]
    fn refuses_undeclared_parameters_and_missing_languages() {
        let doc = DEFAULT_TEMPLATES.replace("Код {code} для", "Код {cod} для");
        assert!(matches!(
            Templates::load(&doc, Language::Ru),
            Err(TemplateError::UndeclaredParam { param, .. }) if param == "cod"
        ));
        let doc = DEFAULT_TEMPLATES.replace("en.title = \"Confirmation code\"\n", "");
        assert!(Templates::load(&doc, Language::Ru).is_err());
        let doc = DEFAULT_TEMPLATES.replace("[offer]", "[teleport]");
        assert!(matches!(
            Templates::load(&doc, Language::Ru),
            Err(TemplateError::UnknownKind(_))
        ));
        assert!(matches!(
            Templates::load(
                &DEFAULT_TEMPLATES.replace("{purpose})", "{purpose"),
                Language::Ru
            ),
            Err(TemplateError::Unclosed { .. })
        ));
    }

    #[test]
    fn renders_by_language_with_formatting_and_masking() {
        let t = Templates::builtin();
        let p = params(json!({
            "amount": {"amount": "-1234.50", "currency": "RUB"},
            "balance": {"amount": "100000.00", "currency": "RUB"},
            "description": "Refund to 4111 1111 1111 1111",
            "card": "2200000000001234",
            "at": "2026-12-04T10:05:00Z"
        }));
        let ru = t
            .render(Kind::Transaction, Some(Language::Ru), &p, 180)
            .unwrap();
        assert_eq!(
            ru.body,
            "04.12.2026 13:05 карта 220000******1234: −1 234,50 ₽, Refund to 411111******1111. Баланс 100 000,00 ₽."
        );
        let en = t
            .render(Kind::Transaction, Some(Language::En), &p, 0)
            .unwrap();
        assert_eq!(
            en.body,
            "4 Dec 2026, 10:05 card 220000******1234: −RUB 1,234.50, Refund to 411111******1111. Balance RUB 100,000.00."
        );
        let fallback = t.render(Kind::Transaction, None, &p, 0).unwrap();
        assert_eq!(fallback.language, Language::Ru);
        assert_eq!(
            t.render(Kind::Code, None, &params(json!({"code": "1"})), 0),
            Err(RenderError::MissingParam("purpose".into()))
        );
        assert!(matches!(
            t.render(
                Kind::Transaction,
                None,
                &params(
                    json!({"amount": 5, "balance": 1, "description": "", "card": "", "at": ""})
                ),
                0
            ),
            Err(RenderError::BadParam { .. })
        ));
        let code = t
            .render(
                Kind::Code,
                Some(Language::En),
                &params(json!({"code": "123456", "purpose": "login"})),
                0,
            )
            .unwrap();
        assert_eq!(code.sms, "Arbat: code 123456 (login). Never share it.");
    }
}
