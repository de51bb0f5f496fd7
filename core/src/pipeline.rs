//! The decision for one message, as a state machine over values (quinn-proto style): the engine's
//! driver (`squall::pipeline::process`) calls the hooks, the endpoint limiter, the HTTP client and
//! the clock, and feeds what they returned to an [`Attempt`], which says what comes next:
//!
//! ```text
//! Attempt::start(app, message, options, now, draw) -> Hop | Malformed | Attempt
//!   attempt.transformed(transform's result, now)    -> Next(request) | Done (skip, hook error)
//!   attempt.signed(request, signer's result, now)   -> Next(signed request) | Done (hook error)
//!   attempt.deferred()                              -> Processed (endpoint host saturated)
//!   attempt.delivered(delivery, now)                -> Next(context for the policy) | Done (2xx)
//!   attempt.judged(delivery, context, policy's result, now)
//!                            -> Processed (retry by visibility or re-send, DLQ, discard, hook error)
//! ```
//!
//! Every end is a [`Processed`]: the [`Action`] and the metric records. The machine is made of
//! the plain functions above it: attempt bookkeeping from the message's attributes, the
//! not-before hop, the hybrid visibility/re-send switch, the plugin-error policy, the dead-letter
//! attributes. No clock, no RNG, no I/O: the clock's readings and one uniform random draw per
//! message come in as arguments. See ARCHITECTURE.md "Retry mechanism" and "Where a message ends".

use std::time::Duration;

use crate::endpoints::{self, EndpointTable, Resolved};
use crate::envelope::{self, Destination};
use crate::hooks::{
    AttemptContext, Event, Headers, HookError, Outcome, Request, RetryDecision, TransformResult,
    TransportErrorKind,
};
use crate::message::{Attributes, MAX_DELAY_SECS, Received};
use crate::metrics::{MetricOutcome, MetricRecord};
use crate::retry::{self, Backoff, RetryLimits};

/// Attempts made before this SQS message existed (carried across re-sends).
pub const ATTR_ATTEMPTS: &str = "squall-attempts";
/// Time of the first attempt, Unix ms (carried across re-sends).
pub const ATTR_FIRST_ATTEMPT_MS: &str = "squall-first-attempt-ms";
/// Do not attempt before this time, Unix ms (set on re-sent copies).
pub const ATTR_NOT_BEFORE_MS: &str = "squall-not-before-ms";
/// DLQ: application id.
pub const ATTR_APP_ID: &str = "squall-app-id";
/// DLQ: event id, when known.
pub const ATTR_EVENT_ID: &str = "squall-event-id";
/// DLQ: why it was dead-lettered.
pub const ATTR_REASON: &str = "squall-reason";
/// DLQ: last HTTP status.
pub const ATTR_LAST_STATUS: &str = "squall-last-status";
/// DLQ: last error (transport, plugin or envelope), when no status.
pub const ATTR_LAST_ERROR: &str = "squall-last-error";
/// DLQ: the queue the message came from.
pub const ATTR_SOURCE_QUEUE: &str = "squall-source-queue";
/// DLQ: the endpoint id the envelope named, when it named one.
pub const ATTR_ENDPOINT_ID: &str = "squall-endpoint-id";
/// DLQ: when it was dead-lettered, Unix ms.
pub const ATTR_DEAD_LETTERED_AT_MS: &str = "squall-dead-lettered-at-ms";

/// A copy received less than this before its not-before time is attempted anyway: a hop
/// would cost a send, a delete and at least one more second for nothing.
pub const HOP_TOLERANCE_MS: u64 = 1_000;

/// Every receive of the same SQS message from this count on goes the re-send way, which
/// resets `ApproximateReceiveCount` so the redrive policy only catches crash loops.
pub const RESEND_AT_RECEIVE_COUNT: u32 = 5;

/// Longest text put in one message attribute (SQS allows more; reasons need not).
pub const MAX_ATTRIBUTE_TEXT: usize = 1024;

/// What to do when a plugin (or a built-in hook) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PluginErrorPolicy {
    /// Retry with the application's backoff (the limits still apply).
    #[default]
    Retry,
    /// Dead-letter at once.
    DeadLetter,
}

/// A message deferred because its endpoint host stayed saturated is re-sent with a delay drawn
/// from this range, seconds (random, so that a backlog comes back spread out).
pub const DEFER_DELAY_SECS: std::ops::RangeInclusive<u32> = 10..=30;

/// The deferral delay for a uniform draw in [0, 1): each second of [`DEFER_DELAY_SECS`] equally
/// likely.
pub fn defer_delay_secs(unit_random: f64) -> u32 {
    let (lo, hi) = (*DEFER_DELAY_SECS.start(), *DEFER_DELAY_SECS.end());
    let span = hi - lo + 1;
    let step = (unit_random.clamp(0.0, 1.0) * span as f64) as u32;
    lo + step.min(span - 1)
}

/// Why a message is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteReason {
    /// 2xx.
    Delivered,
    /// The transform skipped it.
    Skipped(String),
    /// The retry policy discarded it.
    Discarded(String),
}

/// What to do with a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete it.
    Delete {
        /// Why.
        why: DeleteReason,
    },
    /// Leave it in flight and make it visible again after `secs`.
    RetryByVisibility {
        /// Wait, seconds (<= `visibility_backoff_max_secs`).
        secs: u32,
    },
    /// Send a copy with this delay and these attributes to the same queue, then delete it.
    Resend {
        /// DelaySeconds of the copy (<= 900).
        delay_secs: u32,
        /// Attributes of the copy.
        attributes: Attributes,
        /// True for a hop (not-before not reached, or the endpoint host saturated; no attempt
        /// made).
        hop: bool,
    },
    /// Send the original body to the dead-letter queue with these attributes, then delete it.
    DeadLetter {
        /// Why (also in `attributes`).
        reason: String,
        /// DLQ message attributes.
        attributes: Attributes,
    },
}

/// Result of processing one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// What to do with the message.
    pub action: Action,
    /// Records for the metrics queue (one per attempt; none for a hop or a malformed message).
    pub metrics: Vec<MetricRecord>,
}

/// Per-call switches set by the runner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Send every retry by re-send (set while the queue reports OverLimit).
    pub force_resend: bool,
}

/// Attempt bookkeeping read from a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptState {
    /// Attempts made before this SQS message existed (`squall-attempts`, 0 if absent).
    pub prior_attempts: u32,
    /// This attempt's number: prior attempts + ApproximateReceiveCount.
    pub attempt: u32,
    /// First attempt time: `squall-first-attempt-ms`, else the message's SentTimestamp.
    pub first_attempt_ms: u64,
    /// `squall-not-before-ms`, if set.
    pub not_before_ms: Option<u64>,
}

/// A `squall-*` attribute that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message attribute {name} is not an unsigned integer: {value:?}")]
pub struct AttributeError {
    /// Attribute name.
    pub name: &'static str,
    /// Its value (ours to write; never secret).
    pub value: String,
}

fn num_attr(attrs: &Attributes, name: &'static str) -> Result<Option<u64>, AttributeError> {
    match attrs.get(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| AttributeError {
                name,
                value: truncate(v, 64),
            }),
    }
}

/// Read the attempt bookkeeping of a message (see ARCHITECTURE.md "Attempt number").
pub fn attempt_state(msg: &Received) -> Result<AttemptState, AttributeError> {
    let prior = num_attr(&msg.attributes, ATTR_ATTEMPTS)?.unwrap_or(0);
    let prior = prior.min(u32::MAX as u64) as u32;
    Ok(AttemptState {
        prior_attempts: prior,
        attempt: prior.saturating_add(msg.receive_count.max(1)),
        first_attempt_ms: num_attr(&msg.attributes, ATTR_FIRST_ATTEMPT_MS)?
            .unwrap_or(msg.sent_timestamp_ms),
        not_before_ms: num_attr(&msg.attributes, ATTR_NOT_BEFORE_MS)?,
    })
}

/// If a copy arrived before its not-before time (beyond the tolerance), the delay of the next
/// hop: the remaining wait rounded up, at most 900 s.
pub fn hop_delay(not_before_ms: Option<u64>, now_ms: u64) -> Option<u32> {
    let nb = not_before_ms?;
    if nb <= now_ms.saturating_add(HOP_TOLERANCE_MS) {
        return None;
    }
    let secs = (nb - now_ms).div_ceil(1000);
    Some(secs.min(MAX_DELAY_SECS as u64) as u32)
}

/// Attributes of a re-sent copy.
pub fn resend_attributes(
    attempts_made: u32,
    first_attempt_ms: u64,
    not_before_ms: u64,
) -> Attributes {
    Attributes::from([
        (ATTR_ATTEMPTS.to_string(), attempts_made.to_string()),
        (
            ATTR_FIRST_ATTEMPT_MS.to_string(),
            first_attempt_ms.to_string(),
        ),
        (ATTR_NOT_BEFORE_MS.to_string(), not_before_ms.to_string()),
    ])
}

/// The hybrid: how to wait `wait_secs` after attempt `state.attempt` of a message received
/// `receive_count` times.
pub fn schedule_retry(
    wait_secs: u32,
    state: &AttemptState,
    receive_count: u32,
    now_ms: u64,
    visibility_backoff_max_secs: u32,
    opts: ProcessOptions,
) -> Action {
    let by_visibility = wait_secs <= visibility_backoff_max_secs.min(MAX_DELAY_SECS)
        && receive_count < RESEND_AT_RECEIVE_COUNT
        && !opts.force_resend;
    if by_visibility {
        return Action::RetryByVisibility { secs: wait_secs };
    }
    Action::Resend {
        delay_secs: wait_secs.min(MAX_DELAY_SECS),
        attributes: resend_attributes(
            state.attempt,
            state.first_attempt_ms,
            now_ms.saturating_add(wait_secs as u64 * 1000),
        ),
        hop: false,
    }
}

/// The decision after a hook failed: retry with the app's backoff (limits applied) or
/// dead-letter, per `on_plugin_error`. `unit_random` drives the backoff's jitter.
pub fn plugin_error_decision(
    policy: PluginErrorPolicy,
    err: &HookError,
    backoff: &Backoff,
    ctx: &AttemptContext,
    limits: &RetryLimits,
    unit_random: f64,
) -> RetryDecision {
    let as_outcome = Outcome::Transport {
        kind: TransportErrorKind::Other,
        message: err.to_string(),
    };
    match policy {
        PluginErrorPolicy::DeadLetter => {
            RetryDecision::DeadLetter(format!("{} (on_plugin_error = \"dead-letter\")", err))
        }
        PluginErrorPolicy::Retry => {
            // The backoff's schedule, ignoring the outcome-specific rules (4xx, Retry-After).
            let base = backoff.base_delay_secs(ctx.attempt);
            let spread = backoff.jitter.clamp(0.0, 1.0) * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
            let secs = (base * (1.0 + spread)).round().clamp(1.0, u32::MAX as f64) as u32;
            retry::enforce_limits(
                RetryDecision::RetryAfterSeconds(secs),
                ctx,
                &as_outcome,
                limits,
            )
        }
    }
}

/// Cap a text for an attribute and remove control characters SQS refuses.
pub fn attribute_text(s: &str) -> String {
    truncate(s, MAX_ATTRIBUTE_TEXT)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// What failed last, for the DLQ attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastFailure {
    /// An HTTP status.
    Status(u16),
    /// Anything else: transport, hook or envelope error text.
    Error(String),
}

impl LastFailure {
    /// The last failure an HTTP outcome stands for.
    pub fn from_outcome(o: &Outcome) -> LastFailure {
        match o {
            Outcome::Response { status, .. } => LastFailure::Status(*status),
            Outcome::Transport { .. } => LastFailure::Error(o.describe()),
        }
    }
}

/// Facts for a DLQ message's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFacts<'a> {
    /// Application id.
    pub app_id: &'a str,
    /// Event id, when the envelope decoded.
    pub event_id: Option<&'a str>,
    /// The endpoint id the envelope named, if it named one.
    pub endpoint_id: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// Last status or error.
    pub last: LastFailure,
    /// Attempts made.
    pub attempts: u32,
    /// First attempt time.
    pub first_attempt_ms: u64,
    /// Source queue.
    pub source_queue: &'a str,
    /// Now.
    pub now_ms: u64,
}

/// The DLQ message attributes (ARCHITECTURE.md "DLQ message").
pub fn dead_letter_attributes(f: &DeadLetterFacts<'_>) -> Attributes {
    let mut a = Attributes::new();
    a.insert(ATTR_APP_ID.into(), attribute_text(f.app_id));
    if let Some(id) = f.event_id {
        a.insert(ATTR_EVENT_ID.into(), attribute_text(id));
    }
    if let Some(id) = f.endpoint_id {
        a.insert(ATTR_ENDPOINT_ID.into(), attribute_text(id));
    }
    a.insert(ATTR_REASON.into(), attribute_text(f.reason));
    match &f.last {
        LastFailure::Status(s) => a.insert(ATTR_LAST_STATUS.into(), s.to_string()),
        LastFailure::Error(e) => a.insert(ATTR_LAST_ERROR.into(), attribute_text(e)),
    };
    a.insert(ATTR_ATTEMPTS.into(), f.attempts.to_string());
    a.insert(ATTR_FIRST_ATTEMPT_MS.into(), f.first_attempt_ms.to_string());
    a.insert(ATTR_SOURCE_QUEUE.into(), attribute_text(f.source_queue));
    a.insert(ATTR_DEAD_LETTERED_AT_MS.into(), f.now_ms.to_string());
    a
}

/// Host of a URL, for metrics and per-endpoint limits ("" if it has none).
pub fn url_host(url: &str) -> String {
    envelope::parse_url(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

/// Replace headers of the same names (case-insensitive) and append the new ones.
pub fn set_headers(request: &mut Request, headers: Vec<(String, String)>) {
    request
        .headers
        .retain(|(n, _)| !headers.iter().any(|(m, _)| m.eq_ignore_ascii_case(n)));
    request.headers.extend(headers);
}

/// A hop: the message comes back as a copy after `delay_secs` with the same attempt number, its
/// first-attempt and not-before times; no attempt is made now and no record written.
pub fn hop(state: &AttemptState, delay_secs: u32) -> Processed {
    Processed {
        action: Action::Resend {
            delay_secs,
            attributes: resend_attributes(
                state.attempt.saturating_sub(1),
                state.first_attempt_ms,
                state.not_before_ms.unwrap_or(0),
            ),
            hop: true,
        },
        metrics: Vec::new(),
    }
}

// ---- the decision for one message, step by step ----

/// What the decision needs to know about an application: the engine's `App` without its hooks
/// and clients. Borrowed, so the driver builds one per message for free.
#[derive(Debug, Clone, Copy)]
pub struct AppSettings<'a> {
    /// Application id (`[apps.ID]`); envelopes for another id are dead-lettered.
    pub id: &'a str,
    /// The application's queue (for `squall-source-queue`).
    pub queue_url: &'a str,
    /// Envelope decoding limits.
    pub envelope_limits: &'a envelope::Limits,
    /// Signing key name when the envelope names none.
    pub signing_key: &'a str,
    /// The application's backoff, used when a hook fails and the policy is to retry.
    pub backoff: &'a Backoff,
    /// Max attempts and horizon, enforced on every policy.
    pub limits: RetryLimits,
    /// What a hook failure leads to.
    pub on_plugin_error: PluginErrorPolicy,
    /// Backoffs up to this are done by visibility; longer ones by re-send (<= 900).
    pub visibility_backoff_max_secs: u32,
    /// The hooks' identities, for the metric records.
    pub identities: HookIdentities<'a>,
    /// The application's registered endpoints as last read (an envelope's `endpoint_id` is
    /// resolved here at every attempt).
    pub endpoints: &'a EndpointTable,
    /// When the table was read from a registry that can change under it (`None`: it is the
    /// configuration file's, authoritative).
    pub endpoints_read: Option<EndpointsRead>,
}

/// When an application's endpoint table was last read from the registry, and how soon a
/// fresher read is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointsRead {
    /// The read, Unix ms.
    pub read_at_ms: u64,
    /// A message whose endpoint id is unknown or disabled in a table read before the message
    /// was sent comes back after this many seconds (the registry TTL plus one), when a fresher
    /// read decides.
    pub recheck_secs: u32,
}

/// Which transform, signer and retry policy serve an application (`builtin:NAME` or a plugin's
/// file name and digest prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookIdentities<'a> {
    /// The transform's identity.
    pub transform: &'a str,
    /// The signer's identity.
    pub signer: &'a str,
    /// The retry policy's identity.
    pub retry_policy: &'a str,
}

/// Result of one HTTP attempt, as the driver's HTTP side reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Status and headers, or the transport error.
    pub outcome: Outcome,
    /// Time from sending to the end of the (capped) response.
    pub latency: Duration,
}

/// The outcome of one step of an [`Attempt`]: go on with `T`, or stop with the final result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// Carry on: what the next step needs.
    Next(T),
    /// The message's fate is decided.
    Done(Processed),
}

/// The first step, before any hook runs.
#[derive(Debug)]
pub enum Start<'a> {
    /// Attempt delivery: run the transform on [`Attempt::event`].
    Attempt(Box<Attempt<'a>>),
    /// A copy arrived before its not-before time: re-send it (no attempt, no record).
    Hop(Processed),
    /// Its attributes or envelope are malformed, or it belongs to another application:
    /// dead-letter it (no attempt, no record).
    Malformed(Processed),
}

/// One attempt at delivering one message, between the driver's calls. Each method takes what
/// the driver just obtained (a hook's result, the HTTP outcome, a clock reading) and says what
/// comes next.
#[derive(Debug)]
pub struct Attempt<'a> {
    app: &'a AppSettings<'a>,
    opts: ProcessOptions,
    receive_count: u32,
    state: AttemptState,
    event: Event,
    key_name: String,
    /// The envelope's `traceparent`.
    traceparent: Option<String>,
    /// The context hooks see, read at the start (the plugin-error policy judges by it too).
    context: AttemptContext,
    /// The host the request goes to (the transform may change it).
    endpoint_host: String,
    /// The registered endpoint the envelope named, if it named one.
    endpoint_id: Option<String>,
    started_at_ms: u64,
    /// The draw for the one random choice a message may need: the jitter of a hook failure's
    /// backoff, or the deferral delay (never both).
    unit_random: f64,
}

impl<'a> Attempt<'a> {
    /// Read the message: its attempt bookkeeping, whether it is early (a hop), its envelope.
    /// `now_ms` is the clock at the start; `unit_random` a uniform draw in [0, 1).
    pub fn start(
        app: &'a AppSettings<'a>,
        msg: &Received,
        opts: ProcessOptions,
        now_ms: u64,
        unit_random: f64,
    ) -> Start<'a> {
        let malformed = |reason: String,
                         last: &str,
                         attempts,
                         first_attempt_ms,
                         event_id: Option<&str>,
                         endpoint_id: Option<&str>| {
            let attributes = dead_letter_attributes(&DeadLetterFacts {
                app_id: app.id,
                event_id,
                endpoint_id,
                reason: &reason,
                last: LastFailure::Error(last.to_string()),
                attempts,
                first_attempt_ms,
                source_queue: app.queue_url,
                now_ms,
            });
            Start::Malformed(Processed {
                action: Action::DeadLetter { reason, attributes },
                metrics: Vec::new(),
            })
        };
        let state = match attempt_state(msg) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("malformed message: {e}");
                return malformed(reason, "attribute", 0, msg.sent_timestamp_ms, None, None);
            }
        };
        if let Some(delay_secs) = hop_delay(state.not_before_ms, now_ms) {
            return Start::Hop(hop(&state, delay_secs));
        }
        let attempts_made = state.attempt.saturating_sub(1);
        let env = match envelope::decode(msg.body.as_bytes(), app.envelope_limits) {
            Ok(env) => env,
            Err(e) => {
                let (reason, last) = (format!("malformed envelope: {e}"), e.kind());
                let last = format!("envelope: {last}");
                return malformed(
                    reason,
                    &last,
                    attempts_made,
                    state.first_attempt_ms,
                    None,
                    None,
                );
            }
        };
        if env.app_id != app.id {
            let reason = format!(
                "malformed envelope: app_id {:?} does not match the queue's application {:?}",
                env.app_id, app.id
            );
            let last = "envelope: app-id-mismatch";
            // The envelope decoded, so its id is known: name it, as for any other dead letter.
            let id = Some(env.id.as_str());
            let eid = env.endpoint.endpoint_id();
            return malformed(reason, last, attempts_made, state.first_attempt_ms, id, eid);
        }
        let mut env = env;
        let mut key_name = env.signing_key.clone();
        let mut endpoint_id = None;
        if let Destination::Endpoint(eid) = &env.endpoint {
            let eid = eid.clone();
            let resolved = app.endpoints.resolve(&eid);
            // A table read before this message was sent may predate the endpoint's creation
            // or enabling: such a verdict is checked against a fresher read first (the copy
            // comes back once the cached table has expired), never acted on.
            if !matches!(resolved, Resolved::Endpoint(_))
                && let Some(read) = app.endpoints_read
                && read.read_at_ms < msg.sent_timestamp_ms
            {
                return Start::Hop(hop(&state, read.recheck_secs.clamp(1, MAX_DELAY_SECS)));
            }
            let endpoint = match resolved {
                Resolved::Endpoint(e) => e,
                Resolved::Unknown => {
                    let reason = format!(
                        "malformed envelope: field \"endpoint_id\": application {:?} has no endpoint {eid:?} (never created, or deleted)",
                        app.id
                    );
                    let last = format!("envelope: {}", endpoints::UNKNOWN_REASON);
                    let id = Some(env.id.as_str());
                    let first = state.first_attempt_ms;
                    return malformed(reason, &last, attempts_made, first, id, Some(&eid));
                }
                Resolved::Disabled => {
                    let reason = format!(
                        "{}: endpoint {eid:?} of application {:?} is disabled (redrive once it is enabled again)",
                        endpoints::DISABLED_REASON,
                        app.id
                    );
                    let id = Some(env.id.as_str());
                    let first = state.first_attempt_ms;
                    let last = endpoints::DISABLED_REASON;
                    return malformed(reason, last, attempts_made, first, id, Some(&eid));
                }
            };
            env.endpoint = Destination::Url(endpoint.url.clone());
            env.headers = endpoint.merged_headers(std::mem::take(&mut env.headers));
            if key_name.is_none() {
                key_name = endpoint.signing_key.clone();
            }
            endpoint_id = Some(eid);
        }
        let key_name = key_name.unwrap_or_else(|| app.signing_key.to_string());
        let traceparent = env.traceparent.take();
        let event = env.into_event(state.attempt, state.first_attempt_ms);
        Start::Attempt(Box::new(Attempt {
            app,
            opts,
            receive_count: msg.receive_count,
            state,
            endpoint_host: url_host(&event.endpoint_url),
            endpoint_id,
            context: AttemptContext::for_event(&event, now_ms),
            event,
            key_name,
            traceparent,
            started_at_ms: now_ms,
            unit_random,
        }))
    }

    /// The event to give the transform.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The context to give the signer (read at the start).
    pub fn context(&self) -> &AttemptContext {
        &self.context
    }

    /// The signing key name: the envelope's, else the application's.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The registered endpoint the envelope named, if it named one.
    pub fn endpoint_id(&self) -> Option<&str> {
        self.endpoint_id.as_deref()
    }

    /// The host the request goes to, for the endpoint limiter.
    pub fn endpoint_host(&self) -> &str {
        &self.endpoint_host
    }

    /// This attempt's number.
    pub fn number(&self) -> u32 {
        self.state.attempt
    }

    /// After the transform: the request to sign, or the end (skipped, or the transform failed).
    pub fn transformed(
        &mut self,
        result: Result<TransformResult, HookError>,
        now_ms: u64,
    ) -> Step<Request> {
        match result {
            Ok(TransformResult::Send(mut request)) => {
                if request.url != self.event.endpoint_url {
                    self.endpoint_host = url_host(&request.url);
                }
                // Before the signer, so a signer covering headers signs what is sent.
                request.default_content_type(&self.event.content_type);
                Step::Next(request)
            }
            Ok(TransformResult::Skip(reason)) => Step::Done(Processed {
                action: Action::Delete {
                    why: DeleteReason::Skipped(reason),
                },
                metrics: vec![self.record(
                    None,
                    None,
                    Duration::ZERO,
                    MetricOutcome::Skipped,
                    None,
                    now_ms,
                )],
            }),
            Err(err) => Step::Done(self.hook_failed(err, None, Duration::ZERO, now_ms)),
        }
    }

    /// After the signer: the request with its signature headers, or the end (the signer failed).
    pub fn signed(
        &self,
        mut request: Request,
        result: Result<Headers, HookError>,
        now_ms: u64,
    ) -> Step<Request> {
        match result {
            Ok(headers) => {
                set_headers(&mut request, headers);
                Step::Next(request)
            }
            Err(err) => Step::Done(self.hook_failed(err, None, Duration::ZERO, now_ms)),
        }
    }

    /// The delay of a deferral, drawn from [`DEFER_DELAY_SECS`].
    pub fn defer_delay_secs(&self) -> u32 {
        defer_delay_secs(self.unit_random)
    }

    /// The endpoint host stayed saturated: the message comes back as a copy after
    /// [`Attempt::defer_delay_secs`], this attempt not made (no record).
    pub fn deferred(&self) -> Processed {
        hop(&self.state, self.defer_delay_secs())
    }

    /// The endpoint's health says wait until `until_ms` (an open breaker, a `Retry-After`
    /// pause, its pacing): the message comes back as a copy then, spread over up to 4 s more so
    /// that an endpoint's deferred events do not all return in the same second; this attempt
    /// not made (no record).
    pub fn deferred_until(&self, until_ms: u64, now_ms: u64) -> Processed {
        let spread = (self.unit_random.clamp(0.0, 1.0) * 5.0) as u32;
        let secs = crate::health::defer_secs(until_ms, now_ms).saturating_add(spread.min(4));
        hop(&self.state, secs.min(MAX_DELAY_SECS))
    }

    /// The envelope's W3C `traceparent`, as given (parsed by `crate::trace`).
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The endpoint's origin is disabled (its health: no success for `disable_after`): the
    /// message is dead-lettered with `reason`, last error [`endpoints::DISABLED_REASON`]
    /// (redrivable once the endpoint is enabled), this attempt not made (no record).
    pub fn endpoint_disabled(&self, reason: String, now_ms: u64) -> Processed {
        let attributes = dead_letter_attributes(&DeadLetterFacts {
            app_id: self.app.id,
            event_id: Some(&self.event.id),
            endpoint_id: self.endpoint_id.as_deref(),
            reason: &reason,
            last: LastFailure::Error(endpoints::DISABLED_REASON.to_string()),
            attempts: self.state.prior_attempts,
            first_attempt_ms: self.state.first_attempt_ms,
            source_queue: self.app.queue_url,
            now_ms,
        });
        Processed {
            action: Action::DeadLetter { reason, attributes },
            metrics: Vec::new(),
        }
    }

    /// After the HTTP attempt: a 2xx ends it; anything else goes to the retry policy, with the
    /// context this returns (the clock read now).
    pub fn delivered(&self, delivery: &Delivery, now_ms: u64) -> Step<AttemptContext> {
        if !delivery.outcome.is_success() {
            return Step::Next(AttemptContext {
                now_ms,
                ..self.context.clone()
            });
        }
        Step::Done(Processed {
            action: Action::Delete {
                why: DeleteReason::Delivered,
            },
            metrics: vec![self.record(
                status_of(&delivery.outcome),
                None,
                delivery.latency,
                MetricOutcome::Delivered,
                None,
                now_ms,
            )],
        })
    }

    /// After the retry policy (asked with `context` from [`Attempt::delivered`]): the
    /// application's limits applied to its decision, or the policy's failure handled as any
    /// hook's.
    pub fn judged(
        &self,
        delivery: &Delivery,
        context: &AttemptContext,
        decision: Result<RetryDecision, HookError>,
        now_ms: u64,
    ) -> Processed {
        let status = status_of(&delivery.outcome);
        let decision = match decision {
            Ok(decision) => decision,
            Err(err) => return self.hook_failed(err, status, delivery.latency, now_ms),
        };
        let outcome = &delivery.outcome;
        let error_kind = match outcome {
            Outcome::Transport { kind, .. } => Some(kind.as_str().to_string()),
            Outcome::Response { .. } => None,
        };
        self.conclude(
            retry::enforce_limits(decision, context, outcome, &self.app.limits),
            LastFailure::from_outcome(outcome),
            Recorded {
                status,
                error_kind,
                latency: delivery.latency,
                hook_failed: false,
            },
            now_ms,
        )
    }

    /// A hook failed: retry with the application's backoff or dead-letter, per
    /// `on_plugin_error`; recorded as a plugin error.
    fn hook_failed(
        &self,
        err: HookError,
        status: Option<u16>,
        latency: Duration,
        now_ms: u64,
    ) -> Processed {
        let app = self.app;
        let decision = plugin_error_decision(
            app.on_plugin_error,
            &err,
            app.backoff,
            &self.context,
            &app.limits,
            self.unit_random,
        );
        let last = match status {
            Some(s) => LastFailure::Status(s),
            None => LastFailure::Error(err.to_string()),
        };
        let recorded = Recorded {
            status,
            error_kind: Some(err.kind().to_string()),
            latency,
            hook_failed: true,
        };
        self.conclude(decision, last, recorded, now_ms)
    }

    /// A retry decision (limits applied) turned into an action and the attempt's record.
    fn conclude(
        &self,
        decision: RetryDecision,
        last: LastFailure,
        recorded: Recorded,
        now_ms: u64,
    ) -> Processed {
        let app = self.app;
        let (action, outcome, retry_in) = match decision {
            RetryDecision::RetryAfterSeconds(secs) => {
                let action = schedule_retry(
                    secs,
                    &self.state,
                    self.receive_count,
                    now_ms,
                    app.visibility_backoff_max_secs,
                    self.opts,
                );
                (action, MetricOutcome::Retry, Some(secs))
            }
            RetryDecision::DeadLetter(reason) => {
                let attributes = dead_letter_attributes(&DeadLetterFacts {
                    app_id: app.id,
                    event_id: Some(&self.event.id),
                    endpoint_id: self.endpoint_id.as_deref(),
                    reason: &reason,
                    last,
                    attempts: self.state.attempt,
                    first_attempt_ms: self.state.first_attempt_ms,
                    source_queue: app.queue_url,
                    now_ms,
                });
                let action = Action::DeadLetter { reason, attributes };
                (action, MetricOutcome::DeadLetter, None)
            }
            RetryDecision::Discard(reason) => {
                let why = DeleteReason::Discarded(reason);
                (Action::Delete { why }, MetricOutcome::Discarded, None)
            }
        };
        let outcome = if recorded.hook_failed {
            MetricOutcome::PluginError
        } else {
            outcome
        };
        let Recorded {
            status,
            error_kind,
            latency,
            ..
        } = recorded;
        Processed {
            action,
            metrics: vec![self.record(status, error_kind, latency, outcome, retry_in, now_ms)],
        }
    }

    /// This attempt's metrics record.
    fn record(
        &self,
        status: Option<u16>,
        error_kind: Option<String>,
        latency: Duration,
        outcome: MetricOutcome,
        retry_in_secs: Option<u32>,
        finished_at_ms: u64,
    ) -> MetricRecord {
        let hooks = self.app.identities;
        MetricRecord {
            v: 1,
            event_id: self.event.id.clone(),
            app_id: self.app.id.to_string(),
            event_type: self.event.event_type.clone(),
            endpoint_host: self.endpoint_host.clone(),
            endpoint_id: self.endpoint_id.clone(),
            attempt: self.state.attempt,
            status,
            error_kind,
            latency_ms: latency.as_millis().min(u64::MAX as u128) as u64,
            outcome,
            retry_in_secs,
            transform: hooks.transform.to_string(),
            signer: hooks.signer.to_string(),
            retry_policy: hooks.retry_policy.to_string(),
            started_at_ms: self.started_at_ms,
            finished_at_ms,
        }
    }
}

/// What a failed attempt's record says besides its outcome.
struct Recorded {
    status: Option<u16>,
    error_kind: Option<String>,
    latency: Duration,
    hook_failed: bool,
}

fn status_of(outcome: &Outcome) -> Option<u16> {
    match outcome {
        Outcome::Response { status, .. } => Some(*status),
        Outcome::Transport { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::TransportErrorKind;

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
            endpoint_id: Some("E 1"),
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
            ("squall-endpoint-id", "E 1"),
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

    #[test]
    fn deferral_delays_cover_ten_to_thirty_seconds() {
        let cases = [
            (0.0, 10),
            (0.04, 10),
            (0.05, 11),
            (0.5, 20),
            (0.999_999, 30),
            (1.0, 30),
            (-3.0, 10),
            (f64::NAN, 10),
        ];
        for (draw, want) in cases {
            assert_eq!(defer_delay_secs(draw), want, "draw {draw}");
        }
    }

    // ---- the whole decision, step by step, as a table (no runtime, no clock, no RNG) ----

    /// The clock readings the driver gives each step, distinct so that a record or an attribute
    /// shows which reading it took.
    const T_START: u64 = NOW;
    const T_TRANSFORMED: u64 = NOW + 1;
    const T_SIGNED: u64 = NOW + 2;
    const T_DELIVERED: u64 = NOW + 3;
    const T_JUDGED: u64 = NOW + 4;
    const FIRST: u64 = NOW - 60_000;
    const TRAP: &str = "plugin misbehave.wasm#0123456789ab trapped: wasm trap: unreachable";

    fn settings() -> AppSettings<'static> {
        static LIMITS: envelope::Limits = envelope::Limits {
            max_body_bytes: envelope::DEFAULT_MAX_BODY_BYTES,
        };
        static BACKOFF: Backoff = Backoff {
            initial_delay_secs: 5,
            multiplier: 3.0,
            max_delay_secs: 6 * 3600,
            jitter: 0.0,
            retry_after_max_secs: 24 * 3600,
        };
        static ENDPOINTS: EndpointTable = EndpointTable::empty();
        AppSettings {
            id: "billing",
            queue_url: "memory://billing",
            envelope_limits: &LIMITS,
            signing_key: "default",
            backoff: &BACKOFF,
            limits: RetryLimits::default(),
            on_plugin_error: PluginErrorPolicy::Retry,
            visibility_backoff_max_secs: 900,
            identities: HookIdentities {
                transform: "builtin:pass-through",
                signer: "builtin:standard-webhooks",
                retry_policy: "builtin:exponential-backoff",
            },
            endpoints: &ENDPOINTS,
            endpoints_read: None,
        }
    }

    fn body(app_id: &str) -> String {
        let env = envelope::Envelope::new_json(
            "evt_1",
            app_id,
            "invoice.paid",
            "https://hooks.example.com/in",
            NOW - 120_000,
            &serde_json::json!({"amount": 42}),
        );
        String::from_utf8(env.encode()).unwrap()
    }

    /// What the hooks, the endpoint limiter and the endpoint do in one scenario.
    struct Script {
        /// `None`: pass the event through.
        transform: Option<Result<TransformResult, HookError>>,
        sign: Result<Headers, HookError>,
        /// Whether a slot of the endpoint host came free in time.
        slot: bool,
        outcome: Outcome,
        /// `None`: the built-in backoff (no jitter).
        policy: Option<Result<RetryDecision, HookError>>,
        draw: f64,
    }

    impl Default for Script {
        fn default() -> Script {
            Script {
                transform: None,
                sign: Ok(vec![("webhook-signature".into(), "v1,sig".into())]),
                slot: true,
                outcome: status(204, &[]),
                policy: None,
                draw: 0.5,
            }
        }
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

    fn trap() -> HookError {
        HookError::Trap {
            plugin: "misbehave.wasm#0123456789ab".into(),
            detail: "wasm trap: unreachable".into(),
        }
    }

    /// The engine's driver without the effects: the same steps, the script's results. Returns
    /// what was decided and which effects ran.
    fn drive(
        app: &AppSettings<'_>,
        msg: &Received,
        opts: ProcessOptions,
        script: Script,
    ) -> (Processed, Vec<String>) {
        let mut ran = Vec::new();
        let mut attempt = match Attempt::start(app, msg, opts, T_START, script.draw) {
            Start::Attempt(attempt) => attempt,
            Start::Hop(done) | Start::Malformed(done) => return (done, ran),
        };
        ran.push("transform".to_string());
        let transformed = script
            .transform
            .unwrap_or_else(|| Ok(TransformResult::Send(Request::from_event(attempt.event()))));
        let request = match attempt.transformed(transformed, T_TRANSFORMED) {
            Step::Next(request) => request,
            Step::Done(done) => return (done, ran),
        };
        ran.push(format!("sign with {:?}", attempt.key_name()));
        let request = match attempt.signed(request, script.sign, T_SIGNED) {
            Step::Next(request) => request,
            Step::Done(done) => return (done, ran),
        };
        ran.push(format!("slot for {}", attempt.endpoint_host()));
        if !script.slot {
            return (attempt.deferred(), ran);
        }
        ran.push(format!("deliver to {} {:?}", request.url, request.headers));
        let delivery = Delivery {
            outcome: script.outcome,
            latency: Duration::from_millis(3),
        };
        let context = match attempt.delivered(&delivery, T_DELIVERED) {
            Step::Next(context) => context,
            Step::Done(done) => return (done, ran),
        };
        ran.push(format!(
            "policy at attempt {} at {}",
            context.attempt, context.now_ms
        ));
        let decision = script
            .policy
            .unwrap_or_else(|| Ok(app.backoff.decide(&context, &delivery.outcome, 0.5)));
        (attempt.judged(&delivery, &context, decision, T_JUDGED), ran)
    }

    /// An expected record: the fields a case varies; the others are the test app's.
    fn record(
        attempt: u32,
        outcome: MetricOutcome,
        (status, error_kind): (Option<u16>, Option<&str>),
        latency_ms: u64,
        retry_in_secs: Option<u32>,
        finished_at_ms: u64,
    ) -> MetricRecord {
        MetricRecord {
            v: 1,
            event_id: "evt_1".into(),
            app_id: "billing".into(),
            event_type: "invoice.paid".into(),
            endpoint_host: "hooks.example.com".into(),
            endpoint_id: None,
            attempt,
            status,
            error_kind: error_kind.map(str::to_string),
            latency_ms,
            outcome,
            retry_in_secs,
            transform: "builtin:pass-through".into(),
            signer: "builtin:standard-webhooks".into(),
            retry_policy: "builtin:exponential-backoff".into(),
            started_at_ms: T_START,
            finished_at_ms,
        }
    }

    /// Expected DLQ attributes, spelled out; `last` is (attribute name, value).
    fn dlq(
        event_id: Option<&str>,
        reason: &str,
        last: (&str, &str),
        attempts: u32,
        first: u64,
        at: u64,
    ) -> Action {
        let mut attributes: Attributes = [
            ("squall-app-id", "billing"),
            ("squall-reason", reason),
            last,
            ("squall-attempts", &attempts.to_string()),
            ("squall-first-attempt-ms", &first.to_string()),
            ("squall-source-queue", "memory://billing"),
            ("squall-dead-lettered-at-ms", &at.to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(id) = event_id {
            attributes.insert("squall-event-id".into(), id.into());
        }
        Action::DeadLetter {
            reason: reason.into(),
            attributes,
        }
    }

    fn resend(delay_secs: u32, attempts: u32, first: u64, not_before: u64, hop: bool) -> Action {
        let attributes = [
            ("squall-attempts", u64::from(attempts)),
            ("squall-first-attempt-ms", first),
            ("squall-not-before-ms", not_before),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Action::Resend {
            delay_secs,
            attributes,
            hop,
        }
    }

    fn delete(why: DeleteReason) -> Action {
        Action::Delete { why }
    }

    struct Case {
        name: &'static str,
        msg: Received,
        opts: ProcessOptions,
        app: fn(&mut AppSettings<'static>),
        script: Script,
        /// The effects the driver runs before the decision is final.
        ran: &'static [&'static str],
        action: Action,
        metrics: Vec<MetricRecord>,
    }

    const SIGNED: &str = r#"deliver to https://hooks.example.com/in [("content-type", "application/json"), ("webhook-signature", "v1,sig")]"#;
    const UP_TO_SIGN: &[&str] = &["transform", r#"sign with "default""#];
    const UP_TO_DELIVERY: &[&str] = &[
        "transform",
        r#"sign with "default""#,
        "slot for hooks.example.com",
        SIGNED,
    ];
    const ALL: &[&str] = &[
        "transform",
        r#"sign with "default""#,
        "slot for hooks.example.com",
        SIGNED,
        "policy at attempt ATTEMPT at 1800000000003",
    ];

    fn cases() -> Vec<Case> {
        let ok = |_: &mut AppSettings<'static>| {};
        let dead_letter_on_error = |a: &mut AppSettings<'static>| {
            a.on_plugin_error = PluginErrorPolicy::DeadLetter;
        };
        let bad_envelope = envelope::decode(b"not json", &envelope::Limits::default()).unwrap_err();
        let bad_envelope_reason = format!("malformed envelope: {bad_envelope}");
        let bad_envelope_last = format!("envelope: {}", bad_envelope.kind());
        let policy_error = HookError::Plugin {
            plugin: "retry.wasm#0123456789ab".into(),
            message: "boom".into(),
        };
        let three_days_ago = NOW - 3 * 24 * 3_600_000;
        vec![
            Case {
                name: "2xx: delivered, deleted",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script::default(),
                ran: UP_TO_DELIVERY,
                action: delete(DeleteReason::Delivered),
                metrics: vec![record(
                    1,
                    MetricOutcome::Delivered,
                    (Some(204), None),
                    3,
                    None,
                    T_DELIVERED,
                )],
            },
            Case {
                name: "503 on the second receive: 15 s by visibility",
                msg: received(&body("billing"), 2, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(503, &[]),
                    ..Script::default()
                },
                ran: ALL,
                action: Action::RetryByVisibility { secs: 15 },
                metrics: vec![record(
                    2,
                    MetricOutcome::Retry,
                    (Some(503), None),
                    3,
                    Some(15),
                    T_JUDGED,
                )],
            },
            Case {
                name: "429 with Retry-After 3600: re-sent with 900 s, not before an hour",
                msg: received(&body("billing"), 1, &[(ATTR_ATTEMPTS, "6")]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(429, &[("retry-after", "3600")]),
                    ..Script::default()
                },
                ran: ALL,
                action: resend(900, 7, FIRST, T_JUDGED + 3_600_000, false),
                metrics: vec![record(
                    7,
                    MetricOutcome::Retry,
                    (Some(429), None),
                    3,
                    Some(3600),
                    T_JUDGED,
                )],
            },
            Case {
                name: "fifth receive of one SQS message: re-sent even for a short wait",
                msg: received(&body("billing"), 5, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(500, &[]),
                    ..Script::default()
                },
                ran: ALL,
                action: resend(405, 5, FIRST, T_JUDGED + 405_000, false),
                metrics: vec![record(
                    5,
                    MetricOutcome::Retry,
                    (Some(500), None),
                    3,
                    Some(405),
                    T_JUDGED,
                )],
            },
            Case {
                name: "queue over its in-flight limit: every retry re-sent",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions { force_resend: true },
                app: ok,
                script: Script {
                    outcome: status(500, &[]),
                    ..Script::default()
                },
                ran: ALL,
                action: resend(5, 1, FIRST, T_JUDGED + 5_000, false),
                metrics: vec![record(
                    1,
                    MetricOutcome::Retry,
                    (Some(500), None),
                    3,
                    Some(5),
                    T_JUDGED,
                )],
            },
            Case {
                name: "410: dead-lettered by the policy",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(410, &[]),
                    ..Script::default()
                },
                ran: ALL,
                action: dlq(
                    Some("evt_1"),
                    "status 410 is not retryable (4xx other than 408, 409, 425, 429)",
                    ("squall-last-status", "410"),
                    1,
                    FIRST,
                    T_JUDGED,
                ),
                metrics: vec![record(
                    1,
                    MetricOutcome::DeadLetter,
                    (Some(410), None),
                    3,
                    None,
                    T_JUDGED,
                )],
            },
            Case {
                name: "timeout at the last attempt: dead-lettered naming max_attempts",
                msg: received(&body("billing"), 1, &[(ATTR_ATTEMPTS, "24")]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: Outcome::Transport {
                        kind: TransportErrorKind::Timeout,
                        message: "after 15000 ms".into(),
                    },
                    ..Script::default()
                },
                ran: ALL,
                action: dlq(
                    Some("evt_1"),
                    "gave up after 25 attempts (max_attempts); last: timeout: after 15000 ms",
                    ("squall-last-error", "timeout: after 15000 ms"),
                    25,
                    FIRST,
                    T_JUDGED,
                ),
                metrics: vec![record(
                    25,
                    MetricOutcome::DeadLetter,
                    (None, Some("timeout")),
                    3,
                    None,
                    T_JUDGED,
                )],
            },
            Case {
                name: "a retry past the horizon: dead-lettered naming the horizon",
                msg: received(
                    &body("billing"),
                    1,
                    &[
                        (ATTR_ATTEMPTS, "2"),
                        (ATTR_FIRST_ATTEMPT_MS, &three_days_ago.to_string()),
                    ],
                ),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(500, &[]),
                    ..Script::default()
                },
                ran: ALL,
                action: dlq(
                    Some("evt_1"),
                    "retry horizon of 259200 s would be exceeded after 3 attempts; last: status 500",
                    ("squall-last-status", "500"),
                    3,
                    three_days_ago,
                    T_JUDGED,
                ),
                metrics: vec![record(
                    3,
                    MetricOutcome::DeadLetter,
                    (Some(500), None),
                    3,
                    None,
                    T_JUDGED,
                )],
            },
            Case {
                name: "the policy discards: deleted, recorded as discarded",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(500, &[]),
                    policy: Some(Ok(RetryDecision::Discard("stale event".into()))),
                    ..Script::default()
                },
                ran: ALL,
                action: delete(DeleteReason::Discarded("stale event".into())),
                metrics: vec![record(
                    1,
                    MetricOutcome::Discarded,
                    (Some(500), None),
                    3,
                    None,
                    T_JUDGED,
                )],
            },
            Case {
                name: "the transform skips: deleted, recorded as skipped, nothing sent",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    transform: Some(Ok(TransformResult::Skip(
                        "ping events are not delivered".into(),
                    ))),
                    ..Script::default()
                },
                ran: &["transform"],
                action: delete(DeleteReason::Skipped(
                    "ping events are not delivered".into(),
                )),
                metrics: vec![record(
                    1,
                    MetricOutcome::Skipped,
                    (None, None),
                    0,
                    None,
                    T_TRANSFORMED,
                )],
            },
            Case {
                name: "a copy before its not-before time: hops, no hook runs, no record",
                msg: received(
                    &body("billing"),
                    1,
                    &[
                        (ATTR_ATTEMPTS, "7"),
                        (ATTR_FIRST_ATTEMPT_MS, "11"),
                        (ATTR_NOT_BEFORE_MS, &(NOW + 2_000_000).to_string()),
                    ],
                ),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script::default(),
                ran: &[],
                action: resend(900, 7, 11, NOW + 2_000_000, true),
                metrics: vec![],
            },
            Case {
                name: "endpoint host saturated: deferred 10-30 s, the attempt not made, no record",
                msg: received(
                    &body("billing"),
                    2,
                    &[(ATTR_ATTEMPTS, "3"), (ATTR_FIRST_ATTEMPT_MS, "11")],
                ),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    slot: false,
                    draw: 0.5,
                    ..Script::default()
                },
                ran: &[
                    "transform",
                    r#"sign with "default""#,
                    "slot for hooks.example.com",
                ],
                // Attempt 5 (3 made before, receive count 2) was not made: the copy is attempt 5.
                action: resend(20, 4, 11, 0, true),
                metrics: vec![],
            },
            Case {
                name: "an attribute that does not parse: dead-lettered, no attempt",
                msg: received(&body("billing"), 1, &[(ATTR_ATTEMPTS, "x7")]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script::default(),
                ran: &[],
                action: dlq(
                    None,
                    r#"malformed message: message attribute squall-attempts is not an unsigned integer: "x7""#,
                    ("squall-last-error", "attribute"),
                    0,
                    FIRST,
                    T_START,
                ),
                metrics: vec![],
            },
            Case {
                name: "an envelope that does not decode: dead-lettered naming the field",
                msg: received("not json", 2, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script::default(),
                ran: &[],
                action: dlq(
                    None,
                    &bad_envelope_reason,
                    ("squall-last-error", &bad_envelope_last),
                    1,
                    FIRST,
                    T_START,
                ),
                metrics: vec![],
            },
            Case {
                name: "another application's envelope: dead-lettered naming both ids and the event",
                msg: received(&body("shipping"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script::default(),
                ran: &[],
                action: dlq(
                    Some("evt_1"),
                    r#"malformed envelope: app_id "shipping" does not match the queue's application "billing""#,
                    ("squall-last-error", "envelope: app-id-mismatch"),
                    0,
                    FIRST,
                    T_START,
                ),
                metrics: vec![],
            },
            Case {
                name: "the transform traps, on_plugin_error = retry: the backoff's 5 s",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    transform: Some(Err(trap())),
                    ..Script::default()
                },
                ran: &["transform"],
                action: Action::RetryByVisibility { secs: 5 },
                metrics: vec![record(
                    1,
                    MetricOutcome::PluginError,
                    (None, Some("plugin-trap")),
                    0,
                    Some(5),
                    T_TRANSFORMED,
                )],
            },
            Case {
                name: "the transform traps, jitter 0.2 and a draw of 0: 4 s",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: |a| {
                    static JITTERY: Backoff = Backoff {
                        initial_delay_secs: 5,
                        multiplier: 3.0,
                        max_delay_secs: 6 * 3600,
                        jitter: 0.2,
                        retry_after_max_secs: 24 * 3600,
                    };
                    a.backoff = &JITTERY;
                },
                script: Script {
                    transform: Some(Err(trap())),
                    draw: 0.0,
                    ..Script::default()
                },
                ran: &["transform"],
                action: Action::RetryByVisibility { secs: 4 },
                metrics: vec![record(
                    1,
                    MetricOutcome::PluginError,
                    (None, Some("plugin-trap")),
                    0,
                    Some(4),
                    T_TRANSFORMED,
                )],
            },
            Case {
                name: "the transform traps, on_plugin_error = dead-letter",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: dead_letter_on_error,
                script: Script {
                    transform: Some(Err(trap())),
                    ..Script::default()
                },
                ran: &["transform"],
                action: dlq(
                    Some("evt_1"),
                    &format!(r#"{TRAP} (on_plugin_error = "dead-letter")"#),
                    ("squall-last-error", TRAP),
                    1,
                    FIRST,
                    T_TRANSFORMED,
                ),
                metrics: vec![record(
                    1,
                    MetricOutcome::PluginError,
                    (None, Some("plugin-trap")),
                    0,
                    None,
                    T_TRANSFORMED,
                )],
            },
            Case {
                name: "the transform traps at the last attempt: dead-lettered naming max_attempts",
                msg: received(&body("billing"), 1, &[(ATTR_ATTEMPTS, "24")]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    transform: Some(Err(trap())),
                    ..Script::default()
                },
                ran: &["transform"],
                action: dlq(
                    Some("evt_1"),
                    &format!("gave up after 25 attempts (max_attempts); last: other: {TRAP}"),
                    ("squall-last-error", TRAP),
                    25,
                    FIRST,
                    T_TRANSFORMED,
                ),
                metrics: vec![record(
                    25,
                    MetricOutcome::PluginError,
                    (None, Some("plugin-trap")),
                    0,
                    None,
                    T_TRANSFORMED,
                )],
            },
            Case {
                name: "the envelope's signing key is missing: a host error, retried, nothing sent",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    sign: Err(HookError::Host(
                        r#"application billing has no signing secret named "default""#.into(),
                    )),
                    ..Script::default()
                },
                ran: UP_TO_SIGN,
                action: Action::RetryByVisibility { secs: 5 },
                metrics: vec![record(
                    1,
                    MetricOutcome::PluginError,
                    (None, Some("host-error")),
                    0,
                    Some(5),
                    T_SIGNED,
                )],
            },
            Case {
                name: "the retry policy fails after a 503: retried with the backoff, the status kept",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: ok,
                script: Script {
                    outcome: status(503, &[]),
                    policy: Some(Err(policy_error.clone())),
                    ..Script::default()
                },
                ran: ALL,
                action: Action::RetryByVisibility { secs: 5 },
                metrics: vec![record(
                    1,
                    MetricOutcome::PluginError,
                    (Some(503), Some("plugin-error")),
                    3,
                    Some(5),
                    T_JUDGED,
                )],
            },
            Case {
                name: "the retry policy fails after a 503, on_plugin_error = dead-letter",
                msg: received(&body("billing"), 1, &[]),
                opts: ProcessOptions::default(),
                app: dead_letter_on_error,
                script: Script {
                    outcome: status(503, &[]),
                    policy: Some(Err(policy_error)),
                    ..Script::default()
                },
                ran: ALL,
                action: dlq(
                    Some("evt_1"),
                    r#"plugin retry.wasm#0123456789ab reported an error: boom (on_plugin_error = "dead-letter")"#,
                    ("squall-last-status", "503"),
                    1,
                    FIRST,
                    T_JUDGED,
                ),
                metrics: vec![record(
                    1,
                    MetricOutcome::PluginError,
                    (Some(503), Some("plugin-error")),
                    3,
                    None,
                    T_JUDGED,
                )],
            },
        ]
    }

    #[test]
    fn every_branch_of_the_decision() {
        for case in cases() {
            let mut app = settings();
            (case.app)(&mut app);
            let (processed, ran) = drive(&app, &case.msg, case.opts, case.script);
            let attempt = attempt_state(&case.msg).map(|s| s.attempt).unwrap_or(0);
            let want_ran: Vec<String> = case
                .ran
                .iter()
                .map(|r| r.replace("ATTEMPT", &attempt.to_string()))
                .collect();
            assert_eq!(ran, want_ran, "{}: effects", case.name);
            assert_eq!(processed.action, case.action, "{}: action", case.name);
            assert_eq!(processed.metrics, case.metrics, "{}: records", case.name);
        }
    }

    #[test]
    fn the_table_covers_every_action_and_outcome() {
        let mut actions = std::collections::BTreeSet::new();
        let mut outcomes = std::collections::BTreeSet::new();
        for case in cases() {
            actions.insert(match &case.action {
                Action::Delete { why } => match why {
                    DeleteReason::Delivered => "delete: delivered",
                    DeleteReason::Skipped(_) => "delete: skipped",
                    DeleteReason::Discarded(_) => "delete: discarded",
                },
                Action::RetryByVisibility { .. } => "retry by visibility",
                Action::Resend { hop: false, .. } => "re-send",
                Action::Resend { hop: true, .. } => "hop or deferral",
                Action::DeadLetter { .. } => "dead-letter",
            });
            outcomes.extend(case.metrics.iter().map(|m| m.outcome.as_str()));
        }
        assert_eq!(actions.len(), 7, "{actions:?}");
        assert_eq!(outcomes.len(), 6, "{outcomes:?}");
    }

    #[test]
    fn a_transform_that_changes_the_url_moves_the_endpoint_host() {
        let app = settings();
        let msg = received(&body("billing"), 1, &[]);
        let request = Request {
            method: "POST".into(),
            url: "https://other.example.net/x".into(),
            ..Request::default()
        };
        let script = Script {
            transform: Some(Ok(TransformResult::Send(request))),
            ..Script::default()
        };
        let (processed, ran) = drive(&app, &msg, ProcessOptions::default(), script);
        assert_eq!(ran[2], "slot for other.example.net");
        assert_eq!(processed.metrics[0].endpoint_host, "other.example.net");
    }

    /// An envelope naming `endpoint_id` instead of `endpoint`, with these extra fields.
    fn by_id(eid: &str, extra: &str) -> String {
        let env: serde_json::Value = serde_json::from_str(&body("billing")).unwrap();
        let mut m = env.as_object().unwrap().clone();
        m.remove("endpoint");
        m.insert("endpoint_id".into(), eid.into());
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(extra).unwrap();
        m.extend(extra);
        serde_json::Value::Object(m).to_string()
    }

    #[test]
    fn an_endpoint_id_is_resolved_at_the_attempt_and_named_in_records_and_dead_letters() {
        use crate::endpoints::Endpoint;
        let table = EndpointTable::new([
            Endpoint::new(
                "E",
                "https://moved.example.org/in",
                true,
                Some("k2"),
                &[
                    ("x-a".into(), "endpoint".into()),
                    ("x-b".into(), "endpoint".into()),
                ],
            )
            .unwrap(),
            Endpoint::new("off", "https://off.example.org/", false, None, &[]).unwrap(),
        ]);
        let app = AppSettings {
            endpoints: &table,
            ..settings()
        };
        // Resolved: the endpoint's URL, key and headers (the envelope's header wins).
        let msg = received(&by_id("E", r#"{"headers":{"x-b":"event"}}"#), 1, &[]);
        let Start::Attempt(attempt) =
            Attempt::start(&app, &msg, ProcessOptions::default(), T_START, 0.5)
        else {
            panic!()
        };
        assert_eq!(attempt.event().endpoint_url, "https://moved.example.org/in");
        assert_eq!(attempt.endpoint_host(), "moved.example.org");
        assert_eq!(attempt.key_name(), "k2");
        let h: Vec<(&str, &str)> = attempt
            .event()
            .headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(h, [("x-a", "endpoint"), ("x-b", "event")]);
        // The envelope's own signing key wins over the endpoint's.
        let msg = received(&by_id("E", r#"{"signing_key":"mine"}"#), 1, &[]);
        let Start::Attempt(attempt) =
            Attempt::start(&app, &msg, ProcessOptions::default(), T_START, 0.5)
        else {
            panic!()
        };
        assert_eq!(attempt.key_name(), "mine");
        // The record names the endpoint id; a URL envelope's record does not.
        let (p, _) = drive(
            &app,
            &received(&by_id("E", "{}"), 1, &[]),
            ProcessOptions::default(),
            Script::default(),
        );
        assert_eq!(p.metrics[0].endpoint_id.as_deref(), Some("E"));
        assert!(p.metrics[0].to_json().contains(r#""endpoint_id":"E""#));
        let (p, _) = drive(
            &app,
            &received(&body("billing"), 1, &[]),
            ProcessOptions::default(),
            Script::default(),
        );
        assert_eq!(p.metrics[0].endpoint_id, None);
        assert!(!p.metrics[0].to_json().contains("endpoint_id"));
        // A registry table read before the message was sent does not decide against it: the
        // message hops (same attempt count) until a fresher read.
        let stale = AppSettings {
            endpoints_read: Some(EndpointsRead {
                read_at_ms: NOW - 60_001,
                recheck_secs: 3,
            }),
            ..app
        };
        for eid in ["gone", "off"] {
            let msg = received(&by_id(eid, "{}"), 2, &[(ATTR_ATTEMPTS, "3")]);
            let Start::Hop(p) =
                Attempt::start(&stale, &msg, ProcessOptions::default(), T_START, 0.5)
            else {
                panic!("{eid}")
            };
            let Action::Resend {
                delay_secs,
                attributes,
                hop,
            } = &p.action
            else {
                panic!("{:?}", p.action)
            };
            assert_eq!((*delay_secs, *hop), (3, true));
            assert_eq!(attributes[ATTR_ATTEMPTS], "4");
        }
        // Read after it was sent: it decides.
        let fresh = AppSettings {
            endpoints_read: Some(EndpointsRead {
                read_at_ms: NOW - 59_999,
                recheck_secs: 3,
            }),
            ..app
        };
        let msg = received(&by_id("gone", "{}"), 1, &[]);
        assert!(matches!(
            Attempt::start(&fresh, &msg, ProcessOptions::default(), T_START, 0.5),
            Start::Malformed(_)
        ));
        // Unknown and disabled: dead-lettered at once, no attempt, the id and the field named.
        for (eid, reason_starts, last) in [
            (
                "gone",
                "malformed envelope: field \"endpoint_id\"",
                "envelope: unknown-endpoint",
            ),
            (
                "off",
                "endpoint-disabled: endpoint \"off\"",
                "endpoint-disabled",
            ),
        ] {
            let msg = received(&by_id(eid, "{}"), 2, &[(ATTR_ATTEMPTS, "3")]);
            let Start::Malformed(p) =
                Attempt::start(&app, &msg, ProcessOptions::default(), T_START, 0.5)
            else {
                panic!("{eid}")
            };
            let Action::DeadLetter { reason, attributes } = &p.action else {
                panic!("{:?}", p.action)
            };
            assert!(reason.starts_with(reason_starts), "{reason}");
            assert_eq!(attributes[ATTR_ENDPOINT_ID], eid);
            assert_eq!(attributes[ATTR_LAST_ERROR], last);
            assert_eq!(attributes[ATTR_EVENT_ID], "evt_1");
            // Attempts made before this receive (3 carried + 1 earlier receive), none now.
            assert_eq!(attributes[ATTR_ATTEMPTS], "4");
            assert!(p.metrics.is_empty());
        }
    }

    #[test]
    fn the_signers_headers_replace_same_named_ones_and_the_envelopes_key_is_used() {
        let app = settings();
        let body = body("billing").replacen('{', r#"{"signing_key":"rotated","#, 1);
        let msg = received(&body, 1, &[]);
        let Start::Attempt(mut attempt) =
            Attempt::start(&app, &msg, ProcessOptions::default(), T_START, 0.5)
        else {
            panic!("{body}")
        };
        assert_eq!(attempt.key_name(), "rotated");
        assert_eq!(attempt.context().now_ms, T_START);
        let mut request = Request::from_event(attempt.event());
        request
            .headers
            .push(("Webhook-Signature".into(), "forged".into()));
        let Step::Next(request) =
            attempt.transformed(Ok(TransformResult::Send(request)), T_TRANSFORMED)
        else {
            panic!()
        };
        let headers = vec![("webhook-signature".to_string(), "v1,sig".to_string())];
        let Step::Next(signed) = attempt.signed(request, Ok(headers), T_SIGNED) else {
            panic!()
        };
        assert_eq!(
            signed.headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("webhook-signature".to_string(), "v1,sig".to_string()),
            ]
        );
    }
}
