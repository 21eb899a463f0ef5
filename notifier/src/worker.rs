//! The worker: takes deliveries from a [`WorkQueue`], routes, renders, sends through guarded
//! providers, records per-channel sends (dedupe by request id) and reports outcomes.
//! The same code serves the JetStream queue (cluster) and the store queue (embedded).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernel::CustomerId;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
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
use crate::store::{NotifStoreError, NotifierStore, Prefetched, SendState};
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
    /// One guard per configured provider, built up front: a send locks only its own.
    guards: HashMap<&'static str, Arc<Mutex<Guard>>>,
    /// Guards of providers not known at construction (none in practice).
    extra_guards: Mutex<HashMap<&'static str, Arc<Mutex<Guard>>>>,
    /// Request ids being handled by this node's workers. A request whose lease lapsed while
    /// it was still being handled (a long Retry-After, a slow provider) may be claimed again;
    /// such a second copy is left alone (not settled) instead of being sent a second time.
    in_flight: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Whether a customer's app holds a live WebSocket (set by the node; none: never online).
    presence: std::sync::OnceLock<Arc<dyn Presence>>,
}

/// Marks a request id in flight until dropped (also when the task is aborted).
struct InFlight {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl InFlight {
    fn take(set: &Arc<Mutex<std::collections::HashSet<String>>>, id: &str) -> Option<Self> {
        let fresh = set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
        fresh.then(|| Self {
            set: set.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// What the rate limit and the breaker say before a provider call.
enum Gate {
    Go,
    Wait(Duration),
    Open(Option<Duration>),
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
        let guards = [
            &providers.fcm,
            &providers.apns,
            &providers.sms,
            &providers.email,
        ]
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p.name();
            (name, Arc::new(Mutex::new(new_guard(&options, name))))
        })
        .collect();
        Arc::new(Self {
            store,
            templates,
            providers,
            sink,
            metrics: Arc::new(Metrics::default()),
            options,
            guards,
            extra_guards: Mutex::new(HashMap::new()),
            presence: std::sync::OnceLock::new(),
            in_flight: Arc::default(),
        })
    }

    /// Lets routing replace a push by the in-app event while the customer is online (rules
    /// with `in_app_when_online`). Set once; later calls are ignored.
    pub fn set_presence(&self, presence: Arc<dyn Presence>) {
        let _ = self.presence.set(presence);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn NotifierStore> {
        &self.store
    }

    /// Starts `workers` loops on `queue`, each handling up to `options.concurrency` at once.
    ///
    /// A loop claims as many requests as it has free slots (one claim per fetch), reads what
    /// the store holds about them in one prefetch, and runs each as its own task; a slot is
    /// refilled as soon as its request is settled, so one slow send does not hold back the
    /// rest of its batch.
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
                let stop = stop_rx.clone();
                tokio::spawn(async move { me.run(queue, stop).await })
            })
            .collect();
        WorkerHandle {
            tasks,
            stop: stop_tx,
        }
    }

    async fn run(
        self: Arc<Self>,
        queue: Arc<dyn WorkQueue>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let concurrency = self.options.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        // Dropping the set (the loop aborted) aborts the in-flight deliveries with it.
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            if *stop.borrow() {
                break;
            }
            let free = tokio::select! {
                free = free_slots(&slots, concurrency) => free,
                _ = stop.changed() => break,
            };
            let batch = tokio::select! {
                batch = queue.fetch(free, Duration::from_millis(200)) => batch,
                _ = stop.changed() => break,
            };
            match batch {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    let parsed: Vec<_> = batch
                        .into_iter()
                        .map(|d| {
                            let request = NotificationRequest::from_json(&d.payload);
                            (d, request)
                        })
                        .collect();
                    let prefetched = self
                        .prefetch(parsed.iter().filter_map(|(_, r)| r.as_ref().ok()))
                        .await;
                    for (delivery, request) in parsed {
                        let marker = match &request {
                            Ok(r) => match InFlight::take(&self.in_flight, &r.id) {
                                Some(marker) => Some(marker),
                                None => {
                                    // Still being handled here: its settlement decides.
                                    tracing::debug!(request_id = %r.id, "claimed again while in flight");
                                    continue;
                                }
                            },
                            Err(_) => None,
                        };
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // Cannot happen (only this loop takes slots); leave it to redelivery.
                            continue;
                        };
                        let me = self.clone();
                        let prefetched = prefetched.clone();
                        running.spawn(async move {
                            me.settle(delivery, request, prefetched.as_deref(), Some(permit))
                                .await;
                            drop(marker);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notifier queue fetch failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Reads preferences, devices and send records for a batch at once. On failure each
    /// request reads for itself (and retries later if the store is really down).
    async fn prefetch<'a>(
        &self,
        requests: impl Iterator<Item = &'a NotificationRequest>,
    ) -> Option<Arc<Prefetched>> {
        let mut customers = Vec::new();
        let mut ids = Vec::new();
        for r in requests {
            customers.push(r.customer_id.clone());
            ids.push(r.id.clone());
        }
        if ids.is_empty() {
            return None;
        }
        match self.store.prefetch(&customers, &ids).await {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(error = %e, "prefetching notification context failed");
                None
            }
        }
    }

    /// Handles one delivery to the end: ack, retry later, or dead-letter.
    pub async fn handle(&self, delivery: Delivery) {
        let request = NotificationRequest::from_json(&delivery.payload);
        let prefetched = self.prefetch(request.as_ref().ok().into_iter()).await;
        self.settle(delivery, request, prefetched.as_deref(), None)
            .await;
    }

    /// `slot` is given back once every channel is recorded, before the queue settles the
    /// delivery: an ack needs no sending, and a lost one only means a redelivery that the
    /// send records turn into an ack.
    async fn settle(
        &self,
        delivery: Delivery,
        request: Result<NotificationRequest, String>,
        prefetched: Option<&Prefetched>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let attempt = delivery.attempt;
        let verdict = if attempt > self.options.max_deliveries {
            Verdict::DeadLetter(format!(
                "max deliveries ({}) exceeded",
                self.options.max_deliveries
            ))
        } else {
            match &request {
                Ok(request) => self.process(request, prefetched).await,
                Err(reason) => Verdict::DeadLetter(reason.clone()),
            }
        };
        let request = request.ok();
        drop(slot);
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

    async fn process(
        &self,
        request: &NotificationRequest,
        prefetched: Option<&Prefetched>,
    ) -> Verdict {
        let store_retry = |e: NotifStoreError| Verdict::Retry {
            reason: e.to_string(),
            after: None,
        };
        let (prefs, devices): (Cow<'_, Preferences>, Cow<'_, [Device]>) = match prefetched {
            Some(pre) => (
                pre.preferences
                    .get(&request.customer_id)
                    .map_or_else(|| Cow::Owned(Preferences::default()), Cow::Borrowed),
                pre.devices
                    .get(&request.customer_id)
                    .map_or(Cow::Borrowed(&[][..]), |d| Cow::Borrowed(d.as_slice())),
            ),
            None => {
                let prefs = match self.store.preferences(&request.customer_id).await {
                    Ok(p) => p.unwrap_or_default(),
                    Err(e) => return store_retry(e),
                };
                let devices = match self.store.devices(&request.customer_id).await {
                    Ok(d) => d,
                    Err(e) => return store_retry(e),
                };
                (Cow::Owned(prefs), Cow::Owned(devices))
            }
        };
        let prefs: &Preferences = &prefs;
        let now = OffsetDateTime::now_utc();
        // Ask for presence only when the customer's rule can use it: it costs a bus round trip.
        let online = match self.presence.get() {
            Some(presence) if prefs.rule(request.kind).in_app_when_online => {
                presence.online(&request.customer_id).await
            }
            _ => false,
        };
        let (steps, skipped) =
            match routing::plan_with_presence(request, prefs, &devices, now, online) {
                Decision::Defer { until } => {
                    let wait = (until - now).try_into().unwrap_or(Duration::from_secs(60));
                    return Verdict::Defer(wait);
                }
                Decision::Send { steps, skipped } => (steps, skipped),
            };
        let language = request.language.or(prefs.language);
        let mut renders: HashMap<Language, Rendered> = HashMap::new();
        let main = match self.render(request, prefs, language, &mut renders) {
            Ok(r) => r,
            Err(reason) => return Verdict::DeadLetter(reason),
        };
        let mut retry: Option<SendError> = None;
        for (channel, why) in skipped {
            self.finish(request, channel, None, StepResult::Failed(why.to_owned()))
                .await;
        }
        for step in steps {
            let channel = step.target.channel();
            match self.already_final(prefetched, &request.id, channel).await {
                Ok(Some(state)) => {
                    self.report_again(request, channel, state).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return store_retry(e),
            }
            let (result, provider) = self
                .run_target(request, prefs, &step.target, &main, &mut renders)
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
                    request,
                    channel,
                    provider,
                    StepResult::Failed(format!(
                        "{why}; fell back to {}",
                        fallback.channel().as_str()
                    )),
                )
                .await;
                let fallback_channel = fallback.channel();
                match self
                    .already_final(prefetched, &request.id, fallback_channel)
                    .await
                {
                    Ok(Some(state)) => {
                        self.report_again(request, fallback_channel, state).await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return store_retry(e),
                }
                let (result, provider) = self
                    .run_target(request, prefs, fallback, &main, &mut renders)
                    .await;
                if let StepResult::Retry(e) = &result {
                    retry.get_or_insert(e.clone());
                }
                self.finish(request, fallback_channel, provider, result)
                    .await;
                continue;
            }
            if let StepResult::Retry(e) = &result {
                retry.get_or_insert(e.clone());
            }
            self.finish(request, channel, provider, result).await;
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

    /// Whether a final state is recorded for the channel (from the batch's prefetch when
    /// there is one: a request is handled by one worker at a time, so it cannot go stale).
    async fn already_final(
        &self,
        prefetched: Option<&Prefetched>,
        request_id: &str,
        channel: Channel,
    ) -> Result<Option<SendState>, NotifStoreError> {
        match prefetched {
            Some(pre) => Ok(pre.sends.get(&(request_id.to_owned(), channel)).copied()),
            None => self.store.send_state(request_id, channel).await,
        }
    }

    /// Reports a channel's recorded final state again. A worker killed between recording a
    /// send and reporting it leaves the outcome unreported; the redelivery skips the send
    /// (never twice on a channel) but must still report, so the customer's feed gets its
    /// `notification` event. Sinks are idempotent (the feed drops a repeated outcome id).
    async fn report_again(
        &self,
        request: &NotificationRequest,
        channel: Channel,
        state: SendState,
    ) {
        let (status, reason) = match state {
            SendState::Sent => (OutcomeStatus::Accepted, None),
            SendState::Failed => (
                OutcomeStatus::Failed,
                Some("recorded before a redelivery".to_owned()),
            ),
        };
        self.sink
            .report(DeliveryOutcome {
                request_id: request.id.clone(),
                customer_id: Some(request.customer_id.clone()),
                kind: Some(request.kind),
                channel: Some(channel),
                status,
                provider: None,
                reason,
                at: kernel::now(),
            })
            .await;
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
        let outcome = DeliveryOutcome {
            request_id: request.id.clone(),
            customer_id: Some(request.customer_id.clone()),
            kind: Some(request.kind),
            channel: Some(channel),
            status,
            provider: provider.map(str::to_owned),
            reason,
            at: kernel::now(),
        };
        // The send record and the outcome in one (group-committed) write.
        if let Err(e) = self
            .store
            .record_final(&request.id, channel, state, &outcome)
            .await
        {
            tracing::warn!(error = %e, "recording a send failed");
        }
        self.sink.report(outcome).await;
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
            // Rate limit (wait for a token), then the breaker; one lock of this provider's guard.
            let guard = self.guard(name);
            loop {
                let gate = {
                    let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    match g.bucket.try_take(now) {
                        Err(wait) => Gate::Wait(wait),
                        Ok(()) if g.breaker.allow(now) => Gate::Go,
                        Ok(()) => Gate::Open(g.breaker.retry_in(now)),
                    }
                };
                match gate {
                    Gate::Go => break,
                    Gate::Wait(wait) => {
                        self.metrics.incr(name, "rate_limited");
                        tokio::time::sleep(wait).await;
                    }
                    Gate::Open(retry_after) => {
                        self.metrics.incr(name, "breaker_open");
                        return StepResult::Retry(SendError::Retryable {
                            reason: format!("{name}: circuit open"),
                            retry_after,
                        });
                    }
                }
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
                let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
                if healthy {
                    g.breaker.on_success();
                } else {
                    g.breaker.on_failure(Instant::now());
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

    fn guard(&self, name: &'static str) -> Arc<Mutex<Guard>> {
        if let Some(guard) = self.guards.get(name) {
            return guard.clone();
        }
        self.extra_guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_insert_with(|| Arc::new(Mutex::new(new_guard(&self.options, name))))
            .clone()
    }
}

fn new_guard(options: &WorkerOptions, name: &str) -> Guard {
    let limit = options
        .rate_limits
        .get(name)
        .copied()
        .unwrap_or(options.default_rate_limit);
    Guard {
        bucket: TokenBucket::new(limit.burst, limit.per_second, Instant::now()),
        breaker: Breaker::new(options.breaker_threshold, options.breaker_cooldown),
    }
}

/// Waits for a free slot, then up to a millisecond for half of them, so that a busy worker
/// claims in batches rather than one request per freed slot; returns how many are free.
async fn free_slots(slots: &Semaphore, concurrency: usize) -> usize {
    if slots.available_permits() == 0 {
        drop(slots.acquire().await);
    }
    let half = (concurrency / 2).max(1);
    if slots.available_permits() < half {
        let wait = slots.acquire_many(u32::try_from(half).unwrap_or(u32::MAX));
        drop(tokio::time::timeout(Duration::from_millis(1), wait).await);
    }
    slots.available_permits().max(1)
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

/// Tells whether a customer's app holds a live WebSocket on any node.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn online(&self, customer: &kernel::CustomerId) -> bool;
}
