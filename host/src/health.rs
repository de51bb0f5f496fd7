//! Endpoint health at run time: one `squall_core::health::EndpointHealth` per endpoint origin
//! of an application, in this process (`squall run`, one Lambda instance), and the operational
//! events its transitions produce, waiting to be sent to the metrics queue.
//!
//! The decisions are the core's; this keeps the states behind a lock (held for microseconds, no
//! await inside) and logs each transition. Not yet shared between processes (issue 20: the
//! registry's store will carry transitions between Lambda instances).

use std::collections::HashMap;
use std::sync::Mutex;

pub use squall_core::health::*;

/// Origins kept per application before idle, healthy ones are forgotten.
const MAX_ORIGINS: usize = 4096;

/// An application's endpoint health.
#[derive(Debug)]
pub struct HealthMap {
    app_id: String,
    settings: HealthSettings,
    states: Mutex<HashMap<String, EndpointHealth>>,
    events: Mutex<Vec<OperationalEvent>>,
}

impl HealthMap {
    /// For `app_id`, with these thresholds.
    pub fn new(app_id: &str, settings: HealthSettings) -> HealthMap {
        HealthMap {
            app_id: app_id.to_string(),
            settings,
            states: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
        }
    }

    /// The thresholds.
    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// May an event go to `origin` now?
    pub fn admit(&self, origin: &str, now_ms: u64) -> Admit {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if !states.contains_key(origin) && states.len() >= MAX_ORIGINS {
            states.retain(|_, h| h.is_open() || h.effective_rate(&self.settings).is_some());
        }
        states
            .entry(origin.to_string())
            .or_default()
            .admit(&self.settings, now_ms)
    }

    /// What an attempt at `origin` found; transitions are logged and queued as events.
    pub fn record(&self, origin: &str, observed: Observed, now_ms: u64) {
        let transitions = {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            states
                .entry(origin.to_string())
                .or_default()
                .record(&self.settings, observed, now_ms)
        };
        if transitions.is_empty() {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for t in &transitions {
            let e = OperationalEvent::of(&self.app_id, origin, t, now_ms);
            tracing::warn!(app_id = %self.app_id, endpoint = %origin, kind = %e.kind, reason = %e.reason, until_ms = e.until_ms, rate = e.rate, "endpoint health changed");
            events.push(e);
        }
    }

    /// The events not sent yet.
    pub fn take_events(&self) -> Vec<OperationalEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
