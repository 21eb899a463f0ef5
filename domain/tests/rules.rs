//! Data-driven tests of the customer state machine: each case is a profile, a list of
//! changes and what must come out, with no actors, store or bus involved.

use domain::views::{self, TransactionQuery};
use domain::{CustomerState, Product, ProductKind, Profile};
use kernel::{Change, Currency, CustomerId, Money};
use serde_json::{Map, json};

fn profile() -> Profile {
    let product = |id: &str, kind, balance: Option<i64>| Product {
        id: id.into(),
        kind,
        title: id.into(),
        status: "active".into(),
        balance: balance.map(|b| Money::new(b, Currency::RUB)),
        details: Map::new(),
    };
    Profile {
        customer_id: CustomerId::parse("c1").unwrap(),
        name: "Anna".into(),
        phone: "+79990000001".into(),
        language: "ru".into(),
        products: vec![
            product("a1", ProductKind::Account, Some(100_000)),
            product("k1", ProductKind::Card, None),
            product("d1", ProductKind::Deposit, Some(500_000)),
        ],
    }
}

fn change(raw: serde_json::Value) -> Change {
    let mut base = json!({"customer_id": "c1", "at": "2026-12-04T10:00:00Z"});
    base.as_object_mut()
        .unwrap()
        .extend(raw.as_object().unwrap().clone());
    Change::from_value(base).unwrap()
}

fn posted(id: &str, account: &str, amount: &str, balance: &str) -> Change {
    change(
        json!({"id": id, "kind": "transaction_posted", "account_id": account,
        "amount": {"amount": amount, "currency": "RUB"}, "balance": {"amount": balance, "currency": "RUB"},
        "description": "Coffee", "mcc": "5814"}),
    )
}

/// Runs changes through decide → seq → apply, as the actor shell does.
fn run(state: &mut CustomerState, changes: &[Change]) -> Vec<Result<usize, &'static str>> {
    changes
        .iter()
        .map(|c| match state.decide(c) {
            Ok(drafts) => {
                let n = drafts.len();
                for draft in drafts {
                    let event = draft.into_event(state.version + 1);
                    state.apply(&event);
                }
                Ok(n)
            }
            Err(rejection) => Err(rejection.code()),
        })
        .collect()
}

#[test]
fn decisions_table() {
    let usd = change(
        json!({"id": "u", "kind": "balance_changed", "account_id": "a1",
        "balance": {"amount": "1.00", "currency": "USD"}}),
    );
    let other = {
        let mut c = posted("o", "a1", "1", "1");
        c.customer_id = CustomerId::parse("c2").unwrap();
        c
    };
    let cases: Vec<(&str, Change, Result<usize, &str>)> = vec![
        (
            "posting to an own account",
            posted("1", "a1", "-10.00", "990.00"),
            Ok(1),
        ),
        (
            "balance of an own deposit",
            change(
                json!({"id": "2", "kind": "balance_changed", "account_id": "d1", "balance": {"amount": "5001.00", "currency": "RUB"}}),
            ),
            Ok(1),
        ),
        (
            "unknown account",
            posted("3", "a9", "1.00", "1.00"),
            Err("unknown_product"),
        ),
        (
            "card has no balance",
            posted("4", "k1", "1.00", "1.00"),
            Err("no_balance"),
        ),
        ("currency mismatch", usd, Err("currency_mismatch")),
        ("another customer's change", other, Err("wrong_customer")),
        (
            "product status",
            change(
                json!({"id": "5", "kind": "product_changed", "product_id": "k1", "status": "blocked"}),
            ),
            Ok(1),
        ),
        (
            "unknown product status",
            change(
                json!({"id": "6", "kind": "product_changed", "product_id": "zz", "status": "blocked"}),
            ),
            Err("unknown_product"),
        ),
    ];
    for (name, change, expected) in cases {
        let mut state = CustomerState::new(profile());
        let got = run(&mut state, std::slice::from_ref(&change));
        assert_eq!(got, vec![expected], "{name}");
    }
}

#[test]
fn postings_move_balances_and_history_and_replay_rebuilds_the_same_state() {
    let mut state = CustomerState::new(profile());
    let changes = vec![
        posted("t1", "a1", "-10.00", "990.00"),
        posted("t2", "a1", "-20.00", "970.00"),
        change(
            json!({"id": "b1", "kind": "balance_changed", "account_id": "a1", "balance": {"amount": "975.50", "currency": "RUB"}}),
        ),
        change(
            json!({"id": "p1", "kind": "product_changed", "product_id": "k1", "status": "blocked"}),
        ),
        change(
            json!({"id": "p2", "kind": "product_changed", "product_id": "k1", "daily_limit": {"amount": "500.00", "currency": "RUB"}}),
        ),
    ];
    let mut journal = vec![];
    for c in &changes {
        for draft in state.decide(c).unwrap() {
            let event = draft.into_event(state.version + 1);
            state.apply(&event);
            journal.push(event);
        }
    }
    assert_eq!(state.version, 5);
    assert_eq!(
        state.products["a1"].balance,
        Some(Money::new(97_550, Currency::RUB))
    );
    assert_eq!(state.products["k1"].status, "blocked");
    // A limit change keeps the status and lands in the card's details (`GET /v1/products`).
    assert_eq!(
        state.products["k1"].details["daily_limit"],
        json!({"amount": "500.00", "currency": "RUB"})
    );
    assert_eq!(state.recent["a1"].len(), 2);

    let mut rebuilt = CustomerState::new(profile());
    for event in &journal {
        rebuilt.apply(event);
    }
    assert_eq!(rebuilt, state);

    // The snapshot form survives a round trip.
    let snapshot = serde_json::to_value(&state).unwrap();
    assert_eq!(
        serde_json::from_value::<CustomerState>(snapshot).unwrap(),
        state
    );
}

#[test]
fn read_marks_are_monotonic_and_clamped() {
    let mut state = CustomerState::new(profile());
    run(
        &mut state,
        &[
            posted("t1", "a1", "-1.00", "999.00"),
            posted("t2", "a1", "-1.00", "998.00"),
        ],
    );
    assert_eq!(state.unread(), 2);
    assert_eq!(state.mark_read(1), 1);
    assert_eq!(state.mark_read(0), 1);
    assert_eq!(state.mark_read(99), 2);
    assert_eq!(state.unread(), 0);
}

#[test]
fn transaction_pages_walk_newest_first_without_overlap() {
    let mut state = CustomerState::new(profile());
    let changes: Vec<Change> = (1..=25)
        .map(|i| posted(&format!("t{i}"), "a1", "-1.00", &format!("{}.00", 1000 - i)))
        .collect();
    run(&mut state, &changes);
    let mut seen = vec![];
    let mut cursor = None;
    loop {
        let page = views::transactions(
            &state,
            "a1",
            &TransactionQuery {
                before_seq: cursor,
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        seen.extend(page.items.iter().map(|t| t.seq));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());
    assert!(views::transactions(&state, "nope", &TransactionQuery::default()).is_none());
    let products = views::products(&state);
    assert_eq!(products["accounts"][0]["balance"]["amount"], "975.00");
    assert_eq!(products["cards"].as_array().unwrap().len(), 1);
}
