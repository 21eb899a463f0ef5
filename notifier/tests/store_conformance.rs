//! One suite for every NotifierStore: memory, SQLite and PostgreSQL.

use kernel::CustomerId;
use notifier::*;

async fn conformance(store: &dyn NotifierStore) {
    let c = CustomerId::parse("c1").unwrap();
    let d = CustomerId::parse("c2").unwrap();
    assert_eq!(store.preferences(&c).await.unwrap(), None);
    let mut p = Preferences {
        language: Some(Language::En),
        phone: Some("+79990000001".into()),
        ..Preferences::default()
    };
    store.put_preferences(&c, &p).await.unwrap();
    p.language = Some(Language::Ru);
    store.put_preferences(&c, &p).await.unwrap();
    assert_eq!(store.preferences(&c).await.unwrap(), Some(p));

    let dev = |t: &str| Device {
        platform: Platform::Ios,
        token: t.into(),
        language: Some(Language::Ru),
    };
    store.upsert_device(&c, &dev("t1")).await.unwrap();
    store.upsert_device(&c, &dev("t2")).await.unwrap();
    store.upsert_device(&c, &dev("t1")).await.unwrap();
    assert_eq!(store.devices(&c).await.unwrap().len(), 2);
    store.upsert_device(&d, &dev("t2")).await.unwrap(); // the token moved to another customer
    assert_eq!(store.devices(&c).await.unwrap(), vec![dev("t1")]);
    assert!(!store.remove_device(&c, "t2").await.unwrap());
    assert!(store.remove_device(&d, "t2").await.unwrap());

    assert_eq!(store.send_state("r1", Channel::Sms).await.unwrap(), None);
    store
        .record_send("r1", Channel::Sms, SendState::Sent)
        .await
        .unwrap();
    store
        .record_send("r1", Channel::Sms, SendState::Failed)
        .await
        .unwrap();
    assert_eq!(
        store.send_state("r1", Channel::Sms).await.unwrap(),
        Some(SendState::Sent),
        "first record wins"
    );
    assert_eq!(store.send_state("r1", Channel::Push).await.unwrap(), None);

    let outcome = DeliveryOutcome {
        request_id: "r1".into(),
        customer_id: Some(c.clone()),
        kind: Some(Kind::Code),
        channel: Some(Channel::Sms),
        status: OutcomeStatus::Accepted,
        provider: Some("sms".into()),
        reason: None,
        at: kernel::now(),
    };
    store.record_outcome(&outcome).await.unwrap();
    assert_eq!(store.outcomes("r1").await.unwrap(), vec![outcome]);
    assert_eq!(store.count_code(&c, 600).await.unwrap(), 1);
    assert_eq!(store.count_code(&c, 600).await.unwrap(), 2);
    assert_eq!(store.count_code(&c, 1200).await.unwrap(), 1);
    assert_eq!(store.count_code(&d, 600).await.unwrap(), 1);
}

#[tokio::test]
async fn memory_store() {
    conformance(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_store_with_idempotent_migrations() {
    let dir = std::env::temp_dir().join(format!("notif-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("n.db").display());
    let store = SqlStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    conformance(&store).await;
    drop(store);
    let reopened = SqlStore::connect(&url).await.unwrap();
    assert_eq!(
        reopened.send_state("r1", Channel::Sms).await.unwrap(),
        Some(SendState::Sent),
        "durable"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_store_with_idempotent_migrations() {
    let db = testkit::PgDatabase::create().await.unwrap();
    let store = SqlStore::connect(&db.url).await.unwrap();
    let again = SqlStore::connect(&db.url).await.unwrap();
    conformance(&store).await;
    assert_eq!(
        again.send_state("r1", Channel::Sms).await.unwrap(),
        Some(SendState::Sent)
    );
}
