//! The ledger's group commit (PostgreSQL's `ledger_writer`, SQLite's group writer): many
//! concurrent transfers share transactions, yet each keeps its own answer and the ledger's
//! invariants hold. Backend-neutral cases run on both backends through `conformance!`; the
//! PostgreSQL-only ones (two nodes on one database, a batch killed mid-way) follow.

use std::time::Duration;

use kernel::store::AbsStore as _;

use super::*;

/// The accounts a customer may not overdraw, and their floor (0).
const FLOORED: [&str; 3] = ["acc1", "acc2", "usd1"];

async fn assert_no_balance_below_its_floor(store: &dyn Store) {
    for account in FLOORED {
        let balance = account_balance(store, account).await;
        assert!(balance >= 0, "{account} at {balance}");
    }
}

/// Concurrent payments into one hot account (the bank's income) with refusals among them:
/// every refused transfer fails alone, every other one lands, exactly once.
pub(super) async fn abs_transfer_batches_keep_each_answer_and_the_invariants(
    store: Arc<dyn Store>,
) {
    seed_ledger(&*store).await;
    let mut tasks = JoinSet::new();
    for n in 0..90u32 {
        let store = store.clone();
        tasks.spawn(async move {
            let t = match n % 6 {
                // 1.00 from acc1 to acc2 with a 0.10 fee to the hot income account.
                0..=2 => transfer(
                    &format!("pay{n}"),
                    vec![
                        leg("acc1", -1_00, "RUB"),
                        leg("acc2", 1_00, "RUB"),
                        leg("acc1", -10, "RUB"),
                        leg("income-RUB", 10, "RUB"),
                    ],
                ),
                // More than acc2 can ever hold: refused.
                3 => transfer(
                    &format!("over{n}"),
                    vec![
                        leg("acc2", -10_000_00, "RUB"),
                        leg("income-RUB", 10_000_00, "RUB"),
                    ],
                ),
                // A replay of an earlier payment's id with the same legs: applied once.
                4 => transfer(
                    &format!("pay{}", n - 4),
                    vec![
                        leg("acc1", -1_00, "RUB"),
                        leg("acc2", 1_00, "RUB"),
                        leg("acc1", -10, "RUB"),
                        leg("income-RUB", 10, "RUB"),
                    ],
                ),
                // Into an account that does not exist.
                _ => transfer(
                    &format!("lost{n}"),
                    vec![leg("acc1", -1_00, "RUB"), leg("nowhere", 1_00, "RUB")],
                ),
            };
            (n, store.abs_transfer(&t).await)
        });
    }
    let mut fresh = 0;
    while let Some(joined) = tasks.join_next().await {
        let (n, answer) = joined.unwrap();
        match (n % 6, answer) {
            (0..=2, Ok(result)) => fresh += usize::from(!result.duplicate),
            (3, Err(StoreError::Refused("insufficient_funds"))) => {}
            // The replay lands before or after its original: one of the two is fresh.
            (4, Ok(result)) => fresh += usize::from(!result.duplicate),
            (5, Err(StoreError::NotFound)) => {}
            (kind, other) => panic!("transfer {n} (kind {kind}): unexpected {other:?}"),
        }
    }
    // 45 distinct payments (ids pay0, pay1, pay2, pay6, ...), each applied once.
    assert_eq!(fresh, 45);
    assert_eq!(account_balance(&*store, "acc1").await, 100_00 - 45 * 1_10);
    assert_eq!(account_balance(&*store, "acc2").await, 45 * 1_00);
    assert_eq!(account_balance(&*store, "income-RUB").await, 45 * 10);
    assert_no_balance_below_its_floor(&*store).await;
    assert_sums_zero(&*store).await;
}

/// Random transfers among all accounts from many concurrent callers (so batches mix accounts
/// in every order): no deadlock, sums zero, no floor crossed, replays change nothing.
pub(super) async fn abs_transfer_concurrent_random_batches_keep_the_invariants(
    store: Arc<dyn Store>,
) {
    seed_ledger(&*store).await;
    let accounts = ["acc1", "acc2", "income-RUB", "pos-RUB"];
    let mut tasks = JoinSet::new();
    for caller in 0..8u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (caller + 1);
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            for step in 0..15 {
                let from = accounts[next(4) as usize];
                let to = accounts[next(4) as usize];
                let amount = 1 + next(40_00) as i64;
                // Every caller reuses ids of the others: replays or conflicts across batches.
                let id = format!("r{}", (caller * 15 + step) % 70);
                let legs = vec![leg(from, -amount, "RUB"), leg(to, amount, "RUB")];
                match store.abs_transfer(&transfer(&id, legs)).await {
                    Ok(_)
                    | Err(StoreError::Refused("insufficient_funds" | "idempotency_conflict")) => {}
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_no_balance_below_its_floor(&*store).await;
    assert_sums_zero(&*store).await;
}

/// Two nodes (two stores, two pools, two ledger writers) on one PostgreSQL database pay into
/// one hot account at once, each replaying the other's ids: every id moves money once, and
/// neither node's batches deadlock with the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_batch_transfers_once_each_without_deadlock() {
    let db = testkit::PgDatabase::create().await.unwrap();
    let first = Arc::new(store::PgStore::connect(&db.url).await.unwrap());
    let second = Arc::new(store::PgStore::connect(&db.url).await.unwrap());
    seed_ledger(&*first).await;
    let mut tasks = JoinSet::new();
    for node in [first.clone(), second.clone()] {
        for n in 0..60u32 {
            let node = node.clone();
            tasks.spawn(async move {
                // acc1 → acc2 and acc2 → acc1 alternate, both with a fee to income-RUB, so
                // batches lock overlapping account sets.
                let (from, to) = if n % 2 == 0 {
                    ("acc1", "acc2")
                } else {
                    ("acc2", "acc1")
                };
                let legs = vec![
                    leg(from, -1_00, "RUB"),
                    leg(to, 1_00, "RUB"),
                    leg(from, -1, "RUB"),
                    leg("income-RUB", 1, "RUB"),
                ];
                node.abs_transfer(&transfer(&format!("t{n}"), legs)).await
            });
        }
    }
    let mut fresh = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(result) => fresh += usize::from(!result.duplicate),
            // acc2 starts empty: an early acc2 → acc1 may find no funds on either node.
            Err(StoreError::Refused("insufficient_funds")) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let income = account_balance(&*first, "income-RUB").await;
    assert_eq!(income, fresh as i64, "one fee per applied transfer");
    assert!(fresh >= 30, "every acc1 → acc2 fits: {fresh}");
    assert_eq!(
        account_balance(&*first, "acc1").await + account_balance(&*first, "acc2").await,
        100_00 - income
    );
    assert_no_balance_below_its_floor(&*first).await;
    assert_sums_zero(&*first).await;
    let (transactions, transfers) = first.ledger_write_stats();
    assert_eq!(transfers, 60);
    assert!(transactions <= transfers);
}

/// A batch that dies before its COMMIT (its connection is killed while it waits for a row
/// lock) answers every caller in it with an error and leaves no trace: the same ids apply
/// afresh afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failed_ledger_batch_answers_every_caller_and_changes_nothing() {
    use sqlx::Connection as _;
    let db = testkit::PgDatabase::create().await.unwrap();
    let node = Arc::new(store::PgStore::connect(&db.url).await.unwrap());
    seed_ledger(&*node).await;
    let before = all_balances(&*node).await;
    // Another session holds the hot account's row: the writer's batch waits on it.
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut blocking = blocker.begin().await.unwrap();
    sqlx::query("SELECT id FROM abs_products WHERE id = 'income-RUB' FOR UPDATE")
        .execute(&mut *blocking)
        .await
        .unwrap();
    let payment = |n: u32| {
        transfer(
            &format!("p{n}"),
            vec![
                leg("acc1", -1_00, "RUB"),
                leg("acc2", 1_00, "RUB"),
                leg("acc1", -10, "RUB"),
                leg("income-RUB", 10, "RUB"),
            ],
        )
    };
    let mut tasks = JoinSet::new();
    for n in 0..20 {
        let node = node.clone();
        tasks.spawn(async move { node.abs_transfer(&payment(n)).await });
    }
    // Kill every session of this database that waits for a lock (the writer's batches),
    // until every caller has an answer.
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !tasks.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "callers still waiting"
        );
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        if let Ok(Some(joined)) =
            tokio::time::timeout(Duration::from_millis(50), tasks.join_next()).await
        {
            answers.push(joined.unwrap());
        }
    }
    blocking.rollback().await.unwrap();
    assert_eq!(answers.len(), 20);
    for answer in &answers {
        assert!(
            matches!(answer, Err(StoreError::Unavailable(_))),
            "{answer:?}"
        );
    }
    let (transactions, transfers) = node.ledger_write_stats();
    assert_eq!(transfers, 20);
    assert!(
        transactions < transfers,
        "some batch carried several callers"
    );
    assert_eq!(all_balances(&*node).await, before);
    assert!(node.abs_ledger_sums().await.unwrap().is_empty());
    // Nothing of the failed batches was recorded: the same ids apply afresh.
    for n in 0..20 {
        assert!(!node.abs_transfer(&payment(n)).await.unwrap().duplicate);
    }
    assert_eq!(account_balance(&*node, "income-RUB").await, 20 * 10);
    assert_sums_zero(&*node).await;
}
