//! End-to-end, staff sessions: staff tokens backed by stored sessions (refresh rotation with
//! reuse detection, logout), the `security` role listing and ending staff sessions, and
//! revocation effective at once for staff endpoints: on one embedded node, and across a
//! two-node cluster (NATS + PostgreSQL). Also the security role's antifraud flags, which ask
//! a customer's every login for a second factor while they last, and staff TOTP codes that
//! work once (a replay, even within the drift window or on another node, is refused).

use std::time::Duration;

use serde_json::{Value, json};
use tests::{ArbatProcess, BACKOFFICE_KEY, Client, NodeSpec, SmsGateway};

const STAFF_PASSWORD: &str = "staff-pass-12345";

fn base32_decode(text: &str) -> Vec<u8> {
    let mut out = vec![];
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            out.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

/// Provisions a staff account; returns its TOTP secret.
async fn provision(client: &Client, login: &str, role: &str) -> Vec<u8> {
    let (status, body) = client
        .post(
            "/admin/v1/staff",
            Some(BACKOFFICE_KEY),
            json!({"login": login, "role": role, "password": STAFF_PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    base32_decode(body["totp_secret"].as_str().unwrap())
}

async fn staff_login(client: &Client, login: &str, secret: &[u8]) -> Value {
    staff_login_at(client, login, secret, 0).await
}

/// A staff login with the app's code `steps_ahead` 30-second steps from now: each step is
/// accepted once per account (one step of drift either way), so a second login of the same
/// account within a step uses the next step's code.
async fn staff_login_at(client: &Client, login: &str, secret: &[u8], steps_ahead: i64) -> Value {
    let (status, body) = staff_attempt(
        client,
        login,
        STAFF_PASSWORD,
        &app_code(secret, steps_ahead),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].as_str().is_some(), "{body}");
    body
}

fn app_code(secret: &[u8], steps_ahead: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    channels::access::totp::code_at(secret, now + steps_ahead * channels::access::totp::STEP_S)
}

async fn staff_attempt(client: &Client, login: &str, password: &str, code: &str) -> (u16, Value) {
    client
        .post(
            "/staff/v1/auth/login",
            None,
            json!({"login": login, "password": password, "totp": code}),
        )
        .await
        .unwrap()
}

fn access(tokens: &Value) -> Option<&str> {
    tokens["access_token"].as_str()
}

async fn refresh(client: &Client, path: &str, tokens: &Value) -> (u16, Value) {
    client
        .post(
            path,
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await
        .unwrap()
}

/// The staff sessions the security member sees: (id, login, current).
async fn staff_sessions(client: &Client, security: &Value) -> Vec<(String, String, bool)> {
    let (status, body) = client
        .get("/staff/v1/sessions", access(security))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["id"].as_str().unwrap().to_owned(),
                item["login"].as_str().unwrap().to_owned(),
                item["current"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A staff endpoint every role in the test may use.
async fn reads(client: &Client, tokens: &Value) -> (u16, Value) {
    client
        .get("/staff/v1/customers/c000001/sessions", access(tokens))
        .await
        .unwrap()
}

/// The whole scenario; `other` is another node of the same cluster (or the same node).
async fn staff_sessions_scenario(first: &Client, other: &Client) {
    let support = provision(first, "sup-1", "support").await;
    let security = provision(first, "sec-1", "security").await;

    // Rotation: the new tokens work, the old refresh token ends the session everywhere.
    let tokens = staff_login(first, "sup-1", &support).await;
    assert_eq!(tokens["role"], "support");
    assert_eq!(reads(other, &tokens).await.0, 200);
    let (status, rotated) = refresh(first, "/staff/v1/auth/refresh", &tokens).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["role"], "support");
    assert_eq!(reads(other, &rotated).await.0, 200);
    let (status, body) = refresh(other, "/staff/v1/auth/refresh", &tokens).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_revoked"))
    );
    tests::eventually(
        "the reused session's token refused",
        Duration::from_secs(1),
        || async {
            let (status, body) = reads(other, &rotated).await;
            (status == 401 && body["code"] == "session_revoked").then_some(())
        },
    )
    .await;
    let (status, _) = refresh(first, "/staff/v1/auth/refresh", &rotated).await;
    assert_eq!(status, 401);

    // Scope confusion: a staff refresh token is unknown to the customer endpoint, and the
    // other way round. (The first login spent this step's code: the next step's is used.)
    let tokens = staff_login_at(first, "sup-1", &support, 1).await;
    let (status, _) = refresh(first, "/v1/auth/refresh", &tokens).await;
    assert_eq!(status, 401);
    let customer = first
        .post(
            "/v1/auth/login",
            None,
            json!({"login": tests::phone(1), "password": tests::DEMO_PASSWORD, "device_id": "d"}),
        )
        .await
        .unwrap()
        .1;
    let (status, _) = refresh(first, "/staff/v1/auth/refresh", &customer).await;
    assert_eq!(status, 401);
    // ... and the failed attempts changed nothing.
    assert_eq!(reads(first, &tokens).await.0, 200);
    assert_eq!(refresh(first, "/v1/auth/refresh", &customer).await.0, 200);

    // The security role lists staff sessions (never customers') and ends one.
    let guard = staff_login(first, "sec-1", &security).await;
    let sessions = staff_sessions(first, &guard).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(
        sessions
            .iter()
            .any(|(_, login, current)| login == "sec-1" && *current)
    );
    let (support_sid, _, _) = sessions
        .iter()
        .find(|(_, login, _)| login == "sup-1")
        .unwrap()
        .clone();
    // Other roles and customers may not.
    let (status, _) = first
        .get("/staff/v1/sessions", access(&tokens))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = first
        .delete(
            &format!("/staff/v1/sessions/{support_sid}"),
            access(&tokens),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = first
        .get("/staff/v1/sessions", access(&customer))
        .await
        .unwrap();
    assert_eq!(status, 403);
    // A customer session's id is not a staff session.
    let customer_sid = first
        .get("/v1/sessions", access(&customer))
        .await
        .unwrap()
        .1["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = first
        .delete(
            &format!("/staff/v1/sessions/{customer_sid}"),
            access(&guard),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = first
        .delete(&format!("/staff/v1/sessions/{support_sid}"), access(&guard))
        .await
        .unwrap();
    assert_eq!(status, 204);
    tests::eventually(
        "the ended session's token refused",
        Duration::from_secs(1),
        || async {
            let (status, body) = reads(other, &tokens).await;
            (status == 401 && body["code"] == "session_revoked").then_some(())
        },
    )
    .await;
    assert_eq!(reads(first, &tokens).await.0, 401);
    assert_eq!(
        refresh(other, "/staff/v1/auth/refresh", &tokens).await.0,
        401
    );
    let (status, _) = first
        .delete(&format!("/staff/v1/sessions/{support_sid}"), access(&guard))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(staff_sessions(other, &guard).await.len(), 1);

    // Logout ends the caller's own session.
    let (status, _) = other
        .post("/staff/v1/auth/logout", access(&guard), json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, body) = other.get("/staff/v1/audit", access(&guard)).await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_revoked"))
    );
    tests::eventually(
        "the logged-out token refused",
        Duration::from_secs(1),
        || async {
            let (status, _) = first.get("/staff/v1/audit", access(&guard)).await.unwrap();
            (status == 401).then_some(())
        },
    )
    .await;
    assert_eq!(
        refresh(first, "/staff/v1/auth/refresh", &guard).await.0,
        401
    );
}

#[tokio::test]
async fn staff_sessions_rotate_end_on_logout_and_are_revoked_by_security() {
    let sms = SmsGateway::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = NodeSpec::embedded(&dir);
    spec.env.push(("ARBAT_SMS_URL".into(), sms.url.clone()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    let client = node.client();
    staff_sessions_scenario(&client, &client).await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn staff_session_revocation_reaches_every_node_of_a_cluster() {
    let cluster = tests::fixtures::Cluster::start(2).await;
    let nodes = &cluster.nodes;
    staff_sessions_scenario(&nodes[0].client(), &nodes[1].client()).await;
}

#[tokio::test]
async fn an_antifraud_flag_asks_every_login_for_a_second_factor_while_it_lasts() {
    let sms = SmsGateway::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = NodeSpec::embedded(&dir);
    spec.env.push(("ARBAT_SMS_URL".into(), sms.url.clone()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    let client = node.client();
    let security = provision(&client, "sec-1", "security").await;
    let support = provision(&client, "sup-1", "support").await;
    let guard = staff_login(&client, "sec-1", &security).await;
    let helper = staff_login(&client, "sup-1", &support).await;
    let me = tests::phone(7);
    let login = || async {
        client
            .post(
                "/v1/auth/login",
                None,
                json!({"login": me, "password": tests::DEMO_PASSWORD, "device_id": "d1"}),
            )
            .await
            .unwrap()
    };
    let (status, customer) = login().await;
    assert_eq!(status, 200, "{customer}");
    let flag = "/staff/v1/customers/c000007/risk-flag";
    let put = |tokens: &Value, body: Value| {
        let client = client.clone();
        let token = access(tokens).map(str::to_owned);
        async move {
            let mut request = client
                .http
                .put(format!("{}{flag}", client.base))
                .json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    // Only the security role flags; out-of-range lengths are refused.
    assert_eq!(put(&helper, json!({"hours": 1})).await, 403);
    assert_eq!(put(&customer, json!({"hours": 1})).await, 403);
    assert_eq!(put(&guard, json!({"hours": 0})).await, 400);
    assert_eq!(put(&guard, json!({"hours": 721})).await, 400);
    assert_eq!(login().await.0, 200);
    assert_eq!(put(&guard, json!({"hours": 1})).await, 204);
    // Flagged: the trusted device, known network and clean record still need a code.
    for sent in 0..2 {
        let (status, challenge) = login().await;
        assert_eq!(
            (status, challenge["reason"].as_str()),
            (202, Some("risk")),
            "{challenge}"
        );
        let code = sms.code_for(&me, sent).await.unwrap();
        let (status, body) = client
            .post(
                &format!(
                    "/v1/auth/challenges/{}/confirm",
                    challenge["challenge_id"].as_str().unwrap()
                ),
                None,
                json!({"code": code}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = client.delete(flag, access(&helper)).await.unwrap();
    assert_eq!(status, 403);
    let (status, _) = client.delete(flag, access(&guard)).await.unwrap();
    assert_eq!(status, 204);
    assert_eq!(login().await.0, 200);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A staff TOTP code works once: the same code again (within its drift window), an older
/// step's code, or the loser of two concurrent logins with one code is refused exactly like
/// a wrong code, and audited. A wrong password does not spend the code. `other` is another
/// node of the same cluster (or the same node).
async fn staff_code_replay_scenario(first: &Client, other: &Client) {
    let security = provision(first, "sec-9", "security").await;
    // Codes relative to this moment, so a step boundary passing during the test changes
    // nothing: steps t0 - 1 .. t0 + 1 stay within the accepted drift for 30 seconds.
    let t0 = time::OffsetDateTime::now_utc().unix_timestamp();
    let step_code = |steps_after: i64| {
        channels::access::totp::code_at(
            &security,
            t0 + steps_after * channels::access::totp::STEP_S,
        )
    };
    let wrong_code = format!(
        "{:06}",
        (step_code(0).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let (status, wrong) = staff_attempt(first, "sec-9", STAFF_PASSWORD, &wrong_code).await;
    assert_eq!(
        (status, wrong["code"].as_str()),
        (401, Some("invalid_credentials"))
    );

    let (status, tokens) = staff_attempt(first, "sec-9", STAFF_PASSWORD, &step_code(0)).await;
    assert_eq!(status, 200, "{tokens}");
    // The same code again, on this node and on the other: the wrong code's answer.
    for client in [first, other] {
        let (status, body) = staff_attempt(client, "sec-9", STAFF_PASSWORD, &step_code(0)).await;
        assert_eq!((status, &body), (401, &wrong));
    }
    // An earlier step's code (still within the drift window) is spent too.
    let (status, body) = staff_attempt(other, "sec-9", STAFF_PASSWORD, &step_code(-1)).await;
    assert_eq!((status, &body), (401, &wrong));
    // A wrong password with the next code does not spend it...
    let (status, _) = staff_attempt(first, "sec-9", "wrong-pass-123", &step_code(1)).await;
    assert_eq!(status, 401);
    // ... and of two logins with it at the same moment, on two nodes, exactly one passes.
    let next = step_code(1);
    let (a, b) = tokio::join!(
        staff_attempt(first, "sec-9", STAFF_PASSWORD, &next),
        staff_attempt(other, "sec-9", STAFF_PASSWORD, &next),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "{a:?} {b:?}");
    let loser = if a.0 == 401 { a.1 } else { b.1 };
    assert_eq!(loser, wrong);

    // Every refusal is in the audit log: the wrong code, two replays, the earlier step, the
    // wrong password and the concurrent loser; the two logins that passed, too.
    let (status, audit) = first
        .get("/staff/v1/audit?limit=100", access(&tokens))
        .await
        .unwrap();
    assert_eq!(status, 200, "{audit}");
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["kind"] == "staff_login" && entry["actor"] == "sec-9")
        .filter_map(|entry| entry["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == "refused")
            .count(),
        6,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|outcome| **outcome == "ok").count(),
        2,
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_staff_totp_code_works_once() {
    let sms = SmsGateway::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = NodeSpec::embedded(&dir);
    spec.env.push(("ARBAT_SMS_URL".into(), sms.url.clone()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    let client = node.client();
    staff_code_replay_scenario(&client, &client).await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_staff_totp_code_works_once_across_a_cluster() {
    let cluster = tests::fixtures::Cluster::start(2).await;
    let nodes = &cluster.nodes;
    staff_code_replay_scenario(&nodes[0].client(), &nodes[1].client()).await;
}
