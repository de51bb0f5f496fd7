//! Queues: the operations the engine needs from SQS, as one trait with two implementations.
//!
//! - [`sqs::SqsQueues`]: AWS SQS (or any SQS-compatible server, e.g. moto on loopback).
//! - [`memory::MemoryQueues`]: the embedded in-process queue with the semantics the engine relies
//!   on (delay, visibility, receive count, redrive to a dead-letter queue, message attributes),
//!   used by the demo and the throughput benchmark.
//!
//! This module decides nothing about retries: it moves messages. Batch calls take any number
//! of entries and split them into SQS's batches of at most [`MAX_BATCH`]; per-entry failures
//! are returned in input order, never swallowed.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

pub mod memory;
pub mod sqs;

/// SQS's limit on entries per batch call and messages per receive.
pub const MAX_BATCH: usize = 10;

/// Longest DelaySeconds SQS accepts.
pub const MAX_DELAY_SECS: u32 = 900;

/// Longest visibility timeout SQS accepts (12 h).
pub const MAX_VISIBILITY_SECS: u32 = 43_200;

/// Message attributes as name -> string value. Squall only reads and writes `String`
/// attributes named `squall-*`.
pub type Attributes = BTreeMap<String, String>;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The queue's id for this message (a re-sent copy gets a new one).
    pub message_id: String,
    /// Handle for delete / change-visibility of this receive.
    pub receipt_handle: String,
    /// The body, exactly as sent.
    pub body: String,
    /// String message attributes (Squall uses only `squall-*`).
    pub attributes: Attributes,
    /// ApproximateReceiveCount: 1 on the first receive.
    pub receive_count: u32,
    /// SentTimestamp: when this message (copy) was enqueued, Unix ms.
    pub sent_timestamp_ms: u64,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The body.
    pub body: String,
    /// DelaySeconds, 0..=900.
    pub delay_secs: u32,
    /// String message attributes.
    pub attributes: Attributes,
}

/// One ChangeMessageVisibility entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// Receipt handle of the message.
    pub receipt_handle: String,
    /// New visibility timeout from now, seconds (0..=43,200).
    pub timeout_secs: u32,
}

/// A queue operation that failed, naming the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Too many messages in flight (received and not deleted): ReceiveMessage refused.
    #[error("queue {queue}: too many messages in flight (OverLimit)")]
    OverLimit {
        /// Queue URL or name.
        queue: String,
    },
    /// The receipt handle is not (or no longer) valid for this queue.
    #[error("queue {queue}: receipt handle is invalid or expired")]
    ReceiptHandleInvalid {
        /// Queue URL or name.
        queue: String,
    },
    /// The message is not in flight (change visibility after it became visible again).
    #[error("queue {queue}: message is not in flight")]
    NotInFlight {
        /// Queue URL or name.
        queue: String,
    },
    /// The queue does not exist.
    #[error("queue {queue} does not exist")]
    QueueDoesNotExist {
        /// Queue URL or name.
        queue: String,
    },
    /// A parameter was out of range or malformed (delay, visibility, size...).
    #[error("queue {queue}: {operation}: invalid parameter: {message}")]
    InvalidParameter {
        /// Queue URL or name.
        queue: String,
        /// SQS operation name.
        operation: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The service answered with another error code.
    #[error("queue {queue}: {operation} failed: {code}: {message}")]
    Service {
        /// Queue URL or name.
        queue: String,
        /// SQS operation name.
        operation: &'static str,
        /// Error code from the service.
        code: String,
        /// Error message from the service.
        message: String,
    },
    /// No answer (connection, timeout, credentials, ...).
    #[error("queue {queue}: {operation} failed to reach the service: {message}")]
    Transport {
        /// Queue URL or name.
        queue: String,
        /// SQS operation name.
        operation: &'static str,
        /// Detail.
        message: String,
    },
}

impl QueueError {
    /// Stable short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueError::OverLimit { .. } => "over-limit",
            QueueError::ReceiptHandleInvalid { .. } => "receipt-handle-invalid",
            QueueError::NotInFlight { .. } => "not-in-flight",
            QueueError::QueueDoesNotExist { .. } => "queue-does-not-exist",
            QueueError::InvalidParameter { .. } => "invalid-parameter",
            QueueError::Service { .. } => "service",
            QueueError::Transport { .. } => "transport",
        }
    }
}

/// Per-entry results of a batch call, in input order.
pub type BatchResults = Vec<Result<(), QueueError>>;

/// What the engine needs from a queue service. `queue` is a queue URL (SQS) or name (memory).
pub trait Queue: Send + Sync + 'static {
    /// Receive up to `max` (1..=10) messages, waiting up to `wait` for the first one.
    fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Received>, QueueError>> + Send;

    /// Delete messages by receipt handle.
    fn delete_batch(
        &self,
        queue: &str,
        receipt_handles: &[String],
    ) -> impl Future<Output = BatchResults> + Send;

    /// Change the visibility timeout of received messages.
    fn change_visibility_batch(
        &self,
        queue: &str,
        changes: &[VisibilityChange],
    ) -> impl Future<Output = BatchResults> + Send;

    /// Send messages.
    fn send_batch(
        &self,
        queue: &str,
        messages: &[Outgoing],
    ) -> impl Future<Output = BatchResults> + Send;
}

/// Results for a whole chunk that failed as one call: the same error for every entry.
pub(crate) fn all_failed(n: usize, err: &QueueError) -> BatchResults {
    (0..n).map(|_| Err(err.clone())).collect()
}
