//! Endpoint health at run time: one `squall_core::health::EndpointHealth` per endpoint origin
//! of an application, in this process (`squall run`, one Lambda instance), and the operational
//! events its transitions produce, waiting to be sent to the metrics queue.
//!
//! The decisions are the core's; this keeps the states behind a lock (held for microseconds, no
//! await inside) and logs each transition. With the DynamoDB registry the transitions are shared
//! ([`HealthMap::share_through`]): each is written to the application's item (`health` map,
//! one entry per origin) and every process serving the application reads that map at most
//! `shared_ttl_secs` apart, before it admits an event, so an instance that has not seen the
//! failures itself holds the endpoint's events too. A failed read or write is logged and
//! changes nothing here: each process still decides from what it sees.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

pub use squall_core::health::*;

use crate::registry::DynamoStore;

/// Where an application's shared states live, and what this process has not written yet.
#[derive(Debug)]
struct Shared {
    store: DynamoStore,
    ttl_ms: u64,
    /// When the map was last read, or a read tried (0: never).
    read_at_ms: AtomicU64,
    /// When the map was last read successfully (0: never).
    good_read_ms: AtomicU64,
    /// Single flight for reads and writes.
    busy: tokio::sync::Mutex<()>,
    /// Origin -> the latest transition not written yet.
    pending: Mutex<HashMap<String, SharedState>>,
}

/// Origins kept per application before idle, healthy ones are forgotten.
const MAX_ORIGINS: usize = 4096;

/// An application's endpoint health.
#[derive(Debug)]
pub struct HealthMap {
    app_id: String,
    settings: HealthSettings,
    states: Mutex<HashMap<String, EndpointHealth>>,
    events: Mutex<Vec<OperationalEvent>>,
    shared: OnceLock<Shared>,
}

impl HealthMap {
    /// For `app_id`, with these thresholds.
    pub fn new(app_id: &str, settings: HealthSettings) -> HealthMap {
        HealthMap {
            app_id: app_id.to_string(),
            settings,
            states: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            shared: OnceLock::new(),
        }
    }

    /// Share transitions with the application's other processes through `store`, reading
    /// theirs at most `ttl_ms` apart (once; later calls change nothing).
    pub fn share_through(&self, store: DynamoStore, ttl_ms: u64) {
        let _ = self.shared.set(Shared {
            store,
            ttl_ms,
            read_at_ms: AtomicU64::new(0),
            good_read_ms: AtomicU64::new(0),
            busy: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
        });
    }

    /// Read the shared states if the last read is older than the TTL, and apply them. Without
    /// a store, or fresh: nothing (no await).
    pub async fn refresh(&self, now_ms: u64) {
        self.refresh_since(now_ms, 0).await
    }

    /// Whether a disabled verdict may be stale for an event sent at `sent_ms`: the states are
    /// shared and were last read before it was sent (an operator may have enabled the origin
    /// since; such a verdict is checked against a read made after, never acted on alone).
    pub fn read_before(&self, sent_ms: u64) -> bool {
        self.shared
            .get()
            .is_some_and(|s| s.good_read_ms.load(Ordering::Relaxed) < sent_ms)
    }

    /// [`HealthMap::refresh`], also reading when the last read is older than `since_ms`.
    pub async fn refresh_since(&self, now_ms: u64, since_ms: u64) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let due = |read: u64| {
            read == 0 || read < since_ms || now_ms.saturating_sub(read) >= shared.ttl_ms
        };
        if !due(shared.read_at_ms.load(Ordering::Relaxed)) {
            return;
        }
        let _busy = shared.busy.lock().await;
        if !due(shared.read_at_ms.load(Ordering::Relaxed)) {
            return; // another task read it meanwhile
        }
        // Marked read once the read is done: the tasks that find it due meanwhile wait for it
        // (on `busy`) rather than admit their events with what this process knew before.
        let read = shared.store.read_health(&self.app_id).await;
        shared.read_at_ms.store(now_ms.max(1), Ordering::Relaxed);
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(app_id = %self.app_id, error = %e, "endpoint health: shared states not read (this process decides alone until the next read)");
                return;
            }
        };
        shared.good_read_ms.store(now_ms.max(1), Ordering::Relaxed);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for (origin, text) in read {
            let Some(state) = SharedState::parse(&text) else {
                continue;
            };
            // States that hold nothing make no entry (an entry is made by an event's origin).
            let holds = match state.state {
                SharedKind::Opened | SharedKind::Paused => {
                    state.until_ms.is_some_and(|u| u > now_ms)
                }
                SharedKind::Disabled => true,
                SharedKind::Closed | SharedKind::Enabled => false,
            };
            let entry = match states.get_mut(&origin) {
                Some(e) => e,
                None if holds => states.entry(origin.clone()).or_default(),
                None => continue,
            };
            if entry.apply_shared(&self.settings, &state, now_ms) {
                tracing::info!(app_id = %self.app_id, endpoint = %origin, state = ?state.state, at_ms = state.at_ms, until_ms = state.until_ms, reason = %state.reason, "endpoint health: shared state applied");
            }
        }
    }

    /// Write the transitions not written yet (one `UpdateItem` per origin). Without a store or
    /// with nothing pending: nothing.
    pub async fn publish(&self) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let pending = {
            let mut p = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.is_empty() {
                return;
            }
            std::mem::take(&mut *p)
        };
        let _busy = shared.busy.lock().await;
        for (origin, state) in pending {
            // A disabled endpoint stays disabled until an operator enables it: a late
            // transition of another process does not overwrite that.
            let guard = state.state != SharedKind::Disabled;
            if let Err(e) = shared
                .store
                .put_health(&self.app_id, &origin, &state.to_json(), guard)
                .await
            {
                tracing::warn!(app_id = %self.app_id, endpoint = %origin, error = %e, "endpoint health: transition not shared (the other processes see their own failures only)");
            }
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
            states.retain(|_, h| {
                h.is_open() || h.is_disabled() || h.effective_rate(&self.settings).is_some()
            });
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
        if let Some(shared) = self.shared.get() {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for t in &transitions {
                if let Some(state) = SharedState::of(t, now_ms) {
                    pending.insert(origin.to_string(), state);
                }
            }
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
