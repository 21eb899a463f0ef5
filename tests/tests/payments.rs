//! End-to-end payments with the real binary (embedded: SQLite, in-process bus, the
//! reference ABS in-process): transfers move both customers' balances and feeds live,
//! idempotency, refusals that change nothing, ownership, concurrent double spend, signed
//! definitions and conversions.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{ArbatProcess, Frame, NodeSpec, Socket, account};

const WAIT: Duration = Duration::from_secs(10);

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

async fn node() -> (ArbatProcess, tempdir::TempDir) {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    (node, dir)
}

async fn balance(client: &tests::Client, token: &str, kind: &str, id: &str) -> String {
    let (status, products) = client.get("/v1/products", Some(token)).await.unwrap();
    assert_eq!(status, 200);
    products[kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["balance"]["amount"].as_str().unwrap().to_owned())
        .unwrap()
}

fn rub(amount: &str) -> Value {
    json!({"amount": amount, "currency": "RUB"})
}

/// Waits for a live event of `kind` matching `pred`, skipping others.
async fn live(socket: &mut Socket, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match socket.next(left).await.unwrap() {
            Frame::Event { event, .. } if event["kind"] == kind && pred(&event) => return event,
            Frame::Closed { code } => panic!("socket closed {code:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn transfer_by_phone_moves_both_balances_and_feeds_live() {
    let (node, _dir) = node().await;
    let client = node.client();
    let alice = client.login(1).await.unwrap();
    let bob = client.login(2).await.unwrap();
    let mut alice_ws = Socket::connect(&node.ws_url(), &alice).await.unwrap();
    alice_ws.subscribe(None).await.unwrap();
    let mut bob_ws = Socket::connect(&node.ws_url(), &bob).await.unwrap();
    bob_ws.subscribe(None).await.unwrap();
    let alice_before = balance(&client, &alice, "accounts", &account(1)).await;
    assert_eq!(alice_before, "150001.00");

    let body = json!({"operation": "transfer.phone", "from": account(1), "amount": rub("1000.00"),
        "fields": {"phone": "+79990000002", "message": "lunch"}});
    let (status, paid) = client
        .post_idempotent("/v1/payments", &alice, "k1", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["status"], "completed");
    assert_eq!(paid["amount"]["amount"], "1000.00");
    assert_eq!(paid["fee"]["amount"], "0.00");

    let event = live(&mut alice_ws, "payment_status", |_| true).await;
    assert_eq!(event["status"], "completed");
    assert_eq!(event["payment_id"], paid["id"]);
    let incoming = live(&mut bob_ws, "transaction_posted", |e| {
        e["amount"]["amount"] == "1000.00"
    })
    .await;
    assert_eq!(incoming["account_id"], account(2));
    live(&mut bob_ws, "balance_changed", |e| {
        e["balance"]["amount"] == "151002.00"
    })
    .await;

    assert_eq!(
        balance(&client, &alice, "accounts", &account(1)).await,
        "149001.00"
    );
    tests::eventually("bob's balance", WAIT, || async {
        (balance(&client, &bob, "accounts", &account(2)).await == "151002.00").then_some(())
    })
    .await;

    // The same key and body: the first answer, no second movement.
    let (status, again) = client
        .post_idempotent("/v1/payments", &alice, "k1", body)
        .await
        .unwrap();
    assert_eq!(status, 201);
    assert_eq!(again, paid);
    // The same key, another body: 409.
    let other = json!({"operation": "transfer.phone", "from": account(1), "amount": rub("2.00"),
        "fields": {"phone": "+79990000002"}});
    let (status, problem) = client
        .post_idempotent("/v1/payments", &alice, "k1", other)
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(problem["code"], "idempotency_conflict");
    assert_eq!(
        balance(&client, &alice, "accounts", &account(1)).await,
        "149001.00"
    );

    let id = paid["id"].as_str().unwrap();
    let (status, read) = client
        .get(&format!("/v1/payments/{id}"), Some(&alice))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(read["status"], "completed");
    // Another customer cannot read it.
    let (status, _) = client
        .get(&format!("/v1/payments/{id}"), Some(&bob))
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn own_transfer_fee_and_refusals_change_nothing() {
    let (node, _dir) = node().await;
    let client = node.client();
    let token = client.login(3).await.unwrap();
    let deposit = "d000003";

    let (status, paid) = client
        .post_idempotent(
            "/v1/payments",
            &token,
            "own-1",
            json!({"operation": "transfer.own", "from": account(3), "amount": rub("500.00"),
                "fields": {"to": deposit}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(
        balance(&client, &token, "accounts", &account(3)).await,
        "149503.00"
    );
    tests::eventually("deposit credited", WAIT, || async {
        (balance(&client, &token, "deposits", deposit).await == "500500.00").then_some(())
    })
    .await;

    // By account details, with a 1 % fee (at least 30.00) to the bank's income.
    let (status, paid) = client
        .post_idempotent(
            "/v1/payments",
            &token,
            "acc-1",
            json!({"operation": "transfer.account", "from": account(3), "amount": rub("100.00"),
                "fields": {"account_number": "40817810000000000004", "name": "Gleb"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["fee"]["amount"], "30.00");
    assert_eq!(
        balance(&client, &token, "accounts", &account(3)).await,
        "149373.00"
    );

    let before = balance(&client, &token, "accounts", &account(3)).await;
    let cases = [
        // (body, status, code)
        (
            json!({"operation": "transfer.own", "from": account(3), "amount": rub("200000.00"),
                "fields": {"to": deposit}}),
            422,
            "insufficient_funds",
        ),
        (
            json!({"operation": "transfer.phone", "from": account(3), "amount": rub("150000.01"),
                "fields": {"phone": "+79990000002"}}),
            422,
            "limit_exceeded",
        ),
        (
            json!({"operation": "transfer.phone", "from": account(4), "amount": rub("1.00"),
                "fields": {"phone": "+79990000002"}}),
            404,
            "account_not_found",
        ),
        (
            json!({"operation": "transfer.own", "from": account(3), "amount": rub("1.00"),
                "fields": {"to": "d000004"}}),
            404,
            "account_not_found",
        ),
        (
            json!({"operation": "transfer.phone", "from": account(3), "amount": rub("1.00"),
                "fields": {"phone": "12345"}}),
            422,
            "invalid_field",
        ),
        (
            json!({"operation": "transfer.phone", "from": account(3), "amount": rub("1.00"),
                "fields": {"phone": "+79990000002", "extra": "x"}}),
            422,
            "invalid_field",
        ),
        (
            json!({"operation": "no.such", "from": account(3), "amount": rub("1.00")}),
            422,
            "unknown_operation",
        ),
        (
            json!({"operation": "transfer.phone", "from": account(3), "amount": rub("1.00"),
                "fields": {"phone": "+79991234567"}}),
            404,
            "payee_not_found",
        ),
    ];
    for (n, (body, status, code)) in cases.into_iter().enumerate() {
        let (got, problem) = client
            .post_idempotent("/v1/payments", &token, &format!("bad-{n}"), body)
            .await
            .unwrap();
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "case {n}: {problem}"
        );
    }
    // No Idempotency-Key: refused.
    let (status, problem) = client
        .post(
            "/v1/payments",
            Some(&token),
            json!({"operation": "transfer.own", "from": account(3), "amount": rub("1.00"),
                "fields": {"to": deposit}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    assert_eq!(
        balance(&client, &token, "accounts", &account(3)).await,
        before
    );
    // A blocked card pays nothing.
    let (status, _) = client
        .post(
            "/cache-control/v1/events",
            Some(tests::BACKOFFICE_KEY),
            json!({"events": [{"id": "blk-1", "customer_id": "c000003", "at": "2026-01-01T00:00:00Z",
                "kind": "product_changed", "product_id": "k000003", "status": "blocked"}]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);
    let (status, problem) = client
        .post_idempotent(
            "/v1/payments",
            &token,
            "card-1",
            json!({"operation": "transfer.phone", "from": "k000003", "amount": rub("1.00"),
                "fields": {"phone": "+79990000002"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("card_blocked"))
    );
    assert_eq!(
        balance(&client, &token, "accounts", &account(3)).await,
        before
    );
}

#[tokio::test]
async fn concurrent_double_spend_from_two_clients_exactly_one_succeeds() {
    let (node, _dir) = node().await;
    let client = node.client();
    let token = client.login(5).await.unwrap();
    // Two sessions (two devices), each spending 100 000.00 of the 150 005.00.
    let other = client.login(5).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, token) in [token.clone(), other.clone(), token.clone(), other]
        .into_iter()
        .enumerate()
    {
        let client = node.client();
        tasks.spawn(async move {
            client
                .post_idempotent(
                    "/v1/payments",
                    &token,
                    &format!("spend-{n}"),
                    json!({"operation": "transfer.own", "from": "a000005",
                        "amount": {"amount": "100000.00", "currency": "RUB"},
                        "fields": {"to": "d000005"}}),
                )
                .await
                .unwrap()
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            201 => ok += 1,
            422 => assert_eq!(body["code"], "insufficient_funds"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        balance(&client, &token, "accounts", "a000005").await,
        "50005.00"
    );
}

#[tokio::test]
async fn operations_catalogue_rates_and_conversion() {
    let (node, _dir) = node().await;
    let client = node.client();
    let token = client.login(6).await.unwrap();
    let response = reqwest::Client::new()
        .get(format!("{}/v1/operations", node.url()))
        .bearer_auth(&token)
        .header("Accept-Language", "ru")
        .send()
        .await
        .unwrap();
    let catalogue: Value = response.json().await.unwrap();
    let ids: Vec<&str> = catalogue["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in [
        "transfer.own",
        "transfer.phone",
        "transfer.account",
        "mobile.topup",
        "utility.electricity",
        "tax.payment",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let phone = catalogue["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "transfer.phone")
        .unwrap();
    assert_eq!(phone["title"], "Перевод по номеру телефона");
    assert_eq!(phone["fields"][0]["name"], "phone");

    let (status, rates) = client.get("/v1/rates", Some(&token)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(rates["items"][0]["base"], "USD");

    // 100.00 USD → RUB at the bank's buy rate 90.00.
    let (status, converted) = client
        .post_idempotent(
            "/v1/conversions",
            &token,
            "fx-1",
            json!({"from": "u000006", "to": "a000006", "amount": {"amount": "100.00", "currency": "USD"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{converted}");
    assert_eq!(converted["credited"]["amount"], "9000.00");
    assert_eq!(converted["rate"], "90.000000");
    assert_eq!(
        balance(&client, &token, "accounts", "u000006").await,
        "900.00"
    );
    tests::eventually("rubles credited", WAIT, || async {
        (balance(&client, &token, "accounts", "a000006").await == "159006.00").then_some(())
    })
    .await;

    // A utility bill and a mobile top-up go to the billers' settlement accounts.
    let (status, paid) = client
        .post_idempotent(
            "/v1/payments",
            &token,
            "bill-1",
            json!({"operation": "utility.electricity", "from": "a000006", "amount": rub("1500.00"),
                "fields": {"payer_account": "1234567890", "period": "202601"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["fee"]["amount"], "10.00");
    let (status, paid) = client
        .post_idempotent(
            "/v1/payments",
            &token,
            "mob-1",
            json!({"operation": "mobile.topup", "from": "a000006", "amount": rub("300.00"),
                "fields": {"phone": "+79990000006", "operator": "mts"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(
        balance(&client, &token, "accounts", "a000006").await,
        "157196.00"
    );
}

#[tokio::test]
async fn a_tampered_definition_is_refused_and_hot_reload_picks_changes() {
    let dir = tempdir::TempDir::new();
    let ops = dir.0.join("operations");
    std::fs::create_dir_all(&ops).unwrap();
    for entry in std::fs::read_dir(tests::operations_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, ops.join(path.file_name().unwrap())).unwrap();
    }
    // Raise a limit without re-signing.
    let phone = ops.join("transfer.phone.toml");
    let text = std::fs::read_to_string(&phone).unwrap();
    std::fs::write(&phone, text.replace("150000.00", "950000.00")).unwrap();
    let mut spec = NodeSpec::embedded(&dir.0);
    let at = spec
        .args
        .iter()
        .position(|a| a == "--operations-dir")
        .unwrap();
    spec.args[at + 1] = ops.display().to_string();
    let node = ArbatProcess::start(spec).await.unwrap();
    let client = node.client();
    let token = client.login(7).await.unwrap();
    let ids = |catalogue: &Value| -> Vec<String> {
        catalogue["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, catalogue) = client.get("/v1/operations", Some(&token)).await.unwrap();
    assert!(!ids(&catalogue).contains(&"transfer.phone".to_owned()));
    assert!(ids(&catalogue).contains(&"transfer.own".to_owned()));
    let (status, problem) = client
        .post_idempotent(
            "/v1/payments",
            &token,
            "t-1",
            json!({"operation": "transfer.phone", "from": "a000007", "amount": rub("1.00"),
                "fields": {"phone": "+79990000002"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("unknown_operation"))
    );
    // Restore the signed text: the folder poll reloads it.
    std::fs::write(&phone, text).unwrap();
    tests::eventually("the definition comes back", WAIT, || async {
        let (_, catalogue) = client.get("/v1/operations", Some(&token)).await.ok()?;
        ids(&catalogue)
            .contains(&"transfer.phone".to_owned())
            .then_some(())
    })
    .await;
    // Removing a definition's signature removes it.
    std::fs::remove_file(ops.join("tax.payment.toml.sig")).unwrap();
    tests::eventually("the unsigned definition goes", WAIT, || async {
        let (_, catalogue) = client.get("/v1/operations", Some(&token)).await.ok()?;
        (!ids(&catalogue).contains(&"tax.payment".to_owned())).then_some(())
    })
    .await;
}

async fn node_with_sms() -> (ArbatProcess, tests::SmsGateway, tempdir::TempDir) {
    let sms = tests::SmsGateway::start().await.unwrap();
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env.push(("ARBAT_SMS_URL".into(), sms.url.clone()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    (node, sms, dir)
}

async fn confirm(client: &tests::Client, token: &str, id: &str, body: Value) -> (u16, Value) {
    client
        .post(
            &format!("/v1/auth/challenges/{id}/confirm"),
            Some(token),
            body,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_large_payment_waits_for_a_step_up_code_bound_to_it() {
    let (node, sms, _dir) = node_with_sms().await;
    let client = node.client();
    let alice = client.login(10).await.unwrap();
    let bob = client.login(11).await.unwrap();
    let start = balance(&client, &alice, "accounts", &account(10)).await;
    let bob_start = balance(&client, &bob, "accounts", &account(11)).await;
    let pay = |amount: &str| {
        json!({"operation": "transfer.phone", "from": account(10), "amount": rub(amount),
            "fields": {"phone": tests::phone(11)}})
    };

    // Above the threshold: 201 confirmation_required, nothing moves.
    let (status, held) = client
        .post_idempotent("/v1/payments", &alice, "s1", pay("60000.00"))
        .await
        .unwrap();
    assert_eq!(status, 201, "{held}");
    assert_eq!(held["status"], "confirmation_required");
    let challenge = held["challenge_id"].as_str().unwrap().to_owned();
    assert_eq!(
        balance(&client, &alice, "accounts", &account(10)).await,
        start
    );
    // A retry with the same key answers the same challenge (no second code).
    let (status, again) = client
        .post_idempotent("/v1/payments", &alice, "s1", pay("60000.00"))
        .await
        .unwrap();
    assert_eq!((status, &again), (201, &held));
    let code = sms.code_for(&tests::phone(10), 0).await.unwrap();
    assert_eq!(sms.count_to(&tests::phone(10)), 1);
    // Another customer cannot confirm it.
    let (status, _) = confirm(&client, &bob, &challenge, json!({"code": code})).await;
    assert_eq!(status, 404);

    // The code executes exactly that payment.
    let (status, paid) = confirm(&client, &alice, &challenge, json!({"code": code})).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "completed");
    assert_eq!(paid["id"], held["id"]);
    assert_eq!(paid["amount"]["amount"], "60000.00");
    let after = format!(
        "{:.2}",
        start.parse::<f64>().unwrap() - 60000.0 // test arithmetic only
    );
    assert_eq!(
        balance(&client, &alice, "accounts", &account(10)).await,
        after
    );
    tests::eventually("bob credited", WAIT, || async {
        (balance(&client, &bob, "accounts", &account(11)).await != bob_start).then_some(())
    })
    .await;
    // Replaying the code: refused, nothing moves again.
    let (status, problem) = confirm(&client, &alice, &challenge, json!({"code": code})).await;
    assert_eq!((status, problem["code"].as_str()), (410, Some("code_used")));
    let (status, replay) = client
        .post_idempotent("/v1/payments", &alice, "s1", pay("60000.00"))
        .await
        .unwrap();
    assert_eq!(
        (status, replay["status"].as_str()),
        (201, Some("completed"))
    );
    assert_eq!(
        balance(&client, &alice, "accounts", &account(10)).await,
        after
    );

    // A code presented for another amount: refused (and spent), nothing moves.
    let (status, held) = client
        .post_idempotent("/v1/payments", &alice, "s2", pay("70000.00"))
        .await
        .unwrap();
    assert_eq!(
        (status, held["status"].as_str()),
        (201, Some("confirmation_required"))
    );
    let challenge = held["challenge_id"].as_str().unwrap().to_owned();
    let code = sms.code_for(&tests::phone(10), 1).await.unwrap();
    let other = json!({"code": code, "operation": {"operation": "transfer.phone",
        "amount": rub("70000.01"), "payee": format!("phone:{}", tests::phone(11))}});
    let (status, problem) = confirm(&client, &alice, &challenge, other).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("operation_mismatch"))
    );
    let (status, problem) = confirm(&client, &alice, &challenge, json!({"code": code})).await;
    assert_eq!((status, problem["code"].as_str()), (410, Some("code_used")));
    // A code of one payment does not confirm another.
    let (_, third) = client
        .post_idempotent("/v1/payments", &alice, "s3", pay("50000.01"))
        .await
        .unwrap();
    assert_eq!(third["status"], "confirmation_required");
    let (status, problem) = confirm(
        &client,
        &alice,
        third["challenge_id"].as_str().unwrap(),
        json!({"code": code}),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_code"))
    );
    let id = held["id"].as_str().unwrap();
    let (status, read) = client
        .get(&format!("/v1/payments/{id}"), Some(&alice))
        .await
        .unwrap();
    assert_eq!(
        (status, read["status"].as_str()),
        (200, Some("confirmation_required"))
    );
    assert_eq!(
        balance(&client, &alice, "accounts", &account(10)).await,
        after
    );
    // At or below the threshold a known payee is paid at once.
    let (status, small) = client
        .post_idempotent("/v1/payments", &alice, "s4", pay("50000.00"))
        .await
        .unwrap();
    assert_eq!((status, small["status"].as_str()), (201, Some("completed")));
}

#[tokio::test]
async fn templates_are_per_customer_and_pay_through_the_payment_path() {
    let (node, _dir) = node().await;
    let client = node.client();
    let alice = client.login(12).await.unwrap();
    let bob = client.login(13).await.unwrap();
    let start = balance(&client, &alice, "accounts", &account(12)).await;
    let body = json!({"name": "Bob", "operation": "transfer.phone", "from": account(12),
        "amount": rub("100.00"), "fields": {"phone": tests::phone(13)}});

    // Creating needs a key; bad input changes nothing.
    let (status, problem) = client
        .post("/v1/templates", Some(&alice), body.clone())
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    let mut bad = body.clone();
    bad["fields"]["phone"] = json!("12345");
    let (status, problem) = client
        .post_idempotent("/v1/templates", &alice, "bad", bad)
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let mut foreign = body.clone();
    foreign["from"] = json!(account(13));
    let (status, problem) = client
        .post_idempotent("/v1/templates", &alice, "foreign", foreign)
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("account_not_found"))
    );

    let (status, created) = client
        .post_idempotent("/v1/templates", &alice, "t1", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, again) = client
        .post_idempotent("/v1/templates", &alice, "t1", body.clone())
        .await
        .unwrap();
    assert_eq!((status, &again), (201, &created));
    let mut other = body.clone();
    other["name"] = json!("Bobby");
    let (status, problem) = client
        .post_idempotent("/v1/templates", &alice, "t1", other)
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    let (status, list) = client.get("/v1/templates", Some(&alice)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["name"], "Bob");
    // Another customer sees none and cannot pay or delete it.
    let (_, list) = client.get("/v1/templates", Some(&bob)).await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let path = format!("/v1/templates/{id}/pay");
    let (status, _) = client
        .post_idempotent(&path, &bob, "p1", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = client
        .delete(&format!("/v1/templates/{id}"), Some(&bob))
        .await
        .unwrap();
    assert_eq!(status, 404);

    // Paying it: the payment path, idempotent by the key.
    let (status, paid) = client
        .post_idempotent(&path, &alice, "p1", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["status"], "completed");
    assert_eq!(paid["amount"]["amount"], "100.00");
    let (status, again) = client
        .post_idempotent(&path, &alice, "p1", json!({}))
        .await
        .unwrap();
    assert_eq!((status, &again), (201, &paid));
    let (status, problem) = client
        .post_idempotent(&path, &alice, "p1", json!({"amount": rub("5.00")}))
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    let after = balance(&client, &alice, "accounts", &account(12)).await;
    assert_eq!(
        after.parse::<f64>().unwrap() + 100.0,
        start.parse::<f64>().unwrap()
    );

    // Without an amount, the payment names one.
    let mut open = body.clone();
    open.as_object_mut().unwrap().remove("amount");
    let (status, open) = client
        .post_idempotent("/v1/templates", &alice, "t2", open)
        .await
        .unwrap();
    assert_eq!(status, 201, "{open}");
    let open_path = format!("/v1/templates/{}/pay", open["id"].as_str().unwrap());
    let (status, problem) = client
        .post_idempotent(&open_path, &alice, "p2", json!({}))
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let (status, paid) = client
        .post_idempotent(&open_path, &alice, "p3", json!({"amount": rub("7.00")}))
        .await
        .unwrap();
    assert_eq!(
        (status, paid["amount"]["amount"].as_str()),
        (201, Some("7.00"))
    );

    // Deleted: gone for every channel.
    let (status, _) = client
        .delete(&format!("/v1/templates/{id}"), Some(&alice))
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, _) = client
        .post_idempotent(&path, &alice, "p4", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (_, list) = client.get("/v1/templates", Some(&alice)).await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_balance_triggered_autopayment_tops_up_once_per_day_and_failures_are_reported() {
    let (node, _dir) = node().await;
    let client = node.client();
    let token = client.login(14).await.unwrap();
    let (from, to) = ("d000014".to_owned(), account(14));
    let top_up = |amount: &str, from: &str, to: &str, below: &str| {
        json!({"name": "keep my card funded", "operation": "transfer.own", "from": from,
            "amount": rub(amount), "fields": {"to": to},
            "schedule": {"kind": "balance", "account": to, "below": rub(below)}})
    };
    let body = top_up("1000.00", &from, &to, "100000.00");

    // Bad input changes nothing.
    let (status, problem) = client
        .post("/v1/autopayments", Some(&token), body.clone())
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    let (status, problem) = client
        .post_idempotent(
            "/v1/autopayments",
            &token,
            "bad",
            top_up("1000.00", &from, &account(15), "100000.00"),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("account_not_found"))
    );
    let mut monthly = body.clone();
    monthly["schedule"] = json!({"kind": "monthly", "day": 32});
    let (status, problem) = client
        .post_idempotent("/v1/autopayments", &token, "monthly", monthly)
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str(), problem["field"].as_str()),
        (422, Some("invalid_field"), Some("schedule.day"))
    );
    let (_, list) = client.get("/v1/autopayments", Some(&token)).await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);

    let (status, created) = client
        .post_idempotent("/v1/autopayments", &token, "ap1", body.clone())
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let (status, again) = client
        .post_idempotent("/v1/autopayments", &token, "ap1", body.clone())
        .await
        .unwrap();
    assert_eq!((status, &again), (201, &created));
    let (_, list) = client.get("/v1/autopayments", Some(&token)).await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["schedule"]["below"]["amount"], "100000.00");

    // A debit from another system drops the balance below the threshold: topped up once.
    let start = balance(&client, &token, "accounts", &to).await;
    let start = start.parse::<f64>().unwrap(); // test arithmetic only
    client.abs_post("ext-1", &to, "-60000.00").await.unwrap();
    let expected = format!("{:.2}", start - 60000.0 + 1000.0);
    tests::eventually("topped up", WAIT, || async {
        (balance(&client, &token, "accounts", &to).await == expected).then_some(())
    })
    .await;
    // Still below: no second top-up in the same period.
    client.abs_post("ext-2", &to, "-1.00").await.unwrap();
    let expected = format!("{:.2}", start - 60000.0 + 1000.0 - 1.0);
    tests::eventually("second debit", WAIT, || async {
        (balance(&client, &token, "accounts", &to).await == expected).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(balance(&client, &token, "accounts", &to).await, expected);
    let feed = client.whole_feed(&token).await.unwrap();
    let runs: Vec<&Value> = feed
        .iter()
        .filter(|e| {
            e["kind"] == "payment_status"
                && e["payment_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("autopay:"))
        })
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "completed");

    // A run the rules refuse: reported (payment_status rejected), money unmoved, once.
    let (status, _) = client
        .post_idempotent(
            "/v1/autopayments",
            &token,
            "ap2",
            top_up("9000000.00", &from, &to, "100000.00"),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    client.abs_post("ext-3", &to, "-1.00").await.unwrap();
    tests::eventually("refusal reported", WAIT, || async {
        let feed = client.whole_feed(&token).await.unwrap();
        feed.iter()
            .find(|e| e["kind"] == "payment_status" && e["status"] == "rejected")
            .cloned()
    })
    .await;
    let expected = format!("{:.2}", start - 60000.0 + 1000.0 - 2.0);
    assert_eq!(balance(&client, &token, "accounts", &to).await, expected);

    // Deleted: listed no more; another customer cannot delete it.
    let other = client.login(15).await.unwrap();
    let id = created["id"].as_str().unwrap();
    let (status, _) = client
        .delete(&format!("/v1/autopayments/{id}"), Some(&other))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = client
        .delete(&format!("/v1/autopayments/{id}"), Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (_, list) = client.get("/v1/autopayments", Some(&token)).await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}
