//! The no-AWS demo: real webhooks through the real pipeline and runner, with the embedded
//! in-process queue (application queues, a dead-letter queue, a metrics queue) and the test
//! kit's receiver on 127.0.0.1, which verifies Standard Webhooks signatures independently of
//! the engine's signer (`squall_testkit::verify`).
//!
//! Two applications: `billing` with the native built-ins, and `shipping` with the sample
//! plugins from `plugins/dist` when they are built (envelope transform that skips `ping`,
//! the Standard Webhooks signer plugin, the schedule retry policy), else built-ins too.
//! Sample events include one the receiver fails twice before accepting (retried on a short
//! test schedule), one answered 410 (dead-lettered) and one malformed envelope.
//!
//! Never needs a network outside loopback.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use squall_testkit::receiver::{Chooser, Receiver, Reply};

use crate::apps::{AppBuilder, BuildError, BuiltApp, PluginSetup};
use crate::config::{AppPlugins, Config};
use crate::envelope::Envelope;
use crate::metrics::MetricOutcome;
use crate::pipeline;
use crate::queue::memory::{MemoryQueues, QueueOptions, Redrive};
use crate::queue::{Attributes, Outgoing, Queue};
use crate::runner::{RunReport, Runner, RunnerSettings};

// ---------------------------------------------------------------------------------------
// The local receiver: the test kit's, verifying each application's signatures.
// ---------------------------------------------------------------------------------------

/// The test kit's receiver on 127.0.0.1 answering `POST /<app>/<behaviour>`: `ok` -> 200,
/// `flaky` -> 503 for the first two requests of each `webhook-id` then 200, `gone` -> 410; a
/// signature that does not verify with the application's secret -> 401.
async fn start_receiver(secrets: &HashMap<String, String>) -> std::io::Result<Receiver> {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let flaky: Chooser = Arc::new(move |req| {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.entry(req.webhook_id().to_string()).or_insert(0);
        *n += 1;
        Reply::Status(if *n <= 2 { 503 } else { 200 })
    });
    let mut opts = Receiver::options();
    for (app, secret) in secrets {
        opts = opts
            .verify(format!("/{app}/"), secret.clone())
            .route(format!("/{app}/gone"), Reply::Status(410))
            .route_with(format!("/{app}/flaky"), flaky.clone());
    }
    opts.start().await
}

// ---------------------------------------------------------------------------------------
// The demo itself.
// ---------------------------------------------------------------------------------------

/// Options of the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Directory of the sample plugin components (`plugins/dist`); `None` or missing
    /// files = built-ins for both applications.
    pub plugins_dir: Option<PathBuf>,
}

/// One event's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Application.
    pub app: String,
    /// Event id (or the SQS message id for a malformed body).
    pub event_id: String,
    /// Event type (empty if malformed).
    pub event_type: String,
    /// `delivered`, `skipped`, `dead-lettered`, ...
    pub result: String,
    /// Attempts made.
    pub attempts: u32,
    /// Reason / signature check.
    pub detail: String,
}

/// What the demo did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// True if `shipping` ran the sample plugins.
    pub shipping_uses_plugins: bool,
    /// Why it did not, if it did not.
    pub plugins_note: Option<String>,
    /// Events enqueued.
    pub events: usize,
    /// Delivered (2xx) events.
    pub delivered: usize,
    /// Failed attempts that were retried.
    pub retries: usize,
    /// Skipped by the transform.
    pub skipped: usize,
    /// Dead-lettered: (event or message id, reason).
    pub dead_lettered: Vec<(String, String)>,
    /// Records on the metrics queue.
    pub metrics_records: usize,
    /// Requests whose signature the receiver could not verify.
    pub signature_failures: usize,
    /// Requests the receiver answered.
    pub receiver_hits: usize,
    /// One row per event.
    pub rows: Vec<EventRow>,
    /// Runner counters.
    pub report: RunReport,
    /// Wall time.
    pub elapsed: Duration,
}

/// Could not run the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The receiver could not listen.
    #[error("demo receiver could not listen on 127.0.0.1: {0}")]
    Receiver(#[from] std::io::Error),
    /// A queue operation failed.
    #[error("demo queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    /// The applications could not be built (their HTTP client, or the plugin runtime).
    #[error("demo applications: {0}")]
    Apps(String),
    /// Did not settle in time.
    #[error("the demo did not settle within {0:?}")]
    Timeout(Duration),
}

const DLQ: &str = "squall-dlq";
const METRICS: &str = "squall-metrics";

fn demo_secret(app: &str) -> String {
    // Fresh per run: the receiver and the apps share it, nobody else needs it.
    let mut bytes = [0u8; 24];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    let _ = app;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The sample plugins' files in `dir`, or why not: (transform, signer, retry policy).
fn sample_plugins(dir: &Path) -> Result<[PathBuf; 3], String> {
    let file = |f: &str| -> Result<PathBuf, String> {
        let p = dir.join(f);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} not found: run scripts/build-plugins to use the sample plugins",
                p.display()
            ))
        }
    };
    Ok([
        file("envelope-transform.wasm")?,
        file("standard-webhooks-signer.wasm")?,
        file("schedule-retry.wasm")?,
    ])
}

/// The demo's applications as configuration, built by the engine's one assembly path
/// ([`crate::apps`]) like `squall run`'s: `billing` and `shipping`, each signing with its own
/// secret, on the short test schedule (1 s, then 2 s, ...; at most 5 attempts within 10 min),
/// delivering to loopback only; `shipping` with the sample plugins when `plugins` is given
/// (transform skipping `ping`, the Standard Webhooks signer, the schedule retry policy on the
/// same short schedule). Each application's queue is the in-process queue named after it.
fn demo_config(secrets: &HashMap<String, String>, plugins: Option<&[PathBuf; 3]>) -> Config {
    let mut text = String::from(
        r#"
allow_literal_secrets = true
[app_defaults]
connect_timeout_ms = 2000
timeout_ms = 10000
max_response_bytes = 65536
max_concurrency = 16
max_per_endpoint = 16
allowed_networks = ["127.0.0.0/8"]
[app_defaults.retry]
max_attempts = 5
horizon_secs = 600
initial_delay_secs = 1
multiplier = 2.0
jitter = 0.0
"#,
    );
    let mut ids: Vec<&String> = secrets.keys().collect();
    ids.sort();
    for id in ids {
        text.push_str(&format!(
            "[apps.{id}]\nsecrets = {{ default = \"literal:{}\" }}\n",
            secrets[id]
        ));
    }
    let mut base_dir = PathBuf::from(".");
    if let Some([transform, signer, retry]) = plugins {
        let name = |p: &PathBuf| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        base_dir = transform
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(base_dir);
        text.push_str(&format!(
            r#"[apps.shipping.plugins.transform]
path = "{}"
config = {{ skip_types = "ping" }}
[apps.shipping.plugins.signer]
path = "{}"
[apps.shipping.plugins.retry_policy]
path = "{}"
config = {{ schedule = "1s,2s,4s" }}
"#,
            name(transform),
            name(signer),
            name(retry)
        ));
    }
    let mut config = Config::from_toml_str(&text, &base_dir, Vec::new())
        .expect("the demo's configuration is valid");
    for app in &mut config.apps {
        app.queue_url = Some(app.id.clone());
    }
    config
}

/// The demo's applications, built; and, when `shipping` could not get its sample plugins, why
/// (it then runs the built-ins). The builder holds the plugin runtime: keep it while they run.
fn build_apps(
    secrets: &HashMap<String, String>,
    plugins: Option<&[PathBuf; 3]>,
) -> Result<(AppBuilder, Vec<BuiltApp>, Option<String>), DemoError> {
    let built_ins = |why: String| format!("{why}; shipping uses the built-ins");
    let mut note = None;
    let mut config = demo_config(secrets, plugins);
    let builder = match AppBuilder::new(&config, PluginSetup::from_config(&config)) {
        Ok(b) => b,
        Err(e) => {
            note = Some(built_ins(e.to_string()));
            config = demo_config(secrets, None);
            AppBuilder::new(&config, PluginSetup::from_config(&config))
                .map_err(|e| DemoError::Apps(e.to_string()))?
        }
    };
    let mut built = Vec::new();
    for app in &config.apps {
        let secrets = app
            .resolve_secrets(&|_| None)
            .map_err(|e| DemoError::Apps(e.to_string()))?;
        let secrets = Arc::new(secrets);
        let app = match builder.build(app, secrets.clone()) {
            Err(BuildError::Plugin { message, .. }) => {
                note = Some(built_ins(message));
                let mut without = app.clone();
                without.plugins = AppPlugins::default();
                builder.build(&without, secrets)
            }
            other => other,
        };
        built.push(app.map_err(|e| DemoError::Apps(e.to_string()))?);
    }
    Ok((builder, built, note))
}

struct Sample {
    app: &'static str,
    id: &'static str,
    event_type: &'static str,
    behaviour: &'static str,
}

const SAMPLES: &[Sample] = &[
    Sample {
        app: "billing",
        id: "evt_bill_001",
        event_type: "invoice.paid",
        behaviour: "ok",
    },
    Sample {
        app: "billing",
        id: "evt_bill_002",
        event_type: "invoice.created",
        behaviour: "ok",
    },
    Sample {
        app: "billing",
        id: "evt_bill_003",
        event_type: "invoice.paid",
        behaviour: "flaky",
    },
    Sample {
        app: "billing",
        id: "evt_bill_004",
        event_type: "customer.deleted",
        behaviour: "gone",
    },
    Sample {
        app: "shipping",
        id: "evt_ship_001",
        event_type: "shipment.created",
        behaviour: "ok",
    },
    Sample {
        app: "shipping",
        id: "evt_ship_002",
        event_type: "ping",
        behaviour: "ok",
    },
    Sample {
        app: "shipping",
        id: "evt_ship_003",
        event_type: "shipment.delayed",
        behaviour: "flaky",
    },
];

/// A malformed envelope (cut short) enqueued on `billing`: it must end in the DLQ.
const MALFORMED: &str = r#"{"version":1,"id":"evt_bill_bad","app_id":"billing","type":"#;

/// Run the demo to completion and return what happened.
pub async fn run_demo(opts: &DemoOptions) -> Result<DemoSummary, DemoError> {
    let t0 = Instant::now();
    let apps = ["billing", "shipping"];
    let secrets: HashMap<String, String> = apps
        .iter()
        .map(|a| (a.to_string(), demo_secret(a)))
        .collect();
    let receiver = start_receiver(&secrets).await?;

    let qs = Arc::new(MemoryQueues::new());
    qs.create_queue(DLQ, QueueOptions::default())?;
    qs.create_queue(METRICS, QueueOptions::default())?;
    for a in apps {
        qs.create_queue(
            a,
            QueueOptions {
                redrive: Some(Redrive {
                    dead_letter_queue: DLQ.into(),
                    max_receive_count: 10,
                }),
                ..QueueOptions::default()
            },
        )?;
    }

    let mut plugins_note = None;
    let plugins = match &opts.plugins_dir {
        None => {
            plugins_note = Some("sample plugins not requested: built-ins used".to_string());
            None
        }
        Some(dir) => match sample_plugins(dir) {
            Ok(files) => Some(files),
            Err(why) => {
                plugins_note = Some(format!("{why}; shipping uses the built-ins"));
                None
            }
        },
    };
    let (builder, runner_apps, not_loaded) = build_apps(&secrets, plugins.as_ref())?;
    let shipping_uses_plugins = plugins.is_some() && not_loaded.is_none();
    plugins_note = plugins_note.or(not_loaded);

    // Enqueue the samples.
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for a in apps {
        let mut batch: Vec<Outgoing> = SAMPLES
            .iter()
            .filter(|s| s.app == a)
            .map(|s| {
                let env = Envelope::new_json(
                    s.id,
                    s.app,
                    s.event_type,
                    receiver.url(&format!("/{}/{}", s.app, s.behaviour)),
                    created,
                    &serde_json::json!({"id": s.id, "type": s.event_type, "amount_cents": 4200}),
                );
                Outgoing {
                    body: String::from_utf8(env.encode()).expect("envelopes are UTF-8"),
                    delay_secs: 0,
                    attributes: Attributes::new(),
                    group_id: None,
                }
            })
            .collect();
        if a == "billing" {
            batch.push(Outgoing {
                body: MALFORMED.into(),
                delay_secs: 0,
                attributes: Attributes::new(),
                group_id: None,
            });
        }
        for r in qs.send_batch(a, &batch).await {
            r?;
        }
    }
    let events = SAMPLES.len() + 1;

    let runner = Runner::new(
        qs.clone(),
        runner_apps,
        RunnerSettings {
            wait: Duration::from_secs(1),
            receive_batch: 10,
            shutdown_grace: Duration::from_secs(10),
            dead_letter_queue_url: DLQ.into(),
            metrics_queue_url: Some(METRICS.into()),
            shared_concurrency: 64,
        },
    );
    let settle_qs = qs.clone();
    let settled = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let empty = apps
                .iter()
                .all(|a| settle_qs.counts(a).map(|c| c.total == 0).unwrap_or(false));
            if empty {
                break;
            }
        }
    };
    let limit = Duration::from_secs(60);
    let report = tokio::time::timeout(limit, runner.run(settled))
        .await
        .map_err(|_| DemoError::Timeout(limit))?;

    drop(builder);
    summarize(
        &qs,
        &receiver,
        report,
        events,
        shipping_uses_plugins,
        plugins_note,
        t0.elapsed(),
    )
}

fn summarize(
    qs: &MemoryQueues,
    receiver: &Receiver,
    report: RunReport,
    events: usize,
    shipping_uses_plugins: bool,
    plugins_note: Option<String>,
    elapsed: Duration,
) -> Result<DemoSummary, DemoError> {
    let metrics: Vec<serde_json::Value> = qs
        .messages(METRICS)?
        .iter()
        .filter_map(|m| serde_json::from_str(&m.body).ok())
        .collect();
    let dead = qs.messages(DLQ)?;
    let hits = receiver.requests();

    // Per event: its metric records in attempt order.
    let mut by_event: BTreeMap<(String, String), Vec<&serde_json::Value>> = BTreeMap::new();
    for m in &metrics {
        let key = (
            m["app_id"].as_str().unwrap_or("").to_string(),
            m["event_id"].as_str().unwrap_or("").to_string(),
        );
        by_event.entry(key).or_default().push(m);
    }
    let mut rows = Vec::new();
    for ((app, id), mut recs) in by_event {
        recs.sort_by_key(|r| r["attempt"].as_u64());
        let last = recs.last().expect("non-empty");
        let outcome = last["outcome"].as_str().unwrap_or("").to_string();
        let verified = hits
            .iter()
            .filter(|h| h.webhook_id() == id)
            .map(|h| matches!(h.verified, Some(Ok(()))))
            .collect::<Vec<_>>();
        let statuses: Vec<String> = recs
            .iter()
            .map(|r| match r["status"].as_u64() {
                Some(s) => s.to_string(),
                None => r["error_kind"].as_str().unwrap_or("-").to_string(),
            })
            .collect();
        let mut detail = format!("statuses {}", statuses.join(" -> "));
        if !verified.is_empty() {
            let ok = verified.iter().filter(|v| **v).count();
            detail.push_str(&format!("; signature verified {ok}/{}", verified.len()));
        }
        if outcome == MetricOutcome::Skipped.as_str() {
            detail = "skipped by the transform (ping)".into();
        }
        if let Some(d) = dead
            .iter()
            .find(|d| d.attributes.get(pipeline::ATTR_EVENT_ID) == Some(&id))
        {
            detail.push_str(&format!(
                "; DLQ reason: {}",
                d.attributes
                    .get(pipeline::ATTR_REASON)
                    .map_or("", String::as_str)
            ));
        }
        rows.push(EventRow {
            app,
            event_id: id,
            event_type: last["event_type"].as_str().unwrap_or("").to_string(),
            result: outcome.replace('_', "-"),
            attempts: recs.len() as u32,
            detail,
        });
    }
    for d in dead
        .iter()
        .filter(|d| !d.attributes.contains_key(pipeline::ATTR_EVENT_ID))
    {
        rows.push(EventRow {
            app: d
                .attributes
                .get(pipeline::ATTR_APP_ID)
                .cloned()
                .unwrap_or_default(),
            event_id: "(malformed)".into(),
            event_type: String::new(),
            result: "dead-letter".into(),
            attempts: 0,
            detail: format!(
                "DLQ reason: {}",
                d.attributes
                    .get(pipeline::ATTR_REASON)
                    .map_or("", String::as_str)
            ),
        });
    }
    let count = |o: MetricOutcome| {
        metrics
            .iter()
            .filter(|m| m["outcome"] == o.as_str())
            .count()
    };
    Ok(DemoSummary {
        shipping_uses_plugins,
        plugins_note,
        events,
        delivered: count(MetricOutcome::Delivered),
        retries: count(MetricOutcome::Retry),
        skipped: count(MetricOutcome::Skipped),
        dead_lettered: dead
            .iter()
            .map(|d| {
                (
                    d.attributes
                        .get(pipeline::ATTR_EVENT_ID)
                        .cloned()
                        .unwrap_or_else(|| "(malformed)".into()),
                    d.attributes
                        .get(pipeline::ATTR_REASON)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect(),
        metrics_records: metrics.len(),
        signature_failures: hits
            .iter()
            .filter(|h| matches!(h.verified, Some(Err(_))))
            .count(),
        receiver_hits: hits.len(),
        rows,
        report,
        elapsed,
    })
}

impl DemoSummary {
    /// The summary as a printable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "Squall demo: {} events for 2 applications through the in-process queue, delivered to a local verifying receiver\n",
            self.events
        ));
        out.push_str(&format!(
            "  billing: built-ins (pass-through, Standard Webhooks signer, exponential backoff 1 s x2)\n  shipping: {}\n",
            if self.shipping_uses_plugins {
                "sample plugins (envelope-transform skipping ping, standard-webhooks-signer, schedule-retry)"
            } else {
                "built-ins"
            }
        ));
        if let Some(n) = &self.plugins_note {
            out.push_str(&format!("  note: {n}\n"));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<9} {:<16} {:<17} {:<12} {:>8}  {}\n",
            "app", "event", "type", "result", "attempts", "detail"
        ));
        out.push_str(&format!("{}\n", "-".repeat(110)));
        for r in &self.rows {
            out.push_str(&format!(
                "{:<9} {:<16} {:<17} {:<12} {:>8}  {}\n",
                r.app, r.event_id, r.event_type, r.result, r.attempts, r.detail
            ));
        }
        out.push('\n');
        out.push_str(&format!("delivered      {}\n", self.delivered));
        out.push_str(&format!(
            "retried        {} failed attempts, each retried\n",
            self.retries
        ));
        out.push_str(&format!("skipped        {}\n", self.skipped));
        out.push_str(&format!("dead-lettered  {}\n", self.dead_lettered.len()));
        for (id, reason) in &self.dead_lettered {
            out.push_str(&format!("  {id}: {reason}\n"));
        }
        out.push_str(&format!(
            "metrics        {} records on the metrics queue\n",
            self.metrics_records
        ));
        out.push_str(&format!(
            "receiver       {} requests, {} with a bad signature\n",
            self.receiver_hits, self.signature_failures
        ));
        out.push_str(&format!(
            "time           {:.1} s\n",
            self.elapsed.as_secs_f64()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_delivers_retries_and_dead_letters() {
        let s = run_demo(&DemoOptions { plugins_dir: None }).await.unwrap();
        print!("{}", s.render());
        assert!(!s.shipping_uses_plugins);
        assert_eq!(s.events, 8);
        // 7 well-formed events: 6 delivered (two after two 503s each), 1 answered 410.
        assert_eq!(s.delivered, 6);
        assert_eq!(s.retries, 4);
        assert_eq!(s.skipped, 0);
        assert_eq!(s.dead_lettered.len(), 2);
        let reasons: Vec<&str> = s.dead_lettered.iter().map(|(_, r)| r.as_str()).collect();
        assert!(reasons.iter().any(|r| r.contains("410")), "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("malformed envelope")),
            "{reasons:?}"
        );
        // One record per attempt: 6 deliveries + 4 retries + 1 dead letter.
        assert_eq!(s.metrics_records, 11);
        assert_eq!(s.receiver_hits, 11);
        assert_eq!(s.signature_failures, 0);
        let flaky = s
            .rows
            .iter()
            .find(|r| r.event_id == "evt_bill_003")
            .unwrap();
        assert_eq!((flaky.attempts, flaky.result.as_str()), (3, "delivered"));
        assert!(s.elapsed < Duration::from_secs(20), "{:?}", s.elapsed);
        assert_eq!(s.report.counts.act_failed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_with_the_sample_plugins_skips_ping() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        if !dir.join("envelope-transform.wasm").is_file() {
            eprintln!(
                "SKIPPED: run scripts/build-plugins to test the demo with the sample plugins"
            );
            return;
        }
        let s = run_demo(&DemoOptions {
            plugins_dir: Some(dir),
        })
        .await
        .unwrap();
        print!("{}", s.render());
        assert!(s.shipping_uses_plugins, "{:?}", s.plugins_note);
        assert_eq!(
            (s.delivered, s.retries, s.skipped, s.dead_lettered.len()),
            (5, 4, 1, 2)
        );
        assert_eq!(s.metrics_records, 11);
        assert_eq!((s.receiver_hits, s.signature_failures), (10, 0));
        // Retried by the schedule-retry plugin (1 s, 2 s), delivered on the third attempt.
        let ship = s
            .rows
            .iter()
            .find(|r| r.event_id == "evt_ship_003")
            .unwrap();
        assert_eq!((ship.attempts, ship.result.as_str()), (3, "delivered"));
    }
}
