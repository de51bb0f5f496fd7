//! The messages the engine reads from and writes to queues, as plain values, and the SQS
//! limits that shape them. The queue clients (engine) move them; the pipeline decides on them.

use std::collections::BTreeMap;

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
    /// MessageGroupId (the shared queue's messages carry their application id; SQS fair
    /// queues order by it). `None` on a dedicated queue's messages.
    pub group_id: Option<String>,
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
    /// MessageGroupId to send with (a copy of a shared queue's message keeps its group).
    pub group_id: Option<String>,
}

/// One ChangeMessageVisibility entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// Receipt handle of the message.
    pub receipt_handle: String,
    /// New visibility timeout from now, seconds (0..=43,200).
    pub timeout_secs: u32,
}
