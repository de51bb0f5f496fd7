//! OpenTelemetry traces of delivery attempts (`[traces]`): the spans of finished attempts
//! (`squall_core::trace`), held in memory and sent as one OTLP/HTTP JSON request per export to
//! the configured collector. `squall run` exports after each batch, the Lambda function before
//! each invocation returns. Best effort, never in the delivery path: an export that fails is
//! logged with the number of spans dropped; at most [`MAX_HELD`] spans wait between exports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use squall_core::trace::*;

/// Spans held between exports before new ones are dropped (counted).
pub const MAX_HELD: usize = 10_000;

/// The process's trace exporter.
#[derive(Debug)]
pub struct Tracer {
    url: String,
    service_name: String,
    client: reqwest::Client,
    held: Mutex<Vec<Span>>,
    /// Serialises exports, so spans leave in the order they were taken.
    exporting: tokio::sync::Mutex<()>,
    exported: AtomicU64,
    dropped: AtomicU64,
}

impl Tracer {
    /// An exporter for `config.traces`, if an endpoint is configured.
    pub fn from_config(config: &crate::config::Config) -> Option<Tracer> {
        let t = &config.traces;
        let url = t.otlp_endpoint.clone()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(t.timeout_ms))
            .build()
            .ok()?;
        Some(Tracer {
            url,
            service_name: t.service_name.clone(),
            client,
            held: Mutex::new(Vec::new()),
            exporting: tokio::sync::Mutex::new(()),
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Hold a finished attempt's span until the next export.
    pub fn record(&self, span: Span) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() >= MAX_HELD {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        held.push(span);
    }

    /// Send every span held (one request); nothing held: nothing sent.
    pub async fn export(&self) {
        let _one = self.exporting.lock().await;
        let spans = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        if spans.is_empty() {
            return;
        }
        let body = otlp_json(&self.service_name, &spans);
        let result = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                self.exported
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
            }
            other => {
                let dropped = self
                    .dropped
                    .fetch_add(spans.len() as u64, Ordering::Relaxed)
                    + spans.len() as u64;
                let why = match other {
                    Ok(r) => format!("collector answered {}", r.status()),
                    Err(e) => format!("{e}"),
                };
                tracing::warn!(url = %self.url, spans = spans.len(), dropped_in_all = dropped, error = %why, "trace export failed: spans dropped");
            }
        }
    }

    /// Spans exported and dropped since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.exported.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}
