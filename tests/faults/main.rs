//! `fault-run`: the fault-injection run (issue 6). Drives the real `squall run` binary
//! against the moto SQS server with thousands of events across 24 faulty receivers of four
//! applications (per-request faults, and per application one endpoint with outages and one
//! with a capacity limit), kills the runner (SIGKILL twice, SIGTERM once) and restarts it,
//! waits for every queue to drain, then proves that every event was delivered with a valid
//! Standard Webhooks signature or dead-lettered with a reason, and that every duplicate is
//! explained by a kill. Prints the counts, the runner's SQS calls (counted by a proxy in front
//! of moto) and the costs per delivered event; exits 1 on any loss or unexplained event.
//!
//! `scripts/fault-run [--events N] [--seed S] [--health on|off]` builds and starts everything
//! it needs; this binary expects `SQUALL_TEST_SQS_ENDPOINT` (moto) and `SQUALL_BIN` (the
//! engine) set.

mod plan;
mod sqs_counter;
mod verdict;

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use squall::pipeline::{ATTR_DEAD_LETTERED_AT_MS, ATTR_EVENT_ID, ATTR_REASON};
use squall_testkit::receiver::{Chooser, Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::SquallRun;
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{TEST_SECRET, app_toml, config_head, now_ms, plugin_path};

use plan::{APPS, ENDPOINTS_PER_APP, Kind, LOOP_TYPE, LOOPER, TIMEOUT_MS, TRAP_TYPE, TRAPPER};
use verdict::{Stop, StopKind};

/// The fault-injection run: kills and restarts `squall run` mid-run and proves nothing was lost.
#[derive(clap::Parser)]
#[command(name = "fault-run")]
struct Args {
    /// Events to send (at least 100).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(100..))]
    events: u64,
    /// Seed of the plan (decimal or 0x-hex); default: drawn from the time and the process id.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Messages sent per second; default: events / 30, within 10-80 (moto sustains ~300 msg/s in
    /// all, and every event costs several calls).
    #[arg(long)]
    rate: Option<usize>,
    /// How long the queues may take to drain after production, seconds; default 180 + events / 20.
    #[arg(long = "drain-limit-secs")]
    drain_limit_secs: Option<u64>,
    /// Write the plan, the config and the verdict's details into this directory.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Also check the metrics queue's records against the deliveries.
    #[arg(long)]
    metrics: bool,
    /// Endpoint health (breaker, `Retry-After` pause, pacing): `on` writes
    /// `[app_defaults.endpoint_health]` with thresholds for the short retry schedule.
    #[arg(long, value_parser = ["on", "off"], default_value = "off")]
    health: String,
}

/// The run's settings, defaults applied.
struct Run {
    events: usize,
    seed: u64,
    rate: usize,
    drain_limit: Duration,
    out: Option<std::path::PathBuf>,
    metrics: bool,
    health: bool,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

fn args() -> anyhow::Result<Run> {
    let a = <Args as clap::Parser>::parse();
    let events = a.events as usize;
    Ok(Run {
        events,
        seed: a
            .seed
            .unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()) << 40),
        // Production lasts at least ~30 s so the three stops land mid-run.
        rate: a
            .rate
            .filter(|r| *r > 0)
            .unwrap_or((events / 30).clamp(10, 80)),
        drain_limit: Duration::from_secs(
            a.drain_limit_secs
                .filter(|s| *s > 0)
                .unwrap_or(180 + events as u64 / 20),
        ),
        out: a.out,
        metrics: a.metrics,
        health: a.health == "on",
    })
}

/// The runner's config. Without `metrics` no metrics queue is configured (the engine then
/// only logs its records): moto recomputes every queue attribute on each send, in time linear
/// in the queue's length, and on this 2-core machine a metrics queue filling at one record per
/// attempt slowed moto to ~4 requests/s within minutes, consumed or not.
///
/// With `health`, endpoint health is on, scaled to the run's retry schedule (five attempts
/// within ~10 s): the breaker opens after five failures in a row, for 5 s, doubling on each
/// failed probe up to 20 s, so an outage of 15-25 s is crossed with a few probes instead of
/// every event's five attempts.
fn config(endpoint: &str, q: &TestQueues, metrics: bool, health: bool) -> String {
    let mut s = config_head(endpoint, q, metrics);
    s.push_str(&format!(
        r#"[app_defaults]
connect_timeout_ms = 1000
timeout_ms = {TIMEOUT_MS}
max_concurrency = 48
max_per_endpoint = 8
allowed_networks = ["127.0.0.0/8"]
[app_defaults.retry]
max_attempts = 5
initial_delay_secs = 1
multiplier = 1.5
max_delay_secs = 4
jitter = 0.2
retry_after_max_secs = 5
"#
    ));
    if health {
        s.push_str(HEALTH_ON);
    }
    for (i, app) in APPS.iter().enumerate() {
        let plugin = |policy: &str, mode: &str, only: &str| {
            format!(
                "on_plugin_error = \"{policy}\"\n[apps.{app}.plugins.transform]\npath = \"{}\"\nconfig = {{ mode = \"{mode}\", only_types = \"{only}\" }}",
                plugin_path("misbehave")
            )
        };
        let extra = if i == TRAPPER {
            plugin("dead-letter", "trap", TRAP_TYPE)
        } else if i == LOOPER {
            plugin("retry", "loop", LOOP_TYPE)
        } else {
            String::new()
        };
        s.push_str(&app_toml(q, app, &extra));
    }
    s
}

/// `[app_defaults.endpoint_health]` of `--health on`.
const HEALTH_ON: &str = r#"[app_defaults.endpoint_health]
enabled = true
failure_threshold = 5
open_secs = 5
open_max_secs = 20
"#;

/// Send the planned bodies in batches of ten at `rate` messages/s. Only entries SQS reports
/// as failed are re-sent (a whole-call error is retried too, and counted: if that call had in
/// fact been accepted, its events would be duplicated without a kill, and the verdict says so).
async fn produce(
    q: Arc<TestQueues>,
    bodies: Vec<(usize, String)>,
    rate: usize,
    sent: Arc<AtomicUsize>,
    call_retries: Arc<AtomicUsize>,
) {
    let per_batch = Duration::from_secs_f64(10.0 / rate as f64);
    let start = tokio::time::Instant::now();
    for (n, (app, chunk)) in batches(bodies).into_iter().enumerate() {
        tokio::time::sleep_until(start + per_batch * n as u32).await;
        let app = APPS[app];
        let mut pending: Vec<(usize, &String)> = chunk.iter().enumerate().collect();
        while !pending.is_empty() {
            let entries: Vec<_> = pending
                .iter()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(b.as_str())
                        .build()
                        .unwrap()
                })
                .collect();
            match q
                .client
                .send_message_batch()
                .queue_url(q.app(app))
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    let failed: Vec<String> = out.failed.iter().map(|f| f.id.clone()).collect();
                    sent.fetch_add(pending.len() - failed.len(), Ordering::Relaxed);
                    pending.retain(|(i, _)| failed.contains(&format!("m{i}")));
                }
                Err(e) => {
                    call_retries.fetch_add(1, Ordering::Relaxed);
                    eprintln!("producer: SendMessageBatch failed ({e}); retrying");
                }
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Group `(app, body)` pairs into batches of at most ten bodies of one application, in the
/// order their last event was planned.
fn batches(bodies: Vec<(usize, String)>) -> Vec<(usize, Vec<String>)> {
    let mut open: Vec<Vec<String>> = vec![Vec::new(); APPS.len()];
    let mut out = Vec::new();
    for (app, body) in bodies {
        open[app].push(body);
        if open[app].len() == 10 {
            out.push((app, std::mem::take(&mut open[app])));
        }
    }
    for (app, rest) in open.into_iter().enumerate() {
        if !rest.is_empty() {
            out.push((app, rest));
        }
    }
    out
}

/// Consume the metrics queue while the run goes, as `squall metrics` would in production,
/// counting records by `outcome`. (moto computes every queue attribute on each send, in time
/// linear in the queue's length: an unconsumed metrics queue makes every metrics send slower
/// and the run quadratic; `--metrics` only.) Returns the counts once `stop` is set and the queue is empty.
async fn consume_metrics(
    q: Arc<TestQueues>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let got = q
            .client
            .receive_message()
            .queue_url(&q.metrics)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .wait_time_seconds(if stopping { 0 } else { 1 })
            .send()
            .await;
        let msgs = match got {
            Ok(r) => r.messages.unwrap_or_default(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            if stopping {
                return counts;
            }
            continue;
        }
        let mut entries = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let outcome = serde_json::from_str::<serde_json::Value>(m.body().unwrap_or(""))
                .ok()
                .and_then(|v| v["outcome"].as_str().map(str::to_string))
                .unwrap_or_else(|| "unparsable".into());
            *counts.entry(outcome).or_default() += 1;
            entries.push(
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(format!("d{i}"))
                    .receipt_handle(m.receipt_handle().unwrap_or(""))
                    .build()
                    .unwrap(),
            );
        }
        // A failed delete only means a record is counted twice (metrics are informational).
        let _ = q
            .client
            .delete_message_batch()
            .queue_url(&q.metrics)
            .set_entries(Some(entries))
            .send()
            .await;
    }
}

/// Receive and delete every message of `queue` (the run's own DLQ, read once at the end).
/// Each message is held for 10 minutes and deleted once read: reading a thousand messages
/// from moto takes longer than a short hold, after which they would be returned again, and
/// moto's receive costs time linear in the queue's length, so a shrinking queue reads faster.
async fn take_all(q: &TestQueues, queue: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out: Vec<aws_sdk_sqs::types::Message> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut empty_in_a_row = 0;
    while empty_in_a_row < 2 {
        let r = match q
            .client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("reading {queue}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let msgs = r.messages.unwrap_or_default();
        if msgs.is_empty() {
            empty_in_a_row += 1;
            continue;
        }
        empty_in_a_row = 0;
        let entries: Vec<_> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(format!("d{i}"))
                    .receipt_handle(m.receipt_handle().unwrap_or(""))
                    .build()
                    .unwrap()
            })
            .collect();
        let _ = q
            .client
            .delete_message_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await;
        for m in msgs {
            if seen.insert(m.message_id().unwrap_or("").to_string()) {
                out.push(m);
            }
        }
    }
    out
}

/// The deferrals a runner's JSON log records (`endpoint held: deferred ...`, `endpoint
/// saturated: deferred ...`), with their times since the run started.
fn deferrals_in(log: &str, runner: usize, epoch0: u64) -> Vec<verdict::Deferral> {
    log.lines()
        .filter(|l| l.contains("deferred, no attempt made"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|j| {
            Some(verdict::Deferral {
                id: j["event_id"].as_str()?.to_string(),
                runner,
                at_ms: rfc3339_ms(j["timestamp"].as_str()?)?.saturating_sub(epoch0),
            })
        })
        .collect()
}

/// Unix ms of a UTC timestamp as the runner logs it (`2026-12-07T21:45:08.774123Z`).
fn rfc3339_ms(t: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = t.get(20..t.len() - 1).unwrap_or("0");
    let ms = format!("{frac:0<3}").get(..3)?.parse::<i64>().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms).ok()
}

struct Runner {
    config: String,
    run: Option<SquallRun>,
    started: Instant,
    logs: Vec<String>,
}

impl Runner {
    fn start(config: String) -> Runner {
        let run = Some(SquallRun::start(&config));
        Runner {
            config,
            run,
            started: Instant::now(),
            logs: Vec::new(),
        }
    }

    /// Stop with `sig`; returns (exit status text, drained?) and keeps the log.
    fn stop(&mut self, sig: &str) -> (String, bool) {
        let (status, log) = self.run.take().expect("running").stop_with_log(sig);
        let drained = !log.contains("shutdown grace ran out");
        self.logs.push(log);
        (format!("{status}"), drained)
    }

    fn restart(&mut self) {
        self.run = Some(SquallRun::start(&self.config));
        self.started = Instant::now();
    }

    fn alive(&mut self) -> bool {
        self.run.as_mut().is_some_and(SquallRun::is_running)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("fault-run: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let a = args()?;
    let endpoint = std::env::var("SQUALL_TEST_SQS_ENDPOINT").context(
        "SQUALL_TEST_SQS_ENDPOINT is not set (scripts/fault-run starts moto and sets it)",
    )?;
    let t0 = Instant::now();
    let ms = move |at: Instant| at.saturating_duration_since(t0).as_millis() as u64;
    let epoch0 = now_ms();
    println!(
        "fault-run: seed {:#x}, {} events, {} applications, {} endpoints, {} msg/s, endpoint health {}",
        a.seed,
        a.events,
        APPS.len(),
        APPS.len() * ENDPOINTS_PER_APP,
        a.rate,
        if a.health { "on" } else { "off" }
    );
    println!(
        "  rerun with: scripts/fault-run --events {} --seed {:#x} --health {}",
        a.events,
        a.seed,
        if a.health { "on" } else { "off" }
    );

    // Endpoint faults: per application one endpoint with outages, one with a capacity of
    // half its share of the production rate (at least 1 request/s).
    let endpoints = APPS.len() * ENDPOINTS_PER_APP;
    let production_ms = a.events as u64 * 1000 / a.rate as u64;
    let per_sec = (a.rate as f64 / endpoints as f64 / 2.0).max(1.0);
    let faults = plan::endpoint_faults(a.seed, production_ms, per_sec);
    for (e, f) in faults.iter().enumerate() {
        match f {
            plan::EndpointFault::None => {}
            plan::EndpointFault::Outage { windows, down } => println!(
                "  endpoint {e} ({}): down ({down:?}) {}",
                APPS[e / ENDPOINTS_PER_APP],
                windows
                    .iter()
                    .map(|(s, t)| format!("{:.1}-{:.1}s", *s as f64 / 1000.0, *t as f64 / 1000.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            plan::EndpointFault::Capacity { per_sec, burst } => println!(
                "  endpoint {e} ({}): serves {per_sec:.2} requests/s (burst {burst}), else 429",
                APPS[e / ENDPOINTS_PER_APP]
            ),
        }
    }

    // Receivers: one per endpoint, each its own loopback host, answering seeded faults: the
    // endpoint's own (down, over capacity) first, else the per-request answer. The n-th
    // per-request answer of an event is the same whatever endpoint-level answers came between.
    let mut receivers = Vec::new();
    for (e, fault) in faults.iter().enumerate() {
        let ip: IpAddr = format!("127.0.0.{}", 10 + e).parse()?;
        let counts = Arc::new(Mutex::new((
            HashMap::<String, u32>::new(),
            plan::Bucket::default(),
        )));
        let seed = a.seed;
        let fault = fault.clone();
        let chooser: Chooser = Arc::new(move |r| {
            let id = r.header("webhook-id").unwrap_or("").to_string();
            let mut c = counts.lock().unwrap();
            let (by_id, bucket) = &mut *c;
            if let Some(reply) = plan::endpoint_reply(&fault, bucket, ms(r.at)) {
                return reply;
            }
            let n = by_id.entry(id.clone()).or_default();
            let reply = plan::reply_for(seed, &id, *n);
            *n += 1;
            reply
        });
        receivers.push(Receiver::start_with(ip, Reply::Status(200), Some(chooser)).await);
    }
    let urls: Vec<String> = receivers.iter().map(|r| r.url("/hook")).collect();

    let q = Arc::new(TestQueues::create(&endpoint, &APPS).await);
    let planned = plan::plan(a.seed, a.events, &urls, epoch0);
    // The runner's SQS calls go through the counting proxy; the driver's go direct.
    let sqs_counter = sqs_counter::SqsCounter::start(&endpoint).await?;
    let config = config(sqs_counter.url(), &q, a.metrics, a.health);
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("squall.toml"), &config)?;
    }

    let mut runner = Runner::start(config);
    let sent = Arc::new(AtomicUsize::new(0));
    let call_retries = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(
        q.clone(),
        planned.iter().map(|p| (p.app, p.body.clone())).collect(),
        a.rate,
        sent.clone(),
        call_retries.clone(),
    ));
    let metrics_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics = a
        .metrics
        .then(|| tokio::spawn(consume_metrics(q.clone(), metrics_stop.clone())));
    // Stops at 25 %, 50 % and 75 % of production, each at least 6 s after the last start.
    let schedule = [(0.25, "KILL"), (0.50, "TERM"), (0.75, "KILL")];
    let mut stops: Vec<Stop> = Vec::new();
    let mut last_print = Instant::now();
    let settled_for_needed = 3;
    let mut settled_for = 0;
    // The drain limit counts from the end of production (moto's pace varies with load).
    let mut drain_deadline: Option<Instant> = None;
    let mut queues_empty = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent_now = sent.load(Ordering::Relaxed);
        if let Some((frac, sig)) = schedule.get(stops.len())
            && sent_now as f64 >= frac * a.events as f64
            && runner.started.elapsed() >= Duration::from_secs(6)
        {
            let at = Instant::now();
            let (status, drained) = tokio::task::block_in_place(|| runner.stop(sig));
            let kind = if *sig == "KILL" {
                StopKind::Kill
            } else {
                StopKind::Term { drained }
            };
            println!(
                "  t={:>6.1}s  SIG{sig} at {sent_now} events sent: runner exited ({status}){}; restarted",
                ms(at) as f64 / 1000.0,
                if *sig == "TERM" {
                    if drained {
                        ", drained in-flight work"
                    } else {
                        ", grace ran out"
                    }
                } else {
                    ""
                }
            );
            stops.push(Stop {
                kind,
                at_ms: ms(at),
            });
            runner.restart();
            continue;
        }
        if !runner.alive() {
            bail!(
                "the runner died on its own; log:\n{}",
                runner.run.take().unwrap().log()
            );
        }
        let mut total = (0, 0, 0);
        let mut known = true;
        for app in APPS {
            match q.try_depth(q.app(app)).await {
                Some(d) => {
                    total = (total.0 + d.0, total.1 + d.1, total.2 + d.2);
                }
                None => known = false,
            }
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let reqs: usize = receivers.iter().map(|r| r.requests().len()).sum();
            println!(
                "  t={:>6.1}s  sent {sent_now}/{}  queued: {} visible, {} in flight, {} delayed  requests {reqs}",
                t0.elapsed().as_secs_f64(),
                a.events,
                total.0,
                total.1,
                total.2
            );
        }
        let done = producer.is_finished() && stops.len() == schedule.len();
        if done && known && total == (0, 0, 0) {
            settled_for += 1;
            if settled_for >= settled_for_needed {
                queues_empty = true;
                break;
            }
        } else {
            settled_for = 0;
        }
        if producer.is_finished() && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + a.drain_limit);
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            println!(
                "  drain limit ({} s after the last send) reached at t={:.1}s with {total:?} still queued",
                a.drain_limit.as_secs(),
                t0.elapsed().as_secs_f64()
            );
            break;
        }
    }
    producer.await?;
    let drained_at = t0.elapsed();
    if queues_empty {
        println!(
            "  t={:>6.1}s  all application queues empty (visible, in flight, delayed = 0, three polls in a row)",
            drained_at.as_secs_f64()
        );
    }
    let (status, _) = tokio::task::block_in_place(|| runner.stop("TERM"));
    println!("  final SIGTERM: runner exited ({status})");
    if let Some(out) = &a.out {
        for (i, log) in runner.logs.iter().enumerate() {
            std::fs::write(out.join(format!("runner-{i}.log")), log)?;
        }
    }

    // Observations.
    let mut requests = Vec::new();
    for (e, rx) in receivers.iter().enumerate() {
        for r in rx.requests() {
            requests.push(verdict::Request {
                verified: verify_recorded(TEST_SECRET, &r).map_err(|e| e.to_string()),
                receiver: e,
                status: r.status,
                at_ms: ms(r.at),
                connected_ms: ms(r.connected_at),
            });
        }
    }
    let by_body: HashMap<&str, &str> = planned
        .iter()
        .filter(|p| p.kind == Kind::Malformed)
        .map(|p| (p.body.as_str(), p.id.as_str()))
        .collect();
    let dlq_depth = q.try_depth(&q.dlq).await.unwrap_or_default();
    let mut dead = Vec::new();
    for m in take_all(&q, &q.dlq).await {
        let id = msg_attr(&m, ATTR_EVENT_ID)
            .or_else(|| by_body.get(m.body().unwrap_or("")).map(|s| s.to_string()));
        let at = msg_attr(&m, ATTR_DEAD_LETTERED_AT_MS)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        dead.push(verdict::DeadLetter {
            id,
            reason: msg_attr(&m, ATTR_REASON),
            at_ms: at.saturating_sub(epoch0),
        });
    }
    metrics_stop.store(true, Ordering::Relaxed);
    let mut metrics = match metrics {
        Some(m) => m.await?.into_iter().collect::<Vec<_>>(),
        None => Vec::new(),
    };
    metrics.sort();
    let deferrals = runner
        .logs
        .iter()
        .enumerate()
        .flat_map(|(i, log)| deferrals_in(log, i, epoch0))
        .collect::<Vec<_>>();
    let v = verdict::judge(&planned, &requests, &dead, &stops, &deferrals);
    let duration = t0.elapsed();

    // The table.
    println!("\nplanned events                                      count");
    for (k, n) in &v.planned {
        println!("  {k:<48} {n:>6}");
    }
    println!("  {:<48} {:>6}", "total", planned.len());
    println!("\nreceiver requests by answer                         count");
    for (k, n) in &v.requests {
        println!("  {k:<48} {n:>6}");
    }
    println!("  {:<48} {:>6}", "total", requests.len());
    println!("\noutcome per event                                   count");
    for (k, n) in &v.outcomes {
        println!("  {k:<48} {n:>6}");
    }
    println!("  {:<48} {:>6}", "missing (lost)", v.missing.len());
    println!(
        "\ndead letters read (and removed) from the DLQ: {} (queue depth before reading: {})",
        dead.len(),
        dlq_depth.0
    );
    if a.metrics {
        println!(
            "metrics records consumed (one per attempt): {} ({})",
            metrics.iter().map(|(_, n)| n).sum::<usize>(),
            metrics
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "events completed more than once (duplicates): {}",
        v.duplicated_events
    );
    for (i, s) in stops.iter().enumerate() {
        println!(
            "  explained by stop {} ({:?} at {:.1}s): {}{}",
            i + 1,
            s.kind,
            s.at_ms as f64 / 1000.0,
            v.explained.get(&i).copied().unwrap_or(0),
            match v.explained_by_deferral.get(&i) {
                Some(n) => format!(" ({n} of them a deferral's copy and its original)"),
                None => String::new(),
            }
        );
    }
    if v.duplicated_events > 0 {
        println!(
            "  largest gap between the first copy and the kill explaining it: {} ms",
            v.max_explained_gap_ms
        );
    }
    println!(
        "producer SendMessageBatch calls retried after an error: {}",
        call_retries.load(Ordering::Relaxed)
    );

    // Per endpoint fault: requests and how their events ended.
    println!(
        "\nby endpoint fault              endpoints  events  requests  delivered  dead-lettered"
    );
    for label in ["per-request faults only", "outages", "capacity limit"] {
        let of = |e: usize| faults[e].label() == label;
        let events: Vec<&plan::Planned> = planned
            .iter()
            .filter(|p| p.kind == Kind::Normal && of(p.endpoint))
            .collect();
        let ids: std::collections::HashSet<&str> = events.iter().map(|p| p.id.as_str()).collect();
        let delivered = requests
            .iter()
            .filter(|r| matches!(r.status, Some(200..=299)))
            .filter_map(|r| r.verified.as_ref().ok())
            .filter(|id| ids.contains(id.as_str()))
            .collect::<std::collections::HashSet<_>>()
            .len();
        let dead_lettered = dead
            .iter()
            .filter_map(|d| d.id.as_deref())
            .filter(|id| ids.contains(id))
            .collect::<std::collections::HashSet<_>>()
            .len();
        println!(
            "  {label:<28} {:>9} {:>7} {:>9} {:>10} {:>14}",
            (0..faults.len()).filter(|e| of(*e)).count(),
            events.len(),
            requests.iter().filter(|r| of(r.receiver)).count(),
            delivered,
            dead_lettered
        );
    }
    println!(
        "  (normal events only; an event both delivered and dead-lettered is counted in both)"
    );

    // The runner's SQS calls, counted by the proxy, and the costs per delivered event.
    let calls = sqs_counter.counts();
    let empty_receives = calls.get(sqs_counter::EMPTY_RECEIVES).copied().unwrap_or(0);
    let total_calls: u64 = calls.values().sum::<u64>() - empty_receives;
    println!("\nrunner SQS calls by action (counting proxy)         count");
    for (action, n) in sqs_counter::grouped(&calls) {
        println!("  {action:<48} {n:>6}");
    }
    println!("  {:<48} {total_calls:>6}", "total");
    println!(
        "  {:<48} {empty_receives:>6}",
        "of which receives that returned no message"
    );
    println!(
        "  ({})",
        calls
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  slowest call by action (request to answer, through the proxy): {}",
        sqs_counter
            .slowest()
            .iter()
            .map(|(k, (ms, over))| format!(
                "{k} {ms} ms ({over} over {} s)",
                sqs_counter::SLOW_MS / 1000
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let delivered = v
        .outcomes
        .get("delivered (2xx, valid signature)")
        .copied()
        .unwrap_or(0);
    let per = |n: f64| n / delivered.max(1) as f64;
    println!(
        "per delivered event ({delivered}): {:.3} requests, {:.3} SQS calls ({:.3} without the empty receives); {} dead letters, {} duplicates",
        per(requests.len() as f64),
        per(total_calls as f64),
        per((total_calls - empty_receives) as f64),
        dead.len(),
        v.duplicated_events
    );
    println!(
        "drained after {:.1}s; whole run {:.1}s",
        drained_at.as_secs_f64(),
        duration.as_secs_f64()
    );
    for f in v.failures.iter().take(30) {
        println!("FAILURE: {f}");
    }
    if v.failures.len() > 30 {
        println!("FAILURE: ... and {} more", v.failures.len() - 30);
    }
    for m in v.missing.iter().take(30) {
        println!("MISSING: {m}");
    }
    println!(
        "\nfault-run: {} (seed {:#x}, {} events, {} lost, {} unexplained)",
        if v.ok() { "PASS" } else { "FAIL" },
        a.seed,
        planned.len(),
        v.missing.len(),
        v.failures.len()
    );
    Ok(v.ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_timestamps_read_as_unix_ms() {
        assert_eq!(super::rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(
            super::rfc3339_ms("2026-12-07T21:45:08.774123Z"),
            Some(1_796_679_908_774)
        );
        assert_eq!(
            super::rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
    }
}
