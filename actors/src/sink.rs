//! The embedded change sink: changes go straight to the owning actors, and `submit`
//! returns once every customer's commit has landed.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use kernel::change::{ChangeSink, SinkError, SubmitReport};
use kernel::{Change, CustomerId};

use crate::{ApplyReport, Node};

/// Customers applied concurrently within one submitted batch.
const CONCURRENCY: usize = 64;

pub struct LocalSink {
    node: Node,
}

impl LocalSink {
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// Groups changes by customer, keeping each customer's order.
pub fn group_by_customer(changes: Vec<Change>) -> Vec<(CustomerId, Vec<Change>)> {
    let mut order: Vec<CustomerId> = vec![];
    let mut groups: HashMap<CustomerId, Vec<Change>> = HashMap::new();
    for change in changes {
        let entry = groups.entry(change.customer_id.clone()).or_insert_with(|| {
            order.push(change.customer_id.clone());
            vec![]
        });
        entry.push(change);
    }
    order
        .into_iter()
        .filter_map(|id| groups.remove(&id).map(|changes| (id, changes)))
        .collect()
}

#[async_trait::async_trait]
impl ChangeSink for LocalSink {
    async fn submit(&self, changes: Vec<Change>) -> Result<SubmitReport, SinkError> {
        let accepted = changes.len();
        let results: Vec<(CustomerId, Result<ApplyReport, crate::CallError>)> =
            stream::iter(group_by_customer(changes))
                .map(|(customer, changes)| async move {
                    let result = self
                        .node
                        .call(&customer, crate::CustomerRequest::Apply { changes })
                        .await
                        .and_then(|value| {
                            serde_json::from_value(value)
                                .map_err(|e| crate::CallError::new("internal", e.to_string()))
                        });
                    (customer, result)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut report = SubmitReport {
            accepted,
            rejected: vec![],
        };
        for (customer, result) in results {
            match result {
                Ok(applied) => {
                    for (id, code, detail) in &applied.rejected {
                        tracing::warn!(change_id = %id, %code, %detail, "change refused");
                    }
                    report.rejected.extend(applied.rejected);
                }
                Err(error) if error.code == "unknown_customer" => {
                    return Err(SinkError::UnknownCustomer(customer.to_string()));
                }
                Err(error) => return Err(SinkError::Unavailable(error.to_string())),
            }
        }
        Ok(report)
    }
}
