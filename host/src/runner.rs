//! Acting on queues, and `squall run`: long-polling every application queue.
//!
//! - [`Actor`] applies a batch of [`Action`]s with batched queue calls, sends before deletes,
//!   and reports per-message failures (a message whose action failed is left alone, so it
//!   reappears after its visibility timeout). The Lambda handler reuses it in
//!   [`ActMode::Lambda`], where the event source mapping does the deleting.
//! - [`Runner`] long-polls each application's queue, processes messages concurrently within
//!   the application's limit, acts, flushes metrics at the end of each batch, backs off on
//!   OverLimit (and sends retries by re-send meanwhile), and on shutdown stops receiving,
//!   finishes what is in flight, acts and flushes: nothing is lost.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::config::{self, AppConfig, Config, OnPluginError, PluginConfig};
use crate::hooks::{PassThrough, RetryPolicy, Signer, Transform};
use crate::http::Deliverers;
use crate::metrics::{MetricRecord, MetricsSink, MetricsTotals};
use crate::pipeline::{
    self, Action, App, DeleteReason, EndpointLimiter, ProcessOptions, SystemClock,
};
use crate::plugin::{Isolation, PluginLimits, PluginRuntime, PluginSpec, RuntimeOptions};
use crate::queue::{Outgoing, Queue, QueueError, Received, VisibilityChange};
use crate::retry::BackoffPolicy;
use crate::secrets::Secrets;
use crate::signing::StandardWebhooksSigner;

/// Where acting happens, which decides who deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActMode {
    /// `squall run`: the runner deletes (after any send succeeded).
    Runner,
    /// Lambda: the event source mapping deletes every message not reported as failed, so the
    /// actor never deletes; `RetryByVisibility` messages must be reported as failures.
    Lambda,
}

/// Which step of an action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// Sending the re-sent copy or the DLQ message failed (the original was kept).
    #[error("send failed (message kept): {0}")]
    Send(QueueError),
    /// ChangeMessageVisibility failed (the message reappears after its current timeout).
    #[error("change visibility failed: {0}")]
    ChangeVisibility(QueueError),
    /// Delete failed (the message reappears: a duplicate, never a loss).
    #[error("delete failed: {0}")]
    Delete(QueueError),
}

/// Applies actions to a queue with batched calls.
pub struct Actor<Q: Queue> {
    queue: Arc<Q>,
    dead_letter_queue_url: String,
    mode: ActMode,
}

impl<Q: Queue> Actor<Q> {
    /// An actor sending dead letters to `dead_letter_queue_url`.
    pub fn new(queue: Arc<Q>, dead_letter_queue_url: String, mode: ActMode) -> Actor<Q> {
        Actor {
            queue,
            dead_letter_queue_url,
            mode,
        }
    }

    /// Apply `actions[i]` to `messages[i]` received from `queue_url`. Returns one result per
    /// message, in order. Sends (re-sent copies, dead letters) and visibility changes go
    /// first; a message is deleted only after its send succeeded.
    pub async fn apply(
        &self,
        queue_url: &str,
        messages: &[&Received],
        actions: &[&Action],
    ) -> Vec<Result<(), ActError>> {
        assert_eq!(messages.len(), actions.len(), "one action per message");
        let mut results: Vec<Result<(), ActError>> = vec![Ok(()); messages.len()];
        let (mut resend_idx, mut resend) = (Vec::new(), Vec::new());
        let (mut dlq_idx, mut dlq) = (Vec::new(), Vec::new());
        let (mut vis_idx, mut vis) = (Vec::new(), Vec::new());
        for (i, (m, a)) in messages.iter().zip(actions).enumerate() {
            match a {
                Action::Resend {
                    delay_secs,
                    attributes,
                    ..
                } => {
                    resend_idx.push(i);
                    resend.push(Outgoing {
                        body: m.body.clone(),
                        delay_secs: *delay_secs,
                        attributes: attributes.clone(),
                    });
                }
                Action::DeadLetter { attributes, .. } => {
                    dlq_idx.push(i);
                    dlq.push(Outgoing {
                        body: m.body.clone(),
                        delay_secs: 0,
                        attributes: attributes.clone(),
                    });
                }
                Action::RetryByVisibility { secs } => {
                    vis_idx.push(i);
                    vis.push(VisibilityChange {
                        receipt_handle: m.receipt_handle.clone(),
                        timeout_secs: *secs,
                    });
                }
                Action::Delete { .. } => {}
            }
        }
        let (r_resend, r_dlq, r_vis) = tokio::join!(
            async {
                if resend.is_empty() {
                    Vec::new()
                } else {
                    self.queue.send_batch(queue_url, &resend).await
                }
            },
            async {
                if dlq.is_empty() {
                    Vec::new()
                } else {
                    self.queue
                        .send_batch(&self.dead_letter_queue_url, &dlq)
                        .await
                }
            },
            async {
                if vis.is_empty() {
                    Vec::new()
                } else {
                    self.queue.change_visibility_batch(queue_url, &vis).await
                }
            },
        );
        for (idx, res) in [(&resend_idx, r_resend), (&dlq_idx, r_dlq)] {
            for (&i, r) in idx.iter().zip(res) {
                if let Err(e) = r {
                    results[i] = Err(ActError::Send(e));
                }
            }
        }
        for (&i, r) in vis_idx.iter().zip(r_vis) {
            if let Err(e) = r {
                results[i] = Err(ActError::ChangeVisibility(e));
            }
        }
        if self.mode == ActMode::Runner {
            let del_idx: Vec<usize> = actions
                .iter()
                .enumerate()
                .filter(|(i, a)| {
                    !matches!(a, Action::RetryByVisibility { .. }) && results[*i].is_ok()
                })
                .map(|(i, _)| i)
                .collect();
            if !del_idx.is_empty() {
                let handles: Vec<String> = del_idx
                    .iter()
                    .map(|&i| messages[i].receipt_handle.clone())
                    .collect();
                let r_del = self.queue.delete_batch(queue_url, &handles).await;
                for (&i, r) in del_idx.iter().zip(r_del) {
                    if let Err(e) = r {
                        results[i] = Err(ActError::Delete(e));
                    }
                }
            }
        }
        results
    }
}

/// Counters of a run, readable while it runs.
#[derive(Debug, Default)]
pub struct RunStats {
    received: AtomicU64,
    delivered: AtomicU64,
    retried_by_visibility: AtomicU64,
    resent: AtomicU64,
    hops: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
    discarded: AtomicU64,
    act_failed: AtomicU64,
    receive_errors: AtomicU64,
    over_limit: AtomicU64,
}

/// A snapshot of [`RunStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Messages received.
    pub received: u64,
    /// Deleted after a 2xx.
    pub delivered: u64,
    /// Retries scheduled by ChangeMessageVisibility.
    pub retried_by_visibility: u64,
    /// Retries scheduled by re-sending a delayed copy.
    pub resent: u64,
    /// Early copies re-sent without an attempt.
    pub hops: u64,
    /// Sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// Skipped by the transform.
    pub skipped: u64,
    /// Discarded by the retry policy.
    pub discarded: u64,
    /// Actions that failed (the message was left to reappear).
    pub act_failed: u64,
    /// Failed receives (any error).
    pub receive_errors: u64,
    /// Of those, OverLimit.
    pub over_limit: u64,
}

impl RunStats {
    /// Read all counters.
    pub fn snapshot(&self) -> RunCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RunCounts {
            received: g(&self.received),
            delivered: g(&self.delivered),
            retried_by_visibility: g(&self.retried_by_visibility),
            resent: g(&self.resent),
            hops: g(&self.hops),
            dead_lettered: g(&self.dead_lettered),
            skipped: g(&self.skipped),
            discarded: g(&self.discarded),
            act_failed: g(&self.act_failed),
            receive_errors: g(&self.receive_errors),
            over_limit: g(&self.over_limit),
        }
    }

    fn count(&self, action: &Action) {
        let c = match action {
            Action::Delete {
                why: DeleteReason::Delivered,
            } => &self.delivered,
            Action::Delete {
                why: DeleteReason::Skipped(_),
            } => &self.skipped,
            Action::Delete {
                why: DeleteReason::Discarded(_),
            } => &self.discarded,
            Action::RetryByVisibility { .. } => &self.retried_by_visibility,
            Action::Resend { hop: true, .. } => &self.hops,
            Action::Resend { hop: false, .. } => &self.resent,
            Action::DeadLetter { .. } => &self.dead_lettered,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One application as the runner drives it.
pub struct RunnerApp {
    /// The per-application context.
    pub app: Arc<App>,
    /// At most this many messages of the application processed at once.
    pub max_concurrency: usize,
}

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
    app: Arc<App>,
    slots: Arc<Semaphore>,
    /// Re-send mode ends at this many ms after `epoch` (0: off). Set on OverLimit.
    resend_until_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

impl AppState {
    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// After an OverLimit, every retry goes by re-send for `visibility_backoff_max_secs`:
    /// the longest a visibility-parked message stays in flight, so the in-flight count drains.
    fn enter_resend_mode(&self) {
        let until = self.elapsed_ms() + self.app.visibility_backoff_max_secs as u64 * 1000 + 1;
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
}

const RECEIVE_BACKOFF_START: Duration = Duration::from_secs(1);
const RECEIVE_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl<Q: Queue> Runner<Q> {
    /// A runner over `queue` for these applications.
    pub fn new(queue: Arc<Q>, apps: Vec<RunnerApp>, settings: RunnerSettings) -> Runner<Q> {
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
            .into_iter()
            .map(|a| {
                Arc::new(AppState {
                    slots: Arc::new(Semaphore::new(a.max_concurrency.max(1))),
                    app: a.app,
                    resend_until_ms: AtomicU64::new(0),
                    epoch: tokio::time::Instant::now(),
                })
            })
            .collect();
        Runner { shared, apps }
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
            tracing::info!(app_id = %app.app.id, queue = %app.app.queue_url, "polling");
            tokio::spawn(poll(
                self.shared.clone(),
                app.clone(),
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

/// Why the applications could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `apps.ID.queue_url` is missing.
    #[error("apps.{0}.queue_url is required")]
    MissingQueue(String),
    /// No resolved secrets for an application.
    #[error("apps.{0}: secrets were not resolved")]
    MissingSecrets(String),
    /// The HTTP client could not be built.
    #[error("apps.{app}: {error}")]
    Http {
        /// Application id.
        app: String,
        /// Cause.
        error: crate::http::ClientError,
    },
    /// A plugin could not be loaded.
    #[error("apps.{app}.plugins.{hook}: {message}")]
    Plugin {
        /// Application id.
        app: String,
        /// `transform`, `signer` or `retry_policy`.
        hook: &'static str,
        /// What went wrong, naming the plugin file.
        message: String,
    },
}

/// An application's three hooks.
pub struct AppHooks {
    /// Transform.
    pub transform: Arc<dyn Transform>,
    /// Signer.
    pub signer: Arc<dyn Signer>,
    /// Retry policy.
    pub retry_policy: Arc<dyn RetryPolicy>,
}

impl AppHooks {
    /// The native built-ins: pass-through, Standard Webhooks, the app's exponential backoff.
    pub fn builtins(app: &AppConfig, secrets: Arc<Secrets>) -> AppHooks {
        AppHooks {
            transform: Arc::new(PassThrough),
            signer: Arc::new(StandardWebhooksSigner::new(secrets)),
            retry_policy: Arc::new(BackoffPolicy {
                backoff: app.backoff(),
            }),
        }
    }
}

/// The plugin spec of a configured plugin.
pub fn plugin_spec(cfg: &PluginConfig) -> PluginSpec {
    PluginSpec {
        path: cfg.path.clone(),
        config: cfg.config.clone(),
        limits: PluginLimits {
            timeout_ms: cfg.limits.timeout_ms,
            memory_bytes: cfg.limits.memory_bytes,
            max_output_bytes: cfg.limits.max_output_bytes,
        },
        isolation: match cfg.limits.isolation {
            config::Isolation::Reuse => Isolation::Reuse,
            config::Isolation::Fresh => Isolation::FreshPerCall,
        },
        sha256: cfg.sha256,
    }
}

/// True if any application configures a plugin (so a plugin runtime is needed).
pub fn uses_plugins(config: &Config) -> bool {
    config.apps.iter().any(|a| a.plugins.any())
}

/// The plugin runtime options from `[plugins]` (an empty `cache_dir` = the default).
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    let mut opts = RuntimeOptions::default();
    if let Some(dir) = &config.plugins.cache_dir {
        opts.cache_dir = Some(dir.clone());
    }
    opts
}

/// The hooks of one application: plugins where configured (loaded, compiled and validated
/// now, at start-up, through `runtime`), the built-ins for the others.
pub fn app_hooks(
    app: &AppConfig,
    secrets: Arc<Secrets>,
    runtime: Option<&PluginRuntime>,
) -> Result<AppHooks, BuildError> {
    let mut hooks = AppHooks::builtins(app, secrets.clone());
    let p = &app.plugins;
    let need = |hook: &'static str| -> Result<&PluginRuntime, BuildError> {
        runtime.ok_or_else(|| BuildError::Plugin {
            app: app.id.clone(),
            hook,
            message: "no plugin runtime was created".into(),
        })
    };
    let err = |hook: &'static str| {
        move |e: crate::plugin::PluginError| BuildError::Plugin {
            app: app.id.clone(),
            hook,
            message: e.to_string(),
        }
    };
    if let Some(c) = &p.transform {
        hooks.transform = need("transform")?
            .transform(&app.id, &plugin_spec(c), secrets.clone())
            .map_err(err("transform"))?;
    }
    if let Some(c) = &p.signer {
        hooks.signer = need("signer")?
            .signer(&app.id, &plugin_spec(c), secrets.clone())
            .map_err(err("signer"))?;
    }
    if let Some(c) = &p.retry_policy {
        hooks.retry_policy = need("retry_policy")?
            .retry_policy(&app.id, &plugin_spec(c), secrets.clone())
            .map_err(err("retry_policy"))?;
    }
    Ok(hooks)
}

/// Build one application's pipeline context from its configuration (once per process):
/// its hooks, its shared HTTP client wrapped in its per-endpoint limit, its limits.
pub fn build_app(
    config: &Config,
    app: &AppConfig,
    hooks: AppHooks,
    deliverers: &Deliverers,
) -> Result<RunnerApp, BuildError> {
    let queue_url = app
        .queue_url
        .clone()
        .ok_or_else(|| BuildError::MissingQueue(app.id.clone()))?;
    let delivery = deliverers.for_app(app).map_err(|error| BuildError::Http {
        app: app.id.clone(),
        error,
    })?;
    Ok(RunnerApp {
        app: Arc::new(App {
            id: app.id.clone(),
            queue_url,
            transform: hooks.transform,
            signer: hooks.signer,
            retry_policy: hooks.retry_policy,
            backoff: app.backoff(),
            limits: app.retry_limits(),
            envelope_limits: app.envelope_limits(),
            signing_key: app.signing_key.clone(),
            on_plugin_error: match app.on_plugin_error {
                OnPluginError::Retry => pipeline::PluginErrorPolicy::Retry,
                OnPluginError::DeadLetter => pipeline::PluginErrorPolicy::DeadLetter,
            },
            visibility_backoff_max_secs: config.sqs.visibility_backoff_max_secs,
            deliver: Arc::new(delivery),
            endpoints: Some(Arc::new(EndpointLimiter::new(
                app.max_per_endpoint as usize,
                Duration::from_secs(app.endpoint_wait_secs.into()),
            ))),
        }),
        max_concurrency: app.max_concurrency as usize,
    })
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
        }
    }
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
        let received = tokio::select! {
            r = shared.queue.receive(&app.app.queue_url, slots.len(), shared.settings.wait) => r,
            _ = stop.changed() => break,
        };
        match received {
            Ok(msgs) => {
                backoff = RECEIVE_BACKOFF_START;
                if msgs.is_empty() {
                    continue;
                }
                shared
                    .stats
                    .received
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                slots.truncate(msgs.len());
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
                shared.stats.receive_errors.fetch_add(1, Ordering::Relaxed);
                if let QueueError::OverLimit { .. } = e {
                    shared.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    app.enter_resend_mode();
                }
                tracing::warn!(app_id = %app.app.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "receive failed");
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
    let mut set = tokio::task::JoinSet::new();
    for (i, (msg, slot)) in msgs.iter().cloned().zip(slots).enumerate() {
        let a = app.app.clone();
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
            Err(e) => tracing::error!(app_id = %app.app.id, error = %e, "message task failed"),
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
        .apply(&app.app.queue_url, &acted_msgs, &actions)
        .await;
    for ((m, a), r) in acted_msgs.iter().zip(&actions).zip(results) {
        match r {
            Ok(()) => {
                shared.stats.count(a);
                log_action(&app.app.id, m, a);
            }
            Err(e) => {
                shared.stats.act_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(app_id = %app.app.id, message_id = %m.message_id, error = %e, "action failed; the message will reappear");
            }
        }
    }
    shared.metrics.flush(&records).await;
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
        Action::DeadLetter { reason, .. } => {
            tracing::warn!(app_id, message_id = %m.message_id, %reason, "dead-lettered")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;

    use super::*;
    use crate::hooks::{Outcome, PassThrough, Request};
    use crate::pipeline::PluginErrorPolicy;
    use crate::pipeline::{Deliver, Delivery};
    use crate::queue::Attributes;
    use crate::queue::memory::{MemoryQueues, QueueOptions};
    use crate::retry::{Backoff, BackoffPolicy, RetryLimits};
    use crate::secrets::{SecretKey, Secrets};
    use crate::signing::StandardWebhooksSigner;

    fn queues(max_in_flight: usize) -> Arc<MemoryQueues> {
        let qs = Arc::new(MemoryQueues::new());
        for q in ["dlq", "metrics"] {
            qs.create_queue(q, QueueOptions::default()).unwrap();
        }
        qs.create_queue(
            "app",
            QueueOptions {
                max_in_flight,
                ..QueueOptions::default()
            },
        )
        .unwrap();
        qs
    }

    fn received(body: &str, handle: &str) -> Received {
        Received {
            message_id: format!("id-{body}"),
            receipt_handle: handle.into(),
            body: body.into(),
            attributes: Attributes::new(),
            receive_count: 1,
            sent_timestamp_ms: 0,
        }
    }

    async fn receive_all(qs: &MemoryQueues, q: &str) -> Vec<Received> {
        qs.receive(q, 10, Duration::ZERO).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn actor_sends_before_deleting_and_keeps_what_failed() {
        let qs = queues(100);
        let bodies = ["deliver", "later", "copy", "dead"];
        qs.send_batch(
            "app",
            &bodies
                .iter()
                .map(|b| Outgoing {
                    body: b.to_string(),
                    delay_secs: 0,
                    attributes: Attributes::new(),
                })
                .collect::<Vec<_>>(),
        )
        .await;
        let got = receive_all(&qs, "app").await;
        let attrs = Attributes::from([("squall-reason".to_string(), "status 410".to_string())]);
        let actions = [
            Action::Delete {
                why: DeleteReason::Delivered,
            },
            Action::RetryByVisibility { secs: 7 },
            Action::Resend {
                delay_secs: 30,
                attributes: Attributes::from([("squall-attempts".to_string(), "1".to_string())]),
                hop: false,
            },
            Action::DeadLetter {
                reason: "status 410".into(),
                attributes: attrs.clone(),
            },
        ];
        let actor = Actor::new(qs.clone(), "dlq".into(), ActMode::Runner);
        let msgs: Vec<&Received> = got.iter().collect();
        let acts: Vec<&Action> = actions.iter().collect();
        let res = actor.apply("app", &msgs, &acts).await;
        assert!(res.iter().all(Result::is_ok), "{res:?}");
        // Left: the visibility-parked original (in flight) and the delayed copy.
        let left = qs.messages("app").unwrap();
        let mut left_bodies: Vec<&str> = left.iter().map(|m| m.body.as_str()).collect();
        left_bodies.sort();
        assert_eq!(left_bodies, ["copy", "later"]);
        let copy = left.iter().find(|m| m.body == "copy").unwrap();
        assert_eq!(copy.receive_count, 0);
        assert_eq!(copy.attributes["squall-attempts"], "1");
        assert_eq!(qs.counts("app").unwrap().in_flight, 1);
        let dead = qs.messages("dlq").unwrap();
        assert_eq!(
            (dead[0].body.as_str(), &dead[0].attributes),
            ("dead", &attrs)
        );
        // The parked one is back after 7 s, the copy after 30 s.
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(receive_all(&qs, "app").await[0].body, "later");
        tokio::time::advance(Duration::from_secs(23)).await;
        assert_eq!(receive_all(&qs, "app").await[0].body, "copy");

        // A failed send keeps the original; a bad handle is reported, not hidden.
        let broken = Actor::new(qs.clone(), "no-such-dlq".into(), ActMode::Runner);
        qs.send_batch(
            "app",
            &[Outgoing {
                body: "x".into(),
                delay_secs: 0,
                attributes: Attributes::new(),
            }],
        )
        .await;
        let x = receive_all(&qs, "app").await;
        let bogus = received("y", "999.1");
        let dl = Action::DeadLetter {
            reason: "r".into(),
            attributes: Attributes::new(),
        };
        let del = Action::Delete {
            why: DeleteReason::Delivered,
        };
        let res = broken.apply("app", &[&x[0], &bogus], &[&dl, &del]).await;
        assert!(matches!(
            res[0],
            Err(ActError::Send(QueueError::QueueDoesNotExist { .. }))
        ));
        assert!(
            res[1].is_ok(),
            "deleting an unknown message is not an error"
        );
        assert!(qs.messages("app").unwrap().iter().any(|m| m.body == "x"));
        // Lambda mode: never deletes.
        let lambda = Actor::new(qs.clone(), "dlq".into(), ActMode::Lambda);
        let res = lambda.apply("app", &[&x[0]], &[&del]).await;
        assert_eq!(res, vec![Ok(())]);
        assert!(qs.messages("app").unwrap().iter().any(|m| m.body == "x"));
    }

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

    fn app(deliver: Arc<dyn Deliver>) -> Arc<App> {
        let mut secrets = Secrets::new();
        secrets.insert("default", vec![SecretKey::parse("test-secret").unwrap()]);
        let backoff = Backoff {
            initial_delay_secs: 1,
            multiplier: 2.0,
            jitter: 0.0,
            ..Backoff::default()
        };
        Arc::new(App {
            id: "billing".into(),
            queue_url: "app".into(),
            transform: Arc::new(PassThrough),
            signer: Arc::new(StandardWebhooksSigner::new(Arc::new(secrets))),
            retry_policy: Arc::new(BackoffPolicy {
                backoff: backoff.clone(),
            }),
            backoff,
            limits: RetryLimits::default(),
            envelope_limits: crate::envelope::Limits::default(),
            signing_key: "default".into(),
            on_plugin_error: PluginErrorPolicy::Retry,
            visibility_backoff_max_secs: 900,
            deliver,
            endpoints: None,
        })
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
        }
    }

    fn settings() -> RunnerSettings {
        RunnerSettings {
            wait: Duration::from_secs(20),
            receive_batch: 10,
            shutdown_grace: Duration::from_secs(30),
            dead_letter_queue_url: "dlq".into(),
            metrics_queue_url: Some("metrics".into()),
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
            vec![RunnerApp {
                app: app(flaky.clone()),
                max_concurrency: 8,
            }],
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
        let mut a = app(failing.clone());
        Arc::get_mut(&mut a).unwrap().backoff.initial_delay_secs = 5;
        Arc::get_mut(&mut a).unwrap().retry_policy = Arc::new(BackoffPolicy {
            backoff: Backoff {
                initial_delay_secs: 5,
                multiplier: 1.0,
                jitter: 0.0,
                ..Backoff::default()
            },
        });
        qs.send_batch(
            "app",
            &(0..6).map(|i| event(&format!("e{i}"))).collect::<Vec<_>>(),
        )
        .await;
        let runner = Runner::new(
            qs.clone(),
            vec![RunnerApp {
                app: a,
                max_concurrency: 10,
            }],
            settings(),
        );
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
            vec![RunnerApp {
                app: app(slow.clone()),
                max_concurrency: 6,
            }],
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
        let mut a = app(d.clone());
        Arc::get_mut(&mut a).unwrap().endpoints = Some(Arc::new(EndpointLimiter::new(
            1,
            Duration::from_millis(200),
        )));
        let mut s = settings();
        s.receive_batch = 4;
        let runner = Runner::new(
            qs.clone(),
            vec![RunnerApp {
                app: a,
                max_concurrency: 4,
            }],
            s,
        );
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
