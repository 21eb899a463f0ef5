//! The worker: takes deliveries from a [`WorkQueue`], routes, renders, sends through guarded
//! providers, records per-channel sends (dedupe by request id) and reports outcomes.
//! The same code serves the JetStream queue (cluster) and the store queue (embedded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernel::CustomerId;
use rand::Rng;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::delivery::{DeliverySink, Metrics};
use crate::model::{
    Channel, DeliveryOutcome, Device, Kind, Language, NotificationRequest, OutcomeStatus, Platform,
    Preferences,
};
use crate::providers::{Outgoing, Provider, SendError};
use crate::queue::{Delivery, WorkQueue};
use crate::resilience::{Backoff, Breaker, TokenBucket};
use crate::routing::{self, Decision, Target};
use crate::store::{NotifierStore, SendState};
use crate::templates::{Rendered, Templates};

/// The providers a node has; a channel without one fails its sends with `no_provider`.
#[derive(Clone, Default)]
pub struct Providers {
    pub fcm: Option<Arc<dyn Provider>>,
    pub apns: Option<Arc<dyn Provider>>,
    pub sms: Option<Arc<dyn Provider>>,
    pub email: Option<Arc<dyn Provider>>,
}

/// Per-provider rate limit.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Deliveries of one request before it goes to the dead-letter queue.
    pub max_deliveries: u32,
    /// Delay before a failed request is delivered again (grows per delivery).
    pub redelivery: Backoff,
    /// Tries of one provider call within a delivery.
    pub inline_attempts: u32,
    pub inline_backoff: Backoff,
    /// A Retry-After longer than this ends the delivery (the queue waits instead).
    pub max_inline_wait: Duration,
    pub provider_timeout: Duration,
    pub rate_limits: HashMap<String, RateLimit>,
    pub default_rate_limit: RateLimit,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// At most this many SMS codes per customer per window.
    pub code_cap: u32,
    pub code_window: Duration,
    /// Deliveries one worker handles at once.
    pub concurrency: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_deliveries: 8,
            redelivery: Backoff {
                base: Duration::from_secs(2),
                max: Duration::from_secs(300),
            },
            inline_attempts: 3,
            inline_backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(2),
            },
            max_inline_wait: Duration::from_secs(5),
            provider_timeout: Duration::from_secs(15),
            rate_limits: HashMap::new(),
            default_rate_limit: RateLimit {
                burst: 200,
                per_second: 500.0,
            },
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            code_cap: 5,
            code_window: Duration::from_secs(600),
            concurrency: 32,
        }
    }
}

struct Guard {
    bucket: TokenBucket,
    breaker: Breaker,
}

/// Everything a worker needs; cheap to share (`Arc`).
pub struct Notifier {
    store: Arc<dyn NotifierStore>,
    templates: Arc<Templates>,
    providers: Providers,
    sink: Arc<dyn DeliverySink>,
    metrics: Arc<Metrics>,
    options: WorkerOptions,
    guards: Mutex<HashMap<&'static str, Guard>>,
}

/// What became of one delivery.
#[derive(Debug, PartialEq)]
enum Verdict {
    Done,
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Defer(Duration),
    DeadLetter(String),
}

enum StepResult {
    Accepted,
    Failed(String),
    Retry(SendError),
}

impl Notifier {
    pub fn new(
        store: Arc<dyn NotifierStore>,
        templates: Arc<Templates>,
        providers: Providers,
        sink: Arc<dyn DeliverySink>,
        options: WorkerOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            templates,
            providers,
            sink,
            metrics: Arc::new(Metrics::default()),
            options,
            guards: Mutex::new(HashMap::new()),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn NotifierStore> {
        &self.store
    }

    /// Starts `workers` loops on `queue`, each handling up to `options.concurrency` at once.
    pub fn spawn_workers(
        self: &Arc<Self>,
        queue: Arc<dyn WorkQueue>,
        workers: usize,
    ) -> WorkerHandle {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = (0..workers.max(1))
            .map(|_| {
                let me = self.clone();
                let queue = queue.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    while !*stop.borrow() {
                        let batch = tokio::select! {
                            batch = queue.fetch(me.options.concurrency, Duration::from_millis(200)) => batch,
                            _ = stop.changed() => break,
                        };
                        match batch {
                            Ok(batch) => {
                                futures::future::join_all(batch.into_iter().map(|d| me.handle(d))).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "notifier queue fetch failed");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        WorkerHandle {
            tasks,
            stop: stop_tx,
        }
    }

    /// Handles one delivery to the end: ack, retry later, or dead-letter.
    pub async fn handle(&self, delivery: Delivery) {
        let attempt = delivery.attempt;
        let verdict = if attempt > self.options.max_deliveries {
            Verdict::DeadLetter(format!(
                "max deliveries ({}) exceeded",
                self.options.max_deliveries
            ))
        } else {
            self.process(&delivery.payload).await
        };
        let request = NotificationRequest::from_json(&delivery.payload).ok();
        let settled = match verdict {
            Verdict::Done => delivery.ack().await,
            Verdict::Defer(after) => delivery.retry(after).await,
            Verdict::Retry { reason, .. } if attempt >= self.options.max_deliveries => {
                let reason = format!("gave up after {attempt} deliveries: {reason}");
                self.dead_lettered(request.as_ref(), &delivery.payload, &reason)
                    .await;
                delivery.dead_letter(&reason).await
            }
            Verdict::Retry { reason, after } => {
                let jitter = rand::thread_rng().r#gen::<f64>();
                let delay = self.options.redelivery.delay(attempt, jitter, after);
                tracing::debug!(attempt, ?delay, %reason, "notification will be retried");
                delivery.retry(delay).await
            }
            Verdict::DeadLetter(reason) => {
                self.dead_lettered(request.as_ref(), &delivery.payload, &reason)
                    .await;
                delivery.dead_letter(&reason).await
            }
        };
        if let Err(e) = settled {
            // Not settled: the queue delivers it again; per-channel records prevent repeats.
            tracing::warn!(error = %e, "settling a notification delivery failed");
        }
    }

    async fn dead_lettered(
        &self,
        request: Option<&NotificationRequest>,
        payload: &[u8],
        reason: &str,
    ) {
        self.metrics.incr("queue", "dead_lettered");
        let request_id = request.map(|r| r.id.clone()).unwrap_or_else(|| {
            serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v["id"].as_str().map(|s| s.chars().take(128).collect()))
                .unwrap_or_default()
        });
        tracing::warn!(request_id = %request_id, reason, "notification dead-lettered");
        self.report(DeliveryOutcome {
            request_id,
            customer_id: request.map(|r| r.customer_id.clone()),
            kind: request.map(|r| r.kind),
            channel: None,
            status: OutcomeStatus::DeadLettered,
            provider: None,
            reason: Some(reason.to_owned()),
            at: kernel::now(),
        })
        .await;
    }

    async fn report(&self, outcome: DeliveryOutcome) {
        if let Err(e) = self.store.record_outcome(&outcome).await {
            tracing::warn!(error = %e, "recording a delivery outcome failed");
        }
        self.sink.report(outcome).await;
    }

    async fn process(&self, payload: &[u8]) -> Verdict {
        let request = match NotificationRequest::from_json(payload) {
            Ok(r) => r,
            Err(reason) => return Verdict::DeadLetter(reason),
        };
        let store_retry = |e: crate::store::NotifStoreError| Verdict::Retry {
            reason: e.to_string(),
            after: None,
        };
        let prefs = match self.store.preferences(&request.customer_id).await {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => return store_retry(e),
        };
        let devices = match self.store.devices(&request.customer_id).await {
            Ok(d) => d,
            Err(e) => return store_retry(e),
        };
        let now = OffsetDateTime::now_utc();
        let (steps, skipped) = match routing::plan(&request, &prefs, &devices, now) {
            Decision::Defer { until } => {
                let wait = (until - now).try_into().unwrap_or(Duration::from_secs(60));
                return Verdict::Defer(wait);
            }
            Decision::Send { steps, skipped } => (steps, skipped),
        };
        let language = request.language.or(prefs.language);
        let mut renders: HashMap<Language, Rendered> = HashMap::new();
        let main = match self.render(&request, &prefs, language, &mut renders) {
            Ok(r) => r,
            Err(reason) => return Verdict::DeadLetter(reason),
        };
        let mut retry: Option<SendError> = None;
        for (channel, why) in skipped {
            self.finish(&request, channel, None, StepResult::Failed(why.to_owned()))
                .await;
        }
        for step in steps {
            let channel = step.target.channel();
            match self.store.send_state(&request.id, channel).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return store_retry(e),
            }
            let (result, provider) = self
                .run_target(&request, &prefs, &step.target, &main, &mut renders)
                .await;
            let reached = matches!(result, StepResult::Accepted);
            if !reached && let Some(fallback) = &step.fallback {
                // Push reached no device: fall back (SMS), and do not retry push later.
                let why = match &result {
                    StepResult::Failed(r) => r.clone(),
                    StepResult::Retry(e) => e.to_string(),
                    StepResult::Accepted => String::new(),
                };
                self.finish(
                    &request,
                    channel,
                    provider,
                    StepResult::Failed(format!(
                        "{why}; fell back to {}",
                        fallback.channel().as_str()
                    )),
                )
                .await;
                let fallback_channel = fallback.channel();
                match self.store.send_state(&request.id, fallback_channel).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(e) => return store_retry(e),
                }
                let (result, provider) = self
                    .run_target(&request, &prefs, fallback, &main, &mut renders)
                    .await;
                if let StepResult::Retry(e) = &result {
                    retry.get_or_insert(e.clone());
                }
                self.finish(&request, fallback_channel, provider, result)
                    .await;
                continue;
            }
            if let StepResult::Retry(e) = &result {
                retry.get_or_insert(e.clone());
            }
            self.finish(&request, channel, provider, result).await;
        }
        match retry {
            None => Verdict::Done,
            Some(SendError::Retryable {
                reason,
                retry_after,
            }) => Verdict::Retry {
                reason,
                after: retry_after,
            },
            Some(other) => Verdict::Retry {
                reason: other.to_string(),
                after: None,
            },
        }
    }

    fn render(
        &self,
        request: &NotificationRequest,
        prefs: &Preferences,
        language: Option<Language>,
        cache: &mut HashMap<Language, Rendered>,
    ) -> Result<Rendered, String> {
        let language = language.unwrap_or(self.templates.default_language());
        if let Some(r) = cache.get(&language) {
            return Ok(r.clone());
        }
        let rendered = self
            .templates
            .render(
                request.kind,
                Some(language),
                &request.params,
                prefs.utc_offset_minutes,
            )
            .map_err(|e| format!("cannot render {}: {e}", request.kind.as_str()))?;
        cache.insert(language, rendered.clone());
        Ok(rendered)
    }

    /// Records a final per-channel result and reports it; retries are only counted.
    async fn finish(
        &self,
        request: &NotificationRequest,
        channel: Channel,
        provider: Option<&'static str>,
        result: StepResult,
    ) {
        let (state, status, reason) = match result {
            StepResult::Accepted => (SendState::Sent, OutcomeStatus::Accepted, None),
            StepResult::Failed(reason) => (SendState::Failed, OutcomeStatus::Failed, Some(reason)),
            StepResult::Retry(_) => return,
        };
        if let Err(e) = self.store.record_send(&request.id, channel, state).await {
            tracing::warn!(error = %e, "recording a send failed");
        }
        self.report(DeliveryOutcome {
            request_id: request.id.clone(),
            customer_id: Some(request.customer_id.clone()),
            kind: Some(request.kind),
            channel: Some(channel),
            status,
            provider: provider.map(str::to_owned),
            reason,
            at: kernel::now(),
        })
        .await;
    }

    async fn run_target(
        &self,
        request: &NotificationRequest,
        prefs: &Preferences,
        target: &Target,
        main: &Rendered,
        renders: &mut HashMap<Language, Rendered>,
    ) -> (StepResult, Option<&'static str>) {
        let outgoing = |to: &str, rendered: &Rendered, body: &str| Outgoing {
            request_id: request.id.clone(),
            kind: request.kind,
            priority: request.priority(),
            to: to.to_owned(),
            title: rendered.title.clone(),
            body: body.to_owned(),
            data: [
                ("request_id".to_owned(), request.id.clone()),
                ("kind".to_owned(), request.kind.as_str().to_owned()),
            ]
            .into(),
        };
        match target {
            Target::InApp => {
                self.metrics.incr("in_app", "accepted");
                (StepResult::Accepted, Some("in_app"))
            }
            Target::Sms { phone } => {
                let Some(provider) = self.providers.sms.clone() else {
                    return (StepResult::Failed("no_provider".into()), None);
                };
                if request.kind == Kind::Code {
                    match self.code_allowed(&request.customer_id).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return (
                                StepResult::Failed("code_cap_exceeded".into()),
                                Some(provider.name()),
                            );
                        }
                        Err(e) => return (StepResult::Retry(e), Some(provider.name())),
                    }
                }
                let message = outgoing(phone, main, &main.sms);
                (
                    settle_recipient(self.send_guarded(&provider, &message).await),
                    Some(provider.name()),
                )
            }
            Target::Email { address } => {
                let Some(provider) = self.providers.email.clone() else {
                    return (StepResult::Failed("no_provider".into()), None);
                };
                let message = outgoing(address, main, &main.body);
                (
                    settle_recipient(self.send_guarded(&provider, &message).await),
                    Some(provider.name()),
                )
            }
            Target::Push { devices } => {
                self.push(request, prefs, devices, main, renders, &outgoing)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn push(
        &self,
        request: &NotificationRequest,
        prefs: &Preferences,
        devices: &[Device],
        main: &Rendered,
        renders: &mut HashMap<Language, Rendered>,
        outgoing: &(dyn Fn(&str, &Rendered, &str) -> Outgoing + Sync),
    ) -> (StepResult, Option<&'static str>) {
        let mut accepted = false;
        let mut retry: Option<SendError> = None;
        let mut last_provider = None;
        let mut reasons = Vec::new();
        for device in devices {
            let provider = match device.platform {
                Platform::Android => self.providers.fcm.clone(),
                Platform::Ios => self.providers.apns.clone(),
            };
            let Some(provider) = provider else {
                reasons.push("no_provider".to_owned());
                continue;
            };
            last_provider = Some(provider.name());
            // The customer's chosen language wins; a device's own language is the fallback.
            let language = request.language.or(prefs.language).or(device.language);
            let rendered = if Some(main.language) == language {
                main.clone()
            } else {
                match self.render(request, prefs, language, renders) {
                    Ok(r) => r,
                    Err(_) => main.clone(),
                }
            };
            let message = outgoing(&device.token, &rendered, &rendered.body);
            match self.send_guarded(&provider, &message).await {
                StepResult::Accepted => accepted = true,
                StepResult::Failed(reason) => reasons.push(reason),
                StepResult::Retry(SendError::InvalidRecipient { reason }) => {
                    reasons.push(reason);
                    self.metrics.incr(provider.name(), "device_unregistered");
                    if let Err(e) = self
                        .store
                        .remove_device(&request.customer_id, &device.token)
                        .await
                    {
                        tracing::warn!(error = %e, "removing a dead device failed");
                    }
                }
                StepResult::Retry(e) => {
                    reasons.push(e.to_string());
                    retry.get_or_insert(e);
                }
            }
        }
        let result = if accepted {
            StepResult::Accepted
        } else if let Some(e) = retry {
            StepResult::Retry(e)
        } else {
            StepResult::Failed(if reasons.is_empty() {
                "no_device".into()
            } else {
                reasons.join("; ")
            })
        };
        (result, last_provider)
    }

    async fn code_allowed(&self, customer: &CustomerId) -> Result<bool, SendError> {
        let window = self.options.code_window.as_secs().max(1) as i64;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let count = self
            .store
            .count_code(customer, now - now.rem_euclid(window))
            .await
            .map_err(|e| SendError::retryable(e.to_string()))?;
        Ok(count <= self.options.code_cap)
    }

    /// One provider call with rate limit, breaker, timeout and inline retries.
    /// `InvalidRecipient` is returned inside `StepResult::Retry` for the push path to see.
    async fn send_guarded(&self, provider: &Arc<dyn Provider>, message: &Outgoing) -> StepResult {
        let name = provider.name();
        for attempt in 1..=self.options.inline_attempts.max(1) {
            // Rate limit: wait for a token.
            loop {
                let wait = {
                    let mut guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
                    let guard = self.guard(&mut guards, name);
                    guard.bucket.try_take(Instant::now())
                };
                match wait {
                    Ok(()) => break,
                    Err(wait) => {
                        self.metrics.incr(name, "rate_limited");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            let allowed = {
                let mut guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
                let guard = self.guard(&mut guards, name);
                if guard.breaker.allow(Instant::now()) {
                    Ok(())
                } else {
                    Err(guard.breaker.retry_in(Instant::now()))
                }
            };
            if let Err(retry_after) = allowed {
                self.metrics.incr(name, "breaker_open");
                return StepResult::Retry(SendError::Retryable {
                    reason: format!("{name}: circuit open"),
                    retry_after,
                });
            }
            let result =
                match tokio::time::timeout(self.options.provider_timeout, provider.send(message))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(SendError::retryable(format!("{name}: timeout"))),
                };
            let healthy = !matches!(result, Err(SendError::Retryable { .. }));
            {
                let mut guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
                let guard = self.guard(&mut guards, name);
                if healthy {
                    guard.breaker.on_success();
                } else {
                    guard.breaker.on_failure(Instant::now());
                }
            }
            match result {
                Ok(()) => {
                    self.metrics.incr(name, "accepted");
                    return StepResult::Accepted;
                }
                Err(SendError::Rejected { reason }) => {
                    self.metrics.incr(name, "rejected");
                    tracing::warn!(provider = name, request_id = %message.request_id, %reason, "provider rejected a message");
                    return StepResult::Failed(reason);
                }
                Err(e @ SendError::InvalidRecipient { .. }) => {
                    self.metrics.incr(name, "invalid_recipient");
                    return StepResult::Retry(e);
                }
                Err(SendError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    self.metrics.incr(name, "retry");
                    let jitter = rand::thread_rng().r#gen::<f64>();
                    let delay = self
                        .options
                        .inline_backoff
                        .delay(attempt, jitter, retry_after);
                    let last = attempt == self.options.inline_attempts.max(1);
                    if last || retry_after.is_some_and(|a| a > self.options.max_inline_wait) {
                        return StepResult::Retry(SendError::Retryable {
                            reason,
                            retry_after,
                        });
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        StepResult::Retry(SendError::retryable(format!("{name}: attempts exhausted")))
    }

    fn guard<'a>(
        &self,
        guards: &'a mut HashMap<&'static str, Guard>,
        name: &'static str,
    ) -> &'a mut Guard {
        guards.entry(name).or_insert_with(|| {
            let limit = self
                .options
                .rate_limits
                .get(name)
                .copied()
                .unwrap_or(self.options.default_rate_limit);
            Guard {
                bucket: TokenBucket::new(limit.burst, limit.per_second, Instant::now()),
                breaker: Breaker::new(
                    self.options.breaker_threshold,
                    self.options.breaker_cooldown,
                ),
            }
        })
    }
}

/// Outside push, a dead recipient is a final failure of the channel.
fn settle_recipient(result: StepResult) -> StepResult {
    match result {
        StepResult::Retry(SendError::InvalidRecipient { reason }) => StepResult::Failed(reason),
        other => other,
    }
}

/// Running workers. `stop` finishes the current batch; `abort` kills them mid-send (tests).
pub struct WorkerHandle {
    tasks: Vec<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl WorkerHandle {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
