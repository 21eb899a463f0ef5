//! The publisher: Cache Control changes to `abs.evt.<customer>`, as a back system sends them.
//!
//! Two modes:
//! - **rate** (open loop): change `i` is due at `start + i / rate`; whatever is due is sent at
//!   once, and its id carries the *intended* time, so a publisher or server stall shows up as
//!   latency instead of silently thinning the load (coordinated omission).
//! - **max** (closed loop): send as fast as possible while at most `in_flight` changes are
//!   published but not yet delivered to every socket; the delivered rate is then the highest
//!   rate the path sustains with a bounded queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use time::format_description::well_known::Rfc3339;

use crate::clients::{Customer, Sink, change_id};

/// How changes reach NATS.
#[derive(Clone)]
pub enum Via {
    /// JetStream publish with `Nats-Msg-Id`, acknowledged once stored (durable).
    JetStream(async_nats::jetstream::Context),
    /// Core NATS publish (no storage, no acknowledgement).
    Core(async_nats::Client),
    /// HTTP POST of the body to `<base>/<customer id>` (nchan's publisher endpoint); the
    /// response is the acknowledgement.
    Http {
        client: reqwest::Client,
        base: String,
    },
}

/// Open-loop send times: change `i` at `start + i * interval`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start_ns: u64,
    pub interval_ns: f64,
}

impl Schedule {
    pub fn new(start_ns: u64, rate_per_s: f64) -> Self {
        Self {
            start_ns,
            interval_ns: 1e9 / rate_per_s.max(1e-3),
        }
    }

    /// Intended send time of change `i`.
    pub fn at(&self, i: u64) -> u64 {
        self.start_ns + (i as f64 * self.interval_ns) as u64
    }

    /// How many changes are due by `now_ns` (changes `0..due`).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        ((now_ns - self.start_ns) as f64 / self.interval_ns).floor() as u64 + 1
    }

    /// Changes in `[start, start + span)`.
    pub fn count_in(&self, span: Duration) -> u64 {
        (span.as_nanos() as f64 / self.interval_ns).ceil() as u64
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Max { in_flight: u64 },
    Rate(f64),
}

#[derive(Clone, Debug)]
pub struct PhasePlan {
    pub phase: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub measure: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct PhaseOutcome {
    pub published: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Changes whose intended send time fell in the measurement window.
    pub published_in_window: u64,
    pub frames_in_window: u64,
    pub window_s: f64,
    pub expected_frames: u64,
    /// Why the phase ended early, if it did.
    pub stopped_early: Option<String>,
}

/// Publishes the changes of one phase for a set of customers.
pub struct Publisher {
    pub via: Via,
    pub customers: Vec<Customer>,
    /// Sockets per customer (frames one change produces), aligned with `customers`.
    pub fanout: Vec<u64>,
    /// Unique per run, so change ids never repeat across runs (JetStream deduplicates).
    pub run: String,
    pub sink: Arc<Sink>,
}

/// Open-loop phases stop once this many frames are owed to the clients.
const MAX_OPEN_LOOP_LAG_FRAMES: u64 = 2_000_000;
/// A closed-loop phase with no delivery progress for this long is stalled (events lost).
const STALL: Duration = Duration::from_secs(5);
const ACK_WINDOW: usize = 4096;

type AckFuture = futures::future::BoxFuture<'static, (u64, Result<(), String>)>;

impl Publisher {
    fn body(&self, customer: &Customer, id: &str, i: u64) -> Vec<u8> {
        let at = time::OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let balance = format!("{}.{:02}", 1000 + i / 100, i % 100);
        serde_json::to_vec(&serde_json::json!({
            "id": id,
            "customer_id": customer.customer_id,
            "kind": "balance_changed",
            "at": at,
            "account_id": customer.account_id,
            "balance": {"amount": balance, "currency": customer.currency},
        }))
        .unwrap_or_default()
    }

    async fn send(
        &self,
        phase: usize,
        i: u64,
        intended: u64,
        acks: &mut FuturesUnordered<AckFuture>,
    ) -> Result<u64, String> {
        let k = (i as usize) % self.customers.len();
        let customer = &self.customers[k];
        let fanout = self.fanout[k];
        let id = change_id(&self.run, phase, intended, i);
        let body = self.body(customer, &id, i);
        let subject = format!("abs.evt.{}", customer.customer_id);
        match &self.via {
            Via::JetStream(js) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                let ack = js
                    .publish_with_headers(subject, headers, body.into())
                    .await
                    .map_err(|e| e.to_string())?;
                acks.push(
                    async move { (fanout, ack.await.map(|_| ()).map_err(|e| e.to_string())) }
                        .boxed(),
                );
            }
            Via::Core(client) => {
                client
                    .publish(subject, body.into())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Via::Http { client, base } => {
                let request = client
                    .post(format!("{base}/{}", customer.customer_id))
                    .body(body)
                    .send();
                acks.push(
                    async move {
                        let result = match request.await {
                            Ok(response) if response.status().is_success() => Ok(()),
                            Ok(response) => Err(format!("publish: HTTP {}", response.status())),
                            Err(error) => Err(error.to_string()),
                        };
                        (fanout, result)
                    }
                    .boxed(),
                );
            }
        }
        Ok(fanout)
    }

    /// Runs one phase to its end (not drained: see [`Publisher::drain`]).
    pub async fn run_phase(&self, plan: &PhasePlan) -> PhaseOutcome {
        let clock = self.sink.clock;
        let start = clock.now_ns() + 20_000_000;
        let window_start = start + plan.warmup.as_nanos() as u64;
        let window_end = window_start + plan.measure.as_nanos() as u64;
        self.sink.set_window(plan.phase, window_start, window_end);
        let mut out = PhaseOutcome::default();
        let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        let mut frames_at_window_start: Option<(u64, u64)> = None;
        let mut i: u64 = 0;
        let mut last_progress = (self.sink.delivered(plan.phase), clock.now_ns());
        tokio::time::sleep_until(clock.instant_at(start).into()).await;
        let schedule = match plan.mode {
            Mode::Rate(rate) => Some(Schedule::new(start, rate)),
            Mode::Max { .. } => None,
        };
        let total = schedule.map(|s| s.count_in(plan.warmup + plan.measure));
        loop {
            let now = clock.now_ns();
            if frames_at_window_start.is_none() && now >= window_start {
                frames_at_window_start = Some((self.sink.frames.load(Ordering::Acquire), now));
            }
            while let Some(Some((fanout, result))) = acks.next().now_or_never() {
                if let Err(error) = result {
                    out.errors += 1;
                    out.expected_frames = out.expected_frames.saturating_sub(fanout);
                    out.first_error.get_or_insert(error);
                }
            }
            let delivered = self.sink.delivered(plan.phase);
            let owed = out.expected_frames.saturating_sub(delivered);
            if delivered != last_progress.0 || owed == 0 {
                last_progress = (delivered, now);
            }
            // How many may go now.
            let (allowed, intended_now) = match (plan.mode, schedule) {
                (Mode::Rate(_), Some(schedule)) => {
                    if i >= total.unwrap_or(0) {
                        break;
                    }
                    if owed > MAX_OPEN_LOOP_LAG_FRAMES {
                        out.stopped_early =
                            Some(format!("the server fell {owed} frames behind the schedule"));
                        break;
                    }
                    (
                        schedule.due(now).min(total.unwrap_or(0)).saturating_sub(i),
                        None,
                    )
                }
                (Mode::Max { in_flight }, _) => {
                    if now >= window_end {
                        break;
                    }
                    if now.saturating_sub(last_progress.1) > STALL.as_nanos() as u64 {
                        out.stopped_early = Some(format!(
                            "no delivery progress for {STALL:?} with {owed} frames owed (events lost?)"
                        ));
                        break;
                    }
                    let avg_fanout =
                        self.fanout.iter().sum::<u64>().max(1) / self.fanout.len().max(1) as u64;
                    let cap = in_flight * avg_fanout.max(1);
                    (cap.saturating_sub(owed) / avg_fanout.max(1), Some(now))
                }
                (Mode::Rate(_), None) => break,
            };
            for _ in 0..allowed {
                let intended = intended_now.unwrap_or_else(|| schedule.map_or(now, |s| s.at(i)));
                match self.send(plan.phase, i, intended, &mut acks).await {
                    Ok(fanout) => {
                        out.published += 1;
                        out.expected_frames += fanout;
                        if intended >= window_start && intended < window_end {
                            out.published_in_window += 1;
                        }
                    }
                    Err(error) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(error);
                    }
                }
                i += 1;
                while acks.len() >= ACK_WINDOW {
                    if let Some((fanout, Err(error))) = acks.next().await {
                        out.errors += 1;
                        out.expected_frames = out.expected_frames.saturating_sub(fanout);
                        out.first_error.get_or_insert(error);
                    }
                }
            }
            if let Via::Core(client) = &self.via
                && allowed > 0
            {
                let _ = client.flush().await;
            }
            let wake = match schedule {
                Some(s) if allowed == 0 => clock.instant_at(s.at(i)),
                _ => clock.instant_at(clock.now_ns() + 1_000_000),
            };
            if allowed == 0 {
                tokio::time::sleep_until(wake.into()).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        // The window ends at its planned time, even when the schedule ran out earlier.
        if out.stopped_early.is_none() {
            tokio::time::sleep_until(clock.instant_at(window_end).into()).await;
        }
        let (frames_start, at_start) = frames_at_window_start
            .unwrap_or((self.sink.frames.load(Ordering::Acquire), clock.now_ns()));
        let frames_end = self.sink.frames.load(Ordering::Acquire);
        let ended = clock.now_ns();
        out.window_s = ended.saturating_sub(at_start) as f64 / 1e9;
        out.frames_in_window = frames_end.saturating_sub(frames_start);
        while let Some((fanout, result)) = acks.next().await {
            if let Err(error) = result {
                out.errors += 1;
                out.expected_frames = out.expected_frames.saturating_sub(fanout);
                out.first_error.get_or_insert(error);
            }
        }
        if let Via::Core(client) = &self.via {
            let _ = client.flush().await;
        }
        out
    }

    /// Waits until every expected frame of the phase arrived, or no progress for `quiet`,
    /// at most `limit`. Returns the frames delivered.
    pub async fn drain(
        &self,
        phase: usize,
        expected: u64,
        quiet: Duration,
        limit: Duration,
    ) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = (self.sink.delivered(phase), tokio::time::Instant::now());
        loop {
            let delivered = self.sink.delivered(phase);
            if delivered >= expected {
                return delivered;
            }
            let now = tokio::time::Instant::now();
            if delivered != last.0 {
                last = (delivered, now);
            }
            if now - last.1 > quiet || now > deadline {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_open_loop() {
        let s = Schedule::new(1_000, 1000.0);
        assert_eq!(s.at(0), 1_000);
        assert_eq!(s.at(3), 3_001_000);
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(1_000), 1);
        // A publisher that woke late owes every change that fell due meanwhile.
        assert_eq!(s.due(1_000 + 9_999_999), 10);
        assert_eq!(s.due(1_000 + 10_000_000), 11);
        assert_eq!(s.count_in(Duration::from_secs(2)), 2000);
        let fractional = Schedule::new(0, 3.0);
        assert_eq!(fractional.count_in(Duration::from_secs(1)), 3);
        assert_eq!(fractional.at(2), 666_666_666);
    }
}
