//! Throughput and latency into local provider stand-ins, beside a bare client's rate against
//! the same server in the same run. Figures only, no timed assertions:
//! `cargo test -p notifier --release --test bench -- --ignored --nocapture`
//! (`ARBAT_BENCH_N` pushes/SMS per run, default 10000; e-mails are a tenth of that).
//!
//! For every channel: the bare client's rate, then the notifier's with 1 and 2 workers on an
//! in-memory SQLite store and on a file-backed one in WAL mode (as the embedded node runs);
//! then the end-to-end latency (enqueue → the server has the request) at a steady rate.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kernel::CustomerId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use notifier::providers::apns::{Apns, ApnsConfig};
use notifier::providers::fcm::{Fcm, FcmConfig};
use notifier::providers::sms::{JsonGateway, JsonGatewayConfig};
use notifier::providers::smtp::Smtp;
use notifier::*;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

const COMMAND: &str = "cargo test -p notifier --release --test bench -- --ignored --nocapture";
const CONCURRENCY: usize = 32;

#[derive(Clone, Copy, PartialEq)]
enum Chan {
    Sms,
    Fcm,
    Apns,
    Email,
}

impl Chan {
    const ALL: [Chan; 4] = [Chan::Sms, Chan::Fcm, Chan::Apns, Chan::Email];
    fn name(self) -> &'static str {
        match self {
            Chan::Sms => "sms",
            Chan::Fcm => "fcm",
            Chan::Apns => "apns",
            Chan::Email => "email",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum StoreKind {
    Memory,
    FileWal,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "sqlite memory",
            StoreKind::FileWal => "sqlite file WAL",
        }
    }
}

struct Servers {
    sms: MockHttp,
    fcm: MockHttp,
    apns: MockHttp,
    smtp: MockSmtp,
    providers: Providers,
}

impl Servers {
    async fn start() -> Self {
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
        Self {
            sms,
            fcm,
            apns,
            smtp,
            providers,
        }
    }

    fn count(&self, chan: Chan) -> usize {
        match chan {
            Chan::Sms => self.sms.count(),
            // The token request is one of the FCM server's requests.
            Chan::Fcm => self.fcm.count(),
            Chan::Apns => self.apns.count(),
            Chan::Email => self.smtp.count(),
        }
    }

    /// Request id → when the server had it, for everything received after `skip` requests.
    fn arrivals(&self, chan: Chan, skip: usize) -> HashMap<String, Instant> {
        let http = |m: &MockHttp, id: fn(&serde_json::Value) -> Option<String>| {
            m.requests()
                .into_iter()
                .skip(skip)
                .filter_map(|r| Some((id(&r.json())?, r.at)))
                .collect()
        };
        match chan {
            Chan::Sms => http(&self.sms, |v| v["id"].as_str().map(str::to_owned)),
            Chan::Fcm => http(&self.fcm, |v| {
                v["message"]["data"]["request_id"]
                    .as_str()
                    .map(str::to_owned)
            }),
            Chan::Apns => http(&self.apns, |v| v["request_id"].as_str().map(str::to_owned)),
            Chan::Email => self
                .smtp
                .mails()
                .into_iter()
                .skip(skip)
                .filter_map(|m| {
                    let line = m
                        .data
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))?;
                    let id = line.split_once('<')?.1.split_once('@')?.0.to_owned();
                    Some((id, m.at))
                })
                .collect(),
        }
    }

    /// The rate the same server accepts from a bare client (no notifier) at the same
    /// concurrency: reqwest (HTTP/1.1, or HTTP/2 prior knowledge for APNs), lettre for SMTP.
    async fn bare(&self, chan: Chan, n: usize) -> f64 {
        match chan {
            Chan::Sms => bare_http(&self.sms.url, n, false).await,
            Chan::Fcm => {
                bare_http(
                    &format!("{}/v1/projects/arbat-test/messages:send", self.fcm.url),
                    n,
                    false,
                )
                .await
            }
            Chan::Apns => bare_http(&format!("{}/3/device/x", self.apns.url), n, true).await,
            Chan::Email => bare_smtp(self.smtp.port, n).await,
        }
    }
}

async fn bare_http(url: &str, n: usize, http2: bool) -> f64 {
    let mut builder = reqwest::Client::builder();
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build().unwrap();
    let per = n / CONCURRENCY;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                for _ in 0..per {
                    client
                        .post(&url)
                        .header("content-type", "application/json")
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
    (per * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
}

async fn bare_smtp(port: u16, n: usize) -> f64 {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(CONCURRENCY as u32))
        .build();
    let per = n / CONCURRENCY;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let transport = transport.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    let mail = Message::builder()
                        .from("bank@arbat.example".parse().unwrap())
                        .to("x@example.com".parse().unwrap())
                        .subject("t")
                        .body("x".to_owned())
                        .unwrap();
                    transport.send(mail).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
}

/// A fresh store of `kind` (the options `SqlStore::connect` uses) and its raw pool.
async fn open_store(kind: StoreKind, dir: &std::path::Path) -> (Arc<SqlStore>, SqlitePool) {
    let (options, connections) = match kind {
        StoreKind::Memory => (
            "sqlite::memory:".parse::<SqliteConnectOptions>().unwrap(),
            1,
        ),
        StoreKind::FileWal => (
            format!(
                "sqlite://{}",
                dir.join(format!("{}.db", uuid::Uuid::new_v4())).display()
            )
            .parse::<SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true),
            4,
        ),
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(
            options
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let store = Arc::new(SqlStore::from_sqlite_pool(pool.clone()).await.unwrap());
    (store, pool)
}

fn customer_and_request(chan: Chan, i: usize, tag: &str) -> (CustomerId, Preferences, Device) {
    let c = CustomerId::parse(&format!("c{tag}{i}")).unwrap();
    let channel = match chan {
        Chan::Sms => Channel::Sms,
        Chan::Email => Channel::Email,
        Chan::Fcm | Chan::Apns => Channel::Push,
    };
    let prefs = Preferences {
        phone: Some("+79990000001".into()),
        email: Some("x@example.com".into()),
        kinds: [(
            Kind::Offer,
            notifier::model::KindRule {
                channels: vec![channel],
                fallback_sms: false,
                in_app_when_online: false,
            },
        )]
        .into(),
        ..Preferences::default()
    };
    let device = Device {
        platform: if chan == Chan::Apns {
            Platform::Ios
        } else {
            Platform::Android
        },
        token: format!("tok{tag}{i}"),
        language: None,
    };
    (c, prefs, device)
}

fn request(i: usize, tag: &str, c: CustomerId) -> NotificationRequest {
    NotificationRequest::new(
        format!("r{tag}{i}"),
        c,
        Kind::Offer,
        json!({"title": "t", "text": "x"}),
    )
}

/// Customers with preferences and a device, in one transaction (seeding is not measured).
/// With `queued`, their requests are queued too.
async fn seed(pool: &SqlitePool, chan: Chan, n: usize, tag: &str, queued: bool) {
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        let (c, prefs, device) = customer_and_request(chan, i, tag);
        sqlx::query("INSERT INTO notif_preferences (customer_id, prefs) VALUES ($1, $2)")
            .bind(c.as_str())
            .bind(serde_json::to_string(&prefs).unwrap())
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO notif_devices (token, customer_id, platform, language, created_at) \
             VALUES ($1, $2, $3, NULL, 0)",
        )
        .bind(&device.token)
        .bind(c.as_str())
        .bind(device.platform.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
        if queued {
            let r = request(i, tag, c);
            sqlx::query(
                "INSERT INTO notif_queue (id, priority, payload, attempts, visible_at, lease_owner, enqueued_at) \
                 VALUES ($1, $2, $3, 0, 0, NULL, $4)",
            )
            .bind(&r.id)
            .bind(r.priority().rank())
            .bind(r.to_json())
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
}

fn notifier_on(store: Arc<SqlStore>, providers: Providers) -> Arc<Notifier> {
    Notifier::new(
        store,
        Arc::new(Templates::builtin()),
        providers,
        Arc::new(NoopSink),
        WorkerOptions {
            concurrency: CONCURRENCY,
            default_rate_limit: RateLimit {
                burst: 100_000,
                per_second: 1e9,
            },
            ..WorkerOptions::default()
        },
    )
}

fn providers_for(servers: &Servers, chan: Chan) -> Providers {
    let mut providers = servers.providers.clone();
    if chan == Chan::Apns {
        providers.fcm = None;
    }
    providers
}

/// Sends/s through the notifier: `n` requests queued up front, from the workers' start until
/// the server received the last one.
async fn throughput(
    servers: &Servers,
    kind: StoreKind,
    dir: &std::path::Path,
    chan: Chan,
    n: usize,
    workers: usize,
) -> f64 {
    let (store, pool) = open_store(kind, dir).await;
    let tag = format!("{}{workers}", chan.name());
    seed(&pool, chan, n, &tag, true).await;
    let queue = Arc::new(StoreQueue::new(store.clone(), Duration::from_secs(30)));
    let notifier = notifier_on(store.clone(), providers_for(servers, chan));
    let before = servers.count(chan);
    let started = Instant::now();
    let handle = notifier.spawn_workers(queue, workers);
    let deadline = started + Duration::from_secs(120);
    while servers.count(chan) - before < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = (servers.count(chan) - before) as f64 / started.elapsed().as_secs_f64();
    handle.stop().await;
    rate
}

/// Enqueue → received, at a steady `rate` per second with 2 workers: (p50, p99, received).
async fn latency(
    servers: &Servers,
    kind: StoreKind,
    dir: &std::path::Path,
    chan: Chan,
    n: usize,
    rate: f64,
) -> (Duration, Duration, usize) {
    let (store, pool) = open_store(kind, dir).await;
    let tag = format!("{}lat", chan.name());
    seed(&pool, chan, n, &tag, false).await;
    let queue = Arc::new(StoreQueue::new(store.clone(), Duration::from_secs(30)));
    let notifier = notifier_on(store.clone(), providers_for(servers, chan));
    let skip = servers.count(chan);
    let handle = notifier.spawn_workers(queue.clone(), 2);
    let mut enqueued = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..n {
        tick.tick().await;
        let (c, _, _) = customer_and_request(chan, i, &tag);
        let r = request(i, &tag, c);
        enqueued.insert(r.id.clone(), Instant::now());
        queue.enqueue(&r).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while servers.count(chan) - skip < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.stop().await;
    let arrivals = servers.arrivals(chan, skip);
    let mut waits: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(id, at)| Some(at.saturating_duration_since(*enqueued.get(id)?)))
        .collect();
    waits.sort();
    let pick = |q: f64| {
        waits
            .get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (pick(0.50), pick(0.99), waits.len())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_sends_per_second() {
    let n: usize = std::env::var("ARBAT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("notif-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("reproduce: {COMMAND}");
    println!(
        "{} cores, tokio multi_thread 2 workers, concurrency {CONCURRENCY} per worker, \
         {n} pushes/SMS and {} e-mails per run",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        n / 10
    );
    // ARBAT_BENCH_ONLY=sms|fcm|apns|email and/or memory|file narrows the runs (profiling).
    let only = std::env::var("ARBAT_BENCH_ONLY").unwrap_or_default();
    let picked = |name: &str| only.is_empty() || only.split(',').any(|o| name.contains(o));
    let servers = Servers::start().await;
    let mut bare = HashMap::new();
    let chans: Vec<Chan> = Chan::ALL.into_iter().filter(|c| picked(c.name())).collect();
    for &chan in &chans {
        let count = if chan == Chan::Email { n / 10 } else { n };
        bare.insert(chan.name(), servers.bare(chan, count).await);
    }
    println!(
        "\n{:<6} {:<16} {:>9} {:>17} {:>17}",
        "chan", "store", "bare/s", "1 worker/s", "2 workers/s"
    );
    for kind in [StoreKind::Memory, StoreKind::FileWal]
        .into_iter()
        .filter(|k| picked(k.name()) || !only.contains("memory") && !only.contains("file"))
    {
        for &chan in &chans {
            let count = if chan == Chan::Email { n / 10 } else { n };
            let one = throughput(&servers, kind, &dir, chan, count, 1).await;
            let two = throughput(&servers, kind, &dir, chan, count, 2).await;
            let b = bare[chan.name()];
            println!(
                "{:<6} {:<16} {:>9.0} {:>9.0} ({:>4.2}) {:>9.0} ({:>4.2})",
                chan.name(),
                kind.name(),
                b,
                one,
                one / b,
                two,
                two / b
            );
        }
    }
    println!("(ratios: notifier rate / bare client rate against the same server in this run)");
    println!("\nend to end, enqueue -> server has it, 2 workers, sqlite file WAL, steady rate:");
    for &chan in &chans {
        let (count, rate) = if chan == Chan::Email {
            (500, 250.0)
        } else {
            (2000, 1000.0)
        };
        let (p50, p99, got) = latency(&servers, StoreKind::FileWal, &dir, chan, count, rate).await;
        println!(
            "{:<6} {rate:>6.0}/s x {count}: p50 {:>9}  p99 {:>9}  ({got} received)",
            chan.name(),
            ms(p50),
            ms(p99)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
