//! Looking at queued messages without consuming them: receive with a hold (a visibility
//! timeout), keep what matches, then make everything visible again at once.
//!
//! SQS has no "browse": the only way to read a message is to receive it, which hides it for the
//! visibility timeout and adds one to its `ApproximateReceiveCount`. A scan therefore holds every
//! message it has seen until it ends (so it does not read the same ones again) and then sets
//! their visibility to 0. If the process dies, held messages come back by themselves when the
//! hold expires. On an application queue each peek counts as one receive: Squall's attempt
//! number (prior attempts + receive count) grows by one, as does the count the queue's redrive
//! policy watches (docs/operations.md).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inspect, OpsError};
use crate::pipeline::{
    ATTR_APP_ID, ATTR_ATTEMPTS, ATTR_DEAD_LETTERED_AT_MS, ATTR_EVENT_ID, ATTR_LAST_ERROR,
    ATTR_LAST_STATUS, ATTR_REASON, ATTR_SOURCE_QUEUE,
};
use crate::queue::{Queue, Received, VisibilityChange};

/// A received message as an operator sees it: the DLQ attributes, else what the envelope says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// SQS message id.
    pub message_id: String,
    /// `squall-app-id`, else the envelope's `app_id`.
    pub app_id: Option<String>,
    /// `squall-event-id`, else the envelope's `id`.
    pub event_id: Option<String>,
    /// The envelope's `type`.
    pub event_type: Option<String>,
    /// The envelope's `endpoint`.
    pub endpoint: Option<String>,
    /// `squall-reason` (dead-lettered messages).
    pub reason: Option<String>,
    /// `squall-last-status` or `squall-last-error`.
    pub last: Option<String>,
    /// `squall-attempts`.
    pub attempts: Option<u32>,
    /// `squall-source-queue`.
    pub source_queue: Option<String>,
    /// When it was dead-lettered (`squall-dead-lettered-at-ms`), else when it was sent.
    pub at_ms: u64,
    /// SentTimestamp of this copy, Unix ms.
    pub sent_timestamp_ms: u64,
    /// ApproximateReceiveCount, this peek included.
    pub receive_count: u32,
    /// Body length, bytes.
    pub body_bytes: usize,
}

/// The envelope fields a view needs, read leniently (a malformed envelope still shows).
#[derive(Deserialize)]
struct EnvelopeFields {
    id: Option<serde_json::Value>,
    app_id: Option<serde_json::Value>,
    #[serde(rename = "type")]
    event_type: Option<serde_json::Value>,
    endpoint: Option<serde_json::Value>,
    endpoint_id: Option<serde_json::Value>,
}

fn string(v: Option<serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

impl MessageView {
    /// The view of a received message.
    pub fn of(m: &Received) -> MessageView {
        let env: Option<EnvelopeFields> = serde_json::from_str(&m.body).ok();
        let (id, app, ty, ep) = match env {
            Some(e) => (
                string(e.id),
                string(e.app_id),
                string(e.event_type),
                // A registered endpoint shows as `id:EID` (its URL is the registry's).
                string(e.endpoint).or_else(|| string(e.endpoint_id).map(|i| format!("id:{i}"))),
            ),
            None => (None, None, None, None),
        };
        let attr = |k: &str| m.attributes.get(k).cloned();
        MessageView {
            message_id: m.message_id.clone(),
            app_id: attr(ATTR_APP_ID).or(app),
            event_id: attr(ATTR_EVENT_ID).or(id),
            event_type: ty,
            endpoint: ep,
            reason: attr(ATTR_REASON),
            last: attr(ATTR_LAST_STATUS)
                .map(|s| format!("status {s}"))
                .or(attr(ATTR_LAST_ERROR)),
            attempts: attr(ATTR_ATTEMPTS).and_then(|a| a.parse().ok()),
            source_queue: attr(ATTR_SOURCE_QUEUE),
            at_ms: attr(ATTR_DEAD_LETTERED_AT_MS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(m.sent_timestamp_ms),
            sent_timestamp_ms: m.sent_timestamp_ms,
            receive_count: m.receive_count,
            body_bytes: m.body.len(),
        }
    }
}

/// Which messages an operation applies to. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Application id, exactly.
    pub app: Option<String>,
    /// Event id, exactly.
    pub event_id: Option<String>,
    /// Event type, exactly.
    pub event_type: Option<String>,
    /// Substring of `squall-reason`, case-insensitive.
    pub reason: Option<String>,
    /// `at_ms` >= this (dead-lettered at, else sent at), Unix ms.
    pub since_ms: Option<u64>,
    /// `at_ms` < this, Unix ms.
    pub until_ms: Option<u64>,
}

impl Filter {
    /// Whether a message matches.
    pub fn matches(&self, v: &MessageView) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| match want {
            None => true,
            Some(w) => got.as_deref() == Some(w.as_str()),
        };
        eq(&self.app, &v.app_id)
            && eq(&self.event_id, &v.event_id)
            && eq(&self.event_type, &v.event_type)
            && match &self.reason {
                None => true,
                Some(r) => v
                    .reason
                    .as_deref()
                    .is_some_and(|got| got.to_lowercase().contains(&r.to_lowercase())),
            }
            && self.since_ms.is_none_or(|s| v.at_ms >= s)
            && self.until_ms.is_none_or(|u| v.at_ms < u)
    }
}

/// How far a scan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// How long each received message stays hidden if it is not released (the scan releases
    /// everything at its end; this only matters if the process dies).
    pub hold: Duration,
    /// Stop after this many matching messages.
    pub max_matches: usize,
    /// Stop after this many messages received in all.
    pub max_scanned: usize,
    /// Stop after this many receives in a row bring nothing new.
    pub empty_receives: u32,
    /// Long-poll wait of each receive (1 s makes SQS ask all its servers, not a sample).
    pub wait: Duration,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            hold: Duration::from_secs(60),
            max_matches: usize::MAX,
            max_scanned: 10_000,
            empty_receives: 2,
            wait: Duration::from_secs(1),
        }
    }
}

/// What a scan holds: messages that matched and the others, all hidden until released.
#[derive(Debug, Default)]
pub struct Held {
    /// Matching messages, in the order received.
    pub matched: Vec<Received>,
    /// Non-matching messages.
    pub others: Vec<Received>,
}

/// Receive messages of `queue` until the limits stop it, sorting them by `pred`. Nothing is
/// released: call [`release`] on what you do not delete. On a receive error, everything held
/// so far is released and the error returned.
pub async fn scan<Q: Inspect>(
    q: &Q,
    queue: &str,
    pred: impl Fn(&Received) -> bool,
    limits: ScanLimits,
) -> Result<Held, OpsError> {
    let mut held = Held::default();
    // message id -> (matched?, index): a message seen again (its hold expired) keeps one entry
    // with the newest receipt handle.
    let mut seen: HashMap<String, (bool, usize)> = HashMap::new();
    let mut idle = 0;
    while held.matched.len() < limits.max_matches
        && seen.len() < limits.max_scanned
        && idle < limits.empty_receives
    {
        let got = match q.receive_held(queue, 10, limits.hold, limits.wait).await {
            Ok(g) => g,
            Err(e) => {
                release_all(q, queue, &held).await;
                return Err(e.into());
            }
        };
        let mut new = 0;
        for m in got {
            if let Some(&(matched, i)) = seen.get(&m.message_id) {
                let slot = if matched {
                    &mut held.matched[i]
                } else {
                    &mut held.others[i]
                };
                *slot = m;
                continue;
            }
            new += 1;
            if pred(&m) && held.matched.len() < limits.max_matches {
                seen.insert(m.message_id.clone(), (true, held.matched.len()));
                held.matched.push(m);
            } else {
                seen.insert(m.message_id.clone(), (false, held.others.len()));
                held.others.push(m);
            }
        }
        idle = if new == 0 { idle + 1 } else { 0 };
    }
    Ok(held)
}

/// Make messages visible again at once (visibility 0). Returns how many could not be released
/// (they come back by themselves when their hold expires).
pub async fn release<Q: Queue>(q: &Q, queue: &str, msgs: &[Received]) -> usize {
    if msgs.is_empty() {
        return 0;
    }
    let changes: Vec<VisibilityChange> = msgs
        .iter()
        .map(|m| VisibilityChange {
            receipt_handle: m.receipt_handle.clone(),
            timeout_secs: 0,
        })
        .collect();
    let results = q.change_visibility_batch(queue, &changes).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            queue,
            failed,
            "some peeked messages could not be made visible again; they reappear when their hold expires"
        );
    }
    failed
}

/// Release both halves of a scan.
pub async fn release_all<Q: Queue>(q: &Q, queue: &str, held: &Held) -> usize {
    release(q, queue, &held.matched).await + release(q, queue, &held.others).await
}

/// `squall peek`: the views of up to `max` messages matching `filter`, leaving every message
/// in the queue, visible again.
pub async fn peek<Q: Inspect>(
    q: &Q,
    queue: &str,
    filter: &Filter,
    mut limits: ScanLimits,
    max: usize,
) -> Result<Vec<MessageView>, OpsError> {
    limits.max_matches = max;
    let held = scan(q, queue, |m| filter.matches(&MessageView::of(m)), limits).await?;
    release_all(q, queue, &held).await;
    Ok(held.matched.iter().map(MessageView::of).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Attributes;
    use crate::queue::memory::{MemoryQueues, QueueOptions};
    use crate::queue::{Outgoing, Queue};

    pub(crate) fn received(body: &str, attrs: &[(&str, &str)]) -> Received {
        Received {
            message_id: "m1".into(),
            receipt_handle: "h1".into(),
            body: body.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            receive_count: 1,
            sent_timestamp_ms: 1_000,
            group_id: None,
        }
    }

    const BODY: &str = r#"{"version":1,"id":"evt_1","app_id":"billing","type":"invoice.paid","endpoint":"https://h.example/x","created_at":"2026-01-01T00:00:00Z","payload":{}}"#;

    #[test]
    fn view_prefers_attributes_and_falls_back_to_the_envelope() {
        let v = MessageView::of(&received(BODY, &[]));
        assert_eq!(v.app_id.as_deref(), Some("billing"));
        assert_eq!(v.event_id.as_deref(), Some("evt_1"));
        assert_eq!(v.event_type.as_deref(), Some("invoice.paid"));
        assert_eq!(v.at_ms, 1_000);
        let v = MessageView::of(&received(
            "not json",
            &[
                ("squall-app-id", "shop"),
                ("squall-event-id", "e9"),
                ("squall-reason", "gave up after 3 attempts"),
                ("squall-last-status", "503"),
                ("squall-dead-lettered-at-ms", "5000"),
            ],
        ));
        assert_eq!(v.app_id.as_deref(), Some("shop"));
        assert_eq!(v.event_id.as_deref(), Some("e9"));
        assert_eq!(v.event_type, None);
        assert_eq!(v.last.as_deref(), Some("status 503"));
        assert_eq!(v.at_ms, 5_000);
    }

    #[test]
    fn filter_fields_all_apply() {
        let v = MessageView::of(&received(
            BODY,
            &[
                ("squall-reason", "Status 410 is not retryable"),
                ("squall-dead-lettered-at-ms", "5000"),
            ],
        ));
        let f = |f: Filter| f.matches(&v);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            app: Some("billing".into()),
            event_type: Some("invoice.paid".into()),
            reason: Some("NOT RETRYABLE".into()),
            since_ms: Some(5_000),
            until_ms: Some(5_001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            app: Some("bill".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            event_id: Some("evt_2".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            reason: Some("max_attempts".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            since_ms: Some(5_001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until_ms: Some(5_000),
            ..Filter::default()
        }));
        // No reason attribute: a reason filter never matches.
        let plain = MessageView::of(&received(BODY, &[]));
        assert!(
            !Filter {
                reason: Some("x".into()),
                ..Filter::default()
            }
            .matches(&plain)
        );
    }

    pub(crate) fn outgoing(body: String, attrs: &[(&str, &str)]) -> Outgoing {
        Outgoing {
            body,
            delay_secs: 0,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Attributes>(),
            group_id: None,
        }
    }

    #[tokio::test]
    async fn peek_returns_matches_and_leaves_every_message_visible() {
        let q = MemoryQueues::new();
        q.create_queue("dlq", QueueOptions::default()).unwrap();
        let msgs: Vec<Outgoing> = (0..25)
            .map(|i| {
                let reason = if i % 5 == 0 { "status 410" } else { "gave up" };
                outgoing(format!("body{i}"), &[("squall-reason", reason)])
            })
            .collect();
        q.send_batch("dlq", &msgs).await;
        let limits = ScanLimits {
            wait: Duration::ZERO,
            ..ScanLimits::default()
        };
        let filter = Filter {
            reason: Some("410".into()),
            ..Filter::default()
        };
        let views = peek(&q, "dlq", &filter, limits, 100).await.unwrap();
        assert_eq!(views.len(), 5);
        assert!(
            views
                .iter()
                .all(|v| v.reason.as_deref() == Some("status 410"))
        );
        let c = q.counts("dlq").unwrap();
        assert_eq!((c.total, c.in_flight), (25, 0));
        // --max stops early; still nothing left hidden.
        let views = peek(&q, "dlq", &Filter::default(), limits, 7)
            .await
            .unwrap();
        assert_eq!(views.len(), 7);
        assert_eq!(q.counts("dlq").unwrap().in_flight, 0);
    }
}
