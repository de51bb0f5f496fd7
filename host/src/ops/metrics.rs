//! `squall metrics`: drain the metrics queue. The aggregation and the renderers (table,
//! Prometheus, EMF) are `squall_core::metrics::{aggregate, render}`, re-exported here.

pub use squall_core::metrics::aggregate::*;
pub use squall_core::metrics::render::*;

/// What one drain of the metrics queue read.
#[derive(Debug, Default)]
pub struct Drained {
    /// Parsed records.
    pub records: Vec<Record>,
    /// Operational events (endpoint health transitions), in the order read.
    pub events: Vec<squall_core::health::OperationalEvent>,
    /// Messages that were not records (deleted too, counted).
    pub malformed: u64,
}

/// Receive everything currently in the metrics queue (up to `max` messages), parse it and
/// delete it. Records are consumed: run one `squall metrics` per metrics queue. A message is
/// deleted only after it was read into memory; a crash after the delete loses those records
/// (metrics only, never an event).
pub async fn drain<Q: crate::queue::Queue>(
    q: &Q,
    queue: &str,
    max: usize,
) -> Result<Drained, crate::queue::QueueError> {
    let mut out = Drained::default();
    let mut read = 0;
    while read < max {
        let got = q
            .receive(queue, 10, std::time::Duration::from_secs(1))
            .await?;
        if got.is_empty() {
            break;
        }
        read += got.len();
        for m in &got {
            if m.body.contains("\"kind\"")
                && let Ok(e) =
                    serde_json::from_str::<squall_core::health::OperationalEvent>(&m.body)
            {
                out.events.push(e);
                continue;
            }
            match parse_record(&m.body) {
                Ok(r) => out.records.push(r),
                Err(e) => {
                    tracing::warn!(message_id = %m.message_id, error = %e, "metrics queue message ignored");
                    out.malformed += 1;
                }
            }
        }
        let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
        for r in q.delete_batch(queue, &handles).await {
            if let Err(e) = r {
                // It comes back after the visibility timeout and is counted twice: say so.
                tracing::warn!(error = %e, "metrics record not deleted; it will be read again");
            }
        }
    }
    Ok(out)
}
