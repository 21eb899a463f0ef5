//! End-to-end, cluster mode: holds of the reference ABS over real NATS request/reply
//! (`abs.cmd.hold.*`, as the bank's card processing would call them) against PostgreSQL.
//! A hold makes money unavailable to payments; its capture moves at most the held amount and
//! reaches both customers' feeds (payer and counterparty); a release frees it.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{ArbatProcess, NatsServer, NodeSpec, PgDatabase, account, customer, eventually, phone};

const WAIT: Duration = Duration::from_secs(15);

async fn command(nats: &async_nats::Client, name: &str, body: Value) -> Value {
    let answer = nats
        .request(format!("abs.cmd.{name}"), body.to_string().into())
        .await
        .expect("the ABS answers");
    serde_json::from_slice(&answer.payload).expect("JSON answer")
}

fn rub(amount: &str) -> Value {
    json!({"amount": amount, "currency": "RUB"})
}

async fn balance(client: &tests::Client, token: &str, id: &str) -> String {
    let (_, products) = client.get("/v1/products", Some(token)).await.unwrap();
    products["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["balance"]["amount"].as_str().unwrap().to_owned())
        .unwrap()
}

/// The feed's `transaction_posted` events of `amount` on an account.
async fn postings(client: &tests::Client, token: &str, account: &str, amount: &str) -> usize {
    client
        .whole_feed(token)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "transaction_posted"
                && e["account_id"] == account
                && e["amount"]["amount"] == amount
        })
        .count()
}

#[tokio::test]
async fn a_hold_reserves_money_and_its_capture_reaches_both_feeds() {
    let nats_server = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let pg = PgDatabase::create().await.expect("PostgreSQL");
    let sms = tests::SmsGateway::start().await.expect("local SMS gateway");
    let spec = NodeSpec::cluster(&nats_server.url(), &pg.url, "n0", &sms.url);
    let node = ArbatProcess::start(spec)
        .await
        .expect("cluster node starts");
    eventually("the node owns its partitions", WAIT, || async {
        (!node.partitions().await.is_empty()).then_some(())
    })
    .await;
    let nats = async_nats::connect(nats_server.url()).await.expect("nats");
    let client = node.client();
    let (payer, payee) = (11, 12);
    let payer_token = client.login(payer).await.unwrap();
    let payee_token = client.login(payee).await.unwrap();
    let start = balance(&client, &payer_token, &account(payer)).await;
    assert_eq!(start, "150011.00", "demo balance");

    // Authorize 150 000.00: 11.00 stays available; the balance is unchanged.
    let authorize = json!({"id": "h1", "customer_id": customer(payer),
        "account_id": account(payer), "amount": rub("150000.00")});
    let held = command(&nats, "hold.authorize", authorize.clone()).await;
    assert_eq!(held["ok"]["available"]["amount"], "11.00", "{held}");
    let again = command(&nats, "hold.authorize", authorize).await;
    assert_eq!(again["ok"]["duplicate"], true, "{again}");
    // Another customer's account is not found; more than available is refused.
    let foreign = command(
        &nats,
        "hold.authorize",
        json!({"id": "h-x", "customer_id": customer(payee),
            "account_id": account(payer), "amount": rub("1.00")}),
    )
    .await;
    assert_eq!(foreign["err"]["code"], "account_not_found");
    let over = command(
        &nats,
        "hold.authorize",
        json!({"id": "h-y", "customer_id": customer(payer),
            "account_id": account(payer), "amount": rub("11.01")}),
    )
    .await;
    assert_eq!(over["err"]["code"], "insufficient_funds");

    // A payment beyond what is available is refused by the ledger; within it, paid.
    let pay = |key: &str, amount: &str| {
        let body = json!({"operation": "transfer.phone", "from": account(payer),
            "amount": rub(amount), "fields": {"phone": phone(payee)}});
        let (client, token, key) = (client.clone(), payer_token.clone(), key.to_owned());
        async move {
            client
                .post_idempotent("/v1/payments", &token, &key, body)
                .await
                .unwrap()
        }
    };
    let (status, problem) = pay("p1", "20.00").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("insufficient_funds"))
    );
    let (status, paid) = pay("p2", "5.00").await;
    assert_eq!(status, 201, "{paid}");

    // Capture 100 000.00 of the hold to the payee: both feeds have it.
    let capture = json!({"hold_id": "h1", "id": "cap-1", "customer_id": customer(payer),
        "from": account(payer), "to": {"kind": "phone", "phone": phone(payee)},
        "amount": rub("100000.00"), "description": "Card purchase"});
    let captured = command(&nats, "hold.capture", capture.clone()).await;
    assert_eq!(captured["ok"]["duplicate"], false, "{captured}");
    let replay = command(&nats, "hold.capture", capture).await;
    assert_eq!(replay["ok"]["duplicate"], true, "{replay}");
    eventually("the payer's feed has the capture", WAIT, || async {
        (postings(&client, &payer_token, &account(payer), "-100000.00").await == 1).then_some(())
    })
    .await;
    eventually("the payee's feed has the credit", WAIT, || async {
        (postings(&client, &payee_token, &account(payee), "100000.00").await == 1).then_some(())
    })
    .await;
    eventually("the payer's balance follows", WAIT, || async {
        (balance(&client, &payer_token, &account(payer)).await == "50006.00").then_some(())
    })
    .await;
    // The hold ended with the capture: its rest is available again.
    let (status, paid) = pay("p3", "1000.00").await;
    assert_eq!(status, 201, "{paid}");
    let released = command(&nats, "hold.release", json!({"hold_id": "h1"})).await;
    assert_eq!(released["err"]["code"], "hold_captured");

    // A second hold, released: twice is fine, a capture after is refused, nothing moved.
    let h2 = command(
        &nats,
        "hold.authorize",
        json!({"id": "h2", "customer_id": customer(payer),
            "account_id": account(payer), "amount": rub("49006.00")}),
    )
    .await;
    assert_eq!(h2["ok"]["available"]["amount"], "0.00", "{h2}");
    let (status, problem) = pay("p4", "1.00").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("insufficient_funds"))
    );
    let released = command(&nats, "hold.release", json!({"hold_id": "h2"})).await;
    assert_eq!(released["ok"]["released"], true, "{released}");
    let released = command(&nats, "hold.release", json!({"hold_id": "h2"})).await;
    assert_eq!(released["ok"]["released"], false, "{released}");
    let late = command(
        &nats,
        "hold.capture",
        json!({"hold_id": "h2", "id": "cap-2", "customer_id": customer(payer),
            "from": account(payer), "to": {"kind": "phone", "phone": phone(payee)},
            "amount": rub("1.00"), "description": "Card purchase"}),
    )
    .await;
    assert_eq!(late["err"]["code"], "hold_released");
    let unknown = command(&nats, "hold.release", json!({"hold_id": "nope"})).await;
    assert_eq!(unknown["err"]["code"], "hold_not_found");
    let (status, paid) = pay("p5", "1.00").await;
    assert_eq!(status, 201, "{paid}");
}
