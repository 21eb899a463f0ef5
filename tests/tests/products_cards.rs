//! End-to-end cards with the real binary (embedded; one cluster test on NATS + PostgreSQL):
//! block/unblock through the ABS (`abs.cmd.card.*`) seen by the state, the feed and payments,
//! the security alert, daily limits enforced on card payments, and refusals that change nothing.

use std::time::Duration;

use serde_json::{Value, json};
use tests::fixtures::{Cluster, TempDir, account_balance, rub};
use tests::{ArbatProcess, NodeSpec, account, eventually};

const WAIT: Duration = Duration::from_secs(15);

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
    let dir = TempDir::new();
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
    let dir = TempDir::new();
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
    let cluster = Cluster::start(2).await;
    let nodes = &cluster.nodes;
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
    let dir = TempDir::new();
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
    let dir = TempDir::new();
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
    let dir = TempDir::new();
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
