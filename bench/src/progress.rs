//! A once-a-second sampler of a running phase: the rate and latency percentiles of the last
//! second (kept as the timeline the reports plot), and a progress line on stderr (rate, p99
//! so far, elapsed) when stderr is a terminal or `--progress` asked for one.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clients::Sink;
use crate::report::Latency;

/// One second of a phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the phase started (warm-up included).
    pub t_s: f64,
    /// Event frames received in this interval, per second.
    pub events_per_s: f64,
    /// Latency of the frames timed in this interval (0 when none: warm-up).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Whether progress lines are printed.
pub fn enabled(asked: bool) -> bool {
    asked || std::io::stderr().is_terminal()
}

/// Samples `sink`'s `phase` every second until stopped.
pub struct Sampler {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Vec<TimelinePoint>>,
}

impl Sampler {
    pub fn start(sink: Arc<Sink>, phase: usize, label: String, print: bool) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut points = Vec::new();
            let mut previous = Latency::new();
            let mut frames = sink.frames.load(Ordering::Acquire);
            let mut at = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = &mut stopped => break,
                }
                let now = Instant::now();
                let frames_now = sink.frames.load(Ordering::Acquire);
                let cumulative = sink.latency(phase);
                let interval = cumulative.minus(&previous).summary();
                let so_far = cumulative.summary();
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                let point = TimelinePoint {
                    t_s: now.duration_since(started).as_secs_f64(),
                    events_per_s: frames_now.saturating_sub(frames) as f64 / seconds,
                    p50_ms: interval.p50_ms,
                    p99_ms: interval.p99_ms,
                    p999_ms: interval.p999_ms,
                };
                if print {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K{label}: {:>9.0} events/s  p99 so far {:>8.2} ms  {:>5.0} s elapsed",
                        point.events_per_s, so_far.p99_ms, point.t_s
                    );
                    let _ = err.flush();
                }
                points.push(point);
                previous = cumulative;
                frames = frames_now;
                at = now;
                if points.len() > 100_000 {
                    break;
                }
            }
            if print {
                let _ = writeln!(std::io::stderr());
            }
            points
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops sampling and returns the timeline.
    pub async fn finish(mut self) -> Vec<TimelinePoint> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap_or_default()
    }
}
