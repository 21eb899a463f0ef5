//! The store contract, checked against both backends.
//!
//! Each case is written once as an async fn over `Arc<dyn Store>` (an `Arc` so cases can
//! spawn concurrent writers); the `conformance!` macro runs every case on a fresh SQLite file
//! and on a fresh PostgreSQL database (`testkit::PgDatabase`, `ARBAT_TEST_PG` or the local
//! server). Backend-specific behaviour (reopening a file, concurrent migrations) follows.

// Amounts are written as major_minor (`120_50` is 120.50) so they read like money.
#![allow(clippy::inconsistent_digit_grouping)]

use std::path::PathBuf;
use std::sync::Arc;

use kernel::store::{
    AbsCustomer, AbsLeg, AbsPosting, AbsProduct, AbsTransfer, AuditEntry, ChallengeRecord, Commit,
    Credential, JournalStore, LockoutPolicy, OutboxMessage, SessionRecord, Snapshot, StaffAccount,
    Store, StoreError, TotpEnrolment,
};
use kernel::{CustomerId, FeedEvent};
use serde_json::json;
use tokio::task::JoinSet;

// ---- harness ----------------------------------------------------------------------------

/// A temp data folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "arbat-store-test-{}-{}",
            std::process::id(),
            kernel::now().unix_timestamp_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn with_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = TempDir::new();
    let store = store::open(None, &dir.0).await.expect("open SQLite store");
    case(store).await;
}

async fn with_postgres<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = testkit::PgDatabase::create()
        .await
        .expect("a test PostgreSQL server (ARBAT_TEST_PG)");
    let dir = TempDir::new();
    let store = store::open(Some(&db.url), &dir.0)
        .await
        .expect("connect PostgreSQL store");
    case(store).await;
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_sqlite(super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_postgres(super::$case).await;
                }
            )*
        }
    };
}

conformance!(
    commit_load_journal_and_feed_paging,
    events_round_trip_exactly,
    version_conflict_changes_nothing,
    concurrent_first_commits_only_one_wins,
    duplicate_change_id_changes_nothing,
    non_contiguous_seqs_are_refused,
    applied_changes_reports_consumed_ids,
    snapshot_round_trip,
    mark_read_is_monotonic_and_clamped,
    outbox_pending_and_delete_in_order,
    later_commit_writes_everything_in_order,
    concurrent_commits_for_many_customers_all_land,
    credentials_insert_once,
    sessions_create_read_revoke,
    refresh_rotation_is_compare_and_swap,
    sessions_of_lists_live_sessions_and_revoked_since_finds_revoked,
    challenges_update_once_per_version,
    lockout_counts_atomically_and_clears,
    trusted_devices_and_wildcard,
    audit_log_is_append_only,
    staff_accounts_insert_once,
    staff_totp_steps_are_used_once,
    password_can_be_changed,
    secret_get_or_insert_under_concurrency,
    abs_seed_is_idempotent,
    abs_post_moves_money,
    abs_post_unknown_account_is_not_found,
    abs_post_insufficient_funds_changes_nothing,
    abs_post_duplicate_returns_first_result,
    abs_post_concurrent_duplicates_move_money_once,
    abs_transfer_moves_every_leg_or_none,
    abs_transfer_refusals_change_nothing,
    abs_open_product_writes_both_or_neither,
    abs_transfer_replay_and_conflict,
    abs_transfer_concurrent_double_spend_one_wins,
    abs_transfer_random_sequences_sum_to_zero,
    abs_card_pans_find_their_customer,
    phone_change_moves_phone_and_login_once,
    autopay_schedule_follows_commits_and_advances_once,
    abs_holds_reserve_capture_and_release,
    abs_concurrent_holds_never_exceed_the_balance,
    abs_random_holds_and_transfers_keep_the_invariants,
    abs_rate_set_is_replaced_only_by_a_newer_one,
    staff_sessions_are_apart_from_customer_sessions,
    trust_is_renewed_and_dated,
    login_networks_are_remembered_per_customer,
    totp_enrolment_confirms_once_and_steps_are_used_once,
    risk_flags_are_set_renewed_and_cleared,
    abs_transfer_batches_keep_each_answer_and_the_invariants,
    abs_transfer_concurrent_random_batches_keep_the_invariants,
);

#[path = "conformance/ledger_batch.rs"]
mod ledger_batch;
use ledger_batch::{
    abs_transfer_batches_keep_each_answer_and_the_invariants,
    abs_transfer_concurrent_random_batches_keep_the_invariants,
};

// ---- fixtures ---------------------------------------------------------------------------

fn cid(raw: &str) -> CustomerId {
    CustomerId::parse(raw).unwrap()
}

fn event(seq: u64) -> FeedEvent {
    let mut data = serde_json::Map::new();
    data.insert("n".into(), json!(seq));
    FeedEvent {
        seq,
        id: format!("evt-{seq}"),
        kind: "card.payment".into(),
        at: kernel::now(),
        data,
    }
}

/// A commit of `count` events after `expected`, one change id per event.
fn commit(customer: &str, expected: u64, count: u64) -> Commit {
    Commit {
        customer_id: cid(customer),
        expected_version: expected,
        events: (expected + 1..=expected + count).map(event).collect(),
        change_ids: (expected + 1..=expected + count)
            .map(|n| format!("chg-{n}"))
            .collect(),
        snapshot: None,
        outbox: vec![],
        schedules: vec![],
    }
}

fn seqs(events: &[FeedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

// ---- journal ----------------------------------------------------------------------------

async fn commit_load_journal_and_feed_paging(store: Arc<dyn Store>) {
    let c = cid("c1");
    assert_eq!(store.load_customer(&c).await.unwrap(), None);
    assert!(store.journal_after(&c, 0, 10).await.unwrap().is_empty());
    assert!(store.feed_page(&c, None, 10).await.unwrap().is_empty());

    store.commit(commit("c1", 0, 3)).await.unwrap();
    store.commit(commit("c1", 3, 4)).await.unwrap();
    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!(
        (record.version, record.read_seq, record.snapshot),
        (7, 0, None)
    );

    assert_eq!(
        seqs(&store.journal_after(&c, 0, 100).await.unwrap()),
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(
        seqs(&store.journal_after(&c, 2, 3).await.unwrap()),
        [3, 4, 5]
    );
    assert!(store.journal_after(&c, 7, 10).await.unwrap().is_empty());
    assert!(
        store
            .journal_after(&c, u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        seqs(&store.feed_page(&c, None, 3).await.unwrap()),
        [7, 6, 5]
    );
    assert_eq!(
        seqs(&store.feed_page(&c, Some(5), 3).await.unwrap()),
        [4, 3, 2]
    );
    assert_eq!(seqs(&store.feed_page(&c, Some(2), 3).await.unwrap()), [1]);
    assert!(store.feed_page(&c, Some(1), 3).await.unwrap().is_empty());
    assert_eq!(
        seqs(&store.feed_page(&c, Some(u64::MAX), 1).await.unwrap()),
        [7]
    );

    // Another customer's journal is separate.
    assert!(
        store
            .journal_after(&cid("c2"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn events_round_trip_exactly(store: Arc<dyn Store>) {
    let mut data = serde_json::Map::new();
    data.insert("amount".into(), json!("-1234.50"));
    data.insert(
        "merchant".into(),
        json!({"name": "Café «Ёлка»", "mcc": "5812"}),
    );
    data.insert("tags".into(), json!([1, 2.5, true, null, "x\u{0}y"]));
    data.insert("big".into(), json!(i64::MAX));
    let first = FeedEvent {
        seq: 1,
        id: "evt-a".into(),
        kind: "card.payment".into(),
        at: kernel::now(),
        data,
    };
    let second = FeedEvent {
        seq: 2,
        id: "evt-b".into(),
        kind: "empty".into(),
        at: time::macros::datetime!(1969-12-31 23:59:59.999 UTC),
        data: serde_json::Map::new(),
    };
    let mut c = commit("c1", 0, 0);
    c.events = vec![first.clone(), second.clone()];
    store.commit(c).await.unwrap();
    assert_eq!(
        store.journal_after(&cid("c1"), 0, 10).await.unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        store.feed_page(&cid("c1"), None, 10).await.unwrap(),
        [second, first]
    );
}

async fn version_conflict_changes_nothing(store: Arc<dyn Store>) {
    let c = cid("c1");
    store.commit(commit("c1", 0, 2)).await.unwrap();
    for expected in [0, 1, 3] {
        let mut stale = commit("c1", expected, 1);
        stale.change_ids = vec![format!("stale-{expected}")];
        stale.outbox = vec![OutboxMessage {
            subject: "push.c1".into(),
            payload: b"x".to_vec(),
        }];
        stale.snapshot = Some(Snapshot {
            version: expected + 1,
            state: json!({"stale": true}),
        });
        assert_eq!(
            store.commit(stale).await,
            Err(StoreError::VersionConflict),
            "expected {expected}"
        );
    }
    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!((record.version, record.snapshot), (2, None));
    assert_eq!(seqs(&store.journal_after(&c, 0, 10).await.unwrap()), [1, 2]);
    assert!(store.outbox_pending(10).await.unwrap().is_empty());
    let stale_ids = ["stale-0".to_string(), "stale-1".into(), "stale-3".into()];
    assert!(
        store
            .applied_changes(&c, &stale_ids)
            .await
            .unwrap()
            .is_empty()
    );
    // The right version still works.
    store.commit(commit("c1", 2, 1)).await.unwrap();
}

async fn concurrent_first_commits_only_one_wins(store: Arc<dyn Store>) {
    for round in 0..5 {
        let customer = format!("race{round}");
        let mut tasks = JoinSet::new();
        for writer in 0..6 {
            let store = store.clone();
            let mut c = commit(&customer, 0, 1);
            c.change_ids = vec![format!("writer-{writer}")];
            c.events[0].id = format!("writer-{writer}");
            tasks.spawn(async move { store.commit(c).await });
        }
        let mut wins = 0;
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(_) => wins += 1,
                Err(error) => assert_eq!(error, StoreError::VersionConflict),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        let journal = store.journal_after(&cid(&customer), 0, 10).await.unwrap();
        assert_eq!(seqs(&journal), [1]);
        let applied = store
            .applied_changes(
                &cid(&customer),
                &(0..6).map(|w| format!("writer-{w}")).collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        assert_eq!(applied, [journal[0].id.clone()]);
    }
}

async fn duplicate_change_id_changes_nothing(store: Arc<dyn Store>) {
    let c = cid("c1");
    let mut first = commit("c1", 0, 1);
    first.change_ids = vec!["chg-x".into()];
    first.snapshot = Some(Snapshot {
        version: 1,
        state: json!({"v": 1}),
    });
    let first_outbox = store.commit(first).await.unwrap();
    assert!(first_outbox.is_empty());

    let mut again = commit("c1", 1, 2);
    again.change_ids = vec!["chg-new".into(), "chg-x".into()];
    again.snapshot = Some(Snapshot {
        version: 3,
        state: json!({"v": 3}),
    });
    again.outbox = vec![OutboxMessage {
        subject: "push.c1".into(),
        payload: b"should not exist".to_vec(),
    }];
    assert_eq!(store.commit(again).await, Err(StoreError::Duplicate));

    // The same id twice inside one commit is a duplicate too.
    let mut twice = commit("c1", 1, 1);
    twice.change_ids = vec!["chg-y".into(), "chg-y".into()];
    assert_eq!(store.commit(twice).await, Err(StoreError::Duplicate));

    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.snapshot.unwrap().state, json!({"v": 1}));
    assert_eq!(seqs(&store.journal_after(&c, 0, 10).await.unwrap()), [1]);
    assert!(store.outbox_pending(10).await.unwrap().is_empty());
    let asked = ["chg-new".to_string(), "chg-x".into(), "chg-y".into()];
    assert_eq!(store.applied_changes(&c, &asked).await.unwrap(), ["chg-x"]);

    // Change ids are unique per customer, not globally.
    let mut other = commit("c2", 0, 1);
    other.change_ids = vec!["chg-x".into()];
    store.commit(other).await.unwrap();
}

async fn non_contiguous_seqs_are_refused(store: Arc<dyn Store>) {
    let c = cid("c1");
    let mut gap = commit("c1", 0, 0);
    gap.events = vec![event(1), event(3)];
    assert!(matches!(
        store.commit(gap).await,
        Err(StoreError::Corrupt(_))
    ));
    let mut late_start = commit("c1", 0, 0);
    late_start.events = vec![event(2)];
    assert!(matches!(
        store.commit(late_start).await,
        Err(StoreError::Corrupt(_))
    ));
    let mut backwards = commit("c1", 0, 0);
    backwards.events = vec![event(1), event(1)];
    assert!(matches!(
        store.commit(backwards).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.load_customer(&c).await.unwrap(), None);
    assert!(store.journal_after(&c, 0, 10).await.unwrap().is_empty());
}

async fn applied_changes_reports_consumed_ids(store: Arc<dyn Store>) {
    let c = cid("c1");
    assert!(store.applied_changes(&c, &[]).await.unwrap().is_empty());
    // A commit may consume changes that produced no event.
    let mut quiet = commit("c1", 0, 0);
    quiet.change_ids = vec!["a".into(), "b".into()];
    store.commit(quiet).await.unwrap();
    assert_eq!(store.load_customer(&c).await.unwrap().unwrap().version, 0);
    let asked: Vec<String> = ["z", "b", "a", "b"].iter().map(|s| s.to_string()).collect();
    assert_eq!(store.applied_changes(&c, &asked).await.unwrap(), ["b", "a"]);
    // Many ids at once (beyond one IN-list chunk).
    let many: Vec<String> = (0..1200).map(|n| format!("m{n}")).collect();
    let mut big = commit("c1", 0, 1);
    big.change_ids = many.clone();
    store.commit(big).await.unwrap();
    assert_eq!(store.applied_changes(&c, &many).await.unwrap(), many);
    assert!(
        store
            .applied_changes(&cid("c2"), &many)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn snapshot_round_trip(store: Arc<dyn Store>) {
    let c = cid("c1");
    let state = json!({"balance": {"RUB": 120050}, "cards": ["4276****1234"], "f": 0.1});
    let mut first = commit("c1", 0, 2);
    first.snapshot = Some(Snapshot {
        version: 2,
        state: state.clone(),
    });
    store.commit(first).await.unwrap();
    let expected = Some(Snapshot { version: 2, state });
    assert_eq!(
        store.load_customer(&c).await.unwrap().unwrap().snapshot,
        expected
    );

    // A commit without a snapshot keeps the last one.
    store.commit(commit("c1", 2, 1)).await.unwrap();
    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!((record.version, record.snapshot), (3, expected));

    let mut newer = commit("c1", 3, 1);
    newer.snapshot = Some(Snapshot {
        version: 4,
        state: json!(null),
    });
    store.commit(newer).await.unwrap();
    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!(
        record.snapshot,
        Some(Snapshot {
            version: 4,
            state: json!(null)
        })
    );
}

async fn mark_read_is_monotonic_and_clamped(store: Arc<dyn Store>) {
    let c = cid("c1");
    // No journal: version 0, so the mark stays 0.
    assert_eq!(store.mark_read(&c, 5).await.unwrap(), 0);
    store.commit(commit("c1", 0, 3)).await.unwrap();
    assert_eq!(store.mark_read(&c, 2).await.unwrap(), 2);
    assert_eq!(store.mark_read(&c, 1).await.unwrap(), 2);
    assert_eq!(store.mark_read(&c, 0).await.unwrap(), 2);
    assert_eq!(store.mark_read(&c, 10).await.unwrap(), 3);
    assert_eq!(store.mark_read(&c, u64::MAX).await.unwrap(), 3);
    assert_eq!(store.load_customer(&c).await.unwrap().unwrap().read_seq, 3);
    store.commit(commit("c1", 3, 2)).await.unwrap();
    assert_eq!(store.load_customer(&c).await.unwrap().unwrap().read_seq, 3);
    assert_eq!(store.mark_read(&c, 5).await.unwrap(), 5);
}

async fn outbox_pending_and_delete_in_order(store: Arc<dyn Store>) {
    let message = |n: u8| OutboxMessage {
        subject: format!("push.c{n}"),
        payload: vec![n, 0, 255],
    };
    let mut first = commit("c1", 0, 1);
    first.outbox = vec![message(1), message(2), message(3)];
    let ids = store.commit(first).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut second = commit("c2", 0, 1);
    second.outbox = vec![message(4)];
    let later = store.commit(second).await.unwrap();
    assert!(later[0] > ids[2]);

    let pending = store.outbox_pending(2).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(pending[0].subject, "push.c1");
    assert_eq!(pending[0].payload, [1, 0, 255]);

    store.outbox_delete(&[ids[0], ids[2]]).await.unwrap();
    store.outbox_delete(&[]).await.unwrap();
    store.outbox_delete(&[ids[0], 999_999]).await.unwrap(); // already gone / unknown: fine
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(
        pending.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[1], later[0]]
    );
    assert_eq!(pending[1].payload, [4, 0, 255]);
}

/// A commit after the first (PostgreSQL writes it as one statement): every part lands, the
/// outbox ids come back in the order of the messages, a snapshot rides along.
async fn later_commit_writes_everything_in_order(store: Arc<dyn Store>) {
    let c = cid("c1");
    store.commit(commit("c1", 0, 1)).await.unwrap();
    let mut later = commit("c1", 1, 3);
    later.change_ids.push("chg-no-event".into());
    later.outbox = (2..=4u8)
        .map(|n| OutboxMessage {
            subject: format!("push.c1.{n}"),
            payload: vec![n, 0, 255],
        })
        .collect();
    later.snapshot = Some(Snapshot {
        version: 4,
        state: json!({"v": 4}),
    });
    let ids = store.commit(later.clone()).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    for (row, message) in pending.iter().zip(&later.outbox) {
        assert_eq!(
            (&row.subject, &row.payload),
            (&message.subject, &message.payload)
        );
    }
    assert_eq!(store.journal_after(&c, 1, 10).await.unwrap(), later.events);
    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!(record.version, 4);
    assert_eq!(record.snapshot.unwrap().state, json!({"v": 4}));
    let asked = ["chg-2".to_string(), "chg-4".into(), "chg-no-event".into()];
    assert_eq!(store.applied_changes(&c, &asked).await.unwrap().len(), 3);
    // An event-less commit (only a change id) moves nothing but records the id.
    let mut quiet = commit("c1", 4, 0);
    quiet.change_ids = vec!["chg-quiet".into()];
    assert_eq!(store.commit(quiet).await.unwrap(), Vec::<i64>::new());
    assert_eq!(store.load_customer(&c).await.unwrap().unwrap().version, 4);
}

async fn concurrent_commits_for_many_customers_all_land(store: Arc<dyn Store>) {
    const CUSTOMERS: usize = 60;
    const COMMITS: u64 = 5;
    let mut tasks = JoinSet::new();
    for n in 0..CUSTOMERS {
        let store = store.clone();
        tasks.spawn(async move {
            let customer = format!("many{n}");
            let mut outbox_ids = Vec::new();
            for step in 0..COMMITS {
                let mut c = commit(&customer, step * 2, 2);
                c.outbox = vec![OutboxMessage {
                    subject: format!("push.{customer}"),
                    payload: step.to_be_bytes().to_vec(),
                }];
                outbox_ids.extend(store.commit(c).await.unwrap());
            }
            outbox_ids
        });
    }
    let mut all_ids = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        all_ids.extend(ids.unwrap());
    }
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), CUSTOMERS * COMMITS as usize);
    for n in 0..CUSTOMERS {
        let c = cid(&format!("many{n}"));
        let record = store.load_customer(&c).await.unwrap().unwrap();
        assert_eq!(record.version, COMMITS * 2);
        let journal = store.journal_after(&c, 0, 100).await.unwrap();
        assert_eq!(seqs(&journal), (1..=COMMITS * 2).collect::<Vec<_>>());
    }
    assert_eq!(
        store.outbox_pending(1000).await.unwrap().len(),
        all_ids.len()
    );
}

// ---- auth -------------------------------------------------------------------------------

async fn credentials_insert_once(store: Arc<dyn Store>) {
    let credential = Credential {
        login: "+79990000001".into(),
        customer_id: cid("c1"),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
    };
    assert_eq!(store.credential(&credential.login).await.unwrap(), None);
    assert!(store.insert_credential(&credential).await.unwrap());
    let other = Credential {
        customer_id: cid("c2"),
        password_hash: "other".into(),
        ..credential.clone()
    };
    assert!(!store.insert_credential(&other).await.unwrap());
    assert_eq!(
        store.credential(&credential.login).await.unwrap(),
        Some(credential)
    );
}

async fn sessions_create_read_revoke(store: Arc<dyn Store>) {
    let session = SessionRecord::new(
        "s1".into(),
        cid("c1"),
        "d1".into(),
        "h0".into(),
        kernel::now(),
    );
    assert_eq!(store.session("s1").await.unwrap(), None);
    store.create_session(&session).await.unwrap();
    assert_eq!(
        store.create_session(&session).await,
        Err(StoreError::Duplicate)
    );
    assert_eq!(store.session("s1").await.unwrap(), Some(session.clone()));
    store.revoke_session("s1").await.unwrap();
    store.revoke_session("s1").await.unwrap();
    assert_eq!(
        store.session("s1").await.unwrap(),
        Some(SessionRecord {
            revoked: true,
            ..session
        })
    );
    assert_eq!(
        store.revoke_session("nope").await,
        Err(StoreError::NotFound)
    );
}

async fn refresh_rotation_is_compare_and_swap(store: Arc<dyn Store>) {
    let now = kernel::now();
    let session = SessionRecord::new("s1".into(), cid("c1"), "d1".into(), "h0".into(), now);
    store.create_session(&session).await.unwrap();
    let later = now + time::Duration::seconds(5);
    // Concurrent uses of one refresh token: exactly one rotates.
    let mut tasks = JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .rotate_refresh("s1", "h0", &format!("h1-{n}"), later)
                .await
                .unwrap()
        });
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        won += usize::from(result.unwrap());
    }
    assert_eq!(won, 1);
    let stored = store.session("s1").await.unwrap().unwrap();
    assert_eq!(stored.generation, 1);
    assert_eq!(stored.last_used_at, later);
    assert!(stored.refresh_hash.starts_with("h1-"));
    // The old token again: refused.
    assert!(!store.rotate_refresh("s1", "h0", "h2", later).await.unwrap());
    // A revoked session never rotates.
    store.revoke_session("s1").await.unwrap();
    assert!(
        !store
            .rotate_refresh("s1", &stored.refresh_hash, "h2", later)
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_refresh("nope", "h0", "h2", later)
            .await
            .unwrap()
    );
}

async fn sessions_of_lists_live_sessions_and_revoked_since_finds_revoked(store: Arc<dyn Store>) {
    let t0 = kernel::now();
    for (n, customer) in [(1, "c1"), (2, "c1"), (3, "c2")] {
        let at = t0 + time::Duration::seconds(n);
        let session =
            SessionRecord::new(format!("s{n}"), cid(customer), "d".into(), "h".into(), at);
        store.create_session(&session).await.unwrap();
    }
    let ids = |list: Vec<SessionRecord>| list.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.sessions_of(&cid("c1")).await.unwrap()),
        ["s2", "s1"]
    );
    store.revoke_session("s2").await.unwrap();
    assert_eq!(ids(store.sessions_of(&cid("c1")).await.unwrap()), ["s1"]);
    assert_eq!(
        ids(store.sessions_of(&cid("c9")).await.unwrap()),
        Vec::<String>::new()
    );
    let revoked = store
        .revoked_since(t0 - time::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(revoked, vec![("s2".to_owned(), cid("c1"))]);
    let future = kernel::now() + time::Duration::hours(1);
    assert!(store.revoked_since(future).await.unwrap().is_empty());
}

async fn challenges_update_once_per_version(store: Arc<dyn Store>) {
    let record = ChallengeRecord {
        id: "ch1".into(),
        state: r#"{"a":1}"#.into(),
        expires_at: kernel::now() + time::Duration::minutes(5),
        version: 0,
    };
    assert_eq!(store.challenge("ch1").await.unwrap(), None);
    store.insert_challenge(&record).await.unwrap();
    assert_eq!(
        store.insert_challenge(&record).await,
        Err(StoreError::Duplicate)
    );
    assert_eq!(store.challenge("ch1").await.unwrap(), Some(record.clone()));
    let mut tasks = JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .update_challenge("ch1", 0, &format!(r#"{{"a":{n}}}"#))
                .await
                .unwrap()
        });
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        won += usize::from(result.unwrap());
    }
    assert_eq!(won, 1, "one writer per version");
    let stored = store.challenge("ch1").await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    assert!(!store.update_challenge("ch1", 0, "{}").await.unwrap());
    assert!(!store.update_challenge("nope", 0, "{}").await.unwrap());
}

async fn lockout_counts_atomically_and_clears(store: Arc<dyn Store>) {
    let policy = LockoutPolicy {
        max_failures: 5,
        lock_for: time::Duration::minutes(15),
    };
    let now = kernel::now();
    assert_eq!(store.lock_state("login:x").await.unwrap().failures, 0);
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.spawn(async move { store.record_failure("login:x", policy, now).await.unwrap() });
    }
    while tasks.join_next().await.is_some() {}
    let state = store.lock_state("login:x").await.unwrap();
    assert_eq!(state.failures, 4, "no failure is lost to a race");
    assert!(!state.locked(now));
    let state = store.record_failure("login:x", policy, now).await.unwrap();
    assert!(state.locked(now));
    assert_eq!(store.lock_state("login:x").await.unwrap(), state);
    assert_eq!(store.lock_state("login:y").await.unwrap().failures, 0);
    store.clear_failures("login:x").await.unwrap();
    assert!(!store.lock_state("login:x").await.unwrap().locked(now));
}

async fn trusted_devices_and_wildcard(store: Arc<dyn Store>) {
    let now = kernel::now();
    assert!(!store.is_trusted_device(&cid("c1"), "d1").await.unwrap());
    store.trust_device(&cid("c1"), "d1", now).await.unwrap();
    store.trust_device(&cid("c1"), "d1", now).await.unwrap();
    assert!(store.is_trusted_device(&cid("c1"), "d1").await.unwrap());
    assert!(!store.is_trusted_device(&cid("c1"), "d2").await.unwrap());
    assert!(!store.is_trusted_device(&cid("c2"), "d1").await.unwrap());
    store.trust_device(&cid("c2"), "*", now).await.unwrap();
    assert!(store.is_trusted_device(&cid("c2"), "any").await.unwrap());
}

async fn staff_sessions_are_apart_from_customer_sessions(store: Arc<dyn Store>) {
    let t0 = kernel::now();
    // A staff login may spell like a customer id: the scope keeps them apart.
    let customer = SessionRecord::new("s1".into(), cid("alice"), "d".into(), "h".into(), t0);
    let staff = SessionRecord::staff(
        "s2".into(),
        cid("alice"),
        "h".into(),
        t0 + time::Duration::seconds(1),
    );
    let other_staff = SessionRecord::staff(
        "s3".into(),
        cid("bob"),
        "h".into(),
        t0 + time::Duration::seconds(2),
    );
    for session in [&customer, &staff, &other_staff] {
        store.create_session(session).await.unwrap();
    }
    assert_eq!(store.session("s2").await.unwrap(), Some(staff.clone()));
    assert_eq!(store.session("s2").await.unwrap().unwrap().scope, "staff");
    let ids = |list: Vec<SessionRecord>| list.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.sessions_of(&cid("alice")).await.unwrap()), ["s1"]);
    assert_eq!(ids(store.staff_sessions(10).await.unwrap()), ["s3", "s2"]);
    assert_eq!(ids(store.staff_sessions(1).await.unwrap()), ["s3"]);
    store.revoke_session("s3").await.unwrap();
    assert_eq!(ids(store.staff_sessions(10).await.unwrap()), ["s2"]);
    // Staff refresh rotation is the same compare-and-swap.
    assert!(store.rotate_refresh("s2", "h", "h1", t0).await.unwrap());
    assert!(!store.rotate_refresh("s2", "h", "h2", t0).await.unwrap());
}

async fn trust_is_renewed_and_dated(store: Arc<dyn Store>) {
    let t0 = kernel::now();
    let later = t0 + time::Duration::days(100);
    assert_eq!(
        store.device_trusted_at(&cid("c1"), "d1").await.unwrap(),
        None
    );
    store.trust_device(&cid("c1"), "d1", t0).await.unwrap();
    assert_eq!(
        store.device_trusted_at(&cid("c1"), "d1").await.unwrap(),
        Some(t0)
    );
    store.trust_device(&cid("c1"), "d1", later).await.unwrap();
    assert_eq!(
        store.device_trusted_at(&cid("c1"), "d1").await.unwrap(),
        Some(later)
    );
    assert_eq!(
        store.device_trusted_at(&cid("c1"), "d2").await.unwrap(),
        None
    );
    assert_eq!(
        store.device_trusted_at(&cid("c2"), "d1").await.unwrap(),
        None
    );
    store.trust_device(&cid("c2"), "*", t0).await.unwrap();
    assert_eq!(
        store.device_trusted_at(&cid("c2"), "any").await.unwrap(),
        Some(t0)
    );
}

async fn login_networks_are_remembered_per_customer(store: Arc<dyn Store>) {
    let t0 = kernel::now();
    let networks = |customer: &'static str| {
        let store = store.clone();
        async move { store.login_networks(&cid(customer)).await.unwrap() }
    };
    assert!(networks("c1").await.is_empty());
    for (network, after_s) in [("10.0.0.0/24", 0), ("10.0.1.0/24", 1), ("10.0.0.0/24", 2)] {
        store
            .remember_login_network(&cid("c1"), network, t0 + time::Duration::seconds(after_s))
            .await
            .unwrap();
    }
    // Once each, the most recently used first.
    assert_eq!(networks("c1").await, ["10.0.0.0/24", "10.0.1.0/24"]);
    assert!(networks("c2").await.is_empty());
}

async fn risk_flags_are_set_renewed_and_cleared(store: Arc<dyn Store>) {
    let now = kernel::now();
    let later = now + time::Duration::hours(24);
    assert_eq!(store.risk_flag(&cid("c1")).await.unwrap(), None);
    store.set_risk_flag(&cid("c1"), now).await.unwrap();
    assert_eq!(store.risk_flag(&cid("c1")).await.unwrap(), Some(now));
    store.set_risk_flag(&cid("c1"), later).await.unwrap();
    assert_eq!(store.risk_flag(&cid("c1")).await.unwrap(), Some(later));
    assert_eq!(store.risk_flag(&cid("c2")).await.unwrap(), None);
}

async fn totp_enrolment_confirms_once_and_steps_are_used_once(store: Arc<dyn Store>) {
    let now = kernel::now();
    let enrolment = |sealed: &[u8]| TotpEnrolment {
        customer_id: cid("c1"),
        sealed_secret: sealed.to_vec(),
        confirmed: false,
        last_step: 0,
        created_at: now,
    };
    assert_eq!(store.totp_enrolment(&cid("c1")).await.unwrap(), None);
    assert!(!store.use_totp_step(&cid("c1"), 5).await.unwrap());
    assert!(store.start_totp(&enrolment(b"first")).await.unwrap());
    // An unconfirmed enrolment is replaced by a new start; steps are not usable yet.
    assert!(store.start_totp(&enrolment(b"second")).await.unwrap());
    assert!(!store.use_totp_step(&cid("c1"), 5).await.unwrap());
    assert!(!store.confirm_totp(&cid("c1"), b"first", 10).await.unwrap());
    assert!(store.confirm_totp(&cid("c1"), b"second", 10).await.unwrap());
    assert!(!store.confirm_totp(&cid("c1"), b"second", 11).await.unwrap());
    assert_eq!(
        store.totp_enrolment(&cid("c1")).await.unwrap(),
        Some(TotpEnrolment {
            confirmed: true,
            last_step: 10,
            ..enrolment(b"second")
        })
    );
    // A confirmed enrolment is not replaced by a new start.
    assert!(!store.start_totp(&enrolment(b"third")).await.unwrap());
    // The confirming step, or an older one, is spent; a later one is used once.
    assert!(!store.use_totp_step(&cid("c1"), 10).await.unwrap());
    assert!(!store.use_totp_step(&cid("c1"), 9).await.unwrap());
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.use_totp_step(&cid("c1"), 11).await.unwrap() });
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        won += usize::from(result.unwrap());
    }
    assert_eq!(won, 1);
    assert!(store.delete_totp(&cid("c1")).await.unwrap());
    assert!(!store.delete_totp(&cid("c1")).await.unwrap());
    assert_eq!(store.totp_enrolment(&cid("c1")).await.unwrap(), None);
    assert!(store.start_totp(&enrolment(b"again")).await.unwrap());
}

async fn audit_log_is_append_only(store: Arc<dyn Store>) {
    for n in 0..3 {
        let entry = AuditEntry {
            at: kernel::now(),
            kind: format!("k{n}"),
            actor: "c1".into(),
            subject: "s1".into(),
            ip: "127.0.0.1".into(),
            outcome: "ok".into(),
        };
        store.audit_append(&entry).await.unwrap();
    }
    let recent = store.audit_recent(2).await.unwrap();
    let kinds: Vec<_> = recent.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["k2", "k1"]);
}

async fn staff_accounts_insert_once(store: Arc<dyn Store>) {
    let account = StaffAccount {
        login: "alice".into(),
        role: "support".into(),
        password_hash: "$argon2id$x".into(),
        totp_secret: vec![1, 2, 3],
    };
    assert_eq!(store.staff("alice").await.unwrap(), None);
    assert!(store.insert_staff(&account).await.unwrap());
    let other = StaffAccount {
        role: "security".into(),
        ..account.clone()
    };
    assert!(!store.insert_staff(&other).await.unwrap());
    assert_eq!(store.staff("alice").await.unwrap(), Some(account));
}

async fn staff_totp_steps_are_used_once(store: Arc<dyn Store>) {
    // No account, no step.
    assert!(!store.use_staff_totp_step("bob", 5).await.unwrap());
    let account = |login: &str| StaffAccount {
        login: login.into(),
        role: "support".into(),
        password_hash: "$argon2id$x".into(),
        totp_secret: vec![1, 2, 3],
    };
    assert!(store.insert_staff(&account("bob")).await.unwrap());
    assert!(store.insert_staff(&account("carol")).await.unwrap());
    assert!(store.use_staff_totp_step("bob", 5).await.unwrap());
    // The same step, or an older one, is refused; a later one passes once.
    assert!(!store.use_staff_totp_step("bob", 5).await.unwrap());
    assert!(!store.use_staff_totp_step("bob", 4).await.unwrap());
    // Each account has its own last step.
    assert!(store.use_staff_totp_step("carol", 5).await.unwrap());
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move { store.use_staff_totp_step("bob", 6).await.unwrap() });
    }
    let mut won = 0;
    while let Some(result) = tasks.join_next().await {
        won += usize::from(result.unwrap());
    }
    assert_eq!(won, 1);
    assert!(!store.use_staff_totp_step("bob", 6).await.unwrap());
    assert!(store.use_staff_totp_step("bob", 7).await.unwrap());
    // The account itself reads back unchanged.
    assert_eq!(store.staff("bob").await.unwrap(), Some(account("bob")));
}

async fn password_can_be_changed(store: Arc<dyn Store>) {
    let credential = Credential {
        login: "+79990000001".into(),
        customer_id: cid("c1"),
        password_hash: "old".into(),
    };
    store.insert_credential(&credential).await.unwrap();
    store.set_password(&credential.login, "new").await.unwrap();
    assert_eq!(
        store
            .credential(&credential.login)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "new"
    );
    assert_eq!(
        store.set_password("+70000000000", "x").await,
        Err(StoreError::NotFound)
    );
}

async fn secret_get_or_insert_under_concurrency(store: Arc<dyn Store>) {
    let mut tasks = JoinSet::new();
    for n in 0..12u8 {
        let store = store.clone();
        tasks.spawn(async move { store.secret("jwt", &[n; 32]).await.unwrap() });
    }
    let mut values = Vec::new();
    while let Some(value) = tasks.join_next().await {
        values.push(value.unwrap());
    }
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree on the secret"
    );
    assert_eq!(values[0].len(), 32);
    assert_eq!(store.secret("jwt", b"later").await.unwrap(), values[0]);
    assert_eq!(store.secret("other", b"mine").await.unwrap(), b"mine");
}

// ---- reference ABS ----------------------------------------------------------------------

fn abs_customer(id: &str, phone: &str) -> AbsCustomer {
    AbsCustomer {
        id: cid(id),
        phone: phone.into(),
        name: "Анна Петрова".into(),
        language: "ru".into(),
    }
}

fn product(customer: &str, id: &str, kind: &str, balance: i64) -> AbsProduct {
    AbsProduct {
        id: id.into(),
        customer_id: cid(customer),
        kind: kind.into(),
        title: format!("{kind} {id}"),
        status: "active".into(),
        currency: "RUB".into(),
        balance_minor: balance,
        details: json!({"masked_pan": "427600******1234", "rate": "12.5"}),
    }
}

async fn seed_account(store: &dyn Store, balance: i64) {
    let inserted = store
        .abs_seed(
            &abs_customer("c1", "+79990000001"),
            &[product("c1", "acc1", "account", balance)],
        )
        .await
        .unwrap();
    assert!(inserted);
}

fn posting(id: &str, account: &str, amount: i64) -> AbsPosting {
    AbsPosting {
        id: id.into(),
        account_id: account.into(),
        amount_minor: amount,
        floor_minor: 0,
        description: "Coffee".into(),
        mcc: Some("5814".into()),
        counterparty: None,
    }
}

async fn balance(store: &dyn Store, account: &str) -> i64 {
    store
        .abs_products(&cid("c1"))
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.id == account)
        .map(|p| p.balance_minor)
        .unwrap()
}

async fn abs_seed_is_idempotent(store: Arc<dyn Store>) {
    let customer = abs_customer("c1", "+79990000001");
    let products = vec![
        product("c1", "z-acc", "account", 100_00),
        product("c1", "a-card", "card", 0),
        product("c1", "m-loan", "loan", -5000_00),
    ];
    assert!(store.abs_seed(&customer, &products).await.unwrap());
    let changed = vec![product("c1", "z-acc", "account", 1)];
    assert!(!store.abs_seed(&customer, &changed).await.unwrap());
    assert_eq!(
        store.abs_customer(&cid("c1")).await.unwrap(),
        Some(customer.clone())
    );
    assert_eq!(
        store.abs_customer_by_phone("+79990000001").await.unwrap(),
        Some(customer)
    );
    assert_eq!(
        store.abs_customer_by_phone("+70000000000").await.unwrap(),
        None
    );
    assert_eq!(store.abs_customer(&cid("c2")).await.unwrap(), None);
    // Products come back as seeded, in seeding order.
    assert_eq!(store.abs_products(&cid("c1")).await.unwrap(), products);
    assert!(store.abs_products(&cid("c2")).await.unwrap().is_empty());

    // A product naming another customer is refused and nothing of the seed lands.
    let stray = [product("c9", "stray", "account", 0)];
    assert!(
        store
            .abs_seed(&abs_customer("c3", "+79990000003"), &stray)
            .await
            .is_err()
    );
    assert_eq!(store.abs_customer(&cid("c3")).await.unwrap(), None);
}

async fn abs_post_moves_money(store: Arc<dyn Store>) {
    seed_account(&*store, 500_00).await;
    let debit = store
        .abs_post(&posting("p1", "acc1", -120_50))
        .await
        .unwrap();
    assert_eq!(debit.customer_id, cid("c1"));
    assert_eq!(debit.currency, "RUB");
    assert_eq!(debit.balance_minor, 379_50);
    assert!(!debit.duplicate);
    let credit = store.abs_post(&posting("p2", "acc1", 20_50)).await.unwrap();
    assert_eq!(credit.balance_minor, 400_00);
    assert!(credit.at >= debit.at);
    // Exactly to the floor is allowed; overdraft floors go below zero.
    let all = store
        .abs_post(&posting("p3", "acc1", -400_00))
        .await
        .unwrap();
    assert_eq!(all.balance_minor, 0);
    let overdraft = AbsPosting {
        floor_minor: -100_00,
        ..posting("p4", "acc1", -100_00)
    };
    assert_eq!(
        store.abs_post(&overdraft).await.unwrap().balance_minor,
        -100_00
    );
    assert_eq!(balance(&*store, "acc1").await, -100_00);
}

async fn abs_post_unknown_account_is_not_found(store: Arc<dyn Store>) {
    assert_eq!(
        store.abs_post(&posting("p1", "missing", 1)).await,
        Err(StoreError::NotFound)
    );
    seed_account(&*store, 0).await;
    assert_eq!(
        store.abs_post(&posting("p1", "missing", 1)).await,
        Err(StoreError::NotFound)
    );
}

async fn abs_post_insufficient_funds_changes_nothing(store: Arc<dyn Store>) {
    seed_account(&*store, 10_00).await;
    assert_eq!(
        store.abs_post(&posting("p1", "acc1", -10_01)).await,
        Err(StoreError::Refused("insufficient_funds"))
    );
    assert_eq!(balance(&*store, "acc1").await, 10_00);
    // The refusal was not recorded: the same id may succeed once funds arrive.
    store
        .abs_post(&posting("top-up", "acc1", 5_00))
        .await
        .unwrap();
    let retried = store
        .abs_post(&posting("p1", "acc1", -10_01))
        .await
        .unwrap();
    assert!(!retried.duplicate);
    assert_eq!(retried.balance_minor, 4_99);
    // Overflow is refused too, not wrapped.
    assert!(matches!(
        store.abs_post(&posting("huge", "acc1", i64::MAX)).await,
        Err(StoreError::Refused(_))
    ));
    assert_eq!(balance(&*store, "acc1").await, 4_99);
}

async fn abs_post_duplicate_returns_first_result(store: Arc<dyn Store>) {
    seed_account(&*store, 100_00).await;
    let first = store
        .abs_post(&posting("p1", "acc1", -30_00))
        .await
        .unwrap();
    let repeat = store
        .abs_post(&posting("p1", "acc1", -30_00))
        .await
        .unwrap();
    assert!(repeat.duplicate);
    assert_eq!(
        repeat,
        kernel::store::AbsPostingResult {
            duplicate: true,
            ..first
        }
    );
    // Even a repeat with another body answers with the first result and moves nothing.
    let odd = store
        .abs_post(&posting("p1", "acc1", -99_00))
        .await
        .unwrap();
    assert_eq!((odd.balance_minor, odd.duplicate), (70_00, true));
    assert_eq!(balance(&*store, "acc1").await, 70_00);
}

async fn abs_post_concurrent_duplicates_move_money_once(store: Arc<dyn Store>) {
    seed_account(&*store, 100_00).await;
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .abs_post(&posting("p1", "acc1", -10_00))
                .await
                .unwrap()
        });
    }
    let mut results = Vec::new();
    while let Some(result) = tasks.join_next().await {
        results.push(result.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.balance_minor == 90_00));
    assert_eq!(balance(&*store, "acc1").await, 90_00);
}

/// Two customers with RUB accounts, one with a USD account, and the bank's accounts.
async fn seed_ledger(store: &dyn Store) {
    let mut usd = product("c1", "usd1", "account", 50_00);
    usd.currency = "USD".into();
    store
        .abs_seed(
            &abs_customer("c1", "+79990000001"),
            &[product("c1", "acc1", "account", 100_00), usd],
        )
        .await
        .unwrap();
    store
        .abs_seed(
            &abs_customer("c2", "+79990000002"),
            &[product("c2", "acc2", "account", 0)],
        )
        .await
        .unwrap();
    let mut pos_usd = product("bank", "pos-USD", "internal", 0);
    pos_usd.currency = "USD".into();
    store
        .abs_seed(
            &abs_customer("bank", "+70000000000"),
            &[
                product("bank", "income-RUB", "internal", 0),
                product("bank", "pos-RUB", "internal", 0),
                pos_usd,
            ],
        )
        .await
        .unwrap();
}

fn leg(account: &str, amount: i64, currency: &str) -> AbsLeg {
    AbsLeg {
        account_id: account.into(),
        amount_minor: amount,
        currency: currency.into(),
        floor_minor: if account.starts_with("acc") || account.starts_with("usd") {
            0
        } else {
            i64::MIN
        },
    }
}

fn transfer(id: &str, legs: Vec<AbsLeg>) -> AbsTransfer {
    AbsTransfer {
        id: id.into(),
        legs,
        description: "Transfer".into(),
        counterparty: None,
    }
}

async fn account_balance(store: &dyn Store, account: &str) -> i64 {
    store
        .abs_account(account)
        .await
        .unwrap()
        .map(|p| p.balance_minor)
        .unwrap()
}

async fn all_balances(store: &dyn Store) -> Vec<i64> {
    let mut out = vec![];
    for account in ["acc1", "acc2", "usd1", "income-RUB", "pos-RUB", "pos-USD"] {
        out.push(account_balance(store, account).await);
    }
    out
}

async fn assert_sums_zero(store: &dyn Store) {
    for (currency, sum) in store.abs_ledger_sums().await.unwrap() {
        assert_eq!(sum, 0, "{currency} legs do not sum to zero");
    }
}

async fn abs_transfer_moves_every_leg_or_none(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    // 30.00 to c2 with a 1.00 fee to the bank's income.
    let result = store
        .abs_transfer(&transfer(
            "t1",
            vec![
                leg("acc1", -30_00, "RUB"),
                leg("acc2", 30_00, "RUB"),
                leg("acc1", -1_00, "RUB"),
                leg("income-RUB", 1_00, "RUB"),
            ],
        ))
        .await
        .unwrap();
    assert!(!result.duplicate);
    assert_eq!(result.legs.len(), 4);
    assert_eq!(result.legs[0].customer_id, cid("c1"));
    assert_eq!(result.legs[0].balance_minor, 69_00);
    assert_eq!(result.legs[1].customer_id, cid("c2"));
    assert_eq!(result.legs[1].balance_minor, 30_00);
    assert_eq!(result.legs[3].kind, "internal");
    assert_eq!(
        all_balances(&*store).await,
        vec![69_00, 30_00, 50_00, 1_00, 0, 0]
    );
    // FX: 10.00 USD → 900.00 RUB through the positions; each currency balances.
    store
        .abs_transfer(&transfer(
            "fx1",
            vec![
                leg("usd1", -10_00, "USD"),
                leg("pos-USD", 10_00, "USD"),
                leg("pos-RUB", -900_00, "RUB"),
                leg("acc2", 900_00, "RUB"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(account_balance(&*store, "acc2").await, 930_00);
    assert_eq!(account_balance(&*store, "pos-RUB").await, -900_00);
    assert_sums_zero(&*store).await;
}

async fn abs_open_product_writes_both_or_neither(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    let deposit = product("c1", "dep1", "deposit", 0);
    let funding = |amount: i64| {
        transfer(
            "open-dep1",
            vec![leg("acc1", -amount, "RUB"), leg("dep1", amount, "RUB")],
        )
    };
    // Refused (more than the account holds): no product, no money moved.
    assert_eq!(
        store.abs_open_product(&deposit, &funding(100_01)).await,
        Err(StoreError::Refused("insufficient_funds"))
    );
    assert_eq!(store.abs_account("dep1").await.unwrap(), None);
    assert_eq!(account_balance(&*store, "acc1").await, 100_00);
    // Opened: the product holds what left the account.
    let first = store
        .abs_open_product(&deposit, &funding(60_00))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(account_balance(&*store, "acc1").await, 40_00);
    assert_eq!(
        store
            .abs_account("dep1")
            .await
            .unwrap()
            .unwrap()
            .balance_minor,
        60_00
    );
    // Again: the first result, nothing moves; another transfer for it: a conflict.
    let again = store
        .abs_open_product(&deposit, &funding(60_00))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.legs, first.legs);
    assert_eq!(
        store.abs_open_product(&deposit, &funding(1_00)).await,
        Err(StoreError::Refused("idempotency_conflict"))
    );
    // Another customer's product under that id: a conflict too.
    let foreign = product("c2", "dep1", "deposit", 0);
    assert_eq!(
        store.abs_open_product(&foreign, &funding(60_00)).await,
        Err(StoreError::Refused("idempotency_conflict"))
    );
    assert_eq!(account_balance(&*store, "acc1").await, 40_00);
    assert_sums_zero(&*store).await;
}

async fn abs_transfer_refusals_change_nothing(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    let before = all_balances(&*store).await;
    let cases = vec![
        (
            vec![leg("acc1", -100_01, "RUB"), leg("acc2", 100_01, "RUB")],
            StoreError::Refused("insufficient_funds"),
        ),
        (
            vec![leg("acc1", -1_00, "RUB"), leg("acc2", 99, "RUB")],
            StoreError::Refused("unbalanced"),
        ),
        (
            vec![leg("acc1", 0, "RUB"), leg("acc2", 0, "RUB")],
            StoreError::Refused("unbalanced"),
        ),
        (
            vec![leg("acc1", -1_00, "USD"), leg("usd1", 1_00, "USD")],
            StoreError::Refused("currency_mismatch"),
        ),
        (
            vec![leg("acc1", -1_00, "RUB"), leg("missing", 1_00, "RUB")],
            StoreError::NotFound,
        ),
    ];
    for (n, (legs, error)) in cases.into_iter().enumerate() {
        assert_eq!(
            store
                .abs_transfer(&transfer(&format!("bad{n}"), legs))
                .await,
            Err(error),
            "case {n}"
        );
    }
    store.abs_set_status("acc2", "closed").await.unwrap();
    assert_eq!(
        store
            .abs_transfer(&transfer(
                "closed",
                vec![leg("acc1", -1_00, "RUB"), leg("acc2", 1_00, "RUB")]
            ))
            .await,
        Err(StoreError::Refused("account_closed"))
    );
    assert_eq!(
        store.abs_set_status("missing", "closed").await,
        Err(StoreError::NotFound)
    );
    // Details are replaced whole and read back as written; an unknown product is NotFound.
    let details = serde_json::json!({"daily_limit": {"amount": "100.00", "currency": "RUB"}});
    store.abs_set_details("acc2", &details).await.unwrap();
    assert_eq!(
        store.abs_account("acc2").await.unwrap().unwrap().details,
        details
    );
    assert_eq!(
        store.abs_set_details("missing", &details).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(all_balances(&*store).await, before);
    assert!(store.abs_ledger_sums().await.unwrap().is_empty());
    // A refused id stays free for a valid transfer.
    store.abs_set_status("acc2", "active").await.unwrap();
    store
        .abs_transfer(&transfer(
            "bad0",
            vec![leg("acc1", -1_00, "RUB"), leg("acc2", 1_00, "RUB")],
        ))
        .await
        .unwrap();
}

async fn abs_transfer_replay_and_conflict(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    let t = transfer(
        "t1",
        vec![leg("acc1", -10_00, "RUB"), leg("acc2", 10_00, "RUB")],
    );
    let first = store.abs_transfer(&t).await.unwrap();
    let again = store.abs_transfer(&t).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.legs, first.legs);
    assert_eq!(again.at, first.at);
    let other = transfer(
        "t1",
        vec![leg("acc1", -20_00, "RUB"), leg("acc2", 20_00, "RUB")],
    );
    assert_eq!(
        store.abs_transfer(&other).await,
        Err(StoreError::Refused("idempotency_conflict"))
    );
    assert_eq!(account_balance(&*store, "acc1").await, 90_00);
}

async fn abs_transfer_concurrent_double_spend_one_wins(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    let mut tasks = JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            // Every one wants 80.00 of the 100.00: exactly one can have it. Half of them
            // also reuse one id, which must move money once at most.
            let id = if n % 2 == 0 {
                "same".to_owned()
            } else {
                format!("t{n}")
            };
            store
                .abs_transfer(&transfer(
                    &id,
                    vec![leg("acc1", -80_00, "RUB"), leg("acc2", 80_00, "RUB")],
                ))
                .await
        });
    }
    let mut fresh = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(r) if !r.duplicate => fresh += 1,
            Ok(_) | Err(StoreError::Refused("insufficient_funds")) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(account_balance(&*store, "acc1").await, 20_00);
    assert_eq!(account_balance(&*store, "acc2").await, 80_00);
    assert_sums_zero(&*store).await;
}

async fn abs_transfer_random_sequences_sum_to_zero(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let accounts = ["acc1", "acc2", "income-RUB", "pos-RUB"];
    for step in 0..60 {
        let from = accounts[next(4) as usize];
        let to = accounts[next(4) as usize];
        let amount = 1 + next(60_00) as i64;
        let t = transfer(
            &format!("r{}", step % 45), // some ids repeat: replays or conflicts
            vec![leg(from, -amount, "RUB"), leg(to, amount, "RUB")],
        );
        let before = all_balances(&*store).await;
        match store.abs_transfer(&t).await {
            Ok(r) if r.duplicate => assert_eq!(all_balances(&*store).await, before),
            Ok(_) => {}
            Err(StoreError::Refused(_)) => assert_eq!(all_balances(&*store).await, before),
            Err(other) => panic!("unexpected {other:?}"),
        }
        for account in ["acc1", "acc2"] {
            assert!(account_balance(&*store, account).await >= 0);
        }
        assert_sums_zero(&*store).await;
    }
}

// ---- backend specific -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopened_file_has_everything() {
    let dir = TempDir::new();
    let c = cid("c1");
    let (outbox_ids, first_post) = {
        let store = store::open(None, &dir.0).await.unwrap();
        let mut first = commit("c1", 0, 3);
        first.snapshot = Some(Snapshot {
            version: 3,
            state: json!({"k": "v"}),
        });
        first.outbox = vec![OutboxMessage {
            subject: "push.c1".into(),
            payload: b"hello".to_vec(),
        }];
        let ids = store.commit(first).await.unwrap();
        store.mark_read(&c, 2).await.unwrap();
        store.secret("jwt", b"first").await.unwrap();
        seed_account(&*store, 50_00).await;
        let post = store.abs_post(&posting("p1", "acc1", -1_00)).await.unwrap();
        (ids, post)
    };
    assert!(dir.0.join(store::SQLITE_FILE).exists());

    // Reopening runs the migrations again: they must be a no-op.
    let store = store::open(None, &dir.0).await.unwrap();
    let record = store.load_customer(&c).await.unwrap().unwrap();
    assert_eq!((record.version, record.read_seq), (3, 2));
    assert_eq!(record.snapshot.unwrap().state, json!({"k": "v"}));
    assert_eq!(
        seqs(&store.journal_after(&c, 0, 10).await.unwrap()),
        [1, 2, 3]
    );
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), outbox_ids);
    assert_eq!(store.secret("jwt", b"second").await.unwrap(), b"first");
    assert_eq!(balance(&*store, "acc1").await, 49_00);
    let repeat = store.abs_post(&posting("p1", "acc1", -1_00)).await.unwrap();
    assert_eq!((repeat.at, repeat.duplicate), (first_post.at, true));
    // The next commit continues the journal.
    store.commit(commit("c1", 3, 1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corrupt_rows_are_reported_not_panicked() {
    use sqlx::{ConnectOptions as _, Executor as _};
    let dir = TempDir::new();
    let store = store::open(None, &dir.0).await.unwrap();
    store.commit(commit("c1", 0, 1)).await.unwrap();
    store.commit(commit("c2", 0, 1)).await.unwrap();
    store.commit(commit("c3", 0, 1)).await.unwrap();
    let mut raw = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.0.join(store::SQLITE_FILE))
        .connect()
        .await
        .unwrap();
    raw.execute(
        "UPDATE journal SET data = 'not json' WHERE customer_id = 'c1';
         UPDATE customers SET version = -4 WHERE id = 'c2';
         UPDATE journal SET at_ms = 'yesterday' WHERE customer_id = 'c3';
         UPDATE customers SET snapshot_version = 1 WHERE id = 'c3';",
    )
    .await
    .unwrap();
    let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt(_)));
    assert!(corrupt(
        store.journal_after(&cid("c1"), 0, 10).await.map(|_| ())
    ));
    assert!(corrupt(
        store.feed_page(&cid("c1"), None, 10).await.map(|_| ())
    ));
    assert!(corrupt(store.load_customer(&cid("c2")).await.map(|_| ())));
    assert!(corrupt(
        store.journal_after(&cid("c3"), 0, 10).await.map(|_| ())
    ));
    assert!(corrupt(store.load_customer(&cid("c3")).await.map(|_| ())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_open_creates_missing_folders() {
    let dir = TempDir::new();
    let nested = dir.0.join("a").join("b");
    let store = store::SqliteStore::open(&nested.join("x.db"))
        .await
        .unwrap();
    store.commit(commit("c1", 0, 1)).await.unwrap();
    assert!(nested.join("x.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_starting_together_migrate_once() {
    let db = testkit::PgDatabase::create().await.unwrap();
    let mut nodes = JoinSet::new();
    for _ in 0..4 {
        let url = db.url.clone();
        nodes.spawn(async move { store::PgStore::connect(&url).await.map(|_| ()) });
    }
    while let Some(node) = nodes.join_next().await {
        node.unwrap().expect("every node starts");
    }
    // A node restarting later sees the data of another.
    let first = store::PgStore::connect(&db.url).await.unwrap();
    first.commit(commit("c1", 0, 2)).await.unwrap();
    drop(first);
    let again: Arc<dyn Store> = Arc::new(store::PgStore::connect(&db.url).await.unwrap());
    assert_eq!(
        again
            .load_customer(&cid("c1"))
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn open_refuses_unknown_urls_without_echoing_them() {
    let dir = TempDir::new();
    let Err(StoreError::Unavailable(message)) =
        store::open(Some("mysql://user:secret@host/db"), &dir.0).await
    else {
        panic!("a mysql URL must be refused");
    };
    assert!(!message.contains("secret"));
    let Err(StoreError::Unavailable(message)) =
        store::open(Some("postgres://user:secret@127.0.0.1:1/db"), &dir.0).await
    else {
        panic!("an unreachable server is Unavailable");
    };
    assert!(!message.contains("secret"), "{message}");
}

/// Store futures must be `Send`: nodes spawn them.
#[allow(dead_code)]
fn futures_are_send(dir: &std::path::Path) {
    fn send<T: Send>(_: T) {}
    send(store::open(None, dir));
    send(store::SqliteStore::open(dir));
    send(store::PgStore::connect(""));
}

async fn abs_card_pans_find_their_customer(store: Arc<dyn Store>) {
    let customer = abs_customer("c1", "+79990000001");
    store
        .abs_seed(&customer, &[product("c1", "card1", "card", 0)])
        .await
        .unwrap();
    let cards = vec![("card1".to_owned(), cid("c1"), "hash-1".to_owned())];
    store.abs_set_card_pans(&cards).await.unwrap();
    // Idempotent.
    store.abs_set_card_pans(&cards).await.unwrap();
    assert_eq!(
        store.abs_customer_by_card("hash-1").await.unwrap(),
        Some(customer)
    );
    assert_eq!(store.abs_customer_by_card("hash-2").await.unwrap(), None);
}

async fn phone_change_moves_phone_and_login_once(store: Arc<dyn Store>) {
    for (id, phone) in [("c1", "+79990000001"), ("c2", "+79990000002")] {
        store.abs_seed(&abs_customer(id, phone), &[]).await.unwrap();
        store
            .insert_credential(&Credential {
                login: phone.into(),
                customer_id: cid(id),
                password_hash: "h".into(),
            })
            .await
            .unwrap();
    }
    // Another customer's phone is refused and nothing changes.
    assert!(
        !store
            .change_phone(&cid("c1"), "+79990000001", "+79990000002")
            .await
            .unwrap()
    );
    assert!(
        store
            .change_phone(&cid("c1"), "+79990000001", "+79991112233")
            .await
            .unwrap()
    );
    let moved = store.abs_customer(&cid("c1")).await.unwrap().unwrap();
    assert_eq!(moved.phone, "+79991112233");
    assert_eq!(store.credential("+79990000001").await.unwrap(), None);
    assert_eq!(
        store
            .credential("+79991112233")
            .await
            .unwrap()
            .map(|c| c.customer_id),
        Some(cid("c1"))
    );
    // The old phone is no longer the customer's: a stale request finds nothing to move.
    assert!(matches!(
        store
            .change_phone(&cid("c1"), "+79990000001", "+79994445566")
            .await,
        Err(kernel::store::StoreError::NotFound)
    ));
}

// ---- autopayment schedule index -----------------------------------------------------------

fn schedule(id: &str, partition: u32, next_run_ms: Option<i64>) -> kernel::store::ScheduleWrite {
    kernel::store::ScheduleWrite {
        autopayment_id: id.into(),
        partition,
        next_run_ms,
    }
}

async fn autopay_schedule_follows_commits_and_advances_once(store: Arc<dyn Store>) {
    // Written with the journal: c1 has two autopayments (partition 3), c2 one (partition 5).
    let mut first = commit("c1", 0, 1);
    first.schedules = vec![
        schedule("ap1", 3, Some(1_000)),
        schedule("ap2", 3, Some(5_000)),
    ];
    store.commit(first).await.unwrap();
    let mut other = commit("c2", 0, 1);
    other.schedules = vec![schedule("ap3", 5, Some(2_000))];
    store.commit(other).await.unwrap();

    // A refused commit writes no schedule either.
    let mut stale = commit("c1", 0, 1);
    stale.schedules = vec![schedule("ap9", 3, Some(1))];
    assert_eq!(store.commit(stale).await, Err(StoreError::VersionConflict));

    let due = |partitions: Vec<u32>, now_ms: i64, limit: u32| {
        let store = store.clone();
        async move {
            store
                .schedule_due(&partitions, now_ms, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|run| {
                    (
                        run.customer_id.as_str().to_owned(),
                        run.autopayment_id,
                        run.next_run_ms,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let row = |c: &str, id: &str, ms: i64| (c.to_owned(), id.to_owned(), ms);
    // Only due rows of the asked partitions, oldest first, at most `limit`.
    assert_eq!(
        due(vec![3, 5], 10_000, 10).await,
        vec![
            row("c1", "ap1", 1_000),
            row("c2", "ap3", 2_000),
            row("c1", "ap2", 5_000)
        ]
    );
    assert_eq!(
        due(vec![3, 5], 10_000, 1).await,
        vec![row("c1", "ap1", 1_000)]
    );
    assert_eq!(due(vec![3], 4_999, 10).await, vec![row("c1", "ap1", 1_000)]);
    assert_eq!(due(vec![4], 10_000, 10).await, vec![]);
    assert_eq!(due(vec![], 10_000, 10).await, vec![]);

    // Advancing is compare-and-set on the due time: a second (late) advance is a no-op.
    let c1 = cid("c1");
    assert!(
        store
            .schedule_advance(&c1, "ap1", 1_000, Some(20_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .schedule_advance(&c1, "ap1", 1_000, Some(30_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .schedule_advance(&c1, "nope", 1_000, Some(30_000))
            .await
            .unwrap()
    );
    assert_eq!(
        due(vec![3], 25_000, 10).await,
        vec![row("c1", "ap2", 5_000), row("c1", "ap1", 20_000)]
    );

    // Saving again moves the row; deleting in a commit removes it; advancing to None too.
    let mut again = commit("c1", 1, 1);
    again.schedules = vec![schedule("ap1", 3, Some(40_000)), schedule("ap2", 3, None)];
    store.commit(again).await.unwrap();
    assert_eq!(
        due(vec![3], 50_000, 10).await,
        vec![row("c1", "ap1", 40_000)]
    );
    assert!(
        store
            .schedule_advance(&c1, "ap1", 40_000, None)
            .await
            .unwrap()
    );
    assert_eq!(
        due(vec![3, 5], i64::MAX, 10).await,
        vec![row("c2", "ap3", 2_000)]
    );
}

// ---- holds (authorize → capture / release) ------------------------------------------------

fn hold(id: &str, account: &str, amount: i64) -> kernel::store::AbsHold {
    kernel::store::AbsHold {
        id: id.into(),
        account_id: account.into(),
        amount_minor: amount,
        floor_minor: 0,
    }
}

async fn abs_holds_reserve_capture_and_release(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    // acc1 has 100.00. A 60.00 hold leaves 40.00 available; the balance is unchanged.
    let first = store.abs_hold(&hold("h1", "acc1", 60_00)).await.unwrap();
    assert_eq!((first.available_minor, first.duplicate), (40_00, false));
    assert_eq!(account_balance(&*store, "acc1").await, 100_00);
    // Idempotent by id; the id with other terms is a conflict.
    let again = store.abs_hold(&hold("h1", "acc1", 60_00)).await.unwrap();
    assert_eq!((again.available_minor, again.duplicate), (40_00, true));
    assert_eq!(
        store.abs_hold(&hold("h1", "acc1", 1_00)).await,
        Err(StoreError::Refused("idempotency_conflict"))
    );
    // What is held is spoken for: neither a second hold nor a transfer may take it.
    assert_eq!(
        store.abs_hold(&hold("h2", "acc1", 40_01)).await,
        Err(StoreError::Refused("insufficient_funds"))
    );
    let pay = |id: &str, amount: i64| {
        transfer(
            id,
            vec![leg("acc1", -amount, "RUB"), leg("acc2", amount, "RUB")],
        )
    };
    assert_eq!(
        store.abs_transfer(&pay("t-over", 40_01)).await,
        Err(StoreError::Refused("insufficient_funds"))
    );
    store.abs_transfer(&pay("t-ok", 10_00)).await.unwrap();
    assert_eq!(
        store.abs_hold(&hold("h9", "nope", 1)).await,
        Err(StoreError::NotFound)
    );

    // Capture 55.00 of the 60.00 hold: the rest is released with it.
    let captured = store.abs_capture("h1", &pay("cap-1", 55_00)).await.unwrap();
    assert!(!captured.duplicate);
    assert_eq!(account_balance(&*store, "acc1").await, 35_00);
    let replay = store.abs_capture("h1", &pay("cap-1", 55_00)).await.unwrap();
    assert!(replay.duplicate);
    assert_eq!(account_balance(&*store, "acc1").await, 35_00);
    assert_eq!(
        store.abs_capture("h1", &pay("cap-2", 1_00)).await,
        Err(StoreError::Refused("hold_captured"))
    );
    assert_eq!(
        store.abs_release("h1").await,
        Err(StoreError::Refused("hold_captured"))
    );
    // All 35.00 is available again.
    let h2 = store.abs_hold(&hold("h2", "acc1", 35_00)).await.unwrap();
    assert_eq!(h2.available_minor, 0);
    // More than the hold cannot be captured; nothing changes.
    assert_eq!(
        store.abs_capture("h2", &pay("cap-3", 35_01)).await,
        Err(StoreError::Refused("capture_exceeds_hold"))
    );
    // A capture the transfer refuses (no such payee account) leaves the hold held.
    assert_eq!(
        store
            .abs_capture(
                "h2",
                &transfer(
                    "cap-x",
                    vec![leg("acc1", -1_00, "RUB"), leg("nope", 1_00, "RUB")]
                )
            )
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.abs_hold(&hold("h-more", "acc1", 1)).await,
        Err(StoreError::Refused("insufficient_funds"))
    );
    // Released: the money is available, twice is fine, a capture after is refused.
    assert_eq!(store.abs_release("h2").await, Ok(true));
    assert_eq!(store.abs_release("h2").await, Ok(false));
    assert_eq!(
        store.abs_capture("h2", &pay("cap-4", 1_00)).await,
        Err(StoreError::Refused("hold_released"))
    );
    assert_eq!(store.abs_release("nope").await, Err(StoreError::NotFound));
    assert_eq!(
        store
            .abs_hold(&hold("h3", "acc1", 35_00))
            .await
            .unwrap()
            .available_minor,
        0
    );
    assert_eq!(account_balance(&*store, "acc1").await, 35_00);
    assert_sums_zero(&*store).await;
}

async fn abs_concurrent_holds_never_exceed_the_balance(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    // Ten holds of 30.00 on 100.00 at once: exactly three succeed.
    let mut set = JoinSet::new();
    for i in 0..10 {
        let store = store.clone();
        set.spawn(async move { store.abs_hold(&hold(&format!("c{i}"), "acc1", 30_00)).await });
    }
    let mut ok = 0;
    while let Some(result) = set.join_next().await {
        match result.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e, StoreError::Refused("insufficient_funds")),
        }
    }
    assert_eq!(ok, 3);
}

/// Random authorizations, captures, releases and transfers (ids repeat: replays): the legs
/// sum to zero, and no customer account's balance less its active holds goes below zero.
async fn abs_random_holds_and_transfers_keep_the_invariants(store: Arc<dyn Store>) {
    seed_ledger(&*store).await;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let accounts = ["acc1", "acc2"];
    // The test's own model of the active holds: id → (account, amount).
    let mut active: std::collections::BTreeMap<String, (&str, i64)> = Default::default();
    // How many holds, captures and releases took effect: the sequence must exercise each.
    let mut done = [0u32; 3];
    for step in 0..80 {
        let account = accounts[next(2) as usize];
        let other = if account == "acc1" { "acc2" } else { "acc1" };
        let amount = 1 + next(40_00) as i64;
        let before = all_balances(&*store).await;
        match next(4) {
            0 => {
                let id = format!("h{}", next(20));
                match store.abs_hold(&hold(&id, account, amount)).await {
                    Ok(r) if !r.duplicate => {
                        active.insert(id, (account, amount));
                        done[0] += 1;
                    }
                    Ok(_) | Err(StoreError::Refused(_)) => {}
                    Err(e) => panic!("step {step}: {e:?}"),
                }
            }
            1 => {
                let id = format!("h{}", next(20));
                let Some((held_on, _)) = active.get(&id).copied() else {
                    continue;
                };
                let target = if held_on == "acc1" { "acc2" } else { "acc1" };
                let t = transfer(
                    &format!("cap{step}"),
                    vec![leg(held_on, -amount, "RUB"), leg(target, amount, "RUB")],
                );
                match store.abs_capture(&id, &t).await {
                    Ok(_) => {
                        active.remove(&id);
                        done[1] += 1;
                    }
                    Err(StoreError::Refused(_)) => assert_eq!(all_balances(&*store).await, before),
                    Err(e) => panic!("step {step}: {e:?}"),
                }
            }
            2 => {
                let id = format!("h{}", next(20));
                match store.abs_release(&id).await {
                    Ok(released) => {
                        if active.remove(&id).is_some() {
                            assert!(released, "step {step}: an active hold was released");
                            done[2] += 1;
                        }
                    }
                    Err(StoreError::Refused(_)) | Err(StoreError::NotFound) => {}
                    Err(e) => panic!("step {step}: {e:?}"),
                }
                assert_eq!(all_balances(&*store).await, before);
            }
            _ => {
                let t = transfer(
                    &format!("t{}", next(30)),
                    vec![leg(account, -amount, "RUB"), leg(other, amount, "RUB")],
                );
                match store.abs_transfer(&t).await {
                    Ok(r) if r.duplicate => assert_eq!(all_balances(&*store).await, before),
                    Ok(_) => {}
                    Err(StoreError::Refused(_)) => assert_eq!(all_balances(&*store).await, before),
                    Err(e) => panic!("step {step}: {e:?}"),
                }
            }
        }
        for account in accounts {
            let held: i64 = active
                .values()
                .filter(|(a, _)| *a == account)
                .map(|(_, amount)| amount)
                .sum();
            let balance = account_balance(&*store, account).await;
            assert!(
                balance - held >= 0,
                "step {step}: {account} {balance} - {held}"
            );
        }
        assert_sums_zero(&*store).await;
    }
    assert!(
        done.iter().all(|n| *n > 0),
        "holds, captures, releases: {done:?}"
    );
}

async fn abs_rate_set_is_replaced_only_by_a_newer_one(store: Arc<dyn Store>) {
    assert_eq!(store.abs_rate_set().await.unwrap(), None);
    assert!(store.abs_save_rate_set(5, "{\"v\":5}").await.unwrap());
    assert!(!store.abs_save_rate_set(4, "{\"v\":4}").await.unwrap());
    assert!(
        !store
            .abs_save_rate_set(5, "{\"v\":\"again\"}")
            .await
            .unwrap()
    );
    assert_eq!(
        store.abs_rate_set().await.unwrap(),
        Some((5, "{\"v\":5}".to_owned()))
    );
    assert!(store.abs_save_rate_set(6, "{\"v\":6}").await.unwrap());
    assert_eq!(store.abs_rate_set().await.unwrap().map(|(v, _)| v), Some(6));
}
