//! Operations from the `squall` CLI: inspect queues, remediate dead letters, watch metrics,
//! roll out new code.
//!
//! Every command is split the same way (STYLE.md "decisions apart from effects"): the choice of
//! what to do with each message (filters, destinations, attributes, aggregation) is a plain
//! function over values, tested without a queue; the code that moves messages goes through the
//! [`queue::Queue`](crate::queue::Queue) trait plus [`Inspect`] (receive-and-hold, depths), so
//! the same logic runs against SQS and the in-process queue.
//!
//! Safety rules every command keeps (docs/operations.md):
//! - a message is sent to its new place *before* it is deleted from the old one; a crash in
//!   between leaves it in both places (a duplicate the receiver deduplicates by event id),
//!   never in neither;
//! - a message received only to look at it is made visible again at once (visibility 0) when
//!   the scan ends; if the process dies, it comes back by itself after the hold time.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::config::Config;
use crate::queue::memory::MemoryQueues;
use crate::queue::sqs::SqsQueues;
use crate::queue::{Queue, QueueError, Received};

pub mod apps;
pub mod cloudwatch;
pub mod endpoints;
pub mod exporter;
pub mod metrics;
pub mod redrive;
pub mod rollout;
pub mod scan;
pub mod send;
pub mod status;

/// Why an operation failed, naming the queue, app or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A queue call failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The configuration lacks something this command needs.
    #[error("config: {key}: {message}")]
    Config {
        /// Key path, e.g. `apps.billing.queue_url`.
        key: String,
        /// What is missing and what to do.
        message: String,
    },
    /// An application id that is not in the configuration.
    #[error("unknown application {app:?}: not an [apps.NAME] table in the config (known: {known})")]
    UnknownApp {
        /// The id given.
        app: String,
        /// The configured ids, comma-separated.
        known: String,
    },
    /// A bad argument or input file.
    #[error("{what}: {message}")]
    Input {
        /// Which argument or file.
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// Message counts of one queue, as SQS reports them (approximate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Depth {
    /// Visible: ready to be received (ApproximateNumberOfMessages).
    pub visible: u64,
    /// In flight: received and not deleted, including those waiting out a visibility backoff
    /// (ApproximateNumberOfMessagesNotVisible).
    pub in_flight: u64,
    /// Delayed by DelaySeconds, including re-sent retries (ApproximateNumberOfMessagesDelayed).
    pub delayed: u64,
}

/// What the operations need from a queue beyond [`Queue`]: receiving while choosing how long
/// the messages stay hidden, and the queue's counts.
pub trait Inspect: Queue {
    /// Receive up to 10 messages and hide them for `hold` (no long poll beyond `wait`).
    fn receive_held(
        &self,
        queue: &str,
        max: usize,
        hold: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Received>, QueueError>> + Send;

    /// The queue's message counts.
    fn depth(&self, queue: &str) -> impl Future<Output = Result<Depth, QueueError>> + Send;
}

impl Inspect for SqsQueues {
    async fn receive_held(
        &self,
        queue: &str,
        max: usize,
        hold: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        self.receive_message(queue, max, wait, Some(hold)).await
    }

    async fn depth(&self, queue: &str) -> Result<Depth, QueueError> {
        let out = self
            .client()
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| crate::queue::sqs::from_sdk(queue, "GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let n = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Depth {
            visible: n(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// The in-process queue: the hold is the queue's own visibility timeout (tests create queues
/// with the hold they want); delayed messages count as not visible and not in flight.
impl Inspect for MemoryQueues {
    async fn receive_held(
        &self,
        queue: &str,
        max: usize,
        _hold: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        self.receive(queue, max, wait).await
    }

    async fn depth(&self, queue: &str) -> Result<Depth, QueueError> {
        let c = self.counts(queue)?;
        Ok(Depth {
            visible: (c.total - c.in_flight) as u64,
            in_flight: c.in_flight as u64,
            delayed: 0,
        })
    }
}

/// The queue URL of a configured application.
pub fn app_queue_url<'a>(config: &'a Config, app: &str) -> Result<&'a str, OpsError> {
    let a = config.app(app).ok_or_else(|| OpsError::UnknownApp {
        app: app.to_string(),
        known: config
            .apps
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    a.queue_url.as_deref().ok_or_else(|| OpsError::Config {
        key: format!("apps.{app}.queue_url"),
        message: "not set: the URL of the application's SQS queue".into(),
    })
}

/// Where a producer sends an application's events: its own queue, or for a shared-tier
/// application the shared queue with `MessageGroupId = app_id` (the group id is returned).
pub fn app_destination<'a>(
    config: &'a Config,
    app: &str,
) -> Result<(&'a str, Option<String>), OpsError> {
    let shared = config
        .app(app)
        .is_some_and(|a| a.tier == crate::registry::Tier::Shared);
    if !shared {
        return Ok((app_queue_url(config, app)?, None));
    }
    let url = config
        .sqs
        .shared_queue_url
        .as_deref()
        .ok_or_else(|| OpsError::Config {
            key: "sqs.shared_queue_url".into(),
            message: format!(
                "not set: application {app} is of the shared tier, its events go to the shared queue"
            ),
        })?;
    Ok((url, Some(app.to_string())))
}

/// The dead-letter queue URL of a config.
pub fn dead_letter_queue_url(config: &Config) -> Result<&str, OpsError> {
    config
        .sqs
        .dead_letter_queue_url
        .as_deref()
        .ok_or_else(|| OpsError::Config {
            key: "sqs.dead_letter_queue_url".into(),
            message: "not set: the shared dead-letter queue's URL".into(),
        })
}

/// The metrics queue URL of a config.
pub fn metrics_queue_url(config: &Config) -> Result<&str, OpsError> {
    config
        .sqs
        .metrics_queue_url
        .as_deref()
        .ok_or_else(|| OpsError::Config {
            key: "sqs.metrics_queue_url".into(),
            message: "not set: the shared metrics queue's URL".into(),
        })
}

/// A duration like `90s`, `10m`, `2h`, `1d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 90s, 10m, 2h, 1d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

/// A point in time: RFC 3339 (`2026-11-28T10:00:00Z`), or a duration ago (`2h` = two hours
/// before `now_ms`). Unix ms.
pub fn parse_when(s: &str, now_ms: u64) -> Result<u64, String> {
    if s.contains('T') {
        return crate::envelope::parse_rfc3339_ms(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"));
    }
    let ago = parse_duration(s)
        .map_err(|e| format!("{e}; or give an RFC 3339 time like 2026-11-28T10:00:00Z"))?;
    Ok(now_ms.saturating_sub(ago.as_millis() as u64))
}

/// Wall clock, Unix ms (the effectful edge; the pure functions take `now_ms` as an argument).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_when("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(parse_when("2026-11-28T00:00:00Z", 0), Ok(1_795_824_000_000));
        assert!(parse_when("2026-13-01T00:00:00Z", 0).is_err());
    }
}
