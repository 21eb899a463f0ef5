//! End-to-end, Access Manager second factors: customers' TOTP (enrolment, login, replay,
//! attempts, removal) and the risk rules that ask a trusted device for a second factor (a
//! new network, recent failures). Other networks are reached by binding the client to
//! another loopback address (127.0.1.1 is in another /24 than 127.0.0.1).

use std::time::Duration;

use serde_json::{Value, json};
use tests::{ArbatProcess, BACKOFFICE_KEY, Client, DEMO_PASSWORD, NodeSpec, SmsGateway, phone};

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

async fn node() -> Node {
    let sms = SmsGateway::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = NodeSpec::embedded(&dir);
    spec.env.push(("ARBAT_SMS_URL".into(), sms.url.clone()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    Node {
        node,
        sms,
        _dir: TempDir(dir),
    }
}

/// A client whose connections come from `source` (another loopback address).
fn client_from(client: &Client, source: [u8; 4]) -> Client {
    Client {
        base: client.base.clone(),
        http: reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(source))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    }
}

async fn login(client: &Client, login: &str, password: &str, device: &str) -> (u16, Value) {
    client
        .post(
            "/v1/auth/login",
            None,
            json!({"login": login, "password": password, "device_id": device}),
        )
        .await
        .unwrap()
}

async fn confirm(client: &Client, id: &Value, body: Value) -> (u16, Value) {
    let id = id.as_str().unwrap();
    client
        .post(&format!("/v1/auth/challenges/{id}/confirm"), None, body)
        .await
        .unwrap()
}

/// `POST /v1/auth/challenges/{id}/sms`: the login challenge's code by SMS, on request.
async fn request_sms(client: &Client, id: &Value) -> (u16, Value) {
    let id = id.as_str().unwrap();
    client
        .post(&format!("/v1/auth/challenges/{id}/sms"), None, json!({}))
        .await
        .unwrap()
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

/// The app's code `steps_ahead` 30-second steps from now (the server accepts one step of
/// drift either way).
fn app_code(secret: &[u8], steps_ahead: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    channels::access::totp::code_at(secret, now + steps_ahead * channels::access::totp::STEP_S)
}

/// A six-digit code that is not `code`.
fn other_than(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

#[tokio::test]
async fn customers_enrol_an_authenticator_app_and_log_in_with_it_once_per_code() {
    let Node { node, sms, _dir } = node().await;
    let client = node.client();
    let me = phone(101);
    // A fresh registration: only the registration device is trusted.
    let (status, body) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"phone": me, "password": PASSWORD, "device_id": "phone-1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let code = sms.code_for(&me, 0).await.unwrap();
    // A TOTP code never confirms anything but a login.
    let (status, refused) = confirm(
        &client,
        &body["challenge_id"],
        json!({"code": code, "method": "totp"}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    let (status, tokens) = confirm(&client, &body["challenge_id"], json!({"code": code})).await;
    assert_eq!(status, 200, "{tokens}");
    let registration_sms = sms.count_to(&me);
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let token = Some(token.as_str());
    let status_of = || async { client.get("/v1/me/totp", token).await.unwrap() };
    assert_eq!(status_of().await.1["status"], "none");

    // Starting needs the password.
    let (status, body) = client
        .post(
            "/v1/me/totp",
            token,
            json!({"current_password": "wrong-password-1"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, _) = client.post("/v1/me/totp", token, json!({})).await.unwrap();
    assert_eq!(status, 400);
    let start = || async {
        let (status, body) = client
            .post("/v1/me/totp", token, json!({"current_password": PASSWORD}))
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        let secret = body["secret"].as_str().unwrap().to_owned();
        let uri = body["otpauth_uri"].as_str().unwrap();
        assert!(uri.starts_with("otpauth://totp/Arbat%3A%2B7"), "{uri}");
        assert!(uri.contains(&format!("secret={secret}")), "{uri}");
        base32_decode(&secret)
    };
    let abandoned = start().await;
    assert_eq!(status_of().await.1["status"], "pending");
    // Five wrong codes, then even the right one is refused until a new start.
    let right = app_code(&abandoned, 0);
    for _ in 0..5 {
        let (status, body) = client
            .post(
                "/v1/me/totp/confirm",
                token,
                json!({"code": other_than(&right)}),
            )
            .await
            .unwrap();
        assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));
    }
    let (status, body) = client
        .post("/v1/me/totp/confirm", token, json!({"code": right}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    assert_eq!(status_of().await.1["status"], "pending");
    // A new start replaces the secret: the old app's codes are worthless.
    let secret = start().await;
    assert_ne!(secret, abandoned);
    let (status, _) = client
        .post(
            "/v1/me/totp/confirm",
            token,
            json!({"code": app_code(&abandoned, 0)}),
        )
        .await
        .unwrap();
    assert_eq!(status, 422);
    // Codes below are relative to this moment, so that a step boundary passing during the
    // test changes nothing: the enrolment spends step s, the login uses step s + 1.
    let t0 = time::OffsetDateTime::now_utc().unix_timestamp();
    let step_code = |steps_after: i64| {
        channels::access::totp::code_at(&secret, t0 + steps_after * channels::access::totp::STEP_S)
    };
    let (status, body) = client
        .post("/v1/me/totp/confirm", token, json!({"code": step_code(0)}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("enrolled")),
        "{body}"
    );
    // Enrolled: the secret is never shown again, and a second start is refused.
    let (status, body) = status_of().await;
    assert_eq!((status, body.clone()), (200, json!({"status": "enrolled"})));
    let (status, body) = client
        .post("/v1/me/totp", token, json!({"current_password": PASSWORD}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("totp_enrolled"))
    );
    assert!(body.get("secret").is_none());

    // A new device: the login answer offers the app, and its code logs in.
    let (status, challenge) = login(&client, &me, PASSWORD, "laptop").await;
    assert_eq!(status, 202, "{challenge}");
    assert_eq!(challenge["reason"], "new_device");
    assert_eq!(challenge["methods"], json!(["totp", "sms"]));
    let (status, body) = confirm(
        &client,
        &challenge["challenge_id"],
        json!({"code": other_than(&step_code(1)), "method": "totp"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));
    // The code that confirmed the enrolment is spent already.
    let (status, body) = confirm(
        &client,
        &challenge["challenge_id"],
        json!({"code": step_code(0), "method": "totp"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));
    // The next step's code works (one step of drift is allowed).
    let used = step_code(1);
    let (status, body) = confirm(
        &client,
        &challenge["challenge_id"],
        json!({"code": used, "method": "totp"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].as_str().is_some());
    // The same code again, on a fresh challenge: refused (its time step is spent).
    let (status, challenge) = login(&client, &me, PASSWORD, "tablet").await;
    assert_eq!(status, 202, "{challenge}");
    let (status, body) = confirm(
        &client,
        &challenge["challenge_id"],
        json!({"code": used, "method": "totp"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));
    // Attempts are counted per challenge whichever factor is used: the sixth is refused.
    // With the app enrolled, the SMS comes only when asked for.
    let (status, challenge) = login(&client, &me, PASSWORD, "watch").await;
    assert_eq!(status, 202, "{challenge}");
    let sent = sms.count_to(&me);
    let (status, body) = request_sms(&client, &challenge["challenge_id"]).await;
    assert_eq!(status, 202, "{body}");
    let sms_code = sms.code_for(&me, sent).await.unwrap();
    // None of the three logins with the app enrolled sent an SMS by itself.
    assert_eq!(sms.count_to(&me), registration_sms + 1);
    for _ in 0..5 {
        let (status, _) = confirm(
            &client,
            &challenge["challenge_id"],
            json!({"code": other_than(&sms_code), "method": "totp"}),
        )
        .await;
        assert_eq!(status, 422);
    }
    let (status, body) = confirm(
        &client,
        &challenge["challenge_id"],
        json!({"code": sms_code}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts"))
    );

    // Removal needs the password; then logins offer SMS only and TOTP codes are refused.
    let (status, body) = client
        .post(
            "/v1/me/totp/remove",
            token,
            json!({"current_password": "wrong-password-1"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let (status, _) = client
        .post("/v1/me/totp/remove", token, json!({}))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(status_of().await.1["status"], "enrolled");
    let (status, _) = client
        .post(
            "/v1/me/totp/remove",
            token,
            json!({"current_password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(status_of().await.1["status"], "none");
    let (status, body) = client
        .post(
            "/v1/me/totp/remove",
            token,
            json!({"current_password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("totp_not_enrolled"))
    );
    let (status, challenge) = login(&client, &me, PASSWORD, "desktop").await;
    assert_eq!(status, 202, "{challenge}");
    assert_eq!(challenge["methods"], json!(["sms"]));
    let (status, _) = confirm(
        &client,
        &challenge["challenge_id"],
        json!({"code": app_code(&secret, 0), "method": "totp"}),
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_trusted_device_still_gets_a_second_factor_after_a_risk_signal() {
    let Node { node, sms, _dir } = node().await;
    let here = node.client();
    let elsewhere = client_from(&here, [127, 0, 1, 1]);
    // Demo customers trust every device. The first login teaches the network.
    let me = phone(5);
    assert_eq!(login(&here, &me, DEMO_PASSWORD, "d1").await.0, 200);
    assert_eq!(login(&here, &me, DEMO_PASSWORD, "d1").await.0, 200);
    // Another /24: a second factor, without saying which signal fired.
    let (status, challenge) = login(&elsewhere, &me, DEMO_PASSWORD, "d1").await;
    assert_eq!(status, 202, "{challenge}");
    assert_eq!(challenge["reason"], "risk");
    assert_eq!(challenge["methods"], json!(["sms"]));
    let code = sms.code_for(&me, 0).await.unwrap();
    let (status, body) = confirm(
        &elsewhere,
        &challenge["challenge_id"],
        json!({"code": code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Now that network is known too; the first one still is.
    assert_eq!(login(&elsewhere, &me, DEMO_PASSWORD, "d1").await.0, 200);
    assert_eq!(login(&here, &me, DEMO_PASSWORD, "d1").await.0, 200);

    // Three failed attempts on a login, then the right password: a second factor.
    let other = phone(6);
    assert_eq!(login(&here, &other, DEMO_PASSWORD, "d1").await.0, 200);
    for _ in 0..2 {
        assert_eq!(login(&here, &other, "wrong-password-1", "d1").await.0, 401);
    }
    // Two are not enough (and the success resets the count).
    assert_eq!(login(&here, &other, DEMO_PASSWORD, "d1").await.0, 200);
    for _ in 0..3 {
        assert_eq!(login(&here, &other, "wrong-password-1", "d1").await.0, 401);
    }
    let (status, challenge) = login(&here, &other, DEMO_PASSWORD, "d1").await;
    assert_eq!(
        (status, challenge["reason"].as_str()),
        (202, Some("risk")),
        "{challenge}"
    );
    // The password alone does not clear the signal: trying again asks again.
    let (status, challenge) = login(&here, &other, DEMO_PASSWORD, "d1").await;
    assert_eq!(
        (status, challenge["reason"].as_str()),
        (202, Some("risk")),
        "{challenge}"
    );
    let code = sms.code_for(&other, 1).await.unwrap();
    let (status, body) = confirm(&here, &challenge["challenge_id"], json!({"code": code})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(login(&here, &other, DEMO_PASSWORD, "d1").await.0, 200);
}

/// Registers `me` from `device`; returns the access token.
async fn register(client: &Client, sms: &SmsGateway, me: &str, device: &str) -> String {
    let (status, body) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"phone": me, "password": PASSWORD, "device_id": device}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let code = sms.code_for(me, 0).await.unwrap();
    let (status, tokens) = confirm(client, &body["challenge_id"], json!({"code": code})).await;
    assert_eq!(status, 200, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// Enrols an authenticator app with the current step's code; returns its secret.
async fn enrol_app(client: &Client, token: &str) -> Vec<u8> {
    let (status, body) = client
        .post(
            "/v1/me/totp",
            Some(token),
            json!({"current_password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let secret = base32_decode(body["secret"].as_str().unwrap());
    let (status, body) = client
        .post(
            "/v1/me/totp/confirm",
            Some(token),
            json!({"code": app_code(&secret, 0)}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    secret
}

#[tokio::test]
async fn a_customer_with_an_app_gets_an_sms_code_only_when_asking_for_one() {
    let Node { node, sms, _dir } = node().await;
    let client = node.client();

    // Without an app: the SMS goes at once, and there is nothing to ask for.
    let plain = phone(105);
    let plain_token = register(&client, &sms, &plain, "phone-1").await;
    let (status, challenge) = login(&client, &plain, PASSWORD, "laptop").await;
    assert_eq!(status, 202, "{challenge}");
    assert_eq!(challenge["methods"], json!(["sms"]));
    let code = sms.code_for(&plain, 1).await.unwrap();
    assert_eq!(
        request_sms(&client, &challenge["challenge_id"]).await.0,
        404
    );
    // Unknown, malformed and other customers' or other purposes' challenges: 404.
    for id in [
        json!(uuid::Uuid::new_v4().to_string()),
        json!("x".repeat(65)),
    ] {
        let (status, body) = request_sms(&client, &id).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    }
    let (status, step_up) = client
        .post(
            "/v1/auth/step-up",
            Some(&plain_token),
            json!({"operation": "transfer.phone", "amount": {"amount": "5000.00", "currency": "RUB"}, "payee": "+79990000002"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{step_up}");
    assert_eq!(request_sms(&client, &step_up["challenge_id"]).await.0, 404);
    let (status, _) = confirm(&client, &challenge["challenge_id"], json!({"code": code})).await;
    assert_eq!(status, 200);

    // With an app: the login offers it first and sends nothing.
    let me = phone(106);
    let token = register(&client, &sms, &me, "phone-1").await;
    let secret = enrol_app(&client, &token).await;
    let registration_sms = sms.count_to(&me);
    let (status, challenge) = login(&client, &me, PASSWORD, "laptop").await;
    assert_eq!(status, 202, "{challenge}");
    assert_eq!(challenge["methods"], json!(["totp", "sms"]));
    let id = &challenge["challenge_id"];
    // A wrong app code: one attempt.
    let wrong = other_than(&app_code(&secret, 1));
    let (status, _) = confirm(&client, id, json!({"code": wrong, "method": "totp"})).await;
    assert_eq!(status, 422);
    // The SMS on request; asking again draws a new code, and the first stops working.
    let (status, body) = request_sms(&client, id).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["challenge_id"], *id);
    assert!(body["expires_in"].as_i64().unwrap() <= 300, "{body}");
    let first = sms.code_for(&me, registration_sms).await.unwrap();
    let (status, _) = request_sms(&client, id).await;
    assert_eq!(status, 202);
    let second = sms.code_for(&me, registration_sms + 1).await.unwrap();
    // Nothing was sent but the two codes asked for.
    assert_eq!(sms.count_to(&me), registration_sms + 2);
    if first != second {
        let (status, body) = confirm(&client, id, json!({"code": first})).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("invalid_code")));
    } else {
        let (status, _) = confirm(&client, id, json!({"code": other_than(&second)})).await;
        assert_eq!(status, 422);
    }
    // Asking for the SMS never resets the attempts: 2 made, 3 more wrong, then even the
    // right code is refused, and the exhausted challenge sends nothing more.
    for _ in 0..3 {
        let (status, _) = confirm(&client, id, json!({"code": other_than(&second)})).await;
        assert_eq!(status, 422);
    }
    let (status, body) = confirm(&client, id, json!({"code": second})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    assert_eq!(request_sms(&client, id).await.0, 404);

    // A fresh login: the SMS code asked for logs in; the used challenge sends nothing more.
    let (status, challenge) = login(&client, &me, PASSWORD, "tablet").await;
    assert_eq!(status, 202, "{challenge}");
    let id = &challenge["challenge_id"];
    let (status, _) = request_sms(&client, id).await;
    assert_eq!(status, 202);
    let code = sms.code_for(&me, registration_sms + 2).await.unwrap();
    let (status, tokens) = confirm(&client, id, json!({"code": code})).await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].as_str().is_some());
    assert_eq!(request_sms(&client, id).await.0, 404);

    // Sends are rate-limited per phone like every other (a burst of 5, the registration's
    // included): the fifth send passes, the sixth waits.
    let (status, challenge) = login(&client, &me, PASSWORD, "watch").await;
    assert_eq!(status, 202, "{challenge}");
    let id = &challenge["challenge_id"];
    let (status, _) = request_sms(&client, id).await;
    assert_eq!(status, 202);
    let (status, body) = request_sms(&client, id).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // The login with the app still works on that challenge.
    let (status, body) = confirm(
        &client,
        id,
        json!({"code": app_code(&secret, 1), "method": "totp"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Every request is audited: four sends, one refused by the rate limit.
    let (status, body) = client
        .post(
            "/admin/v1/staff",
            Some(BACKOFFICE_KEY),
            json!({"login": "sec-1", "role": "security", "password": "staff-pass-12345"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let staff_secret = base32_decode(body["totp_secret"].as_str().unwrap());
    let (status, staff) = client
        .post(
            "/staff/v1/auth/login",
            None,
            json!({"login": "sec-1", "password": "staff-pass-12345", "totp": app_code(&staff_secret, 0)}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{staff}");
    let (status, audit) = client
        .get("/staff/v1/audit?limit=200", staff["access_token"].as_str())
        .await
        .unwrap();
    assert_eq!(status, 200, "{audit}");
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["kind"] == "login_sms_requested"
                && entry["actor"] == tests::customer(106).as_str()
        })
        .filter_map(|entry| entry["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["refused", "ok", "ok", "ok", "ok"]);
}
