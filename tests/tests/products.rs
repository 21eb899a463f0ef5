//! End-to-end loans with the real binary (embedded: SQLite, in-process bus, the reference ABS
//! in-process): a loan's annuity schedule, the next payment and a deposit's interest that
//! `GET /v1/products` shows from it, and schedules of someone else's loans. Cards are in
//! `products_cards.rs`, opening deposits in `products_deposits.rs`.

use serde_json::{Value, json};
use tests::fixtures::{TempDir, minor, rub, today};

#[tokio::test]
async fn a_loan_schedule_is_an_annuity_and_products_show_its_next_payment() {
    let dir = TempDir::new();
    let node = tests::ArbatProcess::start(tests::NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();

    let (status, schedule) = client
        .get("/v1/loans/l000001/schedule", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{schedule}");
    assert_eq!(schedule["loan_id"], "l000001");
    assert_eq!(schedule["principal"], rub("300000.00"));
    assert_eq!(schedule["rate"], "19.9");
    assert_eq!(schedule["term_months"], 36);
    assert_eq!(schedule["start_date"], "2026-11-15");
    // 300 000 at 19.9% over 36 months: the level payment, reproduced independently in
    // domain/src/products/tests.rs.
    assert_eq!(schedule["payment"], rub("11133.80"));
    let items = schedule["items"].as_array().unwrap();
    assert_eq!(items.len(), 36);
    assert_eq!(items[0]["date"], "2026-12-15");
    assert_eq!(items[0]["interest"], rub("4975.00"));
    assert_eq!(items[35]["date"], "2029-11-15");
    assert_eq!(items[35]["payment"], rub("11133.57"));
    assert_eq!(items[35]["balance_after"], rub("0.00"));
    let principal_paid: i64 = items.iter().map(|i| minor(&i["principal"])).sum();
    assert_eq!(principal_paid, 30_000_000);

    // The next payment is the first instalment due today or later, the same in both reads.
    let today = today();
    let expected_next = items
        .iter()
        .find(|i| i["date"].as_str().unwrap() >= today.as_str())
        .map(|i| json!({"date": i["date"], "amount": i["payment"]}))
        .unwrap_or(Value::Null);
    assert_eq!(schedule["next_payment"], expected_next);
    let (status, products) = client.get("/v1/products", Some(&token)).await.unwrap();
    assert_eq!(status, 200);
    let loan = &products["loans"][0];
    assert_eq!(loan["id"], "l000001");
    assert_eq!(loan["next_payment"], expected_next);

    // The deposit shows its rate and interest: 500 000 at 12.5% for 730 days.
    let deposit = &products["deposits"][0];
    assert_eq!(deposit["rate"], "12.5");
    assert_eq!(deposit["interest_expected"], rub("125000.00"));
    let accrued = minor(&deposit["interest_accrued"]);
    assert!(
        (0..=12_500_000).contains(&accrued),
        "accrued {accrued} within the term's interest"
    );
}

#[tokio::test]
async fn schedules_of_loans_that_are_not_the_callers_are_not_found() {
    let dir = TempDir::new();
    let node = tests::ArbatProcess::start(tests::NodeSpec::embedded(&dir.0))
        .await
        .expect("node starts");
    let client = node.client();
    let token = client.login(1).await.unwrap();
    // Customer 2's loan, an unknown id, the caller's own account (not a loan) and an
    // overlong id all answer the same problem.
    let long = format!("/v1/loans/{}/schedule", "l".repeat(300));
    for path in [
        "/v1/loans/l000002/schedule",
        "/v1/loans/nope/schedule",
        "/v1/loans/a000001/schedule",
        long.as_str(),
    ] {
        let (status, body) = client.get(path, Some(&token)).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "not_found", "{path}");
    }
    let (status, body) = client
        .get("/v1/loans/l000001/schedule", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");
}
