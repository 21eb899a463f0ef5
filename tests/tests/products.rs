//! End-to-end products with the real binary (embedded: SQLite, in-process bus, the reference
//! ABS in-process; two cluster tests on NATS + PostgreSQL): a loan's annuity schedule and the
//! next payment `GET /v1/products` shows from it, a deposit's interest, card block/unblock
//! through the ABS (`abs.cmd.card.*`) seen by the state, the feed and payments, card daily
//! limits enforced on card payments, opening a deposit from an account (once per key, the
//! money moved once; also across two cluster nodes), and refusals that change nothing.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{ArbatProcess, NatsServer, NodeSpec, PgDatabase, account, eventually};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(15);

mod tempdir {
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn rub(amount: &str) -> Value {
    json!({"amount": amount, "currency": "RUB"})
}

/// Kopecks of a `{"amount": "1234.56"}` value.
fn minor(money: &Value) -> i64 {
    let amount = money["amount"].as_str().expect("amount string");
    let (whole, fraction) = amount.split_once('.').expect("two fraction digits");
    whole.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
}

fn today() -> String {
    let today = OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        today.month() as u8,
        today.day()
    )
}

#[tokio::test]
async fn a_loan_schedule_is_an_annuity_and_products_show_its_next_payment() {
    let dir = tempdir::TempDir::new();
    let node = tests::ArbatProcess::start(tests::NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();

    let (status, schedule) = client
        .get("/v1/loans/l000001/schedule", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{schedule}");
    assert_eq!(schedule["loan_id"], "l000001");
    assert_eq!(schedule["principal"], rub("300000.00"));
    assert_eq!(schedule["rate"], "19.9");
    assert_eq!(schedule["term_months"], 36);
    assert_eq!(schedule["start_date"], "2026-11-15");
    // 300 000 at 19.9% over 36 months: the level payment, reproduced independently in
    // domain/src/products/tests.rs.
    assert_eq!(schedule["payment"], rub("11133.80"));
    let items = schedule["items"].as_array().unwrap();
    assert_eq!(items.len(), 36);
    assert_eq!(items[0]["date"], "2026-12-15");
    assert_eq!(items[0]["interest"], rub("4975.00"));
    assert_eq!(items[35]["date"], "2029-11-15");
    assert_eq!(items[35]["payment"], rub("11133.57"));
    assert_eq!(items[35]["balance_after"], rub("0.00"));
    let principal_paid: i64 = items.iter().map(|i| minor(&i["principal"])).sum();
    assert_eq!(principal_paid, 30_000_000);

    // The next payment is the first instalment due today or later, the same in both reads.
    let today = today();
    let expected_next = items
        .iter()
        .find(|i| i["date"].as_str().unwrap() >= today.as_str())
        .map(|i| json!({"date": i["date"], "amount": i["payment"]}))
        .unwrap_or(Value::Null);
    assert_eq!(schedule["next_payment"], expected_next);
    let (status, products) = client.get("/v1/products", Some(&token)).await.unwrap();
    assert_eq!(status, 200);
    let loan = &products["loans"][0];
    assert_eq!(loan["id"], "l000001");
    assert_eq!(loan["next_payment"], expected_next);

    // The deposit shows its rate and interest: 500 000 at 12.5% for 730 days.
    let deposit = &products["deposits"][0];
    assert_eq!(deposit["rate"], "12.5");
    assert_eq!(deposit["interest_expected"], rub("125000.00"));
    let accrued = minor(&deposit["interest_accrued"]);
    assert!(
        (0..=12_500_000).contains(&accrued),
        "accrued {accrued} within the term's interest"
    );
}

#[tokio::test]
async fn schedules_of_loans_that_are_not_the_callers_are_not_found() {
    let dir = tempdir::TempDir::new();
    let node = tests::ArbatProcess::start(tests::NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    // Customer 2's loan, an unknown id, the caller's own account (not a loan) and an
    // overlong id all answer the same problem.
    let long = format!("/v1/loans/{}/schedule", "l".repeat(300));
    for path in [
        "/v1/loans/l000002/schedule",
        "/v1/loans/nope/schedule",
        "/v1/loans/a000001/schedule",
        long.as_str(),
    ] {
        let (status, body) = client.get(path, Some(&token)).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found", "{path}");
    }
    let (status, body) = client
        .get("/v1/loans/l000001/schedule", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");
}

async fn card_status(client: &tests::Client, token: &str, card: &str) -> String {
    let (status, products) = client.get("/v1/products", Some(token)).await.unwrap();
    assert_eq!(status, 200);
    products["cards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == card)
        .map(|p| p["status"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn account_balance(client: &tests::Client, token: &str, id: &str) -> String {
    let (_, products) = client.get("/v1/products", Some(token)).await.unwrap();
    products["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["balance"]["amount"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn pay_from_card(client: &tests::Client, token: &str, card: &str, key: &str) -> (u16, Value) {
    client
        .post_idempotent(
            "/v1/payments",
            token,
            key,
            json!({"operation": "transfer.phone", "from": card, "amount": rub("1.00"),
                "fields": {"phone": "+79990000002"}}),
        )
        .await
        .unwrap()
}

async fn wait_card_status(client: &tests::Client, token: &str, card: &str, want: &str) {
    eventually(&format!("{card} is {want}"), WAIT, || async {
        (card_status(client, token, card).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_blocked_card_pays_nothing_until_unblocked_and_the_feed_shows_both() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    let before = account_balance(&client, &token, &account(1)).await;

    let (status, body) = client
        .post_idempotent("/v1/cards/k000001/block", &token, "b1", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": "k000001", "status": "blocked"}));
    // Blocking a blocked card answers the same (a retry, or another key).
    for key in ["b1", "b2"] {
        let (status, body) = client
            .post_idempotent("/v1/cards/k000001/block", &token, key, json!({}))
            .await
            .unwrap();
        assert_eq!((status, &body["status"]), (200, &json!("blocked")), "{key}");
    }
    wait_card_status(&client, &token, "k000001", "blocked").await;
    let (status, problem) = pay_from_card(&client, &token, "k000001", "p1").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("card_blocked"))
    );
    assert_eq!(account_balance(&client, &token, &account(1)).await, before);

    let (status, body) = client
        .post_idempotent("/v1/cards/k000001/unblock", &token, "u1", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": "k000001", "status": "active"}));
    wait_card_status(&client, &token, "k000001", "active").await;
    let (status, paid) = pay_from_card(&client, &token, "k000001", "p2").await;
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["status"], "completed");

    // The feed has the block and the unblock, in order, each once despite the retries.
    let feed = client.whole_feed(&token).await.unwrap();
    let mut changes: Vec<(u64, String)> = feed
        .iter()
        .filter(|e| e["kind"] == "product_changed" && e["product_id"] == "k000001")
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    changes.sort();
    let statuses: Vec<&str> = changes.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(statuses.first(), Some(&"blocked"), "{changes:?}");
    // Keys b1 (sent twice) and b2: the ABS publishes the one transition.
    assert_eq!(
        statuses.iter().filter(|s| **s == "blocked").count(),
        1,
        "{changes:?}"
    );
    assert_eq!(statuses.last(), Some(&"active"), "{changes:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == "active").count(),
        1,
        "{changes:?}"
    );
}

#[tokio::test]
async fn card_commands_on_cards_that_are_not_the_callers_change_nothing() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    let other = client.login(2).await.unwrap();
    // Customer 2's card, an unknown id, the caller's own account (not a card) and an overlong
    // id: the same 404.
    let long = format!("/v1/cards/{}/block", "k".repeat(300));
    for path in [
        "/v1/cards/k000002/block",
        "/v1/cards/k000002/unblock",
        "/v1/cards/nope/block",
        "/v1/cards/a000001/block",
        long.as_str(),
    ] {
        let (status, body) = client
            .post_idempotent(path, &token, "x1", json!({}))
            .await
            .unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found", "{path}");
    }
    // No Idempotency-Key, no token: refused.
    let (status, body) = client
        .post("/v1/cards/k000001/block", Some(&token), json!({}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    let (status, body) = client
        .post("/v1/cards/k000001/block", None, json!({}))
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    // Nothing changed: both cards are active and pay.
    assert_eq!(card_status(&client, &token, "k000001").await, "active");
    assert_eq!(card_status(&client, &other, "k000002").await, "active");
    let (status, paid) = pay_from_card(&client, &token, "k000001", "p1").await;
    assert_eq!(status, 201, "{paid}");
}

#[tokio::test]
async fn a_card_blocked_through_one_node_is_refused_on_another() {
    let nats = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let db = PgDatabase::create().await.expect("PostgreSQL");
    let sms = tests::SmsGateway::start().await.expect("local SMS gateway");
    let mut nodes = vec![];
    for i in 0..2 {
        let spec = NodeSpec::cluster(&nats.url(), &db.url, &format!("n{i}"), &sms.url);
        nodes.push(
            ArbatProcess::start(spec)
                .await
                .expect("cluster node starts"),
        );
    }
    eventually(
        "both nodes own partitions",
        Duration::from_secs(30),
        || async {
            for node in &nodes {
                if node.partitions().await.is_empty() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let (a, b) = (nodes[0].client(), nodes[1].client());
    let token_a = a.login(7).await.unwrap();
    let token_b = b.login(7).await.unwrap();
    let before = account_balance(&b, &token_b, &account(7)).await;

    let (status, body) = a
        .post_idempotent("/v1/cards/k000007/block", &token_a, "b1", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, problem) = pay_from_card(&b, &token_b, "k000007", "p1").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("card_blocked"))
    );
    wait_card_status(&b, &token_b, "k000007", "blocked").await;
    assert_eq!(account_balance(&b, &token_b, &account(7)).await, before);
}

#[tokio::test]
async fn each_block_of_a_card_sends_one_security_alert_in_the_customers_language() {
    let gateway = tests::SmsGateway::start().await.unwrap();
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env.push(("ARBAT_SMS_URL".into(), gateway.url.clone()));
    let node = ArbatProcess::start(spec).await.unwrap();
    let client = node.client();
    // Customer 15 speaks Russian (demo data) and has no app: the alert falls back to SMS.
    let token = client.login(15).await.unwrap();
    // Block (alert), block again (already blocked: nothing published), unblock (no alert),
    // block (alert). The first block reaches an actor not yet activated.
    for (path, key) in [
        ("/v1/cards/k000015/block", "b1"),
        ("/v1/cards/k000015/block", "b2"),
        ("/v1/cards/k000015/unblock", "u1"),
        ("/v1/cards/k000015/block", "b3"),
    ] {
        let (status, body) = client
            .post_idempotent(path, &token, key, json!({}))
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        // Each change is applied before the next, so the actor sees them in order.
        let want = if path.ends_with("unblock") {
            "active"
        } else {
            "blocked"
        };
        wait_card_status(&client, &token, "k000015", want).await;
    }
    let alerts = |messages: &[Value]| {
        messages
            .iter()
            .filter(|m| m["to"] == "+79990000015")
            .filter(|m| {
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("карта 220220******0015 заблокирована"))
            })
            .count()
    };
    let found = tokio::time::timeout(WAIT, async {
        while alerts(&gateway.messages()) < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let feed = client.whole_feed(&token).await.unwrap();
    assert!(
        found.is_ok(),
        "SMS: {:?}\nfeed: {feed:?}",
        gateway.messages()
    );
    assert_eq!(alerts(&gateway.messages()), 2);
}

async fn card_daily_limit(client: &tests::Client, token: &str, card: &str) -> Value {
    let (status, products) = client.get("/v1/products", Some(token)).await.unwrap();
    assert_eq!(status, 200);
    products["cards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == card)
        .map(|p| p["daily_limit"].clone())
        .unwrap()
}

async fn pay_amount_from_card(
    client: &tests::Client,
    token: &str,
    card: &str,
    key: &str,
    amount: &str,
) -> (u16, Value) {
    client
        .post_idempotent(
            "/v1/payments",
            token,
            key,
            json!({"operation": "transfer.phone", "from": card, "amount": rub(amount),
                "fields": {"phone": "+79990000002"}}),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_card_pays_up_to_its_daily_limit_and_the_feed_shows_the_limit() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    assert_eq!(
        card_daily_limit(&client, &token, "k000001").await,
        Value::Null
    );

    for key in ["l1", "l1", "l2"] {
        let (status, body) = client
            .put_idempotent(
                "/v1/cards/k000001/limits",
                &token,
                key,
                json!({"daily": rub("100.00")}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body, json!({"id": "k000001", "daily_limit": rub("100.00")}));
    }
    eventually("the limit reaches the state", WAIT, || async {
        (card_daily_limit(&client, &token, "k000001").await == rub("100.00")).then_some(())
    })
    .await;

    // 60 + 40 fit; one more kopeck does not, and changes nothing.
    let (status, paid) = pay_amount_from_card(&client, &token, "k000001", "p1", "60.00").await;
    assert_eq!(
        (status, &paid["status"]),
        (201, &json!("completed")),
        "{paid}"
    );
    let (status, paid) = pay_amount_from_card(&client, &token, "k000001", "p2", "40.00").await;
    assert_eq!(
        (status, &paid["status"]),
        (201, &json!("completed")),
        "{paid}"
    );
    let before = account_balance(&client, &token, &account(1)).await;
    let (status, problem) = pay_amount_from_card(&client, &token, "k000001", "p3", "0.01").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("limit_exceeded")),
        "{problem}"
    );
    assert_eq!(account_balance(&client, &token, &account(1)).await, before);
    // The card's account itself is not limited by the card's limit.
    let (status, paid) = pay_amount_from_card(&client, &token, &account(1), "p4", "1.00").await;
    assert_eq!(status, 201, "{paid}");

    // Raising the limit lets the card pay again.
    let (status, _) = client
        .put_idempotent(
            "/v1/cards/k000001/limits",
            &token,
            "l3",
            json!({"daily": rub("200.00")}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    eventually("the raised limit reaches the state", WAIT, || async {
        (card_daily_limit(&client, &token, "k000001").await == rub("200.00")).then_some(())
    })
    .await;
    let (status, paid) = pay_amount_from_card(&client, &token, "k000001", "p5", "0.01").await;
    assert_eq!(status, 201, "{paid}");

    // The feed has each change of the limit once despite the retried and repeated keys.
    let feed = client.whole_feed(&token).await.unwrap();
    let limits: Vec<&Value> = feed
        .iter()
        .filter(|e| e["kind"] == "product_changed" && e["product_id"] == "k000001")
        .map(|e| &e["daily_limit"])
        .collect();
    assert_eq!(limits, [&rub("100.00"), &rub("200.00")], "{feed:?}");
}

#[tokio::test]
async fn bad_or_foreign_card_limits_change_nothing() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    let other = client.login(2).await.unwrap();
    let put = |path: String, key: &'static str, body: Value| {
        let client = &client;
        let token = &token;
        async move {
            client
                .put_idempotent(&path, token, key, body)
                .await
                .unwrap()
        }
    };
    // Another customer's card, an unknown id, an account: 404.
    for card in ["k000002", "nope", "a000001"] {
        let (status, body) = put(
            format!("/v1/cards/{card}/limits"),
            "x1",
            json!({"daily": rub("100.00")}),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{card}"
        );
    }
    // Bad bodies: 422 invalid_field on `daily`.
    for body in [
        json!({"daily": rub("0.00")}),
        json!({"daily": rub("-1.00")}),
        json!({"daily": rub("1000000.01")}),
        json!({"daily": {"amount": "100.00", "currency": "USD"}}),
        json!({"daily": {"amount": "1.001", "currency": "RUB"}}),
        json!({"daily": "100"}),
        json!({}),
        json!({"daily": rub("100.00"), "weekly": rub("1.00")}),
    ] {
        let (status, problem) = put("/v1/cards/k000001/limits".into(), "x2", body.clone()).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some("invalid_field"), Some("daily")),
            "{body}: {problem}"
        );
    }
    // No key: 400.
    let (status, problem) = put(
        "/v1/cards/k000001/limits".into(),
        "",
        json!({"daily": rub("100.00")}),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    // The maximum itself is accepted.
    let (status, body) = put(
        "/v1/cards/k000001/limits".into(),
        "x3",
        json!({"daily": rub("1000000.00")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Customer 2's card is still without a limit; its feed has no change of it.
    assert_eq!(
        card_daily_limit(&client, &other, "k000002").await,
        Value::Null
    );
    let feed = client.whole_feed(&other).await.unwrap();
    assert!(
        !feed.iter().any(|e| e["kind"] == "product_changed"),
        "{feed:?}"
    );
}

async fn deposits(client: &tests::Client, token: &str) -> Vec<Value> {
    let (status, products) = client.get("/v1/products", Some(token)).await.unwrap();
    assert_eq!(status, 200);
    products["deposits"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_deposit_opens_from_an_account_once_per_key_and_moves_the_money_once() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    let before = minor(&rub(&account_balance(&client, &token, &account(1)).await));
    let deposits_before = deposits(&client, &token).await.len();

    let body = json!({"from": account(1), "amount": rub("10000.00"), "term_months": 6});
    let (status, opened) = client
        .post_idempotent("/v1/deposits", &token, "d1", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["rate"], "13.5");
    assert_eq!(opened["amount"], rub("10000.00"));
    let id = opened["id"].as_str().unwrap().to_owned();
    // A retry with the same key: the same deposit, no second transfer.
    let (status, again) = client
        .post_idempotent("/v1/deposits", &token, "d1", body)
        .await
        .unwrap();
    assert_eq!(status, 201, "{again}");
    assert_eq!(again, opened);

    eventually("the deposit is in the products", WAIT, || async {
        deposits(&client, &token)
            .await
            .into_iter()
            .find(|d| d["id"] == id.as_str() && d["balance"] == rub("10000.00"))
    })
    .await;
    let deposit = deposits(&client, &token)
        .await
        .into_iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap();
    assert_eq!(deposit["interest_expected"], opened["interest_expected"]);
    assert_eq!(deposit["ends"], opened["ends"]);
    assert_eq!(deposits(&client, &token).await.len(), deposits_before + 1);
    eventually("the account dropped by the amount", WAIT, || async {
        let now = minor(&rub(&account_balance(&client, &token, &account(1)).await));
        (now == before - 1_000_000).then_some(())
    })
    .await;
    // The same key with another body: a conflict, nothing moves.
    let (status, problem) = client
        .post_idempotent(
            "/v1/deposits",
            &token,
            "d1",
            json!({"from": account(1), "amount": rub("20000.00"), "term_months": 6}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    assert_eq!(
        minor(&rub(&account_balance(&client, &token, &account(1)).await)),
        before - 1_000_000
    );
}

#[tokio::test]
async fn refused_deposits_change_nothing() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    let balance = account_balance(&client, &token, &account(1)).await;
    let count = deposits(&client, &token).await.len();
    let cases = [
        (
            json!({"from": account(2), "amount": rub("1000.00"), "term_months": 3}),
            404,
            "account_not_found",
        ),
        (
            json!({"from": "nope", "amount": rub("1000.00"), "term_months": 3}),
            404,
            "account_not_found",
        ),
        (
            json!({"from": "k000001", "amount": rub("1000.00"), "term_months": 3}),
            404,
            "account_not_found",
        ),
        (
            json!({"from": account(1), "amount": rub("1000.00"), "term_months": 5}),
            422,
            "invalid_field",
        ),
        (
            json!({"from": account(1), "amount": rub("0.00"), "term_months": 3}),
            422,
            "invalid_field",
        ),
        (
            json!({"from": account(1), "amount": rub("-5.00"), "term_months": 3}),
            422,
            "invalid_field",
        ),
        (
            json!({"from": account(1), "amount": rub("999.99"), "term_months": 3}),
            422,
            "invalid_field",
        ),
        (
            json!({"from": account(1), "amount": {"amount": "1000.00", "currency": "USD"}, "term_months": 3}),
            422,
            "invalid_field",
        ),
        (
            json!({"from": account(1), "amount": rub("1000.00")}),
            422,
            "invalid_field",
        ),
        (
            json!({"from": account(1), "amount": rub("999999999.00"), "term_months": 12}),
            422,
            "insufficient_funds",
        ),
    ];
    for (n, (body, status, code)) in cases.into_iter().enumerate() {
        let (got, problem) = client
            .post_idempotent("/v1/deposits", &token, &format!("r{n}"), body.clone())
            .await
            .unwrap();
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{body}: {problem}"
        );
    }
    let (status, problem) = client
        .post(
            "/v1/deposits",
            Some(&token),
            json!({"from": account(1), "amount": rub("1000.00"), "term_months": 3}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    assert_eq!(account_balance(&client, &token, &account(1)).await, balance);
    assert_eq!(deposits(&client, &token).await.len(), count);
}

#[tokio::test]
async fn a_deposit_opened_through_one_node_is_seen_on_another_in_a_cluster() {
    let nats = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let db = PgDatabase::create().await.expect("PostgreSQL");
    let sms = tests::SmsGateway::start().await.expect("local SMS gateway");
    let mut nodes = vec![];
    for i in 0..2 {
        let spec = NodeSpec::cluster(&nats.url(), &db.url, &format!("n{i}"), &sms.url);
        nodes.push(
            ArbatProcess::start(spec)
                .await
                .expect("cluster node starts"),
        );
    }
    eventually(
        "both nodes own partitions",
        Duration::from_secs(30),
        || async {
            for node in &nodes {
                if node.partitions().await.is_empty() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let (a, b) = (nodes[0].client(), nodes[1].client());
    let token_a = a.login(8).await.unwrap();
    let token_b = b.login(8).await.unwrap();
    let before = minor(&rub(&account_balance(&b, &token_b, &account(8)).await));

    let body = json!({"from": account(8), "amount": rub("5000.00"), "term_months": 12});
    let (status, opened) = a
        .post_idempotent("/v1/deposits", &token_a, "d1", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 201, "{opened}");
    // The same key through the other node: the same deposit.
    let (status, again) = b
        .post_idempotent("/v1/deposits", &token_b, "d1", body)
        .await
        .unwrap();
    assert_eq!((status, &again), (201, &opened));
    let id = opened["id"].as_str().unwrap().to_owned();
    eventually("node b shows the funded deposit", WAIT, || async {
        deposits(&b, &token_b)
            .await
            .into_iter()
            .find(|d| d["id"] == id.as_str() && d["balance"] == rub("5000.00"))
    })
    .await;
    eventually("the account dropped once", WAIT, || async {
        let now = minor(&rub(&account_balance(&b, &token_b, &account(8)).await));
        (now == before - 500_000).then_some(())
    })
    .await;
}
