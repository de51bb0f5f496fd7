//! `squall run`: long-polling every application queue.
//!
//! [`Runner`] long-polls each application's queue, processes messages concurrently within the
//! application's limit, acts on them with the [`Actor`](crate::actor::Actor), flushes metrics at
//! the end of each batch, backs off on OverLimit (and sends retries by re-send meanwhile), and on
//! shutdown stops receiving, finishes what is in flight, acts and flushes: nothing is lost. Its
//! counters are [`stats`]. The applications it drives are built by [`crate::apps`].
//!
//! The stack's shared queue ([`Runner::with_shared_queue`]) has one poller of its own: it
//! receives while fewer than `runner.shared_concurrency` of its messages are in the engine's
//! hands, finds each message's application by the envelope's `app_id` (dead-lettering one that
//! names no shared application), and runs it within that application's `max_concurrency`. A
//! message whose application already holds twice its `max_concurrency` (running or waiting for
//! a slot) is deferred at once (a copy in 10-30 s, no attempt counted, as for a saturated
//! endpoint), so one application's backlog cannot fill the poller's slots with messages waiting
//! on it: the fair queue gives the freed slots to the other applications' messages.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::actor::{ActMode, Actor};
use crate::apps::BuiltApp;
use crate::config::Config;
use crate::metrics::{MetricRecord, MetricsSink, MetricsTotals};
use crate::pipeline::{self, Action, App, ProcessOptions, SystemClock};
use crate::queue::{Queue, QueueError, Received};
use crate::registry::{Directory, Found, QueueKey};

pub mod stats;

pub use stats::{RunCounts, RunStats};

/// Settings of the runner (from `[sqs]` and `[runner]` in the config).
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// ReceiveMessage WaitTimeSeconds.
    pub wait: Duration,
    /// Messages per receive (1..=10).
    pub receive_batch: usize,
    /// Longest wait for in-flight work at shutdown.
    pub shutdown_grace: Duration,
    /// The shared dead-letter queue.
    pub dead_letter_queue_url: String,
    /// The shared metrics queue (`None`: records are only logged at debug).
    pub metrics_queue_url: Option<String>,
    /// Messages of the shared queue in the engine's hands at once.
    pub shared_concurrency: usize,
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Message counts.
    pub counts: RunCounts,
    /// Metrics records sent / failed.
    pub metrics: MetricsTotals,
    /// False if the shutdown grace ran out with batches still in flight (their messages
    /// reappear after their visibility timeout: nothing is lost, but it was not clean).
    pub drained: bool,
}

struct AppState {
    /// The application as last built (a registry application is swapped for its rebuilt self
    /// when its settings or secrets change).
    app: std::sync::RwLock<Arc<App>>,
    /// A registry application's queue: the poller asks the directory before each receive.
    registry: Option<(Arc<Directory>, QueueKey)>,
    slots: Arc<Semaphore>,
    /// Re-send mode ends at this many ms after `epoch` (0: off). Set on OverLimit.
    resend_until_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

impl AppState {
    fn new(built: &BuiltApp, registry: Option<(Arc<Directory>, QueueKey)>) -> AppState {
        AppState {
            slots: Arc::new(Semaphore::new(built.max_concurrency.max(1))),
            app: std::sync::RwLock::new(built.app.clone()),
            registry,
            resend_until_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The application as it is now.
    fn current(&self) -> Arc<App> {
        self.app.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A registry application: its current build, or `None` once it is no longer registered
    /// (the poller then stops). An application that cannot be read now keeps its last build.
    async fn refresh(&self) -> Option<Arc<App>> {
        let Some((directory, key)) = &self.registry else {
            return Some(self.current());
        };
        match directory.lookup(key).await {
            Found::App(b) => {
                let mut app = self.app.write().unwrap_or_else(|p| p.into_inner());
                if !Arc::ptr_eq(&app, &b.app) {
                    *app = b.app.clone();
                }
                Some(app.clone())
            }
            Found::Unknown => None,
            Found::Unavailable(_) => Some(self.current()),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// After an OverLimit, every retry goes by re-send for `visibility_backoff_max_secs`:
    /// the longest a visibility-parked message stays in flight, so the in-flight count drains.
    fn enter_resend_mode(&self) {
        let until =
            self.elapsed_ms() + self.current().visibility_backoff_max_secs as u64 * 1000 + 1;
        self.resend_until_ms.store(until, Ordering::Relaxed);
    }

    fn force_resend(&self) -> bool {
        let until = self.resend_until_ms.load(Ordering::Relaxed);
        until != 0 && self.elapsed_ms() < until
    }
}

struct Shared<Q: Queue> {
    queue: Arc<Q>,
    actor: Actor<Q>,
    metrics: MetricsSink<Q>,
    stats: Arc<RunStats>,
    settings: RunnerSettings,
}

/// `squall run`: long-polls every application queue until shut down.
pub struct Runner<Q: Queue> {
    shared: Arc<Shared<Q>>,
    apps: Vec<Arc<AppState>>,
    /// With a registry: its applications are discovered and polled while the runner runs.
    directory: Option<Arc<Directory>>,
    /// The shared queue's URL and where its applications are found.
    shared_queue: Option<(String, SharedApps)>,
}

/// Where the shared queue's poller finds an application by id.
pub enum SharedApps {
    /// The registry's shared-tier applications.
    Registry(Arc<Directory>),
    /// Applications built beforehand (tests, benches): each's `queue_url` must be the shared
    /// queue's.
    Fixed(std::collections::HashMap<String, BuiltApp>),
}

const RECEIVE_BACKOFF_START: Duration = Duration::from_secs(1);
const RECEIVE_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl<Q: Queue> Runner<Q> {
    /// A runner over `queue` for these applications.
    pub fn new(queue: Arc<Q>, apps: Vec<BuiltApp>, settings: RunnerSettings) -> Runner<Q> {
        let shared = Arc::new(Shared {
            actor: Actor::new(
                queue.clone(),
                settings.dead_letter_queue_url.clone(),
                ActMode::Runner,
            ),
            metrics: MetricsSink::new(queue.clone(), settings.metrics_queue_url.clone()),
            queue,
            stats: Arc::new(RunStats::default()),
            settings,
        });
        let apps = apps
            .iter()
            .map(|a| Arc::new(AppState::new(a, None)))
            .collect();
        Runner {
            shared,
            apps,
            directory: None,
            shared_queue: None,
        }
    }

    /// Poll the shared queue `url` too, its applications found in `apps`.
    pub fn with_shared_queue(mut self, url: String, apps: SharedApps) -> Runner<Q> {
        self.shared_queue = Some((url, apps));
        self
    }

    /// A runner over the applications of a registry: every `registry.ttl_secs` it lists the
    /// registry and starts polling each new application's queue; a poller whose application
    /// is no longer registered stops receiving, finishes its batches in flight and ends; a
    /// changed application is rebuilt by the directory and used from the next receive.
    pub fn with_registry(
        queue: Arc<Q>,
        directory: Arc<Directory>,
        settings: RunnerSettings,
    ) -> Runner<Q> {
        let mut runner = Runner::new(queue, Vec::new(), settings);
        runner.directory = Some(directory);
        runner
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<RunStats> {
        self.shared.stats.clone()
    }

    /// Run until `shutdown` completes, then stop receiving, finish in-flight batches (within
    /// the grace period), act on them and flush their metrics.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> RunReport {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every poller and batch task holds a clone; when all are dropped, all work is done.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        for app in &self.apps {
            let a = app.current();
            tracing::info!(app_id = %a.id, queue = %a.queue_url, "polling");
            tokio::spawn(poll(
                self.shared.clone(),
                app.clone(),
                stop_rx.clone(),
                done_tx.clone(),
            ));
        }
        if let Some((url, apps)) = self.shared_queue {
            tracing::info!(queue = %url, "polling the shared queue");
            tokio::spawn(poll_shared(
                self.shared.clone(),
                Arc::new(SharedPoller {
                    url,
                    apps,
                    limits: std::sync::Mutex::new(std::collections::HashMap::new()),
                }),
                stop_rx.clone(),
                done_tx.clone(),
            ));
        }
        if let Some(directory) = &self.directory {
            tokio::spawn(discover(
                self.shared.clone(),
                directory.clone(),
                stop_rx.clone(),
                done_tx.clone(),
            ));
        }
        drop(done_tx);
        shutdown.await;
        tracing::info!("shutting down: no more receives; finishing in-flight deliveries");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.shared.settings.shutdown_grace, done_rx.recv())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                grace_secs = self.shared.settings.shutdown_grace.as_secs(),
                "shutdown grace ran out with batches in flight; their messages reappear after their visibility timeout"
            );
        }
        let report = RunReport {
            counts: self.shared.stats.snapshot(),
            metrics: self.shared.metrics.totals(),
            drained,
        };
        tracing::info!(?report, "stopped");
        report
    }
}

impl RunnerSettings {
    /// From `[sqs]` and `[runner]`.
    pub fn from_config(config: &Config) -> RunnerSettings {
        RunnerSettings {
            wait: Duration::from_secs(config.sqs.wait_time_secs as u64),
            receive_batch: config.sqs.receive_batch as usize,
            shutdown_grace: Duration::from_secs(config.runner.shutdown_grace_secs),
            dead_letter_queue_url: config.sqs.dead_letter_queue_url.clone().unwrap_or_default(),
            metrics_queue_url: config.sqs.metrics_queue_url.clone(),
            shared_concurrency: config.runner.shared_concurrency as usize,
        }
    }
}

/// The shared queue's poller state.
struct SharedPoller {
    url: String,
    apps: SharedApps,
    /// Per application id: its slots (`max_concurrency`) and how many of its messages the
    /// poller holds (running or waiting for a slot).
    limits: std::sync::Mutex<std::collections::HashMap<String, Arc<SharedLimit>>>,
}

struct SharedLimit {
    slots: Arc<Semaphore>,
    max: usize,
    held: AtomicU64,
}

/// Where one shared-queue message goes.
enum SharedRoute {
    App(Arc<App>, usize),
    Unroutable(squall_core::shared_queue::Unroutable),
    /// The registry cannot answer now: the message is left to reappear.
    Unavailable(String),
}

impl SharedPoller {
    async fn route(&self, msg: &Received) -> SharedRoute {
        use squall_core::shared_queue::{Unroutable, app_id_of};
        let app_id = match app_id_of(&msg.body) {
            Ok(id) => id,
            Err(why) => return SharedRoute::Unroutable(why),
        };
        match &self.apps {
            SharedApps::Fixed(apps) => match apps.get(&app_id) {
                Some(b) => SharedRoute::App(b.app.clone(), b.max_concurrency.max(1)),
                None => SharedRoute::Unroutable(Unroutable::Unknown(app_id)),
            },
            SharedApps::Registry(d) => match d.lookup_shared(&app_id).await {
                crate::registry::SharedFound::App(b) => {
                    SharedRoute::App(b.app.clone(), b.max_concurrency.max(1))
                }
                crate::registry::SharedFound::Unroutable(why) => SharedRoute::Unroutable(why),
                crate::registry::SharedFound::Unavailable(r) => SharedRoute::Unavailable(r),
            },
        }
    }

    /// The application's limit (made on first use; a changed `max_concurrency` takes effect
    /// when none of its messages is held).
    fn limit(&self, app_id: &str, max: usize) -> Arc<SharedLimit> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(SharedLimit {
                slots: Arc::new(Semaphore::new(max)),
                max,
                held: AtomicU64::new(0),
            })
        };
        let l = limits.entry(app_id.to_string()).or_insert_with(fresh);
        if l.max != max && l.held.load(Ordering::Relaxed) == 0 {
            *l = fresh();
        }
        l.clone()
    }
}

/// Poll the shared queue: receive while slots are free, route each message by its `app_id`,
/// run it within its application's limit (or defer it when the application holds twice its
/// limit already), act on the batch.
async fn poll_shared<Q: Queue>(
    shared: Arc<Shared<Q>>,
    poller: Arc<SharedPoller>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let batch = shared
        .settings
        .receive_batch
        .clamp(1, crate::queue::MAX_BATCH);
    let slots = Arc::new(Semaphore::new(shared.settings.shared_concurrency.max(1)));
    let mut backoff = RECEIVE_BACKOFF_START;
    loop {
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.changed() => break,
        };
        let mut taken = vec![first];
        while taken.len() < batch {
            match slots.clone().try_acquire_owned() {
                Ok(p) => taken.push(p),
                Err(_) => break,
            }
        }
        let received = tokio::select! {
            r = shared.queue.receive(&poller.url, taken.len(), shared.settings.wait) => r,
            _ = stop.changed() => break,
        };
        match received {
            Ok(msgs) => {
                backoff = RECEIVE_BACKOFF_START;
                if msgs.is_empty() {
                    continue;
                }
                shared.stats.received(msgs.len());
                taken.truncate(msgs.len());
                tokio::spawn(run_shared_batch(
                    shared.clone(),
                    poller.clone(),
                    msgs,
                    taken,
                    done.clone(),
                ));
            }
            Err(e) => {
                drop(taken);
                shared
                    .stats
                    .receive_failed(matches!(e, QueueError::OverLimit { .. }));
                tracing::warn!(queue = %poller.url, error = %e, retry_in_ms = backoff.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(RECEIVE_BACKOFF_MAX);
            }
        }
    }
    drop(done);
}

async fn run_shared_batch<Q: Queue>(
    shared: Arc<Shared<Q>>,
    poller: Arc<SharedPoller>,
    msgs: Vec<Received>,
    slots: Vec<OwnedSemaphorePermit>,
    done: mpsc::Sender<()>,
) {
    let msgs: Vec<Arc<Received>> = msgs.into_iter().map(Arc::new).collect();
    // Endpoint health transitions of the batch's applications, sent with its records.
    let events: Arc<std::sync::Mutex<Vec<crate::health::OperationalEvent>>> = Arc::default();
    // The trace exporter (one per process, shared by every application), when traces are on.
    let tracer: Arc<std::sync::OnceLock<Arc<crate::traces::Tracer>>> = Arc::default();
    let mut set = tokio::task::JoinSet::new();
    for (i, (msg, slot)) in msgs.iter().cloned().zip(slots).enumerate() {
        let poller = poller.clone();
        let shared_events = events.clone();
        let shared_tracer = tracer.clone();
        set.spawn(async move {
            let p = match poller.route(&msg).await {
                SharedRoute::Unroutable(why) => Some((
                    why.app_id().unwrap_or("?").to_string(),
                    squall_core::shared_queue::dead_letter(
                        &why,
                        &poller.url,
                        &msg,
                        crate::pipeline::Clock::now_ms(&SystemClock),
                    ),
                )),
                SharedRoute::Unavailable(reason) => {
                    tracing::warn!(message_id = %msg.message_id, %reason, "shared application unavailable: the message will reappear");
                    None
                }
                SharedRoute::App(app, max) => {
                    let limit = poller.limit(&app.id, max);
                    let held = limit.held.fetch_add(1, Ordering::Relaxed) as usize;
                    let p = if held >= 2 * limit.max {
                        squall_core::shared_queue::deferred(&msg, fastrand::f64())
                    } else {
                        None
                    };
                    let p = match p {
                        Some(p) => {
                            tracing::debug!(app_id = %app.id, message_id = %msg.message_id, "application saturated on the shared queue: deferred");
                            p
                        }
                        None => {
                            let _slot = limit.slots.clone().acquire_owned().await;
                            pipeline::process(&app, &msg, &SystemClock, ProcessOptions::default())
                                .await
                        }
                    };
                    limit.held.fetch_sub(1, Ordering::Relaxed);
                    if let Some(h) = &app.health {
                        shared_events.lock().unwrap_or_else(|e| e.into_inner()).extend(h.take_events());
                    }
                    if let Some(t) = &app.tracer {
                        let _ = shared_tracer.set(t.clone());
                    }
                    Some((app.id.clone(), p))
                }
            };
            drop(slot);
            (i, p)
        });
    }
    let mut processed: Vec<Option<(String, pipeline::Processed)>> = vec![None; msgs.len()];
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, p)) => processed[i] = p,
            Err(e) => tracing::error!(queue = %poller.url, error = %e, "message task failed"),
        }
    }
    let records: Vec<MetricRecord> = processed
        .iter_mut()
        .flatten()
        .flat_map(|(_, p)| std::mem::take(&mut p.metrics))
        .collect();
    let mut acted: Vec<(&Received, &Action, &str)> = Vec::new();
    for (m, p) in msgs.iter().zip(&processed) {
        if let Some((app_id, p)) = p {
            acted.push((m, &p.action, app_id));
        }
    }
    let acted_msgs: Vec<&Received> = acted.iter().map(|a| a.0).collect();
    let actions: Vec<&Action> = acted.iter().map(|a| a.1).collect();
    let results = shared.actor.apply(&poller.url, &acted_msgs, &actions).await;
    for ((m, a, app_id), r) in acted.iter().zip(results) {
        match r {
            Ok(()) => {
                shared.stats.acted(a);
                log_action(app_id, m, a);
            }
            Err(e) => {
                shared.stats.act_failed();
                tracing::warn!(app_id, message_id = %m.message_id, error = %e, "action failed; the message will reappear");
            }
        }
    }
    shared.metrics.flush(&records).await;
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
    shared.metrics.flush_events(&events).await;
    if let Some(t) = tracer.get() {
        t.export().await;
    }
    drop(done);
}

async fn poll<Q: Queue>(
    shared: Arc<Shared<Q>>,
    app: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let batch = shared
        .settings
        .receive_batch
        .clamp(1, crate::queue::MAX_BATCH);
    let mut backoff = RECEIVE_BACKOFF_START;
    loop {
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            p = app.slots.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.changed() => break,
        };
        let mut slots = vec![first];
        while slots.len() < batch {
            match app.slots.clone().try_acquire_owned() {
                Ok(p) => slots.push(p),
                Err(_) => break,
            }
        }
        let Some(current) = app.refresh().await else {
            tracing::info!(app_id = %app.current().id, "application no longer registered: polling stopped (batches in flight finish)");
            break;
        };
        let received = tokio::select! {
            r = shared.queue.receive(&current.queue_url, slots.len(), shared.settings.wait) => r,
            _ = stop.changed() => break,
        };
        match received {
            Ok(msgs) => {
                backoff = RECEIVE_BACKOFF_START;
                if msgs.is_empty() {
                    continue;
                }
                shared.stats.received(msgs.len());
                slots.truncate(msgs.len());
                // The receive may have waited up to the long-poll time: read the registry
                // again if its TTL ran out meanwhile, so the batch resolves its endpoints
                // (and settings) as they are now, not as they were when the poll began.
                let _ = app.refresh().await;
                tokio::spawn(run_batch(
                    shared.clone(),
                    app.clone(),
                    msgs,
                    slots,
                    done.clone(),
                ));
            }
            Err(e) => {
                drop(slots);
                let over_limit = matches!(e, QueueError::OverLimit { .. });
                shared.stats.receive_failed(over_limit);
                if over_limit {
                    app.enter_resend_mode();
                }
                tracing::warn!(app_id = %current.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(RECEIVE_BACKOFF_MAX);
            }
        }
    }
    drop(done);
}

async fn run_batch<Q: Queue>(
    shared: Arc<Shared<Q>>,
    app: Arc<AppState>,
    msgs: Vec<Received>,
    slots: Vec<OwnedSemaphorePermit>,
    done: mpsc::Sender<()>,
) {
    let opts = ProcessOptions {
        force_resend: app.force_resend(),
    };
    let msgs: Vec<Arc<Received>> = msgs.into_iter().map(Arc::new).collect();
    let current = app.current();
    let mut set = tokio::task::JoinSet::new();
    for (i, (msg, slot)) in msgs.iter().cloned().zip(slots).enumerate() {
        let a = current.clone();
        set.spawn(async move {
            let p = pipeline::process(&a, &msg, &SystemClock, opts).await;
            drop(slot);
            (i, p)
        });
    }
    let mut processed: Vec<Option<pipeline::Processed>> = vec![None; msgs.len()];
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, p)) => processed[i] = Some(p),
            // process() does not panic; if it ever did, the message is left to reappear.
            Err(e) => tracing::error!(app_id = %current.id, error = %e, "message task failed"),
        }
    }
    // The records move out (a record is a dozen strings: cloning them showed in profiles).
    let records: Vec<MetricRecord> = processed
        .iter_mut()
        .flatten()
        .flat_map(|p| std::mem::take(&mut p.metrics))
        .collect();
    let (mut acted_msgs, mut actions): (Vec<&Received>, Vec<&Action>) = (Vec::new(), Vec::new());
    for (m, p) in msgs.iter().zip(&processed) {
        if let Some(p) = p {
            acted_msgs.push(m);
            actions.push(&p.action);
        }
    }
    let results = shared
        .actor
        .apply(&current.queue_url, &acted_msgs, &actions)
        .await;
    for ((m, a), r) in acted_msgs.iter().zip(&actions).zip(results) {
        match r {
            Ok(()) => {
                shared.stats.acted(a);
                log_action(&current.id, m, a);
            }
            Err(e) => {
                shared.stats.act_failed();
                tracing::warn!(app_id = %current.id, message_id = %m.message_id, error = %e, "action failed; the message will reappear");
            }
        }
    }
    shared.metrics.flush(&records).await;
    if let Some(h) = &current.health {
        shared.metrics.flush_events(&h.take_events()).await;
    }
    if let Some(t) = &current.tracer {
        t.export().await;
    }
    drop(done);
}

/// The registry's applications, polled as they appear: every TTL the registry is listed and a
/// poller started for each queue not yet polled. A poller ends when its application is gone.
async fn discover<Q: Queue>(
    shared: Arc<Shared<Q>>,
    directory: Arc<Directory>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let mut polled: std::collections::HashMap<QueueKey, tokio::task::JoinHandle<()>> =
        std::collections::HashMap::new();
    loop {
        polled.retain(|_, h| !h.is_finished());
        match directory.listed().await {
            Ok(records) => {
                for record in records {
                    let Some(key) = record.queue.clone() else {
                        continue;
                    };
                    if polled.contains_key(&key) {
                        continue;
                    }
                    match directory.lookup_listed(record).await {
                        Found::App(built) => {
                            tracing::info!(app_id = %built.app.id, queue = %built.app.queue_url, "polling (registry)");
                            let state = Arc::new(AppState::new(
                                &built,
                                Some((directory.clone(), key.clone())),
                            ));
                            let h = tokio::spawn(poll(
                                shared.clone(),
                                state,
                                stop.clone(),
                                done.clone(),
                            ));
                            polled.insert(key, h);
                        }
                        // Logged by the directory; asked again at the next listing.
                        Found::Unknown | Found::Unavailable(_) => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing the registry failed; trying again after the TTL")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(directory.ttl()) => {}
            _ = stop.changed() => break,
        }
    }
    drop(done);
}

fn log_action(app_id: &str, m: &Received, a: &Action) {
    match a {
        Action::Delete { why } => {
            tracing::debug!(app_id, message_id = %m.message_id, ?why, "done")
        }
        Action::RetryByVisibility { secs } => {
            tracing::info!(app_id, message_id = %m.message_id, retry_in_secs = secs, "retry by visibility")
        }
        Action::Resend {
            delay_secs, hop, ..
        } => {
            tracing::info!(app_id, message_id = %m.message_id, delay_secs, hop, "re-sent with delay")
        }
        Action::DeadLetter { reason, attributes } => {
            let endpoint_id = attributes.get(pipeline::ATTR_ENDPOINT_ID);
            tracing::warn!(app_id, message_id = %m.message_id, endpoint_id, %reason, "dead-lettered")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;

    use super::*;
    use crate::hooks::{Outcome, Request};
    use crate::pipeline::{Deliver, Delivery, EndpointLimiter};
    use crate::queue::{Attributes, Outgoing};
    use crate::retry::Backoff;
    use crate::testing::{TestApp, queues};

    /// Fails each event id `fail_first` times with 503, then answers 200.
    struct Flaky {
        fail_first: usize,
        seen: Mutex<Vec<Request>>,
    }
    impl Deliver for Flaky {
        fn deliver<'a>(
            &'a self,
            request: &'a Request,
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            let mut seen = self.seen.lock().unwrap();
            let id = |r: &Request| {
                r.headers
                    .iter()
                    .find(|(n, _)| n == "webhook-id")
                    .map(|(_, v)| v.clone())
            };
            let before = seen.iter().filter(|r| id(r) == id(request)).count();
            seen.push(request.clone());
            let status = if before < self.fail_first { 503 } else { 200 };
            Box::pin(async move {
                Delivery {
                    outcome: Outcome::Response {
                        status,
                        headers: vec![],
                    },
                    latency: Duration::from_millis(1),
                }
            })
        }
    }

    /// Retries after 1 s, then 2 s, 4 s...
    fn fast_backoff() -> Backoff {
        Backoff {
            initial_delay_secs: 1,
            multiplier: 2.0,
            jitter: 0.0,
            ..Backoff::default()
        }
    }

    fn event(id: &str) -> Outgoing {
        let env = crate::envelope::Envelope::new_json(
            id,
            "billing",
            "invoice.paid",
            "https://hooks.example.com/in",
            1_700_000_000_000,
            &serde_json::json!({"n": id}),
        );
        Outgoing {
            body: String::from_utf8(env.encode()).unwrap(),
            delay_secs: 0,
            attributes: Attributes::new(),
            group_id: None,
        }
    }

    fn settings() -> RunnerSettings {
        RunnerSettings {
            wait: Duration::from_secs(20),
            receive_batch: 10,
            shutdown_grace: Duration::from_secs(30),
            dead_letter_queue_url: "dlq".into(),
            metrics_queue_url: Some("metrics".into()),
            shared_concurrency: 64,
        }
    }

    async fn until(stats: Arc<RunStats>, done: impl Fn(RunCounts) -> bool) {
        while !done(stats.snapshot()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fails_twice_then_delivered_once_with_the_same_webhook_id() {
        let qs = queues(1000);
        let flaky = Arc::new(Flaky {
            fail_first: 2,
            seen: Mutex::new(vec![]),
        });
        let mut batch: Vec<Outgoing> = (0..24).map(|i| event(&format!("ok_{i}"))).collect();
        batch.push(event("evt_flaky"));
        qs.send_batch("app", &batch).await;
        let runner = Runner::new(
            qs.clone(),
            vec![
                TestApp::new("app", flaky.clone())
                    .backoff(fast_backoff())
                    .built(8),
            ],
            settings(),
        );
        let stats = runner.stats();
        let report = runner.run(until(stats, |c| c.delivered == 25)).await;
        assert!(report.drained);
        assert_eq!(report.counts.delivered, 25);
        // Every event failed twice first (1 s, then 2 s by visibility).
        assert_eq!(report.counts.retried_by_visibility, 50);
        assert_eq!(report.counts.dead_lettered, 0);
        assert_eq!(qs.counts("app").unwrap().total, 0);
        let seen = flaky.seen.lock().unwrap();
        let flaky_reqs: Vec<&Request> = seen
            .iter()
            .filter(|r| {
                r.headers
                    .iter()
                    .any(|(n, v)| n == "webhook-id" && v == "evt_flaky")
            })
            .collect();
        assert_eq!(flaky_reqs.len(), 3);
        // One metrics record per attempt: 75, attempts 1..=3 for the flaky one.
        let metrics: Vec<serde_json::Value> = qs
            .messages("metrics")
            .unwrap()
            .iter()
            .map(|m| serde_json::from_str(&m.body).unwrap())
            .collect();
        assert_eq!(metrics.len(), 75);
        assert_eq!(report.metrics.sent, 75);
        let mut attempts: Vec<(u64, String)> = metrics
            .iter()
            .filter(|m| m["event_id"] == "evt_flaky")
            .map(|m| {
                (
                    m["attempt"].as_u64().unwrap(),
                    m["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        attempts.sort();
        assert_eq!(
            attempts,
            [
                (1, "retry".into()),
                (2, "retry".into()),
                (3, "delivered".to_string())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_limit_switches_retries_to_resend_and_loses_nothing() {
        // At most 3 in flight; every delivery fails with a 5 s backoff.
        let qs = queues(3);
        let failing = Arc::new(Flaky {
            fail_first: usize::MAX,
            seen: Mutex::new(vec![]),
        });
        let a = TestApp::new("app", failing.clone()).backoff(Backoff {
            initial_delay_secs: 5,
            multiplier: 1.0,
            jitter: 0.0,
            ..Backoff::default()
        });
        qs.send_batch(
            "app",
            &(0..6).map(|i| event(&format!("e{i}"))).collect::<Vec<_>>(),
        )
        .await;
        let runner = Runner::new(qs.clone(), vec![a.built(10)], settings());
        let stats = runner.stats();
        let report = runner
            .run(until(stats, |c| c.over_limit >= 1 && c.resent >= 6))
            .await;
        assert!(report.counts.over_limit >= 1);
        assert!(report.counts.resent >= 6, "{:?}", report.counts);
        assert_eq!(report.counts.dead_lettered, 0);
        // Nothing lost: six events are still queued (copies or parked originals).
        assert_eq!(qs.counts("app").unwrap().total, 6);
    }

    fn shared_event(id: &str, app: &str) -> Outgoing {
        let env = crate::envelope::Envelope::new_json(
            id,
            app,
            "invoice.paid",
            "https://hooks.example.com/in",
            1_700_000_000_000,
            &serde_json::json!({"n": id}),
        );
        Outgoing {
            body: String::from_utf8(env.encode()).unwrap(),
            delay_secs: 0,
            attributes: Attributes::new(),
            group_id: Some(app.into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_queue_routes_by_app_id_keeps_group_ids_and_dead_letters_strangers() {
        let qs = queues(1000);
        let flaky = Arc::new(Flaky {
            fail_first: 1,
            seen: Mutex::new(vec![]),
        });
        // A retry in 1,000 s is longer than visibility_backoff_max_secs: a re-sent copy.
        let app = |id: &str| {
            TestApp::new("app", flaky.clone())
                .id(id)
                .backoff(Backoff {
                    initial_delay_secs: 1_000,
                    jitter: 0.0,
                    ..Backoff::default()
                })
                .built(2)
        };
        let (tiny, other) = (app("tiny"), app("other"));
        let mut garbage = shared_event("x", "tiny");
        garbage.body = "not json".into();
        let batch = [
            shared_event("evt_tiny", "tiny"),
            shared_event("evt_other", "other"),
            shared_event("evt_ghost", "ghost"),
            garbage,
        ];
        qs.send_batch("app", &batch).await;
        let apps = [tiny, other]
            .into_iter()
            .map(|b| (b.app.id.clone(), b))
            .collect();
        let runner = Runner::new(qs.clone(), Vec::new(), settings())
            .with_shared_queue("app".into(), SharedApps::Fixed(apps));
        let stats = runner.stats();
        let report = runner
            .run(until(stats, |c| c.dead_lettered == 2 && c.resent == 2))
            .await;
        assert_eq!(report.counts.delivered, 0, "{:?}", report.counts);
        // Each application's event failed once and was re-sent into its own group.
        let mut left: Vec<(Option<String>, String)> = qs
            .messages("app")
            .unwrap()
            .into_iter()
            .map(|m| (m.group_id, m.attributes["squall-attempts"].clone()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                (Some("other".into()), "1".into()),
                (Some("tiny".into()), "1".into())
            ]
        );
        let mut dead: Vec<(String, String, Option<String>)> = qs
            .messages("dlq")
            .unwrap()
            .into_iter()
            .map(|m| {
                (
                    m.attributes["squall-app-id"].clone(),
                    m.attributes["squall-reason"].clone(),
                    m.group_id,
                )
            })
            .collect();
        dead.sort();
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].0, "?");
        assert!(
            dead[0]
                .1
                .starts_with("shared queue app: malformed envelope: no app_id"),
            "{}",
            dead[0].1
        );
        assert_eq!(
            (dead[1].0.as_str(), dead[1].1.as_str(), dead[1].2.as_deref()),
            (
                "ghost",
                "shared queue app: app_id \"ghost\" is not a registered application",
                Some("ghost")
            )
        );
    }

    /// Holds each request 2 s; counts concurrent and total requests.
    struct Slow {
        now: AtomicU64,
        max: AtomicU64,
        total: AtomicU64,
    }
    impl Deliver for Slow {
        fn deliver<'a>(
            &'a self,
            _request: &'a Request,
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            Box::pin(async move {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                self.total.fetch_add(1, Ordering::SeqCst);
                Delivery {
                    outcome: Outcome::Response {
                        status: 200,
                        headers: vec![],
                    },
                    latency: Duration::from_secs(2),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_finishes_in_flight_deliveries_and_bounds_concurrency() {
        let qs = queues(1000);
        let slow = Arc::new(Slow {
            now: AtomicU64::new(0),
            max: AtomicU64::new(0),
            total: AtomicU64::new(0),
        });
        qs.send_batch(
            "app",
            &(0..40).map(|i| event(&format!("e{i}"))).collect::<Vec<_>>(),
        )
        .await;
        let runner = Runner::new(
            qs.clone(),
            vec![
                TestApp::new("app", slow.clone())
                    .backoff(fast_backoff())
                    .built(6),
            ],
            settings(),
        );
        let stats = runner.stats();
        // Shut down while the first deliveries are still in progress.
        let report = runner.run(until(stats, |c| c.received >= 6)).await;
        assert!(report.drained);
        assert_eq!(
            slow.max.load(Ordering::SeqCst),
            6,
            "max_concurrency bounds deliveries"
        );
        // Everything received was delivered and deleted; the rest is untouched and visible.
        let received = report.counts.received;
        assert_eq!(received, 6);
        assert_eq!(report.counts.delivered, received);
        assert_eq!(slow.total.load(Ordering::SeqCst), received);
        assert_eq!(report.metrics.sent, received);
        let c = qs.counts("app").unwrap();
        assert_eq!((c.total, c.in_flight), (40 - received as usize, 0));
    }

    /// Holds requests to `slow.example` 5 s and answers the rest at once; records which host
    /// each finished delivery went to, and when.
    struct OneSlowHost {
        started: tokio::time::Instant,
        done: Mutex<Vec<(String, Duration)>>,
    }
    impl Deliver for OneSlowHost {
        fn deliver<'a>(
            &'a self,
            request: &'a Request,
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            Box::pin(async move {
                let host = pipeline::url_host(&request.url);
                if host == "slow.example" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                self.done
                    .lock()
                    .unwrap()
                    .push((host, self.started.elapsed()));
                Delivery {
                    outcome: Outcome::Response {
                        status: 200,
                        headers: vec![],
                    },
                    latency: Duration::ZERO,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_does_not_hold_the_slots_other_endpoints_need() {
        let qs = queues(1000);
        let to = |id: &str, url: &str| {
            let env = crate::envelope::Envelope::new_json(
                id,
                "billing",
                "invoice.paid",
                url,
                1_700_000_000_000,
                &serde_json::json!({}),
            );
            Outgoing {
                body: String::from_utf8(env.encode()).unwrap(),
                delay_secs: 0,
                attributes: Attributes::new(),
                group_id: None,
            }
        };
        // Four events for the slow endpoint fill the application's four slots first.
        let mut batch: Vec<Outgoing> = (0..4)
            .map(|i| to(&format!("slow_{i}"), "https://slow.example/in"))
            .collect();
        batch.extend((0..3).map(|i| to(&format!("fast_{i}"), "https://fast.example/in")));
        qs.send_batch("app", &batch).await;
        let d = Arc::new(OneSlowHost {
            started: tokio::time::Instant::now(),
            done: Mutex::new(vec![]),
        });
        let a = TestApp::new("app", d.clone())
            .backoff(fast_backoff())
            .per_endpoint(1, Duration::from_millis(200));
        let mut s = settings();
        s.receive_batch = 4;
        let runner = Runner::new(qs.clone(), vec![a.built(4)], s);
        let stats = runner.stats();
        // Bounded: without deferral the hops never come (the assertions below then fail).
        let report = runner
            .run(async {
                let settled = until(stats, |c| c.delivered >= 3 && c.hops >= 3);
                let _ = tokio::time::timeout(Duration::from_secs(30), settled).await;
            })
            .await;

        let done = d.done.lock().unwrap().clone();
        let fast: Vec<Duration> = done
            .iter()
            .filter(|(h, _)| h == "fast.example")
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(fast.len(), 3, "{done:?}");
        // Delivered while the slow endpoint's first request was still in progress.
        assert!(fast.iter().all(|t| *t < Duration::from_secs(5)), "{done:?}");
        // The slow endpoint's other three were deferred: re-sent, no attempt counted.
        assert!(report.counts.hops >= 3, "{:?}", report.counts);
        let c = qs.counts("app").unwrap();
        assert_eq!(c.total, 3, "the deferred copies wait in the queue: {c:?}");
        let copies = qs.messages("app").unwrap();
        assert!(
            copies.iter().all(|m| m.body.contains("slow_")
                && m.attributes
                    .get(pipeline::ATTR_ATTEMPTS)
                    .map(String::as_str)
                    == Some("0")),
            "{copies:?}"
        );
    }

    #[tokio::test]
    async fn endpoint_limiter_bounds_concurrency_per_host_and_waits_at_most_its_wait() {
        let limiter = Arc::new(EndpointLimiter::new(2, Duration::from_secs(5)));
        let a1 = limiter.acquire("a.example").await.unwrap();
        let _a2 = limiter.acquire("a.example").await.unwrap();
        // Another host is not blocked.
        let _b = limiter.acquire("b.example").await.unwrap();
        let l2 = limiter.clone();
        let third = tokio::spawn(async move { l2.acquire("a.example").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        drop(a1);
        let slot = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .unwrap()
            .unwrap();
        assert!(slot.is_some());

        // A host still saturated when the wait ends gives no slot.
        let short = EndpointLimiter::new(1, Duration::from_millis(100));
        let _held = short.acquire("c.example").await.unwrap();
        let started = std::time::Instant::now();
        assert!(short.acquire("c.example").await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
