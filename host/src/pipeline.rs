//! One message in, one [`Action`] plus metric records out.
//!
//! `process` runs decode -> transform -> sign -> deliver -> retry decision for one received
//! message of one application and returns what to do with it; it never touches a queue (the
//! runner and the Lambda handler act, see `runner::Actor`). The deciding parts (attempt
//! bookkeeping from attributes, the not-before hop, the hybrid visibility/re-send switch, the
//! plugin-error policy, the DLQ attributes) are plain functions over values in
//! `squall_core::pipeline`, re-exported here. See ARCHITECTURE.md "Retry mechanism" and "Where a
//! message ends".

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::envelope;
use crate::hooks::{
    AttemptContext, HookError, Outcome, Request, RetryDecision, RetryPolicy, Signer, Transform,
    TransformResult,
};
use crate::metrics::{MetricOutcome, MetricRecord};
use crate::queue::Received;
use crate::retry::{self, Backoff, RetryLimits};

pub use squall_core::pipeline::*;

/// What the pipeline needs from the HTTP layer: send one request, classify the result.
pub trait Deliver: Send + Sync {
    /// Send `request`; never fails (a failure is an `Outcome::Transport`).
    fn deliver<'a>(
        &'a self,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;
}

/// Result of one HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Status and headers, or the transport error.
    pub outcome: Outcome,
    /// Time from sending to the end of the (capped) response.
    pub latency: Duration,
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
        match tokio::time::timeout(self.wait, sem.acquire_owned()).await {
            Ok(slot) => Some(slot.expect("never closed")),
            Err(_) => None,
        }
    }
}

/// Shared fields of the metric records of one attempt.
struct AttemptRecord<'a> {
    app: &'a App,
    event_id: &'a str,
    event_type: &'a str,
    host: String,
    attempt: u32,
    started_at_ms: u64,
}

impl AttemptRecord<'_> {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        status: Option<u16>,
        error_kind: Option<String>,
        latency: Duration,
        outcome: MetricOutcome,
        retry_in_secs: Option<u32>,
        finished_at_ms: u64,
    ) -> MetricRecord {
        MetricRecord {
            v: 1,
            event_id: self.event_id.to_string(),
            app_id: self.app.id.clone(),
            event_type: self.event_type.to_string(),
            endpoint_host: self.host.clone(),
            attempt: self.attempt,
            status,
            error_kind,
            latency_ms: latency.as_millis().min(u64::MAX as u128) as u64,
            outcome,
            retry_in_secs,
            transform: self.app.transform.identity().to_string(),
            signer: self.app.signer.identity().to_string(),
            retry_policy: self.app.retry_policy.identity().to_string(),
            started_at_ms: self.started_at_ms,
            finished_at_ms,
        }
    }
}

/// Process one received message of `app`. Never panics on any input, never does queue I/O.
pub async fn process(
    app: &App,
    msg: &Received,
    clock: &dyn Clock,
    opts: ProcessOptions,
) -> Processed {
    let started_at_ms = clock.now_ms();
    let malformed = |reason: String, last: String, attempts: u32, first: u64, id: Option<&str>| {
        let attributes = dead_letter_attributes(&DeadLetterFacts {
            app_id: &app.id,
            event_id: id,
            reason: &reason,
            last: LastFailure::Error(last),
            attempts,
            first_attempt_ms: first,
            source_queue: &app.queue_url,
            now_ms: started_at_ms,
        });
        tracing::warn!(app_id = %app.id, message_id = %msg.message_id, %reason, "dead-lettering a malformed message");
        Processed {
            action: Action::DeadLetter { reason, attributes },
            metrics: Vec::new(),
        }
    };

    let state = match attempt_state(msg) {
        Ok(s) => s,
        Err(e) => {
            return malformed(
                format!("malformed message: {e}"),
                "attribute".into(),
                0,
                msg.sent_timestamp_ms,
                None,
            );
        }
    };
    if let Some(delay_secs) = hop_delay(state.not_before_ms, started_at_ms) {
        return hop(&state, delay_secs);
    }

    let env = match envelope::decode(msg.body.as_bytes(), &app.envelope_limits) {
        Ok(env) => env,
        Err(e) => {
            return malformed(
                format!("malformed envelope: {e}"),
                format!("envelope: {}", e.kind()),
                state.attempt.saturating_sub(1),
                state.first_attempt_ms,
                None,
            );
        }
    };
    if env.app_id != app.id {
        return malformed(
            format!(
                "malformed envelope: app_id {:?} does not match the queue's application {:?}",
                env.app_id, app.id
            ),
            "envelope: app-id-mismatch".into(),
            state.attempt.saturating_sub(1),
            state.first_attempt_ms,
            // The envelope decoded, so its id is known: name it, as for any other dead letter.
            Some(&env.id),
        );
    }
    let key_name = env
        .signing_key
        .clone()
        .unwrap_or_else(|| app.signing_key.clone());
    let event = env.into_event(state.attempt, state.first_attempt_ms);
    let mut rec = AttemptRecord {
        app,
        event_id: &event.id,
        event_type: &event.event_type,
        host: url_host(&event.endpoint_url),
        attempt: state.attempt,
        started_at_ms,
    };
    let ctx = AttemptContext::for_event(&event, started_at_ms);

    // After a decision (policy or plugin-error), turn it into an action + record.
    let conclude = |decision: RetryDecision,
                    last: LastFailure,
                    status: Option<u16>,
                    error_kind: Option<String>,
                    latency: Duration,
                    plugin_failed: bool,
                    rec: &AttemptRecord<'_>| {
        let now = clock.now_ms();
        let (action, outcome, retry_in) = match decision {
            RetryDecision::RetryAfterSeconds(secs) => (
                schedule_retry(
                    secs,
                    &state,
                    msg.receive_count,
                    now,
                    app.visibility_backoff_max_secs,
                    opts,
                ),
                MetricOutcome::Retry,
                Some(secs),
            ),
            RetryDecision::DeadLetter(reason) => {
                let attributes = dead_letter_attributes(&DeadLetterFacts {
                    app_id: &app.id,
                    event_id: Some(rec.event_id),
                    reason: &reason,
                    last,
                    attempts: state.attempt,
                    first_attempt_ms: state.first_attempt_ms,
                    source_queue: &app.queue_url,
                    now_ms: now,
                });
                (
                    Action::DeadLetter { reason, attributes },
                    MetricOutcome::DeadLetter,
                    None,
                )
            }
            RetryDecision::Discard(reason) => (
                Action::Delete {
                    why: DeleteReason::Discarded(reason),
                },
                MetricOutcome::Discarded,
                None,
            ),
        };
        let outcome = if plugin_failed {
            MetricOutcome::PluginError
        } else {
            outcome
        };
        Processed {
            action,
            metrics: vec![rec.record(status, error_kind, latency, outcome, retry_in, now)],
        }
    };
    let on_hook_error = |err: HookError,
                         status: Option<u16>,
                         latency: Duration,
                         rec: &AttemptRecord<'_>| {
        tracing::warn!(app_id = %app.id, event_id = %rec.event_id, attempt = state.attempt, error = %err, "hook failed");
        let decision = plugin_error_decision(
            app.on_plugin_error,
            &err,
            &app.backoff,
            &ctx,
            &app.limits,
            fastrand::f64(),
        );
        let last = match status {
            Some(s) => LastFailure::Status(s),
            None => LastFailure::Error(err.to_string()),
        };
        conclude(
            decision,
            last,
            status,
            Some(err.kind().to_string()),
            latency,
            true,
            rec,
        )
    };

    let mut request = match app.transform.transform(&event) {
        Ok(TransformResult::Send(r)) => r,
        Ok(TransformResult::Skip(reason)) => {
            let now = clock.now_ms();
            return Processed {
                metrics: vec![rec.record(
                    None,
                    None,
                    Duration::ZERO,
                    MetricOutcome::Skipped,
                    None,
                    now,
                )],
                action: Action::Delete {
                    why: DeleteReason::Skipped(reason),
                },
            };
        }
        Err(e) => return on_hook_error(e, None, Duration::ZERO, &rec),
    };
    if request.url != event.endpoint_url {
        rec.host = url_host(&request.url);
    }
    let timestamp = clock.now_ms() / 1000;
    match app.signer.sign(&ctx, &request, &key_name, timestamp) {
        Ok(headers) => set_headers(&mut request, headers),
        Err(e) => return on_hook_error(e, None, Duration::ZERO, &rec),
    }

    // Held until the response is read; released before the retry decision.
    let endpoint_slot = match &app.endpoints {
        None => None,
        Some(limiter) => match limiter.acquire(&rec.host).await {
            Some(slot) => Some(slot),
            None => {
                let delay_secs = fastrand::u32(DEFER_DELAY_SECS);
                tracing::info!(app_id = %app.id, event_id = %rec.event_id, endpoint_host = %rec.host, attempt = state.attempt, delay_secs, "endpoint saturated: deferred, no attempt made");
                return hop(&state, delay_secs);
            }
        },
    };
    let delivery = app.deliver.deliver(&request).await;
    drop(endpoint_slot);
    drop(request);
    let status = match &delivery.outcome {
        Outcome::Response { status, .. } => Some(*status),
        Outcome::Transport { .. } => None,
    };
    let error_kind = match &delivery.outcome {
        Outcome::Transport { kind, .. } => Some(kind.as_str().to_string()),
        Outcome::Response { .. } => None,
    };
    if delivery.outcome.is_success() {
        let now = clock.now_ms();
        return Processed {
            action: Action::Delete {
                why: DeleteReason::Delivered,
            },
            metrics: vec![rec.record(
                status,
                None,
                delivery.latency,
                MetricOutcome::Delivered,
                None,
                now,
            )],
        };
    }
    let ctx_after = AttemptContext {
        now_ms: clock.now_ms(),
        ..ctx.clone()
    };
    match app.retry_policy.decide(&ctx_after, &delivery.outcome) {
        Ok(decision) => {
            let decision =
                retry::enforce_limits(decision, &ctx_after, &delivery.outcome, &app.limits);
            conclude(
                decision,
                LastFailure::from_outcome(&delivery.outcome),
                status,
                error_kind,
                delivery.latency,
                false,
                &rec,
            )
        }
        Err(e) => on_hook_error(e, status, delivery.latency, &rec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{Headers, PassThrough, TransportErrorKind};
    use crate::queue::Attributes;
    use crate::retry::BackoffPolicy;
    use crate::secrets::{SecretKey, Secrets};
    use crate::signing::{StandardWebhooksSigner, standard_webhooks_signature};
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
        }
    }

    // ---- pure decisions ----

    #[test]
    fn attempt_number_is_attribute_plus_receive_count() {
        let s = attempt_state(&received("", 1, &[])).unwrap();
        assert_eq!(
            s,
            AttemptState {
                prior_attempts: 0,
                attempt: 1,
                first_attempt_ms: NOW - 60_000,
                not_before_ms: None
            }
        );
        let s = attempt_state(&received(
            "",
            3,
            &[
                (ATTR_ATTEMPTS, "6"),
                (ATTR_FIRST_ATTEMPT_MS, "42"),
                (ATTR_NOT_BEFORE_MS, "99"),
            ],
        ))
        .unwrap();
        assert_eq!(
            (s.attempt, s.first_attempt_ms, s.not_before_ms),
            (9, 42, Some(99))
        );
        let err = attempt_state(&received("", 1, &[(ATTR_ATTEMPTS, "x7")])).unwrap_err();
        assert!(err.to_string().contains("squall-attempts") && err.to_string().contains("x7"));
    }

    #[test]
    fn hop_only_when_not_before_is_more_than_a_second_away() {
        assert_eq!(hop_delay(None, NOW), None);
        assert_eq!(hop_delay(Some(NOW - 5), NOW), None);
        assert_eq!(hop_delay(Some(NOW + 1_000), NOW), None);
        assert_eq!(hop_delay(Some(NOW + 2_500), NOW), Some(3));
        assert_eq!(hop_delay(Some(NOW + 7_200_000), NOW), Some(900));
    }

    #[test]
    fn hybrid_switches_on_wait_receive_count_and_over_limit() {
        let st = AttemptState {
            prior_attempts: 2,
            attempt: 4,
            first_attempt_ms: 7,
            not_before_ms: None,
        };
        let normal = ProcessOptions::default();
        assert_eq!(
            schedule_retry(900, &st, 2, NOW, 900, normal),
            Action::RetryByVisibility { secs: 900 }
        );
        let long = schedule_retry(3_600, &st, 2, NOW, 900, normal);
        assert_eq!(
            long,
            Action::Resend {
                delay_secs: 900,
                attributes: resend_attributes(4, 7, NOW + 3_600_000),
                hop: false
            }
        );
        assert_eq!(
            long_attrs(&long),
            vec![
                ("squall-attempts", "4".to_string()),
                ("squall-first-attempt-ms", "7".to_string()),
                ("squall-not-before-ms", (NOW + 3_600_000).to_string())
            ]
        );
        // 5th receive of the same SQS message: re-send even for a short wait.
        assert!(matches!(
            schedule_retry(5, &st, 5, NOW, 900, normal),
            Action::Resend { delay_secs: 5, .. }
        ));
        // OverLimit mode: re-send always.
        assert!(matches!(
            schedule_retry(5, &st, 1, NOW, 900, ProcessOptions { force_resend: true }),
            Action::Resend { delay_secs: 5, .. }
        ));
        // A smaller configured switch point.
        assert!(matches!(
            schedule_retry(61, &st, 1, NOW, 60, normal),
            Action::Resend { delay_secs: 61, .. }
        ));
    }

    fn long_attrs(a: &Action) -> Vec<(&str, String)> {
        match a {
            Action::Resend { attributes, .. } => attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn plugin_errors_follow_the_policy_and_the_limits() {
        let err = HookError::Trap {
            plugin: "plugins/dist/x.wasm".into(),
            detail: "unreachable".into(),
        };
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let ctx = |attempt| AttemptContext {
            event_id: "e".into(),
            app_id: "a".into(),
            event_type: "t".into(),
            attempt,
            first_attempt_at_ms: NOW,
            now_ms: NOW,
        };
        let limits = RetryLimits {
            max_attempts: 3,
            horizon_secs: 3600,
        };
        assert_eq!(
            plugin_error_decision(PluginErrorPolicy::Retry, &err, &b, &ctx(2), &limits, 0.5),
            RetryDecision::RetryAfterSeconds(15)
        );
        let RetryDecision::DeadLetter(r) =
            plugin_error_decision(PluginErrorPolicy::Retry, &err, &b, &ctx(3), &limits, 0.5)
        else {
            panic!()
        };
        assert!(r.contains("max_attempts") && r.contains("trapped"), "{r}");
        let RetryDecision::DeadLetter(r) = plugin_error_decision(
            PluginErrorPolicy::DeadLetter,
            &err,
            &b,
            &ctx(1),
            &limits,
            0.5,
        ) else {
            panic!()
        };
        assert!(r.contains("x.wasm") && r.contains("dead-letter"), "{r}");
    }

    #[test]
    fn dead_letter_attributes_are_complete_and_clean() {
        let a = dead_letter_attributes(&DeadLetterFacts {
            app_id: "billing",
            event_id: Some("evt_1"),
            reason: "bad\nthing",
            last: LastFailure::Status(410),
            attempts: 3,
            first_attempt_ms: 5,
            source_queue: "q",
            now_ms: 9,
        });
        let want: Attributes = [
            ("squall-app-id", "billing"),
            ("squall-event-id", "evt_1"),
            ("squall-reason", "bad thing"),
            ("squall-last-status", "410"),
            ("squall-attempts", "3"),
            ("squall-first-attempt-ms", "5"),
            ("squall-source-queue", "q"),
            ("squall-dead-lettered-at-ms", "9"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(a, want);
        let long = attribute_text(&"é".repeat(2000));
        assert!(long.len() <= MAX_ATTRIBUTE_TEXT + 3 && long.ends_with("..."));
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

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn app(deliver: Arc<dyn Deliver>) -> App {
        let mut secrets = Secrets::new();
        secrets.insert("default", vec![SecretKey::parse(SECRET).unwrap()]);
        App {
            id: "billing".into(),
            queue_url: "memory://billing".into(),
            transform: Arc::new(PassThrough),
            signer: Arc::new(StandardWebhooksSigner::new(Arc::new(secrets))),
            retry_policy: Arc::new(BackoffPolicy {
                backoff: Backoff {
                    jitter: 0.0,
                    ..Backoff::default()
                },
            }),
            backoff: Backoff {
                jitter: 0.0,
                ..Backoff::default()
            },
            limits: RetryLimits::default(),
            envelope_limits: envelope::Limits::default(),
            signing_key: "default".into(),
            on_plugin_error: PluginErrorPolicy::Retry,
            visibility_backoff_max_secs: 900,
            deliver,
            endpoints: None,
        }
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
