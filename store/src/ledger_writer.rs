//! Group commit for the reference ABS ledger's transfers on PostgreSQL.
//!
//! A transfer locks its accounts' rows until its transaction commits, and each commit waits for
//! its own WAL flush. With one transaction per transfer, every payment to a hot account (a
//! biller's settlement account, the bank's income account) queues behind the previous one's
//! flush, so throughput cannot grow with concurrency. Instead, transfers queue on a bounded
//! channel; a writer task takes everything waiting (up to [`MAX_BATCH`], with no added wait
//! when idle) and applies it in ONE transaction:
//!
//! 1. every account the batch touches is locked up front in one statement, in byte order of
//!    account id (the order `abs_transfer` locks in, and `COLLATE "C"` so PostgreSQL's order is
//!    the same), so concurrent batches from several nodes and single transfers cannot deadlock;
//! 2. each transfer runs in its own SAVEPOINT: a refused one (insufficient funds, closed
//!    account, reused id) rolls back alone and keeps its own answer;
//! 3. one COMMIT (one WAL flush) makes the batch durable, and only then does any caller get
//!    its answer. If the batch fails as a whole, every caller gets an error and nothing of the
//!    batch is applied.
//!
//! One writer per store, on purpose: the next batch forms while the current one commits, so
//! batches grow with load. Several writers sharing the queue were measured worse on the hot
//! account (docs/benchmarks.md): they split the queue into smaller batches that then wait for
//! each other's row locks one after another.
//!
//! SQLite needs none of this: its group-commit writer (`group.rs`) already batches every write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kernel::store::{AbsTransfer, AbsTransferResult, StoreError};
use sqlx::{Acquire as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::convert::db_err;

/// Transfers waiting for the writer; a full queue makes callers wait (backpressure).
const QUEUE: usize = 1024;
/// Most transfers in one transaction, bounding how long one batch holds its row locks.
pub(crate) const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<AbsTransferResult, StoreError>>;

struct Request {
    transfer: AbsTransfer,
    reply: Reply,
}

/// Counters for tests and diagnostics.
#[derive(Default)]
pub(crate) struct LedgerWriterStats {
    /// Transactions (batches) the writer ran.
    pub(crate) transactions: AtomicU64,
    /// Transfers those batches carried.
    pub(crate) transfers: AtomicU64,
}

/// Handle to the writer task; it ends when the last handle drops.
pub(crate) struct LedgerWriter {
    requests: mpsc::Sender<Request>,
    pub(crate) stats: Arc<LedgerWriterStats>,
}

impl LedgerWriter {
    pub(crate) fn spawn(pool: PgPool) -> Self {
        let (requests, queue) = mpsc::channel(QUEUE);
        let stats = Arc::new(LedgerWriterStats::default());
        tokio::spawn(run(pool, queue, stats.clone()));
        Self { requests, stats }
    }

    /// Applies `transfer` in the next batch and answers once that batch committed.
    ///
    /// If the caller stops waiting, the transfer still runs: once queued, it is the writer's.
    pub(crate) async fn transfer(
        &self,
        transfer: AbsTransfer,
    ) -> Result<AbsTransferResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { transfer, reply })
            .await
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("ledger transfer not applied".into())
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Request>, stats: Arc<LedgerWriterStats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .transfers
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (transfers, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|r| (r.transfer, r.reply)).unzip();
        let answers = match pool.acquire().await {
            Ok(mut conn) => apply_batch(&mut conn, &transfers).await,
            Err(error) => Err(db_err(error)),
        };
        match answers {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The caller may have gone; the transfer's fate is settled either way.
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                tracing::warn!(%error, transfers = transfers.len(), "ledger batch not committed");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The accounts a batch touches, deduplicated, in byte order (Rust's `str` order).
fn accounts_in_lock_order(transfers: &[AbsTransfer]) -> Vec<String> {
    let accounts: std::collections::BTreeSet<&str> = transfers
        .iter()
        .flat_map(|t| t.legs.iter().map(|leg| leg.account_id.as_str()))
        .collect();
    accounts.into_iter().map(str::to_owned).collect()
}

/// Runs one batch in one transaction: `Ok` holds each transfer's own answer (in order) after
/// the COMMIT; `Err` means nothing of the batch was applied.
pub(crate) async fn apply_batch(
    conn: &mut PgConnection,
    transfers: &[AbsTransfer],
) -> Result<Vec<Result<AbsTransferResult, StoreError>>, StoreError> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    // `ORDER BY` sits below the row locking in PostgreSQL's plan, so rows lock in this order.
    sqlx::query(
        "SELECT id FROM abs_products WHERE id = ANY($1) ORDER BY id COLLATE \"C\" FOR UPDATE",
    )
    .bind(accounts_in_lock_order(transfers))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut answers = Vec::with_capacity(transfers.len());
    for transfer in transfers {
        // A nested sqlx transaction is a SAVEPOINT; rollback is ROLLBACK TO + RELEASE.
        let mut savepoint = tx.begin().await.map_err(db_err)?;
        let answer = crate::postgres::queries::abs_transfer(&mut savepoint, transfer).await;
        if answer.is_ok() {
            savepoint.commit().await.map_err(db_err)?;
        } else {
            savepoint.rollback().await.map_err(db_err)?;
        }
        answers.push(answer);
    }
    tx.commit().await.map_err(db_err)?;
    Ok(answers)
}

#[cfg(test)]
mod tests {
    // Amounts are written as major_minor (`120_50` is 120.50) so they read like money.
    #![allow(clippy::inconsistent_digit_grouping)]

    use kernel::store::{AbsCustomer, AbsLeg, AbsProduct, AbsStore as _};

    use super::*;
    use crate::PgStore;

    fn leg(account: &str) -> AbsLeg {
        AbsLeg {
            account_id: account.into(),
            amount_minor: 1,
            currency: "RUB".into(),
            floor_minor: 0,
        }
    }

    fn pay(id: &str, from: &str, to: &str, amount: i64) -> AbsTransfer {
        AbsTransfer {
            id: id.into(),
            legs: vec![
                AbsLeg {
                    account_id: from.into(),
                    amount_minor: -amount,
                    currency: "RUB".into(),
                    floor_minor: 0,
                },
                AbsLeg {
                    account_id: to.into(),
                    amount_minor: amount,
                    currency: "RUB".into(),
                    floor_minor: i64::MIN,
                },
            ],
            description: "Payment".into(),
            counterparty: None,
        }
    }

    /// A fresh PostgreSQL database with accounts `a1`, `a2` (100.00 each) and `settle`.
    async fn ledger_db() -> (testkit::PgDatabase, PgStore) {
        let db = testkit::PgDatabase::create().await.expect("ARBAT_TEST_PG");
        let store = PgStore::connect(&db.url).await.unwrap();
        let accounts = [
            ("c1", "a1", 100_00),
            ("c2", "a2", 100_00),
            ("biller", "settle", 0),
        ];
        for (n, (customer, account, balance)) in accounts.into_iter().enumerate() {
            let product = AbsProduct {
                id: account.into(),
                customer_id: kernel::CustomerId::parse(customer).unwrap(),
                kind: "account".into(),
                title: account.into(),
                currency: "RUB".into(),
                balance_minor: balance,
                status: "active".into(),
                details: serde_json::json!({}),
            };
            let customer = AbsCustomer {
                id: kernel::CustomerId::parse(customer).unwrap(),
                phone: format!("+7999000000{n}"),
                name: customer.into(),
                language: "en".into(),
            };
            store.abs_seed(&customer, &[product]).await.unwrap();
        }
        (db, store)
    }

    async fn balance(store: &PgStore, account: &str) -> i64 {
        store
            .abs_account(account)
            .await
            .unwrap()
            .unwrap()
            .balance_minor
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_transfer_in_the_middle_rolls_back_alone() {
        let (_db, store) = ledger_db().await;
        let mut conn = store.pool.acquire().await.unwrap();
        let batch = [
            pay("p1", "a1", "settle", 30_00),
            pay("p2", "a2", "settle", 500_00), // more than a2 has
            pay("p1", "a1", "settle", 30_00),  // the same id again in the same batch
            pay("p3", "a2", "settle", 20_00),
            pay("p1", "a2", "settle", 1_00), // p1's id with other legs
            pay("p4", "a1", "missing", 1_00),
        ];
        let answers = apply_batch(&mut conn, &batch).await.unwrap();
        drop(conn);
        assert!(!answers[0].as_ref().unwrap().duplicate);
        assert_eq!(answers[1], Err(StoreError::Refused("insufficient_funds")));
        let again = answers[2].as_ref().unwrap();
        assert!(again.duplicate);
        assert_eq!(again.legs, answers[0].as_ref().unwrap().legs);
        assert_eq!(answers[3].as_ref().unwrap().legs[1].balance_minor, 50_00);
        assert_eq!(answers[4], Err(StoreError::Refused("idempotency_conflict")));
        assert_eq!(answers[5], Err(StoreError::NotFound));
        assert_eq!(balance(&store, "a1").await, 70_00);
        assert_eq!(balance(&store, "a2").await, 80_00);
        assert_eq!(balance(&store, "settle").await, 50_00);
        for (currency, sum) in store.abs_ledger_sums().await.unwrap() {
            assert_eq!(sum, 0, "{currency}");
        }
        // The refused ids stay free; the applied one answers as a duplicate in a later batch.
        let mut conn = store.pool.acquire().await.unwrap();
        let later = apply_batch(
            &mut conn,
            &[
                pay("p2", "a2", "settle", 5_00),
                pay("p1", "a1", "settle", 30_00),
            ],
        )
        .await
        .unwrap();
        assert!(!later[0].as_ref().unwrap().duplicate);
        assert!(later[1].as_ref().unwrap().duplicate);
        assert_eq!(balance(&store, "a2").await, 75_00);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_transactions_and_answer_after_commit() {
        let (_db, store) = ledger_db().await;
        let store = Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..120 {
            let store = store.clone();
            // 1.00 each, half from a1 and half from a2; every 10th (all from a1) asks for
            // 200.00, more than a1 has.
            let from = if n % 2 == 0 { "a1" } else { "a2" };
            let amount = if n % 10 == 0 { 200_00 } else { 1_00 };
            tasks.spawn(async move {
                store
                    .abs_transfer(&pay(&format!("t{n}"), from, "settle", amount))
                    .await
            });
        }
        let (mut applied, mut refused) = (0, 0);
        while let Some(answer) = tasks.join_next().await {
            match answer.unwrap() {
                Ok(result) => {
                    assert!(!result.duplicate);
                    applied += 1;
                }
                Err(StoreError::Refused("insufficient_funds")) => refused += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((applied, refused), (108, 12));
        assert_eq!(balance(&store, "a1").await, 100_00 - 48_00);
        assert_eq!(balance(&store, "a2").await, 100_00 - 60_00);
        assert_eq!(balance(&store, "settle").await, 108_00);
        let (transactions, transfers) = store.ledger_write_stats();
        assert_eq!(transfers, 120);
        assert!(
            transactions < transfers,
            "{transactions} transactions for {transfers} transfers"
        );
    }

    #[test]
    fn accounts_lock_once_each_in_byte_order() {
        let transfers = vec![
            AbsTransfer {
                id: "t1".into(),
                legs: vec![leg("settle-utility"), leg("a000002"), leg("income-RUB")],
                description: String::new(),
                counterparty: None,
            },
            AbsTransfer {
                id: "t2".into(),
                legs: vec![leg("a000001"), leg("settle-utility"), leg("Z-upper")],
                description: String::new(),
                counterparty: None,
            },
        ];
        assert_eq!(
            accounts_in_lock_order(&transfers),
            vec![
                "Z-upper",
                "a000001",
                "a000002",
                "income-RUB",
                "settle-utility"
            ]
        );
    }
}
