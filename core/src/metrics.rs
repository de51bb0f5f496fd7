//! The metrics record: one JSON object per attempt (and per skip) on the shared metrics queue
//! (format version 1, ARCHITECTURE.md "Metrics record"). The engine's sink sends them.
//!
//! Records carry ids, hosts, statuses and plugin identities: never a payload, a header value
//! or a secret.

use serde::Serialize;

/// How an attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricOutcome {
    /// 2xx.
    Delivered,
    /// Failed; scheduled for another attempt.
    Retry,
    /// Failed; sent to the dead-letter queue.
    DeadLetter,
    /// Failed; the retry policy chose to drop it.
    Discarded,
    /// The transform skipped it; nothing was sent.
    Skipped,
    /// A plugin (or built-in hook) failed; see `error_kind` and `retry_in_secs`.
    PluginError,
}

impl MetricOutcome {
    /// The name used in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricOutcome::Delivered => "delivered",
            MetricOutcome::Retry => "retry",
            MetricOutcome::DeadLetter => "dead_letter",
            MetricOutcome::Discarded => "discarded",
            MetricOutcome::Skipped => "skipped",
            MetricOutcome::PluginError => "plugin_error",
        }
    }
}

/// One metrics record (format version 1, see ARCHITECTURE.md "Metrics record").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricRecord {
    /// Format version: 1.
    pub v: u8,
    /// Event id.
    pub event_id: String,
    /// Application id.
    pub app_id: String,
    /// Event type.
    pub event_type: String,
    /// Host of the URL the request went (or would have gone) to.
    pub endpoint_host: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// HTTP status, when one came back.
    pub status: Option<u16>,
    /// Transport error kind or hook error kind, when no status came back.
    pub error_kind: Option<String>,
    /// Time spent on this attempt, ms.
    pub latency_ms: u64,
    /// How it ended.
    pub outcome: MetricOutcome,
    /// Wait before the next attempt, when retried.
    pub retry_in_secs: Option<u32>,
    /// Transform identity: `builtin:NAME`, or a plugin's file name and digest prefix
    /// (`envelope-transform.wasm#1a2b3c4d5e6f`).
    pub transform: String,
    /// Signer identity (same form).
    pub signer: String,
    /// Retry policy identity (same form).
    pub retry_policy: String,
    /// Unix ms when processing of this attempt started.
    pub started_at_ms: u64,
    /// Unix ms when it finished.
    pub finished_at_ms: u64,
}

impl MetricRecord {
    /// The JSON text sent to the metrics queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a metric record always serialises")
    }
}
