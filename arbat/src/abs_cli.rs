//! `arbat abs post`: posts a transaction through the reference ABS's admin endpoint, as a
//! teller or a test would, and prints the outcome.

use anyhow::{Context, bail};
use kernel::{Currency, Money};

#[derive(Debug, clap::Args)]
pub struct PostArgs {
    /// The node to talk to.
    #[arg(long, env = "ARBAT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The back-office key.
    #[arg(long, env = "ARBAT_BACKOFFICE_KEY", hide_env_values = true)]
    pub key: String,
    /// Account id, e.g. a000001.
    #[arg(long)]
    pub account: String,
    /// Decimal amount, negative for a debit, e.g. -250.00.
    #[arg(long, allow_hyphen_values = true)]
    pub amount: String,
    #[arg(long, default_value = "RUB")]
    pub currency: String,
    #[arg(long, default_value = "Posting")]
    pub description: String,
    #[arg(long)]
    pub mcc: Option<String>,
    /// Posting id (idempotency); random when not given.
    #[arg(long)]
    pub id: Option<String>,
}

pub async fn post(args: PostArgs) -> anyhow::Result<()> {
    let currency = Currency::parse(&args.currency).context("--currency")?;
    let amount = Money::parse(&args.amount, currency).context("--amount")?;
    let body = serde_json::json!({
        "id": args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "account_id": args.account,
        "amount": amount,
        "description": args.description,
        "mcc": args.mcc,
    });
    let response = reqwest::Client::new()
        .post(format!(
            "{}/admin/v1/abs/postings",
            args.url.trim_end_matches('/')
        ))
        .bearer_auth(&args.key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("reaching {}", args.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the ABS refused the posting ({status}): {text}");
    }
    println!("{text}");
    Ok(())
}
