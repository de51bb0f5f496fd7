//! Costs of a plugin per language, through the real runtime: Cranelift compile, loading a
//! precompiled artifact, a call on a fresh instance, and a call on a reused instance, for the
//! sample plugins in plugins/dist (build them first with `scripts/build-plugins`).
//!
//! `cargo bench -p squall --bench languages` prints a Markdown table (docs/benchmarks.md,
//! "Plugins by language"). `SQUALL_BENCH_CALLS` sets the calls per measurement (default 2000).

/// The allocator of the production binaries (squall, bootstrap), so per-call figures match them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use squall::hooks::{
    AttemptContext, Event, Outcome, Request, RetryPolicy, Signer, Transform, TransformResult,
};
use squall::plugin::{Isolation, PluginRuntime, PluginSpec, RuntimeOptions};
use squall::secrets::{SecretKey, Secrets};

enum Kind {
    Transform,
    Signer,
    Retry,
}

struct Subject {
    language: &'static str,
    plugin: &'static str,
    kind: Kind,
}

const SUBJECTS: &[Subject] = &[
    Subject {
        language: "Rust",
        plugin: "reshape-transform",
        kind: Kind::Transform,
    },
    Subject {
        language: "Python",
        plugin: "python-reshape-transform",
        kind: Kind::Transform,
    },
    Subject {
        language: "JavaScript",
        plugin: "js-reshape-transform",
        kind: Kind::Transform,
    },
    Subject {
        language: "JavaScript (QuickJS)",
        plugin: "qjs-reshape-transform",
        kind: Kind::Transform,
    },
    Subject {
        language: "Rust",
        plugin: "stripe-signer",
        kind: Kind::Signer,
    },
    Subject {
        language: "JavaScript",
        plugin: "js-stripe-signer",
        kind: Kind::Signer,
    },
    Subject {
        language: "JavaScript (QuickJS)",
        plugin: "qjs-stripe-signer",
        kind: Kind::Signer,
    },
    Subject {
        language: "Rust",
        plugin: "github-signer",
        kind: Kind::Signer,
    },
    Subject {
        language: "C",
        plugin: "c-github-signer",
        kind: Kind::Signer,
    },
    Subject {
        language: "Rust",
        plugin: "schedule-retry",
        kind: Kind::Retry,
    },
    Subject {
        language: "Python",
        plugin: "python-status-retry",
        kind: Kind::Retry,
    },
];

fn dist(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

/// A 1 KiB JSON payload with camelCase keys, an amount and items: real work for the reshape.
fn payload_1k() -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(format!(
            r#"{{"skuId":"SKU-{i:04}","unitPriceCents":{},"qty":{}}}"#,
            100 + i * 7,
            1 + i % 3
        ));
        let body = format!(
            r#"{{"customerId":"cus_0123456789","amountCents":123456,"currency":"usd","invoiceNumber":"INV-2026-000042","items":[{}]}}"#,
            items.join(",")
        );
        if body.len() >= 1024 {
            return body.into_bytes();
        }
        i += 1;
    }
}

fn event(body: &[u8]) -> Event {
    Event {
        id: "evt_bench".into(),
        app_id: "bench".into(),
        event_type: "invoice.paid".into(),
        endpoint_url: "https://example.com/hook".into(),
        headers: vec![("x-trace".into(), "t".into())],
        content_type: "application/json".into(),
        body: body.to_vec(),
        attempt: 1,
        created_at_ms: 1_700_000_000_000,
        first_attempt_at_ms: 1_700_000_000_000,
    }
}

fn ctx() -> AttemptContext {
    AttemptContext {
        event_id: "evt_bench".into(),
        app_id: "bench".into(),
        event_type: "invoice.paid".into(),
        attempt: 2,
        first_attempt_at_ms: 1_700_000_000_000,
        now_ms: 1_700_000_060_000,
    }
}

fn secrets() -> Arc<Secrets> {
    let mut s = Secrets::new();
    s.insert("main", vec![SecretKey::parse("bench-secret").unwrap()]);
    Arc::new(s)
}

/// A call of the hook under test, returning a check that it did real work.
type Call = Box<dyn Fn() -> bool>;

fn make_call(rt: &PluginRuntime, component: &Path, s: &Subject, isolation: Isolation) -> Call {
    let mut spec = PluginSpec::new(component);
    spec.isolation = isolation;
    let body = payload_1k();
    match s.kind {
        Kind::Transform => {
            let hook: Arc<dyn Transform> = rt.transform("bench", &spec, secrets()).unwrap();
            let ev = event(&body);
            Box::new(move || matches!(hook.transform(&ev), Ok(TransformResult::Send(_))))
        }
        Kind::Signer => {
            let hook: Arc<dyn Signer> = rt.signer("bench", &spec, secrets()).unwrap();
            let req = Request {
                method: "POST".into(),
                url: "https://example.com/hook".into(),
                headers: vec![("content-type".into(), "application/json".into())],
                body,
            };
            let c = ctx();
            Box::new(move || {
                hook.sign(&c, &req, "main", 1_700_000_000)
                    .is_ok_and(|h| h.len() == 1)
            })
        }
        Kind::Retry => {
            let hook: Arc<dyn RetryPolicy> = rt.retry_policy("bench", &spec, secrets()).unwrap();
            let c = ctx();
            let outcome = Outcome::Response {
                status: 503,
                headers: vec![],
            };
            Box::new(move || hook.decide(&c, &outcome).is_ok())
        }
    }
}

struct Stats {
    median: Duration,
    p90: Duration,
}

fn measure(call: &Call, n: usize) -> Stats {
    for _ in 0..(n / 10).max(10) {
        assert!(call(), "the hook failed during warm-up");
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let ok = call();
            let d = t.elapsed();
            assert!(ok, "the hook failed");
            d
        })
        .collect();
    times.sort();
    Stats {
        median: times[n / 2],
        p90: times[n * 9 / 10],
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn runtime(cache: Option<&Path>) -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        cache_dir: cache.map(Path::to_path_buf),
        // As the Lambda function loads its bundled artifacts.
        map_artifacts: true,
        ..RuntimeOptions::default()
    })
    .unwrap()
}

fn main() {
    // `cargo bench` passes --bench; anything else is a filter on the plugin name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let calls: usize = std::env::var("SQUALL_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let cache = std::env::var_os("SQUALL_BENCH_CACHE_DIR").map(PathBuf::from);
    let tmp = std::env::temp_dir().join(format!("squall-bench-languages-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    println!(
        "payload {} bytes, {calls} calls per measurement",
        payload_1k().len()
    );
    println!();
    println!(
        "| language | plugin | size | compile | load precompiled | fresh instance + call, median / p90 | reused instance call, median / p90 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in SUBJECTS
        .iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|f| s.plugin.contains(f.as_str())))
    {
        let path = dist(s.plugin);
        let size = std::fs::metadata(&path).unwrap().len();

        // Compile: Cranelift, as a runtime without a disk cache does on first use (written
        // out as a verified artifact, which costs little beside the compile). With
        // SQUALL_BENCH_CACHE_DIR the compile is skipped: components come from that compile
        // cache (e.g. the conformance tests' /tmp/squall-conformance-cache), and "load" is the
        // cache hit (hash the .wasm, deserialize the artifact).
        let (compile, load, rt, component) = match &cache {
            Some(dir) => {
                let rt = runtime(Some(dir.as_path()));
                let t = Instant::now();
                rt.inspect(&path).unwrap();
                (None, t.elapsed(), rt, path.clone())
            }
            None => {
                let artifact = tmp.join(format!("{}.cwasm", s.plugin));
                let t = Instant::now();
                runtime(None).precompile(&path, &artifact).unwrap();
                let compile = t.elapsed();
                // Load precompiled: what a Lambda cold start pays with bundled .cwasm artifacts.
                let rt = runtime(None);
                let t = Instant::now();
                rt.inspect(&artifact).unwrap();
                (Some(compile), t.elapsed(), rt, artifact)
            }
        };

        let fresh = measure(
            &make_call(&rt, &component, s, Isolation::FreshPerCall),
            calls.min(500),
        );
        let reused = measure(&make_call(&rt, &component, s, Isolation::Reuse), calls);
        println!(
            "| {} | {} | {:.1} MB | {} | {} ms | {} / {} µs | {} / {} µs |",
            s.language,
            s.plugin,
            size as f64 / 1e6,
            compile.map_or("cached".to_string(), |c| format!("{} ms", ms(c))),
            ms(load),
            us(fresh.median),
            us(fresh.p90),
            us(reused.median),
            us(reused.p90),
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
