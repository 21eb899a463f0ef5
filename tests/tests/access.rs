//! End-to-end, Access Manager and Identity Gateway: the real binary, codes read from a local
//! SMS gateway. Rules that need long waits (a code's 5-minute life, a staff lockout's 30
//! minutes) are tested with injected time in the unit tests (channels::access, kernel::store).

use std::time::Duration;

use serde_json::{Value, json};
use tests::{
    ArbatProcess, BACKOFFICE_KEY, Client, DEMO_PASSWORD, Frame, NodeSpec, SmsGateway, Socket, phone,
};

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "green-river-42";

struct Node {
    node: ArbatProcess,
    sms: SmsGateway,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn node_with(args: &[(&str, &str)]) -> Node {
    let sms = SmsGateway::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = NodeSpec::embedded(&dir);
    spec.env.push(("ARBAT_SMS_URL".into(), sms.url.clone()));
    for (name, value) in args {
        spec = spec.arg(name, value);
    }
    let node = ArbatProcess::start(spec).await.expect("node starts");
    Node {
        node,
        sms,
        _dir: TempDir(dir),
    }
}

async fn login_as(client: &Client, n: u32, device: &str) -> (u16, Value) {
    client
        .post(
            "/v1/auth/login",
            None,
            json!({"login": phone(n), "password": DEMO_PASSWORD, "device_id": device}),
        )
        .await
        .unwrap()
}

async fn tokens(client: &Client, n: u32, device: &str) -> Value {
    let (status, body) = login_as(client, n, device).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn confirm(client: &Client, id: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    client
        .post(&format!("/v1/auth/challenges/{id}/confirm"), token, body)
        .await
        .unwrap()
}

#[tokio::test]
async fn registration_by_sms_code_then_a_second_factor_on_a_new_device() {
    let Node { node, sms, _dir } = node_with(&[]).await;
    let client = node.client();
    let me = phone(101);
    let (status, body) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"phone": me, "password": PASSWORD, "device_id": "phone-1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["expires_in"], 300);
    let challenge = body["challenge_id"].as_str().unwrap().to_owned();
    let code = sms.code_for(&me, 0).await.unwrap();
    let (status, registered) = confirm(&client, &challenge, json!({"code": code}), None).await;
    assert_eq!(status, 200, "{registered}");
    let token = registered["access_token"].as_str().unwrap();
    let (status, who) = client.get("/v1/me", Some(token)).await.unwrap();
    assert_eq!(
        (status, who["customer_id"].as_str()),
        (200, Some("c000101"))
    );
    // The code was single use.
    let (status, body) = confirm(&client, &challenge, json!({"code": code}), None).await;
    assert_eq!((status, body["code"].as_str()), (410, Some("code_used")));
    // Registering again gets the same answer but no code (the phone has a login now).
    let sent = sms.count_to(&me);
    let (status, _) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"phone": me, "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);

    // The registration device is trusted; a new one needs the SMS code.
    let login = |device: &'static str| {
        let client = client.clone();
        let me = me.clone();
        async move {
            client
                .post(
                    "/v1/auth/login",
                    None,
                    json!({"login": me, "password": PASSWORD, "device_id": device}),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(login("phone-1").await.0, 200);
    let (status, body) = login("laptop").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (202, Some("new_device")),
        "{body}"
    );
    let challenge = body["challenge_id"].as_str().unwrap().to_owned();
    let code = sms.code_for(&me, sent).await.unwrap();
    let (status, body) = confirm(&client, &challenge, json!({"code": code}), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].as_str().is_some());
    // Now remembered.
    assert_eq!(login("laptop").await.0, 200);
    // A weak password is refused with the policy's reason.
    let (status, body) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"phone": phone(102), "password": "short"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("weak_password"))
    );
}

#[tokio::test]
async fn no_user_enumeration_in_registration_or_login() {
    let Node { node, sms, _dir } = node_with(&[]).await;
    let client = node.client();
    let shape = |body: &Value| {
        let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        (keys, body["expires_in"].clone())
    };
    let mut answers = vec![];
    // Known and unregistered, unknown to the bank, already registered.
    for who in [phone(103), "+79997654321".to_owned(), phone(1)] {
        let started = std::time::Instant::now();
        let (status, body) = client
            .post(
                "/v1/auth/register",
                None,
                json!({"phone": who, "password": PASSWORD}),
            )
            .await
            .unwrap();
        answers.push((status, shape(&body), started.elapsed(), body));
    }
    assert!(answers.iter().all(|a| a.0 == 202));
    assert!(answers.iter().all(|a| a.1 == answers[0].1));
    sms.code_for(&phone(103), 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sms.count_to("+79997654321"), 0);
    assert_eq!(sms.count_to(&phone(1)), 0);
    // The decoy challenge behaves like a real one with a wrong code.
    let decoy = answers[1].3["challenge_id"].as_str().unwrap();
    let (status, body) = confirm(&client, decoy, json!({"code": "123456"}), None).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));

    // Login: a wrong password and an unknown login get the same answer.
    let (known_status, known) = client
        .post(
            "/v1/auth/login",
            None,
            json!({"login": phone(2), "password": "wrong-one-1", "device_id": "d-enum"}),
        )
        .await
        .unwrap();
    let (unknown_status, unknown) = client
        .post(
            "/v1/auth/login",
            None,
            json!({"login": "+79997654321", "password": "wrong-one-1", "device_id": "d-enum"}),
        )
        .await
        .unwrap();
    assert_eq!(known_status, 401);
    assert_eq!((known_status, &known), (unknown_status, &unknown));
    assert_eq!(known["code"], "invalid_credentials");
}

#[tokio::test]
async fn codes_are_single_use_and_the_sixth_attempt_is_refused() {
    let Node { node, sms, _dir } = node_with(&[]).await;
    let client = node.client();
    let me = phone(104);
    let (_, body) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"phone": me, "password": PASSWORD}),
        )
        .await
        .unwrap();
    let challenge = body["challenge_id"].as_str().unwrap().to_owned();
    let code = sms.code_for(&me, 0).await.unwrap();
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    for _ in 0..5 {
        let (status, body) = confirm(&client, &challenge, json!({"code": wrong}), None).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));
    }
    let (status, body) = confirm(&client, &challenge, json!({"code": code}), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    let (status, _) = confirm(&client, "no-such-challenge", json!({"code": code}), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn step_up_codes_are_bound_to_the_amount_and_payee() {
    let Node { node, sms, _dir } = node_with(&[]).await;
    let client = node.client();
    let token = tokens(&client, 3, "d3").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = tokens(&client, 4, "d4").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let operation = json!({"operation": "transfer.phone",
        "amount": {"amount": "1500.00", "currency": "RUB"}, "payee": "+79990000002"});
    let start = || async {
        let (status, body) = client
            .post("/v1/auth/step-up", Some(&token), operation.clone())
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "confirmation_required");
        body["challenge_id"].as_str().unwrap().to_owned()
    };
    let id = start().await;
    let code = sms.code_for(&phone(3), 0).await.unwrap();
    // Another amount: refused, and the code is spent.
    let mut more = operation.clone();
    more["amount"]["amount"] = json!("1500.01");
    let (status, body) = confirm(
        &client,
        &id,
        json!({"code": code, "operation": more}),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("operation_mismatch"))
    );
    let (status, body) = confirm(
        &client,
        &id,
        json!({"code": code, "operation": operation}),
        Some(&token),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (410, Some("code_used")));

    let id = start().await;
    let code = sms.code_for(&phone(3), 1).await.unwrap();
    // Another payee.
    let mut payee = operation.clone();
    payee["payee"] = json!("+79990000009");
    let (status, _) = confirm(
        &client,
        &id,
        json!({"code": code, "operation": payee}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 422);

    let id = start().await;
    let code = sms.code_for(&phone(3), 2).await.unwrap();
    // Another customer's token, or none: the challenge is not theirs.
    let (status, _) = confirm(
        &client,
        &id,
        json!({"code": code, "operation": operation}),
        Some(&other),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = confirm(
        &client,
        &id,
        json!({"code": code, "operation": operation}),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = confirm(
        &client,
        &id,
        json!({"code": code, "operation": operation}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["confirmed"]["amount"]["amount"], "1500.00");
}

#[tokio::test]
async fn refresh_rotates_and_a_replayed_refresh_token_ends_the_session() {
    let Node {
        node,
        sms: _sms,
        _dir,
    } = node_with(&[]).await;
    let client = node.client();
    let first = tokens(&client, 5, "d5").await;
    let access = first["access_token"].as_str().unwrap().to_owned();
    let mut socket = Socket::connect(&node.ws_url(), &access).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));

    let (status, second) = client
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let (status, _) = client
        .get("/v1/me", second["access_token"].as_str())
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The first refresh token again: the whole session ends.
    let (status, body) = client
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_revoked"))
    );
    let (status, _) = client
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": second["refresh_token"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    for token in [&access, second["access_token"].as_str().unwrap()] {
        let (status, body) = client.get("/v1/me", Some(token)).await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("session_revoked"))
        );
    }
    assert_eq!(
        socket.next(Duration::from_secs(1)).await.unwrap(),
        Frame::Closed { code: Some(4003) }
    );
    let (status, _) = client
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": "rt1.nope.nope"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn sessions_are_the_callers_own_and_logout_closes_sockets() {
    let Node {
        node,
        sms: _sms,
        _dir,
    } = node_with(&[]).await;
    let client = node.client();
    let a = tokens(&client, 6, "phone").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = tokens(&client, 6, "tablet").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let stranger = tokens(&client, 7, "d7").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, list) = client.get("/v1/sessions", Some(&a)).await.unwrap();
    assert_eq!(status, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let tablet = items.iter().find(|s| s["device_id"] == "tablet").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // BOLA: another customer's session id is not found, and stays alive.
    let (status, _) = client
        .delete(&format!("/v1/sessions/{tablet}"), Some(&stranger))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(client.get("/v1/me", Some(&b)).await.unwrap().0, 200);
    // Another customer's account is not found either.
    let (status, _) = client
        .get("/v1/accounts/a000006/transactions", Some(&stranger))
        .await
        .unwrap();
    assert_eq!(status, 404);

    let mut socket = Socket::connect(&node.ws_url(), &b).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    let (status, _) = client
        .delete(&format!("/v1/sessions/{tablet}"), Some(&a))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(
        socket.next(Duration::from_secs(1)).await.unwrap(),
        Frame::Closed { code: Some(4003) }
    );
    assert_eq!(client.get("/v1/me", Some(&b)).await.unwrap().0, 401);

    let mut socket = Socket::connect(&node.ws_url(), &a).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    let (status, _) = client
        .post("/v1/auth/logout", Some(&a), json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(
        socket.next(Duration::from_secs(1)).await.unwrap(),
        Frame::Closed { code: Some(4003) }
    );
    assert_eq!(client.get("/v1/sessions", Some(&a)).await.unwrap().0, 401);
    // A revoked session's token cannot open a socket either.
    assert!(Socket::connect(&node.ws_url(), &a).await.is_err());
}

#[tokio::test]
async fn lockout_after_five_failures_ends_on_time_and_idle_sessions_end() {
    let Node { node, sms, _dir } =
        node_with(&[("--lockout-s", "3"), ("--session-idle-s", "2")]).await;
    let client = node.client();
    let wrong = |login: String, device: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(
                    "/v1/auth/login",
                    None,
                    json!({"login": login, "password": "not-the-password-1", "device_id": device}),
                )
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        assert_eq!(wrong(phone(8), "lock-a").await.0, 401);
    }
    // Locked: even the right password, from another device, is refused without saying why.
    let (status, body) = login_as(&client, 8, "lock-b").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("locked_out")),
        "{body}"
    );
    // The device is locked too, for any login.
    let (status, _) = login_as(&client, 9, "lock-a").await;
    assert_eq!(status, 429);
    // An unknown login locks the same way (nothing tells them apart).
    for _ in 0..5 {
        assert_eq!(wrong("+79997777777".into(), "lock-c").await.0, 401);
    }
    assert_eq!(wrong("+79997777777".into(), "lock-d").await.0, 429);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    // The lock has ended; the failures before it still ask for a second factor.
    let (status, challenge) = login_as(&client, 8, "lock-b").await;
    assert_eq!(
        (status, challenge["reason"].as_str()),
        (202, Some("risk")),
        "{challenge}"
    );
    let code = sms.code_for(&phone(8), 0).await.unwrap();
    let (status, body) = confirm(
        &client,
        challenge["challenge_id"].as_str().unwrap(),
        json!({"code": code}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Idle timeout: an unused refresh token ends with its session.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, body) = client
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": body["refresh_token"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_expired"))
    );
}

async fn staff(client: &Client, login: &str, role: &str) -> String {
    let (status, body) = client
        .post(
            "/admin/v1/staff",
            Some(BACKOFFICE_KEY),
            json!({"login": login, "role": role, "password": "staff-pass-12345"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body["totp_secret"].as_str().unwrap().to_owned()
}

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

async fn staff_login(client: &Client, login: &str, secret: &str) -> (u16, Value) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let code = channels::access::totp::code_at(&base32_decode(secret), now);
    client
        .post(
            "/staff/v1/auth/login",
            None,
            json!({"login": login, "password": "staff-pass-12345", "totp": code}),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn staff_and_customer_tokens_never_open_each_others_endpoints() {
    let Node {
        node,
        sms: _sms,
        _dir,
    } = node_with(&[]).await;
    let client = node.client();
    let support = staff(&client, "sup-1", "support").await;
    let marketing = staff(&client, "mkt-1", "marketing").await;
    let security = staff(&client, "sec-1", "security").await;
    let (status, body) = staff_login(&client, "sup-1", &support).await;
    assert_eq!(status, 200, "{body}");
    let staff_token = body["access_token"].as_str().unwrap().to_owned();
    let customer = tokens(&client, 10, "d10").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let sessions = "/staff/v1/customers/c000010/sessions";
    let (status, body) = client.get(sessions, Some(&staff_token)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    // Customer token on a staff endpoint, staff token on customer endpoints.
    assert_eq!(client.get(sessions, Some(&customer)).await.unwrap().0, 403);
    for path in ["/v1/me", "/v1/products", "/v1/sessions"] {
        let (status, body) = client.get(path, Some(&staff_token)).await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
    assert!(Socket::connect(&node.ws_url(), &staff_token).await.is_err());
    // The back-office key opens neither; staff and customer tokens do not open Cache Control.
    assert_eq!(
        client.get(sessions, Some(BACKOFFICE_KEY)).await.unwrap().0,
        401
    );
    for token in [&staff_token, &customer] {
        let (status, _) = client
            .post(
                "/cache-control/v1/events",
                Some(token),
                json!({"events": []}),
            )
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    // Roles: marketing cannot read sessions; only security reads the audit log.
    let (_, body) = staff_login(&client, "mkt-1", &marketing).await;
    let mkt = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(client.get(sessions, Some(&mkt)).await.unwrap().0, 403);
    assert_eq!(
        client
            .get("/staff/v1/audit", Some(&staff_token))
            .await
            .unwrap()
            .0,
        403
    );
    let (_, body) = staff_login(&client, "sec-1", &security).await;
    let sec = body["access_token"].as_str().unwrap().to_owned();
    let (status, audit) = client
        .get("/staff/v1/audit?limit=500", Some(&sec))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["login", "staff_login", "authz_refused"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    // A wrong TOTP is the same non-revealing error as a wrong password.
    let (status, body) = client
        .post(
            "/staff/v1/auth/login",
            None,
            json!({"login": "sup-1", "password": "staff-pass-12345", "totp": "000000x"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
}

#[tokio::test]
async fn staff_accounts_lock_after_ten_failures() {
    let Node {
        node,
        sms: _sms,
        _dir,
    } = node_with(&[]).await;
    let client = node.client();
    let secret = staff(&client, "ops-1", "operations").await;
    for _ in 0..10 {
        let (status, _) = client
            .post(
                "/staff/v1/auth/login",
                None,
                json!({"login": "ops-1", "password": "wrong-pass-123", "totp": "123456"}),
            )
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    let (status, body) = staff_login(&client, "ops-1", &secret).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("locked_out")));
}

#[tokio::test]
async fn tokens_signed_by_the_previous_key_stay_valid_after_rotation() {
    let Node {
        mut node,
        sms: _sms,
        _dir,
    } = node_with(&[]).await;
    let old = tokens(&node.client(), 11, "d11").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(old.starts_with("v1.1."));
    node.spec = node.spec.clone().arg("--token-key-id", "2");
    node.restart().await.unwrap();
    let client = node.client();
    assert_eq!(client.get("/v1/me", Some(&old)).await.unwrap().0, 200);
    let new = tokens(&client, 11, "d11").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(new.starts_with("v1.2."));
    assert_eq!(client.get("/v1/me", Some(&new)).await.unwrap().0, 200);
    // Two rotations later the old key is gone.
    let at = node
        .spec
        .args
        .iter()
        .position(|a| a == "--token-key-id")
        .unwrap();
    node.spec.args[at + 1] = "3".into();
    node.restart().await.unwrap();
    let client = node.client();
    assert_eq!(client.get("/v1/me", Some(&old)).await.unwrap().0, 401);
    assert_eq!(client.get("/v1/me", Some(&new)).await.unwrap().0, 200);
}

#[tokio::test]
async fn the_gateway_limits_rates_origins_and_sets_headers() {
    let Node {
        node,
        sms: _sms,
        _dir,
    } = node_with(&[
        ("--allowed-origins", "https://app.example"),
        ("--rate-limit-customer", "2"),
    ])
    .await;
    let client = node.client();
    let token = tokens(&client, 12, "d12").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = client
        .http
        .get(format!("{}/v1/me", client.base))
        .bearer_auth(&token)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    // Preflight: allowed origin yes, another no.
    let preflight = |origin: &'static str| {
        let client = client.clone();
        async move {
            client
                .http
                .request(reqwest::Method::OPTIONS, format!("{}/v1/me", client.base))
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(preflight("https://app.example").await, 204);
    assert_eq!(preflight("https://evil.example").await, 403);
    // WebSocket from a foreign origin is refused at the upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = node.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // Per customer: 2/s with a burst of 4.
    let mut limited = None;
    for _ in 0..20 {
        let response = client
            .http
            .get(format!("{}/v1/me", client.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a 429 within 20 requests");
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Another customer is not affected.
    let other = tokens(&client, 13, "d13").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(client.get("/v1/me", Some(&other)).await.unwrap().0, 200);
    // The OpenAPI document is served.
    let (status, doc) = client.get("/v1/openapi.json", None).await.unwrap();
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
}

#[tokio::test]
async fn a_password_change_reauthenticates_notifies_and_can_end_other_sessions() {
    let Node { node, sms, _dir } = node_with(&[]).await;
    let client = node.client();
    let current = tokens(&client, 14, "d14").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = tokens(&client, 14, "d14b").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let change = |current_password: &'static str| {
        let client = client.clone();
        let token = current.clone();
        async move {
            client
                .post(
                    "/v1/auth/password",
                    Some(&token),
                    json!({"current_password": current_password,
                        "new_password": "blue-ocean-77", "end_other_sessions": true}),
                )
                .await
                .unwrap()
        }
    };
    let (status, _) = change("wrong-password-1").await;
    assert_eq!(status, 401);
    let (status, body) = change(DEMO_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["other_sessions"], 1);
    assert_eq!(client.get("/v1/me", Some(&other)).await.unwrap().0, 401);
    assert_eq!(client.get("/v1/me", Some(&current)).await.unwrap().0, 200);
    assert_eq!(login_as(&client, 14, "d14").await.0, 401);
    tests::eventually("a security alert by SMS", WAIT, || async {
        sms.messages()
            .iter()
            .any(|m| {
                m["to"] == phone(14) && m["text"].as_str().is_some_and(|t| t.contains("password"))
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_revoked_sessions_socket_closes_on_another_node_within_a_second() {
    let nats = tests::NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let db = tests::PgDatabase::create().await.expect("PostgreSQL");
    let sms = SmsGateway::start().await.unwrap();
    let mut nodes = vec![];
    for i in 0..2 {
        let spec = NodeSpec::cluster(&nats.url(), &db.url, &format!("a{i}"), &sms.url);
        nodes.push(
            ArbatProcess::start(spec)
                .await
                .expect("cluster node starts"),
        );
    }
    let (first, second) = (nodes[0].client(), nodes[1].client());
    let session = tokens(&first, 20, "d20").await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let mut socket = Socket::connect(&nodes[1].ws_url(), &token).await.unwrap();
    socket.subscribe(None).await.unwrap();
    assert!(matches!(
        socket.next(WAIT).await.unwrap(),
        Frame::Live { .. }
    ));
    assert_eq!(second.get("/v1/me", Some(&token)).await.unwrap().0, 200);

    let started = std::time::Instant::now();
    let (status, _) = first
        .post("/v1/auth/logout", Some(&token), json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(
        socket.next(Duration::from_secs(1)).await.unwrap(),
        Frame::Closed { code: Some(4003) }
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, body) = second.get("/v1/me", Some(&token)).await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_revoked"))
    );
    // A node started after the revocation refuses the token too (from the store).
    let spec = NodeSpec::cluster(&nats.url(), &db.url, "a2", &sms.url);
    let third = ArbatProcess::start(spec).await.expect("third node");
    assert_eq!(
        third.client().get("/v1/me", Some(&token)).await.unwrap().0,
        401
    );
    // Replayed refresh on one node ends the session everywhere.
    let session = tokens(&second, 21, "d21").await;
    let (status, _) = first
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": session["refresh_token"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = second
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": session["refresh_token"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
}
