//! The worker end to end on the embedded queue (SQLite), providers on local servers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kernel::CustomerId;
use notifier::providers::apns::{Apns, ApnsConfig};
use notifier::providers::fcm::{Fcm, FcmConfig};
use notifier::providers::sms::{JsonGateway, JsonGatewayConfig};
use notifier::providers::smtp::Smtp;
use notifier::resilience::Backoff;
use notifier::*;
use serde_json::json;

struct Rig {
    store: Arc<SqlStore>,
    queue: Arc<StoreQueue>,
    notifier: Arc<Notifier>,
    sms: MockHttp,
    fcm: MockHttp,
    apns: MockHttp,
    smtp: MockSmtp,
}

fn fast_options() -> WorkerOptions {
    WorkerOptions {
        max_deliveries: 4,
        redelivery: Backoff {
            base: Duration::from_millis(30),
            max: Duration::from_millis(100),
        },
        inline_attempts: 3,
        inline_backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        max_inline_wait: Duration::from_secs(2),
        provider_timeout: Duration::from_secs(5),
        concurrency: 8,
        ..WorkerOptions::default()
    }
}

async fn rig(
    options: WorkerOptions,
    sms: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    fcm: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
) -> Rig {
    let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
    let queue = Arc::new(StoreQueue::new(store.clone(), Duration::from_millis(700)));
    let sms = MockHttp::start(sms).await;
    let fcm = mock_fcm(3600, fcm).await;
    let apns = MockHttp::start(|req, _| {
        if req.path.ends_with("/dead-ios") {
            Reply::status(410, r#"{"reason":"Unregistered"}"#)
        } else {
            Reply::ok("")
        }
    })
    .await;
    let smtp = MockSmtp::start().await;
    let providers = Providers {
        fcm: Some(Arc::new(
            Fcm::new(FcmConfig::new(
                service_account(&format!("{}/token", fcm.url)),
                Some(fcm.url.clone()),
            ))
            .unwrap(),
        )),
        apns: Some(Arc::new(
            Apns::new(ApnsConfig::new(
                APNS_KEY.into(),
                "K".into(),
                "T".into(),
                "ru.arbat.app".into(),
                Some(apns.url.clone()),
            ))
            .unwrap(),
        )),
        sms: Some(Arc::new(JsonGateway::new(JsonGatewayConfig {
            url: format!("{}/sms", sms.url),
            token: None,
            timeout: Duration::from_secs(5),
        }))),
        email: Some(Arc::new(
            Smtp::new(&smtp.url(), "bank@arbat.example", Duration::from_secs(5)).unwrap(),
        )),
    };
    let notifier = Notifier::new(
        store.clone(),
        Arc::new(Templates::builtin()),
        providers,
        Arc::new(NoopSink),
        options,
    );
    Rig {
        store,
        queue,
        notifier,
        sms,
        fcm,
        apns,
        smtp,
    }
}

fn customer(n: u32) -> CustomerId {
    CustomerId::parse(&format!("c{n}")).unwrap()
}

fn transaction(id: &str, c: &CustomerId) -> NotificationRequest {
    NotificationRequest::new(
        id,
        c.clone(),
        Kind::Transaction,
        json!({
            "amount": {"amount": "-1234.50", "currency": "RUB"},
            "balance": {"amount": "10000.00", "currency": "RUB"},
            "description": "Shop, card 4111 1111 1111 1111",
            "card": "2200000000001234",
            "at": "2026-12-04T10:05:00Z"
        }),
    )
}

async fn prefs(store: &SqlStore, c: &CustomerId, p: serde_json::Value) {
    let p: Preferences = serde_json::from_value(p).unwrap();
    store.put_preferences(c, &p).await.unwrap();
}

async fn device(store: &SqlStore, c: &CustomerId, platform: Platform, token: &str) {
    store
        .upsert_device(
            c,
            &Device {
                platform,
                token: token.into(),
                language: None,
            },
        )
        .await
        .unwrap();
}

async fn drain(rig: &Rig) {
    let store = rig.store.clone();
    testkit::eventually("queue drained", Duration::from_secs(10), || {
        let store = store.clone();
        async move { (store.queue_len().await.unwrap() == 0).then_some(()) }
    })
    .await;
}

fn fcm_sends(rig: &Rig) -> Vec<Recorded> {
    rig.fcm
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("messages:send"))
        .collect()
}

#[tokio::test]
async fn routes_by_channel_language_and_masks_pans_everywhere() {
    let rig = rig(
        fast_options(),
        |_, _| Reply::ok("{}"),
        |_, _| Reply::ok("{}"),
    )
    .await;
    let (a, b, m) = (customer(1), customer(2), customer(3));
    prefs(
        &rig.store,
        &a,
        json!({"language": "en", "phone": "+79990000001", "email": "a@example.com",
        "kinds": {"transaction": {"channels": ["push", "sms", "email"]}}}),
    )
    .await;
    device(&rig.store, &a, Platform::Android, "android-a").await;
    device(&rig.store, &a, Platform::Ios, "ios-a").await;
    prefs(
        &rig.store,
        &b,
        json!({"language": "ru", "phone": "+79990000002"}),
    )
    .await;
    // No device for b: push falls back to SMS (default rule for transactions).
    prefs(&rig.store, &m, json!({"phone": "+79990000003"})).await;
    rig.queue.enqueue(&transaction("t-a", &a)).await.unwrap();
    rig.queue.enqueue(&transaction("t-b", &b)).await.unwrap();
    let mut mail = NotificationRequest::new(
        "m-1",
        m.clone(),
        Kind::Mail,
        json!({"subject": "Hi", "text": "Your card 5555 5555 5555 4444"}),
    );
    mail.email = Some("m@example.com".into());
    rig.queue.enqueue(&mail).await.unwrap();
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    drain(&rig).await;
    workers.stop().await;

    let fcm = fcm_sends(&rig);
    assert_eq!(fcm.len(), 1);
    assert_eq!(
        fcm[0].json()["message"]["notification"]["title"],
        "Transaction −RUB 1,234.50"
    );
    assert_eq!(rig.apns.count(), 1);
    let sms = rig.sms.requests();
    let texts: Vec<(String, String)> = sms
        .iter()
        .map(|r| {
            (
                r.json()["to"].as_str().unwrap().to_owned(),
                r.json()["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        texts
            .iter()
            .any(|(to, t)| to == "+79990000001"
                && t.contains("card 220000******1234: −RUB 1,234.50")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(
            |(to, t)| to == "+79990000002" && t.contains("карта 220000******1234: −1 234,50 ₽")
        ),
        "{texts:?}"
    );
    let mails = rig.smtp.mails();
    assert_eq!(mails.len(), 2);
    // PANs never leave in full, on any channel.
    let everything = format!(
        "{:?}{:?}{:?}{:?}",
        fcm.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
        rig.apns
            .requests()
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>(),
        texts,
        mails
    );
    for pan in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "2200000000001234",
        "5555 5555 5555 4444",
        "5555555555554444",
    ] {
        assert!(!everything.contains(pan), "{pan} leaked");
    }
    assert!(everything.contains("555555******4444"));
    let outcomes = rig.store.outcomes("t-b").await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(
        (outcomes[0].channel, outcomes[0].status),
        (Some(Channel::Sms), OutcomeStatus::Accepted)
    );
    assert_eq!(rig.notifier.metrics().get("sms", "accepted"), 2);
}

#[tokio::test]
async fn push_reaching_no_device_falls_back_to_sms_and_dead_tokens_are_dropped() {
    let rig = rig(fast_options(), |_, _| Reply::ok("{}"), |_, _| {
        Reply::status(404, r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#)
    })
    .await;
    let c = customer(1);
    prefs(&rig.store, &c, json!({"phone": "+79990000001"})).await;
    device(&rig.store, &c, Platform::Android, "dead-android").await;
    device(&rig.store, &c, Platform::Ios, "dead-ios").await;
    rig.queue.enqueue(&transaction("t-1", &c)).await.unwrap();
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    drain(&rig).await;
    workers.stop().await;
    assert_eq!(rig.sms.count(), 1, "fell back to SMS");
    assert!(
        rig.store.devices(&c).await.unwrap().is_empty(),
        "both dead tokens unregistered"
    );
    let outcomes = rig.store.outcomes("t-1").await.unwrap();
    let by_channel: Vec<_> = outcomes
        .iter()
        .map(|o| (o.channel.unwrap(), o.status))
        .collect();
    assert_eq!(
        by_channel,
        vec![
            (Channel::Push, OutcomeStatus::Failed),
            (Channel::Sms, OutcomeStatus::Accepted)
        ]
    );
}

#[tokio::test]
async fn retries_429_with_retry_after_and_5xx_then_succeeds() {
    let rig = rig(
        fast_options(),
        |_, n| match n {
            0 => Reply::status(429, "slow down").header("retry-after", "1"),
            1 => Reply::status(502, "bad gateway"),
            _ => Reply::ok("{}"),
        },
        |_, _| Reply::ok("{}"),
    )
    .await;
    let c = customer(1);
    let mut code = NotificationRequest::new(
        "code-1",
        c.clone(),
        Kind::Code,
        json!({"code": "123456", "purpose": "login"}),
    );
    code.phone = Some("+79990000001".into());
    rig.queue.enqueue(&code).await.unwrap();
    let started = std::time::Instant::now();
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    drain(&rig).await;
    workers.stop().await;
    assert_eq!(rig.sms.count(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(rig.notifier.metrics().get("sms", "retry"), 2);
    assert_eq!(
        rig.store.send_state("code-1", Channel::Sms).await.unwrap(),
        Some(SendState::Sent)
    );
}

#[tokio::test]
async fn breaker_opens_on_an_outage_and_closes_after_it() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let options = WorkerOptions {
        inline_attempts: 1,
        breaker_threshold: 2,
        breaker_cooldown: Duration::from_millis(300),
        max_deliveries: 50,
        concurrency: 1,
        ..fast_options()
    };
    let rig = rig(
        options,
        move |_, _| {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::ok("{}")
            } else {
                Reply::status(503, "")
            }
        },
        |_, _| Reply::ok("{}"),
    )
    .await;
    for i in 0..3 {
        let mut code = NotificationRequest::new(
            format!("code-{i}"),
            customer(i),
            Kind::Code,
            json!({"code": "1", "purpose": "p"}),
        );
        code.phone = Some("+79990000001".into());
        rig.queue.enqueue(&code).await.unwrap();
    }
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    let metrics = rig.notifier.metrics().clone();
    testkit::eventually("breaker open", Duration::from_secs(5), || {
        let m = metrics.clone();
        async move { (m.get("sms", "breaker_open") >= 2).then_some(()) }
    })
    .await;
    let hits_while_open = rig.sms.count();
    assert!(
        hits_while_open <= 4,
        "an open breaker keeps calls away: {hits_while_open}"
    );
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    drain(&rig).await;
    workers.stop().await;
    let ok = rig.sms.requests().len() - hits_while_open;
    assert_eq!(
        ok, 3,
        "after the cool-down a probe closes the breaker and all three go"
    );
}

#[tokio::test]
async fn quiet_hours_hold_offers_but_not_codes() {
    let rig = rig(
        fast_options(),
        |_, _| Reply::ok("{}"),
        |_, _| Reply::ok("{}"),
    )
    .await;
    let c = customer(1);
    // Quiet right now: from one hour ago to one hour ahead (UTC offset 0).
    let now = time::OffsetDateTime::now_utc();
    let hhmm = |t: time::OffsetDateTime| format!("{:02}:{:02}", t.hour(), t.minute());
    prefs(&rig.store, &c, json!({"phone": "+79990000001", "utc_offset_minutes": 0,
        "quiet_hours": {"start": hhmm(now - time::Duration::hours(1)), "end": hhmm(now + time::Duration::hours(1))},
        "kinds": {"offer": {"channels": ["sms"]}}})).await;
    rig.queue
        .enqueue(&NotificationRequest::new(
            "offer-1",
            c.clone(),
            Kind::Offer,
            json!({"title": "Deposit 20%", "text": "Open now"}),
        ))
        .await
        .unwrap();
    rig.queue
        .enqueue(&NotificationRequest::new(
            "code-1",
            c.clone(),
            Kind::Code,
            json!({"code": "654321", "purpose": "login"}),
        ))
        .await
        .unwrap();
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    let sms = rig.sms.requests.clone();
    testkit::eventually("code sent", Duration::from_secs(5), || {
        let sms = sms.clone();
        async move { (!sms.lock().unwrap().is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers.stop().await;
    let sent: Vec<String> = rig
        .sms
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent, vec!["code-1"], "the offer waits for the morning");
    assert_eq!(rig.store.queue_len().await.unwrap(), 1);
}

#[tokio::test]
async fn malformed_requests_go_to_the_dead_letter_queue_with_a_reason() {
    let rig = rig(
        fast_options(),
        |_, _| Reply::ok("{}"),
        |_, _| Reply::ok("{}"),
    )
    .await;
    rig.queue
        .enqueue_outbox("notify.req.normal", b"{not json")
        .await
        .unwrap();
    let bad_params = NotificationRequest::new(
        "t-bad",
        customer(1),
        Kind::Transaction,
        json!({"amount": 5}),
    );
    rig.queue.enqueue(&bad_params).await.unwrap();
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    drain(&rig).await;
    workers.stop().await;
    let dead = rig.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let reasons: Vec<&str> = dead.iter().map(|d| d.2.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("malformed request")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("cannot render transaction")),
        "{reasons:?}"
    );
    assert_eq!(
        rig.store.outcomes("t-bad").await.unwrap()[0].status,
        OutcomeStatus::DeadLettered
    );
    assert_eq!(rig.sms.count(), 0);
}

#[tokio::test]
async fn sms_codes_are_capped_per_customer() {
    let options = WorkerOptions {
        code_cap: 2,
        ..fast_options()
    };
    let rig = rig(options, |_, _| Reply::ok("{}"), |_, _| Reply::ok("{}")).await;
    for i in 0..4 {
        let mut code = NotificationRequest::new(
            format!("code-{i}"),
            customer(1),
            Kind::Code,
            json!({"code": "1", "purpose": "p"}),
        );
        code.phone = Some("+79990000001".into());
        rig.queue.enqueue(&code).await.unwrap();
    }
    let workers = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    drain(&rig).await;
    workers.stop().await;
    assert_eq!(rig.sms.count(), 2);
    let capped = rig.store.outcomes("code-3").await.unwrap();
    assert_eq!(capped[0].reason.as_deref(), Some("code_cap_exceeded"));
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_repeats_nothing_settled() {
    let rig = rig(
        WorkerOptions {
            concurrency: 4,
            ..fast_options()
        },
        |_, _| Reply::ok("{}").delayed(Duration::from_millis(15)),
        |_, _| Reply::ok("{}"),
    )
    .await;
    let n = 40;
    for i in 0..n {
        let mut code = NotificationRequest::new(
            format!("code-{i}"),
            customer(i),
            Kind::Code,
            json!({"code": "1", "purpose": "p"}),
        );
        code.phone = Some("+79990000001".into());
        rig.queue.enqueue(&code).await.unwrap();
    }
    let first = rig.notifier.spawn_workers(rig.queue.clone(), 1);
    let sms = rig.sms.requests.clone();
    testkit::eventually("some sent", Duration::from_secs(10), || {
        let sms = sms.clone();
        async move { (sms.lock().unwrap().len() >= 10).then_some(()) }
    })
    .await;
    first.abort(); // as if the process died: no ack, no record for what was in flight
    let second = rig
        .notifier
        .spawn_workers(Arc::new(rig.queue.with_new_owner()), 2);
    drain(&rig).await;
    second.stop().await;
    let ids: Vec<String> = rig
        .sms
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), n as usize, "nothing lost");
    // Only what was in flight at the kill (at most one batch) can reach the gateway twice,
    // carrying the same id so the gateway drops it; everything settled is never re-sent.
    assert!(
        ids.len() - distinct.len() <= 4,
        "{} repeats",
        ids.len() - distinct.len()
    );
    for i in 0..n {
        assert_eq!(
            rig.store
                .send_state(&format!("code-{i}"), Channel::Sms)
                .await
                .unwrap(),
            Some(SendState::Sent)
        );
    }
}
