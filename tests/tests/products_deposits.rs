//! End-to-end deposits with the real binary (embedded; one cluster test on NATS + PostgreSQL):
//! opening a deposit from an account once per key with the money moved once, across two nodes
//! too, and refusals that change nothing.

use std::time::Duration;

use serde_json::{Value, json};
use tests::fixtures::{Cluster, TempDir, account_balance, minor, rub};
use tests::{ArbatProcess, NodeSpec, account, eventually};

const WAIT: Duration = Duration::from_secs(15);

async fn deposits(client: &tests::Client, token: &str) -> Vec<Value> {
    let (status, products) = client.get("/v1/products", Some(token)).await.unwrap();
    assert_eq!(status, 200);
    products["deposits"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_deposit_opens_from_an_account_once_per_key_and_moves_the_money_once() {
    let dir = TempDir::new();
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
    let dir = TempDir::new();
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
    let cluster = Cluster::start(2).await;
    let nodes = &cluster.nodes;
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
