//! Small helpers the end-to-end files share: a two-or-more-node cluster, a temporary folder
//! removed on drop, RUB amounts
//! as the API writes them, an account's balance, and today's UTC date.

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::{ArbatProcess, NatsServer, NodeSpec, PgDatabase, SmsGateway, eventually};

/// A cluster for one test: nats-server, a fresh PostgreSQL database, a local SMS gateway and
/// `n` real nodes, started and owning partitions. Fields drop in order, nodes first.
pub struct Cluster {
    pub nodes: Vec<ArbatProcess>,
    pub sms: SmsGateway,
    pub db: PgDatabase,
    pub nats: NatsServer,
}

impl Cluster {
    pub async fn start(n: usize) -> Self {
        let nats = NatsServer::start().expect("nats-server 2.10+ (set ARBAT_NATS_SERVER)");
        let db = PgDatabase::create().await.expect("PostgreSQL");
        let sms = SmsGateway::start().await.expect("local SMS gateway");
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let spec = NodeSpec::cluster(&nats.url(), &db.url, &format!("n{i}"), &sms.url);
            nodes.push(
                ArbatProcess::start(spec)
                    .await
                    .expect("cluster node starts"),
            );
        }
        eventually(
            "every node owns partitions",
            Duration::from_secs(30),
            || async {
                for node in &nodes {
                    if node.partitions().await.is_empty() {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        Cluster {
            nodes,
            sms,
            db,
            nats,
        }
    }
}

/// A folder under the system temp dir, removed with everything in it on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("arbat-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `{"amount": amount, "currency": "RUB"}`.
pub fn rub(amount: &str) -> Value {
    json!({"amount": amount, "currency": "RUB"})
}

/// Minor units of a `{"amount": "1234.56"}` value with two fraction digits.
pub fn minor(money: &Value) -> i64 {
    let amount = money["amount"].as_str().expect("amount string");
    let (whole, fraction) = amount.split_once('.').expect("two fraction digits");
    let sign = if whole.starts_with('-') { -1 } else { 1 };
    whole.parse::<i64>().expect("whole part") * 100
        + sign * fraction.parse::<i64>().expect("fraction")
}

/// The balance (`"1234.56"`) of one of the caller's accounts, as `GET /v1/products` shows it.
pub async fn account_balance(client: &crate::Client, token: &str, id: &str) -> String {
    let (_, products) = client.get("/v1/products", Some(token)).await.unwrap();
    products["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["balance"]["amount"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Today's UTC date as `YYYY-MM-DD`.
pub fn today() -> String {
    let today = OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        today.month() as u8,
        today.day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_of_api_amounts() {
        assert_eq!(minor(&rub("1234.56")), 123_456);
        assert_eq!(minor(&rub("-0.05")), -5);
        assert_eq!(minor(&rub("-12.30")), -1_230);
    }
}
