//! Assembles and runs one node: store, bus, actors, ABS, gateway; then drains on shutdown.

use std::collections::BTreeSet;
use std::sync::Arc;

use actors::{ActorRuntime, LocalSink, Node, Wiring};
use anyhow::Context as _;
use channels::{DummyHash, Gateway, Hub, TokenKeys};
use kernel::bus::Bus;
use kernel::change::ChangeSink;
use kernel::store::{Credential, Store};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Mode};
use crate::notify::NodeNotifier;

/// Runs a node on `listener` until `shutdown` turns true, then drains within the grace
/// period. Tests call this with a listener on port 0.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    let database_url = match &config.mode {
        Mode::Embedded => None,
        Mode::Cluster { database_url, .. } => Some(database_url.as_str()),
    };
    let store: Arc<dyn Store> = store::open(database_url, &config.data_dir)
        .await
        .context("opening the store")?;

    // The bus, and in a cluster the durable streams and the partition leases.
    let partitions = config.actors.partitions;
    let mut lease_manager = None;
    let mut jetstream = None;
    let mut nats_client = None;
    let (bus, owned): (Arc<dyn Bus>, watch::Receiver<BTreeSet<u32>>) = match &config.mode {
        Mode::Embedded => {
            let (_tx, rx) = watch::channel((0..partitions).collect());
            // The sender must outlive the node: keep it in a task that ends at shutdown.
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await.map(|_| ());
                drop(_tx);
            });
            (Arc::new(bus::InProcessBus::new()), rx)
        }
        Mode::Cluster { nats_url, .. } => {
            let nats = bus::NatsBus::connect(nats_url)
                .await
                .context("connecting to NATS")?;
            let js = nats.jetstream();
            bus::jetstream::ensure_abs_stream(&js, partitions)
                .await
                .context("creating the ABS_EVENTS stream")?;
            bus::jetstream::ensure_dlq_stream(&js)
                .await
                .context("creating the dead-letter stream")?;
            let mut stop = shutdown.clone();
            let (manager, owned) = bus::LeaseManager::start(
                js.clone(),
                &config.node_id,
                partitions,
                config.lease_ttl,
                async move {
                    let _ = stop.wait_for(|s| *s).await.map(|_| ());
                },
            )
            .await
            .context("starting partition leases")?;
            lease_manager = Some(manager);
            jetstream = Some(js);
            nats_client = Some(nats.client().clone());
            (Arc::new(nats), owned)
        }
    };

    let notify = NodeNotifier::prepare(&config, &config.notifier, nats_client).await?;
    let runtime = ActorRuntime::start(config.actor_threads).context("starting actor threads")?;
    let wiring = Wiring {
        store: store.clone(),
        bus: bus.clone(),
        notify: Some(notify.queue.clone()),
    };
    let node = Node::start(
        config.actors.clone(),
        wiring,
        &runtime,
        owned,
        jetstream.is_some(),
        shutdown.clone(),
    );
    let sink: Arc<dyn ChangeSink> = match &jetstream {
        None => Arc::new(LocalSink::new(node.clone())),
        Some(js) => {
            tokio::spawn(actors::ingest::run_partition_consumers(
                node.clone(),
                js.clone(),
                shutdown.clone(),
            ));
            Arc::new(actors::ingest::JetStreamSink::new(js.clone()))
        }
    };

    let notifier = notify.start(sink.clone());
    notifier
        .notifier
        .set_presence(Arc::new(crate::notify::BusPresence { bus: bus.clone() }));

    // The reference ABS answers on the bus from every node (a queue group).
    let abs = abs::Abs::new(store.clone(), sink.clone()).with_quote_validity(config.quote_validity);
    if config.demo {
        let added = abs::demo::seed(&*store)
            .await
            .context("seeding the demo ABS")?;
        abs::demo::seed_card_pans(&*store)
            .await
            .context("seeding the demo card numbers")?;
        seed_demo_logins(&*store).await?;
        tracing::info!(added, "demo data seeded");
    }
    tokio::spawn(abs.clone().serve(bus.clone()));
    tokio::spawn(abs.clone().follow_rates(bus.clone()));

    // Key rotation: the current key signs; the previous one is still accepted, so tokens
    // signed before a rotation stay valid until they expire. Every node shares both.
    let key_id = config.token_key_id;
    let mut keys = Vec::new();
    for id in [key_id, key_id.saturating_sub(1)] {
        if id == 0 || keys.iter().any(|(k, _)| *k == id) {
            continue;
        }
        let mut candidate = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut candidate);
        let secret = store
            .secret(&format!("access_token_key_{id}"), &candidate)
            .await
            .context("loading the token keys")?;
        keys.push((id, secret));
    }
    let mut token_keys = TokenKeys::new(&key_id.to_string(), keys[0].1.clone());
    for (id, secret) in keys.into_iter().skip(1) {
        token_keys = token_keys.also_accept(&id.to_string(), secret);
    }
    let (backoffice_key, generated_key) = match &config.backoffice_key {
        Some(key) => (key.clone(), false),
        None => (random_key(), true),
    };

    let operations_key = match &config.operations_key {
        Some(key) => key.clone(),
        None => {
            tracing::warn!(
                "operation definitions are checked with the shipped DEVELOPMENT key; \
                 set ARBAT_OPERATIONS_KEY in production"
            );
            crate::config::DEV_OPERATIONS_KEY.to_owned()
        }
    };
    let operations_key =
        channels::studio::parse_public_key(&operations_key).map_err(anyhow::Error::msg)?;
    let operations = channels::studio::Catalogue::load(&config.operations_dir, operations_key);
    tracing::info!(
        folder = %config.operations_dir.display(),
        definitions = operations.list().len(),
        refused = operations.problems().len(),
        "operation definitions loaded"
    );
    operations.spawn_reload(std::time::Duration::from_secs(2), shutdown.clone());

    let mut gateway_config = config.gateway.clone();
    gateway_config.backoffice_key = backoffice_key.clone();
    let revocations =
        channels::Revocations::new(gateway_config.access_token_ttl.as_secs() as i64, 1_000_000);
    let limits = channels::Limits::new(&gateway_config);
    let gateway = Arc::new(Gateway {
        node: node.clone(),
        store: store.clone(),
        bus: bus.clone(),
        sink,
        abs: Some(abs),
        tokens: token_keys,
        dummy_hash: DummyHash::generate(),
        config: gateway_config,
        hub: Hub::new(bus.clone()),
        notifier: Some(notifier.notifier.clone()),
        queue: Some(notifier.queue.clone()),
        send_queue: channels::SendQueue::start(Some(notifier.queue.clone())),
        revocations,
        limits,
        operations: Some(operations),
        sockets: Default::default(),
        shutdown: shutdown.clone(),
    });

    gateway
        .start_control()
        .await
        .context("listening for session revocations")?;

    announce(
        &config,
        address,
        generated_key.then_some(backoffice_key.as_str()),
    );
    let server = tokio::spawn(channels::run(listener, gateway));

    // Run until the shutdown flag, then give requests in flight the grace period.
    let mut stop = shutdown.clone();
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
    tracing::info!(
        grace_period_ms = config.grace_period.as_millis() as u64,
        "draining"
    );
    if tokio::time::timeout(config.grace_period, server)
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing what is left");
    }
    notifier.stop().await;
    if let Some(manager) = lease_manager {
        manager.stop().await;
    }
    bus.flush().await.ok();
    runtime.stop();
    tracing::info!("stopped");
    Ok(())
}

async fn seed_demo_logins(store: &dyn Store) -> anyhow::Result<()> {
    // One hash for the shared, published demo password: argon2 per customer would make
    // start-up slow for nothing (the password is documented anyway).
    let mut hash = None;
    for n in 1..=abs::demo::REGISTERED_CUSTOMERS {
        let login = abs::demo::phone(n);
        if store.credential(&login).await?.is_some() {
            continue;
        }
        let password_hash = match &hash {
            Some(hash) => String::clone(hash),
            None => {
                let new = channels::hash_password(abs::demo::DEMO_PASSWORD)
                    .map_err(anyhow::Error::msg)?;
                hash = Some(new.clone());
                new
            }
        };
        store
            .insert_credential(&Credential {
                login,
                customer_id: abs::demo::customer_id(n),
                password_hash,
            })
            .await?;
        // The demo password is public, so a second factor would protect nothing here:
        // demo customers trust every device. Registered customers get a code on a new one.
        store
            .trust_device(&abs::demo::customer_id(n), "*", kernel::now())
            .await?;
    }
    Ok(())
}

fn random_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn announce(config: &Config, address: std::net::SocketAddr, generated_key: Option<&str>) {
    let mode = match &config.mode {
        Mode::Embedded => format!("embedded, data in {}", config.data_dir.display()),
        Mode::Cluster { .. } => format!("cluster node {}", config.node_id),
    };
    println!("Arbat is listening on http://{address} ({mode})");
    println!(
        "  REST: http://{address}/v1   WebSocket: ws://{address}/v1/ws   metrics: http://{address}/metrics"
    );
    if config.demo {
        println!(
            "  Demo: log in with POST /v1/auth/login {{\"login\": \"+79990000001\", \"password\": \"{}\", \"device_id\": \"demo\"}} (logins +79990000001 … +79990000100)",
            abs::demo::DEMO_PASSWORD
        );
    }
    if let Some(key) = generated_key {
        println!(
            "  Back-office key (generated for this run; set ARBAT_BACKOFFICE_KEY to fix it): {key}"
        );
    }
}
