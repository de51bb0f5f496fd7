//! The shared queue's fairness, on the embedded queue with `squall run`'s engine (the shared
//! queue's poller, the pipeline, the pooled HTTP client, a loopback receiver).
//!
//! One application (`noisy`) has a backlog of 20,000 events to an endpoint answering after
//! 200 ms; 20 quiet applications send 10 events each to an endpoint answering at once. Reported:
//! the quiet events' latency (enqueue to arrival at the receiver), p50/p99/max, in five runs:
//!
//! - `quiet only`: the same quiet events, no backlog (the reference);
//! - `fair, queued behind`: the quiet events enqueued right after the backlog, before the
//!   runner starts, the queue in fair order (`Order::Fair`, the SQS fair-queue rule);
//! - `fifo, queued behind`: the same on a plain FIFO-order queue (the head-of-line delay);
//! - `fair, sent during` / `fifo, sent during`: the quiet events sent 1 s after the runner
//!   started on the backlog.
//!
//! ```sh
//! cargo bench -p squall --bench fairness
//! FAIRNESS_BACKLOG=20000 FAIRNESS_NOISY_CONCURRENCY=10 cargo bench -p squall --bench fairness
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use squall::apps::{self, PluginSetup};
use squall::config::Config;
use squall::queue::memory::{MemoryQueues, Order, QueueOptions};
use squall::queue::{Attributes, Outgoing, Queue};
use squall::runner::{Runner, RunnerSettings, SharedApps};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};

const DLQ: &str = "http://memory.invalid/1/dlq";
const METRICS: &str = "http://memory.invalid/1/metrics";
const SHARED: &str = "http://memory.invalid/1/shared";
const QUIET_APPS: usize = 20;
const QUIET_EVENTS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quiet_id(i: usize) -> String {
    format!("quiet-{i:02}")
}

/// The 21 applications (each given a queue of its own name only to pass the file's checks;
/// the shared poller acts on the shared queue).
fn config(noisy_concurrency: usize) -> Config {
    let mut text = squall_testkit::config::head(None, DLQ, Some(METRICS));
    text += &squall_testkit::config::app(
        "noisy",
        "http://memory.invalid/1/noisy",
        &format!(
            "allowed_networks = [\"127.0.0.0/8\"]\nmax_concurrency = {noisy_concurrency}\nmax_per_endpoint = {noisy_concurrency}\n"
        ),
    );
    for i in 0..QUIET_APPS {
        let id = quiet_id(i);
        text += &squall_testkit::config::app(
            &id,
            &format!("http://memory.invalid/1/{id}"),
            "allowed_networks = [\"127.0.0.0/8\"]\n",
        );
    }
    Config::from_toml_str(&text, &std::env::current_dir().expect("cwd"), Vec::new())
        .expect("bench config")
}

fn event(app: &str, id: &str, url: &str) -> Outgoing {
    Outgoing {
        body: TestEnvelope::new(id, app, url)
            .payload(serde_json::json!({"n": id}))
            .to_json(),
        delay_secs: 0,
        attributes: Attributes::new(),
        group_id: Some(app.to_string()),
    }
}

struct Latencies {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentiles(mut v: Vec<Duration>) -> Latencies {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Latencies {
        p50_ms: ms(at(0.50)),
        p99_ms: ms(at(0.99)),
        max_ms: ms(*v.last().expect("some")),
    }
}

/// One run: the backlog (if any) queued, the quiet events sent before the runner starts
/// (`during` false) or 1 s after (`during` true); returns their latencies and how many backlog
/// events were delivered meanwhile.
async fn run(
    order: Order,
    backlog: usize,
    during: bool,
    noisy_concurrency: usize,
) -> (Latencies, usize) {
    let receiver = Arc::new(
        Receiver::options()
            .route("/noisy", Reply::Slow(Duration::from_millis(200), 200))
            .start()
            .await
            .expect("receiver"),
    );
    let cfg = config(noisy_concurrency);
    let built = apps::from_config(&cfg, PluginSetup::from_config(&cfg)).expect("apps");
    let qs = Arc::new(MemoryQueues::new());
    for q in [DLQ, METRICS] {
        qs.create_queue(q, QueueOptions::default()).expect("queue");
    }
    qs.create_queue(
        SHARED,
        QueueOptions {
            order,
            ..QueueOptions::default()
        },
    )
    .expect("queue");
    let noisy_url = receiver.url("/noisy");
    let batch: Vec<Outgoing> = (0..backlog)
        .map(|i| event("noisy", &format!("evt_n{i:06}"), &noisy_url))
        .collect();
    for chunk in batch.chunks(1000) {
        for r in qs.send_batch(SHARED, chunk).await {
            r.expect("send");
        }
    }
    let apps = built
        .built
        .into_iter()
        .map(|b| (b.app.id.clone(), b))
        .collect();
    let mut settings = RunnerSettings::from_config(&cfg);
    settings.wait = Duration::from_millis(200);
    settings.shutdown_grace = Duration::from_secs(5);
    let runner = Runner::new(qs.clone(), Vec::new(), settings)
        .with_shared_queue(SHARED.to_string(), SharedApps::Fixed(apps));
    let quiet_total = QUIET_APPS * QUIET_EVENTS;
    let rec = receiver.clone();
    let qs2 = qs.clone();
    let quiet: Vec<Outgoing> = (0..QUIET_APPS)
        .flat_map(|a| {
            let url = receiver.url(&format!("/{}", quiet_id(a)));
            (0..QUIET_EVENTS)
                .map(move |e| event(&quiet_id(a), &format!("evt_q{a:02}_{e:02}"), &url))
                .collect::<Vec<_>>()
        })
        .collect();
    let sent_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    if !during {
        *sent_at.lock().unwrap() = Some(Instant::now());
        for r in qs.send_batch(SHARED, &quiet).await {
            r.expect("send");
        }
    }
    let sent_at2 = sent_at.clone();
    let report = runner
        .run(async move {
            if during {
                tokio::time::sleep(Duration::from_secs(1)).await;
                *sent_at2.lock().unwrap() = Some(Instant::now());
                for r in qs2.send_batch(SHARED, &quiet).await {
                    r.expect("send");
                }
            }
            // Until every quiet event arrived (at most 10 minutes).
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                let n = rec
                    .requests()
                    .iter()
                    .filter(|r| r.path.starts_with("/quiet-"))
                    .count();
                if n >= quiet_total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    let t0 = sent_at.lock().unwrap().expect("sent");
    let requests = receiver.requests();
    let quiet: Vec<Duration> = requests
        .iter()
        .filter(|r| r.path.starts_with("/quiet-"))
        .map(|r| r.at.saturating_duration_since(t0))
        .collect();
    assert_eq!(
        quiet.len(),
        quiet_total,
        "every quiet event delivered once ({report:?})"
    );
    let noisy = requests.iter().filter(|r| r.path == "/noisy").count();
    (percentiles(quiet), noisy)
}

fn main() {
    let backlog = env_usize("FAIRNESS_BACKLOG", 20_000);
    let noisy_concurrency = env_usize("FAIRNESS_NOISY_CONCURRENCY", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "shared queue: {QUIET_APPS} quiet applications x {QUIET_EVENTS} events (fast endpoint), \
         beside `noisy` with a backlog of {backlog} (endpoint answering in 200 ms, \
         max_concurrency {noisy_concurrency}); runner.shared_concurrency 64"
    );
    for (name, order, backlog, during) in [
        ("quiet only", Order::Fair, 0, false),
        ("fair, queued behind", Order::Fair, backlog, false),
        ("fifo, queued behind", Order::Fifo, backlog, false),
        ("fair, sent during", Order::Fair, backlog, true),
        ("fifo, sent during", Order::Fifo, backlog, true),
    ] {
        let (l, noisy) = rt.block_on(run(order, backlog, during, noisy_concurrency));
        println!(
            "{name:>19}: backlog {backlog:>6}: quiet latency p50 {:>9.1} ms  p99 {:>9.1} ms  max {:>9.1} ms  \
             (backlog events delivered meanwhile: {noisy})",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
}
