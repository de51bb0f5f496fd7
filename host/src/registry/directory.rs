//! Applications by queue, read from the registry on first use and kept for the TTL.
//!
//! A queue's first lookup costs one registry read (the `Query` by queue) and, when the
//! application has `ssm:` secrets, one secret read; the application is then built (its plugins
//! loaded, from the bundled precompiled artifacts in the Lambda function) and kept. Within
//! `registry.ttl_secs` later lookups read nothing. After it, the next lookup reads the item and
//! the secrets again: the same version and the same secret digest keep the built application;
//! a new version or a rotated secret rebuild it; a deleted item makes the queue unknown.
//!
//! Failures keep events, never drop them: a queue with no application, an invalid item, a
//! missing secret or a store outage is answered [`Found::Unknown`] or [`Found::Unavailable`],
//! and the caller leaves the events queued (the Lambda function reports them as batch item
//! failures; the queue's redrive policy is the last safety net). An outage on a refresh keeps
//! serving the application already built and asks again a few seconds later. Each unknown
//! queue and each broken item version is logged once.
//!
//! The shared queue's applications are found the same way by their id
//! ([`Directory::lookup_shared`]: one `GetItem` on first use), and answered as not routable when
//! the id is unregistered or names a dedicated application (the caller dead-letters the event).
//!
//! Beyond `registry.max_cached_apps` applications, the least recently used is dropped (its
//! plugin instances and limits with it) and rebuilt on its next event. The plugin runtime's
//! instance pool bounds them too: when an application cannot get instances because the kept
//! applications hold them all, the least recently used tenth are dropped and the build is
//! tried again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{AppRecord, DynamoStore, QueueKey, ReadCounts, RegistryError, SecretStore};
use crate::apps::{AppBuilder, BuildError, BuiltApp};
use crate::config::Config;
use crate::pipeline::Clock;

/// After a failed refresh, how long the application already built is served before the
/// registry is asked again.
const RETRY_AFTER_FAILURE_MS: u64 = 5_000;

/// The plugin runtime's instance pool has no free slot (wasmtime's pooling allocator refuses
/// an instance past `total_component_instances`).
fn pool_exhausted(e: &BuildError) -> bool {
    matches!(e, BuildError::Plugin { message, .. } if message.contains("maximum concurrent limit"))
}

/// What a cache entry is found by: a dedicated application's queue, or a shared one's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Queue(QueueKey),
    App(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Queue(q) => write!(f, "queue {q}"),
            Key::App(id) => write!(f, "shared application {id}"),
        }
    }
}

/// What a lookup on the shared queue found.
#[derive(Clone)]
pub enum SharedFound {
    /// The shared application of that id (its `queue_url` is the shared queue).
    App(Arc<BuiltApp>),
    /// Not an application of the shared tier: its events are dead-lettered.
    Unroutable(squall_core::shared_queue::Unroutable),
    /// The application could not be read or built now; its events stay queued.
    Unavailable(String),
}

/// What a lookup found.
#[derive(Clone)]
pub enum Found {
    /// The application reading the queue.
    App(Arc<BuiltApp>),
    /// No application reads this queue (never registered, or deleted).
    Unknown,
    /// The application could not be read or built now (the reason names the item, key or
    /// store call); its events stay queued.
    Unavailable(String),
}

#[derive(Clone)]
enum State {
    Unknown,
    /// Found by id on the shared queue, but of the dedicated tier.
    Dedicated,
    Ready {
        built: Arc<BuiltApp>,
        version: u64,
        digest: [u8; 32],
        /// The item's endpoints as read (compared on each read: a change replaces the built
        /// application's endpoint table without a rebuild).
        endpoints: Arc<std::collections::BTreeMap<String, String>>,
    },
    Broken {
        reason: String,
    },
}

struct Slot {
    /// When the state was read (clock ms); `None` = never.
    fetched_ms: Option<u64>,
    state: State,
}

struct Entry {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    last_used: AtomicU64,
}

/// The cache of applications by queue.
pub struct Directory {
    config: Config,
    store: DynamoStore,
    secrets: SecretStore,
    builder: AppBuilder,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    capacity: usize,
    reads: Arc<ReadCounts>,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    uses: AtomicU64,
    logged: Mutex<HashSet<String>>,
}

impl Directory {
    /// A directory over `store` and `secrets`, building with `builder`; the TTL and capacity
    /// from `config.registry`, its `[app_defaults]` under every item.
    pub fn new(
        config: Config,
        store: DynamoStore,
        secrets: SecretStore,
        builder: AppBuilder,
        clock: Arc<dyn Clock>,
    ) -> Directory {
        Directory {
            ttl_ms: config.registry.ttl.as_millis() as u64,
            capacity: config.registry.max_cached_apps.max(1),
            config,
            store,
            secrets,
            builder,
            clock,
            reads: Arc::new(ReadCounts::default()),
            entries: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// Reads made so far.
    pub fn reads(&self) -> Arc<ReadCounts> {
        self.reads.clone()
    }

    /// How long a read application is kept before it is read again.
    pub fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ttl_ms)
    }

    /// Every registered application that names a queue (a dedicated one, or a shared one still
    /// draining its old queue; a `Scan` of the registry:
    /// `squall run` lists them every TTL to find new applications, and hands each new one to
    /// [`Directory::lookup_listed`], so it is not read a second time).
    pub async fn listed(&self) -> Result<Vec<AppRecord>, RegistryError> {
        Ok(self
            .store
            .list(&self.reads)
            .await?
            .into_iter()
            .filter(|r| r.queue.is_some())
            .collect())
    }

    /// Applications currently built and kept.
    pub fn cached(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The application reading `queue`.
    pub async fn lookup(&self, queue: &QueueKey) -> Found {
        self.lookup_with(queue, None).await
    }

    /// The application of a record just listed: like [`Directory::lookup`] of its queue, but a
    /// stale or missing entry is built from `record` instead of being read again.
    pub async fn lookup_listed(&self, record: AppRecord) -> Found {
        let Some(queue) = record.queue.clone() else {
            return Found::Unknown;
        };
        self.lookup_with(&queue, Some(record)).await
    }

    /// The shared application `app_id` (an envelope's on the shared queue): one `GetItem` on
    /// first use, kept for the TTL like a queue's application.
    pub async fn lookup_shared(&self, app_id: &str) -> SharedFound {
        use squall_core::shared_queue::Unroutable;
        let key = Key::App(app_id.to_string());
        match &self.slot_state(&key, None).await {
            State::Ready { built, .. } => SharedFound::App(built.clone()),
            State::Unknown => SharedFound::Unroutable(Unroutable::Unknown(app_id.to_string())),
            State::Dedicated => SharedFound::Unroutable(Unroutable::Dedicated(app_id.to_string())),
            State::Broken { reason } => SharedFound::Unavailable(reason.clone()),
        }
    }

    async fn lookup_with(&self, queue: &QueueKey, listed: Option<AppRecord>) -> Found {
        let key = Key::Queue(queue.clone());
        match &self.slot_state(&key, listed).await {
            State::Ready { built, .. } => Found::App(built.clone()),
            State::Unknown | State::Dedicated => {
                self.log_once(format!("unknown {queue}"), || {
                    tracing::error!(queue = %queue, "no registered application reads this queue: its records are left for SQS to redeliver (the redrive policy dead-letters them after maxReceiveCount)")
                });
                Found::Unknown
            }
            State::Broken { reason } => Found::Unavailable(reason.clone()),
        }
    }

    /// The entry's state, read again first when older than the TTL.
    async fn slot_state(&self, queue: &Key, listed: Option<AppRecord>) -> State {
        let entry = self.entry(queue);
        let mut slot = entry.slot.lock().await;
        let now = self.clock.now_ms();
        let fresh = slot
            .fetched_ms
            .is_some_and(|t| now.saturating_sub(t) < self.ttl_ms);
        if !fresh {
            // Boxed: the SDK calls' futures are deep, and a caller's future type (the Lambda
            // handler's) must not carry them inline.
            Box::pin(self.refresh(queue, listed, &mut slot, now)).await;
        }
        slot.state.clone()
    }

    /// The cache entry of `queue`, made if absent; marks it used; drops the least recently
    /// used entries beyond the capacity.
    fn entry(&self, queue: &Key) -> Arc<Entry> {
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(queue) {
            e.last_used.store(tick, Ordering::Relaxed);
            return e.clone();
        }
        while entries.len() >= self.capacity {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    tracing::debug!(queue = %k, "least recently used application dropped from the cache");
                    entries.remove(&k);
                }
                None => break,
            }
        }
        let e = Arc::new(Entry {
            slot: Arc::new(tokio::sync::Mutex::new(Slot {
                fetched_ms: None,
                state: State::Unknown,
            })),
            last_used: AtomicU64::new(tick),
        });
        entries.insert(queue.clone(), e.clone());
        e
    }

    async fn refresh(&self, queue: &Key, listed: Option<AppRecord>, slot: &mut Slot, now: u64) {
        match self.read(queue, listed, slot).await {
            Ok(state) => {
                if let Some(state) = state {
                    slot.state = state;
                }
                slot.fetched_ms = Some(now);
                if let State::Ready { built, .. } = &slot.state {
                    built.app.registered.mark_read(now, self.ttl());
                }
            }
            Err(e) => {
                let reason = e.to_string();
                match &slot.state {
                    State::Ready { .. } => {
                        // Keep delivering with what was read; ask again soon.
                        tracing::warn!(queue = %queue, error = %reason, "registry refresh failed: the application read before is used until the next try");
                        slot.fetched_ms =
                            Some(now.saturating_sub(self.ttl_ms) + RETRY_AFTER_FAILURE_MS);
                    }
                    _ => {
                        self.log_once(format!("broken {queue} {reason}"), || {
                            tracing::error!(queue = %queue, error = %reason, "application unavailable: its records are left for SQS to redeliver")
                        });
                        let transient = matches!(e, RegistryError::Store { .. });
                        slot.state = State::Broken { reason };
                        slot.fetched_ms = Some(if transient {
                            now.saturating_sub(self.ttl_ms) + RETRY_AFTER_FAILURE_MS
                        } else {
                            now
                        });
                    }
                }
            }
        }
    }

    /// Read the queue's item and secrets; `Ok(None)` = unchanged (keep the built application).
    async fn read(
        &self,
        queue: &Key,
        listed: Option<AppRecord>,
        slot: &Slot,
    ) -> Result<Option<State>, RegistryError> {
        let record = match (listed, queue) {
            (Some(r), _) => Some(r),
            (None, Key::Queue(q)) => self.store.by_queue(q, &self.reads).await?,
            (None, Key::App(id)) => self.store.get(id, &self.reads).await?,
        };
        let Some(record) = record else {
            if let State::Ready { built, .. } = &slot.state {
                tracing::info!(app_id = %built.app.id, queue = %queue, "application deleted from the registry: no longer served");
            }
            return Ok(Some(State::Unknown));
        };
        let mut settings = record.app_config(&self.config)?;
        match (queue, record.tier) {
            (Key::Queue(_), super::Tier::Dedicated) => {}
            (Key::App(_), super::Tier::Shared) => {
                // Its copies (re-sends, hops, deferrals) go back to the shared queue.
                settings.queue_url = self.config.sqs.shared_queue_url.clone();
            }
            // Left the shared tier less than 14 days ago: what was sent there is delivered.
            (Key::App(_), super::Tier::Dedicated)
                if record.served_on_shared_queue(self.clock.now_ms()) =>
            {
                settings.queue_url = self.config.sqs.shared_queue_url.clone();
            }
            (Key::App(_), super::Tier::Dedicated) => return Ok(Some(State::Dedicated)),
            // A shared application that still drains the queue it had as a dedicated one.
            (Key::Queue(_), super::Tier::Shared) => {}
        }
        let resolved = self.secrets.resolve(&settings, &self.reads).await?;
        if let State::Ready {
            built,
            version,
            digest,
            endpoints,
        } = &slot.state
            && *version == record.version
            && *digest == resolved.digest
        {
            if **endpoints == record.endpoints {
                return Ok(None);
            }
            // Only the endpoints changed: the events being processed finish with the table
            // they started with; every later one resolves through the new table.
            built.app.registered.replace(settings.endpoints);
            tracing::info!(app_id = %record.id, endpoints = record.endpoints.len(), queue = %queue, "application's endpoints changed in the registry");
            return Ok(Some(State::Ready {
                built: built.clone(),
                version: *version,
                digest: *digest,
                endpoints: Arc::new(record.endpoints),
            }));
        }
        let mut tries = 0;
        let built = loop {
            // Building may compile or load plugins: CPU work that must not hold this worker
            // thread's other tasks (another application's poller) behind it.
            let build = || self.builder.build_late(&settings, resolved.secrets.clone());
            let result = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => build(),
                _ => tokio::task::block_in_place(build),
            };
            match result {
                // Every plugin instance the pool holds is taken by the applications kept
                // (each keeps warm instances of its hooks): the least recently used make room.
                Err(e) if tries < 3 && pool_exhausted(&e) => {
                    tries += 1;
                    let dropped = self.evict_least_used(queue, (self.cached() / 10).max(1));
                    tracing::info!(queue = %queue, dropped, "plugin instance pool full: least recently used applications dropped to make room");
                }
                other => break other?,
            }
        };
        if let Some(health) = &built.app.health {
            // Its endpoints' health is shared with the application's other processes.
            let ttl_ms = u64::from(settings.endpoint_health.shared_ttl_secs) * 1000;
            health.share_through(self.store.clone(), ttl_ms);
        }
        tracing::info!(app_id = %record.id, version = record.version, queue = %queue, "application loaded from the registry");
        Ok(Some(State::Ready {
            built: Arc::new(built),
            version: record.version,
            digest: resolved.digest,
            endpoints: Arc::new(record.endpoints),
        }))
    }

    /// Drop up to `n` least recently used applications other than `keep`'s; how many were.
    fn evict_least_used(&self, keep: &Key, n: usize) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_use: Vec<(u64, Key)> = entries
            .iter()
            .filter(|(k, _)| *k != keep)
            .map(|(k, e)| (e.last_used.load(Ordering::Relaxed), k.clone()))
            .collect();
        by_use.sort_unstable();
        let mut dropped = 0;
        for (_, k) in by_use.into_iter().take(n) {
            entries.remove(&k);
            dropped += 1;
        }
        dropped
    }

    fn log_once(&self, key: String, log: impl FnOnce()) {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of distinct unknown queues cannot grow it without end.
        if logged.len() > 10_000 {
            logged.clear();
        }
        if logged.insert(key) {
            log();
        }
    }
}
