//! Metrics: one record per attempt (and per skip), as JSON messages on the shared metrics
//! queue, sent with SendMessageBatch at the end of each batch.
//!
//! A metrics failure is logged and counted; it never fails, delays or re-delivers an event.
//! Records carry ids, hosts, statuses and plugin identities: never a payload, a header value
//! or a secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::queue::{Attributes, Outgoing, Queue};
pub use squall_core::metrics::{MetricOutcome, MetricRecord};

/// Totals of a sink since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsTotals {
    /// Records accepted by the metrics queue.
    pub sent: u64,
    /// Records the metrics queue refused or that could not be sent (dropped, logged).
    pub failed: u64,
}

/// Sends records to the metrics queue; `None` queue = records are only logged at debug.
pub struct MetricsSink<Q: Queue> {
    queue: Arc<Q>,
    queue_url: Option<String>,
    sent: AtomicU64,
    failed: AtomicU64,
}

impl<Q: Queue> MetricsSink<Q> {
    /// A sink writing to `queue_url` on `queue` (no queue URL: log only).
    pub fn new(queue: Arc<Q>, queue_url: Option<String>) -> MetricsSink<Q> {
        MetricsSink {
            queue,
            queue_url: queue_url.filter(|u| !u.is_empty()),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Send one batch's records (split into SendMessageBatch calls of 10). Never fails:
    /// refused records are logged and counted.
    pub async fn flush(&self, records: &[MetricRecord]) {
        let bodies: Vec<String> = records
            .iter()
            .map(|r| {
                let body = r.to_json();
                tracing::debug!(target: "squall::metrics", record = %body, "metric");
                body
            })
            .collect();
        for (i, e) in self.send(bodies).await {
            let rec = &records[i];
            tracing::warn!(
                event_id = %rec.event_id,
                app_id = %rec.app_id,
                error = %e,
                "metrics record not sent (the event itself is unaffected)"
            );
        }
    }

    /// Send operational events (endpoint health transitions) to the metrics queue. Never
    /// fails: refused events are logged and counted with the records.
    pub async fn flush_events(&self, events: &[squall_core::health::OperationalEvent]) {
        let bodies = events.iter().map(|e| e.to_json()).collect();
        for (i, e) in self.send(bodies).await {
            let ev = &events[i];
            tracing::warn!(app_id = %ev.app_id, kind = %ev.kind, error = %e, "operational event not sent");
        }
    }

    /// Send these bodies, counting what was sent and what failed; the failures by index.
    async fn send(&self, bodies: Vec<String>) -> Vec<(usize, crate::queue::QueueError)> {
        let Some(url) = self.queue_url.as_ref().filter(|_| !bodies.is_empty()) else {
            return Vec::new();
        };
        let messages: Vec<Outgoing> = bodies
            .into_iter()
            .map(|body| Outgoing {
                body,
                delay_secs: 0,
                attributes: Attributes::new(),
                group_id: None,
            })
            .collect();
        let results = self.queue.send_batch(url, &messages).await;
        let failed: Vec<(usize, crate::queue::QueueError)> = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| (i, e)))
            .collect();
        self.failed
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        self.sent
            .fetch_add((messages.len() - failed.len()) as u64, Ordering::Relaxed);
        failed
    }

    /// Totals so far.
    pub fn totals(&self) -> MetricsTotals {
        MetricsTotals {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::{MemoryQueues, QueueOptions};

    fn record(id: &str) -> MetricRecord {
        MetricRecord {
            v: 1,
            event_id: id.into(),
            app_id: "billing".into(),
            event_type: "invoice.paid".into(),
            endpoint_host: "hooks.example.com".into(),
            endpoint_id: None,
            attempt: 2,
            status: Some(503),
            error_kind: None,
            latency_ms: 12,
            outcome: MetricOutcome::Retry,
            retry_in_secs: Some(15),
            transform: "builtin:pass-through".into(),
            signer: "builtin:standard-webhooks".into(),
            retry_policy: "builtin:exponential-backoff".into(),
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_000_012,
        }
    }

    #[test]
    fn record_json_has_every_field_in_order() {
        assert_eq!(
            record("evt_1").to_json(),
            r#"{"v":1,"event_id":"evt_1","app_id":"billing","event_type":"invoice.paid","endpoint_host":"hooks.example.com","attempt":2,"status":503,"error_kind":null,"latency_ms":12,"outcome":"retry","retry_in_secs":15,"transform":"builtin:pass-through","signer":"builtin:standard-webhooks","retry_policy":"builtin:exponential-backoff","started_at_ms":1700000000000,"finished_at_ms":1700000000012}"#
        );
        for o in [
            MetricOutcome::Delivered,
            MetricOutcome::DeadLetter,
            MetricOutcome::PluginError,
        ] {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::Value::String(o.as_str().into())
            );
        }
    }

    #[tokio::test]
    async fn flush_sends_one_message_per_record_and_counts_failures() {
        let qs = Arc::new(MemoryQueues::new());
        qs.create_queue("metrics", QueueOptions::default()).unwrap();
        let sink = MetricsSink::new(qs.clone(), Some("metrics".into()));
        let recs: Vec<MetricRecord> = (0..13).map(|i| record(&format!("e{i}"))).collect();
        sink.flush(&recs).await;
        let stored = qs.messages("metrics").unwrap();
        assert_eq!(stored.len(), 13);
        let first: serde_json::Value = serde_json::from_str(&stored[0].body).unwrap();
        assert_eq!(first["event_id"], "e0");
        assert_eq!(
            sink.totals(),
            MetricsTotals {
                sent: 13,
                failed: 0
            }
        );
        // A missing metrics queue: counted, not propagated.
        let broken = MetricsSink::new(qs, Some("gone".into()));
        broken.flush(&recs[..3]).await;
        assert_eq!(broken.totals(), MetricsTotals { sent: 0, failed: 3 });
    }
}
