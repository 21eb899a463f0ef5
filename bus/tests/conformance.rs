//! The `Bus` contract, written once and run against every backend: the in-process bus and
//! core NATS on a real nats-server (set `ARBAT_NATS_SERVER` to a 2.10+ binary).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Bus, BusError, InProcessBus, NatsBus, NatsOptions, Subscription};
use bytes::Bytes;
use futures::StreamExt;
use testkit::{NatsServer, eventually};

/// A bus under test, with whatever keeps it alive.
struct Harness {
    bus: Arc<dyn Bus>,
    dropped: Box<dyn Fn() -> u64 + Send + Sync>,
    _server: Option<NatsServer>,
}

async fn inprocess(capacity: usize) -> Harness {
    let bus = InProcessBus::with_capacity(capacity);
    let counter = bus.clone();
    Harness {
        bus: Arc::new(bus),
        dropped: Box::new(move || counter.dropped_messages()),
        _server: None,
    }
}

async fn nats(capacity: usize) -> Harness {
    let server = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let options = NatsOptions {
        subscription_capacity: capacity,
        ..NatsOptions::default()
    };
    let bus = NatsBus::connect_with(&server.url(), options).await.unwrap();
    let counter = bus.clone();
    Harness {
        bus: Arc::new(bus),
        dropped: Box::new(move || counter.dropped_messages()),
        _server: Some(server),
    }
}

const WAIT: Duration = Duration::from_secs(5);

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn next(sub: &mut Subscription) -> bus::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within the bound")
        .expect("subscription open")
}

/// Nothing more arrives within a short window (absence can only be observed by waiting).
async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(150), sub.next()).await {
        panic!("unexpected message {message:?}");
    }
}

macro_rules! conformance {
    ($($case:ident => $capacity:expr),* $(,)?) => {
        mod inprocess {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::inprocess($capacity).await).await;
            })*
        }
        mod nats {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::nats($capacity).await).await;
            })*
        }
    };
}

conformance! {
    exact_subject => 64,
    single_token_wildcard => 64,
    tail_wildcard => 64,
    no_cross_talk => 64,
    every_subscriber_gets_a_copy_in_order => 1024,
    queue_group_delivers_exactly_once => 1024,
    request_reply => 64,
    no_responders => 64,
    request_timeout => 64,
    unsubscribe_on_drop => 64,
    invalid_subjects => 64,
    slow_subscriber_does_not_block_publisher => 16,
}

async fn exact_subject(h: Harness) {
    let mut sub = h.bus.subscribe("push.c1").await.unwrap();
    h.bus.publish("push.c1", b("hello")).await.unwrap();
    h.bus.flush().await.unwrap();
    let message = next(&mut sub).await;
    assert_eq!(message.subject, "push.c1");
    assert_eq!(message.payload, b("hello"));
    assert_eq!(message.reply, None);
}

async fn single_token_wildcard(h: Harness) {
    let mut sub = h.bus.subscribe("push.*").await.unwrap();
    let mut middle = h.bus.subscribe("a.*.c").await.unwrap();
    for subject in ["push", "push.c1.x", "push.c2", "a.b.d", "a.b.c"] {
        h.bus.publish(subject, b(subject)).await.unwrap();
    }
    h.bus.flush().await.unwrap();
    assert_eq!(next(&mut sub).await.subject, "push.c2");
    assert_eq!(next(&mut middle).await.subject, "a.b.c");
    assert_quiet(&mut sub).await;
    assert_quiet(&mut middle).await;
}

async fn tail_wildcard(h: Harness) {
    let mut sub = h.bus.subscribe("abs.>").await.unwrap();
    for subject in ["abs", "abs.evt.c1", "abx.evt", "abs.cmd"] {
        h.bus.publish(subject, b(subject)).await.unwrap();
    }
    h.bus.flush().await.unwrap();
    assert_eq!(next(&mut sub).await.subject, "abs.evt.c1");
    assert_eq!(next(&mut sub).await.subject, "abs.cmd");
    assert_quiet(&mut sub).await;
}

async fn no_cross_talk(h: Harness) {
    let mut c1 = h.bus.subscribe("push.c1").await.unwrap();
    let mut c10 = h.bus.subscribe("push.c10").await.unwrap();
    h.bus.publish("push.c10", b("for c10")).await.unwrap();
    h.bus.publish("push.c1", b("for c1")).await.unwrap();
    h.bus.flush().await.unwrap();
    assert_eq!(next(&mut c1).await.payload, b("for c1"));
    assert_eq!(next(&mut c10).await.payload, b("for c10"));
    assert_quiet(&mut c1).await;
    assert_quiet(&mut c10).await;
}

async fn every_subscriber_gets_a_copy_in_order(h: Harness) {
    let mut a = h.bus.subscribe("feed.x").await.unwrap();
    let mut w = h.bus.subscribe("feed.*").await.unwrap();
    for i in 0..500 {
        h.bus.publish("feed.x", b(&i.to_string())).await.unwrap();
    }
    h.bus.flush().await.unwrap();
    for sub in [&mut a, &mut w] {
        for i in 0..500 {
            assert_eq!(next(sub).await.payload, b(&i.to_string()));
        }
    }
}

async fn queue_group_delivers_exactly_once(h: Harness) {
    const N: usize = 300;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(h.bus.queue_subscribe("work.x", "workers").await.unwrap());
    }
    let mut other_group = h.bus.queue_subscribe("work.*", "auditors").await.unwrap();
    let mut plain = h.bus.subscribe("work.x").await.unwrap();
    for i in 0..N {
        h.bus.publish("work.x", b(&i.to_string())).await.unwrap();
    }
    h.bus.flush().await.unwrap();

    let mut seen = Vec::new();
    let mut per_member = Vec::new();
    for member in &mut members {
        let mut count = 0;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), member.next()).await
        {
            seen.push(message.payload);
            count += 1;
        }
        per_member.push(count);
    }
    assert_eq!(seen.len(), N, "each message went to exactly one member");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        N,
        "no duplicates"
    );
    assert!(
        per_member.iter().filter(|c| **c > 0).count() >= 2,
        "{per_member:?}"
    );
    for i in 0..N {
        assert_eq!(next(&mut plain).await.payload, b(&i.to_string()));
        next(&mut other_group).await;
    }
    assert_quiet(&mut plain).await;
    assert_quiet(&mut other_group).await;
}

fn spawn_echo(bus: Arc<dyn Bus>, mut sub: Subscription) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            if let Some(reply) = message.reply {
                let mut answer = b"echo:".to_vec();
                answer.extend_from_slice(&message.payload);
                let _ = bus.publish(&reply, answer.into()).await;
            }
        }
    })
}

async fn request_reply(h: Harness) {
    let sub = h.bus.subscribe("abs.cmd.echo").await.unwrap();
    let echo = spawn_echo(h.bus.clone(), sub);
    for i in 0..20 {
        let answer = h
            .bus
            .request("abs.cmd.echo", b(&i.to_string()), WAIT)
            .await
            .unwrap();
        assert_eq!(answer, b(&format!("echo:{i}")));
    }
    echo.abort();
}

async fn no_responders(h: Harness) {
    let started = Instant::now();
    let result = h.bus.request("abs.cmd.nobody", b("?"), WAIT).await;
    assert_eq!(result, Err(BusError::NoResponders));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
}

async fn request_timeout(h: Harness) {
    let _silent = h.bus.subscribe("abs.cmd.silent").await.unwrap();
    let started = Instant::now();
    let result = h
        .bus
        .request("abs.cmd.silent", b("?"), Duration::from_millis(200))
        .await;
    assert_eq!(result, Err(BusError::Timeout));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(190) && elapsed < WAIT,
        "{elapsed:?}"
    );
}

async fn unsubscribe_on_drop(h: Harness) {
    let sub = h.bus.subscribe("gone.x").await.unwrap();
    let wild = h.bus.subscribe("gone.*").await.unwrap();
    drop(sub);
    drop(wild);
    // The observable effect of unsubscribing: nobody is left to answer.
    let bus = h.bus.clone();
    eventually("subscriptions removed", WAIT, || {
        let bus = bus.clone();
        async move {
            let result = bus
                .request("gone.x", b("?"), Duration::from_millis(200))
                .await;
            (result == Err(BusError::NoResponders)).then_some(())
        }
    })
    .await;
}

async fn invalid_subjects(h: Harness) {
    fn is_invalid<T>(result: Result<T, BusError>, what: &str) {
        let error = result.err();
        assert!(
            matches!(error, Some(BusError::InvalidSubject(_))),
            "{what:?}: {error:?}"
        );
    }
    for bad in [
        "", "a..b", ".a", "a.", "a b", "a\nb", "a.*", "a.>", "*", ">", "a*",
    ] {
        is_invalid(h.bus.publish(bad, b("x")).await, bad);
        is_invalid(h.bus.request(bad, b("x"), WAIT).await, bad);
    }
    for bad in ["", "a..b", "a b", "a.>.b", ">.a", "a*", " a"] {
        is_invalid(h.bus.subscribe(bad).await, bad);
        is_invalid(h.bus.queue_subscribe(bad, "g").await, bad);
    }
    for bad in ["", "g h", "g*"] {
        is_invalid(h.bus.queue_subscribe("a.b", bad).await, bad);
    }
    // The bus still works.
    let mut sub = h.bus.subscribe("ok.*").await.unwrap();
    h.bus.publish("ok.fine", b("x")).await.unwrap();
    h.bus.flush().await.unwrap();
    assert_eq!(next(&mut sub).await.subject, "ok.fine");
}

async fn slow_subscriber_does_not_block_publisher(h: Harness) {
    // Harness capacity is 16: this subscriber never reads and overflows at once.
    let _slow = h.bus.subscribe("live.c1").await.unwrap();
    let published = tokio::time::timeout(Duration::from_secs(20), async {
        for i in 0..5_000 {
            h.bus.publish("live.c1", b(&i.to_string())).await.unwrap();
        }
        h.bus.flush().await.unwrap();
    })
    .await;
    assert!(published.is_ok(), "the publisher was stalled");
    eventually("drops counted", WAIT, || {
        let dropped = (h.dropped)();
        async move { (dropped > 0).then_some(()) }
    })
    .await;
    // Others are still served.
    let mut fresh = h.bus.subscribe("live.c2").await.unwrap();
    h.bus.publish("live.c2", b("still here")).await.unwrap();
    h.bus.flush().await.unwrap();
    assert_eq!(next(&mut fresh).await.payload, b("still here"));
}
