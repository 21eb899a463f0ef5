//! End-to-end, Access Manager (issue 4, rest): registration by card number and phone change
//! with re-authentication. The node's whole log (debug level) is captured so that the tests
//! can check that no card number ever reaches it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tests::{Client, DEMO_PASSWORD, NodeSpec, SmsGateway, phone};

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "green-river-42";

/// A node whose stdout and stderr go to a file; killed on drop, folder removed.
struct LoggedNode {
    child: Child,
    client: Client,
    sms: SmsGateway,
    dir: std::path::PathBuf,
}

impl LoggedNode {
    async fn start() -> Self {
        let sms = SmsGateway::start().await.unwrap();
        let dir = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = NodeSpec::embedded(&dir.join("data"));
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = Command::new(tests::arbat_binary())
            .args(&spec.args)
            .env("ARBAT_SMS_URL", &sms.url)
            .env("ARBAT_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let client = Client {
            base: format!("http://127.0.0.1:{}", spec.port),
            http: reqwest::Client::new(),
        };
        let node = Self {
            child,
            client,
            sms,
            dir,
        };
        tests::eventually("the node is ready", Duration::from_secs(60), || async {
            let url = format!("{}/readyz", node.client.base);
            let ok = node.client.http.get(url).send().await;
            ok.is_ok_and(|r| r.status().is_success()).then_some(())
        })
        .await;
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn confirm(client: &Client, id: &str, code: &str, token: Option<&str>) -> (u16, Value) {
    client
        .post(
            &format!("/v1/auth/challenges/{id}/confirm"),
            token,
            json!({"code": code}),
        )
        .await
        .unwrap()
}

fn shape(body: &Value) -> (Vec<String>, Value) {
    let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    (keys, body["expires_in"].clone())
}

#[tokio::test]
async fn registration_by_card_number_checked_against_the_abs() {
    let node = LoggedNode::start().await;
    let client = &node.client;
    let pan = abs::demo::pan(150);
    // Spaced as printed on the card.
    let typed = format!(
        "{} {} {} {}",
        &pan[..4],
        &pan[4..8],
        &pan[8..12],
        &pan[12..]
    );
    let (status, known) = client
        .post(
            "/v1/auth/register",
            None,
            json!({"card_number": typed, "password": PASSWORD, "device_id": "card-1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{known}");
    // The code goes to the phone on file.
    let code = node.sms.code_for(&phone(150), 0).await.unwrap();
    // An unknown (well-formed) card and a registered customer's card: the same answer, no SMS.
    let unknown_pan = "2202209999999997";
    assert!(abs::cards::luhn_valid(unknown_pan));
    let mut answers = vec![];
    for card in [unknown_pan.to_owned(), abs::demo::pan(3)] {
        let (status, body) = client
            .post(
                "/v1/auth/register",
                None,
                json!({"card_number": card, "password": PASSWORD}),
            )
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(shape(&body), shape(&known));
        answers.push(body);
    }
    let (status, decoy) = confirm(
        client,
        answers[0]["challenge_id"].as_str().unwrap(),
        &code,
        None,
    )
    .await;
    assert_eq!(
        (status, decoy["code"].as_str()),
        (422, Some("invalid_code"))
    );
    // A malformed number is a 400 that does not echo it; both fields at once are refused.
    for body in [
        json!({"card_number": "2202201234567890", "password": PASSWORD}),
        json!({"card_number": 2202201234567891u64, "password": PASSWORD}),
        json!({"card_number": pan, "phone": phone(150), "password": PASSWORD}),
        json!({"card_number": pan, "phone": null, "password": PASSWORD}),
        json!({"password": PASSWORD}),
    ] {
        let (status, answer) = client.post("/v1/auth/register", None, body).await.unwrap();
        assert_eq!(status, 400, "{answer}");
        assert!(!answer.to_string().contains("220220123456789"), "{answer}");
    }
    // The right code registers the phone on file as the login.
    let (status, tokens) =
        confirm(client, known["challenge_id"].as_str().unwrap(), &code, None).await;
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap();
    let (status, me) = client.get("/v1/me", Some(token)).await.unwrap();
    assert_eq!((status, me["customer_id"].as_str()), (200, Some("c000150")));
    let (status, _) = client
        .post(
            "/v1/auth/login",
            None,
            json!({"login": phone(150), "password": PASSWORD, "device_id": "card-1"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    // No full PAN anywhere: answers (checked above), SMS, the node's log.
    let (_, products) = client.get("/v1/products", Some(token)).await.unwrap();
    for text in [
        products.to_string(),
        serde_json::to_string(&node.sms.messages()).unwrap(),
        node.log(),
    ] {
        for number in [&pan, &abs::demo::pan(3), &unknown_pan.to_owned()] {
            assert!(!text.contains(number.as_str()), "a PAN leaked");
        }
    }
    assert!(!node.log().is_empty(), "the log was captured");
}

#[tokio::test]
async fn a_phone_change_needs_the_password_and_a_code_sent_to_the_new_phone() {
    let node = LoggedNode::start().await;
    let client = &node.client;
    let login = |device: &'static str| async move {
        let (status, body) = client
            .post(
                "/v1/auth/login",
                None,
                json!({"login": phone(21), "password": DEMO_PASSWORD, "device_id": device}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    };
    let current = login("p21").await;
    let other = login("p21b").await;
    let new_phone = "+79991234567";
    let start = |password: &'static str, to: &'static str| {
        let token = current.clone();
        async move {
            client
                .post(
                    "/v1/me/phone",
                    Some(&token),
                    json!({"current_password": password, "new_phone": to, "end_other_sessions": true}),
                )
                .await
                .unwrap()
        }
    };
    // A wrong password: 401, no code sent.
    let (status, body) = start("wrong-password-1", new_phone).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    // Without a token: 401.
    let (status, _) = client
        .post(
            "/v1/me/phone",
            None,
            json!({"current_password": DEMO_PASSWORD, "new_phone": new_phone}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = start(DEMO_PASSWORD, phone(21).leak()).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("same_phone")));
    let (status, started) = start(DEMO_PASSWORD, new_phone).await;
    assert_eq!(status, 202, "{started}");
    let challenge = started["challenge_id"].as_str().unwrap();
    let code = node.sms.code_for(new_phone, 0).await.unwrap();
    assert_eq!(
        node.sms.count_to(&phone(21)),
        0,
        "the code goes to the new phone"
    );
    // Another customer cannot confirm it; nor can anyone without a token.
    let (status, _) = confirm(client, challenge, &code, None).await;
    assert_eq!(status, 401);
    let stranger = {
        let (_, body) = client
            .post(
                "/v1/auth/login",
                None,
                json!({"login": phone(22), "password": DEMO_PASSWORD, "device_id": "p22"}),
            )
            .await
            .unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    };
    let (status, _) = confirm(client, challenge, &code, Some(&stranger)).await;
    assert_eq!(status, 404);
    // The owner confirms: the phone and the login move, the other session ends.
    let (status, done) = confirm(client, challenge, &code, Some(&current)).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["phone"], new_phone);
    assert_eq!(done["other_sessions"], 1);
    // Replayed code: spent.
    let (status, body) = confirm(client, challenge, &code, Some(&current)).await;
    assert_eq!((status, body["code"].as_str()), (410, Some("code_used")));
    assert_eq!(client.get("/v1/me", Some(&other)).await.unwrap().0, 401);
    let (status, me) = client.get("/v1/me", Some(&current)).await.unwrap();
    assert_eq!((status, me["phone"].as_str()), (200, Some(new_phone)));
    let relogin = |login: String| async move {
        client
            .post(
                "/v1/auth/login",
                None,
                json!({"login": login, "password": DEMO_PASSWORD, "device_id": "p21"}),
            )
            .await
            .unwrap()
            .0
    };
    assert_eq!(relogin(phone(21)).await, 401);
    assert_eq!(relogin(new_phone.to_owned()).await, 200);
    // The old phone gets a security alert.
    tests::eventually("a security alert to the old phone", WAIT, || async {
        node.sms
            .messages()
            .iter()
            .any(|m| {
                m["to"] == phone(21) && m["text"].as_str().is_some_and(|t| t.contains("phone"))
            })
            .then_some(())
    })
    .await;
    // Another customer's phone cannot be taken, even with the code sent to it.
    let mine = login_token(client, 23).await;
    let (status, started) = client
        .post(
            "/v1/me/phone",
            Some(&mine),
            json!({"current_password": DEMO_PASSWORD, "new_phone": new_phone}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{started}");
    let code = node.sms.code_for(new_phone, 1).await.unwrap();
    let (status, body) = confirm(
        client,
        started["challenge_id"].as_str().unwrap(),
        &code,
        Some(&mine),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("phone_in_use")));
}

async fn login_token(client: &Client, n: u32) -> String {
    let (status, body) = client
        .post(
            "/v1/auth/login",
            None,
            json!({"login": phone(n), "password": DEMO_PASSWORD, "device_id": format!("d{n}")}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Timing check against enumeration: registering a phone the bank knows and one it does not
/// take the same work on the request path (an argon2 hash, a challenge write, an audit entry,
/// one hand-over to the send queue; the SMS leaves after the answer). Interleaved samples in
/// ABBA order, medians, and a factor of 2: measured ratios were 0.92 to 1.09 with the machine
/// at a load of 10 on 2 cores, and a path that skipped the hash would be ~50×.
#[tokio::test]
async fn registration_takes_as_long_for_unknown_phones_as_for_known_ones() {
    let node = LoggedNode::start().await;
    let client = &node.client;
    let time = |who: String| async move {
        let started = std::time::Instant::now();
        let (status, body) = client
            .post(
                "/v1/auth/register",
                None,
                json!({"phone": who, "password": PASSWORD}),
            )
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        started.elapsed()
    };
    // Warm-up: the first requests pay for connections and lazy initialisation.
    time(phone(199)).await;
    time("+79997650999".to_owned()).await;
    // In ABBA order, so that each kind follows each kind equally often: whatever one request
    // leaves running in the background (an SMS on its way) weighs on both kinds alike.
    let (mut known, mut unknown) = (vec![], vec![]);
    for i in 0..24 {
        let known_phone = phone(160 + i);
        let unknown_phone = format!("+7999765{:04}", i);
        if i % 2 == 0 {
            known.push(time(known_phone).await);
            unknown.push(time(unknown_phone).await);
        } else {
            unknown.push(time(unknown_phone).await);
            known.push(time(known_phone).await);
        }
    }
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2].as_secs_f64()
    };
    let (known, unknown) = (median(known), median(unknown));
    let ratio = known / unknown;
    eprintln!("registration medians: known {known:.4} s, unknown {unknown:.4} s, ratio {ratio:.2}");
    assert!(
        (1.0 / 2.0..=2.0).contains(&ratio),
        "known {known:.4} s vs unknown {unknown:.4} s"
    );
}
