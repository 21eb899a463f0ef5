//! The per-node scheduler of monthly/weekly autopayments.
//!
//! Every `autopay_tick` it reads, from the store's schedule index, the due runs of the
//! partitions this node owns (at most `autopay_batch`, oldest first), asks each customer's
//! actor to run what is due (activating a passivated actor), and moves the index to the next
//! run the actor names. The run's payment id is its run key (`autopay:<id>:<period>`), so a
//! run repeated after a node was killed (before the index moved) finds the payment already
//! recorded in the journal, or is refused by the ABS as a known id: never paid twice. A
//! transient failure leaves the row due; the next tick tries again.

use std::time::Duration;

use futures::StreamExt;
use kernel::store::DueRun;
use tokio::sync::watch;

use crate::node::Node;
use crate::protocol::CustomerRequest;

/// Runs asked of actors at once within one tick.
const RUNS_IN_FLIGHT: usize = 8;

pub(crate) async fn run(node: Node, mut shutdown: watch::Receiver<bool>) {
    let tick = node.config().autopay_tick;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = tick_once(&node).await {
            tracing::warn!(%error, "autopayment scheduler: store unavailable");
        }
    }
}

/// One scan: the due runs of the owned partitions, each asked of its actor.
pub(crate) async fn tick_once(node: &Node) -> Result<usize, kernel::store::StoreError> {
    let owned: Vec<u32> = node.owned().borrow().iter().copied().collect();
    if owned.is_empty() {
        return Ok(0);
    }
    let now_ms = domain::scheduled::unix_ms(kernel::now());
    let due = node
        .store()
        .schedule_due(&owned, now_ms, node.config().autopay_batch)
        .await?;
    let count = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(RUNS_IN_FLIGHT, |run| run_one(node, run))
        .await;
    Ok(count)
}

async fn run_one(node: &Node, run: DueRun) {
    // The partition may have moved since the scan: its new owner runs it.
    if !node.owns(&run.customer_id) {
        return;
    }
    let request = CustomerRequest::RunScheduled {
        autopayment_id: run.autopayment_id.clone(),
        due_at_ms: run.next_run_ms,
    };
    let answer = match node.call(&run.customer_id, request).await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(customer = %run.customer_id, autopayment = %run.autopayment_id,
                %error, "autopayment run not done; retried on a later tick");
            return;
        }
    };
    let next_run_ms = answer.get("next_run_ms").and_then(|n| n.as_i64());
    let moved = node
        .store()
        .schedule_advance(
            &run.customer_id,
            &run.autopayment_id,
            run.next_run_ms,
            next_run_ms,
        )
        .await;
    if let Err(error) = moved {
        // The row stays due: the next tick asks the actor again, which finds the run done.
        tracing::warn!(%error, "autopayment schedule not advanced");
    }
}

/// The default tick: a due run starts within a second of its time.
pub(crate) const DEFAULT_TICK: Duration = Duration::from_secs(1);
