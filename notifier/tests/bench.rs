//! Throughput into local provider stand-ins, beside a bare client's rate against the same
//! server in the same run. Figures only, no timed assertions:
//! `cargo test -p notifier --release --test bench -- --ignored --nocapture`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kernel::CustomerId;
use notifier::providers::apns::{Apns, ApnsConfig};
use notifier::providers::fcm::{Fcm, FcmConfig};
use notifier::providers::sms::{JsonGateway, JsonGatewayConfig};
use notifier::providers::smtp::Smtp;
use notifier::*;
use serde_json::json;

async fn bare_http(url: &str, n: usize, concurrency: usize, http2: bool) -> f64 {
    let mut builder = reqwest::Client::builder();
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build().unwrap();
    let started = Instant::now();
    let per = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                for _ in 0..per {
                    client
                        .post(&url)
                        .body(r#"{"id":"x","to":"+7","text":"t"}"#)
                        .send()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per * concurrency) as f64 / started.elapsed().as_secs_f64()
}

async fn through_notifier(
    channel: &str,
    n: u32,
    workers: usize,
    providers: Providers,
    count: impl Fn() -> usize,
) -> f64 {
    let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
    let queue = Arc::new(StoreQueue::new(store.clone(), Duration::from_secs(30)));
    for i in 0..n {
        let c = CustomerId::parse(&format!("c{i}")).unwrap();
        let prefs = Preferences {
            phone: Some("+79990000001".into()),
            email: Some("x@example.com".into()),
            kinds: [(
                Kind::Offer,
                notifier::model::KindRule {
                    channels: vec![
                        Channel::parse(if channel == "push-ios" {
                            "push"
                        } else {
                            channel
                        })
                        .unwrap(),
                    ],
                    fallback_sms: false,
                },
            )]
            .into(),
            ..Preferences::default()
        };
        store.put_preferences(&c, &prefs).await.unwrap();
        let platform = if channel == "push-ios" {
            Platform::Ios
        } else {
            Platform::Android
        };
        store
            .upsert_device(
                &c,
                &Device {
                    platform,
                    token: format!("tok{i}"),
                    language: None,
                },
            )
            .await
            .unwrap();
        queue
            .enqueue(&NotificationRequest::new(
                format!("r{i}"),
                c,
                Kind::Offer,
                json!({"title": "t", "text": "x"}),
            ))
            .await
            .unwrap();
    }
    let options = WorkerOptions {
        concurrency: 32,
        default_rate_limit: RateLimit {
            burst: 100_000,
            per_second: 1e9,
        },
        ..WorkerOptions::default()
    };
    let notifier = Notifier::new(
        store.clone(),
        Arc::new(Templates::builtin()),
        providers,
        Arc::new(NoopSink),
        options,
    );
    let before = count();
    let started = Instant::now();
    let handle = notifier.spawn_workers(queue, workers);
    while count() - before < n as usize {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = f64::from(n) / started.elapsed().as_secs_f64();
    handle.stop().await;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_sends_per_second() {
    let n = 2000;
    let sms = MockHttp::start(|_, _| Reply::ok("{}")).await;
    let fcm = mock_fcm(3600, |_, _| Reply::ok("{}")).await;
    let apns = MockHttp::start(|_, _| Reply::ok("")).await;
    let smtp = MockSmtp::start().await;
    let providers = Providers {
        sms: Some(Arc::new(JsonGateway::new(JsonGatewayConfig {
            url: sms.url.clone(),
            token: None,
            timeout: Duration::from_secs(5),
        }))),
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
        email: Some(Arc::new(
            Smtp::new(&smtp.url(), "bank@arbat.example", Duration::from_secs(5)).unwrap(),
        )),
    };
    let bare_h1 = bare_http(&sms.url, n, 32, false).await;
    let bare_h2 = bare_http(&apns.url, n, 32, true).await;
    println!("bare client, HTTP/1.1: {bare_h1:.0}/s; HTTP/2: {bare_h2:.0}/s");
    for workers in [1, 2] {
        let r = through_notifier("sms", n as u32, workers, providers.clone(), || sms.count()).await;
        println!(
            "sms   {workers} worker(s): {r:.0}/s = {:.2} of bare HTTP/1.1",
            r / bare_h1
        );
        let r =
            through_notifier("push", n as u32, workers, providers.clone(), || fcm.count()).await;
        println!(
            "fcm   {workers} worker(s): {r:.0}/s = {:.2} of bare HTTP/1.1",
            r / bare_h1
        );
        let r = through_notifier(
            "push-ios",
            n as u32,
            workers,
            Providers {
                fcm: None,
                ..providers.clone()
            },
            || apns.count(),
        )
        .await;
        println!(
            "apns  {workers} worker(s): {r:.0}/s = {:.2} of bare HTTP/2",
            r / bare_h2
        );
        let r = through_notifier("email", 300, workers, providers.clone(), || {
            smtp.mails().len()
        })
        .await;
        println!("email {workers} worker(s): {r:.0}/s");
    }
}
