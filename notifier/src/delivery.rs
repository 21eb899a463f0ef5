//! Delivery tracking: every outcome goes to a [`DeliverySink`] (the platform turns it into a
//! `notification` feed event) and into [`Metrics`] (Prometheus text).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::model::DeliveryOutcome;

#[async_trait]
pub trait DeliverySink: Send + Sync + 'static {
    async fn report(&self, outcome: DeliveryOutcome);
}

/// Discards outcomes (they are still recorded in the store).
pub struct NoopSink;

#[async_trait]
impl DeliverySink for NoopSink {
    async fn report(&self, _outcome: DeliveryOutcome) {}
}

/// Forwards outcomes into a bounded channel; when the reader falls behind, outcomes are
/// dropped (and counted) rather than stalling the workers. The store keeps them all.
pub struct ChannelSink {
    tx: mpsc::Sender<DeliveryOutcome>,
    dropped: AtomicU64,
}

impl ChannelSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<DeliveryOutcome>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                dropped: AtomicU64::new(0),
            },
            rx,
        )
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl DeliverySink for ChannelSink {
    async fn report(&self, outcome: DeliveryOutcome) {
        if self.tx.try_send(outcome).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counters per provider and result. Counting looks up without allocating (the provider
/// name is only copied the first time it is seen).
#[derive(Default)]
pub struct Metrics {
    counters: DashMap<String, DashMap<&'static str, AtomicU64>>,
}

impl Metrics {
    pub fn incr(&self, provider: &str, result: &'static str) {
        if let Some(results) = self.counters.get(provider) {
            if let Some(counter) = results.get(result) {
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
            results
                .entry(result)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters
            .entry(provider.to_owned())
            .or_default()
            .entry(result)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, provider: &str, result: &'static str) -> u64 {
        self.counters
            .get(provider)
            .and_then(|results| results.get(result).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }

    /// `arbat_notifier_sends_total{provider="fcm",result="accepted"} 12` lines.
    pub fn render_prometheus(&self) -> String {
        let mut rows: Vec<_> = self
            .counters
            .iter()
            .flat_map(|p| {
                p.value()
                    .iter()
                    .map(|r| (p.key().clone(), *r.key(), r.value().load(Ordering::Relaxed)))
                    .collect::<Vec<_>>()
            })
            .collect();
        rows.sort();
        let mut out = String::from(
            "# HELP arbat_notifier_sends_total Provider calls and request outcomes by provider and result.\n\
             # TYPE arbat_notifier_sends_total counter\n",
        );
        for (provider, result, value) in rows {
            let _ = writeln!(
                out,
                "arbat_notifier_sends_total{{provider=\"{provider}\",result=\"{result}\"}} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.incr("fcm", "accepted");
        m.incr("fcm", "accepted");
        m.incr("sms", "retry");
        assert_eq!(m.get("fcm", "accepted"), 2);
        let text = m.render_prometheus();
        assert!(
            text.contains("arbat_notifier_sends_total{provider=\"fcm\",result=\"accepted\"} 2\n")
        );
        assert!(text.contains("{provider=\"sms\",result=\"retry\"} 1"));
    }
}
