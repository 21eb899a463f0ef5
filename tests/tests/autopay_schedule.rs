//! End-to-end, monthly and weekly autopayments with the real binary, in both modes: saving
//! one indexes its next run in the store (in the journal's transaction), each node's
//! scheduler runs due rows of the partitions it owns through the customer's actor, and a run
//! pays its period exactly once, also when the owner is killed right after the run.
//!
//! A test makes a run due by writing the index row's `next_run_ms` into the past directly in
//! SQLite/PostgreSQL: the clock arriving, not a fake. Runs are checked in the reference
//! ABS's ledger (`abs_legs`), the system of record of the money.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use tests::{ArbatProcess, NatsServer, NodeSpec, PgDatabase, account, customer, eventually};

const WAIT: Duration = Duration::from_secs(20);
const PARTITIONS: u32 = 16;
/// Scheduler tick of the nodes under test.
const TICK_MS: &str = "100";

mod tempdir {
    pub struct TempDir(pub std::path::PathBuf);
    impl TempDir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The store a node writes, reached directly (as an operator's SQL console would).
enum Db {
    Sqlite(String),
    Postgres(String),
}

impl Db {
    /// Runs one statement binding (text, i64) parameters; returns the first column of the
    /// first row as i64 when it selects something.
    async fn scalar(&self, sql: &str, text: &[&str], numbers: &[i64]) -> Option<i64> {
        macro_rules! run {
            ($conn:expr) => {{
                let mut query = sqlx::query_scalar::<_, i64>(sql);
                for t in text {
                    query = query.bind(*t);
                }
                for n in numbers {
                    query = query.bind(*n);
                }
                query.fetch_optional(&mut $conn).await.expect("query")
            }};
        }
        match self {
            Db::Sqlite(url) => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
                run!(conn)
            }
            Db::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
                run!(conn)
            }
        }
    }

    async fn next_run_ms(&self, customer: &str, autopayment: &str) -> Option<i64> {
        self.scalar(
            "SELECT next_run_ms FROM autopay_schedule WHERE customer_id = $1 AND autopayment_id = $2",
            &[customer, autopayment],
            &[],
        )
        .await
    }

    /// The clock arrives: the run is due a second ago.
    async fn make_due(&self, customer: &str, autopayment: &str) {
        let past = now_ms() - 1_000;
        self.scalar(
            "UPDATE autopay_schedule SET next_run_ms = $3
             WHERE customer_id = $1 AND autopayment_id = $2 RETURNING next_run_ms",
            &[customer, autopayment],
            &[past],
        )
        .await
        .expect("the autopayment is indexed");
    }

    /// Debits of an account in the ABS ledger.
    async fn debits(&self, account: &str) -> i64 {
        self.scalar(
            "SELECT COUNT(*) FROM abs_legs WHERE account_id = $1 AND amount_minor < 0",
            &[account],
            &[],
        )
        .await
        .unwrap_or(0)
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn monthly(from: &str, to: &str, day: u8) -> Value {
    json!({"name": "savings", "operation": "transfer.own", "from": from,
        "amount": {"amount": "100.00", "currency": "RUB"}, "fields": {"to": to},
        "schedule": {"kind": "monthly", "day": day}})
}

/// This month's period key, as the run made due now belongs to it.
fn this_month() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

/// The `payment_status` events of an autopayment's runs in the customer's feed.
async fn runs(client: &tests::Client, token: &str, autopayment: &str) -> Vec<Value> {
    let prefix = format!("autopay:{autopayment}:");
    client
        .whole_feed(token)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e["kind"] == "payment_status"
                && e["payment_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&prefix))
        })
        .collect()
}

#[tokio::test]
async fn embedded_monthly_autopayment_runs_once_per_period_and_leaves_the_index_when_deleted() {
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env
        .push(("ARBAT_AUTOPAY_TICK_MS".into(), TICK_MS.into()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    let db = Db::Sqlite(format!("sqlite://{}", dir.0.join("arbat.db").display()));
    let client = node.client();
    let n = 21;
    let token = client.login(n).await.unwrap();
    let (from, to) = (format!("d0000{n}"), account(n));

    let (status, created) = client
        .post_idempotent("/v1/autopayments", &token, "m1", monthly(&from, &to, 1))
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["schedule"], json!({"kind": "monthly", "day": 1}));
    let id = created["id"].as_str().unwrap().to_owned();
    // Indexed with its next run: the 1st of a coming month at 00:00 UTC.
    let next = db.next_run_ms(&customer(n), &id).await.expect("indexed");
    assert!(next > now_ms());
    assert_eq!(next % 86_400_000, 0, "runs at 00:00 UTC");
    let debits_before = db.debits(&from).await;

    db.make_due(&customer(n), &id).await;
    let key = format!("autopay:{id}:{}", this_month());
    let run = eventually("the due run is paid", WAIT, || async {
        runs(&client, &token, &id).await.into_iter().next()
    })
    .await;
    assert_eq!(
        (run["payment_id"].as_str(), run["status"].as_str()),
        (Some(key.as_str()), Some("completed"))
    );
    // The index moved on to the next month's run.
    eventually("the index moves on", WAIT, || async {
        db.next_run_ms(&customer(n), &id)
            .await
            .filter(|next| *next > now_ms())
    })
    .await;
    assert_eq!(db.debits(&from).await, debits_before + 1);

    // The same period due again (a repeated clock): the run is recorded, nothing is paid,
    // and the index moves on again.
    db.make_due(&customer(n), &id).await;
    eventually("the repeated run is skipped", WAIT, || async {
        db.next_run_ms(&customer(n), &id)
            .await
            .filter(|next| *next > now_ms())
    })
    .await;
    assert_eq!(db.debits(&from).await, debits_before + 1);
    assert_eq!(runs(&client, &token, &id).await.len(), 1);

    // A weekly one is accepted too; a bad weekday is refused and changes nothing.
    let mut weekly = monthly(&from, &to, 1);
    weekly["schedule"] = json!({"kind": "weekly", "weekday": 7});
    let (status, problem) = client
        .post_idempotent("/v1/autopayments", &token, "w0", weekly.clone())
        .await
        .unwrap();
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("schedule.weekday"))
    );
    weekly["schedule"] = json!({"kind": "weekly", "weekday": 0});
    let (status, created) = client
        .post_idempotent("/v1/autopayments", &token, "w1", weekly)
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let weekly_id = created["id"].as_str().unwrap().to_owned();
    assert!(db.next_run_ms(&customer(n), &weekly_id).await.is_some());

    // Deleted: out of the index in the same transaction.
    let (status, _) = client
        .delete(&format!("/v1/autopayments/{id}"), Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(db.next_run_ms(&customer(n), &id).await, None);
}

#[tokio::test]
async fn a_refused_scheduled_run_is_reported_once_and_moves_nothing() {
    let dir = tempdir::TempDir::new();
    let mut spec = NodeSpec::embedded(&dir.0);
    spec.env
        .push(("ARBAT_AUTOPAY_TICK_MS".into(), TICK_MS.into()));
    let node = ArbatProcess::start(spec).await.expect("node starts");
    let db = Db::Sqlite(format!("sqlite://{}", dir.0.join("arbat.db").display()));
    let client = node.client();
    let n = 22;
    let token = client.login(n).await.unwrap();
    let (from, to) = (format!("d0000{n}"), account(n));
    let mut body = monthly(&from, &to, 15);
    body["amount"]["amount"] = json!("9000000.00");
    let (status, created) = client
        .post_idempotent("/v1/autopayments", &token, "big", body)
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let debits_before = db.debits(&from).await;
    db.make_due(&customer(n), &id).await;
    let run = eventually("the refusal is reported", WAIT, || async {
        runs(&client, &token, &id).await.into_iter().next()
    })
    .await;
    assert_eq!(run["status"], "rejected");
    assert!(run["code"].is_string(), "{run}");
    eventually("the index moves on", WAIT, || async {
        db.next_run_ms(&customer(n), &id)
            .await
            .filter(|next| *next > now_ms())
    })
    .await;
    db.make_due(&customer(n), &id).await;
    eventually("not retried in the period", WAIT, || async {
        db.next_run_ms(&customer(n), &id)
            .await
            .filter(|next| *next > now_ms())
    })
    .await;
    assert_eq!(runs(&client, &token, &id).await.len(), 1);
    assert_eq!(db.debits(&from).await, debits_before);
}

#[tokio::test]
async fn autopayment_runs_exactly_once_per_period_across_a_node_kill() {
    let nats = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
    let pg = PgDatabase::create().await.expect("PostgreSQL");
    let sms = tests::SmsGateway::start().await.expect("local SMS gateway");
    let mut nodes = vec![];
    for i in 0..2 {
        let mut spec = NodeSpec::cluster(&nats.url(), &pg.url, &format!("n{i}"), &sms.url);
        spec.env
            .push(("ARBAT_AUTOPAY_TICK_MS".into(), TICK_MS.into()));
        nodes.push(
            ArbatProcess::start(spec)
                .await
                .expect("cluster node starts"),
        );
    }
    eventually(
        "partitions are spread over the nodes",
        Duration::from_secs(30),
        || async {
            let mut all = vec![];
            for node in &nodes {
                let owned = node.partitions().await;
                if owned.is_empty() {
                    return None;
                }
                all.extend(owned);
            }
            all.sort();
            (all == (0..PARTITIONS).collect::<Vec<_>>()).then_some(())
        },
    )
    .await;
    let db = Db::Postgres(pg.url.clone());
    // A customer of node 0's partitions, served to the test through node 1 (the survivor).
    let owned = nodes[0].partitions().await;
    let n = (10..=99)
        .find(|n| owned.contains(&kernel::partition_of(&customer(*n), PARTITIONS)))
        .expect("a demo customer owned by node 0");
    let client = nodes[1].client();
    let token = client.login(n).await.unwrap();
    let (from, to) = (format!("d0000{n}"), account(n));
    let (status, created) = client
        .post_idempotent("/v1/autopayments", &token, "m1", monthly(&from, &to, 28))
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let debits_before = db.debits(&from).await;

    // The run falls due on the owner; it is killed the moment the ledger has the debit,
    // before or after it journaled the payment and moved the index.
    db.make_due(&customer(n), &id).await;
    eventually("the owner runs it", WAIT, || async {
        (db.debits(&from).await > debits_before).then_some(())
    })
    .await;
    nodes[0].kill9();

    // The clock arrives again for the same period (as if the index had not moved), and the
    // survivor takes the partition over.
    db.make_due(&customer(n), &id).await;
    eventually(
        "the survivor owns every partition",
        Duration::from_secs(30),
        || async { (nodes[1].partitions().await.len() == PARTITIONS as usize).then_some(()) },
    )
    .await;
    eventually("the survivor handles the due run", WAIT, || async {
        db.next_run_ms(&customer(n), &id)
            .await
            .filter(|next| *next > now_ms())
    })
    .await;

    assert_eq!(
        db.debits(&from).await,
        debits_before + 1,
        "exactly one debit for the period"
    );
    let key = format!("autopay:{id}:{}", this_month());
    let runs = eventually("the run is in the journal", WAIT, || async {
        let runs = runs(&client, &token, &id).await;
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["payment_id"], key.as_str());
    assert_eq!(runs[0]["status"], "completed");
}
