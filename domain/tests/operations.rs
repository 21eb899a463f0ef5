//! Every Operation Studio validation error, named by file and field; request fields checked
//! against a definition.

// Amounts are written as major_minor (`120_50` is 120.50) so they read like money.
#![allow(clippy::inconsistent_digit_grouping)]

use domain::operations::Definition;

const GOOD: &str = r#"
id = "transfer.phone"
title = { en = "By phone", ru = "По телефону" }
currency = "RUB"

[[fields]]
name = "phone"
type = "phone"
title = { en = "Phone", ru = "Телефон" }

[[fields]]
name = "kind"
type = "choice"
title = { en = "Kind", ru = "Вид" }
options = ["a", "b"]
required = false

[fee]
percent_bp = 100
min = "30.00"
max = "1000.00"

[limits]
per_payment = "150000.00"
daily = "300000.00"

[routing]
command = "payment"
to = "phone"
field = "phone"
"#;

#[test]
fn a_good_definition_parses() {
    let definition = Definition::parse("ops/transfer.phone.toml", GOOD).unwrap();
    assert_eq!(definition.id(), "transfer.phone");
    let fee = definition.fee(&kernel::Money::new(100_000_00, kernel::Currency::RUB));
    assert_eq!(fee.minor, 1000_00);
    let json = definition.to_json("ru");
    assert_eq!(json["title"], "По телефону");
    assert_eq!(json["fields"][1]["options"][1], "b");
}

#[test]
fn every_validation_error_names_file_and_field() {
    // (edit of the good text, field named)
    let cases: Vec<(&str, &str, &str)> = vec![
        ("id = \"transfer.phone\"", "id = \"Transfer!\"", "id"),
        ("id = \"transfer.phone\"", "id = \"other.name\"", "id"),
        ("ru = \"По телефону\"", "de = \"x\"", "title"),
        ("currency = \"RUB\"", "currency = \"rub\"", "currency"),
        ("name = \"phone\"", "name = \"Phone\"", "fields[0].name"),
        ("name = \"kind\"", "name = \"phone\"", "fields[1].name"),
        (
            "title = { en = \"Phone\", ru = \"Телефон\" }",
            "title = { en = \"Phone\" }",
            "fields[0].title",
        ),
        (
            "options = [\"a\", \"b\"]",
            "options = []",
            "fields[1].options",
        ),
        (
            "type = \"phone\"",
            "type = \"phone\"\noptions = [\"x\"]",
            "fields[0].options",
        ),
        (
            "type = \"phone\"",
            "type = \"phone\"\nmin_length = 5\nmax_length = 2",
            "fields[0].min_length",
        ),
        (
            "type = \"phone\"",
            "type = \"phone\"\nmax_length = 0",
            "fields[0].max_length",
        ),
        (
            "type = \"phone\"",
            "type = \"phone\"\nprefill = \"somewhere\"",
            "fields[0].prefill",
        ),
        ("percent_bp = 100", "percent_bp = 20000", "fee.percent_bp"),
        ("max = \"1000.00\"", "max = \"10.00\"", "fee.max"),
        ("min = \"30.00\"", "min = \"30.001\"", "fee.min"),
        (
            "per_payment = \"150000.00\"",
            "per_payment = \"-1.00\"",
            "limits.per_payment",
        ),
        ("daily = \"300000.00\"", "daily = \"lots\"", "limits.daily"),
        (
            "command = \"payment\"",
            "command = \"launch\"",
            "routing.command",
        ),
        ("field = \"phone\"\n", "field = \"nope\"\n", "routing.field"),
        ("to = \"phone\"", "to = \"account_number\"", "routing.field"),
        ("to = \"phone\"", "to = \"settlement\"", "routing.account"),
        (
            "field = \"phone\"\n",
            "field = \"phone\"\naccount = \"settle-x\"\n",
            "routing.account",
        ),
        (
            "currency = \"RUB\"",
            "currency = \"RUB\"\nsurprise = 1",
            "(file)",
        ),
        ("type = \"phone\"", "type = \"telepathy\"", "(file)"),
    ];
    for (from, to, field) in cases {
        assert!(GOOD.contains(from), "{from:?} not in the good text");
        let text = GOOD.replacen(from, to, 1);
        let error = Definition::parse("ops/transfer.phone.toml", &text)
            .expect_err(&format!("{to:?} must be refused"));
        assert_eq!(error.file, "ops/transfer.phone.toml");
        assert_eq!(error.field, field, "{to:?}: {error}");
    }
}

#[test]
fn request_fields_are_checked_and_named() {
    let definition = Definition::parse("transfer.phone.toml", GOOD).unwrap();
    let rub = kernel::Money::new(100, kernel::Currency::RUB);
    let fields = |v: serde_json::Value| v.as_object().unwrap().clone();
    let ok = definition
        .destination(&rub, &fields(serde_json::json!({"phone": "+79990000002"})))
        .unwrap();
    assert_eq!(
        ok,
        kernel::payment::Destination::Phone {
            phone: "+79990000002".into()
        }
    );
    let cases = [
        (serde_json::json!({}), "phone"),
        (serde_json::json!({"phone": "79990000002"}), "phone"),
        (serde_json::json!({"phone": 7}), "phone"),
        (
            serde_json::json!({"phone": "+79990000002", "kind": "c"}),
            "kind",
        ),
        (serde_json::json!({"phone": "+79990000002", "x": "1"}), "x"),
    ];
    for (raw, field) in cases {
        let error = definition
            .destination(&rub, &fields(raw.clone()))
            .unwrap_err();
        assert_eq!(error.field, field, "{raw}");
    }
    let usd = kernel::Money::new(100, kernel::Currency::USD);
    assert_eq!(
        definition
            .destination(&usd, &fields(serde_json::json!({"phone": "+79990000002"})))
            .unwrap_err()
            .field,
        "amount"
    );
}

#[test]
fn the_shipped_definitions_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../operations");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            Definition::parse(&name, &text).unwrap();
            count += 1;
        }
    }
    assert!(count >= 6);
}
