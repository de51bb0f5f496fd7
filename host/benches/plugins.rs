//! Plugin runtime benchmark (a plain binary, no criterion): for each sample Rust plugin,
//! compile time, precompiled load time, fresh-instance call and reused-instance call
//! (median and p90), with a 1 KiB payload; and the same hooks by the native built-ins.
//!
//! Needs the components: `scripts/build-plugins`, then
//! `cargo bench -p squall --bench plugins` (optional arguments: calls per measurement, and
//! plugin names to run only those).

/// The allocator of the production binaries (squall, bootstrap), so per-call figures match them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use squall::hooks::{
    AttemptContext, Event, Outcome, PassThrough, Request, RetryPolicy, Signer, Transform,
};
use squall::plugin::{Hook, Isolation, PluginRuntime, PluginSpec, RuntimeOptions};
use squall::retry::BackoffPolicy;
use squall::secrets::{SecretKey, Secrets};
use squall::signing::StandardWebhooksSigner;

const PLUGINS: &[(&str, Hook)] = &[
    ("standard-webhooks-signer", Hook::Signer),
    ("github-signer", Hook::Signer),
    ("stripe-signer", Hook::Signer),
    ("envelope-transform", Hook::Transform),
    ("schedule-retry", Hook::RetryPolicy),
];

fn dist(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    if !p.exists() {
        eprintln!(
            "{} is missing: run scripts/build-plugins first",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

fn payload() -> Vec<u8> {
    // 1 KiB of JSON.
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < 1000 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"n\":{i},\"v\":\"abcdefghij\"}}"));
        i += 1;
    }
    s.push_str("]}");
    while s.len() < 1024 {
        s.insert(1, ' ');
    }
    s.into_bytes()
}

struct Fixture {
    event: Event,
    request: Request,
    ctx: AttemptContext,
    outcome: Outcome,
    secrets: Arc<Secrets>,
}

fn fixture() -> Fixture {
    let body = payload();
    assert_eq!(body.len(), 1024);
    let event = Event {
        id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
        app_id: "bench".into(),
        event_type: "invoice.paid".into(),
        endpoint_url: "https://hooks.example.com/in".into(),
        headers: vec![("x-tenant".into(), "42".into())],
        content_type: "application/json".into(),
        body,
        attempt: 2,
        created_at_ms: 1_700_000_000_000,
        first_attempt_at_ms: 1_700_000_000_000,
    };
    let mut secrets = Secrets::new();
    secrets.insert(
        "default",
        vec![SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()],
    );
    Fixture {
        request: Request::from_event(&event),
        ctx: AttemptContext::for_event(&event, 1_700_000_060_000),
        outcome: Outcome::Response {
            status: 503,
            headers: vec![],
        },
        event,
        secrets: Arc::new(secrets),
    }
}

/// A loaded hook, whichever kind.
enum Loaded {
    T(Arc<dyn Transform>),
    S(Arc<dyn Signer>),
    R(Arc<dyn RetryPolicy>),
}

impl Loaded {
    fn call(&self, f: &Fixture) {
        let ok = match self {
            Loaded::T(t) => t.transform(&f.event).is_ok(),
            Loaded::S(s) => s.sign(&f.ctx, &f.request, "default", 1_700_000_060).is_ok(),
            Loaded::R(r) => r.decide(&f.ctx, &f.outcome).is_ok(),
        };
        assert!(ok, "hook call failed");
    }
}

fn load(rt: &PluginRuntime, hook: Hook, spec: &PluginSpec, f: &Fixture) -> Loaded {
    match hook {
        Hook::Transform => Loaded::T(rt.transform("bench", spec, f.secrets.clone()).unwrap()),
        Hook::Signer => Loaded::S(rt.signer("bench", spec, f.secrets.clone()).unwrap()),
        Hook::RetryPolicy => Loaded::R(rt.retry_policy("bench", spec, f.secrets.clone()).unwrap()),
    }
}

fn no_cache() -> RuntimeOptions {
    RuntimeOptions {
        cache_dir: None,
        // As the Lambda function loads its bundled artifacts.
        map_artifacts: true,
        ..RuntimeOptions::default()
    }
}

/// (median, p90) of `samples`.
fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn time_calls(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..(n / 10).max(10) {
        f();
    }
    let samples = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    stats(samples)
}

fn us(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let f = fixture();
    let tmp = std::env::temp_dir().join(format!("squall-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let probe = PluginRuntime::new(no_cache()).unwrap();
    println!(
        "allocator: {:?}; payload 1024 bytes; {n} calls per reused measurement, {} per fresh one",
        probe.allocator(),
        n / 10
    );
    println!();
    println!(
        "| plugin | hook | compile ms | precompiled load ms (median) | fresh call us (median / p90) | reused call us (median / p90) |"
    );
    println!("|---|---|---|---|---|---|");
    // Other arguments: only the plugins whose name contains one of them.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
        .collect();
    for (name, hook) in PLUGINS {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let wasm = dist(name);
        // Compile: a fresh runtime without cache, median of 3.
        let compile = stats(
            (0..3)
                .map(|_| {
                    let rt = PluginRuntime::new(no_cache()).unwrap();
                    let t = Instant::now();
                    rt.inspect(&wasm).unwrap();
                    t.elapsed()
                })
                .collect(),
        )
        .0;
        // Precompiled load: deserialize + checks + link + first instance, fresh runtime each time.
        let cwasm = tmp.join(format!("{name}.cwasm"));
        probe.precompile(&wasm, &cwasm).unwrap();
        let load_time = stats(
            (0..15)
                .map(|_| {
                    let rt = PluginRuntime::new(no_cache()).unwrap();
                    let t = Instant::now();
                    let _hook = load(&rt, *hook, &PluginSpec::new(&cwasm), &f);
                    t.elapsed()
                })
                .collect(),
        )
        .0;
        let rt = PluginRuntime::new(no_cache()).unwrap();
        let mut fresh_spec = PluginSpec::new(&cwasm);
        fresh_spec.isolation = Isolation::FreshPerCall;
        let fresh_hook = load(&rt, *hook, &fresh_spec, &f);
        let fresh = time_calls(n / 10, || fresh_hook.call(&f));
        let reused_hook = load(&rt, *hook, &PluginSpec::new(&cwasm), &f);
        let reused = time_calls(n, || reused_hook.call(&f));
        println!(
            "| {name} | {hook} | {} | {} | {} / {} | {} / {} |",
            ms(compile),
            ms(load_time),
            us(fresh.0),
            us(fresh.1),
            us(reused.0),
            us(reused.1)
        );
    }
    println!();
    println!("| native built-in | hook | call us (median / p90) |");
    println!("|---|---|---|");
    let signer = StandardWebhooksSigner::new(f.secrets.clone());
    let s = time_calls(n, || {
        signer
            .sign(&f.ctx, &f.request, "default", 1_700_000_060)
            .unwrap();
    });
    println!(
        "| signing::StandardWebhooksSigner | signer | {} / {} |",
        us(s.0),
        us(s.1)
    );
    let policy = BackoffPolicy::default();
    let r = time_calls(n, || {
        policy.decide(&f.ctx, &f.outcome).unwrap();
    });
    println!(
        "| retry::BackoffPolicy | retry-policy | {} / {} |",
        us(r.0),
        us(r.1)
    );
    let t = time_calls(n, || {
        PassThrough.transform(&f.event).unwrap();
    });
    println!(
        "| hooks::PassThrough | transform | {} / {} |",
        us(t.0),
        us(t.1)
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
