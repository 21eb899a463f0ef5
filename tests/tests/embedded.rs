//! End-to-end, embedded mode: the real binary with its SQLite store and in-process bus.

use std::time::Duration;

use serde_json::json;
use tests::{ArbatProcess, BACKOFFICE_KEY, Frame, NodeSpec, Socket, account, balance_change};

const WAIT: Duration = Duration::from_secs(10);

async fn node() -> (ArbatProcess, tempdir::TempDir) {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    (node, dir)
}

mod tempdir {
    /// A temporary folder removed on drop.
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

/// The ids of `notification` outcomes in a feed that report an accepted send.
fn accepted_notifications(feed: &[serde_json::Value]) -> Vec<String> {
    feed.iter()
        .filter(|e| e["kind"] == "notification" && e["status"] == "accepted")
        .map(|e| e["request_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn business(feed: &[serde_json::Value]) -> Vec<&str> {
    feed.iter()
        .filter(|e| e["kind"] != "notification")
        .map(|e| e["id"].as_str().unwrap_or_default())
        .collect()
}

/// Waits until `count` transaction notifications were accepted by a provider, so the
/// feed's seqs are settled before the test checks a replay.
async fn notified(client: &tests::Client, token: &str, count: usize) -> Vec<serde_json::Value> {
    // Generous: delivery is asynchronous and retried with backoff on a busy machine.
    tests::eventually(
        "notifications are delivered",
        Duration::from_secs(45),
        || async {
            let feed = client.whole_feed(token).await.ok()?;
            (accepted_notifications(&feed).len() >= count).then_some(feed)
        },
    )
    .await
}

#[tokio::test]
async fn live_events_then_exact_resume() {
    let (node, _dir) = node().await;
    let client = node.client();
    let token = client.login(1).await.unwrap();

    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert_eq!(socket.next(WAIT).await.unwrap(), Frame::Live { head: 0 });

    let posted = client.abs_post("p1", &account(1), "-100.00").await.unwrap();
    assert_eq!(posted["balance"]["amount"], "149901.00");
    let events = socket.business_events(2, WAIT).await.unwrap();
    assert_eq!(events[0].1["kind"], "transaction_posted");
    assert_eq!(events[0].1["amount"]["amount"], "-100.00");
    assert_eq!(events[1].1["kind"], "balance_changed");
    assert_eq!(events[1].1["balance"]["amount"], "149901.00");
    // The customer is told too (console SMS in the embedded demo), and the outcome is a
    // live `notification` event.
    match socket.next(WAIT).await.unwrap() {
        Frame::Event { event, .. } if event["kind"] == "notification" => {
            assert_eq!(event["status"], "accepted");
            assert_eq!(event["about"], "transaction");
        }
        other => panic!("expected the notification outcome, got {other:?}"),
    }
    let last_seen = socket.last_seq.unwrap();
    socket.close().await;

    // Changes while the client is away...
    client.abs_post("p2", &account(1), "-1.00").await.unwrap();
    client.abs_post("p3", &account(1), "250.00").await.unwrap();
    let feed = notified(&client, &token, 3).await;
    let head = feed.last().unwrap()["seq"].as_u64().unwrap();

    // ...arrive exactly once on resume, in order, then the live marker, then live events.
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(Some(last_seen)).await.unwrap();
    let (missed, live_head) = socket.until_live(WAIT).await.unwrap();
    assert_eq!(live_head, head);
    assert_eq!(
        missed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (last_seen + 1..=head).collect::<Vec<_>>()
    );
    let missed_business: Vec<&str> = missed
        .iter()
        .filter(|(_, e)| e["kind"] != "notification")
        .map(|(_, e)| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(missed_business, vec!["tx-p2", "bal-p2", "tx-p3", "bal-p3"]);
    client.abs_post("p4", &account(1), "-0.50").await.unwrap();
    let live = socket.business_events(2, WAIT).await.unwrap();
    assert_eq!(live[1].1["balance"]["amount"], "150149.50");
    assert!(
        socket.no_business_event(Duration::from_millis(300)).await,
        "no duplicate after live"
    );

    // Reads come from the actor's memory and agree with the feed.
    let (status, products) = client.get("/v1/products", Some(&token)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(products["accounts"][0]["balance"]["amount"], "150149.50");
    assert!(
        products["cards"][0]["pan_masked"]
            .as_str()
            .unwrap()
            .contains("******")
    );
    let (status, page) = client
        .get(
            &format!("/v1/accounts/{}/transactions?limit=2", account(1)),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["amount"]["amount"], "-0.50");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, older) = client
        .get(
            &format!(
                "/v1/accounts/{}/transactions?limit=10&cursor={cursor}",
                account(1)
            ),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(older["items"].as_array().unwrap().len(), 2);
    assert!(older["next_cursor"].is_null());

    // Feed: newest first, gapless, unread count, read marks.
    let all = notified(&client, &token, 4).await;
    let head = all.len() as u64;
    assert_eq!(
        all.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    assert_eq!(
        business(&all),
        vec![
            "tx-p1", "bal-p1", "tx-p2", "bal-p2", "tx-p3", "bal-p3", "tx-p4", "bal-p4"
        ]
    );
    let (_, feed) = client.get("/v1/feed?limit=3", Some(&token)).await.unwrap();
    assert_eq!(feed["items"][0]["seq"], head);
    assert_eq!(feed["unread"], head);
    let (status, read) = client
        .post("/v1/feed/read", Some(&token), json!({"up_to_seq": 5}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(read["unread"], head - 5);
    let (status, problem) = client.get("/v1/feed?limit=0", Some(&token)).await.unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn subprotocol_auth_and_no_token_in_url() {
    let (node, _dir) = node().await;
    let token = node.client().login(2).await.unwrap();
    let (mut socket, chosen) = Socket::connect_subprotocol(&node.ws_url(), &token)
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("arbat.v1"));
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    // A token in the query string is not a credential.
    let url = format!("{}?access_token={token}", node.ws_url());
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_customer_never_reaches_another_customers_data() {
    let (node, _dir) = node().await;
    let client = node.client();
    let alice = client.login(3).await.unwrap();
    let bob = client.login(4).await.unwrap();
    client
        .abs_post("bob-1", &account(4), "-10.00")
        .await
        .unwrap();

    // Bob's account through Alice's token: not found (never "forbidden": no existence leak).
    let (status, body) = client
        .get(
            &format!("/v1/accounts/{}/transactions", account(4)),
            Some(&alice),
        )
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (_, feed) = client.get("/v1/feed", Some(&alice)).await.unwrap();
    assert!(feed["items"].as_array().unwrap().is_empty());
    let (_, me) = client.get("/v1/me", Some(&alice)).await.unwrap();
    assert_eq!(me["customer_id"], "c000003");

    // Alice's socket hears nothing of Bob's changes.
    let mut socket = Socket::connect(&node.ws_url(), &alice).await.unwrap();
    socket.subscribe(Some(0)).await.unwrap();
    assert_eq!(socket.next(WAIT).await.unwrap(), Frame::Live { head: 0 });
    client
        .abs_post("bob-2", &account(4), "-10.00")
        .await
        .unwrap();
    assert!(socket.is_quiet(Duration::from_millis(500)).await);
    let bob_feed = client.whole_feed(&bob).await.unwrap();
    assert_eq!(
        business(&bob_feed),
        vec!["tx-bob-1", "bal-bob-1", "tx-bob-2", "bal-bob-2"]
    );

    // Forged, missing and wrong-kind credentials.
    let mut forged = alice.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    for token in [
        Some(forged.as_str()),
        None,
        Some("nonsense"),
        Some(BACKOFFICE_KEY),
    ] {
        let (status, body) = client.get("/v1/products", token).await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{token:?}"
        );
    }
    assert!(Socket::connect(&node.ws_url(), &forged).await.is_err());
    // A customer token never opens back-office endpoints.
    let (status, _) = client
        .post(
            "/cache-control/v1/events",
            Some(&alice),
            json!({"events": [balance_change("x", 3, "1.00")]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn cache_control_applies_once_and_refuses_bad_input_whole() {
    let (node, _dir) = node().await;
    let client = node.client();
    let token = client.login(5).await.unwrap();
    let post = |events: serde_json::Value| {
        let client = client.clone();
        async move {
            client
                .post(
                    "/cache-control/v1/events",
                    Some(BACKOFFICE_KEY),
                    json!({"events": events}),
                )
                .await
                .unwrap()
        }
    };

    let (status, _) = post(json!([
        balance_change("chg-1", 5, "10.00"),
        balance_change("chg-1", 5, "10.00")
    ]))
    .await;
    assert_eq!(status, 202);
    let (status, _) = post(json!([balance_change("chg-1", 5, "10.00")])).await;
    assert_eq!(status, 202, "a repeat is accepted and dropped");

    // One malformed change refuses the whole batch, with the index and a stable code.
    let (status, problem) =
        post(json!([balance_change("chg-2", 5, "20.00"), {"id": "bad", "kind": "teleport"}])).await;
    assert_eq!(status, 422);
    assert_eq!(problem["code"], "invalid_change");
    assert_eq!(problem["errors"][0]["index"], 1);
    assert_eq!(problem["errors"][0]["code"], "unknown_change_kind");

    // A change for a product the customer does not have is refused by the rules and reported.
    let mut foreign = balance_change("chg-3", 5, "1.00");
    foreign["account_id"] = json!(account(6));
    let (status, body) = post(json!([foreign, balance_change("chg-4", 5, "40.00")])).await;
    assert_eq!(status, 202);
    assert_eq!(body["rejected"][0]["code"], "unknown_product");

    let feed = client.whole_feed(&token).await.unwrap();
    let ids: Vec<&str> = feed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["chg-1", "chg-4"],
        "applied once each; nothing of the refused batch"
    );
    let (_, products) = client.get("/v1/products", Some(&token)).await.unwrap();
    assert_eq!(products["accounts"][0]["balance"]["amount"], "40.00");

    // Bad requests get problem+json and change nothing.
    for (body, code) in [
        (json!({}), 400),
        (json!({"events": []}), 400),
        (json!({"events": "x"}), 400),
    ] {
        let (status, problem) = client
            .post("/cache-control/v1/events", Some(BACKOFFICE_KEY), body)
            .await
            .unwrap();
        assert_eq!(status, code);
        assert!(problem["code"].is_string());
    }
    let (status, _) = client
        .post(
            "/cache-control/v1/events",
            Some("wrong-key-wrong-key"),
            json!({"events": []}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn acknowledged_changes_survive_kill_9() {
    let dir = tempdir::TempDir::new();
    let mut node = ArbatProcess::start(NodeSpec::embedded(&dir.0))
        .await
        .unwrap();
    let client = node.client();
    let token = client.login(7).await.unwrap();
    for i in 0..20 {
        client
            .abs_post(&format!("k{i}"), &account(7), "-1.00")
            .await
            .unwrap();
    }
    node.kill9();
    node.restart().await.unwrap();
    let client = node.client();
    // The token is still good (the signing key is in the store) and nothing was lost: every
    // posting is in the feed once, and every notification, sent before or after the crash,
    // is reported once.
    let feed = notified(&client, &token, 20).await;
    let expected: Vec<String> = (0..20)
        .flat_map(|i| [format!("tx-k{i}"), format!("bal-k{i}")])
        .collect();
    assert_eq!(business(&feed), expected);
    let mut notices = accepted_notifications(&feed);
    notices.sort();
    notices.dedup();
    assert_eq!(notices.len(), 20);
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(Some(0)).await.unwrap();
    let (events, head) = socket.until_live(WAIT).await.unwrap();
    assert_eq!(events.len() as u64, head);
    let (_, products) = client.get("/v1/products", Some(&token)).await.unwrap();
    assert_eq!(products["accounts"][0]["balance"]["amount"], "149987.00");
    // A posting retried after the crash moves no money twice.
    let again = client.abs_post("k19", &account(7), "-1.00").await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert!(socket.no_business_event(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn expired_tokens_close_the_socket_with_4001() {
    let dir = tempdir::TempDir::new();
    let spec = NodeSpec::embedded(&dir.0).arg("--access-token-ttl-s", "2");
    let node = ArbatProcess::start(spec).await.unwrap();
    let token = node.client().login(8).await.unwrap();
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    assert_eq!(
        socket.next(WAIT).await.unwrap(),
        Frame::Closed { code: Some(4001) }
    );
    let (status, _) = node
        .client()
        .get("/v1/products", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn passivated_actors_come_back_with_their_state() {
    let dir = tempdir::TempDir::new();
    let spec = NodeSpec::embedded(&dir.0).arg("--idle-timeout-ms", "200");
    let node = ArbatProcess::start(spec).await.unwrap();
    let client = node.client();
    let token = client.login(9).await.unwrap();
    client.abs_post("z1", &account(9), "-5.00").await.unwrap();
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(Some(0)).await.unwrap();
    socket.until_live(WAIT).await.unwrap();
    // Idle long enough to passivate, then a change and a read reactivate it.
    tests::eventually("the actor passivates", WAIT, || {
        let client = client.clone();
        async move {
            let metrics = client
                .http
                .get(format!("{}/metrics", client.base))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|l| l.starts_with("arbat_actor_passivations_total") && !l.ends_with(" 0"))
                .then_some(())
        }
    })
    .await;
    client.abs_post("z2", &account(9), "-5.00").await.unwrap();
    let live = socket.business_events(2, WAIT).await.unwrap();
    assert_eq!(live[0].1["id"], "tx-z2");
    let (_, products) = client.get("/v1/products", Some(&token)).await.unwrap();
    assert_eq!(products["accounts"][0]["balance"]["amount"], "149999.00");
}

#[tokio::test]
async fn invalid_config_exits_64_naming_the_setting() {
    let output = std::process::Command::new(tests::arbat_binary())
        .args(["serve", "--partitions", "zero"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("partitions"));
    let output = std::process::Command::new(tests::arbat_binary())
        .args(["serve", "--nats", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("database-url"));
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let (mut node, _dir) = node().await;
    let token = node.client().login(10).await.unwrap();
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    let code = node.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(
        socket.next(WAIT).await.unwrap(),
        Frame::Closed { code: Some(1001) }
    );
}

#[tokio::test]
async fn the_connection_limit_refuses_the_next_socket() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0).arg("--max-connections", "1"))
        .await
        .unwrap();
    let token = node.client().login(12).await.unwrap();
    let mut first = Socket::connect(&node.ws_url(), &token).await.unwrap();
    first.subscribe(None).await.unwrap();
    assert!(matches!(
        first.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    let refused = Socket::connect(&node.ws_url(), &token).await;
    let error = refused
        .err()
        .expect("the second socket is refused")
        .to_string();
    assert!(error.contains("503"), "{error}");
    // The slot comes back when the first socket goes.
    first.close().await;
    tests::eventually("the slot is free again", WAIT, || async {
        Socket::connect(&node.ws_url(), &token)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_slow_client_is_shed_with_4008_and_resumes_without_loss() {
    let dir = tempdir::TempDir::new();
    let node = ArbatProcess::start(NodeSpec::embedded(&dir.0).arg("--ws-live-buffer", "1"))
        .await
        .unwrap();
    let client = node.client();
    let token = client.login(13).await.unwrap();
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert_eq!(socket.next(WAIT).await.unwrap(), Frame::Live { head: 0 });
    // A burst far larger than the socket's queue.
    let events: Vec<serde_json::Value> = (0..600)
        .map(|i| balance_change(&format!("s{i}"), 13, &format!("{i}.00")))
        .collect();
    let (status, _) = client
        .post(
            "/cache-control/v1/events",
            Some(BACKOFFICE_KEY),
            json!({"events": events}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);
    let mut shed = false;
    let mut received = 0u64;
    while received < 600 {
        match socket.next(WAIT).await.unwrap() {
            Frame::Event { .. } => received += 1,
            Frame::Live { .. } => {}
            Frame::Closed { code } => {
                assert_eq!(code, Some(4008));
                shed = true;
                let last = socket.last_seq;
                socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
                socket.subscribe(last).await.unwrap();
            }
        }
    }
    assert!(shed, "a queue of one cannot keep up with a burst of 600");
    assert_eq!(socket.last_seq, Some(600));
}

#[tokio::test]
async fn notifications_reach_the_sms_gateway_in_the_customers_language() {
    let gateway = tests::SmsGateway::start().await.unwrap();
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env.push(("ARBAT_SMS_URL".into(), gateway.url.clone()));
    let node = ArbatProcess::start(spec).await.unwrap();
    let client = node.client();
    // Customer 15 speaks Russian, 16 English (demo data).
    client
        .abs_post("ru-1", &account(15), "-120.00")
        .await
        .unwrap();
    client
        .abs_post("en-1", &account(16), "-80.00")
        .await
        .unwrap();
    let messages = tests::eventually("two SMS at the gateway", WAIT, || async {
        let messages = gateway.messages();
        (messages.len() >= 2).then_some(messages)
    })
    .await;
    let to = |phone: &str| messages.iter().find(|m| m["to"] == phone).cloned().unwrap();
    let russian = to("+79990000015")["text"].as_str().unwrap().to_owned();
    let english = to("+79990000016")["text"].as_str().unwrap().to_owned();
    assert!(russian.contains("карта 220220******0015"), "{russian}");
    assert!(russian.contains("Баланс"), "{russian}");
    assert!(english.contains("card 220220******0016"), "{english}");
    assert!(english.contains("Balance"), "{english}");
    assert!(
        messages
            .iter()
            .all(|m| m["id"].as_str().is_some_and(|id| !id.is_empty()))
    );

    // Preferences and devices are the caller's own.
    let token = client.login(15).await.unwrap();
    let (status, preferences) = client
        .get("/v1/notification-preferences", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(preferences["kinds"]["transaction"]["channels"].is_array());
    let (status, _) = client
        .post(
            "/v1/devices",
            Some(&token),
            json!({"platform": "android", "token": "fcm-token-15", "language": "ru"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (status, problem) = client
        .post(
            "/v1/devices",
            Some(&token),
            json!({"platform": "nokia", "token": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_device"))
    );
    let other = client.login(16).await.unwrap();
    let delete = |token: String| {
        let client = client.clone();
        async move {
            client
                .http
                .delete(format!("{}/v1/devices/fcm-token-15", client.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        delete(other).await,
        404,
        "another customer's device is not theirs to delete"
    );
    assert_eq!(delete(token).await, 204);
}

#[tokio::test]
async fn a_live_socket_turns_the_push_into_an_in_app_event_where_preferences_say_so() {
    let gateway = tests::SmsGateway::start().await.unwrap();
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env.push(("ARBAT_SMS_URL".into(), gateway.url.clone()));
    let node = ArbatProcess::start(spec).await.unwrap();
    let client = node.client();
    let token = client.login(17).await.unwrap();
    let rule = json!({"kinds": {"transaction": {"channels": ["push"], "fallback_sms": true, "in_app_when_online": true}}});
    let response = client
        .http
        .put(format!("{}/v1/notification-preferences", client.base))
        .bearer_auth(&token)
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Online: the in-app event replaces the push and its SMS fallback.
    let mut socket = Socket::connect(&node.ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    client
        .abs_post("online-1", &account(17), "-3.00")
        .await
        .unwrap();
    socket.business_events(2, WAIT).await.unwrap();
    match socket.next(WAIT).await.unwrap() {
        Frame::Event { event, .. } => {
            assert_eq!(event["kind"], "notification");
            assert_eq!(event["channel"], "in_app");
            assert_eq!(event["status"], "accepted");
        }
        other => panic!("expected the in-app outcome, got {other:?}"),
    }
    assert!(
        gateway.messages().is_empty(),
        "no SMS while the app is open"
    );
    socket.close().await;

    // Offline: push has no device, so the SMS fallback goes out.
    client
        .abs_post("offline-1", &account(17), "-4.00")
        .await
        .unwrap();
    tests::eventually("the SMS fallback reaches the gateway", WAIT, || async {
        gateway
            .messages()
            .iter()
            .any(|m| m["to"] == "+79990000017")
            .then_some(())
    })
    .await;
}
