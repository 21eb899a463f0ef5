//! The baseline of `bench payments`: the ledger's own postings/s. `abs::Abs::pay` in the
//! bench process on a fresh database of the node's backend (a fresh SQLite file, or a fresh
//! PostgreSQL database), seeded with the same demo customers, driven with the same transfer
//! shape and concurrency as the node: no HTTP, actor, journal or feed; the changes the ABS
//! publishes are counted and discarded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use kernel::change::{ChangeSink, SinkError, SubmitReport};
use kernel::payment::{Destination, PaymentCommand};
use kernel::{Change, Money};

use crate::cluster::TempDir;
use crate::payclient::{self, HOT_ACCOUNT, Shape, UTILITY_FEE_MINOR};

/// Discards the ABS's changes, counting them (the baseline measures the ledger alone).
#[derive(Default)]
struct CountingSink {
    changes: AtomicU64,
}

#[async_trait]
impl ChangeSink for CountingSink {
    async fn submit(&self, changes: Vec<Change>) -> Result<SubmitReport, SinkError> {
        self.changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        Ok(SubmitReport {
            accepted: changes.len(),
            rejected: vec![],
        })
    }
}

/// The ledger in this process on a fresh database of the node's backend, seeded with the
/// demo customers.
pub struct Ledger {
    abs: abs::Abs,
    _dir: Option<TempDir>,
    _pg: Option<testkit::PgDatabase>,
}

impl Ledger {
    pub async fn open(backend: &str, url: Option<&str>) -> anyhow::Result<Self> {
        let (store, dir, pg): (Arc<dyn store::Store>, _, _) = match (backend, url) {
            (_, Some(url)) => {
                let store = Arc::new(store::PgStore::connect(url).await?);
                abs::demo::seed(&*store).await?;
                (store, None, None)
            }
            ("postgres", None) => {
                let pg = testkit::PgDatabase::create()
                    .await
                    .context("a PostgreSQL database for the ledger baseline (ARBAT_TEST_PG)")?;
                let store = Arc::new(store::PgStore::connect(&pg.url).await?);
                abs::demo::seed(&*store).await?;
                (store, None, Some(pg))
            }
            _ => {
                let dir = TempDir::new("arbat-bench-ledger")?;
                let store =
                    Arc::new(store::SqliteStore::open(&dir.path().join(store::SQLITE_FILE)).await?);
                abs::demo::seed(&*store).await?;
                (store, Some(dir), None)
            }
        };
        Ok(Self {
            abs: abs::Abs::new(store, Arc::new(CountingSink::default())),
            _dir: dir,
            _pg: pg,
        })
    }

    /// `Abs::pay` per second with `clients` concurrent callers; (rate, failures).
    #[allow(clippy::too_many_arguments)]
    pub async fn postings_per_s(
        &self,
        shape: Shape,
        customers: u32,
        first: u32,
        amount: Money,
        clients: usize,
        warmup: Duration,
        window: Duration,
        run: &str,
    ) -> anyhow::Result<(f64, u64)> {
        let next = Arc::new(AtomicU64::new(0));
        let begin = Instant::now();
        let (start, end) = (begin + warmup, begin + warmup + window);
        let mut tasks = vec![];
        for _ in 0..clients {
            let (abs, next, run) = (self.abs.clone(), next.clone(), run.to_owned());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let command = ledger_command(shape, i, customers, first, amount, &run);
                    let result = abs.pay(&command).await;
                    if sent >= start {
                        match result {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for task in tasks {
            let (o, f) = task.await?;
            ok += o;
            failed += f;
        }
        Ok((ok as f64 / window.as_secs_f64(), failed))
    }
}

/// The ABS command the node's actor sends for payment `i` of `shape` (same routing as
/// [`payclient::payment_body`]: phone transfer without fee, or the biller with its fee).
fn ledger_command(
    shape: Shape,
    i: u64,
    customers: u32,
    first: u32,
    amount: Money,
    run: &str,
) -> PaymentCommand {
    let (payer, payee) = payclient::payer_and_payee(i, customers as usize);
    let n = first + payer as u32;
    let (to, fee, description) = if payclient::pays_biller(shape, i) {
        (
            Destination::Settlement {
                account_id: HOT_ACCOUNT.into(),
                reference: format!("{:010}", i % 10_000_000_000),
            },
            Some(Money::new(UTILITY_FEE_MINOR, amount.currency)),
            "Electricity bill",
        )
    } else {
        (
            Destination::Phone {
                phone: abs::demo::phone(first + payee as u32),
            },
            None,
            "Transfer by phone number",
        )
    };
    PaymentCommand {
        id: format!("ledger-{run}-{i}"),
        customer_id: abs::demo::customer_id(n),
        from: format!("a{n:06}"),
        to,
        amount,
        fee,
        description: description.into(),
        quote: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::Currency;

    #[test]
    fn ledger_commands_have_the_node_payments_shape() {
        let rub = Currency::parse("RUB").unwrap();
        let amount = Money::new(100, rub);
        let hot = ledger_command(Shape::Hot, 5, 10, 1, amount, "r");
        assert_eq!(hot.from, "a000006");
        assert_eq!(hot.customer_id.as_str(), "c000006");
        assert_eq!(hot.fee, Some(Money::new(UTILITY_FEE_MINOR, rub)));
        assert!(
            matches!(hot.to, Destination::Settlement { ref account_id, .. } if account_id == HOT_ACCOUNT)
        );
        let spread = ledger_command(Shape::Spread, 0, 10, 1, amount, "r");
        assert!(matches!(spread.to, Destination::Phone { ref phone } if phone == "+79990000002"));
        assert_eq!(spread.fee, None);
        assert_ne!(
            ledger_command(Shape::Spread, 1, 10, 1, amount, "r").id,
            spread.id
        );
    }
}
