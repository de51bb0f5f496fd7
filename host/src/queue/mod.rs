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

use std::future::Future;
use std::time::Duration;

pub mod memory;
pub mod sqs;

pub use squall_core::message::{
    Attributes, MAX_BATCH, MAX_DELAY_SECS, MAX_VISIBILITY_SECS, Outgoing, Received,
    VisibilityChange,
};

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
