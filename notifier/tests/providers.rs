//! Each provider against a local stand-in over a real socket: the exact request the real
//! service expects, and its error answers.

mod common;

use std::time::Duration;

use common::*;
use notifier::providers::apns::{Apns, ApnsConfig};
use notifier::providers::fcm::{Fcm, FcmConfig};
use notifier::providers::sms::{JsonGateway, JsonGatewayConfig, Twilio, TwilioConfig};
use notifier::providers::smtp::Smtp;
use notifier::{Kind, Outgoing, Priority, Provider, SendError};

fn message(to: &str) -> Outgoing {
    Outgoing {
        request_id: "req-1".into(),
        kind: Kind::Transaction,
        priority: Priority::High,
        to: to.into(),
        title: "Transaction −1 234,50 ₽".into(),
        body: "card 220000******1234: −1 234,50 ₽".into(),
        data: [("kind".to_owned(), "transaction".to_owned())].into(),
    }
}

fn fcm(mock: &MockHttp, skew: Duration) -> Fcm {
    let mut config = FcmConfig::new(
        service_account(&format!("{}/token", mock.url)),
        Some(mock.url.clone()),
    );
    config.refresh_skew = skew;
    Fcm::new(config).unwrap()
}

#[tokio::test]
async fn fcm_sends_the_v1_request_and_refreshes_its_token() {
    let mock = mock_fcm(2, |_, _| {
        Reply::ok(r#"{"name":"projects/arbat-test/messages/1"}"#)
    })
    .await;
    let fcm = fcm(&mock, Duration::from_secs(1));
    fcm.send(&message("device-token-1")).await.unwrap();
    fcm.send(&message("device-token-1")).await.unwrap();
    let requests = mock.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/token",
            "/v1/projects/arbat-test/messages:send",
            "/v1/projects/arbat-test/messages:send"
        ],
        "token cached"
    );
    let send = &requests[1];
    assert_eq!(send.method, "POST");
    assert_eq!(send.header("authorization").unwrap(), "Bearer tok-1");
    assert_eq!(
        send.json(),
        serde_json::json!({"message": {
            "token": "device-token-1",
            "notification": {"title": "Transaction −1 234,50 ₽", "body": "card 220000******1234: −1 234,50 ₽"},
            "data": {"kind": "transaction"},
            "android": {"priority": "high"}
        }})
    );
    // The token lives 2 s and is refreshed 1 s before expiry.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fcm.send(&message("device-token-1")).await.unwrap();
    let requests = mock.requests();
    assert_eq!(requests[3].path, "/token");
    assert_eq!(requests[4].header("authorization").unwrap(), "Bearer tok-2");
}

#[tokio::test]
async fn fcm_classifies_errors() {
    let mock = mock_fcm(3600, |req, _| match req.json()["message"]["token"].as_str() {
        Some("gone") => Reply::status(404, r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#),
        Some("bad") => Reply::status(400, r#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT"}}"#),
        Some("busy") => Reply::status(429, "{}").header("retry-after", "7"),
        _ => Reply::status(503, "{}"),
    })
    .await;
    let fcm = fcm(&mock, Duration::from_secs(60));
    assert!(matches!(
        fcm.send(&message("gone")).await,
        Err(SendError::InvalidRecipient { .. })
    ));
    assert!(matches!(
        fcm.send(&message("bad")).await,
        Err(SendError::InvalidRecipient { .. })
    ));
    assert_eq!(
        fcm.send(&message("busy")).await,
        Err(SendError::Retryable {
            reason: "fcm: HTTP 429".into(),
            retry_after: Some(Duration::from_secs(7))
        })
    );
    assert!(matches!(
        fcm.send(&message("down")).await,
        Err(SendError::Retryable {
            retry_after: None,
            ..
        })
    ));
}

#[tokio::test]
async fn apns_sends_over_http2_with_a_provider_token() {
    let mock = MockHttp::start(|req, _| {
        if req.path.ends_with("/dead") {
            Reply::status(
                410,
                r#"{"reason":"Unregistered","timestamp":1700000000000}"#,
            )
        } else {
            Reply::ok("").header("apns-id", "00000000-0000-0000-0000-000000000001")
        }
    })
    .await;
    let config = ApnsConfig::new(
        APNS_KEY.into(),
        "KEY123".into(),
        "TEAM42".into(),
        "ru.arbat.app".into(),
        Some(mock.url.clone()),
    );
    let apns = Apns::new(config).unwrap();
    apns.send(&message("abcdef0123")).await.unwrap();
    let req = &mock.requests()[0];
    assert_eq!(
        req.version,
        hyper::Version::HTTP_2,
        "APNs speaks HTTP/2 only"
    );
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/3/device/abcdef0123")
    );
    assert_eq!(req.header("apns-topic").unwrap(), "ru.arbat.app");
    assert_eq!(req.header("apns-push-type").unwrap(), "alert");
    assert_eq!(req.header("apns-priority").unwrap(), "10");
    let jwt = req
        .header("authorization")
        .unwrap()
        .strip_prefix("bearer ")
        .unwrap()
        .to_owned();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (jsonwebtoken::Algorithm::ES256, Some("KEY123"))
    );
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_ec_pem(APNS_PUB.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["iss"], "TEAM42");
    assert!(claims["iat"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(
        req.json()["aps"]["alert"]["title"],
        "Transaction −1 234,50 ₽"
    );
    assert_eq!(req.json()["kind"], "transaction");
    assert!(matches!(
        apns.send(&message("dead")).await,
        Err(SendError::InvalidRecipient { .. })
    ));
    // The provider token is reused, not re-signed per request.
    assert_eq!(
        mock.requests()[1].header("authorization"),
        mock.requests()[0].header("authorization")
    );
}

#[tokio::test]
async fn sms_gateways_send_the_documented_requests() {
    let mock = MockHttp::start(|_, _| Reply::status(202, "{}")).await;
    let json = JsonGateway::new(JsonGatewayConfig {
        url: format!("{}/sms", mock.url),
        token: Some("s3cret".into()),
        timeout: Duration::from_secs(5),
    });
    json.send(&message("+79990000001")).await.unwrap();
    let req = &mock.requests()[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/sms"));
    assert_eq!(req.header("authorization").unwrap(), "Bearer s3cret");
    assert_eq!(
        req.json(),
        serde_json::json!({"id": "req-1", "to": "+79990000001", "text": "card 220000******1234: −1 234,50 ₽"})
    );

    let twilio = Twilio::new(TwilioConfig {
        base_url: mock.url.clone(),
        account_sid: "AC123".into(),
        auth_token: "tw-token".into(),
        from: "+15550001111".into(),
        timeout: Duration::from_secs(5),
    });
    twilio.send(&message("+79990000001")).await.unwrap();
    let req = &mock.requests()[1];
    assert_eq!(req.path, "/2010-04-01/Accounts/AC123/Messages.json");
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("AC123:tw-token");
    assert_eq!(
        req.header("authorization").unwrap(),
        format!("Basic {basic}")
    );
    let form = url_decode_form(&req.body);
    assert!(form.contains(&("To".into(), "+79990000001".into())));
    assert!(form.contains(&("From".into(), "+15550001111".into())));
    assert!(form.contains(&("Body".into(), "card 220000******1234: −1 234,50 ₽".into())));
}

#[tokio::test]
async fn smtp_delivers_through_lettre() {
    let server = MockSmtp::start().await;
    let smtp = Smtp::new(
        &server.url(),
        "Arbat <bank@arbat.example>",
        Duration::from_secs(5),
    )
    .unwrap();
    smtp.send(&message("client@example.com")).await.unwrap();
    let mails = server.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].from, "<bank@arbat.example>");
    assert_eq!(mails[0].to, vec!["<client@example.com>"]);
    assert!(
        mails[0].data.contains("Message-ID: <req-1@arbat.example>"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("Subject:"));
}
