//! End-to-end currency with the real binary: quotes (`POST /v1/quotes`) honoured by
//! conversions at the quoted rate on any node, with their refusals (expired, another
//! customer's, reused, altered, another amount); live rate changes of the reference ABS
//! (`PUT /admin/v1/abs/rates`, stored, published on `abs.rates`) followed by every node.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{ArbatProcess, BACKOFFICE_KEY, NatsServer, NodeSpec, PgDatabase, eventually};

const WAIT: Duration = Duration::from_secs(15);
const PARTITIONS: u32 = 16;

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

fn usd(amount: &str) -> Value {
    json!({"amount": amount, "currency": "USD"})
}

async fn quote(client: &tests::Client, token: &str, amount: &str) -> (u16, Value) {
    client
        .post(
            "/v1/quotes",
            Some(token),
            json!({"amount": usd(amount), "to_currency": "RUB"}),
        )
        .await
        .unwrap()
}

async fn convert(
    client: &tests::Client,
    token: &str,
    key: &str,
    n: u32,
    amount: &str,
    quote: &str,
) -> (u16, Value) {
    client
        .post_idempotent(
            "/v1/conversions",
            token,
            key,
            json!({"from": format!("u0000{n:02}"), "to": format!("a0000{n:02}"),
                "amount": usd(amount), "quote": quote}),
        )
        .await
        .unwrap()
}

async fn usd_balance(client: &tests::Client, token: &str, n: u32) -> String {
    let (_, products) = client.get("/v1/products", Some(token)).await.unwrap();
    products["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == format!("u0000{n:02}"))
        .map(|p| p["balance"]["amount"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn set_rates(node: &ArbatProcess, buy: &str, sell: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/admin/v1/abs/rates", node.url()))
        .bearer_auth(BACKOFFICE_KEY)
        .json(&json!({"items": [
            {"base": "USD", "quote": "RUB", "buy": buy, "sell": sell},
            {"base": "EUR", "quote": "RUB", "buy": "98", "sell": "104"},
        ]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn usd_buy_rate(client: &tests::Client, token: &str) -> Option<String> {
    let (_, rates) = client.get("/v1/rates", Some(token)).await.unwrap();
    rates["items"]
        .as_array()?
        .iter()
        .find(|r| r["base"] == "USD" && r["quote"] == "RUB")
        .and_then(|r| r["buy"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn a_quote_converts_once_at_its_rate_and_bad_quotes_change_nothing() {
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env.push(("ARBAT_QUOTE_TTL_S".into(), "2".into()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    let client = node.client();
    let n = 7;
    let token = client.login(n).await.unwrap();
    let other = client.login(8).await.unwrap();

    let (status, q) = quote(&client, &token, "10.00").await;
    assert_eq!(status, 201, "{q}");
    assert_eq!(
        (q["rate"].as_str(), q["credited"]["amount"].as_str()),
        (Some("90.000000"), Some("900.00"))
    );
    assert!(q["expires_at"].is_string());
    let id = q["id"].as_str().unwrap().to_owned();

    // The treasury moves the rate: the quote still holds its own.
    let (status, set) = set_rates(&node, "80", "85").await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        usd_buy_rate(&client, &token).await.as_deref(),
        Some("80.000000")
    );
    let before = usd_balance(&client, &token, n).await;

    // Refusals first; nothing moves.
    // One character of the signed terms changed.
    let mut altered: Vec<char> = id.chars().collect();
    altered[10] = if altered[10] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    let refusals = [
        (
            "altered",
            token.as_str(),
            "10.00",
            altered.as_str(),
            404,
            "quote_not_found",
        ),
        (
            "foreign",
            other.as_str(),
            "10.00",
            id.as_str(),
            404,
            "quote_not_found",
        ),
        (
            "garbage",
            token.as_str(),
            "10.00",
            "q1.nope",
            404,
            "quote_not_found",
        ),
        (
            "amount",
            token.as_str(),
            "11.00",
            id.as_str(),
            422,
            "quote_mismatch",
        ),
    ];
    for (name, who, amount, quote, status, code) in refusals {
        let customer = if who == other { 8 } else { n };
        let (got, problem) = convert(&client, who, name, customer, amount, quote).await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{name}: {problem}"
        );
    }
    assert_eq!(usd_balance(&client, &token, n).await, before);

    // The quote converts at 90, not the current 80; the same key replays; the quote once.
    let (status, paid) = convert(&client, &token, "fx-1", n, "10.00", &id).await;
    assert_eq!(status, 201, "{paid}");
    assert_eq!(
        (paid["rate"].as_str(), paid["credited"]["amount"].as_str()),
        (Some("90.000000"), Some("900.00"))
    );
    let (status, again) = convert(&client, &token, "fx-1", n, "10.00", &id).await;
    assert_eq!((status, &again), (201, &paid));
    let (status, problem) = convert(&client, &token, "fx-2", n, "10.00", &id).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("quote_used"))
    );
    let after = usd_balance(&client, &token, n).await;
    assert_ne!(after, before);

    // Expired (2 s validity here).
    let (_, q) = quote(&client, &token, "1.00").await;
    assert_eq!(q["rate"], "80.000000");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, problem) = convert(
        &client,
        &token,
        "fx-3",
        n,
        "1.00",
        q["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("quote_expired"))
    );
    assert_eq!(usd_balance(&client, &token, n).await, after);

    // Unquotable requests.
    let (status, problem) = client
        .post(
            "/v1/quotes",
            Some(&token),
            json!({"amount": usd("1.00"), "to_currency": "USD"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("currency_mismatch"))
    );
    let (status, _) = client
        .post(
            "/v1/quotes",
            None,
            json!({"amount": usd("1.00"), "to_currency": "RUB"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Bad rate sets are refused with the field and change nothing.
    let (status, problem) = set_rates(&node, "90", "85").await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("items[0].sell"))
    );
    assert_eq!(
        usd_buy_rate(&client, &token).await.as_deref(),
        Some("80.000000")
    );

    // The rates are the store's: a restarted node quotes the same.
    let mut node = node;
    node.restart().await.expect("node restarts");
    let client = node.client();
    let token = client.login(n).await.unwrap();
    eventually(
        "the restarted node reads the stored rates",
        WAIT,
        || async {
            (usd_buy_rate(&client, &token).await.as_deref() == Some("80.000000")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_rate_change_on_one_node_reaches_every_node_and_quotes_hold_across_nodes() {
    let nats = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let pg = PgDatabase::create().await.expect("PostgreSQL");
    let sms = tests::SmsGateway::start().await.expect("local SMS gateway");
    let mut nodes = vec![];
    for i in 0..2 {
        let spec = NodeSpec::cluster(&nats.url(), &pg.url, &format!("n{i}"), &sms.url);
        nodes.push(
            ArbatProcess::start(spec)
                .await
                .expect("cluster node starts"),
        );
    }
    eventually("partitions are spread", Duration::from_secs(30), || async {
        let mut all = vec![];
        for node in &nodes {
            all.extend(node.partitions().await);
        }
        all.sort();
        (all == (0..PARTITIONS).collect::<Vec<_>>()).then_some(())
    })
    .await;
    let (first, second) = (nodes[0].client(), nodes[1].client());
    let n = 9;
    let token = first.login(n).await.unwrap();

    // A quote from node 0 ...
    let (status, q) = quote(&first, &token, "10.00").await;
    assert_eq!(status, 201, "{q}");
    // ... the rate changes on node 0, and node 1 shows it within a second ...
    let (status, _) = set_rates(&nodes[0], "70.5", "75").await;
    assert_eq!(status, 200);
    eventually(
        "node 1 follows the new rate",
        Duration::from_secs(1),
        || async {
            (usd_buy_rate(&second, &token).await.as_deref() == Some("70.500000")).then_some(())
        },
    )
    .await;
    // ... and node 1 converts at the quoted rate.
    let (status, paid) = convert(
        &second,
        &token,
        "fx-1",
        n,
        "10.00",
        q["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["rate"], "90.000000");
    // Without a quote: the new rate.
    let (status, paid) = second
        .post_idempotent(
            "/v1/conversions",
            &token,
            "fx-2",
            json!({"from": format!("u0000{n:02}"), "to": format!("a0000{n:02}"), "amount": usd("1.00")}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{paid}");
    assert_eq!(paid["rate"], "70.500000");

    // A node that starts after the change reads the stored set and quotes the same.
    let spec = NodeSpec::cluster(&nats.url(), &pg.url, "n2", &sms.url);
    let late = ArbatProcess::start(spec).await.expect("third node starts");
    eventually("the late node has the current rates", WAIT, || async {
        (usd_buy_rate(&late.client(), &token).await.as_deref() == Some("70.500000")).then_some(())
    })
    .await;
}
