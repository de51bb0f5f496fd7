//! One message in, one [`Action`] plus metric records out.
//!
//! `process` is the driver of the decision in `squall_core::pipeline` (re-exported here): it
//! calls the hooks, waits for a slot of the endpoint host, sends the request, reads the clock and
//! draws the random numbers, and feeds each result to the core's [`Attempt`], which says what
//! comes next. It never touches a queue (the runner and the Lambda handler act, see
//! `actor::Actor`). See ARCHITECTURE.md "Retry mechanism" and "Where a message ends".

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::endpoints::EndpointTable;
use crate::envelope;
use crate::hooks::{HookError, Request, RetryPolicy, Signer, Transform};
use crate::queue::Received;
use crate::retry::{Backoff, RetryLimits};

pub use squall_core::pipeline::*;

/// The longest an attempt waits in process for its endpoint's pacing or `Retry-After` pause
/// before it is deferred instead (ms).
const HEALTH_WAIT_MS: u64 = 2_000;

/// What the pipeline needs from the HTTP layer: send one request, classify the result.
pub trait Deliver: Send + Sync {
    /// Send `request`; never fails (a failure is an `Outcome::Transport`).
    fn deliver<'a>(
        &'a self,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;
}

/// Reads the wall clock (Unix ms). A trait so tests can fix time.
pub trait Clock: Send + Sync {
    /// Now, Unix ms.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Everything one application needs per message, built once per application.
pub struct App {
    /// Application id (`[apps.ID]`); envelopes for another id are dead-lettered.
    pub id: String,
    /// The application's queue (for `squall-source-queue` and re-sends).
    pub queue_url: String,
    /// Transform hook.
    pub transform: Arc<dyn Transform>,
    /// Signer hook.
    pub signer: Arc<dyn Signer>,
    /// Retry policy hook.
    pub retry_policy: Arc<dyn RetryPolicy>,
    /// The application's backoff, used when a plugin fails and the policy is to retry.
    pub backoff: Backoff,
    /// Max attempts and horizon, enforced on every policy.
    pub limits: RetryLimits,
    /// Envelope decoding limits.
    pub envelope_limits: envelope::Limits,
    /// Signing key name when the envelope names none.
    pub signing_key: String,
    /// What a plugin failure leads to.
    pub on_plugin_error: PluginErrorPolicy,
    /// Backoffs up to this are done by visibility; longer ones by re-send (<= 900).
    pub visibility_backoff_max_secs: u32,
    /// The HTTP side.
    pub deliver: Arc<dyn Deliver>,
    /// Concurrent deliveries per endpoint host (`max_per_endpoint`), and how long a delivery
    /// waits for a slot before its message is deferred. `None`: no per-host bound.
    pub endpoints: Option<Arc<EndpointLimiter>>,
    /// The application's registered endpoints as last read: the registry directory replaces
    /// the table when a read finds them changed (no rebuild of the application).
    pub registered: RegisteredEndpoints,
    /// Breaker, pause and pacing per endpoint origin (`None`: `endpoint_health.enabled =
    /// false`).
    pub health: Option<Arc<crate::health::HealthMap>>,
    /// The process's trace exporter (`None`: `traces.otlp_endpoint` is empty).
    pub tracer: Option<Arc<crate::traces::Tracer>>,
}

/// An application's endpoint table, replaced as a whole when the registry says it changed;
/// each message reads the table current when it starts. A registry application's table also
/// records when the registry was last read (changed or not), so that a table older than a
/// message does not decide against it (see `squall_core::pipeline::EndpointsRead`).
#[derive(Debug, Default)]
pub struct RegisteredEndpoints {
    table: std::sync::RwLock<Arc<EndpointTable>>,
    /// Unix ms of the last registry read; 0 = a configuration file's table (authoritative).
    read_at_ms: std::sync::atomic::AtomicU64,
    /// The registry TTL plus one, seconds.
    recheck_secs: std::sync::atomic::AtomicU32,
}

impl RegisteredEndpoints {
    /// These endpoints.
    pub fn new(table: EndpointTable) -> RegisteredEndpoints {
        RegisteredEndpoints {
            table: std::sync::RwLock::new(Arc::new(table)),
            ..RegisteredEndpoints::default()
        }
    }

    /// The table now.
    pub fn current(&self) -> Arc<EndpointTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the table.
    pub fn replace(&self, table: EndpointTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The registry was read at `now_ms` (the table is what it said); the next read is due
    /// within `ttl`.
    pub fn mark_read(&self, now_ms: u64, ttl: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let recheck = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0) + 1).min(900) as u32;
        self.recheck_secs.store(recheck, Relaxed);
        self.read_at_ms.fetch_max(now_ms, Relaxed);
    }

    /// When the table was read from the registry (`None`: a configuration file's).
    pub fn read(&self) -> Option<EndpointsRead> {
        use std::sync::atomic::Ordering::Relaxed;
        match self.read_at_ms.load(Relaxed) {
            0 => None,
            read_at_ms => Some(EndpointsRead {
                read_at_ms,
                recheck_secs: self.recheck_secs.load(Relaxed),
            }),
        }
    }
}

impl App {
    /// What the core's decision needs to know of this application, with `endpoints` (read
    /// from [`App::registered`] once per message).
    pub fn settings<'a>(&'a self, endpoints: &'a EndpointTable) -> AppSettings<'a> {
        AppSettings {
            id: &self.id,
            queue_url: &self.queue_url,
            envelope_limits: &self.envelope_limits,
            signing_key: &self.signing_key,
            backoff: &self.backoff,
            limits: self.limits,
            on_plugin_error: self.on_plugin_error,
            visibility_backoff_max_secs: self.visibility_backoff_max_secs,
            identities: HookIdentities {
                transform: self.transform.identity(),
                signer: self.signer.identity(),
                retry_policy: self.retry_policy.identity(),
            },
            endpoints,
            endpoints_read: self.registered.read(),
        }
    }
}

/// Bounds concurrent deliveries per endpoint host for one application. A delivery that finds
/// its host saturated waits at most `wait` for a slot; then its message is deferred (re-sent
/// with a delay, no attempt counted) so that it does not hold one of the application's
/// concurrency slots while other endpoints' events wait behind it.
pub struct EndpointLimiter {
    max: usize,
    wait: Duration,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl EndpointLimiter {
    /// At most `max` (>= 1) concurrent deliveries per host; wait at most `wait` for a slot.
    pub fn new(max: usize, wait: Duration) -> EndpointLimiter {
        EndpointLimiter {
            max: max.max(1),
            wait,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `host`, or `None` when none came free within the wait.
    pub async fn acquire(&self, host: &str) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            if hosts.len() > 4096 {
                // Forget idle hosts so the map does not grow without bound.
                hosts.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.max);
            }
            match hosts.get(host) {
                Some(sem) => sem.clone(),
                None => hosts
                    .entry(host.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
                    .clone(),
            }
        };
        if let Ok(slot) = sem.clone().try_acquire_owned() {
            return Some(slot);
        }
        // The driver's own wait, not a decision: the core only learns that no slot came.
        match tokio::time::timeout(self.wait, sem.acquire_owned()).await {
            Ok(slot) => Some(slot.expect("never closed")),
            Err(_) => None,
        }
    }
}

/// Process one received message of `app`. Never panics on any input, never does queue I/O.
/// Every decision is the core's [`Attempt`]; this only runs the effects between its steps.
/// With traces on, each attempt made (each metrics record) becomes a span.
pub async fn process(
    app: &App,
    msg: &Received,
    clock: &dyn Clock,
    opts: ProcessOptions,
) -> Processed {
    // Boxed: the attempt's state machine is a few KB, and every message's task would
    // otherwise carry (and move, when spawned) it inline.
    let Some(tracer) = &app.tracer else {
        return Box::pin(process_traced(app, msg, clock, opts, None)).await;
    };
    let mut trace = Traced::default();
    let p = Box::pin(process_traced(app, msg, clock, opts, Some(&mut trace))).await;
    if let Some(ctx) = trace.ctx.filter(|c| c.sampled()) {
        for record in &p.metrics {
            tracer.record(crate::traces::Span {
                ctx,
                record: record.clone(),
                hooks: trace.hooks,
            });
        }
    }
    p
}

/// What tracing learns while an attempt runs.
#[derive(Debug, Default)]
struct Traced {
    ctx: Option<crate::traces::TraceContext>,
    hooks: crate::traces::HookTimes,
}

fn micros(since: std::time::Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}

async fn process_traced(
    app: &App,
    msg: &Received,
    clock: &dyn Clock,
    opts: ProcessOptions,
    mut trace: Option<&mut Traced>,
) -> Processed {
    let endpoints = app.registered.current();
    let settings = app.settings(&endpoints);
    let mut attempt = match Attempt::start(&settings, msg, opts, clock.now_ms(), fastrand::f64()) {
        Start::Attempt(attempt) => attempt,
        Start::Hop(done) => return done,
        Start::Malformed(done) => {
            if let Action::DeadLetter { reason, attributes } = &done.action {
                let endpoint_id = attributes.get(ATTR_ENDPOINT_ID);
                tracing::warn!(app_id = %app.id, message_id = %msg.message_id, endpoint_id, %reason, "dead-lettering without an attempt");
            }
            return done;
        }
    };
    if let Some(t) = trace.as_deref_mut() {
        let event = attempt.event();
        t.ctx = Some(crate::traces::TraceContext::for_attempt(
            attempt.traceparent(),
            &event.app_id,
            &event.id,
            fastrand::u64(..),
        ));
    }
    let started = std::time::Instant::now();
    let transformed = logged(&attempt, app.transform.transform(attempt.event()));
    if let Some(t) = trace.as_deref_mut() {
        t.hooks.transform_us = micros(started);
    }
    let request = match attempt.transformed(transformed, clock.now_ms()) {
        Step::Next(request) => request,
        Step::Done(done) => return done,
    };
    let timestamp = clock.now_ms() / 1000;
    let started = std::time::Instant::now();
    let signed = app
        .signer
        .sign(attempt.context(), &request, attempt.key_name(), timestamp);
    if let Some(t) = trace.as_deref_mut() {
        t.hooks.sign_us = micros(started);
    }
    let mut request = match attempt.signed(request, logged(&attempt, signed), clock.now_ms()) {
        Step::Next(request) => request,
        Step::Done(done) => return done,
    };
    // The attempt's span is the parent of whatever the subscriber records for this request.
    if let Some(ctx) = trace.as_deref().and_then(|t| t.ctx) {
        request
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("traceparent"));
        request
            .headers
            .push(("traceparent".to_string(), ctx.traceparent()));
    }

    // The endpoint's health: an open breaker, a Retry-After pause or its pacing defers the
    // event (a delayed copy, no attempt counted). Short holds (pacing, or a pause of a second
    // or two) are waited here instead, at most HEALTH_WAIT_MS in all per attempt: a deferral
    // costs a re-send, a delete and a receive (the fault run measured a 1-s Retry-After pause
    // costing more SQS calls per delivered event than it saved), a wait only holds the slot.
    let origin = match &app.health {
        Some(_) => crate::health::origin_of(&request.url),
        None => None,
    };
    if let (Some(health), Some(origin)) = (&app.health, &origin) {
        // Other processes' transitions (DynamoDB registry), read when older than their TTL.
        health.refresh(clock.now_ms()).await;
        let mut waited_ms = 0;
        loop {
            let now = clock.now_ms();
            match health.admit(origin, now) {
                crate::health::Admit::Go | crate::health::Admit::Probe => break,
                crate::health::Admit::Disabled { .. }
                    if health.read_before(msg.sent_timestamp_ms) =>
                {
                    // Read again first: an operator may have enabled it since (one read per
                    // batch at most: the read is newer than every message received before it).
                    health.refresh_since(now, msg.sent_timestamp_ms).await;
                    if health.read_before(msg.sent_timestamp_ms) {
                        // The read failed: decide after the next one, not now.
                        return attempt.deferred_until(now + 5_000, now);
                    }
                }
                crate::health::Admit::Disabled { failing_since_ms } => {
                    let reason = format!(
                        "{}: endpoint {origin} of application {:?} failed without a success from {failing_since_ms} (Unix ms) and was disabled (enable it with `squall endpoints --app {} enable {origin}`, then redrive)",
                        squall_core::endpoints::DISABLED_REASON,
                        app.id,
                        app.id
                    );
                    return attempt.endpoint_disabled(reason, now);
                }
                crate::health::Admit::Defer { until_ms, why } => {
                    let wait_ms = until_ms.saturating_sub(now);
                    if why != crate::health::DeferWhy::Open && waited_ms + wait_ms <= HEALTH_WAIT_MS
                    {
                        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                        waited_ms += wait_ms;
                        continue;
                    }
                    tracing::info!(app_id = %app.id, event_id = %attempt.event().id, endpoint = %origin, endpoint_id = attempt.endpoint_id(), ?why, until_ms, "endpoint held: deferred, no attempt made");
                    return attempt.deferred_until(until_ms, now);
                }
            }
        }
    }

    // Held until the response is read; released before the retry decision.
    let mut endpoint_slot = None;
    if let Some(limiter) = &app.endpoints {
        endpoint_slot = limiter.acquire(attempt.endpoint_host()).await;
        if endpoint_slot.is_none() {
            tracing::info!(app_id = %app.id, event_id = %attempt.event().id, endpoint_host = %attempt.endpoint_host(), endpoint_id = attempt.endpoint_id(), attempt = attempt.number(), delay_secs = attempt.defer_delay_secs(), "endpoint saturated: deferred, no attempt made");
            return attempt.deferred();
        }
    }
    let delivery = app.deliver.deliver(&request).await;
    drop((endpoint_slot, request));
    // A token endpoint's failure says nothing of the endpoint (no request reached it).
    let reached = !matches!(
        delivery.outcome,
        crate::hooks::Outcome::Transport {
            kind: crate::hooks::TransportErrorKind::Token,
            ..
        }
    );
    if let (Some(health), Some(origin), true) = (&app.health, &origin, reached) {
        let now = clock.now_ms();
        health.record(origin, crate::health::observe(&delivery.outcome, now), now);
        health.publish().await;
    }

    let context = match attempt.delivered(&delivery, clock.now_ms()) {
        Step::Next(context) => context,
        Step::Done(done) => return done,
    };
    let started = std::time::Instant::now();
    let decision = app.retry_policy.decide(&context, &delivery.outcome);
    if let Some(t) = trace {
        t.hooks.retry_policy_us = micros(started);
    }
    attempt.judged(
        &delivery,
        &context,
        logged(&attempt, decision),
        clock.now_ms(),
    )
}

/// A hook's result, its failure logged (what the failure leads to is the core's decision).
fn logged<T>(attempt: &Attempt<'_>, result: Result<T, HookError>) -> Result<T, HookError> {
    if let Err(error) = &result {
        tracing::warn!(app_id = %attempt.context().app_id, event_id = %attempt.event().id, endpoint_id = attempt.endpoint_id(), attempt = attempt.number(), %error, "hook failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{Headers, Outcome, TransformResult, TransportErrorKind};
    use crate::metrics::MetricOutcome;
    use crate::secrets::SecretKey;
    use crate::signing::standard_webhooks_signature;
    use crate::testing::SECRET;
    use std::sync::Mutex;

    const NOW: u64 = 1_800_000_000_000;

    fn received(body: &str, receive_count: u32, attrs: &[(&str, &str)]) -> Received {
        Received {
            message_id: "m-1".into(),
            receipt_handle: "h-1".into(),
            body: body.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            receive_count,
            sent_timestamp_ms: NOW - 60_000,
            group_id: None,
        }
    }

    // ---- process() with real built-ins and a scripted endpoint ----

    struct FixedClock(u64);
    impl Clock for FixedClock {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }

    /// Answers with scripted outcomes and records the requests.
    struct Scripted {
        outcomes: Mutex<Vec<Outcome>>,
        seen: Mutex<Vec<Request>>,
    }
    impl Scripted {
        fn new(outcomes: Vec<Outcome>) -> Arc<Scripted> {
            Arc::new(Scripted {
                outcomes: Mutex::new(outcomes),
                seen: Mutex::new(Vec::new()),
            })
        }
    }
    impl Deliver for Scripted {
        fn deliver<'a>(
            &'a self,
            request: &'a Request,
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            self.seen.lock().unwrap().push(request.clone());
            let outcome = self.outcomes.lock().unwrap().remove(0);
            Box::pin(async move {
                Delivery {
                    outcome,
                    latency: Duration::from_millis(3),
                }
            })
        }
    }

    struct Failing;
    impl Transform for Failing {
        fn identity(&self) -> &str {
            "plugins/dist/misbehave.wasm"
        }
        fn transform(&self, _: &crate::hooks::Event) -> Result<TransformResult, HookError> {
            Err(HookError::Trap {
                plugin: "plugins/dist/misbehave.wasm".into(),
                detail: "wasm trap: unreachable".into(),
            })
        }
    }
    struct Skipper;
    impl Transform for Skipper {
        fn identity(&self) -> &str {
            "test:skipper"
        }
        fn transform(&self, _: &crate::hooks::Event) -> Result<TransformResult, HookError> {
            Ok(TransformResult::Skip(
                "ping events are not delivered".into(),
            ))
        }
    }

    fn app(deliver: Arc<dyn Deliver>) -> App {
        crate::testing::TestApp::new("memory://billing", deliver).app()
    }

    fn body(app_id: &str) -> String {
        String::from_utf8(
            envelope::Envelope::new_json(
                "evt_1",
                app_id,
                "invoice.paid",
                "https://hooks.example.com/in",
                NOW - 120_000,
                &serde_json::json!({"amount": 42}),
            )
            .encode(),
        )
        .unwrap()
    }

    fn status(s: u16, headers: &[(&str, &str)]) -> Outcome {
        Outcome::Response {
            status: s,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn header<'a>(h: &'a Headers, name: &str) -> &'a str {
        h.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    async fn run(app: &App, msg: &Received) -> Processed {
        process(app, msg, &FixedClock(NOW), ProcessOptions::default()).await
    }

    #[tokio::test]
    async fn delivered_request_is_signed_and_recorded() {
        let d = Scripted::new(vec![status(204, &[])]);
        let a = app(d.clone());
        let p = run(&a, &received(&body("billing"), 1, &[])).await;
        assert_eq!(
            p.action,
            Action::Delete {
                why: DeleteReason::Delivered
            }
        );
        let seen = d.seen.lock().unwrap();
        let req = &seen[0];
        assert_eq!(req.body, br#"{"amount":42}"#);
        assert_eq!(header(&req.headers, "webhook-id"), "evt_1");
        let ts = (NOW / 1000).to_string();
        assert_eq!(header(&req.headers, "webhook-timestamp"), ts);
        assert_eq!(
            header(&req.headers, "webhook-signature"),
            standard_webhooks_signature(
                &[SecretKey::parse(SECRET).unwrap()],
                "evt_1",
                NOW / 1000,
                &req.body
            )
        );
        let m = &p.metrics[0];
        assert_eq!(
            (
                m.outcome,
                m.status,
                m.attempt,
                m.endpoint_host.as_str(),
                m.latency_ms
            ),
            (
                MetricOutcome::Delivered,
                Some(204),
                1,
                "hooks.example.com",
                3
            )
        );
        assert_eq!(m.signer, "builtin:standard-webhooks");
    }

    #[tokio::test]
    async fn an_endpoint_id_goes_to_the_url_the_table_holds_at_each_attempt() {
        use crate::endpoints::{Endpoint, EndpointTable};
        let d = Scripted::new(vec![status(503, &[]), status(204, &[])]);
        let a = crate::testing::TestApp::new("memory://billing", d.clone())
            .registered(vec![
                Endpoint::new("E", "https://old.example.com/in", true, None, &[]).unwrap(),
            ])
            .app();
        let env = String::from_utf8(
            envelope::Envelope {
                endpoint: envelope::Destination::Endpoint("E".into()),
                ..envelope::Envelope::new_json(
                    "evt_1",
                    "billing",
                    "invoice.paid",
                    "",
                    NOW - 120_000,
                    &serde_json::json!({"amount": 42}),
                )
            }
            .encode(),
        )
        .unwrap();
        let p = run(&a, &received(&env, 1, &[])).await;
        assert_eq!(p.action, Action::RetryByVisibility { secs: 5 });
        // The subscriber moved: the same message's next attempt goes to the new URL.
        a.registered.replace(EndpointTable::new([Endpoint::new(
            "E",
            "https://new.example.com/in",
            true,
            None,
            &[],
        )
        .unwrap()]));
        let p = run(&a, &received(&env, 2, &[])).await;
        assert_eq!(
            p.action,
            Action::Delete {
                why: DeleteReason::Delivered
            }
        );
        let urls: Vec<String> = d
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.url.clone())
            .collect();
        assert_eq!(
            urls,
            ["https://old.example.com/in", "https://new.example.com/in"]
        );
        assert_eq!(p.metrics[0].endpoint_host, "new.example.com");
        assert_eq!(p.metrics[0].endpoint_id.as_deref(), Some("E"));
    }

    #[tokio::test]
    async fn failures_retry_by_visibility_then_by_resend_then_dead_letter() {
        // Attempt 2 (second receive), 503: 15 s by visibility.
        let a = app(Scripted::new(vec![status(503, &[])]));
        let p = run(&a, &received(&body("billing"), 2, &[])).await;
        assert_eq!(p.action, Action::RetryByVisibility { secs: 15 });
        assert_eq!(p.metrics[0].outcome, MetricOutcome::Retry);
        assert_eq!(p.metrics[0].retry_in_secs, Some(15));
        // 429 with Retry-After 3600: re-send with delay 900 and not-before in an hour.
        let a = app(Scripted::new(vec![status(429, &[("retry-after", "3600")])]));
        let p = run(&a, &received(&body("billing"), 1, &[(ATTR_ATTEMPTS, "6")])).await;
        assert_eq!(
            p.action,
            Action::Resend {
                delay_secs: 900,
                attributes: resend_attributes(7, NOW - 60_000, NOW + 3_600_000),
                hop: false
            }
        );
        // 410: dead-lettered with the reason attributes.
        let a = app(Scripted::new(vec![status(410, &[])]));
        let p = run(&a, &received(&body("billing"), 1, &[])).await;
        let Action::DeadLetter { reason, attributes } = &p.action else {
            panic!("{:?}", p.action)
        };
        assert!(reason.contains("410"));
        assert_eq!(attributes["squall-last-status"], "410");
        assert_eq!(attributes["squall-event-id"], "evt_1");
        assert_eq!(attributes["squall-attempts"], "1");
        assert_eq!(attributes["squall-source-queue"], "memory://billing");
        assert_eq!(p.metrics[0].outcome, MetricOutcome::DeadLetter);
        // Timeout at the last allowed attempt: dead-lettered naming max_attempts.
        let mut a = app(Scripted::new(vec![Outcome::Transport {
            kind: TransportErrorKind::Timeout,
            message: "after 15000 ms".into(),
        }]));
        a.limits.max_attempts = 3;
        let p = run(&a, &received(&body("billing"), 1, &[(ATTR_ATTEMPTS, "2")])).await;
        let Action::DeadLetter { reason, attributes } = &p.action else {
            panic!("{:?}", p.action)
        };
        assert!(reason.contains("max_attempts"), "{reason}");
        assert_eq!(attributes["squall-last-error"], "timeout: after 15000 ms");
        assert_eq!(p.metrics[0].error_kind.as_deref(), Some("timeout"));
    }

    #[tokio::test]
    async fn a_saturated_endpoint_defers_the_message_without_an_attempt() {
        let d = Scripted::new(vec![status(200, &[])]);
        let mut a = app(d.clone());
        let limiter = Arc::new(EndpointLimiter::new(1, Duration::from_millis(50)));
        a.endpoints = Some(limiter.clone());
        // Another delivery holds the endpoint's only slot for longer than the wait.
        let held = limiter.acquire("hooks.example.com").await.unwrap();
        let msg = received(
            &body("billing"),
            2,
            &[(ATTR_ATTEMPTS, "3"), (ATTR_FIRST_ATTEMPT_MS, "11")],
        );
        let p = run(&a, &msg).await;
        match &p.action {
            Action::Resend {
                delay_secs,
                attributes,
                hop: true,
            } => {
                assert!(DEFER_DELAY_SECS.contains(delay_secs), "{delay_secs}");
                // Attempt 5 (3 made before, receive count 2) was not made: the copy is attempt 5.
                assert_eq!(*attributes, resend_attributes(4, 11, 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(p.metrics.is_empty(), "no attempt, no record");
        assert!(
            d.seen.lock().unwrap().is_empty(),
            "the endpoint was not contacted"
        );

        // With the slot free, the same message is delivered (and the slot is given back).
        drop(held);
        let p = run(&a, &msg).await;
        assert_eq!(
            p.action,
            Action::Delete {
                why: DeleteReason::Delivered
            }
        );
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(d.seen.lock().unwrap().len(), 1);
        assert!(limiter.acquire("hooks.example.com").await.is_some());
    }

    #[tokio::test]
    async fn early_copy_hops_without_contacting_the_endpoint() {
        let d = Scripted::new(vec![]);
        let a = app(d.clone());
        let nb = (NOW + 2_000_000).to_string();
        let p = run(
            &a,
            &received(
                &body("billing"),
                1,
                &[
                    (ATTR_ATTEMPTS, "7"),
                    (ATTR_FIRST_ATTEMPT_MS, "11"),
                    (ATTR_NOT_BEFORE_MS, &nb),
                ],
            ),
        )
        .await;
        assert_eq!(
            p.action,
            Action::Resend {
                delay_secs: 900,
                attributes: resend_attributes(7, 11, NOW + 2_000_000),
                hop: true
            }
        );
        assert!(p.metrics.is_empty());
        assert!(d.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn malformed_envelopes_and_foreign_apps_are_dead_lettered_naming_the_field() {
        let a = app(Scripted::new(vec![]));
        for (body, needle) in [
            ("not json".to_string(), "malformed envelope"),
            (body("billing").replace("\"type\"", "\"tipe\""), "type"),
            (body("shipping"), "does not match"),
        ] {
            let p = run(&a, &received(&body, 1, &[])).await;
            let Action::DeadLetter { reason, attributes } = &p.action else {
                panic!("{:?}", p.action)
            };
            assert!(reason.contains(needle), "{reason}");
            assert!(attributes[ATTR_LAST_ERROR].starts_with("envelope: "));
            assert_eq!(attributes[ATTR_APP_ID], "billing");
            // The id is named whenever the envelope decoded (the foreign-app case).
            assert_eq!(
                attributes.get(ATTR_EVENT_ID).map(String::as_str),
                (needle == "does not match").then_some("evt_1"),
                "{reason}"
            );
            assert!(p.metrics.is_empty());
        }
    }

    #[tokio::test]
    async fn plugin_trap_retries_or_dead_letters_per_config() {
        let mut a = app(Scripted::new(vec![]));
        a.transform = Arc::new(Failing);
        let p = run(&a, &received(&body("billing"), 1, &[])).await;
        assert_eq!(p.action, Action::RetryByVisibility { secs: 5 });
        assert_eq!(p.metrics[0].outcome, MetricOutcome::PluginError);
        assert_eq!(p.metrics[0].error_kind.as_deref(), Some("plugin-trap"));
        assert_eq!(p.metrics[0].retry_in_secs, Some(5));
        a.on_plugin_error = PluginErrorPolicy::DeadLetter;
        let p = run(&a, &received(&body("billing"), 1, &[])).await;
        let Action::DeadLetter { attributes, .. } = &p.action else {
            panic!("{:?}", p.action)
        };
        assert!(attributes[ATTR_LAST_ERROR].contains("trapped"));
        assert_eq!(p.metrics[0].retry_in_secs, None);
    }

    #[tokio::test]
    async fn skip_and_missing_secret() {
        let mut a = app(Scripted::new(vec![]));
        a.transform = Arc::new(Skipper);
        let p = run(&a, &received(&body("billing"), 1, &[])).await;
        assert_eq!(
            p.action,
            Action::Delete {
                why: DeleteReason::Skipped("ping events are not delivered".into())
            }
        );
        assert_eq!(p.metrics[0].outcome, MetricOutcome::Skipped);
        // A signing key the app does not have: a host error -> retry per policy.
        let mut a = app(Scripted::new(vec![]));
        a.signing_key = "rotated".into();
        let p = run(&a, &received(&body("billing"), 1, &[])).await;
        assert_eq!(p.action, Action::RetryByVisibility { secs: 5 });
        assert_eq!(p.metrics[0].error_kind.as_deref(), Some("host-error"));
    }
}
