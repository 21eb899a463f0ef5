//! End-to-end, cluster mode: several real `arbat` processes sharing a real nats-server
//! (JetStream) and a real PostgreSQL database.

use std::time::Duration;

use async_nats::jetstream::{self, context::Publish};
use bytes::Bytes;
use serde_json::{Value, json};
use tests::{
    ArbatProcess, Frame, NatsServer, NodeSpec, PgDatabase, Socket, account, balance_change,
    customer, eventually,
};

const WAIT: Duration = Duration::from_secs(15);
const PARTITIONS: u32 = 16;

struct Cluster {
    sms: tests::SmsGateway,
    nats: NatsServer,
    db: PgDatabase,
    nodes: Vec<ArbatProcess>,
}

impl Cluster {
    async fn start(nodes: usize) -> Cluster {
        let nats = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
        let db = PgDatabase::create().await.expect("PostgreSQL");
        let sms = tests::SmsGateway::start().await.expect("local SMS gateway");
        let mut cluster = Cluster {
            sms,
            nats,
            db,
            nodes: vec![],
        };
        for i in 0..nodes {
            let spec = NodeSpec::cluster(
                &cluster.nats.url(),
                &cluster.db.url,
                &format!("n{i}"),
                &cluster.sms.url,
            );
            cluster.nodes.push(
                ArbatProcess::start(spec)
                    .await
                    .expect("cluster node starts"),
            );
        }
        cluster.settled().await;
        cluster
    }

    /// Waits until the live nodes own disjoint partition sets that cover every partition.
    async fn settled(&self) {
        eventually(
            "partitions are spread over the nodes",
            Duration::from_secs(30),
            || async {
                let mut all = vec![];
                for node in &self.nodes {
                    let owned = node.partitions().await;
                    if owned.is_empty() {
                        return None;
                    }
                    all.extend(owned);
                }
                all.sort();
                (all == (0..PARTITIONS).collect::<Vec<_>>()).then_some(())
            },
        )
        .await;
    }

    async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("nats client");
        jetstream::new(client)
    }

    /// A demo customer whose partition `owner` owns and `other` does not.
    async fn customer_owned_by(&self, owner: usize) -> u32 {
        let owned = self.nodes[owner].partitions().await;
        (1..=100)
            .find(|n| owned.contains(&kernel::partition_of(&customer(*n), PARTITIONS)))
            .expect("some demo customer in the owner's partitions")
    }
}

/// Publishes a change as a bank's ABS does, and waits for the stream's ack.
async fn publish(js: &jetstream::Context, change: &Value) {
    let subject = format!("abs.evt.{}", change["customer_id"].as_str().unwrap());
    let id = change["id"].as_str().unwrap_or("no-id").to_owned();
    let publish = Publish::build()
        .message_id(id)
        .payload(Bytes::from(change.to_string()));
    js.send_publish(subject, publish)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn socket_on_the_node_that_does_not_own_the_customer() {
    let cluster = Cluster::start(2).await;
    let owner = &cluster.nodes[0];
    let other = &cluster.nodes[1];
    let n = cluster.customer_owned_by(0).await;
    assert!(
        !other
            .partitions()
            .await
            .contains(&kernel::partition_of(&customer(n), PARTITIONS))
    );

    let token = other.client().login(n).await.unwrap();
    let mut socket = Socket::connect(&other.ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert_eq!(socket.next(WAIT).await.unwrap(), Frame::Live { head: 0 });

    // A change published to JetStream by a back system reaches the socket on the other node.
    let js = cluster.jetstream().await;
    publish(&js, &balance_change("c-1", n, "777.00")).await;
    let events = socket.events(1, WAIT).await.unwrap();
    assert_eq!(events[0].0, 1);
    assert_eq!(events[0].1["balance"]["amount"], "777.00");

    // A posting through the ABS admin endpoint of the non-owner lands too.
    other
        .client()
        .abs_post("p-1", &account(n), "-7.00")
        .await
        .unwrap();
    let events = socket.events(2, WAIT).await.unwrap();
    assert_eq!(
        events.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![2, 3]
    );
    // The customer is told through the notifier's JetStream queue and the SMS gateway, and
    // the outcome comes back as a live `notification` event.
    let outcome = socket.events(1, WAIT).await.unwrap();
    assert_eq!(outcome[0].1["kind"], "notification");
    assert_eq!(outcome[0].1["status"], "accepted");
    let phone = tests::phone(n);
    assert!(
        cluster
            .sms
            .messages()
            .iter()
            .any(|m| m["to"] == phone.as_str())
    );

    // Reads on the non-owner are answered by the owner's actor (over the bus).
    let (status, products) = other
        .client()
        .get("/v1/products", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let expected = format!("{}.00", 150_000 + n - 7);
    assert_eq!(
        products["accounts"][0]["balance"]["amount"],
        expected.as_str()
    );
    let (status, _) = owner
        .client()
        .get("/v1/products", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200, "a token from one node is good on every node");

    // Another customer's token on either node cannot see this one.
    let stranger = owner
        .client()
        .login(if n == 1 { 2 } else { 1 })
        .await
        .unwrap();
    let (status, _) = other
        .client()
        .get(
            &format!("/v1/accounts/{}/transactions", account(n)),
            Some(&stranger),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn duplicates_are_applied_once_and_malformed_changes_are_dead_lettered() {
    let cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    let js = cluster.jetstream().await;
    let token = node.client().login(11).await.unwrap();

    publish(&js, &balance_change("d-1", 11, "1.00")).await;
    // The same change id under another message id passes the stream's dedupe window, so
    // the platform must drop it itself.
    let again = balance_change("d-1", 11, "1.00");
    let publish_again = Publish::build()
        .message_id("other-msg-id")
        .payload(Bytes::from(again.to_string()));
    js.send_publish(format!("abs.evt.{}", customer(11)), publish_again)
        .await
        .unwrap()
        .await
        .unwrap();
    // Poison: not JSON, an unknown kind, another customer's account. None may stall the stream.
    js.send_publish(
        format!("abs.evt.{}", customer(11)),
        Publish::build().payload(Bytes::from_static(b"{oops")),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut unknown = balance_change("d-2", 11, "2.00");
    unknown["kind"] = json!("teleport");
    publish(&js, &unknown).await;
    let mut foreign = balance_change("d-3", 11, "3.00");
    foreign["account_id"] = json!(account(12));
    publish(&js, &foreign).await;
    publish(&js, &balance_change("d-4", 11, "4.00")).await;

    let client = node.client();
    let feed = eventually("the good changes are in the feed", WAIT, || {
        let client = client.clone();
        let token = token.clone();
        async move {
            let feed = client.whole_feed(&token).await.ok()?;
            (feed.len() >= 2).then_some(feed)
        }
    })
    .await;
    let ids: Vec<&str> = feed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["d-1", "d-4"]);

    // The three refused messages are on the dead-letter stream with their reasons.
    let stored = eventually("three dead letters", WAIT, || {
        let js = js.clone();
        async move {
            let mut dlq = js.get_stream("ABS_DLQ").await.ok()?;
            let info = dlq.info().await.ok()?;
            (info.state.messages >= 3).then_some(info.state.messages)
        }
    })
    .await;
    let dlq = js.get_stream("ABS_DLQ").await.unwrap();
    assert_eq!(stored, 3);
    let mut reasons = vec![];
    for seq in 1..=3 {
        let message = dlq.get_raw_message(seq).await.unwrap();
        let headers = message.headers;
        reasons.push(
            headers
                .get("Arbat-Reason")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    reasons.sort();
    assert_eq!(
        reasons,
        vec!["malformed_change", "unknown_change_kind", "unknown_product"]
    );
}

#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let mut cluster = Cluster::start(2).await;
    let n = cluster.customer_owned_by(0).await;
    let js = cluster.jetstream().await;
    let survivor_client = cluster.nodes[1].client();
    let token = survivor_client.login(n).await.unwrap();
    let mut socket = Socket::connect(&cluster.nodes[1].ws_url(), &token)
        .await
        .unwrap();
    socket.subscribe(Some(0)).await.unwrap();
    assert_eq!(socket.next(WAIT).await.unwrap(), Frame::Live { head: 0 });

    // Every publish below is acknowledged by JetStream before the next one.
    let total = 60;
    let mut seen = vec![];
    for i in 1..=total {
        publish(
            &js,
            &balance_change(&format!("k-{i}"), n, &format!("{i}.00")),
        )
        .await;
        if i == 20 {
            // Let some arrive, then kill the owner without warning.
            seen.extend(
                socket
                    .events(5, WAIT)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(s, _)| s),
            );
            cluster.nodes[0].kill9();
        }
    }
    // The survivor takes the partition over after the lease expires and applies the rest.
    // The socket may see the owner's loss as a gap; on any hiccup it resumes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < total && tokio::time::Instant::now() < deadline {
        match socket.next(Duration::from_secs(20)).await {
            Ok(Frame::Event { seq, .. }) => seen.push(seq),
            Ok(Frame::Live { .. }) => {}
            Ok(Frame::Closed { .. }) | Err(_) => {
                let last = seen.last().copied();
                socket = Socket::connect(&cluster.nodes[1].ws_url(), &token)
                    .await
                    .unwrap();
                socket.subscribe(last).await.unwrap();
            }
        }
    }
    assert_eq!(
        seen,
        (1..=total as u64).collect::<Vec<_>>(),
        "no gap and no duplicate"
    );
    let feed = survivor_client.whole_feed(&token).await.unwrap();
    let ids: Vec<String> = feed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        (1..=total).map(|i| format!("k-{i}")).collect::<Vec<_>>(),
        "every change exactly once, in order"
    );
    let (_, products) = survivor_client
        .get("/v1/products", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        products["accounts"][0]["balance"]["amount"],
        format!("{total}.00").as_str()
    );

    // The killed node comes back and the partitions spread again.
    cluster.nodes[0].restart().await.unwrap();
    cluster.settled().await;
    publish(&js, &balance_change("k-after", n, "1.00")).await;
    let events = socket.events(1, WAIT).await.unwrap();
    assert_eq!(events[0].0, total as u64 + 1);
}

/// Two nodes, four concurrent payments of one customer, each spending most of the balance:
/// the owner's actor serialises them wherever they arrive (the other node forwards to the
/// partition owner), so exactly one succeeds and the money moves once.
#[tokio::test]
async fn concurrent_double_spend_through_two_nodes_exactly_one_succeeds() {
    let cluster = Cluster::start(2).await;
    let n = cluster.customer_owned_by(0).await;
    let from = account(n);
    let deposit = format!("d{:06}", n);
    let tokens = [
        cluster.nodes[0].client().login(n).await.unwrap(),
        cluster.nodes[1].client().login(n).await.unwrap(),
    ];
    let (_, products) = cluster.nodes[0]
        .client()
        .get("/v1/products", Some(&tokens[0]))
        .await
        .unwrap();
    let start = products["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == from.as_str())
        .map(|p| p["balance"]["amount"].as_str().unwrap().to_owned())
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let client = cluster.nodes[i % 2].client();
        let token = tokens[i % 2].clone();
        let body = json!({"operation": "transfer.own", "from": from,
            "amount": {"amount": "100000.00", "currency": "RUB"},
            "fields": {"to": deposit}});
        tasks.spawn(async move {
            client
                .post_idempotent("/v1/payments", &token, &format!("spend-{i}"), body)
                .await
                .unwrap()
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            201 => {
                assert_eq!(body["status"], "completed", "{body}");
                ok += 1;
            }
            422 => assert_eq!(body["code"], "insufficient_funds"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok, 1);
    let expected = start.parse::<f64>().unwrap() - 100_000.0; // test arithmetic only
    for (node, token) in cluster.nodes.iter().zip(&tokens) {
        let (_, products) = node
            .client()
            .get("/v1/products", Some(token))
            .await
            .unwrap();
        let balance = products["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == from.as_str())
            .map(|p| {
                p["balance"]["amount"]
                    .as_str()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            })
            .unwrap();
        assert!(
            (balance - expected).abs() < 0.001,
            "{balance} != {expected}"
        );
    }
}
