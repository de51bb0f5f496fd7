//! Engine throughput: deliveries per second from the in-process queue through the full
//! pipeline (envelope decode, transform, signing, the pooled HTTP deliverer with its SSRF
//! guard and per-endpoint limit, retry decision, batched acting, metrics records) to a
//! loopback keep-alive receiver, beside a plain reqwest POST loop to the same receiver with
//! the same concurrency, measured in the same run: interleaved rounds, each engine rate compared
//! with the plain loop of its own round, and the median of those ratios reported. Then, in a fresh process of this binary
//! (`SQUALL_BENCH_ONLY=rss`), peak RSS with 1,000 deliveries held in flight by a receiver that
//! answers after 2 s (so that 1,000 are held at once at 500 deliveries/s, well within what the
//! machine does).
//!
//! ```sh
//! cargo bench -p squall --bench throughput
//! SQUALL_BENCH_EVENTS=20000 SQUALL_BENCH_ROUNDS=7 SQUALL_BENCH_CONCURRENCY=64 cargo bench -p squall --bench throughput
//! SQUALL_BENCH_ONLY=builtins cargo bench -p squall --bench throughput   # one path, for perf
//! ```
//!
//! The sample Rust plugins are measured too when `plugins/dist` holds them and the build has
//! the plugin runtime (run scripts/build-plugins first).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The same allocator as the `squall` and `bootstrap` binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use squall::apps::{self, PluginSetup};
use squall::config::Config;
use squall::queue::memory::{MemoryQueues, QueueOptions};
use squall::queue::{Attributes, Outgoing, Queue};
use squall::runner::{RunReport, Runner, RunnerSettings};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmHWM (peak resident set) of this process, KiB.
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A 1 KiB JSON payload.
fn payload() -> serde_json::Value {
    serde_json::json!({"object": "invoice", "id": "in_1234567890", "data": "x".repeat(960)})
}

/// Plain reqwest: `concurrency` tasks POSTing the same 1 KiB body until `n` are done.
async fn plain_loop(url: &str, n: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let body = serde_json::to_vec(&payload()).expect("json");
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, body, next, url) =
            (client.clone(), body.clone(), next.clone(), url.to_string());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", "evt_0123456789")
                    .header("webhook-timestamp", "1800000000")
                    .header(
                        "webhook-signature",
                        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                    )
                    .body(body.clone())
                    .send()
                    .await
                    .expect("plain POST");
                assert!(resp.status().is_success());
                let _ = resp.bytes().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hooks {
    Builtins,
    Plugins,
}

const DLQ: &str = "http://memory.invalid/dlq";
const METRICS: &str = "http://memory.invalid/metrics";
const QUEUE: &str = "http://memory.invalid/bench";
/// The receiver's paths: answered 200 at once, and 200 after 2 s (holds many requests open at
/// once, for the memory measurement).
const OK: &str = "/bench/ok";
const HOLD: &str = "/bench/hold";

/// The test kit's receiver on its fast path: nothing recorded or verified, fixed replies.
async fn start_receiver() -> Receiver {
    Receiver::options()
        .record(false)
        .route(HOLD, Reply::Slow(Duration::from_secs(2), 200))
        .start()
        .await
        .expect("receiver")
}

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

fn config(concurrency: usize, hooks: Hooks) -> Config {
    let plugins = if hooks == Hooks::Plugins {
        let d = plugins_dir();
        // SQUALL_BENCH_PLUGIN_HOOKS=transform,signer: only those hooks are plugins (the others
        // built-ins), to see what each costs.
        let only = std::env::var("SQUALL_BENCH_PLUGIN_HOOKS").ok();
        const HOOKS: [(&str, &str); 3] = [
            ("transform", "envelope-transform"),
            ("signer", "standard-webhooks-signer"),
            ("retry_policy", "schedule-retry"),
        ];
        for h in only.iter().flat_map(|o| o.split(',')) {
            assert!(
                HOOKS.iter().any(|(hook, _)| *hook == h),
                "SQUALL_BENCH_PLUGIN_HOOKS: unknown hook {h:?} (transform, signer, retry_policy)"
            );
        }
        HOOKS
            .iter()
            .filter(|(hook, _)| {
                only.as_deref()
                    .is_none_or(|o| o.split(',').any(|h| h == *hook))
            })
            .map(|(hook, plugin)| {
                format!(
                    "[apps.bench.plugins.{hook}]\npath = \"{}/{plugin}.wasm\"\n",
                    d.display()
                )
            })
            .collect()
    } else {
        String::new()
    };
    let text = squall_testkit::config::head(None, DLQ, Some(METRICS))
        + &squall_testkit::config::app(
            "bench",
            QUEUE,
            &format!(
                "allowed_networks = [\"127.0.0.0/8\"]\nmax_concurrency = {concurrency}\nmax_per_endpoint = {concurrency}\n{plugins}"
            ),
        );
    Config::from_toml_str(&text, &std::env::current_dir().expect("cwd"), Vec::new())
        .expect("bench config")
}

/// Deliver `n` queued events through the runner; returns deliveries/s and the report.
async fn engine(
    receiver: &Receiver,
    n: usize,
    concurrency: usize,
    hooks: Hooks,
    path: &str,
) -> Result<(f64, RunReport), String> {
    let cfg = config(concurrency, hooks);
    let apps =
        apps::from_config(&cfg, PluginSetup::from_config(&cfg)).map_err(|e| e.to_string())?;

    let qs = Arc::new(MemoryQueues::new());
    for q in [DLQ, METRICS, QUEUE] {
        qs.create_queue(q, QueueOptions::default())
            .map_err(|e| e.to_string())?;
    }
    let url = receiver.url(path);
    let p = payload();
    let created = 1_800_000_000_000;
    let batch: Vec<Outgoing> = (0..n)
        .map(|i| Outgoing {
            body: TestEnvelope::new(&format!("evt_{i:08}"), "bench", &url)
                .created_at_ms(created)
                .payload(p.clone())
                .to_json(),
            delay_secs: 0,
            attributes: Attributes::new(),
            group_id: None,
        })
        .collect();
    for chunk in batch.chunks(1000) {
        for r in qs.send_batch(QUEUE, chunk).await {
            r.map_err(|e| e.to_string())?;
        }
    }
    drop(batch);
    let runner = Runner::new(qs.clone(), apps.built, RunnerSettings::from_config(&cfg));
    let stats = runner.stats();
    let t0 = Instant::now();
    let done_at = Arc::new(std::sync::Mutex::new(None));
    let done_at2 = done_at.clone();
    let report = runner
        .run(async move {
            loop {
                let c = stats.snapshot();
                if (c.delivered + c.dead_lettered + c.skipped) as usize >= n {
                    *done_at2.lock().unwrap() = Some(Instant::now());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
    let elapsed = done_at.lock().unwrap().expect("settled") - t0;
    if report.counts.delivered as usize != n || report.counts.act_failed != 0 {
        return Err(format!("not all delivered: {:?}", report.counts));
    }
    Ok((n as f64 / elapsed.as_secs_f64(), report))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("SQUALL_BENCH_ONLY").as_deref() == Ok("rss") {
        rt.block_on(rss_only());
    } else {
        rt.block_on(bench());
    }
}

/// The peak-RSS measurement on its own, in a fresh process (the throughput runs before it
/// leave the allocator and the plugin runtime holding memory that is not the in-flight cost).
async fn rss_only() {
    let in_flight = env_usize("SQUALL_BENCH_IN_FLIGHT", 1_000);
    let receiver = start_receiver().await;
    let before = vm_hwm_kib().unwrap_or(0);
    let n = (in_flight * 4).max(2_000);
    let (rate, _) = engine(&receiver, n, in_flight, Hooks::Builtins, HOLD)
        .await
        .expect("in-flight run");
    let peak = vm_hwm_kib().unwrap_or(0);
    println!(
        "Peak RSS of a fresh process with {in_flight} deliveries in flight ({n} events queued in \
         process, receiver in process holding each 2 s; max held at once: {}): VmHWM {:.1} MiB \
         (at start, receiver listening: {:.1} MiB); {rate:.0} deliveries/s",
        receiver.max_in_flight(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
    );
}

/// One measured path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Plain,
    Engine(Hooks),
}

async fn measure(receiver: &Receiver, path: Path, n: usize, c: usize) -> f64 {
    match path {
        Path::Plain => plain_loop(&receiver.url(OK), n, c).await,
        Path::Engine(hooks) => {
            let (rate, report) = engine(receiver, n, c, hooks, OK)
                .await
                .unwrap_or_else(|e| panic!("engine run failed: {e}"));
            assert_eq!(
                report.metrics.sent as usize, n,
                "one metrics record per delivery"
            );
            rate
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

async fn bench() {
    let n = env_usize("SQUALL_BENCH_EVENTS", 10_000);
    let c = env_usize("SQUALL_BENCH_CONCURRENCY", 64);
    let rounds = env_usize("SQUALL_BENCH_ROUNDS", 5).max(1);
    let in_flight = env_usize("SQUALL_BENCH_IN_FLIGHT", 1_000);
    let receiver = start_receiver().await;
    let with_plugins = plugins_dir().join("envelope-transform.wasm").is_file();
    // SQUALL_BENCH_ONLY=plain|builtins|plugins: that path alone, round after round (for perf).
    let only = std::env::var("SQUALL_BENCH_ONLY").ok();
    let mut paths = vec![Path::Plain, Path::Engine(Hooks::Builtins)];
    if with_plugins {
        paths.push(Path::Engine(Hooks::Plugins));
    }
    if let Some(only) = only.as_deref() {
        paths.retain(|p| {
            matches!(
                (only, p),
                ("plain", Path::Plain)
                    | ("builtins", Path::Engine(Hooks::Builtins))
                    | ("plugins", Path::Engine(Hooks::Plugins))
            )
        });
        assert!(
            !paths.is_empty(),
            "SQUALL_BENCH_ONLY={only}: nothing to run"
        );
    }
    println!(
        "# Engine throughput: {rounds} rounds of {n} events per path, 1 KiB JSON payload, concurrency {c}, {} CPUs, loopback receiver in-process",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    if let Ok(hooks) = std::env::var("SQUALL_BENCH_PLUGIN_HOOKS") {
        println!("# plugin path: only {hooks} as plugins, the other hooks built-in");
    }

    // Warm up every path (connections, allocator, caches; the plugin path compiles its
    // components once, cached, as a process start would).
    for p in &paths {
        measure(&receiver, *p, 2_000, c).await;
    }

    // Interleaved rounds, the order rotated each round, so that the machine's drift (the plain
    // loop alone moves by up to 1.7x over a minute here) falls on every path alike; each
    // engine rate is compared with the plain loop of its own round.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            rates[i].push(measure(&receiver, paths[i], n, c).await);
        }
    }

    println!();
    if paths.len() == 1 || paths[0] != Path::Plain {
        for (p, r) in paths.iter().zip(&rates) {
            let name = match p {
                Path::Plain => "plain",
                Path::Engine(Hooks::Builtins) => "built-ins",
                Path::Engine(Hooks::Plugins) => "plugins",
            };
            println!(
                "{name}: median {:.0} deliveries/s over {rounds} rounds",
                median(r.clone())
            );
        }
        return;
    }
    let header: String = (1..=rounds).map(|r| format!(" round {r} |")).collect();
    println!("| path |{header} median rate | median of per-round ratios |");
    println!("|---|{}---:|---:|", "---:|".repeat(rounds));
    for (p, r) in paths.iter().zip(&rates) {
        let name = match p {
            Path::Plain => "plain reqwest POST loop (ceiling)",
            Path::Engine(Hooks::Builtins) => "engine, built-ins",
            Path::Engine(Hooks::Plugins) => {
                "engine, sample Rust plugins (envelope-transform, standard-webhooks-signer, schedule-retry)"
            }
        };
        let cells: String = r
            .iter()
            .zip(&rates[0])
            .map(|(x, plain)| match p {
                Path::Plain => format!(" {x:.0} |"),
                _ => format!(" {x:.0} ({:.0}%) |", 100.0 * x / plain),
            })
            .collect();
        let ratio = median(r.iter().zip(&rates[0]).map(|(x, p)| x / p).collect());
        println!(
            "| {name} |{cells} {:.0} | {:.0}% |",
            median(r.clone()),
            100.0 * ratio
        );
    }
    if !with_plugins {
        println!(
            "| engine, sample Rust plugins | not measured: plugins/dist is empty (run scripts/build-plugins) | |"
        );
    }

    // Peak RSS in a fresh process of this same binary (see `rss_only`).
    let rss = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env("SQUALL_BENCH_ONLY", "rss")
        .env("SQUALL_BENCH_IN_FLIGHT", in_flight.to_string())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("peak RSS not measured: {e}"));
    println!();
    println!("{rss}");
}
