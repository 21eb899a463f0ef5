//! Process-wide Prometheus counters and gauges, rendered as text at `GET /metrics`.
//!
//! A fixed set of atomics rather than a registry: every crate bumps the counter it owns
//! without locks, and the exposition lists them all even when they are zero.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub struct Counter(AtomicU64);
pub struct Gauge(AtomicI64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl Gauge {
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

pub static CHANGES_APPLIED: Counter = Counter::new();
pub static CHANGES_DUPLICATE: Counter = Counter::new();
pub static CHANGES_REJECTED: Counter = Counter::new();
pub static EVENTS_COMMITTED: Counter = Counter::new();
pub static ACTORS_RESIDENT: Gauge = Gauge::new();
pub static ACTIVATIONS: Counter = Counter::new();
pub static PASSIVATIONS: Counter = Counter::new();
pub static SOCKETS_OPEN: Gauge = Gauge::new();
pub static SOCKETS_SHED_SLOW: Counter = Counter::new();
pub static FRAMES_SENT: Counter = Counter::new();
pub static OUTBOX_PUBLISHED: Counter = Counter::new();
pub static OUTBOX_LAG: Gauge = Gauge::new();
pub static PARTITIONS_OWNED: Gauge = Gauge::new();
pub static REMOTE_CALLS: Counter = Counter::new();
pub static LOGINS_OK: Counter = Counter::new();
pub static LOGINS_FAILED: Counter = Counter::new();

/// Errors answered to clients, by stable code: a small fixed table, so no allocation on
/// the error path and no unbounded label set.
pub static ERRORS: [(&str, Counter); 12] = [
    ("bad_request", Counter::new()),
    ("unauthorized", Counter::new()),
    ("forbidden", Counter::new()),
    ("not_found", Counter::new()),
    ("invalid_change", Counter::new()),
    ("invalid_credentials", Counter::new()),
    ("too_many_connections", Counter::new()),
    ("unavailable", Counter::new()),
    ("timeout", Counter::new()),
    ("payload_too_large", Counter::new()),
    ("internal", Counter::new()),
    ("other", Counter::new()),
];

pub fn count_error(code: &str) {
    let slot = ERRORS
        .iter()
        .find(|(name, _)| *name == code)
        .unwrap_or(&ERRORS[ERRORS.len() - 1]);
    slot.1.inc();
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut out = String::with_capacity(2048);
    let counters: [(&str, &str, &Counter); 12] = [
        (
            "arbat_changes_applied_total",
            "Cache Control changes applied",
            &CHANGES_APPLIED,
        ),
        (
            "arbat_changes_duplicate_total",
            "Changes skipped as already applied",
            &CHANGES_DUPLICATE,
        ),
        (
            "arbat_changes_rejected_total",
            "Changes refused and dead-lettered",
            &CHANGES_REJECTED,
        ),
        (
            "arbat_events_committed_total",
            "Feed events committed to the journal",
            &EVENTS_COMMITTED,
        ),
        (
            "arbat_actor_activations_total",
            "Customer actor activations",
            &ACTIVATIONS,
        ),
        (
            "arbat_actor_passivations_total",
            "Customer actor passivations",
            &PASSIVATIONS,
        ),
        (
            "arbat_sockets_shed_slow_total",
            "WebSockets closed for falling behind",
            &SOCKETS_SHED_SLOW,
        ),
        (
            "arbat_ws_frames_sent_total",
            "Event frames sent on WebSockets",
            &FRAMES_SENT,
        ),
        (
            "arbat_outbox_published_total",
            "Outbox messages published",
            &OUTBOX_PUBLISHED,
        ),
        (
            "arbat_remote_calls_total",
            "Customer calls routed to another node",
            &REMOTE_CALLS,
        ),
        ("arbat_logins_ok_total", "Successful logins", &LOGINS_OK),
        ("arbat_logins_failed_total", "Failed logins", &LOGINS_FAILED),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            counter.get()
        );
    }
    let gauges: [(&str, &str, &Gauge); 4] = [
        (
            "arbat_actors_resident",
            "Customer actors in memory",
            &ACTORS_RESIDENT,
        ),
        ("arbat_sockets_open", "Open WebSockets", &SOCKETS_OPEN),
        (
            "arbat_outbox_lag",
            "Outbox rows waiting to be published",
            &OUTBOX_LAG,
        ),
        (
            "arbat_partitions_owned",
            "Partitions this node owns",
            &PARTITIONS_OWNED,
        ),
    ];
    for (name, help, gauge) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            gauge.get()
        );
    }
    let _ = writeln!(
        out,
        "# HELP arbat_errors_total Errors answered, by code\n# TYPE arbat_errors_total counter"
    );
    for (code, counter) in &ERRORS {
        let _ = writeln!(
            out,
            "arbat_errors_total{{code=\"{code}\"}} {}",
            counter.get()
        );
    }
    out
}
