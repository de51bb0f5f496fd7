//! The decision for one message, as plain functions over values: attempt bookkeeping from the
//! message's attributes, the not-before hop, the hybrid visibility/re-send switch, the
//! plugin-error policy, the dead-letter attributes, and the [`Action`] they lead to. The engine's
//! driver (`squall::pipeline::process`) calls the hooks, the HTTP client and the clock, and
//! feeds their results here. See ARCHITECTURE.md "Retry mechanism" and "Where a message ends".

use crate::envelope;
use crate::hooks::{
    AttemptContext, HookError, Outcome, Request, RetryDecision, TransportErrorKind,
};
use crate::message::{Attributes, MAX_DELAY_SECS, Received};
use crate::metrics::MetricRecord;
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
